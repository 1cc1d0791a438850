//! k6-like pass/fail thresholds: `create_post.p99<200ms`, `*.error_rate<1%`,
//! `delivery.p99<50ms`, `throughput>20/s`.
//!
//! Grammar: `[TARGET.]METRIC OP VALUE[UNIT]`, spaces allowed around `OP`.
//! - TARGET: an action name (`create_post`), `*` (every action present in the results),
//!   `delivery`, or nothing (all actions together: `count`, `errors`, `error_rate`, `throughput`).
//! - METRIC for actions: `count` (hits), `errors`, `error_rate`, `throughput`, `mean`, `p50`,
//!   `p90`, `p95`, `p99`, `p999`, `max` (latencies are response times);
//!   for `delivery`: `mean`, `p50` … `max`, `count` (received), `expected`, `missing`,
//!   `missing_rate`, `duplicate`; deliveries to receivers on other agents (clock-offset
//!   corrected): `remote_count`, `remote_p50`, `remote_p99`, `remote_max`.
//! - OP: `<`, `<=`, `>`, `>=`, `==`, `!=`.
//! - UNIT: latencies `us`/`µs`, `ms` (the default), `s`; rates `%` or a bare fraction;
//!   throughput `/s` or bare; counts bare.
//!
//! A name that is not an action or a metric is a parse error, never a silent pass. A valid action
//! with no results fails its threshold ("no data"), except for counts, which are then 0.

use loadtest_contract::Action;
use serde::Serialize;

use crate::summary::{LatencySummary, RunSummary};
use crate::Error;

/// What a threshold applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Action(Action),
    AllActions,
    Delivery,
    /// All actions taken together.
    Total,
}

/// The kind of a metric, which decides its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Microseconds.
    Latency,
    /// Fraction 0..1.
    Rate,
    /// Per second.
    Throughput,
    Count,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// A parsed threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// The expression as written (trimmed).
    pub expr: String,
    pub target: Target,
    pub metric: String,
    pub kind: Kind,
    pub op: Op,
    /// In the metric's base unit: µs, fraction, per second or count.
    pub value: f64,
}

const ACTION_METRICS: &[(&str, Kind)] = &[
    ("count", Kind::Count),
    ("errors", Kind::Count),
    ("error_rate", Kind::Rate),
    ("throughput", Kind::Throughput),
    ("mean", Kind::Latency),
    ("p50", Kind::Latency),
    ("p90", Kind::Latency),
    ("p95", Kind::Latency),
    ("p99", Kind::Latency),
    ("p999", Kind::Latency),
    ("max", Kind::Latency),
];

const DELIVERY_METRICS: &[(&str, Kind)] = &[
    ("count", Kind::Count),
    ("expected", Kind::Count),
    ("missing", Kind::Count),
    ("missing_rate", Kind::Rate),
    ("duplicate", Kind::Count),
    ("mean", Kind::Latency),
    ("p50", Kind::Latency),
    ("p90", Kind::Latency),
    ("p95", Kind::Latency),
    ("p99", Kind::Latency),
    ("p999", Kind::Latency),
    ("max", Kind::Latency),
    ("remote_count", Kind::Count),
    ("remote_p50", Kind::Latency),
    ("remote_p99", Kind::Latency),
    ("remote_max", Kind::Latency),
];

const TOTAL_METRICS: &[(&str, Kind)] = &[
    ("count", Kind::Count),
    ("errors", Kind::Count),
    ("error_rate", Kind::Rate),
    ("throughput", Kind::Throughput),
];

