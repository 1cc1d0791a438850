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

/// Every display leads with what limited the run: here the agents were starved of CPU, so the
/// report must say the generator, not the server, was the limit and the latencies are overstated.
#[test]
fn every_display_leads_with_a_starved_generator() {
    let mut spec = RunSpec::new("run-1");
    spec.generator_starved = Some(true);
    spec.late_per_mille = 50;
    let text = report(&Options::default(), &[spec.clone()]);
    insta::assert_snapshot!("text_generator_limit", text);
    let second = text.lines().nth(1).unwrap_or_default();
    assert!(
        second.starts_with("  limit       the load generator, not the server"),
        "{second}"
    );
    let md = report(
        &Options {
            display: Display::Markdown,
            ..Options::default()
        },
        &[spec.clone()],
    );
    let lead = md
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'));
    assert!(
        lead.is_some_and(|l| l.starts_with("> **Limit: the load generator, not the server")),
        "{md}"
    );
    let html = report(
        &Options {
            display: Display::Html,
            ..Options::default()
        },
        &[spec],
    );
    let h1 = html.find("</h1>").unwrap_or(0);
    let limit = html.find("<p class=\"fail\">Limit: the load generator, not the server");
    assert!(
        limit.is_some_and(|at| at > h1 && html[h1..at].trim() == "</h1>"),
        "{html}"
    );
}

/// A generator that kept up says so, so the reader knows the latencies are the server's.
#[test]
fn a_generator_that_kept_up_says_the_latencies_are_the_servers() {
    let mut spec = RunSpec::new("run-1");
    spec.generator_starved = Some(false);
    let text = report(&Options::default(), &[spec]);
    let second = text.lines().nth(1).unwrap_or_default();
    assert!(
        second.starts_with("  limit       not the load generator: it kept up")
            && second.ends_with("so the latencies are the server's"),
        "{second}"
    );
    assert!(!text.contains("UNRELIABLE"), "{text}");
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

#[test]
fn remote_deliveries_are_reported_when_present() {
    let mut spec = RunSpec::new("run-r");
    // 3 intervals × 2 agents × 20 remote receipts at 5..24 ms.
    spec.remote_per_interval = 20;
    let line = "Deliveries to receivers on other agents (clock-offset corrected): 120 received, p50 14.01 ms, p99 24.02 ms, max 24.02 ms";
    let text = report(&Options::default(), &[spec.clone()]);
    assert!(text.contains(line), "{text}");
    let md = report(
        &Options {
            display: Display::Markdown,
            ..Options::default()
        },
        &[spec.clone()],
    );
    assert!(md.contains(line), "{md}");
    let opts = Options {
        display: Display::Json,
        thresholds: vec![
            "delivery.remote_p99<30ms".into(),
            "delivery.remote_count>=120".into(),
        ],
        ..Options::default()
    };
    let json = report(&opts, &[spec]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let remote = &v["runs"][0]["delivery"]["remote"];
    assert_eq!(remote["received"], 120, "{json}");
    assert_eq!(remote["latency"]["count"], 120);
    assert_eq!(v["outcome"], "pass", "{json}");
    // Without remote receipts: no line, no field, and remote thresholds have no data.
    let plain = report(&Options::default(), &[RunSpec::new("run-1")]);
    assert!(!plain.contains("other agents"));
    let opts = Options {
        display: Display::Json,
        thresholds: vec!["delivery.remote_p99<30ms".into()],
        ..Options::default()
    };
    let json = report(&opts, &[RunSpec::new("run-1")]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert!(v["runs"][0]["delivery"].get("remote").is_none());
    assert_eq!(v["thresholds"][0]["passed"], false);
}
