//! Capacity runs: reading `capacity.json` (the contract's [`CapacityReport`]), rendering it in
//! every display, and comparing the supported users of two capacity runs (`--baseline`).
//!
//! A drop in supported users counts as a regression only when it is larger than the precision
//! either search was run with (its tolerance): two searches of the same system land anywhere
//! within their brackets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use loadtest_contract::capacity::{CapacityReport, ProbeVerdict, CAPACITY_FILE};
use serde::Serialize;

use crate::{Change, Display, Error, EXIT_PASS, EXIT_REGRESSION};

/// Reads a `capacity.json`, or the one in a run's results directory.
pub fn load_capacity(path: &Path) -> Result<CapacityReport, Error> {
    let file: PathBuf = if path.is_dir() {
        path.join(CAPACITY_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
        path: file.display().to_string(),
        source,
    })?;
    CapacityReport::from_json(&text, &file.display().to_string())
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// The supported users of a run against a baseline's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityComparison {
    pub baseline_run: String,
    pub baseline: Option<u64>,
    pub actual: Option<u64>,
    /// `actual / baseline − 1`, when both have an answer.
    pub relative: Option<f64>,
    pub change: Change,
    pub sentence: String,
}

impl CapacityComparison {
    pub fn is_regression(&self) -> bool {
        self.change == Change::Regression
    }
}

/// Compares supported users; a change within the larger of the two tolerances is noise.
pub fn compare_capacity(baseline: &CapacityReport, actual: &CapacityReport) -> CapacityComparison {
    let tol = baseline.tolerance.max(actual.tolerance);
    let (b, a) = (baseline.supported_users, actual.supported_users);
    let (relative, change, sentence) = match (b, a) {
        (Some(b), Some(a)) => {
            let rel = a as f64 / b.max(1) as f64 - 1.0;
            let change = if rel < -tol {
                Change::Regression
            } else if rel > tol {
                Change::Improvement
            } else {
                Change::Noise
            };
            let s = match change {
                Change::Regression => format!(
                    "supported users fell from {b} to {a} ({:+.1}%, beyond the {:.0}% tolerance): regression",
                    rel * 100.0,
                    tol * 100.0
                ),
                Change::Improvement => format!(
                    "supported users rose from {b} to {a} ({:+.1}%)",
                    rel * 100.0
                ),
                _ => format!(
                    "supported users {a} against {b} ({:+.1}%, within the {:.0}% tolerance)",
                    rel * 100.0,
                    tol * 100.0
                ),
            };
            (Some(rel), change, s)
        }
        (Some(b), None) => (
            None,
            Change::Regression,
            format!("the baseline supported {b} users; this run found no answer: regression"),
        ),
        (None, Some(a)) => (
            None,
            Change::Noise,
            format!("this run supports {a} users; the baseline found no answer to compare with"),
        ),
        (None, None) => (
            None,
            Change::Noise,
            "neither run found an answer; nothing to compare".to_string(),
        ),
    };
    CapacityComparison {
        baseline_run: baseline.run_id.clone(),
        baseline: b,
        actual: a,
        relative,
        change,
        sentence,
    }
}

/// The exit code for a capacity report (with its comparison): 4 on a regression, else 0.
pub fn capacity_exit_code(cmp: Option<&CapacityComparison>) -> i32 {
    if cmp.is_some_and(CapacityComparison::is_regression) {
        EXIT_REGRESSION
    } else {
        EXIT_PASS
    }
}

fn verdict(v: ProbeVerdict) -> &'static str {
    match v {
        ProbeVerdict::Good => "good",
        ProbeVerdict::Bad => "bad",
        ProbeVerdict::Invalid => "invalid",
    }
}

/// `m:ss` of `ms` after the search started.
fn at(r: &CapacityReport, ms: i64) -> String {
    let s = (ms - r.started_at_ms).max(0) / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}

fn took(r: &CapacityReport) -> String {
    let s = ((r.finished_at_ms - r.started_at_ms).max(0) / 1000) as u64;
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

fn slo_values(p: &loadtest_contract::capacity::ProbeRecord) -> Vec<String> {
    p.slos
        .iter()
        .map(|v| {
            format!(
                "{}: {} {}",
                v.slo,
                v.shown,
                if v.passed { "ok" } else { "FAILED" }
            )
        })
        .collect()
}

/// A probe's cells as the markdown and html tables show them: probe, users, active, window,
/// verdict, req/s, and the SLO values (with the reason of an invalid probe).
fn rows(r: &CapacityReport) -> Vec<(ProbeVerdict, [String; 6], Vec<String>)> {
    r.probes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut values = slo_values(p);
            if p.verdict == ProbeVerdict::Invalid {
                values.extend(p.reason.clone());
            }
            let cells = [
                format!(
                    "{}{}",
                    i + 1,
                    if p.confirmation { " (confirm)" } else { "" }
                ),
                p.users.to_string(),
                p.active_users.to_string(),
                format!("{}–{}", at(r, p.window_start_ms), at(r, p.window_end_ms)),
                verdict(p.verdict).to_string(),
                format!("{:.1}", p.requests_per_sec),
            ];
            (p.verdict, cells, values)
        })
        .collect()
}

