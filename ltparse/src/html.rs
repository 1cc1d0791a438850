//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no network
//! fetches) with the summary tables and, per action, line charts of response-time p50/p99 and
//! throughput over the run from the interval records, the baseline overlaid (dashed) when given.

use std::fmt::Write as _;

use crate::baseline::Change;
use crate::render::{
    delivery_cells, remote_delivery_line, response_cells, response_head, DELIVERY_HEAD,
};
use crate::summary::RunSummary;
use crate::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line on a chart.
struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 24.0;
const PAD_B: f64 = 34.0;

/// A simple line chart: linear axes from 0, five ticks each, a legend on top.
fn chart(title: &str, y_unit: &str, series: &[Series]) -> String {
    chart_to(title, y_unit, series, None)
}

/// [`chart`] with the time axis ending at `max_x` (charts that share one axis).
/// The axis never ends before the data does, so no point is drawn outside the plot.
fn chart_to(title: &str, y_unit: &str, series: &[Series], max_x: Option<f64>) -> String {
    let data_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0_f64, f64::max);
    let max_x = max_x.unwrap_or(0.0).max(data_x).max(1.0);
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let max_y = if max_y > 0.0 { max_y * 1.1 } else { 1.0 };
    // The legend: after the title (11 px text, ~6.4 px a character), wrapping onto more rows
    // when it does not fit; the plot starts below its last row.
    let title_end = 4.0 + 6.4 * (title.chars().count() + y_unit.chars().count() + 3) as f64;
    let mut legend = Vec::with_capacity(series.len());
    let (mut lx, mut ly) = ((PAD_L + 180.0).max(title_end + 12.0), 10.0);
    for s in series {
        let w = 28.0 + 6.5 * s.name.chars().count() as f64;
        if lx + w > W - PAD_R && lx > PAD_L {
            lx = PAD_L;
            ly += 12.0;
        }
        legend.push((lx, ly));
        lx += w;
    }
    let pad_t = PAD_T + (ly - 10.0);
    let pw = W - PAD_L - PAD_R;
    let ph = H - pad_t - PAD_B;
    let x = |v: f64| PAD_L + v / max_x * pw;
    let y = |v: f64| pad_t + ph - v / max_y * ph;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        o,
        r##"<rect x="{PAD_L}" y="{pad_t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>"##
    );
    for i in 0..=4 {
        let fy = f64::from(i) / 4.0;
        let vy = max_y * fy;
        let py = y(vy);
        let _ = write!(
            o,
            r##"<line x1="{PAD_L}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            W - PAD_R,
            PAD_L - 4.0,
            py + 3.0,
            fmt_tick(vy)
        );
        let vx = max_x * fy;
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            x(vx),
            H - PAD_B + 14.0,
            fmt_tick(vx)
        );
    }
    let _ = write!(
        o,
        r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">time (s)</text><text x="4" y="14" font-size="11">{} ({})</text>"#,
        PAD_L + pw / 2.0,
        H - 4.0,
        esc(title),
        esc(y_unit)
    );
    for (s, &(lx, ly)) in series.iter().zip(&legend) {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        if pts.len() == 1 {
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x(s.points[0].0),
                y(s.points[0].1),
                s.color
            );
        } else if !pts.is_empty() {
            let _ = write!(
                o,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{dash} points="{}"/>"#,
                s.color,
                pts.join(" ")
            );
        }
        let _ = write!(
            o,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            lx + 16.0,
            s.color,
            lx + 20.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    o.push_str("</svg>");
    o
}

