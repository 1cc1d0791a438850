//! Text and Markdown renderings of a [`Report`] (JSON is the report serialized; HTML lives in
//! [`crate::html`]).
//!
//! Both are deterministic: fixed table presets, no terminal-width detection, no colours and no
//! clock, so the same input always gives the same bytes (the snapshot tests rely on it, and
//! Markdown reports diff cleanly between CI runs).

use std::fmt::Write as _;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use crate::baseline::{Change, Comparison};
use crate::summary::{ActionSummary, DeliverySummary, LatencySummary, Lateness, RunSummary};
use crate::threshold::ThresholdResult;
use crate::{Outcome, Report};

/// Microseconds as milliseconds with two decimals.
pub(crate) fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub(crate) fn ms_f(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

pub(crate) fn pct(f: f64) -> String {
    format!("{:.2}%", f * 100.0)
}

pub(crate) fn dur(ms_: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms_)).to_string()
}

pub(crate) fn timestamp(ms_: i64) -> String {
    // humantime cannot format years past 9999 (its Display fails, and `to_string` would panic).
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    match u64::try_from(ms_) {
        Ok(m) if m < YEAR_10000_MS => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(m),
        )
        .to_string(),
        _ => format!("{ms_} ms since the epoch"),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .force_no_tty()
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// Right-aligns every column but the first (names left, numbers right).
fn align(t: &mut Table) {
    let n = t.column_count();
    for i in 1..n {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn latency_cells(l: &LatencySummary) -> Vec<String> {
    vec![
        ms_f(l.mean_us),
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p95_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us),
    ]
}

const LAT_HEAD: [&str; 7] = ["Mean", "p50", "p90", "p95", "p99", "p99.9", "Max"];

/// Head of the response-time table (text, markdown and HTML).
pub(crate) fn response_head() -> Vec<&'static str> {
    let mut head = vec!["Action", "Hits", "Errors", "Error %", "Thrpt/s"];
    head.extend(LAT_HEAD);
    head
}

/// One row of the response-time table, `name` being the action as the format shows it.
pub(crate) fn response_cells(name: String, a: &ActionSummary) -> Vec<String> {
    let mut row = vec![
        name,
        a.hits.to_string(),
        a.errors.to_string(),
        pct(a.error_rate),
        format!("{:.2}", a.throughput_per_s),
    ];
    row.extend(latency_cells(&a.response_time));
    row
}

/// Head of the delivery table (text, markdown and HTML).
pub(crate) const DELIVERY_HEAD: [&str; 8] = [
    "Expected",
    "Received",
    "Missing",
    "Missing %",
    "Duplicate",
    "p50 ms",
    "p99 ms",
    "Max ms",
];

/// The one row of the delivery table.
/// The server section's columns: one row per instance (schema 1.3 results).
pub(crate) const SERVER_HEAD: [&str; 10] = [
    "Instance",
    "CPU cores mean",
    "CPU peak",
    "RSS peak MiB",
    "WS peak",
    "Tasks peak",
    "Req/s",
    "5xx",
    "Deliveries/s",
    "Dropped",
];

pub(crate) fn server_rows(r: &RunSummary) -> Vec<Vec<String>> {
    r.servers
        .iter()
        .map(|s| {
            vec![
                s.instance.clone(),
                format!("{:.2}", s.cpu_cores_mean),
                format!("{:.2}", s.cpu_cores_peak),
                format!("{:.1}", s.rss_peak_bytes as f64 / 1_048_576.0),
                s.websocket_connections_peak.to_string(),
                s.tasks_peak.to_string(),
                format!("{:.1}", s.requests_per_s),
                s.errors_5xx.to_string(),
                format!("{:.1}", s.deliveries_per_s),
                s.dropped.to_string(),
            ]
        })
        .collect()
}

pub(crate) fn delivery_cells(d: &DeliverySummary) -> Vec<String> {
    vec![
        d.expected.to_string(),
        d.received.to_string(),
        d.missing.to_string(),
        pct(d.missing_rate),
        d.duplicate.to_string(),
        ms(d.latency.p50_us),
        ms(d.latency.p99_us),
        ms(d.latency.max_us),
    ]
}

/// The line about deliveries to receivers on other agents, when there were any.
pub(crate) fn remote_delivery_line(d: &DeliverySummary) -> Option<String> {
    let r = d.remote.as_ref()?;
    Some(format!(
        "Deliveries to receivers on other agents (clock-offset corrected): {} received, p50 {} ms, p99 {} ms, max {} ms",
        r.received,
        ms(r.latency.p50_us),
        ms(r.latency.p99_us),
        ms(r.latency.max_us),
    ))
}

/// What bounded the run, the first thing every display says about it: whether the load
/// generator kept up (so the latencies are the server's) or fell behind (so they are not), with
/// the figures that decided it. `None` for results that cannot tell and were on time.
pub(crate) fn limit_line(r: &RunSummary) -> Option<String> {
    let s = &r.schedule;
    let cpu = s.cpu_phrase();
    let generator = format!(
        "start lag p99 {} ms, runtime unresponsive {:.1}% of the time{cpu}",
        ms(s.generator_lag.p99_us),
        s.probe_stalled * 100.0
    );
    match s.cause {
        Lateness::Generator if !s.behind => Some(format!(
            "the load generator, not the server: the agents kept their schedule ({} of {} actions late) but their \
             runtimes were delayed ({generator}). The load offered was as configured; the latency figures are overstated",
            s.late, s.actions
        )),
        Lateness::Generator => Some(format!(
            "the load generator, not the server: the agents fell behind their own schedule ({generator}). \
             The load offered was below the configuration and the latency figures are overstated"
        )),
        Lateness::Server => Some(format!(
            "the server: {} of {} actions started late waiting for its answers; the load generator kept up ({generator})",
            s.late_waiting, s.actions
        )),
        Lateness::Unknown => Some(format!(
            "unknown: {} of actions started late, and results older than schema 1.2 cannot tell the generator from the server",
            pct(s.late_ratio)
        )),
        Lateness::None if s.attributed() => Some(format!(
            "not the load generator: it kept up ({generator}), so the latencies are the server's"
        )),
        Lateness::None => None,
    }
}

/// Settings lines shared by text and markdown: (label, value).
fn settings_lines(r: &RunSummary) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    let agents_seen = r.agents.len();
    if let Some(s) = &r.settings {
        v.push((
            "target",
            format!("{} ({} {})", s.target, s.tool, s.tool_version),
        ));
        v.push((
            "users",
            format!(
                "{} on {} agent(s) ({} with results), ramp-up {}, duration {}",
                s.users,
                s.agents,
                agents_seen,
                dur(s.ramp_up_ms),
                dur(s.duration_ms)
            ),
        ));
        let rate = match s.posts_per_second {
            Some(p) => format!(", {p} posts/s"),
            None => String::new(),
        };
        let preset = match &s.preset {
            Some(p) => format!("preset {p}, "),
            None => String::new(),
        };
        v.push((
            "mode",
            format!(
                "{}{rate}, mean interval {} ± {} ({preset}seed {})",
                s.mode,
                dur(s.mean_interval_ms),
                dur(s.interval_jitter_ms),
                s.seed
            ),
        ));
        let total: u64 = s.action_mix.values().map(|&w| u64::from(w)).sum();
        let mix = s
            .action_mix
            .iter()
            .map(|(a, w)| {
                let share = if total > 0 {
                    f64::from(*w) * 100.0 / total as f64
                } else {
                    0.0
                };
                format!("{a} {share:.0}%")
            })
            .collect::<Vec<_>>()
            .join(", ");
        v.push(("action mix", mix));
    } else {
        v.push((
            "agents",
            format!("{agents_seen} (no header record: settings unknown)"),
        ));
    }
    let started = r.started_at_ms.map(timestamp).unwrap_or_else(|| "?".into());
    v.push(("ran", format!("{:.1} s from {started}", r.elapsed_s)));
    v.push((
        "peaks",
        format!(
            "{} active users, {} WebSocket connections; {} reconnects",
            r.peak_active_users, r.peak_websocket_connections, r.reconnects
        ),
    ));
    v.push((
        "totals",
        format!(
            "{} hits, {} errors ({}), {:.2}/s",
            r.totals.hits,
            r.totals.errors,
            pct(r.totals.error_rate),
            r.totals.throughput_per_s
        ),
    ));
    v
}

