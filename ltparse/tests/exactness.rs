//! Merging is exact: samples spread over several agents' files (and over several runs with
//! `--aggregate`) give the same percentiles as one histogram of all the samples together.
#![allow(clippy::unwrap_used)]

mod support;

use loadtest_contract::results::{ErrorCounts, StopReason};
use loadtest_contract::{LatencyHistogram, Record};
use ltparse::summary::LatencySummary;
use ltparse::{run_with_inputs, Display, Input, Options};
use support::{interval, jsonl, summary, ActionSamples, Lcg};

/// Writes `samples` for create_post, dealt round-robin to `agents` agents of `run_id`, over
/// 4 intervals per agent; returns one file (bytes) per agent.
fn files(run_id: &str, samples: &[u64], agents: usize, with_summary: bool) -> Vec<Vec<u8>> {
    (0..agents)
        .map(|a| {
            let agent = format!("agent-{a}");
            let mine: Vec<u64> = samples.iter().skip(a).step_by(agents).copied().collect();
            let chunk = mine.len().div_ceil(4).max(1);
            let intervals: Vec<_> = mine
                .chunks(chunk)
                .enumerate()
                .map(|(i, c)| {
                    let s = ActionSamples {
                        name: "create_post".into(),
                        response_us: c.to_vec(),
                        errors: ErrorCounts::default(),
                    };
                    interval(run_id, &agent, i as u64, 10_000, &[s], c, 0, &[1], 10)
                })
                .collect();
            let mut records = vec![Record::Header(support::header(
                run_id,
                &agent,
                agents as u32,
                10,
                0,
                10_000,
            ))];
            records.extend(intervals.iter().cloned().map(Record::Interval));
            if with_summary {
                records.push(Record::Summary(summary(&intervals, StopReason::Completed)));
            }
            jsonl(&records)
        })
        .collect()
}

fn samples(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            // A wide, skewed spread so percentiles land in many different HDR buckets.
            let base = 1 + rng.below(50_000);
            if rng.below(50) == 0 {
                base * 200
            } else {
                base
            }
        })
        .collect()
}

fn expected(samples: &[u64]) -> LatencySummary {
    let mut h = LatencyHistogram::new();
    for &s in samples {
        h.record_us(s);
    }
    LatencySummary::of(&h)
}

fn summarize(files: Vec<Vec<u8>>, aggregate: bool) -> ltparse::Report {
    let opts = Options {
        display: Display::Json,
        aggregate,
        ..Options::default()
    };
    let inputs: Vec<Input<'static>> = files
        .into_iter()
        .enumerate()
        .map(|(i, b)| Input::from_reader(format!("f{i}.jsonl"), std::io::Cursor::new(b)))
        .collect();
    run_with_inputs(&opts, inputs).expect("report").report
}

#[test]
fn merged_agents_equal_one_histogram_of_all_samples() {
    let all = samples(20_000, 42);
    let want = expected(&all);
    for agents in [1, 3, 7] {
        for with_summary in [true, false] {
            let report = summarize(files("run-x", &all, agents, with_summary), false);
            let run = &report.runs[0];
            let cp = run.action("create_post").expect("create_post");
            assert_eq!(
                cp.response_time, want,
                "{agents} agents, summary {with_summary}"
            );
            assert_eq!(cp.hits, all.len() as u64);
            assert_eq!(run.delivery.latency, want, "delivery, {agents} agents");
            assert_eq!(run.cut_short, !with_summary);
        }
    }
}

#[test]
fn aggregated_runs_equal_one_histogram_of_all_samples() {
    let all = samples(12_000, 7);
    let want = expected(&all);
    // Three runs, each with its share of samples spread over two agents.
    let mut inputs = Vec::new();
    for r in 0..3 {
        let mine: Vec<u64> = all.iter().skip(r).step_by(3).copied().collect();
        inputs.extend(files(&format!("run-{r}"), &mine, 2, r != 1));
    }
    let report = summarize(inputs, true);
    assert_eq!(report.runs.len(), 1);
    let run = &report.runs[0];
    assert_eq!(run.run_ids, vec!["run-0", "run-1", "run-2"]);
    assert_eq!(run.action("create_post").expect("cp").response_time, want);
    // Per-interval timelines merge exactly too: interval 0 of every agent of every run.
    let first: Vec<u64> = {
        let mut v = Vec::new();
        for r in 0..3usize {
            let mine: Vec<u64> = all.iter().skip(r).step_by(3).copied().collect();
            for a in 0..2usize {
                let m: Vec<u64> = mine.iter().skip(a).step_by(2).copied().collect();
                v.extend(m.iter().take(m.len().div_ceil(4)));
            }
        }
        v
    };
    // The timeline rounds values up by at most 1/64 (to stay small); totals are exact.
    let i0 = &run.intervals[0].actions[0].response_time;
    let want0 = expected(&first);
    assert_eq!(i0.count, want0.count);
    for (got, exact) in [
        (i0.p50_us, want0.p50_us),
        (i0.p99_us, want0.p99_us),
        (i0.max_us, want0.max_us),
    ] {
        let exact = exact as f64;
        let got = got as f64;
        assert!(
            got >= exact * 0.999 && got <= exact * (1.0 + 1.0 / 64.0) + 1.0,
            "{got} vs {exact}"
        );
    }
}

#[test]
fn concatenated_input_equals_separate_files() {
    let all = samples(5_000, 3);
    let parts = files("run-c", &all, 4, true);
    let separate = summarize(parts.clone(), false);
    let joined = summarize(vec![parts.concat()], false);
    assert_eq!(separate.runs[0].actions, joined.runs[0].actions);
}
