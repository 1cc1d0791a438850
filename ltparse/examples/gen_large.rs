//! Writes a large, realistic results file for measuring `ltparse`'s parse throughput:
//!
//! ```text
//! cargo run --release -p ltparse --example gen_large -- /tmp/large.jsonl 200000 [AGENTS]
//! /usr/bin/time -v target/release/ltparse results --file /tmp/large.jsonl --display json >/dev/null
//! ```
//!
//! Records are the contract's own types serialized with serde: a few dozen interval templates
//! (every action, with realistic histograms) are encoded once, then re-stamped with each agent,
//! index and time, because encoding hundreds of thousands of histograms would make generating
//! the file slower than reading it.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};

use loadtest_contract::results::{
    schema_version, ActionStats, DeliveryStats, ErrorCounts, Gauges, IntervalRecord, RunHeader,
    RunSettings, ScheduleStats, StopReason, SummaryRecord, Totals,
};
use loadtest_contract::{Action, LatencyHistogram, Record, ResultsWriter};

const TEMPLATES: u64 = 32;
const INTERVAL_MS: i64 = 10_000;
const START_MS: i64 = 1_700_000_000_000;

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn template(seed: u64) -> IntervalRecord {
    let mut rng = seed.wrapping_add(1);
    let mut actions = BTreeMap::new();
    for a in Action::ALL {
        let mut s = ActionStats {
            ok: 0,
            errors: ErrorCounts {
                http_5xx: lcg(&mut rng) % 3,
                ..ErrorCounts::default()
            },
            ..ActionStats::default()
        };
        for _ in 0..300 {
            let v = 500 + lcg(&mut rng) % 40_000;
            let v = if lcg(&mut rng).is_multiple_of(100) {
                v * 20
            } else {
                v
            };
            s.service_time.record_us(v);
            s.response_time.record_us(v + lcg(&mut rng) % 2_000);
            s.ok += 1;
        }
        actions.insert(a.name().to_string(), s);
    }
    let mut delivery = DeliveryStats {
        expected: 2_000,
        received: 2_000,
        ..DeliveryStats::default()
    };
    for _ in 0..2_000 {
        delivery.latency.record_us(1_000 + lcg(&mut rng) % 60_000);
    }
    let mut schedule = ScheduleStats {
        actions: 3_000,
        late: 3,
        ..ScheduleStats::default()
    };
    for _ in 0..3_000 {
        schedule.lag.record_us(1 + lcg(&mut rng) % 3_000);
    }
    IntervalRecord {
        run_id: "large".into(),
        agent_id: String::new(),
        index: 0,
        start_ms: 0,
        end_ms: 0,
        actions,
        delivery,
        schedule,
        gauges: Gauges {
            active_users: 1_000,
            websocket_connections: 1_000,
            deliveries_received: 2_000,
            reconnects: 2,
        },
    }
}

/// `h` with every count multiplied by `n`.
fn scale_hist(h: &LatencyHistogram, n: u64) -> LatencyHistogram {
    let mut out = LatencyHistogram::new();
    for v in h.as_hdr().iter_recorded() {
        out.record_n_us(v.value_iterated_to(), v.count_at_value() * n);
    }
    out
}