fn names(list: &[(&str, Kind)]) -> String {
    list.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Parses one threshold expression.
pub fn parse_threshold(expr: &str) -> Result<Threshold, Error> {
    let expr = expr.trim();
    let err = |message: String| Error::Threshold {
        expr: expr.to_string(),
        message,
    };
    let (pos, op, op_len) = find_op(expr).ok_or_else(|| {
        err(
            "no comparison; write it like create_post.p99<200ms (operators: < <= > >= == !=)"
                .into(),
        )
    })?;
    let lhs = expr[..pos].trim();
    let rhs = expr[pos + op_len..].trim();
    // Split at the first dot: no target has one, and `p99.9` must read as an unknown metric.
    let (target, metric) = match lhs.split_once('.') {
        Some((t, m)) => {
            let t = t.trim();
            let target = match t {
                "*" => Target::AllActions,
                "delivery" => Target::Delivery,
                _ => Target::Action(Action::from_name(t).ok_or_else(|| {
                    err(format!(
                        "unknown action {t:?}; known: {}, or * for every action, or delivery",
                        Action::ALL.map(|a| a.name()).join(", ")
                    ))
                })?),
            };
            (target, m.trim())
        }
        None => (Target::Total, lhs),
    };
    let table = match target {
        Target::Delivery => DELIVERY_METRICS,
        Target::Total => TOTAL_METRICS,
        _ => ACTION_METRICS,
    };
    let kind = table
        .iter()
        .find(|(n, _)| *n == metric)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            if target == Target::Total && ACTION_METRICS.iter().any(|(n, _)| *n == metric) {
                err(format!(
                    "{metric} needs an action, e.g. create_post.{metric} or *.{metric}"
                ))
            } else {
                err(format!(
                    "unknown metric {metric:?}; known here: {}",
                    names(table)
                ))
            }
        })?;
    let value = parse_value(rhs, kind).map_err(err)?;
    Ok(Threshold {
        expr: expr.to_string(),
        target,
        metric: metric.to_string(),
        kind,
        op,
        value,
    })
}

fn find_op(s: &str) -> Option<(usize, Op, usize)> {
    let i = s.find(['<', '>', '=', '!'])?;
    let rest = &s[i..];
    let two = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
    ];
    for (t, op) in two {
        if rest.starts_with(t) {
            return Some((i, op, 2));
        }
    }
    match rest.as_bytes().first() {
        Some(b'<') => Some((i, Op::Lt, 1)),
        Some(b'>') => Some((i, Op::Gt, 1)),
        _ => None,
    }
}

fn parse_value(s: &str, kind: Kind) -> Result<f64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(s.len());
    // "1e3" is a number but "1s" must split before "s": only treat 'e' as numeric when it is
    // followed by a digit (handled by trying the longest numeric prefix that parses).
    let (mut num, mut unit) = (s[..split].trim(), s[split..].trim());
    if num.parse::<f64>().is_err() {
        if let Some(stripped) = num.strip_suffix('e') {
            num = stripped;
            unit = s[split - 1..].trim();
        }
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number with an optional unit"))?;
    if !n.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    if n < 0.0 {
        return Err(format!(
            "{s:?} is negative; every metric is 0 or more, so this threshold could never \
             (or would always) hold"
        ));
    }
    let bad_unit =
        |expected: &str| format!("unit {unit:?} does not fit this metric; use {expected}");
    match kind {
        Kind::Latency => match unit {
            "" | "ms" => Ok(n * 1000.0),
            "us" | "µs" => Ok(n),
            "s" => Ok(n * 1_000_000.0),
            _ => Err(bad_unit("us, ms or s")),
        },
        Kind::Rate => {
            let v = match unit {
                "%" => n / 100.0,
                "" => n,
                _ => return Err(bad_unit("% (or a bare fraction such as 0.01)")),
            };
            if v > 1.0 {
                return Err(format!(
                    "{s:?} is more than 100%; a bare number is a fraction (0.05 = 5%), \
                     so write {n}% if that is what you meant"
                ));
            }
            Ok(v)
        }
        Kind::Throughput => match unit {
            "" | "/s" => Ok(n),
            _ => Err(bad_unit("/s")),
        },
        Kind::Count => match unit {
            "" => Ok(n),
            _ => Err(bad_unit("a bare count")),
        },
    }
}

