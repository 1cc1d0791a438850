//! From loaded runs to the numbers a report shows: per-action counts, rates and latency
//! percentiles, delivery, schedule keeping, settings, warnings and the per-interval timeline.
//!
//! Everything here is plain data (`Serialize`): the JSON display is this structure as is, and
//! thresholds and baseline comparisons read their metrics from it, so every output agrees.

use std::collections::BTreeMap;

use loadtest_contract::results::{
    ErrorCounts, ServerRecord, StopReason, CPU_STARVED_SHARE, GENERATOR_LAG_P99_US,
    LATE_THRESHOLD_MS, MACHINE_DELAY_CPU_SHARE, PROBE_TOLERATED_US, WAITING_SHARE,
};
use loadtest_contract::LatencyHistogram;
use serde::Serialize;

use crate::load::{Coarse, RunData};

/// Late-action share above which the generator is considered to have fallen behind.
pub const BEHIND_LATE_RATIO: f64 = 0.01;
/// Schedule-lag p99 above which the generator is considered to have fallen behind, µs.
pub const BEHIND_LAG_P99_US: u64 = 100_000;

/// Latency statistics of one histogram, microseconds (exact HDR values, 3 significant digits).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(h: &LatencyHistogram) -> Self {
        LatencySummary {
            count: h.count(),
            mean_us: h.mean_us(),
            p50_us: h.quantile_us(0.50),
            p90_us: h.quantile_us(0.90),
            p95_us: h.quantile_us(0.95),
            p99_us: h.quantile_us(0.99),
            p999_us: h.quantile_us(0.999),
            max_us: h.max_us(),
        }
    }

    fn of_coarse(s: &Coarse) -> Self {
        LatencySummary {
            count: s.count(),
            mean_us: s.mean_us(),
            p50_us: s.quantile_us(0.50),
            p90_us: s.quantile_us(0.90),
            p95_us: s.quantile_us(0.95),
            p99_us: s.quantile_us(0.99),
            p999_us: s.quantile_us(0.999),
            max_us: s.max_us(),
        }
    }
}

/// One action over the whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionSummary {
    pub action: String,
    /// Completed attempts: `ok + errors`.
    pub hits: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_classes: ErrorCounts,
    /// `errors / hits`, 0..1.
    pub error_rate: f64,
    /// `hits / elapsed_s`.
    pub throughput_per_s: f64,
    /// From the intended start (coordinated-omission correct), successes only.
    pub response_time: LatencySummary,
    /// From the actual send, successes only.
    pub service_time: LatencySummary,
}

/// Delivery of posts to receivers over WebSocket.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeliverySummary {
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicate: u64,
    /// `missing / expected`, 0..1 (0 when nothing was expected).
    pub missing_rate: f64,
    pub latency: LatencySummary,
    /// Deliveries to receivers on other agents of the run (schema 1.1), when there were any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteDeliverySummary>,
}

/// First receipts of posts sent by other agents of the run: latency corrected with the agents'
/// clock offsets; nothing is expected or missing (no agent sees the others' receivers).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RemoteDeliverySummary {
    pub received: u64,
    pub latency: LatencySummary,
}

/// How well the generator kept to its schedule, and whose fault lateness was.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScheduleSummary {
    pub actions: u64,
    /// Actions started more than `LATE_THRESHOLD_MS` (100 ms) after their intended time.
    pub late: u64,
    pub late_ratio: f64,
    pub lag: LatencySummary,
    /// Late ratio above 1 % or lag p99 above 100 ms, whatever the cause.
    pub behind: bool,
    /// Late actions whose user's previous request was still unanswered: the server's delay.
    pub late_waiting: u64,
    /// The generator's own share of start lag (from when an action could start).
    pub generator_lag: LatencySummary,
    /// Timer lateness of the agents' idle probe tasks.
    pub probe_lag: LatencySummary,
    /// Share of wall time the agents' load runtimes were unresponsive, their mean: the idle
    /// probes' lateness beyond 10 ms, summed, over wall time × probes (one per load runtime of
    /// each agent, schema 1.4; one per agent before).
    pub probe_stalled: f64,
    /// CPU the agents used, as a share of what they may use; `None` in older results.
    pub cpu_share: Option<f64>,
    /// Who the lateness belongs to.
    pub cause: Lateness,
}

