//! A reference chat server speaking a subset of the Mattermost API v4 and its WebSocket protocol,
//! on SQLite or PostgreSQL, with Prometheus metrics. It is the system under test for the load
//! tester, and official Mattermost clients work against it.
//!
//! The caller binds the listeners and passes them to [`run`] together with a [`Config`] and a
//! shutdown future (tests bind `127.0.0.1:0`; see [`testing`]). Module map:
//! [`config`] settings, [`store`] persistence, [`auth`] passwords and sessions, [`api`] REST
//! handlers, [`ws`] the WebSocket gateway, [`hub`] membership index and fan-out, [`bus`] the
//! cross-instance event bus (PostgreSQL), [`event`] serialized events, [`metrics`] Prometheus,
//! [`error`] error bodies, [`ids`] ids and clock.

pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod event;
pub mod hub;
pub mod ids;
pub mod metrics;
pub mod model;
pub mod store;
pub mod testing;
pub mod ws;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, Database, Limits, PasswordCost};
pub use error::Error;

/// Serves the API on `listener` (and metrics on `metrics_listener`) until `shutdown` completes,
/// then stops accepting, closes every WebSocket with a close frame, drains in-flight requests
/// (bounded by `config.shutdown_grace`) and returns.
pub async fn run(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let metrics = metrics::Metrics::new();
    let store = store::Store::open(&config.database, config.db_max_connections)
        .await?
        .with_timings(metrics.db_duration.clone());
    let hub = Arc::new(hub::Hub::new(metrics.clone()));
    // Several instances share a PostgreSQL database: LISTEN before loading membership, so a
    // change committed by another instance meanwhile arrives as a notification, not lost.
    let bus = match (&config.database, store.pg_pool()) {
        (Database::Postgres { url }, Some(pool)) => {
            Some(bus::Bus::connect(url, pool, metrics.clone()).await?)
        }
        _ => None,
    };
    hub.load_membership(&store).await?;
    let sockets = SocketRuntime::start()?;

    let state = Arc::new(api::AppState {
        auth: auth::Auth::new(
            store.clone(),
            config.password_cost.clone(),
            config.session_ttl,
        ),
        config,
        store: store.clone(),
        hub: hub.clone(),
        bus: bus.as_ref().map(|b| b.publisher.clone()),
        metrics: metrics.clone(),
        shutdown: CancellationToken::new(),
        ws_tasks: TaskTracker::new(),
        sockets: sockets.handle(),
        api: tokio::runtime::Handle::current(),
        ws_admitted: Default::default(),
    });
    let token = state.shutdown.clone();
    let bus_tasks = bus.map(|b| {
        let relay = bus::Relay {
            store: store.clone(),
            hub,
            metrics: metrics.clone(),
        };
        b.spawn(relay, token.clone())
    });

    // Forget disconnected connections once their replay window has passed.
    let reaper = {
        let st = state.clone();
        tokio::spawn(async move {
            let keep = st.config.limits.replay_keep;
            let mut tick = tokio::time::interval(Duration::from_secs(5).min(keep));
            loop {
                tokio::select! {
                    _ = st.shutdown.cancelled() => break,
                    _ = tick.tick() => st.hub.reap(keep),
                }
            }
        })
    };

    let metrics_task = metrics_listener.map(|l| {
        let t = token.clone();
        tokio::spawn(
            axum::serve(l, metrics.clone().router())
                .with_graceful_shutdown(async move { t.cancelled().await })
                .into_future(),
        )
    });

    let app = api::router(state.clone());
    let t = token.clone();
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(async move { t.cancelled().await })
        .into_future();
    tokio::pin!(serve);
    let grace = state.config.shutdown_grace;
    let result = tokio::select! {
        r = &mut serve => {
            token.cancel();
            r
        }
        _ = shutdown => {
            token.cancel();
            match tokio::time::timeout(grace, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("requests still running after {grace:?}; abandoning them");
                    Ok(())
                }
            }
        }
    };
    state.ws_tasks.close();
    if tokio::time::timeout(grace, state.ws_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("WebSockets still open after {grace:?}; abandoning them");
    }
    let _ = reaper.await;
    for task in bus_tasks.into_iter().flatten() {
        let _ = tokio::time::timeout(grace, task).await;
    }
    if let Some(m) = metrics_task {
        let _ = tokio::time::timeout(grace, m).await;
    }
    store.close().await;
    drop(sockets);
    result.map_err(Error::Io)
}

/// The runtime the WebSockets' tasks run on, beside the one `run` is called on (which serves
/// the HTTP requests, the bus and the metrics).
///
/// Why two: a post to a channel of 2,000 members wakes a task per member's socket, and on one
/// runtime the request that comes next (the next post, a channel switch) waits in the run queue
/// behind all of them; at 42,000 deliveries a second that was a create_post median of 7 ms for
/// 1 ms of work. Apart, the kernel shares the cores between the two runtimes' threads, and a
/// request thread that wakes up runs without waiting for the sockets' backlog. The sockets
/// themselves stay registered with the runtime that accepted them: only their tasks move.
struct SocketRuntime {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl SocketRuntime {
    fn start() -> Result<SocketRuntime, Error> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("chat-ws")
            .enable_all()
            .build()
            .map_err(Error::Io)?;
        Ok(SocketRuntime {
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl Drop for SocketRuntime {
    /// `run` is async, where a runtime may not block to drop: its threads are told to stop and
    /// left to finish (every socket's task has ended or been given up on by then).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Infrastructure sits below the handlers: the bus, the hub, events, wire models, the store,
/// authentication and metrics never reach up into the HTTP layer (`api`) or the WebSocket
/// handler (`ws`, apart from its connection type `ws::conn`).
#[cfg(test)]
mod layering {
    const INFRASTRUCTURE: &[(&str, &str)] = &[
        ("auth.rs", include_str!("auth.rs")),
        ("bus.rs", include_str!("bus.rs")),
        ("config.rs", include_str!("config.rs")),
        ("event.rs", include_str!("event.rs")),
        ("hub.rs", include_str!("hub.rs")),
        ("ids.rs", include_str!("ids.rs")),
        ("metrics.rs", include_str!("metrics.rs")),
        ("model.rs", include_str!("model.rs")),
        ("store/mod.rs", include_str!("store/mod.rs")),
        ("store/schema.rs", include_str!("store/schema.rs")),
        ("ws/conn.rs", include_str!("ws/conn.rs")),
    ];

    #[test]
    fn infrastructure_does_not_import_handlers() {
        let mut found = Vec::new();
        for (file, text) in INFRASTRUCTURE {
            for (n, line) in text.lines().enumerate() {
                let upward = [
                    "crate::api",
                    "super::api",
                    "crate::ws::upgrade",
                    "crate::ws::{",
                ]
                .iter()
                .any(|p| line.contains(p));
                if upward {
                    found.push(format!("server/src/{file}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "handlers imported below them:\n{}",
            found.join("\n")
        );
    }
}

#[cfg(test)]
mod sockets {
    use super::SocketRuntime;

    /// The sockets' runtime runs what is spawned on it on threads of its own, and `run` (async)
    /// can drop it, with a task still waiting on it, without the panic a runtime dropped inside
    /// another one would be.
    #[tokio::test]
    async fn runs_apart_and_drops_inside_an_async_function() {
        let rt = SocketRuntime::start().expect("start");
        let name = rt
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .expect("task");
        assert_eq!(name.as_deref(), Some("chat-ws"));
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.handle().spawn(rx);
        drop(rt);
    }
}