/// The result of one threshold on one run (a `*` threshold gives one result per action).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdResult {
    /// The expression as written.
    pub expr: String,
    /// What was checked, e.g. `create_post.p99`.
    pub subject: String,
    /// The run (label) checked.
    pub run: String,
    pub passed: bool,
    /// The actual value in the metric's base unit (µs, fraction, /s, count); `null` for no data.
    pub actual: Option<f64>,
    /// The actual value for people, e.g. `183.20 ms`.
    pub actual_display: String,
    /// The limit for people, e.g. `< 200.00 ms`.
    pub limit_display: String,
}

/// Formats a value of `kind` (in its base unit) for people.
pub fn format_value(kind: Kind, v: f64) -> String {
    match kind {
        Kind::Latency => format!("{:.2} ms", v / 1000.0),
        Kind::Rate => format!("{:.2}%", v * 100.0),
        Kind::Throughput => format!("{v:.2}/s"),
        Kind::Count => format!("{v:.0}"),
    }
}

fn latency(l: &LatencySummary, metric: &str) -> Option<f64> {
    if l.count == 0 {
        return None;
    }
    Some(match metric {
        "mean" => l.mean_us,
        "p50" => l.p50_us as f64,
        "p90" => l.p90_us as f64,
        "p95" => l.p95_us as f64,
        "p99" => l.p99_us as f64,
        "p999" => l.p999_us as f64,
        _ => l.max_us as f64,
    })
}

/// Checks every threshold against one run summary.
pub fn evaluate(thresholds: &[Threshold], run: &RunSummary) -> Vec<ThresholdResult> {
    let mut out = Vec::new();
    for t in thresholds {
        let mut check = |subject: String, actual: Result<f64, String>| {
            let (passed, actual, actual_display) = match actual {
                Ok(v) => (t.op.holds(v, t.value), Some(v), format_value(t.kind, v)),
                Err(why) => (false, None, why),
            };
            out.push(ThresholdResult {
                expr: t.expr.clone(),
                subject,
                run: run.label(),
                passed,
                actual,
                actual_display,
                limit_display: format!("{} {}", t.op.as_str(), format_value(t.kind, t.value)),
            });
        };
        match &t.target {
            Target::Total => {
                let v = match t.metric.as_str() {
                    "count" => run.totals.hits as f64,
                    "errors" => run.totals.errors as f64,
                    "error_rate" => run.totals.error_rate,
                    _ => run.totals.throughput_per_s,
                };
                check(t.metric.clone(), Ok(v));
            }
            Target::Delivery => {
                let d = &run.delivery;
                let v = match t.metric.as_str() {
                    "count" => Ok(d.received as f64),
                    "expected" => Ok(d.expected as f64),
                    "missing" => Ok(d.missing as f64),
                    "duplicate" => Ok(d.duplicate as f64),
                    "missing_rate" if d.expected == 0 => {
                        Err("no data (no deliveries expected)".to_string())
                    }
                    "missing_rate" => Ok(d.missing_rate),
                    "remote_count" => Ok(d.remote.as_ref().map_or(0.0, |r| r.received as f64)),
                    m if m.starts_with("remote_") => d
                        .remote
                        .as_ref()
                        .and_then(|r| latency(&r.latency, &m["remote_".len()..]))
                        .ok_or_else(|| {
                            "no data (no deliveries to receivers on other agents)".to_string()
                        }),
                    m => latency(&d.latency, m)
                        .ok_or_else(|| "no data (no deliveries received)".to_string()),
                };
                check(format!("delivery.{}", t.metric), v);
            }
            Target::Action(a) => {
                let name = a.name();
                let subject = format!("{name}.{}", t.metric);
                match run.action(name) {
                    Some(s) => check(subject, action_metric(s, &t.metric)),
                    None if t.kind == Kind::Count => check(subject, Ok(0.0)),
                    None => check(
                        subject,
                        Err(format!("no data ({name} is not in the results)")),
                    ),
                }
            }
            Target::AllActions => {
                if run.actions.is_empty() {
                    check(
                        format!("*.{}", t.metric),
                        Err("no data (no actions in the results)".into()),
                    );
                }
                for s in &run.actions {
                    check(
                        format!("{}.{}", s.action, t.metric),
                        action_metric(s, &t.metric),
                    );
                }
            }
        }
    }
    out
}

