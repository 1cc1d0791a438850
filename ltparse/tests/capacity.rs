//! `ltparse capacity`: what a user reads of a capacity search (snapshots of the text and
//! Markdown reports) and the exit codes a CI job gates on, through the real binary.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use loadtest_contract::capacity::*;

/// A search of 7 probes as `ltops` writes it: 8, 16 good; 32 bad; 24, 28, 30 good; 30 confirmed.
fn search(supported: u64) -> CapacityReport {
    let levels = [
        (8, true),
        (16, true),
        (32, false),
        (24, true),
        (28, true),
        (30, true),
    ];
    let mut probes: Vec<ProbeRecord> = levels
        .iter()
        .enumerate()
        .map(|(i, (users, good))| probe(i, *users, *good, false))
        .collect();
    probes.push(probe(6, supported, true, true));
    CapacityReport {
        format: CAPACITY_FORMAT.into(),
        version: CAPACITY_VERSION,
        run_id: format!("20261201T232555Z-{supported}"),
        started_at_ms: 1_764_631_555_000,
        finished_at_ms: 1_764_631_555_000 + 70_000,
        slos: vec!["*.error_rate<1%".into()],
        start_users: 8,
        max_users: 80,
        tolerance: 0.1,
        probe_warmup_ms: 3_000,
        probe_window_ms: 6_000,
        agents: 2,
        outcome: CapacityOutcome::Supported,
        supported_users: Some(supported),
        bracket: Bracket {
            good: Some(supported),
            bad: Some(32),
        },
        summary: format!(
            "supported users: {supported} (between {supported} and 32, tolerance 10%)"
        ),
        probes,
    }
}

fn probe(i: usize, users: u64, good: bool, confirmation: bool) -> ProbeRecord {
    let start = 1_764_631_555_000 + i as i64 * 10_000;
    let ws = if good { 0.0 } else { 1.0 };
    ProbeRecord {
        users,
        active_users: users,
        confirmation,
        started_at_ms: start,
        window_start_ms: start + 3_000,
        window_end_ms: start + 9_000,
        verdict: if good {
            ProbeVerdict::Good
        } else {
            ProbeVerdict::Bad
        },
        slos: vec![
            SloValue {
                slo: "*.error_rate<1% (create_post.error_rate)".into(),
                value: Some(0.0),
                shown: "0.00%".into(),
                passed: true,
            },
            SloValue {
                slo: "*.error_rate<1% (ws_connect.error_rate)".into(),
                value: Some(ws),
                shown: format!("{:.2}%", ws * 100.0),
                passed: good,
            },
        ],
        reason: (!good).then(|| "failed: *.error_rate<1% (ws_connect.error_rate): 100.00%".into()),
        requests_per_sec: users as f64 * 2.05,
        delivery_p99_ms: Some(7.0 + users as f64 / 2.0),
    }
}

fn write(dir: &Path, r: &CapacityReport) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(CAPACITY_FILE),
        serde_json::to_string_pretty(r).unwrap(),
    )
    .unwrap();
}

fn ltparse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ltparse"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn text_and_markdown_reports() {
    let r = search(30);
    let base = search(34);
    let cmp = ltparse::compare_capacity(&base, &r);
    insta::assert_snapshot!(
        "capacity_text",
        ltparse::render_capacity(&r, Some(&cmp), ltparse::Display::Text).unwrap()
    );
    insta::assert_snapshot!(
        "capacity_markdown",
        ltparse::render_capacity(&r, None, ltparse::Display::Markdown).unwrap()
    );
}

#[test]
fn the_exit_code_gates_on_supported_users_against_a_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (old, same, fewer) = (
        dir.path().join("old"),
        dir.path().join("same"),
        dir.path().join("fewer"),
    );
    write(&old, &search(30));
    write(&same, &search(28));
    write(&fewer, &search(24));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let o = ltparse(&["capacity", "--file", &s(&old)]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("supported users: 30"));
    // 28 against 30: within the 10 % the searches were run with.
    let o = ltparse(&["capacity", "--file", &s(&same), "--baseline", &s(&old)]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = ltparse(&[
        "capacity",
        "--file",
        &s(&fewer),
        "--baseline",
        &s(&old),
        "-d",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["comparison"]["change"], "regression");
    assert_eq!(json["capacity"]["supported_users"], 24);
    // A file that is not a capacity report: exit 2, naming it.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"format\": \"x\"}").unwrap();
    let o = ltparse(&["capacity", "--file", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.json"),
        "{o:?}"
    );
    // The HTML page goes to --output.
    let page = dir.path().join("capacity.html");
    let o = ltparse(&[
        "capacity",
        "--file",
        &s(&old),
        "-d",
        "html",
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<rect class=\"probe").count(), 7);
}
