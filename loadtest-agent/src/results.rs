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
    SummaryRecord, Totals, CPU_STARVED_SHARE, GENERATOR_LAG_P99_US, LATE_THRESHOLD_MS,
    MACHINE_DELAY_CPU_SHARE, PROBE_TOLERATED_US, WAITING_SHARE,
};
use loadtest_contract::{now_ms, LatencyHistogram, ResultsWriter};

use crate::measure::Recorder;

/// How long a post's receivers get before undelivered copies count as missing.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(2);
/// Requests that never finished are forgotten after this long.
const UNACKED_LIMIT: Duration = Duration::from_secs(120);

/// Writes one run's records.
pub struct ResultsSink {
    header: RunHeader,
    writer: ResultsWriter<File>,
    path: PathBuf,
    run_id: String,
    agent_id: String,
    started_at_ms: i64,
    last_end_ms: i64,
    index: u64,
    totals: Totals,
    recorder: Arc<Recorder>,
    /// The process's CPU time and the wall clock at the last interval's end.
    cpu_mark: (u64, std::time::Instant),
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
    let header = RunHeader {
        schema_version: schema_version(),
        run_id: run_id.to_string(),
        agent_id: agent_id.to_string(),
        tool: crate::TOOL.to_string(),
        tool_version: crate::VERSION.to_string(),
        started_at_ms,
        interval_ms: interval.as_millis() as u64,
        clock_offset_ms,
        settings,
    };
    writer.write(&Record::Header(header.clone()))?;
    Ok(ResultsSink {
        header,
        writer,
        path: path.to_path_buf(),
        run_id: run_id.to_string(),
        agent_id: agent_id.to_string(),
        started_at_ms,
        last_end_ms: started_at_ms,
        index: 0,
        totals: Totals::default(),
        recorder,
        cpu_mark: (process_cpu_ms(), std::time::Instant::now()),
    })
}

impl ResultsSink {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header record written at the top of the file.
    pub fn header(&self) -> &RunHeader {
        &self.header
    }

    /// Marks the moment the run really starts (after a synchronized start's wait): the first
    /// interval and the summary measure from here, not from when the file was opened.
    pub fn begin(&mut self) {
        let now = now_ms();
        self.started_at_ms = now;
        self.last_end_ms = now;
        self.cpu_mark = (process_cpu_ms(), std::time::Instant::now());
    }

    /// CPU used since the last mark and what could have been used, milliseconds.
    fn take_cpu(&mut self) -> (u64, u64) {
        let (cpu, at) = (process_cpu_ms(), std::time::Instant::now());
        let used = cpu.saturating_sub(self.cpu_mark.0);
        let wall_ms = at.saturating_duration_since(self.cpu_mark.1).as_millis() as u64;
        self.cpu_mark = (cpu, at);
        (used, wall_ms * available_cpus())
    }

    /// Closes the current interval: writes its record and adds it to the totals. Returns the
    /// line written, which the control API keeps.
    pub fn flush_interval(&mut self) -> std::io::Result<WrittenInterval> {
        let r = &self.recorder;
        r.settle(DELIVERY_GRACE, UNACKED_LIMIT);
        let mut stats = r.take_interval();
        (stats.schedule.cpu_ms, stats.schedule.cpu_capacity_ms) = self.take_cpu();
        let r = &self.recorder;
        let c = &r.counters;
        let end_ms = now_ms();
        let record = Record::Interval(IntervalRecord {
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
        });
        let line = self.writer.write_line(&record)?;
        let Record::Interval(record) = record else {
            unreachable!("built as an interval record above")
        };
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
        let lag_p99_us = record.schedule.lag.quantile_us(0.99);
        r.metrics
            .schedule_lag_p99_seconds
            .set(lag_p99_us as f64 / 1e6);
        warn_if_behind(&record, self.header.settings.probes());
        Ok(WrittenInterval {
            index: record.index,
            line: line.into_boxed_str(),
        })
    }

    /// Writes the last interval and the summary (`missing` is settled for every post); returns
    /// both.
    pub fn finish(
        &mut self,
        reason: StopReason,
    ) -> std::io::Result<(WrittenInterval, SummaryRecord)> {
        let last = self.flush_interval()?;
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
        Ok((last, summary))
    }
}

/// An interval record as written to the results file: its index and its JSON line. An
/// `IntervalRecord` in memory holds ~20 histograms of the contract's full range, about 4 MiB; its
/// line has them compressed, a few KiB.
pub struct WrittenInterval {
    pub index: u64,
    pub line: Box<str>,
}

/// CPU time (user + system) this process has used, milliseconds (0 if it cannot be read).
fn process_cpu_ms() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let ms = |t: nix::sys::time::TimeVal| {
            (t.tv_sec().max(0) as u64) * 1000 + (t.tv_usec().max(0) as u64) / 1000
        };
        ms(u.user_time()) + ms(u.system_time())
    })
}