fn outcome_line(o: Outcome) -> String {
    match o {
        Outcome::Pass => "Result: PASS (exit 0)".into(),
        Outcome::ThresholdsFailed => "Result: FAIL: thresholds failed (exit 3)".into(),
        Outcome::Regression => "Result: FAIL: regression against the baseline (exit 4)".into(),
        Outcome::ThresholdsFailedAndRegression => {
            "Result: FAIL: thresholds failed and regression against the baseline (exit 5)".into()
        }
    }
}

/// The plain-text report.
pub fn text(report: &Report, verbose: bool) -> String {
    let mut o = String::new();
    for (i, r) in report.runs.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        text_run(&mut o, r, verbose);
    }
    if let Some(b) = &report.baseline {
        for c in &report.comparisons {
            text_comparison(&mut o, c, b);
        }
    }
    if !report.thresholds.is_empty() {
        text_thresholds(&mut o, &report.thresholds, report.runs.len() > 1);
    }
    if report.baseline.is_some() || !report.thresholds.is_empty() {
        let _ = writeln!(o, "\n{}", outcome_line(report.outcome));
    }
    o
}

fn text_run(o: &mut String, r: &RunSummary, verbose: bool) {
    let kind = if r.run_ids.len() > 1 {
        format!("Runs {} (aggregated)", r.label())
    } else {
        format!("Run {}", r.label())
    };
    let _ = writeln!(o, "{kind}{}", if r.cut_short { " [CUT SHORT]" } else { "" });
    if let Some(limit) = limit_line(r) {
        let _ = writeln!(o, "  {:<11} {limit}", "limit");
    }
    for (k, v) in settings_lines(r) {
        let _ = writeln!(o, "  {k:<11} {v}");
    }

    let _ = writeln!(
        o,
        "\nResponse time, ms (from the intended start: includes waits of an overloaded agent)"
    );
    let mut t = table(&response_head());
    for a in &r.actions {
        t.add_row(response_cells(a.action.clone(), a));
    }
    align(&mut t);
    let _ = writeln!(o, "{t}");

    let _ = writeln!(o, "\nService time, ms (from the actual send)");
    let mut head = vec!["Action", "Samples"];
    head.extend(LAT_HEAD);
    let mut t = table(&head);
    for a in &r.actions {
        let mut row = vec![a.action.clone(), a.service_time.count.to_string()];
        row.extend(latency_cells(&a.service_time));
        t.add_row(row);
    }
    align(&mut t);
    let _ = writeln!(o, "{t}");

    if r.totals.errors > 0 {
        let _ = writeln!(o, "\nErrors by class");
        let mut t = table(&["Action", "Timeout", "Connect", "4xx", "5xx", "Protocol"]);
        for a in r.actions.iter().filter(|a| a.errors > 0) {
            let e = &a.error_classes;
            t.add_row(vec![
                a.action.clone(),
                e.timeout.to_string(),
                e.connect.to_string(),
                e.http_4xx.to_string(),
                e.http_5xx.to_string(),
                e.protocol.to_string(),
            ]);
        }
        align(&mut t);
        let _ = writeln!(o, "{t}");
    }

    let d = &r.delivery;
    let _ = writeln!(o, "\nDelivery (post sent → received over WebSocket)");
    let mut t = table(&DELIVERY_HEAD);
    t.add_row(delivery_cells(d));
    for i in 0..t.column_count() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let _ = writeln!(o, "{t}");
    if let Some(line) = remote_delivery_line(d) {
        let _ = writeln!(o, "{line}");
    }

    if !r.servers.is_empty() {
        let _ = writeln!(
            o,
            "\nServer (each instance's own /metrics, sampled every interval)"
        );
        let mut t = table(&SERVER_HEAD);
        for row in server_rows(r) {
            t.add_row(row);
        }
        align(&mut t);
        let _ = writeln!(o, "{t}");
    }

    let s = &r.schedule;
    let _ = writeln!(
        o,
        "\nSchedule: {} actions started, {} late ({}), start lag p99 {} ms, max {} ms{}",
        s.actions,
        s.late,
        pct(s.late_ratio),
        ms(s.lag.p99_us),
        ms(s.lag.max_us),
        attribution(s)
    );

    if verbose && !r.intervals.is_empty() {
        text_intervals(o, r);
    }
    if !r.latency_reliable {
        let _ = writeln!(o, "\n{UNRELIABLE}");
    }
    for w in &r.warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
}