fn heading(r: &CapacityReport) -> String {
    format!(
        "capacity search {} · {} agent(s) · SLOs {} · warm-up {}, window {}, tolerance {:.0}% · {} probes in {}",
        r.run_id,
        r.agents,
        r.slos.join(", "),
        humantime::format_duration(std::time::Duration::from_millis(r.probe_warmup_ms)),
        humantime::format_duration(std::time::Duration::from_millis(r.probe_window_ms)),
        r.tolerance * 100.0,
        r.probes.len(),
        took(r)
    )
}

/// Renders a capacity report in `display`.
pub fn render_capacity(
    r: &CapacityReport,
    cmp: Option<&CapacityComparison>,
    display: Display,
) -> Result<String, Error> {
    Ok(match display {
        Display::Text => text(r, cmp),
        Display::Markdown => markdown(r, cmp),
        Display::Json => {
            let mut s = serde_json::to_string_pretty(&serde_json::json!({
                "format": "ltparse-capacity",
                "version": 1,
                "capacity": r,
                "comparison": cmp,
            }))
            .map_err(|e| Error::Invalid(format!("cannot encode the report: {e}")))?;
            s.push('\n');
            s
        }
        Display::Html => html(r, cmp),
        Display::Junit => crate::junit::capacity_junit(r, cmp),
    })
}

fn text(r: &CapacityReport, cmp: Option<&CapacityComparison>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}\n", heading(r));
    let _ = writeln!(
        s,
        "{:>5}  {:>8}  {:>8}  {:<13}  {:<8}  {:>9}  {:>14}",
        "probe", "users", "active", "window", "verdict", "req/s", "delivery p99"
    );
    for (i, p) in r.probes.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>5}  {:>8}  {:>8}  {:<13}  {:<8}  {:>9.1}  {:>14}",
            format!("{}{}", i + 1, if p.confirmation { "c" } else { "" }),
            p.users,
            p.active_users,
            format!("{}-{}", at(r, p.window_start_ms), at(r, p.window_end_ms)),
            verdict(p.verdict),
            p.requests_per_sec,
            p.delivery_p99_ms
                .map_or("-".to_string(), |v| format!("{v:.2} ms")),
        );
        for v in slo_values(p) {
            let _ = writeln!(s, "{:>7}{v}", "");
        }
        if p.verdict == ProbeVerdict::Invalid {
            if let Some(why) = &p.reason {
                let _ = writeln!(s, "{:>7}{why}", "");
            }
        }
    }
    let _ = writeln!(s, "\n(c: a confirmation of the answer)\n{}", r.summary);
    if let Some(c) = cmp {
        let _ = writeln!(s, "baseline {}: {}", c.baseline_run, c.sentence);
    }
    s
}

