//! JUnit XML (`--display junit`): one test case per threshold result and per baseline metric,
//! the format CI systems (GitLab, Jenkins, GitHub test reporters) render natively. A failed
//! threshold or a regression is a `<failure>`; everything else passes.

use std::fmt::Write as _;

use crate::baseline::Change;
use crate::capacity::CapacityComparison;
use crate::Report;
use loadtest_contract::capacity::CapacityReport;

/// Escapes text for XML attributes and content.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

struct Case {
    class: String,
    name: String,
    failure: Option<String>,
}

fn suites(name: &str, suites: &[(String, Vec<Case>)]) -> String {
    let total: usize = suites.iter().map(|s| s.1.len()).sum();
    let failed: usize = suites
        .iter()
        .flat_map(|s| &s.1)
        .filter(|c| c.failure.is_some())
        .count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"{}\" tests=\"{total}\" failures=\"{failed}\">",
        esc(name)
    );
    for (suite, cases) in suites {
        let f = cases.iter().filter(|c| c.failure.is_some()).count();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" errors=\"0\" skipped=\"0\">",
            esc(suite),
            cases.len()
        );
        for c in cases {
            match &c.failure {
                None => {
                    let _ = writeln!(
                        s,
                        "    <testcase classname=\"{}\" name=\"{}\"/>",
                        esc(&c.class),
                        esc(&c.name)
                    );
                }
                Some(why) => {
                    let _ = writeln!(
                        s,
                        "    <testcase classname=\"{}\" name=\"{}\">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        esc(&c.class),
                        esc(&c.name),
                        esc(why),
                        esc(why)
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}

/// The report's thresholds and baseline verdicts as JUnit XML.
pub fn junit(report: &Report) -> String {
    let thresholds: Vec<Case> = report
        .thresholds
        .iter()
        .map(|t| Case {
            class: format!("thresholds.{}", t.run),
            name: if t.expr.starts_with(&t.subject) {
                t.expr.clone()
            } else {
                format!("{} ({})", t.expr, t.subject)
            },
            failure: (!t.passed).then(|| {
                format!(
                    "{}: {} (limit {})",
                    t.subject, t.actual_display, t.limit_display
                )
            }),
        })
        .collect();
    let baseline: Vec<Case> = report
        .comparisons
        .iter()
        .flat_map(|c| {
            c.rows.iter().map(move |r| Case {
                class: format!("baseline.{}", c.run),
                name: format!("{} {}", r.subject, r.metric),
                failure: (r.change == Change::Regression)
                    .then(|| format!("regression against {}: {}", c.baseline_run, r.sentence())),
            })
        })
        .collect();
    let mut all = vec![("thresholds".to_string(), thresholds)];
    if !report.comparisons.is_empty() {
        all.push(("baseline".to_string(), baseline));
    }
    suites("ltparse", &all)
}

/// A capacity search as JUnit XML: whether it found an answer, and its baseline verdict.
pub fn capacity_junit(r: &CapacityReport, cmp: Option<&CapacityComparison>) -> String {
    let mut cases = vec![Case {
        class: format!("capacity.{}", r.run_id),
        name: "supported users".into(),
        failure: r.supported_users.is_none().then(|| r.summary.clone()),
    }];
    if let Some(c) = cmp {
        cases.push(Case {
            class: format!("capacity.{}", r.run_id),
            name: format!("supported users against {}", c.baseline_run),
            failure: c.is_regression().then(|| c.sentence.clone()),
        });
    }
    suites("ltparse capacity", &[("capacity".to_string(), cases)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_failures_counted() {
        let x = suites(
            "n",
            &[(
                "s".into(),
                vec![
                    Case {
                        class: "c".into(),
                        name: "create_post.p99<200ms".into(),
                        failure: None,
                    },
                    Case {
                        class: "c".into(),
                        name: "a&b".into(),
                        failure: Some("\"x\" > 'y'\u{1}".into()),
                    },
                ],
            )],
        );
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("create_post.p99&lt;200ms"), "{x}");
        assert!(x.contains("a&amp;b"), "{x}");
        assert!(x.contains("&quot;x&quot; &gt; &apos;y&apos;?"), "{x}");
    }
}
