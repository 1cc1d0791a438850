//! Test-input generator: every results file the tests read is written here through the contract
//! crate's own types and [`ResultsWriter`], so the tests cannot drift from the real format.
//! Only deliberately corrupt lines are written by hand, in the tests that need them.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loadtest_contract::results::{
    schema_version, ActionStats, DeliveryStats, ErrorCounts, Gauges, IntervalRecord, RunHeader,
    RunSettings, ScheduleStats, StopReason, SummaryRecord, Totals,
};
use loadtest_contract::{Record, ResultsWriter};

/// A tiny deterministic generator (no dependency, same numbers on every platform).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub const START_MS: i64 = 1_700_000_000_000;

pub fn header(
    run_id: &str,
    agent_id: &str,
    agents: u32,
    users: u64,
    offset: u64,
    interval_ms: u64,
) -> RunHeader {
    RunHeader {
        schema_version: schema_version(),
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        tool: "loadtest-agent".into(),
        tool_version: "0.1.0".into(),
        started_at_ms: START_MS,
        interval_ms,
        clock_offset_ms: 0,
        settings: RunSettings {
            target: "http://127.0.0.1:8065".into(),
            users,
            user_offset: offset,
            total_users: users * u64::from(agents),
            agents,
            duration_ms: 30_000,
            ramp_up_ms: 5_000,
            mode: "closed".into(),
            mean_interval_ms: 2_000,
            interval_jitter_ms: 500,
            posts_per_second: None,
            action_mix: BTreeMap::from([
                ("check_unreads".into(), 2),
                ("create_post".into(), 3),
                ("switch_channel".into(), 5),
            ]),
            preset: Some("quick".into()),
            seed: 7,
            load_runtimes: None,
        },
    }
}

/// Samples of one action in one interval.
#[derive(Clone, Debug, Default)]
pub struct ActionSamples {
    pub name: String,
    /// Response times, µs (service time is derived as 90 % of each).
    pub response_us: Vec<u64>,
    pub errors: ErrorCounts,
}

/// Builds an interval record from explicit samples.
#[allow(clippy::too_many_arguments)]
pub fn interval(
    run_id: &str,
    agent_id: &str,
    index: u64,
    interval_ms: u64,
    actions: &[ActionSamples],
    delivery_us: &[u64],
    late: u64,
    lag_us: &[u64],
    active_users: u64,
) -> IntervalRecord {
    let mut map = BTreeMap::new();
    let mut attempts = 0;
    for a in actions {
        let mut s = ActionStats {
            ok: a.response_us.len() as u64,
            errors: a.errors,
            ..ActionStats::default()
        };
        for &v in &a.response_us {
            s.response_time.record_us(v);
            s.service_time.record_us(v * 9 / 10);
        }
        attempts += s.hits();
        map.insert(a.name.clone(), s);
    }
    let mut delivery = DeliveryStats {
        expected: delivery_us.len() as u64 + 1,
        received: delivery_us.len() as u64,
        ..DeliveryStats::default()
    };
    for &v in delivery_us {
        delivery.latency.record_us(v);
    }
    let mut schedule = ScheduleStats {
        actions: attempts,
        late,
        ..ScheduleStats::default()
    };
    for &v in lag_us {
        schedule.lag.record_us(v);
    }
    let start = START_MS + (index * interval_ms) as i64;
    IntervalRecord {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        index,
        start_ms: start,
        end_ms: start + interval_ms as i64,
        actions: map,
        delivery,
        schedule,
        gauges: Gauges {
            active_users,
            websocket_connections: active_users,
            deliveries_received: delivery_us.len() as u64,
            reconnects: index % 2,
        },
    }
}

/// The summary an agent would write after `intervals`: totals are the intervals added up.
pub fn summary(intervals: &[IntervalRecord], reason: StopReason) -> SummaryRecord {
    let mut totals = Totals::default();
    for i in intervals {
        totals.add_interval(i).expect("same layout");
    }
    // One expected delivery per interval never arrived (see `interval`).
    totals.delivery.missing = totals.delivery.expected - totals.delivery.received;
    let first = &intervals[0];
    let last = &intervals[intervals.len() - 1];
    SummaryRecord {
        run_id: first.run_id.clone(),
        agent_id: first.agent_id.clone(),
        started_at_ms: START_MS,
        ended_at_ms: last.end_ms,
        stop_reason: reason,
        intervals: intervals.len() as u64,
        totals,
    }
}

/// A whole generated run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub run_id: String,
    pub agents: u32,
    pub users_per_agent: u64,
    pub intervals: u64,
    pub interval_ms: u64,
    pub seed: u64,
    /// Multiplies every latency (a "slower server" for baseline tests).
    pub latency_factor: f64,
    /// Multiplies the number of hits per interval (throughput).
    pub load_factor: f64,
    /// Every n-th create_post attempt fails with a 5xx (0: never).
    pub error_every: u64,
    /// This agent index writes no summary (killed).
    pub cut_short_agent: Option<u32>,
    /// Share of actions that start late, per mille.
    pub late_per_mille: u64,
    /// Remote deliveries (posts of other agents) per interval and agent, at 5 ms + 1 ms × k
    /// (0: none, as in schema 1.0 files).
    pub remote_per_interval: u64,
    /// The generator's own figures (schema 1.2): `None` leaves them out (an older agent),
    /// `Some(false)` an agent that kept up, `Some(true)` one starved of CPU.
    pub generator_starved: Option<bool>,
}

