//! Fuzzing the reader and summarizer with proptest: arbitrary bytes and mutated valid files must
//! give a report or an error, never a panic. The corpus is generated (one small valid run), so
//! nothing needs to be kept in the repository beyond proptest's regression seeds.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::OnceLock;

use ltparse::{run_with_inputs, Display, Input, Options};
use proptest::prelude::*;
use support::{run_bytes, RunSpec};

fn valid() -> &'static [u8] {
    static V: OnceLock<Vec<u8>> = OnceLock::new();
    V.get_or_init(|| {
        let mut s = RunSpec::new("fz");
        s.intervals = 2;
        s.agents = 2;
        run_bytes(&s)
    })
}

fn exercise(bytes: &[u8]) {
    for display in [
        Display::Text,
        Display::Json,
        Display::Html,
        Display::Markdown,
    ] {
        let opts = Options {
            display,
            aggregate: true,
            verbose: true,
            thresholds: vec!["*.p99<1s".into(), "delivery.missing_rate<1%".into()],
            ..Options::default()
        };
        // Either outcome is fine; a panic fails the test.
        let _ = run_with_inputs(&opts, [Input::from_reader("fuzz", bytes)]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=5000 for a longer local session.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = valid().to_vec();
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(&bytes);
    }

    #[test]
    fn spliced_lines_never_panic(
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..12),
    ) {
        // Lines of a valid file re-ordered, repeated and dropped: header after intervals,
        // duplicate summaries, orphan intervals.
        let lines: Vec<&[u8]> = valid().split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let mut bytes = Vec::new();
        for p in picks {
            bytes.extend_from_slice(lines[p.index(lines.len())]);
            bytes.push(b'\n');
        }
        exercise(&bytes);
    }
}

#[test]
fn json_text_that_is_valid_but_semantically_odd() {
    for line in [
        "{\"kind\":\"summary\"}",
        "{\"kind\":null}",
        "{\"kind\":\"header\",\"schema_version\":\"x\"}",
        "{\"kind\":\"header\",\"schema_version\":\"99999999999999999999.0\"}",
        "{\"kind\":\"interval\",\"run_id\":\"r\",\"agent_id\":\"a\",\"index\":0,\"start_ms\":5,\"end_ms\":-5,\"actions\":{},\"delivery\":{\"expected\":0,\"received\":0,\"missing\":0,\"duplicate\":0,\"latency\":\"\"},\"schedule\":{\"actions\":0,\"late\":0,\"lag\":\"\"},\"gauges\":{\"active_users\":0,\"websocket_connections\":0,\"deliveries_received\":0,\"reconnects\":0}}",
        "\u{feff}{}",
        "[]",
        "1e999",
    ] {
        exercise(line.as_bytes());
    }
}

#[test]
fn huge_counts_are_rejected_not_overflowed() {
    use loadtest_contract::Record;
    let mut s = RunSpec::new("big");
    s.agents = 1;
    let mut recs: Vec<Record> = support::generate(&s)
        .into_iter()
        .flat_map(|(_, r)| r)
        .collect();
    for r in &mut recs {
        match r {
            Record::Interval(i) => {
                for a in i.actions.values_mut() {
                    a.ok = u64::MAX;
                }
            }
            Record::Summary(x) => x.totals.delivery.expected = u64::MAX,
            Record::Header(_) => {}
            Record::Server(x) => x.requests = u64::MAX,
        }
    }
    let bytes = support::jsonl(&recs);
    let err = run_with_inputs(
        &Options::default(),
        [Input::from_reader("big", bytes.as_slice())],
    )
    .expect_err("implausible");
    assert!(err.to_string().contains("implausible"), "{err}");
    exercise(&bytes);
}

#[test]
fn extreme_times_and_sizes_do_not_panic() {
    use loadtest_contract::Record;
    let mut s = RunSpec::new("t");
    s.agents = 1;
    for (start, interval) in [
        (i64::MAX, u64::MAX),
        (i64::MIN, 0),
        (253_402_300_800_000, 1),
    ] {
        let mut recs: Vec<Record> = support::generate(&s)
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect();
        for r in &mut recs {
            match r {
                Record::Header(h) => {
                    h.started_at_ms = start;
                    h.interval_ms = interval;
                    h.settings.duration_ms = u64::MAX;
                    h.settings.mean_interval_ms = u64::MAX;
                }
                Record::Interval(i) => {
                    i.start_ms = start;
                    i.end_ms = i64::MIN;
                }
                Record::Summary(x) => {
                    x.started_at_ms = i64::MIN;
                    x.ended_at_ms = i64::MAX;
                }
                Record::Server(x) => {
                    x.start_ms = i64::MAX;
                    x.end_ms = i64::MIN;
                }
            }
        }
        exercise(&support::jsonl(&recs));
    }
}