impl ScheduleSummary {
    /// Whether the agents measured their own lateness (schema 1.2), so it can be attributed.
    pub fn attributed(&self) -> bool {
        self.generator_lag.count > 0 || self.probe_lag.count > 0
    }

    /// `, CPU N% of what the agents may use` when the agents reported it.
    pub fn cpu_phrase(&self) -> String {
        self.cpu_share
            .map(|c| format!(", CPU {:.0}% of what the agents may use", c * 100.0))
            .unwrap_or_default()
    }
}

/// Who made actions start late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lateness {
    /// Nothing worth reporting.
    #[default]
    None,
    /// Users' previous requests were still waiting for the server: the generator kept up.
    Server,
    /// The agents themselves (runtime late, CPU at its limit): their latencies are overstated.
    Generator,
    /// Late, from results of agents older than schema 1.2 that cannot tell why.
    Unknown,
}

/// Share of a whole run the probe may find the runtime unresponsive before the generator is the
/// cause (the other rules are the contract's, shared with the agent).
pub const PROBE_STALLED_SHARE: f64 = 0.02;

/// The workload settings, from the first agent header.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingsSummary {
    pub target: String,
    pub tool: String,
    pub tool_version: String,
    /// Users across all agents.
    pub users: u64,
    /// Agents the run was configured with.
    pub agents: u32,
    pub duration_ms: u64,
    pub ramp_up_ms: u64,
    /// `closed` or `open`.
    pub mode: String,
    pub mean_interval_ms: u64,
    pub interval_jitter_ms: u64,
    pub posts_per_second: Option<f64>,
    pub action_mix: BTreeMap<String, u32>,
    pub preset: Option<String>,
    pub seed: u64,
    /// Length of an interval record, ms.
    pub interval_ms: u64,
}

/// One agent of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSummary {
    pub run_id: String,
    pub agent_id: String,
    pub source: String,
    pub users: Option<u64>,
    pub intervals: u64,
    /// `null` when the agent wrote no summary (cut short).
    pub stop_reason: Option<StopReason>,
    pub elapsed_s: f64,
}

/// Whole-run totals over all actions.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TotalsSummary {
    pub hits: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub throughput_per_s: f64,
}

/// One action in one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntervalActionSummary {
    pub action: String,
    pub hits: u64,
    pub errors: u64,
    pub throughput_per_s: f64,
    pub response_time: LatencySummary,
}

/// One interval (all agents merged).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntervalSummary {
    pub index: u64,
    /// Start of the interval relative to the run's start, seconds (`index × interval length`).
    pub offset_s: f64,
    pub length_s: f64,
    pub agents: u32,
    pub active_users: u64,
    pub websocket_connections: u64,
    pub deliveries_received: u64,
    pub reconnects: u64,
    pub scheduled: u64,
    pub late: u64,
    pub actions: Vec<IntervalActionSummary>,
    pub delivery_latency: LatencySummary,
}

/// The summary of one run, or of several runs aggregated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// Run ids summarized (several when aggregated).
    pub run_ids: Vec<String>,
    pub started_at_ms: Option<i64>,
    /// Wall time throughput is divided by, seconds.
    pub elapsed_s: f64,
    /// At least one agent wrote no summary record; its totals were rebuilt from intervals.
    pub cut_short: bool,
    pub settings: Option<SettingsSummary>,
    pub agents: Vec<AgentSummary>,
    pub totals: TotalsSummary,
    /// Sorted by action name.
    pub actions: Vec<ActionSummary>,
    pub delivery: DeliverySummary,
    pub schedule: ScheduleSummary,
    /// False when the load generator itself fell behind: every time it measured then includes
    /// time it was not running, so the latency figures (and thresholds on them) are unreliable.
    pub latency_reliable: bool,
    pub reconnects: u64,
    pub peak_active_users: u64,
    pub peak_websocket_connections: u64,
    /// Human-readable warnings about the run (cut short, generator behind, missing agents).
    pub warnings: Vec<String>,
    /// The server instances' own figures, when the coordinator sampled them (schema 1.3).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerSummary>,
    /// Each server sample on the run's time axis (seconds from the run's start), for charts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_timeline: Vec<ServerPoint>,
    /// Per-interval timeline; in JSON only with `--verbose`. Its latencies are rounded up by at
    /// most 1.6 % to keep long runs small; the run totals above are exact.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<IntervalSummary>,
}

