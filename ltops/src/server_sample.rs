//! The server's side of a run without a Prometheus: every results interval the coordinator
//! reads each server instance's `/metrics` and writes the increase since the last reading as a
//! [`ServerRecord`] to `results/<run-id>/server.jsonl`.
//!
//! Only the few figures a report needs are read, by metric name (labels summed over), from the
//! Prometheus text format; a sample that cannot be read is skipped and the next interval covers
//! the gap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loadtest_contract::results::ServerRecord;
use loadtest_contract::{Record, ResultsWriter};

/// The file the samples go to, beside the agents' results.
pub const SERVER_FILE: &str = "server.jsonl";

/// One reading of an instance's counters and gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub at_ms: i64,
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub websocket_connections: f64,
    pub tasks: f64,
    pub requests: f64,
    pub errors_5xx: f64,
    pub posts: f64,
    pub broadcasts: f64,
    pub deliveries: f64,
    pub dropped: f64,
    pub db_operations: f64,
    pub db_seconds: f64,
}

impl Reading {
    /// Reads the figures out of a Prometheus text exposition.
    pub fn parse(text: &str, at_ms: i64) -> Reading {
        let mut r = Reading {
            at_ms,
            ..Reading::default()
        };
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            if !v.is_finite() {
                continue;
            }
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            let slot = match name {
                "process_cpu_seconds_total" => &mut r.cpu_seconds,
                "process_resident_memory_bytes" => &mut r.rss_bytes,
                "chat_websocket_connections" => &mut r.websocket_connections,
                "chat_runtime_alive_tasks" => &mut r.tasks,
                "chat_http_requests_total" => {
                    if labels.contains("status=\"5") {
                        r.errors_5xx += v;
                    }
                    &mut r.requests
                }
                "chat_posts_created_total" => &mut r.posts,
                "chat_events_broadcast_total" => &mut r.broadcasts,
                "chat_events_delivered_total" => &mut r.deliveries,
                "chat_events_dropped_total" => &mut r.dropped,
                "chat_db_query_duration_seconds_count" => &mut r.db_operations,
                "chat_db_query_duration_seconds_sum" => &mut r.db_seconds,
                _ => continue,
            };
            *slot += v;
        }
        r
    }

    /// The record of the interval from `prev` to `self` (counters as increases; a counter that
    /// went down — a restarted instance — counts from zero).
    pub fn since(&self, prev: &Reading, run_id: &str, instance: &str, index: u64) -> ServerRecord {
        let inc = |now: f64, before: f64| if now >= before { now - before } else { now };
        let count = |now: f64, before: f64| inc(now, before).round().max(0.0) as u64;
        ServerRecord {
            run_id: run_id.to_string(),
            instance: instance.to_string(),
            index,
            start_ms: prev.at_ms,
            end_ms: self.at_ms,
            cpu_seconds: inc(self.cpu_seconds, prev.cpu_seconds).max(0.0),
            rss_bytes: self.rss_bytes.max(0.0) as u64,
            websocket_connections: self.websocket_connections.max(0.0) as u64,
            tasks: self.tasks.max(0.0) as u64,
            requests: count(self.requests, prev.requests),
            errors_5xx: count(self.errors_5xx, prev.errors_5xx),
            posts: count(self.posts, prev.posts),
            broadcasts: count(self.broadcasts, prev.broadcasts),
            deliveries: count(self.deliveries, prev.deliveries),
            dropped: count(self.dropped, prev.dropped),
            db_operations: count(self.db_operations, prev.db_operations),
            db_seconds: inc(self.db_seconds, prev.db_seconds).max(0.0),
        }
    }
}

/// Samples every instance each interval and appends the records to [`SERVER_FILE`].
pub struct Sampler {
    run_id: String,
    http: reqwest::Client,
    instances: Vec<(String, String, Option<Reading>, u64)>,
    path: PathBuf,
    out: Option<ResultsWriter<std::fs::File>>,
}