/// `; N waiting for the server, generator's own lag p99 X ms` when the agents measured it.
fn attribution(s: &crate::summary::ScheduleSummary) -> String {
    if !s.attributed() {
        return String::new();
    }
    format!(
        "; {} late waiting for the server, the generator's own start lag p99 {} ms",
        s.late_waiting,
        ms(s.generator_lag.p99_us)
    )
}

/// Said where a report shows latency figures the generator could not measure truthfully.
const UNRELIABLE: &str = "LATENCY FIGURES UNRELIABLE: the load generator was the limit (see the warning), so the times above are overstated.";

fn text_intervals(o: &mut String, r: &RunSummary) {
    let _ = writeln!(o, "\nPer interval (all agents)");
    let mut t = table(&[
        "#",
        "t (s)",
        "Agents",
        "Users",
        "WS",
        "Hits",
        "Errors",
        "Thrpt/s",
        "Late",
        "Recv",
        "Reconn",
        "Deliv p99 ms",
    ]);
    for i in &r.intervals {
        let hits: u64 = i.actions.iter().map(|a| a.hits).sum();
        let errors: u64 = i.actions.iter().map(|a| a.errors).sum();
        let thr = loadtest_contract::sum_f64(i.actions.iter().map(|a| a.throughput_per_s));
        t.add_row(vec![
            i.index.to_string(),
            format!("{:.0}", i.offset_s),
            i.agents.to_string(),
            i.active_users.to_string(),
            i.websocket_connections.to_string(),
            hits.to_string(),
            errors.to_string(),
            format!("{thr:.2}"),
            i.late.to_string(),
            i.deliveries_received.to_string(),
            i.reconnects.to_string(),
            ms(i.delivery_latency.p99_us),
        ]);
    }
    align(&mut t);
    let _ = writeln!(o, "{t}");
    for a in &r.actions {
        let _ = writeln!(o, "\n{} per interval (response time, ms; timeline values are rounded up by at most 1.6 %)", a.action);
        let mut t = table(&[
            "#", "t (s)", "Hits", "Errors", "Thrpt/s", "p50", "p99", "Max",
        ]);
        for i in &r.intervals {
            if let Some(x) = i.actions.iter().find(|x| x.action == a.action) {
                t.add_row(vec![
                    i.index.to_string(),
                    format!("{:.0}", i.offset_s),
                    x.hits.to_string(),
                    x.errors.to_string(),
                    format!("{:.2}", x.throughput_per_s),
                    ms(x.response_time.p50_us),
                    ms(x.response_time.p99_us),
                    ms(x.response_time.max_us),
                ]);
            }
        }
        align(&mut t);
        let _ = writeln!(o, "{t}");
    }
}

