//! The results file of one run: a header at the start, an interval record every `run.interval`
//! (written and flushed as it closes, so a killed agent leaves usable partial results) and a
//! summary with the run's totals at the end — all through the contract's `ResultsWriter`.
//!
//! Delivery `missing` is settled here: acknowledged posts older than [`DELIVERY_GRACE`] are
//! settled at each interval, the rest at the end after the grace period.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use loadtest_contract::results::{
    schema_version, Gauges, IntervalRecord, Record, RunHeader, RunSettings, StopReason,
    SummaryRecord, Totals, LATE_THRESHOLD_MS,
};
use loadtest_contract::{now_ms, LatencyHistogram, ResultsWriter};

use crate::measure::Recorder;

/// How long a post's receivers get before undelivered copies count as missing.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(2);
/// Requests that never finished are forgotten after this long.
const UNACKED_LIMIT: Duration = Duration::from_secs(120);

/// Writes one run's records.
pub struct ResultsSink {
    writer: ResultsWriter<File>,
    path: PathBuf,
    run_id: String,
    agent_id: String,
    started_at_ms: i64,
    last_end_ms: i64,
    index: u64,
    totals: Totals,
    recorder: Arc<Recorder>,
}

/// Creates the file (and its directory) and writes the header.
#[allow(clippy::too_many_arguments)]
pub fn open(
    path: &Path,
    run_id: &str,
    agent_id: &str,
    interval: Duration,
    clock_offset_ms: i64,
    settings: RunSettings,
    recorder: Arc<Recorder>,
) -> std::io::Result<ResultsSink> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut writer = ResultsWriter::new(File::create(path)?);
    let started_at_ms = now_ms();
    writer.write(&Record::Header(RunHeader {
        schema_version: schema_version(),
        run_id: run_id.to_string(),
        agent_id: agent_id.to_string(),
        tool: crate::TOOL.to_string(),
        tool_version: crate::VERSION.to_string(),
        started_at_ms,
        interval_ms: interval.as_millis() as u64,
        clock_offset_ms,
        settings,
    }))?;
    Ok(ResultsSink {
        writer,
        path: path.to_path_buf(),
        run_id: run_id.to_string(),
        agent_id: agent_id.to_string(),
        started_at_ms,
        last_end_ms: started_at_ms,
        index: 0,
        totals: Totals::default(),
        recorder,
    })
}

