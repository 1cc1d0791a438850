//! Prometheus metrics (`chat_*`), one registry per running server so that several servers in one
//! test process do not share counters, and the `/metrics` endpoint that exposes them.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_errors: IntCounterVec,
    pub http_duration: HistogramVec,
    pub ws_connections: IntGauge,
    pub posts_created: IntCounter,
    pub events_broadcast: IntCounterVec,
    pub events_delivered: IntCounter,
    pub events_dropped: IntCounterVec,
    pub slow_closed: IntCounter,
    /// Events already waiting in a connection's send queue when one more is queued: one
    /// observation per delivery, so its quantiles say how far behind the sockets are.
    pub ws_queue_depth: Histogram,
    pub db_duration: HistogramVec,
    pub bus_published: IntCounter,
    pub bus_received: IntCounter,
    pub bus_reconnects: IntCounter,
    pub bus_dropped: IntCounterVec,
    /// Tasks alive on the runtime (one per WebSocket plus a few): rising then flat in a healthy run.
    pub runtime_tasks: IntGauge,
    pub runtime_workers: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only reachable with a malformed metric definition below, which is a programming error
    // caught by every test run.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Metrics {
            runtime_tasks: must(IntGauge::new(
                "chat_runtime_alive_tasks",
                "Tasks alive on the tokio runtime",
            )),
            runtime_workers: must(IntGauge::new(
                "chat_runtime_workers",
                "Worker threads of the tokio runtime",
            )),
            http_requests: must(IntCounterVec::new(
                Opts::new(
                    "chat_http_requests_total",
                    "HTTP requests by route template, method and status",
                ),
                &["handler", "method", "status"],
            )),
            http_errors: must(IntCounterVec::new(
                Opts::new(
                    "chat_http_errors_total",
                    "HTTP responses with status >= 400 by route template and status",
                ),
                &["handler", "status"],
            )),
            http_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "chat_http_request_duration_seconds",
                    "HTTP request duration by route template",
                )
                .buckets(latency.clone()),
                &["handler"],
            )),
            ws_connections: must(IntGauge::new(
                "chat_websocket_connections",
                "Open WebSocket connections",
            )),
            posts_created: must(IntCounter::new(
                "chat_posts_created_total",
                "Posts committed",
            )),
            events_broadcast: must(IntCounterVec::new(
                Opts::new(
                    "chat_events_broadcast_total",
                    "Events published to the hub, by event type",
                ),
                &["event"],
            )),
            events_delivered: must(IntCounter::new(
                "chat_events_delivered_total",
                "Events queued to a WebSocket connection (one per recipient connection)",
            )),
            events_dropped: must(IntCounterVec::new(
                Opts::new(
                    "chat_events_dropped_total",
                    "Events not queued to a connection, by reason",
                ),
                &["reason"],
            )),
            slow_closed: must(IntCounter::new(
                "chat_websocket_slow_closed_total",
                "WebSocket connections closed because their send queue was full",
            )),
            ws_queue_depth: must(Histogram::with_opts(
                HistogramOpts::new(
                    "chat_websocket_queue_depth",
                    "Events already waiting in the connection's send queue when an event is queued (one observation per delivery)",
                )
                .buckets(vec![
                    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )),
            db_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "chat_db_query_duration_seconds",
                    "Database operation duration by operation",
                )
                .buckets(latency),
                &["op"],
            )),
            bus_published: must(IntCounter::new(
                "chat_bus_published_total",
                "Messages this instance sent to the other instances over the PostgreSQL bus",
            )),
            bus_received: must(IntCounter::new(
                "chat_bus_received_total",
                "Bus messages received from other instances",
            )),
            bus_reconnects: must(IntCounter::new(
                "chat_bus_reconnects_total",
                "Times the bus listener lost its connection (messages of the gap are lost; membership is reloaded)",
            )),
            bus_dropped: must(IntCounterVec::new(
                Opts::new(
                    "chat_bus_dropped_total",
                    "Bus messages not sent or not applied, by reason",
                ),
                &["reason"],
            )),
            registry,
        };
        must(
            m.registry
                .register(Box::new(process_metrics::ProcessCollector::for_self())),
        );
        for c in [
            Box::new(m.runtime_tasks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.runtime_workers.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_errors.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.ws_connections.clone()),
            Box::new(m.posts_created.clone()),
            Box::new(m.events_broadcast.clone()),
            Box::new(m.events_delivered.clone()),
            Box::new(m.events_dropped.clone()),
            Box::new(m.slow_closed.clone()),
            Box::new(m.ws_queue_depth.clone()),
            Box::new(m.db_duration.clone()),
            Box::new(m.bus_published.clone()),
            Box::new(m.bus_received.clone()),
            Box::new(m.bus_reconnects.clone()),
            Box::new(m.bus_dropped.clone()),
        ] {
            must(m.registry.register(c));
        }
        // Pre-create the label sets tests and dashboards look for, so they read 0 instead of missing.
        m.events_dropped.with_label_values(&["queue_half_full"]);
        m.events_dropped.with_label_values(&["queue_full"]);
        for reason in [
            "queue_full",
            "too_large",
            "stopped",
            "publish_failed",
            "malformed",
            "post_missing",
        ] {
            m.bus_dropped.with_label_values(&[reason]);
        }
        Arc::new(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let m = h.metrics();
            self.runtime_tasks.set(m.num_alive_tasks() as i64);
            self.runtime_workers.set(m.num_workers() as i64);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Router serving `GET /metrics`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route(
            "/metrics",
            get(move || {
                let m = self.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        )
    }
}
