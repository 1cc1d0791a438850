//! The results schema in `contract/schema/results.schema.json` describes what the writer really
//! produces: records of every kind, written through `ResultsWriter`, validate line by line, and
//! records that break the contract do not.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use loadtest_contract::results::{
    schema_version, ActionStats, DeliveryStats, ErrorCounts, Gauges, IntervalRecord, RunHeader,
    RunSettings, ScheduleStats, ServerRecord, StopReason, SummaryRecord, Totals,
};
use loadtest_contract::{Action, Record, ResultsWriter};

fn validator() -> jsonschema::Validator {
    let text = include_str!("../schema/results.schema.json");
    let schema: serde_json::Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::draft202012::new(&schema).expect("schema is valid draft 2020-12")
}

fn header(open: bool) -> RunHeader {
    RunHeader {
        schema_version: schema_version(),
        run_id: "run-1".into(),
        agent_id: "agent-0".into(),
        tool: "loadtest-agent".into(),
        tool_version: "0.1.0".into(),
        started_at_ms: 1_700_000_000_000,
        interval_ms: 10_000,
        clock_offset_ms: -3,
        settings: RunSettings {
            target: "http://127.0.0.1:8065".into(),
            users: 10,
            user_offset: 0,
            total_users: 20,
            agents: 2,
            duration_ms: 60_000,
            ramp_up_ms: 1_000,
            mode: if open { "open" } else { "closed" }.into(),
            mean_interval_ms: 1_000,
            interval_jitter_ms: 100,
            posts_per_second: open.then_some(21.0),
            action_mix: Action::MIXABLE
                .iter()
                .map(|a| (a.name().to_string(), 1))
                .collect(),
            preset: open.then(|| "extreme".to_string()),
            seed: 1,
            load_runtimes: open.then_some(2),
        },
    }
}

fn interval(index: u64) -> IntervalRecord {
    let mut actions = BTreeMap::new();
    for (n, a) in Action::ALL.iter().enumerate() {
        let mut s = ActionStats {
            ok: 10 + n as u64,
            errors: ErrorCounts {
                timeout: 1,
                connect: 2,
                http_4xx: 3,
                http_5xx: 4,
                protocol: 5,
            },
            ..ActionStats::default()
        };
        for v in 1..50 {
            s.service_time.record_us(v * 997);
            s.response_time.record_us(v * 1201);
        }
        actions.insert(a.name().to_string(), s);
    }
    let mut delivery = DeliveryStats {
        expected: 30,
        received: 29,
        duplicate: 1,
        ..DeliveryStats::default()
    };
    delivery.latency.record_us(12_345);
    // Schema 1.1: deliveries to receivers on other agents.
    delivery.remote_received = 4;
    delivery.remote_latency.record_us(9_000);
    let mut schedule = ScheduleStats {
        actions: 100,
        late: 2,
        ..ScheduleStats::default()
    };
    schedule.lag.record_us(150_000);
    // Schema 1.2: whose lateness it was.
    schedule.late_waiting = 1;
    schedule.generator_lag.record_us(2_000);
    schedule.probe_lag.record_us(300);
    schedule.cpu_ms = 400;
    schedule.cpu_capacity_ms = 2_000;
    IntervalRecord {
        run_id: "run-1".into(),
        agent_id: "agent-0".into(),
        index,
        start_ms: 1_700_000_000_000 + index as i64 * 10_000,
        end_ms: 1_700_000_010_000 + index as i64 * 10_000,
        actions,
        delivery,
        schedule,
        gauges: Gauges {
            active_users: 10,
            websocket_connections: 9,
            deliveries_received: 31,
            reconnects: 1,
        },
    }
}

fn lines(records: &[Record]) -> Vec<serde_json::Value> {
    let mut w = ResultsWriter::new(Vec::new());
    for r in records {
        w.write(r).expect("write");
    }
    String::from_utf8(w.into_inner())
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("line is JSON"))
        .collect()
}

fn all_kinds() -> Vec<Record> {
    let intervals = [interval(0), interval(1)];
    let mut totals = Totals::default();
    for i in &intervals {
        totals.add_interval(i).expect("merge");
    }
    totals.delivery.missing = 1;
    let empty = IntervalRecord {
        actions: BTreeMap::new(),
        delivery: DeliveryStats::default(),
        schedule: ScheduleStats::default(),
        ..interval(2)
    };
    vec![
        Record::Header(header(false)),
        Record::Header(header(true)),
        Record::Interval(intervals[0].clone()),
        Record::Interval(intervals[1].clone()),
        Record::Interval(empty),
        Record::Summary(SummaryRecord {
            run_id: "run-1".into(),
            agent_id: "agent-0".into(),
            started_at_ms: 1_700_000_000_000,
            ended_at_ms: 1_700_000_030_000,
            stop_reason: StopReason::Completed,
            intervals: 3,
            totals,
        }),
        Record::Summary(SummaryRecord {
            run_id: "run-1".into(),
            agent_id: "agent-1".into(),
            started_at_ms: 1,
            ended_at_ms: 2,
            stop_reason: StopReason::Interrupted,
            intervals: 0,
            totals: Totals::default(),
        }),
        // Schema 1.3: a server instance's own figures, sampled by the coordinator.
        Record::Server(ServerRecord {
            run_id: "run-1".into(),
            instance: "server-0".into(),
            index: 0,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_010_000,
            cpu_seconds: 1.25,
            rss_bytes: 50_000_000,
            websocket_connections: 20,
            tasks: 31,
            requests: 400,
            errors_5xx: 1,
            posts: 12,
            broadcasts: 40,
            deliveries: 240,
            dropped: 0,
            db_operations: 60,
            db_seconds: 0.03,
        }),
    ]
}

#[test]
fn every_written_record_validates() {
    let v = validator();
    for line in lines(&all_kinds()) {
        let errors: Vec<String> = v
            .iter_errors(&line)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{line}\n{errors:#?}");
    }
}

#[test]
fn records_that_break_the_contract_do_not_validate() {
    let v = validator();
    let good = lines(&all_kinds());
    let mut bad = Vec::new();
    let mut h = good[0].clone();
    h["settings"]["mode"] = "sideways".into();
    bad.push(h);
    let mut h = good[0].clone();
    h.as_object_mut().unwrap().remove("run_id");
    bad.push(h);
    let mut i = good[2].clone();
    i["actions"]["create_post"]["ok"] = (-1).into();
    bad.push(i);
    let mut i = good[2].clone();
    i["undocumented"] = true.into();
    bad.push(i);
    let mut s = good[5].clone();
    s["stop_reason"] = "exploded".into();
    bad.push(s);
    let mut s = good[5].clone();
    s["totals"]["delivery"]["latency"] = "not base64!".into();
    bad.push(s);
    bad.push(serde_json::json!({"kind": "header"}));
    for b in bad {
        assert!(!v.is_valid(&b), "should be invalid: {b}");
    }
}