fn fmt_tick(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// One point per interval of the run: `f` of the interval, at its end.
fn per_interval(
    r: &RunSummary,
    f: impl Fn(&crate::summary::IntervalSummary) -> Option<f64>,
) -> Vec<(f64, f64)> {
    r.intervals
        .iter()
        .filter_map(|i| f(i).map(|v| (i.offset_s + i.length_s, v)))
        .collect()
}

/// Cause and effect on one time axis: users and connections, request rate, response p99 per
/// action, delivery p99, late actions, and the server's CPU and memory (baseline dashed).
fn timeline(o: &mut String, r: &RunSummary, baseline: Option<&RunSummary>) {
    // The axis covers both runs: a longer baseline must not draw past the plot's edge.
    let end = std::iter::once(r)
        .chain(baseline)
        .flat_map(|run| {
            run.intervals
                .iter()
                .map(|i| i.offset_s + i.length_s)
                .chain(run.server_timeline.iter().map(|p| p.at_s))
        })
        .fold(0.0_f64, f64::max);
    if end <= 0.0 {
        return;
    }
    let line = |name: &str, color: &'static str, dashed: bool, points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        color,
        dashed,
        points,
    };
    let with_baseline =
        |mut v: Vec<Series>, name: &str, f: &dyn Fn(&RunSummary) -> Vec<(f64, f64)>| {
            if let Some(b) = baseline {
                v.push(line(&format!("baseline {name}"), "#7f7f7f", true, f(b)));
            }
            v
        };
    let users = |r: &RunSummary| per_interval(r, |i| Some(i.active_users as f64));
    let conns = |r: &RunSummary| per_interval(r, |i| Some(i.websocket_connections as f64));
    let rate = |r: &RunSummary| {
        per_interval(r, |i| {
            Some(i.actions.iter().map(|a| a.throughput_per_s).sum())
        })
    };
    let delivery = |r: &RunSummary| {
        per_interval(r, |i| {
            (i.delivery_latency.count > 0).then(|| i.delivery_latency.p99_us as f64 / 1000.0)
        })
    };
    let late = |r: &RunSummary| per_interval(r, |i| Some(i.late as f64));
    let _ = writeln!(
        o,
        "<h2>Over time (one time axis: users, load, latency, lateness, server)</h2><div id=\"timeline\">"
    );
    o.push_str(&chart_to(
        "active users and connections",
        "count",
        &with_baseline(
            vec![
                line("users", PALETTE[0], false, users(r)),
                line("WebSockets", PALETTE[2], false, conns(r)),
            ],
            "users",
            &users,
        ),
        Some(end),
    ));
    o.push_str(&chart_to(
        "request rate",
        "req/s",
        &with_baseline(
            vec![line("all actions", PALETTE[0], false, rate(r))],
            "rate",
            &rate,
        ),
        Some(end),
    ));
    let p99: Vec<Series> = r
        .actions
        .iter()
        .enumerate()
        .map(|(k, a)| {
            line(
                &a.action,
                PALETTE[k % PALETTE.len()],
                false,
                points(r, &a.action, |x| x.response_time.p99_us as f64 / 1000.0),
            )
        })
        .collect();
    o.push_str(&chart_to(
        "response time p99 per action",
        "ms",
        &p99,
        Some(end),
    ));
    o.push_str(&chart_to(
        "delivery p99",
        "ms",
        &with_baseline(
            vec![line("delivery p99", PALETTE[3], false, delivery(r))],
            "delivery p99",
            &delivery,
        ),
        Some(end),
    ));
    o.push_str(&chart_to(
        "actions started late (generator or server behind)",
        "per interval",
        &with_baseline(
            vec![line("late", PALETTE[1], false, late(r))],
            "late",
            &late,
        ),
        Some(end),
    ));
    if !r.server_timeline.is_empty() {
        let mut instances: Vec<&str> = r
            .server_timeline
            .iter()
            .map(|p| p.instance.as_str())
            .collect();
        instances.dedup();
        let of = |inst: &str, f: &dyn Fn(&crate::summary::ServerPoint) -> f64| -> Vec<(f64, f64)> {
            r.server_timeline
                .iter()
                .filter(|p| p.instance == inst)
                .map(|p| (p.at_s, f(p)))
                .collect()
        };
        let per_instance = |f: &dyn Fn(&crate::summary::ServerPoint) -> f64| -> Vec<Series> {
            instances
                .iter()
                .enumerate()
                .map(|(k, i)| line(i, PALETTE[k % PALETTE.len()], false, of(i, f)))
                .collect()
        };
        let cpu = per_instance(&|p| p.cpu_cores);
        let rss = per_instance(&|p| p.rss_bytes as f64 / 1_048_576.0);
        o.push_str(&chart_to("server CPU", "cores", &cpu, Some(end)));
        o.push_str(&chart_to(
            "server memory (resident)",
            "MiB",
            &rss,
            Some(end),
        ));
    }
    o.push_str("</div>\n");
}

fn points(
    r: &RunSummary,
    action: &str,
    f: impl Fn(&crate::summary::IntervalActionSummary) -> f64,
) -> Vec<(f64, f64)> {
    r.intervals
        .iter()
        .filter_map(|i| {
            i.actions
                .iter()
                .find(|a| a.action == action)
                .map(|a| (i.offset_s + i.length_s, f(a)))
        })
        .collect()
}