fn change_word(c: Change) -> &'static str {
    match c {
        Change::Regression => "REGRESSION",
        Change::Improvement => "improvement",
        Change::Noise => "",
    }
}

fn text_comparison(o: &mut String, c: &Comparison, _b: &RunSummary) {
    let _ = writeln!(
        o,
        "\nBaseline comparison: {} against baseline {}",
        c.run, c.baseline_run
    );
    let mut subjects: Vec<&str> = c.rows.iter().map(|r| r.subject.as_str()).collect();
    subjects.dedup();
    for s in subjects {
        let _ = writeln!(o, "\n{s}");
        let mut t = table(&["Metric", "Baseline", "Actual", "Delta", "Delta %", "Change"]);
        for r in c.rows.iter().filter(|r| r.subject == s) {
            t.add_row(vec![
                r.metric.clone(),
                r.fmt_value(r.baseline),
                r.fmt_value(r.actual),
                r.fmt_delta(),
                r.fmt_delta_rel(),
                change_word(r.change).to_string(),
            ]);
        }
        align(&mut t);
        let _ = writeln!(o, "{t}");
    }
    for a in &c.only_in_baseline {
        let _ = writeln!(o, "note: {a} is in the baseline only (not compared)");
    }
    for a in &c.only_in_actual {
        let _ = writeln!(o, "note: {a} is new in this run (not compared)");
    }
    let regs: Vec<_> = c.regressions().collect();
    let imps: Vec<_> = c.improvements().collect();
    let _ = writeln!(
        o,
        "\nVerdict: {} regression(s), {} improvement(s) (changes within the noise floor left out)",
        regs.len(),
        imps.len()
    );
    for r in regs {
        let _ = writeln!(o, "  REGRESSION   {}", r.sentence());
    }
    for r in imps {
        let _ = writeln!(o, "  improvement  {}", r.sentence());
    }
}