impl ResultsSink {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the moment the run really starts (after a synchronized start's wait): the first
    /// interval and the summary measure from here, not from when the file was opened.
    pub fn begin(&mut self) {
        let now = now_ms();
        self.started_at_ms = now;
        self.last_end_ms = now;
    }

    /// Closes the current interval: writes its record and adds it to the totals.
    pub fn flush_interval(&mut self) -> std::io::Result<IntervalRecord> {
        let r = &self.recorder;
        r.settle(DELIVERY_GRACE, UNACKED_LIMIT);
        let stats = r.take_interval();
        let c = &r.counters;
        let end_ms = now_ms();
        let record = IntervalRecord {
            run_id: self.run_id.clone(),
            agent_id: self.agent_id.clone(),
            index: self.index,
            start_ms: self.last_end_ms,
            end_ms,
            actions: stats.actions,
            delivery: stats.delivery,
            schedule: stats.schedule,
            gauges: Gauges {
                active_users: c.active_users.load(Ordering::Relaxed).max(0) as u64,
                websocket_connections: c.ws_connections.load(Ordering::Relaxed).max(0) as u64,
                deliveries_received: c.posted_events.swap(0, Ordering::Relaxed),
                reconnects: c.reconnects.swap(0, Ordering::Relaxed),
            },
        };
        self.writer.write(&Record::Interval(record.clone()))?;
        self.index += 1;
        self.last_end_ms = end_ms;
        // Same bucket layout everywhere: merging cannot fail.
        let _ = self.totals.add_interval(&record);
        {
            let mut so_far = r.so_far.lock();
            for s in record.actions.values() {
                let _ = so_far.response.merge(&s.response_time);
            }
            let _ = so_far.delivery.merge(&record.delivery.latency);
            let _ = so_far.lag.merge(&record.schedule.lag);
        }
        let lag_p99 = record.schedule.lag.quantile_us(0.99) / 1000;
        r.metrics.schedule_lag_p99_ms.set(lag_p99 as i64);
        warn_if_behind(&record);
        Ok(record)
    }

    /// Writes the last interval and the summary; `missing` is settled for every post.
    pub fn finish(&mut self, reason: StopReason) -> std::io::Result<SummaryRecord> {
        self.flush_interval()?;
        self.recorder.settle(Duration::ZERO, Duration::ZERO);
        self.totals.delivery.missing = self.recorder.missing_total();
        let summary = SummaryRecord {
            run_id: self.run_id.clone(),
            agent_id: self.agent_id.clone(),
            started_at_ms: self.started_at_ms,
            ended_at_ms: now_ms(),
            stop_reason: reason,
            intervals: self.index,
            totals: self.totals.clone(),
        };
        self.writer.write(&Record::Summary(summary.clone()))?;
        Ok(summary)
    }
}

/// Says loudly when the agent itself is the bottleneck: its latencies then include its own delay.
fn warn_if_behind(record: &IntervalRecord) {
    let s = &record.schedule;
    if s.actions == 0 {
        return;
    }
    let late_share = s.late as f64 / s.actions as f64;
    let p99_ms = s.lag.quantile_us(0.99) / 1000;
    if late_share > 0.01 || p99_ms > LATE_THRESHOLD_MS {
        tracing::warn!(
            "AGENT FALLING BEHIND in interval {}: {} of {} actions started more than {LATE_THRESHOLD_MS} ms late (lag p99 {p99_ms} ms); \
             response times include this lag — use fewer users per agent or a bigger machine",
            record.index,
            s.late,
            s.actions
        );
    }
}

/// A one-paragraph human summary of a run (for the end of `loadtest-agent run`).
pub fn describe(summary: &SummaryRecord) -> String {
    let t = &summary.totals;
    let mut all = LatencyHistogram::new();
    let mut ok = 0;
    let mut errors = 0;
    let mut lines = Vec::new();
    for (name, s) in &t.actions {
        let _ = all.merge(&s.response_time);
        ok += s.ok;
        errors += s.errors.total();
        lines.push(format!(
            "  {name:<15} ok {:>8}  errors {:>6}  p50 {:>8.1} ms  p99 {:>8.1} ms",
            s.ok,
            s.errors.total(),
            s.response_time.quantile_us(0.5) as f64 / 1000.0,
            s.response_time.quantile_us(0.99) as f64 / 1000.0,
        ));
    }
    let d = &t.delivery;
    let secs = ((summary.ended_at_ms - summary.started_at_ms).max(1)) as f64 / 1000.0;
    format!(
        "run {} ({:?}) in {secs:.1} s: {ok} actions ok, {errors} errors, response p99 {:.1} ms\n{}\n  deliveries: expected {} received {} missing {} duplicate {}, p99 {:.1} ms ({:.0}/s)\n  schedule: {} actions, {} late, lag p99 {:.1} ms; reconnects {}; peak users {}, peak connections {}\n  (delivery figures count only receivers simulated by this agent)",
        summary.run_id,
        summary.stop_reason,
        all.quantile_us(0.99) as f64 / 1000.0,
        lines.join("\n"),
        d.expected,
        d.received,
        d.missing,
        d.duplicate,
        d.latency.quantile_us(0.99) as f64 / 1000.0,
        d.received as f64 / secs,
        t.schedule.actions,
        t.schedule.late,
        t.schedule.lag.quantile_us(0.99) as f64 / 1000.0,
        t.reconnects,
        t.peak_active_users,
        t.peak_websocket_connections,
    )
}