impl RunSummary {
    /// `run-a` or `run-a + run-b`.
    pub fn label(&self) -> String {
        self.run_ids.join(" + ")
    }

    pub fn action(&self, name: &str) -> Option<&ActionSummary> {
        self.actions.iter().find(|a| a.action == name)
    }
}

/// Summarizes the schedule and attributes its lateness: to the generator when its own start lag,
/// its idle probe or its CPU says it could not keep up; else to the server when users' previous
/// requests were still waiting at their next action's time.
fn schedule_summary(
    s: &loadtest_contract::results::ScheduleStats,
    elapsed_s: f64,
    probes: usize,
) -> ScheduleSummary {
    let lag = LatencySummary::of(&s.lag);
    let late_ratio = ratio(s.late, s.actions);
    let behind = late_ratio > BEHIND_LATE_RATIO || lag.p99_us > BEHIND_LAG_P99_US;
    let generator_lag = LatencySummary::of(&s.generator_lag);
    let probe_lag = LatencySummary::of(&s.probe_lag);
    let wall_us = elapsed_s * 1e6 * probes.max(1) as f64;
    let probe_stalled = if wall_us > 0.0 {
        (s.probe_lag.sum_above_us(PROBE_TOLERATED_US) / wall_us).min(1.0)
    } else {
        0.0
    };
    let cpu_share = (s.cpu_capacity_ms > 0).then(|| s.cpu_ms as f64 / s.cpu_capacity_ms as f64);
    let attributed = generator_lag.count > 0 || probe_lag.count > 0;
    let cause = if !attributed {
        if behind {
            Lateness::Unknown
        } else {
            Lateness::None
        }
    } else if generator_lag.p99_us > GENERATOR_LAG_P99_US
        || probe_stalled > PROBE_STALLED_SHARE
        || cpu_share.is_some_and(|c| c > CPU_STARVED_SHARE)
    {
        Lateness::Generator
    } else if ratio(s.late_waiting, s.actions) > WAITING_SHARE {
        Lateness::Server
    } else {
        Lateness::None
    };
    ScheduleSummary {
        actions: s.actions,
        late: s.late,
        late_ratio,
        lag,
        behind,
        late_waiting: s.late_waiting,
        generator_lag,
        probe_lag,
        probe_stalled,
        cpu_share,
        cause,
    }
}

/// What the report says about lateness, with the figures that decided it.
fn lateness_warning(s: &ScheduleSummary) -> Option<String> {
    let ms = |us: u64| us as f64 / 1000.0;
    let cpu = s.cpu_phrase();
    match s.cause {
        Lateness::None => None,
        Lateness::Generator if !s.behind => Some(format!(
            "the load generator kept its schedule ({} of {} actions started late) but its own runtime was delayed: \
             unresponsive {:.1}% of the time (idle timer late p99 {:.1} ms, up to {:.1} ms){cpu}. The load offered was as \
             configured, but every time it measured includes the agent's own delay, up to {:.1} ms at p99, so this run's \
             latency figures are overstated and unreliable; {}",
            s.late,
            s.actions,
            s.probe_stalled * 100.0,
            ms(s.probe_lag.p99_us),
            ms(s.probe_lag.max_us),
            ms(s.probe_lag.p99_us),
            delay_remedy(s),
        )),
        Lateness::Generator => Some(format!(
            "the load generator fell behind: its own start lag p99 {:.1} ms, its runtime unresponsive {:.1}% of the time \
             (idle timer late by up to {:.1} ms){cpu}. It offered less load than configured, and the service and response \
             times it measured are overstated: they include time the agent was not running, so a fast answer can show as \
             seconds. This run's latency figures are unreliable; use fewer users per agent, more agents or a bigger machine",
            ms(s.generator_lag.p99_us),
            s.probe_stalled * 100.0,
            ms(s.probe_lag.max_us),
        )),
        Lateness::Server => Some(format!(
            "the server stalled: {} of {} actions started more than {LATE_THRESHOLD_MS} ms late because the user's previous \
             request was still waiting for the server (start lag up to {:.1} ms); the load generator kept up (its own start \
             lag p99 {:.1} ms, idle timer late by up to {:.1} ms){cpu}, and the wait is counted in the response times",
            s.late_waiting,
            s.actions,
            ms(s.lag.max_us),
            ms(s.generator_lag.p99_us),
            ms(s.probe_lag.max_us),
        )),
        Lateness::Unknown => Some(format!(
            "{:.1}% of actions started more than {LATE_THRESHOLD_MS} ms late (start lag p99 {:.1} ms); these results come from \
             an agent older than results schema 1.2, which cannot tell a server that did not answer from a generator that \
             fell behind. If it was the generator, the offered load was lower than configured and the measured times are \
             overstated",
            s.late_ratio * 100.0,
            ms(s.lag.p99_us),
        )),
    }
}