fn text_thresholds(o: &mut String, results: &[ThresholdResult], with_run: bool) {
    let _ = writeln!(o, "\nThresholds");
    let mut head = vec!["Threshold", "Checked", "Actual", "Limit", "Result"];
    if with_run {
        head.insert(0, "Run");
    }
    let mut t = table(&head);
    for r in results {
        let mut row = vec![
            r.expr.clone(),
            r.subject.clone(),
            r.actual_display.clone(),
            r.limit_display.clone(),
            if r.passed { "pass" } else { "FAIL" }.to_string(),
        ];
        if with_run {
            row.insert(0, r.run.clone());
        }
        t.add_row(row);
    }
    let _ = writeln!(o, "{t}");
}

// ---------------------------------------------------------------------------------------------
// Markdown

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_table(o: &mut String, head: &[&str], rows: &[Vec<String>], numeric_from: usize) {
    let _ = writeln!(o, "| {} |", head.join(" | "));
    let seps: Vec<&str> = (0..head.len())
        .map(|i| if i >= numeric_from { "---:" } else { "---" })
        .collect();
    let _ = writeln!(o, "| {} |", seps.join(" | "));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| md_escape(c)).collect();
        let _ = writeln!(o, "| {} |", cells.join(" | "));
    }
}

/// The Markdown report (GitHub-flavoured tables).
pub fn markdown(report: &Report, verbose: bool) -> String {
    let mut o = String::new();
    for r in &report.runs {
        md_run(&mut o, r, verbose);
    }
    if report.baseline.is_some() {
        for c in &report.comparisons {
            md_comparison(&mut o, c);
        }
    }
    if !report.thresholds.is_empty() {
        let _ = writeln!(o, "### Thresholds\n");
        let rows: Vec<Vec<String>> = report
            .thresholds
            .iter()
            .map(|r| {
                vec![
                    format!("`{}`", r.expr),
                    r.subject.clone(),
                    r.actual_display.clone(),
                    r.limit_display.clone(),
                    if r.passed { "✅ pass" } else { "❌ FAIL" }.to_string(),
                ]
            })
            .collect();
        md_table(
            &mut o,
            &["Threshold", "Checked", "Actual", "Limit", "Result"],
            &rows,
            5,
        );
        o.push('\n');
    }
    if report.baseline.is_some() || !report.thresholds.is_empty() {
        let _ = writeln!(o, "**{}**", outcome_line(report.outcome));
    }
    o
}