impl Sampler {
    /// `instances`: (`server-N`, metrics URL). Nothing is written when there are none.
    pub fn new(run_id: &str, instances: Vec<(String, String)>, results_dir: &Path) -> Sampler {
        Sampler {
            run_id: run_id.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            instances: instances
                .into_iter()
                .map(|(i, u)| (i, u, None, 0))
                .collect(),
            path: results_dir.join(SERVER_FILE),
            out: None,
        }
    }

    /// Reads every instance once; from the second reading on, writes a record per instance.
    pub async fn sample(&mut self) {
        let now = loadtest_contract::now_ms();
        let texts = futures_util::future::join_all(self.instances.iter().map(|(_, url, _, _)| {
            let http = self.http.clone();
            let url = url.clone();
            async move { http.get(url).send().await.ok()?.text().await.ok() }
        }))
        .await;
        let mut records = Vec::new();
        for ((instance, _, last, index), text) in self.instances.iter_mut().zip(texts) {
            let Some(text) = text else {
                tracing::debug!("{instance}: metrics could not be read this interval");
                continue;
            };
            let reading = Reading::parse(&text, now);
            if let Some(prev) = last.as_ref() {
                records.push(reading.since(prev, &self.run_id, instance, *index));
                *index += 1;
            }
            *last = Some(reading);
        }
        if records.is_empty() {
            return;
        }
        if self.out.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => self.out = Some(ResultsWriter::new(f)),
                Err(e) => {
                    tracing::warn!("{}: {e}; server figures are not kept", self.path.display());
                    self.instances.clear();
                    return;
                }
            }
        }
        if let Some(w) = self.out.as_mut() {
            for r in records {
                if let Err(e) = w.write(&Record::Server(r)) {
                    tracing::warn!("{}: {e}", self.path.display());
                }
            }
        }
    }

    /// Flushes the file.
    pub fn finish(mut self) {
        if let Some(w) = self.out.take() {
            let _ = w.into_inner().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP x\nprocess_cpu_seconds_total 10\nprocess_resident_memory_bytes 1000\n\
chat_websocket_connections 5\nchat_http_requests_total{handler=\"/a\",method=\"GET\",status=\"200\"} 100\n\
chat_http_requests_total{handler=\"/b\",method=\"POST\",status=\"503\"} 1\nchat_events_delivered_total 50\n\
chat_db_query_duration_seconds_sum{op=\"x\"} 0.5\nchat_db_query_duration_seconds_count{op=\"x\"} 10\n";
    const AFTER: &str = "process_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 2000\n\
chat_websocket_connections 7\nchat_http_requests_total{handler=\"/a\",method=\"GET\",status=\"200\"} 150\n\
chat_http_requests_total{handler=\"/b\",method=\"POST\",status=\"503\"} 3\nchat_events_delivered_total 80\n\
chat_db_query_duration_seconds_sum{op=\"x\"} 0.75\nchat_db_query_duration_seconds_count{op=\"x\"} 20\nbogus line\n";

    #[test]
    fn counters_become_increases_and_gauges_end_values() {
        let a = Reading::parse(BEFORE, 1_000);
        let b = Reading::parse(AFTER, 11_000);
        let r = b.since(&a, "run", "server-0", 3);
        assert_eq!((r.start_ms, r.end_ms, r.index), (1_000, 11_000, 3));
        assert!((r.cpu_seconds - 2.5).abs() < 1e-9);
        assert_eq!(r.rss_bytes, 2000);
        assert_eq!(r.websocket_connections, 7);
        assert_eq!((r.requests, r.errors_5xx), (52, 2));
        assert_eq!(r.deliveries, 30);
        assert_eq!(r.db_operations, 10);
        assert!((r.db_seconds - 0.25).abs() < 1e-9);
        // A restarted instance: counters start again from zero.
        let r = a.since(&b, "run", "server-0", 4);
        assert_eq!(r.requests, 101);
    }
}
