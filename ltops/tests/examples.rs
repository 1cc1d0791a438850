//! What the repository ships for users to take as is: every workload config under `examples/`
//! loads and validates and its thresholds parse; every Grafana dashboard under `dashboards/`
//! passes Grafana's published schema.
//!
//! Grafana itself cannot run on this machine, so the dashboards are checked structurally here
//! (`dashboards/tests/check.mjs`: the types of npm `@grafana/schema`, as JSON Schema, strictly)
//! and their queries against a real Prometheus in `e2e.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use loadtest_contract::WorkloadConfig;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = WorkloadConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
            for t in &config.run.thresholds {
                ltparse::parse_threshold(t)
                    .unwrap_or_else(|e| panic!("{}: threshold {t:?}: {e}", path.display()));
            }
            checked.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
    }
    for name in [
        "quick.toml",
        "standard-day.toml",
        "extreme.toml",
        "capacity-check.toml",
    ] {
        assert!(
            checked.iter().any(|c| c.as_deref() == Some(name)),
            "examples/{name} is missing (found {checked:?})"
        );
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `dashboards/tests/check.mjs` on `files`, installing its npm packages (pinned by
/// `package-lock.json`) on first use. `None` when node/npm are missing outside CI.
fn check_dashboards(files: &[PathBuf]) -> Option<Output> {
    if !have("node") || !have("npm") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node and npm are required in CI (apt-get install nodejs npm)"
        );
        eprintln!("note: skipping the dashboard schema check: node/npm not installed");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/tests");
    if !dir.join("node_modules/@grafana/schema").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(st.success(), "npm ci failed in {}", dir.display());
    }
    let out = Command::new("node")
        .arg("check.mjs")
        .args(files)
        .current_dir(&dir)
        .output()
        .expect("node runs");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

#[test]
fn every_dashboard_passes_grafanas_published_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let files: Vec<PathBuf> = ["server.json", "agents.json", "overview.json"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    let Some(out) = check_dashboards(&files) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schema problems:\n{stdout}");
    assert!(
        stdout.contains("3 dashboard(s), 27 panel(s), 0 problem(s)"),
        "{stdout}"
    );

    // The check is strict: a misspelt key, a wrong type and a missing field each fail it, by name.
    let bad = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(&files[0]).expect("server.json");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("server.json is JSON");
    doc["refresh_rate"] = "5s".into();
    doc["panels"][0]["gridPos"]["w"] = "wide".into();
    if let Some(legend) = doc["panels"][1]["options"]["legend"].as_object_mut() {
        legend.remove("placement");
    }
    let path = bad.path().join("bad.json");
    std::fs::write(&path, doc.to_string()).expect("write bad.json");
    let out = check_dashboards(&[path]).expect("checked above");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "must NOT have additional properties (refresh_rate)",
        "/panels/0/gridPos/w: must be number",
        "/panels/1 (API errors per second by handler (4xx, 5xx)) options/legend: must have required property 'placement'",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