fn action_metric(s: &crate::summary::ActionSummary, metric: &str) -> Result<f64, String> {
    match metric {
        "count" => Ok(s.hits as f64),
        "errors" => Ok(s.errors as f64),
        "error_rate" => Ok(s.error_rate),
        "throughput" => Ok(s.throughput_per_s),
        m => latency(&s.response_time, m)
            .ok_or_else(|| format!("no data ({} has no successful samples)", s.action)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Threshold {
        parse_threshold(s).expect(s)
    }

    #[test]
    fn parses_the_documented_examples() {
        let t = p("create_post.p99<200ms");
        assert_eq!(t.target, Target::Action(Action::CreatePost));
        assert_eq!((t.op, t.value, t.kind), (Op::Lt, 200_000.0, Kind::Latency));
        let t = p("*.error_rate<1%");
        assert_eq!((t.target, t.value), (Target::AllActions, 0.01));
        let t = p("delivery.p99 < 50ms");
        assert_eq!((t.target, t.value), (Target::Delivery, 50_000.0));
        let t = p("throughput>20/s");
        assert_eq!((t.target, t.op, t.value), (Target::Total, Op::Gt, 20.0));
        let t = p("switch_channel.mean<=0.1s");
        assert_eq!((t.op, t.value), (Op::Le, 100_000.0));
        assert_eq!(p("create_post.count>0").kind, Kind::Count);
        assert_eq!(p("login.p999 < 1500us").value, 1500.0);
        assert_eq!(p("login.max<250").value, 250_000.0);
        assert_eq!(p("delivery.missing_rate<=0.001").value, 0.001);
        assert_eq!(p("create_post.errors==0").op, Op::Eq);
        assert_eq!(p("create_post.errors != 3").op, Op::Ne);
        assert_eq!(p("create_post.throughput>=1e1/s").value, 10.0);
    }

    #[test]
    fn rejects_negative_values_rates_over_100_percent_and_names_dotted_metrics() {
        for bad in [
            "create_post.p99<-5ms",
            "*.error_rate<-1%",
            "create_post.count>-1",
        ] {
            let e = parse_threshold(bad).expect_err(bad).to_string();
            assert!(e.contains("negative"), "{bad}: {e}");
        }
        // A bare rate is a fraction: `<5` would be 500% and always hold.
        let e = parse_threshold("*.error_rate<5")
            .expect_err("500%")
            .to_string();
        assert!(e.contains("5%"), "{e}");
        assert!(parse_threshold("*.error_rate<150%").is_err());
        assert_eq!(p("*.error_rate<=1").value, 1.0);
        assert_eq!(p("*.error_rate<100%").value, 1.0);
        let e = parse_threshold("create_post.p99.9<1ms")
            .expect_err("p99.9")
            .to_string();
        assert!(e.contains("unknown metric \"p99.9\""), "{e}");
    }

    #[test]
    fn rejects_unknown_names_and_bad_units() {
        for bad in [
            "creat_post.p99<200ms",
            "create_post.p98<200ms",
            "create_post.p99<200",
            "p99<200ms",
            "create_post.p99",
            "create_post.p99<",
            "create_post.p99<fast",
            "create_post.p99<5%",
            "*.error_rate<1ms",
            "throughput>20/m",
            "delivery.throughput>1",
            "create_post.count>1ms",
            "",
        ] {
            // "create_post.p99<200" is valid (bare = ms): skip it from the bad list.
            if bad == "create_post.p99<200" {
                continue;
            }
            assert!(parse_threshold(bad).is_err(), "{bad} should not parse");
        }
        let e = parse_threshold("creat_post.p99<200ms").expect_err("bad action");
        assert!(e.to_string().contains("unknown action"), "{e}");
        let e = parse_threshold("create_post.p98<200ms").expect_err("bad metric");
        assert!(e.to_string().contains("unknown metric"), "{e}");
    }
}