fn markdown(r: &CapacityReport, cmp: Option<&CapacityComparison>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Capacity: {}\n", r.summary.replace('|', "\\|"));
    let _ = writeln!(s, "{}\n", heading(r).replace('|', "\\|"));
    let _ = writeln!(
        s,
        "| Probe | Users | Active | Window | Verdict | Req/s | SLO values |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---|---|---:|---|");
    for (_, [probe, users, active, window, verdict, rps], values) in rows(r) {
        let _ = writeln!(
            s,
            "| {probe} | {users} | {active} | {window} | **{verdict}** | {rps} | {} |",
            values.join("<br>").replace('|', "\\|")
        );
    }
    if let Some(c) = cmp {
        let _ = writeln!(s, "\nBaseline `{}`: {}", c.baseline_run, c.sentence);
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained page: users over time as a step line, each probe's window shaded by its
/// verdict, and the probe table.
fn html(r: &CapacityReport, cmp: Option<&CapacityComparison>) -> String {
    let (w, h, pad) = (900.0, 300.0, 50.0);
    let end = r
        .probes
        .iter()
        .map(|p| p.window_end_ms)
        .max()
        .unwrap_or(r.finished_at_ms)
        .max(r.started_at_ms + 1);
    let span = (end - r.started_at_ms) as f64;
    let top = r.probes.iter().map(|p| p.users).max().unwrap_or(1).max(1) as f64 * 1.1;
    let x = |ms: i64| pad + (ms - r.started_at_ms) as f64 / span * (w - 2.0 * pad);
    let y = |u: f64| h - pad - u / top * (h - 2.0 * pad);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"users\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">"
    );
    for p in &r.probes {
        let colour = match p.verdict {
            ProbeVerdict::Good => "#2e7d32",
            ProbeVerdict::Bad => "#c62828",
            ProbeVerdict::Invalid => "#9e9e9e",
        };
        let _ = write!(
            svg,
            "<rect class=\"probe {}\" x=\"{:.1}\" y=\"{pad}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.2\"><title>{} users: {}</title></rect>",
            verdict(p.verdict),
            x(p.window_start_ms),
            (x(p.window_end_ms) - x(p.window_start_ms)).max(1.0),
            h - 2.0 * pad,
            p.users,
            verdict(p.verdict)
        );
    }
    let mut points = Vec::new();
    let mut last = 0.0;
    for p in &r.probes {
        points.push(format!("{:.1},{:.1}", x(p.started_at_ms), y(last)));
        last = p.users as f64;
        points.push(format!("{:.1},{:.1}", x(p.started_at_ms), y(last)));
        points.push(format!("{:.1},{:.1}", x(p.window_end_ms), y(last)));
    }
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    if let Some(u) = r.supported_users {
        let _ = write!(
            svg,
            "<line x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#2e7d32\" stroke-dasharray=\"4 4\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">supported {u}</text>",
            w - pad,
            y(u as f64),
            y(u as f64),
            pad + 4.0,
            y(u as f64) - 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{:.1}\" font-size=\"12\">0:00</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text><text x=\"4\" y=\"{:.1}\" font-size=\"12\">{:.0}</text></svg>",
        h - pad + 16.0,
        w - pad,
        h - pad + 16.0,
        at(r, end),
        pad,
        top
    );
    // Delivery p99 of each probe's window, at the window's middle, coloured by verdict.
    let p99s: Vec<(i64, f64, ProbeVerdict)> = r
        .probes
        .iter()
        .filter_map(|p| {
            p.delivery_p99_ms
                .map(|d| ((p.window_start_ms + p.window_end_ms) / 2, d, p.verdict))
        })
        .collect();
    let top_ms = p99s.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let ym = |v: f64| h - pad - v / top_ms * (h - 2.0 * pad);
    let mut delivery = format!(
        "<svg id=\"delivery\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">"
    );
    let line: Vec<String> = p99s
        .iter()
        .map(|(t, v, _)| format!("{:.1},{:.1}", x(*t), ym(*v)))
        .collect();
    let _ = write!(
        delivery,
        "<polyline fill=\"none\" stroke=\"#6a1b9a\" stroke-width=\"1\" points=\"{}\"/>",
        line.join(" ")
    );
    for (t, v, verdict_) in &p99s {
        let colour = match verdict_ {
            ProbeVerdict::Good => "#2e7d32",
            ProbeVerdict::Bad => "#c62828",
            ProbeVerdict::Invalid => "#9e9e9e",
        };
        let _ = write!(
            delivery,
            "<circle class=\"p99\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{colour}\"><title>{v:.2} ms</title></circle>",
            x(*t),
            ym(*v)
        );
    }
    let _ = write!(
        delivery,
        "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">{top_ms:.0} ms</text><text x=\"{pad}\" y=\"{:.1}\" font-size=\"12\">0:00</text></svg>",
        pad,
        h - pad + 16.0
    );
    let mut rows_html = String::new();
    for (v, cells, values) in rows(r) {
        let _ = write!(rows_html, "<tr class=\"{}\">", verdict(v));
        for c in cells {
            let _ = write!(rows_html, "<td>{}</td>", esc(&c));
        }
        let values: Vec<String> = values.iter().map(|v| esc(v)).collect();
        let _ = write!(rows_html, "<td>{}</td></tr>", values.join("<br>"));
    }
    let baseline = cmp
        .map(|c| {
            format!(
                "<p>Baseline {}: {}</p>",
                esc(&c.baseline_run),
                esc(&c.sentence)
            )
        })
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Capacity {run}</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
tr.good td:nth-child(5){{color:#2e7d32}}tr.bad td:nth-child(5){{color:#c62828}}tr.invalid td:nth-child(5){{color:#757575}}</style></head>\
<body><h1>{summary}</h1><p>{heading}</p><h2>Users over time, probe windows shaded by verdict</h2>{svg}\
<h2>Delivery p99 of each probe window</h2>{delivery}\
<h2>Probes</h2><table><tr><th>Probe</th><th>Users</th><th>Active</th><th>Window</th><th>Verdict</th><th>Req/s</th><th>SLO values</th></tr>{rows_html}</table>{baseline}</body></html>\n",
        run = esc(&r.run_id),
        summary = esc(&r.summary),
        heading = esc(&heading(r)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loadtest_contract::capacity::*;

    pub(crate) fn report(supported: Option<u64>, tolerance: f64) -> CapacityReport {
        let probe = |users: u64, verdict: ProbeVerdict, confirmation: bool, at: i64| ProbeRecord {
            users,
            active_users: users,
            confirmation,
            started_at_ms: at,
            window_start_ms: at + 10_000,
            window_end_ms: at + 30_000,
            verdict,
            slos: vec![SloValue {
                slo: "create_post.p99<50ms".into(),
                value: Some(12_000.0),
                shown: "12.00 ms".into(),
                passed: verdict == ProbeVerdict::Good,
            }],
            reason: (verdict != ProbeVerdict::Good).then(|| "failed: create_post.p99".into()),
            requests_per_sec: users as f64 / 5.0,
            delivery_p99_ms: Some(3.5),
        };
        CapacityReport {
            format: CAPACITY_FORMAT.into(),
            version: CAPACITY_VERSION,
            run_id: "20261201T000000Z-abcd".into(),
            started_at_ms: 0,
            finished_at_ms: 120_000,
            slos: vec!["create_post.p99<50ms".into()],
            start_users: 10,
            max_users: 100,
            tolerance,
            probe_warmup_ms: 10_000,
            probe_window_ms: 20_000,
            agents: 2,
            outcome: CapacityOutcome::Supported,
            supported_users: supported,
            bracket: Bracket {
                good: supported,
                bad: Some(42),
            },
            summary: format!("supported users: {supported:?}"),
            probes: vec![
                probe(10, ProbeVerdict::Good, false, 0),
                probe(20, ProbeVerdict::Good, false, 30_000),
                probe(40, ProbeVerdict::Bad, false, 60_000),
                probe(supported.unwrap_or(20), ProbeVerdict::Good, true, 90_000),
            ],
        }
    }

    #[test]
    fn a_drop_beyond_the_tolerance_is_a_regression_and_within_it_noise() {
        let base = report(Some(100), 0.05);
        let c = compare_capacity(&base, &report(Some(97), 0.05));
        assert_eq!(c.change, Change::Noise, "{}", c.sentence);
        assert_eq!(capacity_exit_code(Some(&c)), EXIT_PASS);
        let c = compare_capacity(&base, &report(Some(90), 0.05));
        assert!(c.is_regression(), "{}", c.sentence);
        assert!(c.sentence.contains("from 100 to 90"), "{}", c.sentence);
        assert_eq!(capacity_exit_code(Some(&c)), EXIT_REGRESSION);
        let c = compare_capacity(&base, &report(Some(120), 0.05));
        assert_eq!(c.change, Change::Improvement);
        // The coarser search sets the noise: 10 % either way.
        let c = compare_capacity(&report(Some(100), 0.10), &report(Some(92), 0.02));
        assert_eq!(c.change, Change::Noise, "{}", c.sentence);
        let c = compare_capacity(&base, &report(None, 0.05));
        assert!(c.is_regression());
    }

    #[test]
    fn every_display_lists_every_probe_and_the_answer() {
        let r = report(Some(30), 0.05);
        let c = compare_capacity(&report(Some(40), 0.05), &r);
        for d in [
            Display::Text,
            Display::Markdown,
            Display::Html,
            Display::Json,
        ] {
            let out = render_capacity(&r, Some(&c), d).unwrap();
            assert!(out.contains("supported users: Some(30)"), "{d:?}: {out}");
            assert!(out.contains("12.00 ms"), "{d:?}");
            assert!(out.contains("from 40 to 30"), "{d:?}");
        }
        let text = render_capacity(&r, None, Display::Text).unwrap();
        assert_eq!(
            text.matches("create_post.p99<50ms: 12.00 ms").count(),
            4,
            "{text}"
        );
        assert!(text.contains("4c"), "{text}");
        let html = render_capacity(&r, None, Display::Html).unwrap();
        assert_eq!(html.matches("<rect class=\"probe").count(), 4);
        assert!(html.contains("supported 30"));
        assert_eq!(html.matches("class=\"p99\"").count(), 4);
    }

    #[test]
    fn a_directory_or_a_file_is_read_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = report(Some(30), 0.05);
        std::fs::write(
            dir.path().join(CAPACITY_FILE),
            serde_json::to_string(&r).unwrap(),
        )
        .unwrap();
        assert_eq!(load_capacity(dir.path()).unwrap(), r);
        assert_eq!(load_capacity(&dir.path().join(CAPACITY_FILE)).unwrap(), r);
        let e = load_capacity(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        std::fs::write(dir.path().join("bad.json"), "{}").unwrap();
        let e = load_capacity(&dir.path().join("bad.json")).unwrap_err();
        assert!(e.to_string().contains("bad.json"), "{e}");
    }
}