/// What to change when the agents' runtimes were delayed: with their CPU far below what they may
/// use the delay is the machine's (other processes on the same cores), not their own work.
fn delay_remedy(s: &ScheduleSummary) -> &'static str {
    if s.cpu_share.is_some_and(|c| c < MACHINE_DELAY_CPU_SHARE) {
        "with the agents' CPU this low the delay is the machine's, not their work: give the agents cores or \
         machines of their own (away from the server)"
    } else {
        "use fewer users per agent, more agents or a bigger machine"
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Summarizes one run (or an aggregate made with [`crate::Loaded::aggregate`]).
pub fn summarize(run: &RunData) -> RunSummary {
    let elapsed_s = run.elapsed_ms as f64 / 1000.0;
    let t = &run.totals;
    let actions: Vec<ActionSummary> = t
        .actions
        .iter()
        .map(|(name, s)| {
            let errors = s.errors.total();
            let hits = s.hits();
            ActionSummary {
                action: name.clone(),
                hits,
                ok: s.ok,
                errors,
                error_classes: s.errors,
                error_rate: ratio(errors, hits),
                throughput_per_s: per_s(hits, elapsed_s),
                response_time: LatencySummary::of(&s.response_time),
                service_time: LatencySummary::of(&s.service_time),
            }
        })
        .collect();
    let hits: u64 = actions.iter().map(|a| a.hits).sum();
    let ok: u64 = actions.iter().map(|a| a.ok).sum();
    let errors: u64 = actions.iter().map(|a| a.errors).sum();
    let d = &t.delivery;
    let delivery = DeliverySummary {
        expected: d.expected,
        received: d.received,
        missing: d.missing,
        duplicate: d.duplicate,
        missing_rate: ratio(d.missing, d.expected),
        latency: LatencySummary::of(&d.latency),
        remote: (d.remote_received > 0).then(|| RemoteDeliverySummary {
            received: d.remote_received,
            latency: LatencySummary::of(&d.remote_latency),
        }),
    };
    let probes: usize = run
        .agents
        .iter()
        .map(|a| {
            a.header
                .as_ref()
                .map_or(1, |h| h.settings.probes() as usize)
        })
        .sum();
    let schedule = schedule_summary(&t.schedule, elapsed_s, probes);
    let header = run.header();
    let settings = header.map(|h| {
        let s = &h.settings;
        SettingsSummary {
            target: s.target.clone(),
            tool: h.tool.clone(),
            tool_version: h.tool_version.clone(),
            users: s.total_users,
            agents: s.agents,
            duration_ms: s.duration_ms,
            ramp_up_ms: s.ramp_up_ms,
            mode: s.mode.clone(),
            mean_interval_ms: s.mean_interval_ms,
            interval_jitter_ms: s.interval_jitter_ms,
            posts_per_second: s.posts_per_second,
            action_mix: s.action_mix.clone(),
            preset: s.preset.clone(),
            seed: s.seed,
            interval_ms: h.interval_ms,
        }
    });
    let agents: Vec<AgentSummary> = run
        .agents
        .iter()
        .map(|a| AgentSummary {
            run_id: a.run_id.clone(),
            agent_id: a.agent_id.clone(),
            source: a.source.clone(),
            users: a.header.as_ref().map(|h| h.settings.users),
            intervals: a.intervals,
            stop_reason: a.stop_reason,
            elapsed_s: a.elapsed_ms as f64 / 1000.0,
        })
        .collect();

    let mut warnings = Vec::new();
    let cut: Vec<&str> = run
        .agents
        .iter()
        .filter(|a| a.cut_short())
        .map(|a| a.agent_id.as_str())
        .collect();
    if !cut.is_empty() {
        warnings.push(format!(
            "run cut short: no summary record from agent(s) {} (killed?); their totals were rebuilt from interval records (missing deliveries are only counted in summaries)",
            cut.join(", ")
        ));
    }
    for a in &run.agents {
        match a.stop_reason {
            Some(StopReason::Interrupted) => warnings.push(format!(
                "agent {} was interrupted before the configured duration",
                a.agent_id
            )),
            Some(StopReason::Failed) => warnings.push(format!(
                "agent {} gave up (stop reason: failed)",
                a.agent_id
            )),
            _ => {}
        }
        if a.header.is_none() {
            warnings.push(format!(
                "agent {} has no header record (its file lost its start?)",
                a.agent_id
            ));
        }
        if let Some(n) = a.summary_intervals {
            if n != a.intervals {
                warnings.push(format!(
                    "agent {}: its summary counts {n} intervals but {} were read",
                    a.agent_id, a.intervals
                ));
            }
        }
    }
    // Agents expected per run vs. present: only meaningful for a single run.
    if let (Some(s), [_]) = (&settings, run.run_ids.as_slice()) {
        let present = run.agents.len() as u64;
        if present < u64::from(s.agents) {
            warnings.push(format!(
                "only {present} of the run's {} agents have results here; numbers cover those agents only",
                s.agents
            ));
        }
    }
    if let Some(w) = lateness_warning(&schedule) {
        warnings.push(w);
    }
    if hits == 0 {
        warnings.push("no actions were completed".into());
    }

    let interval_ms = header.map(|h| h.interval_ms).filter(|&ms| ms > 0);
    let intervals = run
        .intervals
        .values()
        .map(|agg| {
            let len_ms = interval_ms.unwrap_or(agg.length_ms);
            let length_s = agg.length_ms as f64 / 1000.0;
            IntervalSummary {
                index: agg.index,
                offset_s: agg.index as f64 * len_ms as f64 / 1000.0,
                length_s,
                agents: agg.agents,
                active_users: agg.gauges.active_users,
                websocket_connections: agg.gauges.websocket_connections,
                deliveries_received: agg.gauges.deliveries_received,
                reconnects: agg.gauges.reconnects,
                scheduled: agg.scheduled,
                late: agg.late,
                actions: agg
                    .actions
                    .iter()
                    .map(|(name, a)| {
                        let errors = a.errors.total();
                        IntervalActionSummary {
                            action: name.clone(),
                            hits: a.ok + errors,
                            errors,
                            throughput_per_s: per_s(a.ok + errors, length_s),
                            response_time: LatencySummary::of_coarse(&a.response_time),
                        }
                    })
                    .collect(),
                delivery_latency: LatencySummary::of_coarse(&agg.delivery_latency),
            }
        })
        .collect();

    RunSummary {
        run_ids: run.run_ids.clone(),
        started_at_ms: run.started_at_ms,
        elapsed_s,
        cut_short: run.cut_short(),
        settings,
        agents,
        totals: TotalsSummary {
            hits,
            ok,
            errors,
            error_rate: ratio(errors, hits),
            throughput_per_s: per_s(hits, elapsed_s),
        },
        actions,
        delivery,
        latency_reliable: schedule.cause != Lateness::Generator,
        schedule,
        reconnects: t.reconnects,
        peak_active_users: t.peak_active_users,
        peak_websocket_connections: t.peak_websocket_connections,
        warnings,
        servers: server_summaries(&run.servers),
        server_timeline: server_timeline(&run.servers, run.started_at_ms),
        intervals,
    }
}

/// One server instance over the run, from its own `/metrics` samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerSummary {
    pub instance: String,
    /// Samples (intervals) seen.
    pub samples: u64,
    /// Seconds the samples cover.
    pub covered_s: f64,
    /// CPU in cores (1.0 = one core busy): over the run, and the busiest interval.
    pub cpu_cores_mean: f64,
    pub cpu_cores_peak: f64,
    pub rss_peak_bytes: u64,
    pub websocket_connections_peak: u64,
    pub tasks_peak: u64,
    pub requests_per_s: f64,
    pub errors_5xx: u64,
    pub broadcasts_per_s: f64,
    pub deliveries_per_s: f64,
    pub dropped: u64,
    /// Mean database operation time, milliseconds.
    pub db_mean_ms: Option<f64>,
}