fn table(o: &mut String, head: &[&str], rows: &[Vec<String>]) {
    o.push_str("<table><thead><tr>");
    for h in head {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            let _ = write!(o, "<td>{}</td>", esc(c));
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>\n");
}

/// The HTML report.
pub fn html(report: &Report) -> String {
    let mut o = String::new();
    let title = report
        .runs
        .iter()
        .map(RunSummary::label)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Load test {}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}\
th,td{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}\
th{{background:#f0f0f0}}.warn{{background:#fff3cd;border:1px solid #e0c060;padding:.5em}}\
.fail{{color:#b00020;font-weight:bold}}.pass{{color:#1b7f3b}}svg{{margin:.3em 1em .3em 0}}</style></head><body>\n",
        esc(&title)
    );
    for r in &report.runs {
        let _ = writeln!(
            o,
            "<h1>Load test {}{}</h1>",
            esc(&r.label()),
            if r.cut_short { " (cut short)" } else { "" }
        );
        if let Some(limit) = crate::render::limit_line(r) {
            let class = match r.schedule.cause {
                crate::summary::Lateness::Generator => "fail",
                crate::summary::Lateness::Server | crate::summary::Lateness::Unknown => "warn",
                crate::summary::Lateness::None => "pass",
            };
            let _ = writeln!(o, "<p class=\"{class}\">Limit: {}.</p>", esc(&limit));
        }
        for w in &r.warnings {
            let _ = writeln!(o, "<p class=\"warn\">⚠ {}</p>", esc(w));
        }
        if let Some(s) = &r.settings {
            let _ = writeln!(
                o,
                "<p>{} users on {} agent(s) against {}, mode {}, ran {:.1} s; {} hits, {} errors, {:.2}/s.</p>",
                s.users,
                s.agents,
                esc(&s.target),
                esc(&s.mode),
                r.elapsed_s,
                r.totals.hits,
                r.totals.errors,
                r.totals.throughput_per_s
            );
        }
        let _ = writeln!(o, "<h2>Response time (ms, from the intended start)</h2>");
        let rows: Vec<Vec<String>> = r
            .actions
            .iter()
            .map(|a| response_cells(a.action.clone(), a))
            .collect();
        table(&mut o, &response_head(), &rows);
        let _ = writeln!(o, "<h2>Delivery</h2>");
        table(&mut o, &DELIVERY_HEAD, &[delivery_cells(&r.delivery)]);
        if let Some(line) = remote_delivery_line(&r.delivery) {
            let _ = writeln!(o, "<p>{}</p>", esc(&line));
        }
        timeline(&mut o, r, report.baseline.as_ref());
        let _ = writeln!(o, "<h2>Over time, per action</h2>");
        for a in &r.actions {
            let _ = writeln!(o, "<h3>{}</h3><div>", esc(&a.action));
            let mut lat = vec![
                Series {
                    name: "p50".into(),
                    color: "#1f77b4",
                    dashed: false,
                    points: points(r, &a.action, |x| x.response_time.p50_us as f64 / 1000.0),
                },
                Series {
                    name: "p99".into(),
                    color: "#d62728",
                    dashed: false,
                    points: points(r, &a.action, |x| x.response_time.p99_us as f64 / 1000.0),
                },
            ];
            let mut thr = vec![Series {
                name: "throughput".into(),
                color: "#2ca02c",
                dashed: false,
                points: points(r, &a.action, |x| x.throughput_per_s),
            }];
            if let Some(b) = &report.baseline {
                lat.push(Series {
                    name: "baseline p50".into(),
                    color: "#1f77b4",
                    dashed: true,
                    points: points(b, &a.action, |x| x.response_time.p50_us as f64 / 1000.0),
                });
                lat.push(Series {
                    name: "baseline p99".into(),
                    color: "#d62728",
                    dashed: true,
                    points: points(b, &a.action, |x| x.response_time.p99_us as f64 / 1000.0),
                });
                thr.push(Series {
                    name: "baseline".into(),
                    color: "#2ca02c",
                    dashed: true,
                    points: points(b, &a.action, |x| x.throughput_per_s),
                });
            }
            o.push_str(&chart("response time", "ms", &lat));
            o.push_str(&chart("throughput", "hits/s", &thr));
            o.push_str("</div>\n");
        }
    }
    for c in &report.comparisons {
        let _ = writeln!(
            o,
            "<h2>Baseline: {} against {}</h2><ul>",
            esc(&c.run),
            esc(&c.baseline_run)
        );
        for r in c.regressions() {
            let _ = writeln!(
                o,
                "<li class=\"fail\">regression: {}</li>",
                esc(&r.sentence())
            );
        }
        for r in c.improvements() {
            let _ = writeln!(
                o,
                "<li class=\"pass\">improvement: {}</li>",
                esc(&r.sentence())
            );
        }
        o.push_str("</ul>\n");
        let rows: Vec<Vec<String>> = c
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.subject.clone(),
                    r.metric.clone(),
                    r.fmt_value(r.baseline),
                    r.fmt_value(r.actual),
                    r.fmt_delta(),
                    r.fmt_delta_rel(),
                    match r.change {
                        Change::Regression => "regression",
                        Change::Improvement => "improvement",
                        Change::Noise => "",
                    }
                    .to_string(),
                ]
            })
            .collect();
        table(
            &mut o,
            &[
                "Action", "Metric", "Baseline", "Actual", "Delta", "Delta %", "Change",
            ],
            &rows,
        );
    }
    if !report.thresholds.is_empty() {
        let _ = writeln!(o, "<h2>Thresholds</h2>");
        let rows: Vec<Vec<String>> = report
            .thresholds
            .iter()
            .map(|t| {
                vec![
                    t.expr.clone(),
                    t.subject.clone(),
                    t.actual_display.clone(),
                    t.limit_display.clone(),
                    if t.passed { "pass" } else { "FAIL" }.to_string(),
                ]
            })
            .collect();
        table(
            &mut o,
            &["Threshold", "Checked", "Actual", "Limit", "Result"],
            &rows,
        );
    }
    let _ = writeln!(
        o,
        "<p><b>Outcome: {:?} (exit {})</b></p>\n</body></html>",
        report.outcome,
        report.outcome.exit_code()
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every point of every line, as drawn.
    fn drawn_points(svg: &str) -> Vec<(f64, f64)> {
        svg.split("points=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .flat_map(|pts| pts.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter_map(|p| {
                let (x, y) = p.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn a_shared_axis_shorter_than_the_data_still_holds_every_point() {
        let run = Series {
            name: "run".into(),
            color: PALETTE[0],
            dashed: false,
            points: vec![(1.0, 1.0), (2.0, 3.0)],
        };
        // A baseline that ran longer than the axis the run asked for.
        let baseline = Series {
            name: "baseline".into(),
            color: "#7f7f7f",
            dashed: true,
            points: vec![(1.0, 2.0), (5.0, 4.0), (9.0, 1.0)],
        };
        let svg = chart_to("t", "u", &[run, baseline], Some(2.0));
        let pts = drawn_points(&svg);
        assert_eq!(pts.len(), 5, "{svg}");
        for (x, y) in pts {
            assert!((PAD_L..=W - PAD_R).contains(&x), "x {x} outside: {svg}");
            assert!((PAD_T..=H - PAD_B).contains(&y), "y {y} outside: {svg}");
        }
    }

    #[test]
    fn a_legend_too_long_for_one_row_wraps_and_the_plot_moves_down() {
        let series: Vec<Series> = (0..9)
            .map(|i| Series {
                name: format!("switch_channel_{i}"),
                color: PALETTE[i % PALETTE.len()],
                dashed: false,
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            })
            .collect();
        let svg = chart_to("response time p99 per action", "ms", &series, None);
        let top: f64 = svg
            .split("<rect x=\"56\" y=\"")
            .nth(1)
            .and_then(|r| r.split('"').next()?.parse().ok())
            .unwrap_or(0.0);
        assert!(
            top > PAD_T + 12.0,
            "the plot did not move below the legend rows: {top}"
        );
        // The legend's labels: every text above the plot but the title.
        let labels: Vec<(f64, f64)> = svg
            .split("<text x=\"")
            .skip(1)
            .filter_map(|r| {
                let mut parts = r.split('"');
                let x = parts.next()?.parse().ok()?;
                let y = parts.nth(1)?.parse().ok()?;
                Some((x, y))
            })
            .filter(|&(x, y)| y < top && x > 4.0)
            .collect();
        assert_eq!(labels.len(), 9, "{labels:?}");
        // Each label leaves room for its name (15 characters) before the right edge.
        assert!(
            labels.iter().all(|&(x, _)| x + 6.5 * 15.0 <= W),
            "{labels:?}"
        );
        for (_, y) in drawn_points(&svg) {
            assert!((top..=H - PAD_B).contains(&y), "y {y} above the plot");
        }
    }
}