impl RunSpec {
    pub fn new(run_id: &str) -> Self {
        RunSpec {
            run_id: run_id.into(),
            agents: 2,
            users_per_agent: 50,
            intervals: 3,
            interval_ms: 10_000,
            seed: 1,
            latency_factor: 1.0,
            load_factor: 1.0,
            error_every: 40,
            cut_short_agent: None,
            late_per_mille: 0,
            remote_per_interval: 0,
            generator_starved: None,
        }
    }
}

/// `(agent id, records)` per agent, deterministic for a spec.
pub fn generate(spec: &RunSpec) -> Vec<(String, Vec<Record>)> {
    let mut rng = Lcg(spec.seed);
    let mut out = Vec::new();
    for a in 0..spec.agents {
        let agent_id = format!("agent-{a}");
        let mut records = vec![Record::Header(header(
            &spec.run_id,
            &agent_id,
            spec.agents,
            spec.users_per_agent,
            u64::from(a) * spec.users_per_agent,
            spec.interval_ms,
        ))];
        let mut intervals = Vec::new();
        for i in 0..spec.intervals {
            let mut actions = Vec::new();
            // (name, hits per interval, base µs, spread µs)
            for (name, hits, base, spread) in [
                ("check_unreads", 40u64, 3_000u64, 4_000u64),
                ("create_post", 60, 8_000, 30_000),
                ("switch_channel", 100, 5_000, 12_000),
            ] {
                let hits = ((hits as f64) * spec.load_factor) as u64;
                let mut s = ActionSamples {
                    name: name.into(),
                    ..ActionSamples::default()
                };
                for h in 0..hits {
                    if name == "create_post"
                        && spec.error_every > 0
                        && (h + 1) % spec.error_every == 0
                    {
                        s.errors.http_5xx += 1;
                        continue;
                    }
                    // A long tail: 1 % of samples are 10× slower.
                    let mut v = base + rng.below(spread);
                    if rng.below(100) == 0 {
                        v *= 10;
                    }
                    s.response_us.push((v as f64 * spec.latency_factor) as u64);
                }
                actions.push(s);
            }
            let delivery: Vec<u64> = (0..50)
                .map(|_| ((2_000 + rng.below(20_000)) as f64 * spec.latency_factor) as u64)
                .collect();
            let attempts: u64 = actions
                .iter()
                .map(|s| s.response_us.len() as u64 + s.errors.total())
                .sum();
            let late = attempts * spec.late_per_mille / 1000;
            let lag: Vec<u64> = (0..attempts)
                .map(|k| {
                    if k < late {
                        150_000 + rng.below(50_000)
                    } else {
                        rng.below(5_000) + 1
                    }
                })
                .collect();
            let users = spec
                .users_per_agent
                .min((i + 1) * spec.users_per_agent / 2 + 10);
            let mut rec = interval(
                &spec.run_id,
                &agent_id,
                i,
                spec.interval_ms,
                &actions,
                &delivery,
                late,
                &lag,
                users,
            );
            if let Some(starved) = spec.generator_starved {
                let sch = &mut rec.schedule;
                // The probe wakes every 50 ms: 200 wake-ups per 10 s interval.
                for k in 0..200 {
                    let late_us = if starved && k % 20 == 0 {
                        200_000
                    } else {
                        300 + k * 10
                    };
                    sch.probe_lag.record_us(late_us);
                }
                for &v in &lag {
                    sch.generator_lag
                        .record_us(if starved { v + 150_000 } else { v / 2 + 1 });
                }
                sch.cpu_capacity_ms = spec.interval_ms;
                sch.cpu_ms = if starved {
                    spec.interval_ms * 98 / 100
                } else {
                    spec.interval_ms * 30 / 100
                };
            }
            for k in 0..spec.remote_per_interval {
                rec.delivery.remote_received += 1;
                rec.delivery.remote_latency.record_us(5_000 + k * 1_000);
            }
            intervals.push(rec);
        }
        records.extend(intervals.iter().cloned().map(Record::Interval));
        if spec.cut_short_agent != Some(a) {
            records.push(Record::Summary(summary(&intervals, StopReason::Completed)));
        }
        out.push((agent_id, records));
    }
    out
}

/// Records as JSON Lines bytes, through the contract's writer.
pub fn jsonl(records: &[Record]) -> Vec<u8> {
    let mut w = ResultsWriter::new(Vec::new());
    for r in records {
        w.write(r).expect("write to memory");
    }
    w.into_inner()
}

pub fn write_jsonl(path: &Path, records: &[Record]) {
    std::fs::write(path, jsonl(records)).expect("write results file");
}

/// Writes one file per agent of `spec` into `dir`, named `<run>-<agent>.jsonl`.
pub fn write_run(dir: &Path, spec: &RunSpec) -> Vec<PathBuf> {
    generate(spec)
        .into_iter()
        .map(|(agent, records)| {
            let p = dir.join(format!("{}-{agent}.jsonl", spec.run_id));
            write_jsonl(&p, &records);
            p
        })
        .collect()
}

/// All agents' records of `spec` concatenated, as one JSON Lines buffer.
pub fn run_bytes(spec: &RunSpec) -> Vec<u8> {
    generate(spec)
        .into_iter()
        .flat_map(|(_, r)| jsonl(&r))
        .collect()
}