/// CPUs this process may use (affinity and cgroup quota included).
fn available_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// Says loudly, and truthfully, who was slow in an interval: the agent (its runtime late, its
/// CPU at the limit: its latencies then include time it was not running) or the server (users'
/// previous requests still unanswered when their next action was due).
fn warn_if_behind(record: &IntervalRecord, probes: u32) {
    let s = &record.schedule;
    let wall_ms = (record.end_ms - record.start_ms).max(1) as u64;
    match lateness(s, wall_ms * u64::from(probes.max(1))) {
        Lateness::Generator {
            lag_p99_ms,
            stalled,
            cpu_share,
        } => tracing::warn!(
            "AGENT FALLING BEHIND in interval {}: its own start lag p99 {lag_p99_ms} ms, its runtime \
             unresponsive {:.0}% of the time, CPU {:.0}% of what it may use, {} of {} actions started \
             late; the times it measured are overstated by its own delay — {}",
            record.index,
            stalled * 100.0,
            cpu_share * 100.0,
            s.late,
            s.actions,
            if cpu_share < MACHINE_DELAY_CPU_SHARE {
                "with its CPU this low the delay is the machine's: give the agent cores of its own"
            } else {
                "use fewer users per agent or a bigger machine"
            }
        ),
        Lateness::Server { waiting } => tracing::warn!(
            "SERVER STALLED in interval {}: {waiting} of {} actions started more than {LATE_THRESHOLD_MS} ms \
             late because the user's previous request was still waiting for the server; the agent kept \
             up (this wait is in the response times)",
            record.index,
            s.actions
        ),
        Lateness::None => {}
    }
}

/// Who an interval's lateness belongs to.
#[derive(Debug, PartialEq)]
enum Lateness {
    None,
    Server {
        waiting: u64,
    },
    Generator {
        lag_p99_ms: u64,
        /// Share of the interval the idle probe found the runtime unresponsive.
        stalled: f64,
        cpu_share: f64,
    },
}

/// Share of an interval the runtime may be unresponsive before the agent blames itself (higher
/// than the whole-run 2 % `ltparse` uses: one hiccup is a larger share of a short interval).
const STALLED_SHARE: f64 = 0.05;

/// The contract's rules, as `ltparse`'s report applies them: the generator's own start lag p99
/// over 100 ms, its runtime unresponsive (idle probe late beyond 10 ms) over 5 % of the interval,
/// or its CPU over 95 % of what it may use make it the generator's; else late actions whose
/// user waited for the server, over 1 %, make it the server's.
/// `probe_ms` is the interval's wall time times the idle probes (one per load runtime) whose
/// wake-ups the schedule holds: the stalled share is the runtimes' mean.
fn lateness(s: &loadtest_contract::results::ScheduleStats, probe_ms: u64) -> Lateness {
    let lag_p99 = s.generator_lag.quantile_us(0.99);
    // A stall is recorded in the interval the probe woke up in, which may be shorter than it.
    let stalled =
        (s.probe_lag.sum_above_us(PROBE_TOLERATED_US) / (probe_ms as f64 * 1000.0)).min(1.0);
    let cpu_share = if s.cpu_capacity_ms > 0 {
        s.cpu_ms as f64 / s.cpu_capacity_ms as f64
    } else {
        0.0
    };
    if lag_p99 > GENERATOR_LAG_P99_US || stalled > STALLED_SHARE || cpu_share > CPU_STARVED_SHARE {
        return Lateness::Generator {
            lag_p99_ms: lag_p99 / 1000,
            stalled,
            cpu_share,
        };
    }
    if s.actions > 0 && s.late_waiting as f64 / s.actions as f64 > WAITING_SHARE {
        return Lateness::Server {
            waiting: s.late_waiting,
        };
    }
    Lateness::None
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loadtest_contract::results::ScheduleStats;

    #[test]
    fn lateness_goes_to_whoever_caused_it() {
        let mut s = ScheduleStats {
            actions: 100,
            late: 30,
            late_waiting: 30,
            ..ScheduleStats::default()
        };
        s.generator_lag.record_n_us(2_000, 100);
        s.probe_lag.record_n_us(1_000, 20);
        assert_eq!(lateness(&s, 1_000), Lateness::Server { waiting: 30 });

        s.probe_lag.record_us(2_000_000);
        match lateness(&s, 1_000) {
            Lateness::Generator { stalled, .. } => assert_eq!(stalled, 1.0),
            other => panic!("{other:?}"),
        }

        let quiet = ScheduleStats::default();
        assert_eq!(lateness(&quiet, 1_000), Lateness::None);
    }

    #[test]
    fn a_stall_is_shared_among_the_runtimes_probed() {
        // One runtime 800 ms late once in a 10 s interval: 7.9 % of one probe's time, but 3.95 %
        // of two probes' (the other runtime was responsive all along).
        let mut s = ScheduleStats {
            actions: 100,
            ..ScheduleStats::default()
        };
        s.generator_lag.record_n_us(2_000, 100);
        s.probe_lag.record_n_us(1_000, 399);
        s.probe_lag.record_us(800_000);
        assert!(matches!(lateness(&s, 10_000), Lateness::Generator { .. }));
        assert_eq!(lateness(&s, 2 * 10_000), Lateness::None);
    }
}