fn md_run(o: &mut String, r: &RunSummary, verbose: bool) {
    let _ = writeln!(
        o,
        "## Load test {}{}\n",
        r.label(),
        if r.cut_short { " (cut short)" } else { "" }
    );
    if let Some(limit) = limit_line(r) {
        if r.latency_reliable {
            let _ = writeln!(o, "> **Limit:** {}.\n", md_escape(&limit));
        } else {
            let _ = writeln!(o, "> **Limit: {}.**\n", md_escape(&limit));
        }
    }
    for w in &r.warnings {
        let _ = writeln!(o, "> **Warning:** {}\n", w);
    }
    for (k, v) in settings_lines(r) {
        let _ = writeln!(o, "- **{k}:** {}", md_escape(&v));
    }
    let _ = writeln!(o, "\n### Response time (ms, from the intended start)\n");
    let rows: Vec<Vec<String>> = r
        .actions
        .iter()
        .map(|a| response_cells(format!("`{}`", a.action), a))
        .collect();
    md_table(o, &response_head(), &rows, 1);
    let _ = writeln!(o, "\n### Service time (ms, from the actual send)\n");
    let mut head = vec!["Action", "Samples"];
    head.extend(LAT_HEAD);
    let rows: Vec<Vec<String>> = r
        .actions
        .iter()
        .map(|a| {
            let mut row = vec![format!("`{}`", a.action), a.service_time.count.to_string()];
            row.extend(latency_cells(&a.service_time));
            row
        })
        .collect();
    md_table(o, &head, &rows, 1);
    let d = &r.delivery;
    let _ = writeln!(o, "\n### Delivery\n");
    md_table(o, &DELIVERY_HEAD, &[delivery_cells(d)], 0);
    if let Some(line) = remote_delivery_line(d) {
        let _ = writeln!(o, "\n{line}");
    }
    if !r.servers.is_empty() {
        let _ = writeln!(o, "\n### Server\n");
        md_table(o, &SERVER_HEAD, &server_rows(r), 1);
    }
    let s = &r.schedule;
    let _ = writeln!(
        o,
        "\nSchedule: {} actions started, {} late ({}), start lag p99 {} ms{}.\n",
        s.actions,
        s.late,
        pct(s.late_ratio),
        ms(s.lag.p99_us),
        attribution(s)
    );
    if verbose && !r.intervals.is_empty() {
        let _ = writeln!(o, "### Per interval\n");
        let rows: Vec<Vec<String>> = r
            .intervals
            .iter()
            .map(|i| {
                let hits: u64 = i.actions.iter().map(|a| a.hits).sum();
                let errors: u64 = i.actions.iter().map(|a| a.errors).sum();
                vec![
                    i.index.to_string(),
                    format!("{:.0}", i.offset_s),
                    i.active_users.to_string(),
                    hits.to_string(),
                    errors.to_string(),
                    i.late.to_string(),
                    ms(i.delivery_latency.p99_us),
                ]
            })
            .collect();
        md_table(
            o,
            &[
                "#",
                "t (s)",
                "Users",
                "Hits",
                "Errors",
                "Late",
                "Delivery p99 ms",
            ],
            &rows,
            0,
        );
        o.push('\n');
    }
}

fn md_comparison(o: &mut String, c: &Comparison) {
    let _ = writeln!(o, "### Baseline: {} against {}\n", c.run, c.baseline_run);
    let regs: Vec<_> = c.regressions().collect();
    let imps: Vec<_> = c.improvements().collect();
    if regs.is_empty() && imps.is_empty() {
        let _ = writeln!(o, "No change beyond the noise floor.\n");
    }
    for r in &regs {
        let _ = writeln!(o, "- ❌ **regression** {}", r.sentence());
    }
    for r in &imps {
        let _ = writeln!(o, "- ✅ improvement {}", r.sentence());
    }
    if !regs.is_empty() || !imps.is_empty() {
        o.push('\n');
    }
    let rows: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|r| {
            vec![
                format!("`{}`", r.subject),
                r.metric.clone(),
                r.fmt_value(r.baseline),
                r.fmt_value(r.actual),
                r.fmt_delta(),
                r.fmt_delta_rel(),
                change_word(r.change).to_string(),
            ]
        })
        .collect();
    md_table(
        o,
        &[
            "Action", "Metric", "Baseline", "Actual", "Delta", "Delta %", "Change",
        ],
        &rows,
        2,
    );
    for a in &c.only_in_baseline {
        let _ = writeln!(o, "\n_{a}: in the baseline only (not compared)_");
    }
    for a in &c.only_in_actual {
        let _ = writeln!(o, "\n_{a}: new in this run (not compared)_");
    }
    o.push('\n');
}
