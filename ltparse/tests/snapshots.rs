//! Snapshot tests of the exact text and Markdown output for fixed generated input.
//! Update after an intended change with `INSTA_UPDATE=always cargo test -p ltparse --test snapshots`
//! and review the diff of the `.snap` files.
#![allow(clippy::unwrap_used)]

mod support;

use ltparse::{run_with_inputs, Display, Input, Options};
use support::{run_bytes, RunSpec};

fn report(opts: &Options, specs: &[RunSpec]) -> String {
    let bytes: Vec<u8> = specs.iter().flat_map(run_bytes).collect();
    let out =
        run_with_inputs(opts, [Input::from_reader("gen.jsonl", bytes.as_slice())]).expect("report");
    out.rendered
}

fn with_baseline(opts: &mut Options, dir: &tempfile::TempDir) {
    let mut base = RunSpec::new("base-run");
    base.latency_factor = 0.8;
    base.load_factor = 1.2;
    opts.baseline = support::write_run(dir.path(), &base);
}

#[test]
fn text_report() {
    let opts = Options::default();
    insta::assert_snapshot!("text", report(&opts, &[RunSpec::new("run-1")]));
}

#[test]
fn text_report_verbose_cut_short_and_behind() {
    let mut spec = RunSpec::new("run-1");
    spec.cut_short_agent = Some(1);
    spec.late_per_mille = 50;
    let opts = Options {
        verbose: true,
        ..Options::default()
    };
    insta::assert_snapshot!("text_verbose_cut_short", report(&opts, &[spec]));
}

#[test]
fn text_report_with_thresholds_and_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = Options {
        thresholds: vec![
            "create_post.p99<200ms".into(),
            "*.error_rate<1%".into(),
            "delivery.p99<50ms".into(),
            "throughput>20/s".into(),
            "read_more.p99<100ms".into(),
        ],
        ..Options::default()
    };
    with_baseline(&mut opts, &dir);
    insta::assert_snapshot!("text_gates", report(&opts, &[RunSpec::new("run-1")]));
}

#[test]
fn text_report_of_two_runs_in_turn() {
    let opts = Options::default();
    insta::assert_snapshot!(
        "text_two_runs",
        report(&opts, &[RunSpec::new("run-1"), RunSpec::new("run-2")])
    );
}

#[test]
fn markdown_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = Options {
        display: Display::Markdown,
        thresholds: vec!["create_post.p99<200ms".into(), "*.error_rate<1%".into()],
        ..Options::default()
    };
    with_baseline(&mut opts, &dir);
    insta::assert_snapshot!("markdown", report(&opts, &[RunSpec::new("run-1")]));
}

#[test]
fn html_is_self_contained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = Options {
        display: Display::Html,
        ..Options::default()
    };
    with_baseline(&mut opts, &dir);
    let html = report(&opts, &[RunSpec::new("run-1")]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg"), "has charts");
    assert!(html.contains("baseline p99"), "baseline overlaid");
    for forbidden in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(forbidden), "no network fetch: {forbidden}");
    }
}

#[test]
fn json_report_is_the_documented_structure() {
    let opts = Options {
        display: Display::Json,
        thresholds: vec!["create_post.count>0".into()],
        ..Options::default()
    };
    let json = report(&opts, &[RunSpec::new("run-1")]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["format"], "ltparse-report");
    assert_eq!(v["version"], 1);
    assert_eq!(v["outcome"], "pass");
    assert_eq!(v["exit_code"], 0);
    let run = &v["runs"][0];
    assert_eq!(run["run_ids"][0], "run-1");
    assert!(
        run["actions"][1]["response_time"]["p99_us"]
            .as_u64()
            .expect("p99")
            > 0
    );
    assert_eq!(run["actions"][1]["action"], "create_post");
    assert!(
        run.get("intervals").is_none(),
        "intervals only with --verbose"
    );
    assert_eq!(v["thresholds"][0]["passed"], true);
}
