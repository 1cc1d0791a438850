//! Baseline verdicts (regression, improvement, noise) and threshold evaluation, through the
//! library on generated runs.
#![allow(clippy::unwrap_used)]

mod support;

use ltparse::{
    compare, evaluate, load, parse_threshold, summarize, Change, Input, NoiseFloor, Outcome,
    Report, RunSummary,
};
use support::{run_bytes, RunSpec};

fn summary_of(spec: &RunSpec) -> RunSummary {
    let bytes = run_bytes(spec);
    let loaded = load([Input::from_reader("gen", bytes.as_slice())]).expect("load");
    summarize(&loaded.aggregate().expect("aggregate"))
}

fn spec(latency: f64, load: f64, error_every: u64) -> RunSpec {
    let mut s = RunSpec::new("r");
    s.latency_factor = latency;
    s.load_factor = load;
    s.error_every = error_every;
    s.intervals = 4;
    s
}

#[test]
fn slower_run_is_a_regression_listed_first() {
    let base = summary_of(&spec(1.0, 1.0, 40));
    let slow = summary_of(&spec(1.5, 1.0, 40));
    let c = compare(&base, &slow, &NoiseFloor::default());
    assert!(c.has_regression());
    let p99 = c
        .rows
        .iter()
        .find(|r| r.subject == "create_post" && r.metric == "p99")
        .expect("row");
    assert_eq!(p99.change, Change::Regression);
    assert!(p99.delta > 0.0);
    let report = Report::build(vec![slow], Some(base), &[], &NoiseFloor::default());
    assert_eq!(report.outcome, Outcome::Regression);
    assert_eq!(report.outcome.exit_code(), 4);
}

#[test]
fn faster_run_is_an_improvement_not_a_regression() {
    let base = summary_of(&spec(1.0, 1.0, 40));
    let fast = summary_of(&spec(0.5, 1.0, 40));
    let c = compare(&base, &fast, &NoiseFloor::default());
    assert!(
        !c.has_regression(),
        "{:#?}",
        c.regressions().collect::<Vec<_>>()
    );
    assert!(c.improvements().count() >= 10);
    let more = summary_of(&spec(1.0, 1.5, 40));
    let c = compare(&base, &more, &NoiseFloor::default());
    let thr = c
        .rows
        .iter()
        .find(|r| r.subject == "switch_channel" && r.metric == "throughput")
        .expect("row");
    assert_eq!(thr.change, Change::Improvement, "more throughput is better");
    let less = summary_of(&spec(1.0, 0.5, 40));
    let c = compare(&base, &less, &NoiseFloor::default());
    assert!(c.regressions().any(|r| r.metric == "throughput"));
}

#[test]
fn tiny_changes_are_noise() {
    let base = summary_of(&spec(1.0, 1.0, 40));
    // 2 % slower: above the 1 ms floor for the slow tails, but under the 5 % tolerance.
    let same = summary_of(&spec(1.02, 1.0, 40));
    let c = compare(&base, &same, &NoiseFloor::default());
    assert!(
        !c.has_regression(),
        "{:#?}",
        c.regressions().collect::<Vec<_>>()
    );
    assert_eq!(c.improvements().count(), 0);
    // The same run against itself: nothing at all.
    let c = compare(&base, &base, &NoiseFloor::default());
    assert!(c.rows.iter().all(|r| r.change == Change::Noise));
    // A stricter tolerance turns the 2 % into a regression.
    let strict = NoiseFloor {
        relative: 0.001,
        latency_us: 10.0,
        ..NoiseFloor::default()
    };
    assert!(compare(&base, &same, &strict).has_regression());
}

#[test]
fn more_errors_is_a_regression() {
    let base = summary_of(&spec(1.0, 1.0, 0));
    let errs = summary_of(&spec(1.0, 1.0, 10));
    let c = compare(&base, &errs, &NoiseFloor::default());
    assert!(c
        .regressions()
        .any(|r| r.subject == "create_post" && r.metric == "error_rate"));
}

fn check(run: &RunSummary, expr: &str) -> Vec<(String, bool)> {
    let t = parse_threshold(expr).expect(expr);
    evaluate(&[t], run)
        .into_iter()
        .map(|r| (r.subject, r.passed))
        .collect()
}

#[test]
fn thresholds_evaluate_against_the_summary() {
    let run = summary_of(&spec(1.0, 1.0, 40));
    let cp = run.action("create_post").expect("cp").clone();
    let p99_ms = cp.response_time.p99_us as f64 / 1000.0;
    assert_eq!(
        check(&run, &format!("create_post.p99<{}ms", p99_ms + 0.01)),
        vec![("create_post.p99".into(), true)]
    );
    assert_eq!(
        check(&run, &format!("create_post.p99<{p99_ms}ms")),
        vec![("create_post.p99".into(), false)]
    );
    assert_eq!(
        check(&run, &format!("create_post.p99<={p99_ms}ms")),
        vec![("create_post.p99".into(), true)]
    );
    // create_post has 1 error in 40 (2.5 %); the others none.
    assert_eq!(
        check(&run, "*.error_rate<1%"),
        vec![
            ("check_unreads.error_rate".into(), true),
            ("create_post.error_rate".into(), false),
            ("switch_channel.error_rate".into(), true)
        ]
    );
    assert_eq!(
        check(&run, "throughput>20/s"),
        vec![("throughput".into(), true)]
    );
    assert_eq!(
        check(&run, "throughput>2000/s"),
        vec![("throughput".into(), false)]
    );
    assert_eq!(
        check(&run, "delivery.p99<1s"),
        vec![("delivery.p99".into(), true)]
    );
    assert_eq!(
        check(&run, "delivery.missing_rate<0.1%"),
        vec![("delivery.missing_rate".into(), false)]
    );
    assert_eq!(
        check(&run, "create_post.count>0"),
        vec![("create_post.count".into(), true)]
    );
    assert_eq!(
        check(&run, "switch_channel.mean<=100ms"),
        vec![("switch_channel.mean".into(), true)]
    );
}

#[test]
fn absent_action_fails_with_no_data_unless_count() {
    let run = summary_of(&spec(1.0, 1.0, 40));
    let t = parse_threshold("read_more.p99<1s").expect("valid");
    let r = evaluate(&[t], &run);
    assert!(!r[0].passed);
    assert!(
        r[0].actual_display.contains("no data"),
        "{}",
        r[0].actual_display
    );
    assert!(r[0].actual.is_none());
    assert_eq!(
        check(&run, "read_more.count==0"),
        vec![("read_more.count".into(), true)]
    );
    assert_eq!(
        check(&run, "read_more.count>0"),
        vec![("read_more.count".into(), false)]
    );
}