/// One server sample, placed on the run's time axis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerPoint {
    pub instance: String,
    /// End of the sample, seconds after the run's start.
    pub at_s: f64,
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    pub websocket_connections: u64,
}

fn server_timeline(records: &[ServerRecord], started_at_ms: Option<i64>) -> Vec<ServerPoint> {
    let Some(t0) = started_at_ms else {
        return Vec::new();
    };
    let mut v: Vec<ServerPoint> = records
        .iter()
        .filter(|r| r.end_ms > r.start_ms && r.end_ms >= t0)
        .map(|r| ServerPoint {
            instance: r.instance.clone(),
            at_s: (r.end_ms - t0) as f64 / 1000.0,
            cpu_cores: r.cpu_seconds / ((r.end_ms - r.start_ms) as f64 / 1000.0),
            rss_bytes: r.rss_bytes,
            websocket_connections: r.websocket_connections,
        })
        .collect();
    v.sort_by(|a, b| {
        (&a.instance, a.at_s)
            .partial_cmp(&(&b.instance, b.at_s))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    v
}

fn server_summaries(records: &[ServerRecord]) -> Vec<ServerSummary> {
    let mut by: BTreeMap<&str, Vec<&ServerRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.instance.as_str()).or_default().push(r);
    }
    by.into_iter()
        .map(|(instance, rs)| {
            let secs = |r: &ServerRecord| ((r.end_ms - r.start_ms).max(0) as f64) / 1000.0;
            let covered = loadtest_contract::sum_f64(rs.iter().map(|r| secs(r)));
            let per_s = |v: u64| {
                if covered > 0.0 {
                    v as f64 / covered
                } else {
                    0.0
                }
            };
            let sum = |f: fn(&ServerRecord) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
            let cpu = loadtest_contract::sum_f64(rs.iter().map(|r| r.cpu_seconds));
            let db_ops = sum(|r| r.db_operations);
            let db_s = loadtest_contract::sum_f64(rs.iter().map(|r| r.db_seconds));
            ServerSummary {
                instance: instance.to_string(),
                samples: rs.len() as u64,
                covered_s: covered,
                cpu_cores_mean: if covered > 0.0 { cpu / covered } else { 0.0 },
                cpu_cores_peak: rs
                    .iter()
                    .filter(|r| secs(r) > 0.0)
                    .map(|r| r.cpu_seconds / secs(r))
                    .fold(0.0, f64::max),
                rss_peak_bytes: rs.iter().map(|r| r.rss_bytes).max().unwrap_or(0),
                websocket_connections_peak: rs
                    .iter()
                    .map(|r| r.websocket_connections)
                    .max()
                    .unwrap_or(0),
                tasks_peak: rs.iter().map(|r| r.tasks).max().unwrap_or(0),
                requests_per_s: per_s(sum(|r| r.requests)),
                errors_5xx: sum(|r| r.errors_5xx),
                broadcasts_per_s: per_s(sum(|r| r.broadcasts)),
                deliveries_per_s: per_s(sum(|r| r.deliveries)),
                dropped: sum(|r| r.dropped),
                db_mean_ms: (db_ops > 0).then(|| db_s * 1000.0 / db_ops as f64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loadtest_contract::results::ScheduleStats;

    /// 1,000 actions over 10 s on one agent, 50 of them late by 2 s.
    fn late_run() -> ScheduleStats {
        let mut s = ScheduleStats {
            actions: 1_000,
            late: 50,
            ..ScheduleStats::default()
        };
        s.lag.record_n_us(2_000, 950);
        s.lag.record_n_us(2_000_000, 50);
        s
    }

    #[test]
    fn a_stalled_server_is_not_blamed_on_the_generator() {
        let mut s = late_run();
        s.late_waiting = 48;
        s.generator_lag.record_n_us(1_500, 1_000);
        s.probe_lag.record_n_us(800, 200);
        (s.cpu_ms, s.cpu_capacity_ms) = (3_000, 20_000);
        let sum = schedule_summary(&s, 10.0, 1);
        assert_eq!(sum.cause, Lateness::Server);
        let w = lateness_warning(&sum).unwrap();
        assert!(
            w.starts_with("the server stalled: 48 of 1000 actions"),
            "{w}"
        );
        assert!(w.contains("the load generator kept up"), "{w}");
        assert!(!w.contains("fell behind"), "{w}");
    }

    #[test]
    fn a_starved_generator_overstates_and_is_unreliable() {
        // Stopped for 2 s: its actions started late by its own doing, its idle timer fired
        // 2 s late once; the server had answered everything in time.
        let mut s = late_run();
        s.generator_lag.record_n_us(1_500, 950);
        s.generator_lag.record_n_us(1_900_000, 50);
        s.probe_lag.record_n_us(800, 160);
        s.probe_lag.record_n_us(2_000_000, 1);
        let sum = schedule_summary(&s, 10.0, 1);
        assert_eq!(sum.cause, Lateness::Generator);
        assert!(sum.probe_stalled > 0.19, "{}", sum.probe_stalled);
        let w = lateness_warning(&sum).unwrap();
        assert!(w.contains("overstated"), "{w}");
        assert!(w.contains("unreliable"), "{w}");
        assert!(!w.contains("understated"), "{w}");

        // CPU at its limit alone is enough.
        let mut s = late_run();
        s.generator_lag.record_n_us(1_500, 1_000);
        s.probe_lag.record_n_us(800, 200);
        (s.cpu_ms, s.cpu_capacity_ms) = (19_800, 20_000);
        assert_eq!(schedule_summary(&s, 10.0, 1).cause, Lateness::Generator);
    }

    #[test]
    fn a_delayed_generator_that_kept_its_schedule_says_so() {
        // The full F1 run on one box: 0.09 % late, the idle timer often 30-50 ms late while the
        // agents used a tenth of their CPU (the servers held the cores).
        let mut s = late_run();
        (s.actions, s.late, s.late_waiting) = (129_110, 121, 0);
        s.lag = LatencyHistogram::new();
        s.lag.record_n_us(2_000, 129_000);
        s.lag.record_n_us(150_000, 110);
        s.generator_lag.record_n_us(2_000, 129_110);
        s.probe_lag.record_n_us(5_000, 9_000);
        s.probe_lag.record_n_us(45_000, 1_300);
        (s.cpu_ms, s.cpu_capacity_ms) = (1_800, 20_000);
        let sum = schedule_summary(&s, 600.0, 1);
        assert!(!sum.behind);
        assert_eq!(sum.cause, Lateness::Generator);
        let w = lateness_warning(&sum).unwrap();
        assert!(
            w.starts_with(
                "the load generator kept its schedule (121 of 129110 actions started late)"
            ),
            "{w}"
        );
        assert!(w.contains("The load offered was as configured"), "{w}");
        assert!(!w.contains("offered less load"), "{w}");
        assert!(w.contains("unreliable"), "{w}");
        assert!(w.contains("the delay is the machine's"), "{w}");

        // The same delay with the agents' CPU near its limit is their own work.
        (s.cpu_ms, s.cpu_capacity_ms) = (18_000, 20_000);
        let w = lateness_warning(&schedule_summary(&s, 600.0, 1)).unwrap();
        assert!(
            w.ends_with("use fewer users per agent, more agents or a bigger machine"),
            "{w}"
        );
    }

    #[test]
    fn stalls_are_shared_among_the_probed_runtimes() {
        // One runtime 500 ms late once in a 10 s run: 4.9 % of one probe's time, 2.45 % of two,
        // 1.2 % of four: an agent with four load runtimes is not behind for one hiccup.
        let mut s = late_run();
        s.generator_lag.record_n_us(1_500, 1_000);
        s.probe_lag.record_n_us(800, 200);
        s.probe_lag.record_us(500_000);
        let one = schedule_summary(&s, 10.0, 1);
        let four = schedule_summary(&s, 10.0, 4);
        assert!(
            (one.probe_stalled - 0.049).abs() < 0.001,
            "{}",
            one.probe_stalled
        );
        assert!(
            (four.probe_stalled - 0.01225).abs() < 0.001,
            "{}",
            four.probe_stalled
        );
        assert_eq!(one.cause, Lateness::Generator);
        assert_ne!(four.cause, Lateness::Generator);
    }

    #[test]
    fn older_results_say_they_cannot_tell() {
        let sum = schedule_summary(&late_run(), 10.0, 1);
        assert_eq!(sum.cause, Lateness::Unknown);
        assert!(lateness_warning(&sum)
            .unwrap()
            .contains("older than results schema 1.2"));
        let on_time = schedule_summary(&ScheduleStats::default(), 10.0, 1);
        assert_eq!(on_time.cause, Lateness::None);
        assert_eq!(lateness_warning(&on_time), None);
    }
}