/// Totals of a template used `n` times (histograms scaled instead of merged `n` times).
fn scaled(t: &Totals, n: u64) -> Totals {
    let mut out = Totals::default();
    for (name, a) in &t.actions {
        let e = &a.errors;
        out.actions.insert(
            name.clone(),
            ActionStats {
                ok: a.ok * n,
                errors: ErrorCounts {
                    timeout: e.timeout * n,
                    connect: e.connect * n,
                    http_4xx: e.http_4xx * n,
                    http_5xx: e.http_5xx * n,
                    protocol: e.protocol * n,
                },
                service_time: scale_hist(&a.service_time, n),
                response_time: scale_hist(&a.response_time, n),
            },
        );
    }
    let d = &t.delivery;
    out.delivery = DeliveryStats {
        expected: d.expected * n,
        received: d.received * n,
        missing: d.missing * n,
        duplicate: d.duplicate * n,
        latency: scale_hist(&d.latency, n),
        remote_received: d.remote_received * n,
        remote_latency: scale_hist(&d.remote_latency, n),
    };
    out.schedule = ScheduleStats {
        actions: t.schedule.actions * n,
        late: t.schedule.late * n,
        lag: scale_hist(&t.schedule.lag, n),
        late_waiting: t.schedule.late_waiting * n,
        generator_lag: scale_hist(&t.schedule.generator_lag, n),
        probe_lag: scale_hist(&t.schedule.probe_lag, n),
        cpu_ms: t.schedule.cpu_ms * n,
        cpu_capacity_ms: t.schedule.cpu_capacity_ms * n,
    };
    out.reconnects = t.reconnects * n;
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).ok_or("usage: gen_large OUT RECORDS [AGENTS]")?;
    let records: u64 = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let agents: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let per_agent = (records / agents).max(1);

    // Encode each template once; stamping a serde_json::Value keeps the exact wire format.
    let templates: Vec<(serde_json::Value, IntervalRecord)> = (0..TEMPLATES)
        .map(|i| {
            let t = template(i);
            (
                serde_json::to_value(Record::Interval(t.clone())).expect("encodes"),
                t,
            )
        })
        .collect();
    // Each agent's totals are the sum of the templates it uses.
    let mut template_totals = vec![Totals::default(); TEMPLATES as usize];
    for (i, (_, t)) in templates.iter().enumerate() {
        template_totals[i].add_interval(t)?;
    }

    let file = std::fs::File::create(out)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    for a in 0..agents {
        let agent_id = format!("agent-{a}");
        let header = RunHeader {
            schema_version: schema_version(),
            run_id: "large".into(),
            agent_id: agent_id.clone(),
            tool: "gen_large".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms: START_MS,
            interval_ms: INTERVAL_MS as u64,
            clock_offset_ms: 0,
            settings: RunSettings {
                target: "http://127.0.0.1:8065".into(),
                users: 1_000,
                user_offset: a * 1_000,
                total_users: agents * 1_000,
                agents: agents as u32,
                duration_ms: per_agent * INTERVAL_MS as u64,
                ramp_up_ms: 0,
                mode: "closed".into(),
                mean_interval_ms: 1_000,
                interval_jitter_ms: 100,
                posts_per_second: None,
                action_mix: Action::MIXABLE
                    .iter()
                    .map(|x| (x.name().to_string(), 1))
                    .collect(),
                preset: None,
                seed: a,
                load_runtimes: None,
            },
        };
        {
            // The header and summary go through the contract's writer; intervals are stamped.
            let mut rw = ResultsWriter::new(&mut w);
            rw.write(&Record::Header(header))?;
        }
        let mut used = vec![0u64; TEMPLATES as usize];
        for i in 0..per_agent {
            let k = ((i + a * 7) % TEMPLATES) as usize;
            used[k] += 1;
            let mut v = templates[k].0.clone();
            v["agent_id"] = agent_id.clone().into();
            v["index"] = i.into();
            let start = START_MS + i as i64 * INTERVAL_MS;
            v["start_ms"] = start.into();
            v["end_ms"] = (start + INTERVAL_MS).into();
            serde_json::to_writer(&mut w, &v)?;
            w.write_all(b"\n")?;
        }
        let mut totals = Totals::default();
        for (k, &n) in used.iter().enumerate() {
            if n > 0 {
                totals.merge(&scaled(&template_totals[k], n))?;
            }
        }
        totals.peak_active_users = 1_000;
        totals.peak_websocket_connections = 1_000;
        let mut rw = ResultsWriter::new(&mut w);
        rw.write(&Record::Summary(SummaryRecord {
            run_id: "large".into(),
            agent_id,
            started_at_ms: START_MS,
            ended_at_ms: START_MS + per_agent as i64 * INTERVAL_MS,
            stop_reason: StopReason::Completed,
            intervals: per_agent,
            totals,
        }))?;
    }
    w.flush()?;
    eprintln!(
        "wrote {} interval records for {agents} agents to {out}",
        per_agent * agents
    );
    Ok(())
}
