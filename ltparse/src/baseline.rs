//! Comparing a run with a baseline run: per action, the metrics that matter for a verdict, each
//! classified as a regression, an improvement or noise, direction-aware (latency and error rate
//! up are regressions, throughput down is one).
//!
//! Noise: a change counts only when it exceeds BOTH the absolute floor of its metric and the
//! relative tolerance; a change under either is noise. So 0.3 ms → 0.6 ms (+100 %, but under the
//! 1 ms floor) is noise, and 900 ms → 910 ms (+10 ms, but only +1.1 %) is noise, while
//! 20 ms → 30 ms is a regression.

use serde::Serialize;

use crate::summary::{LatencySummary, RunSummary};
use crate::threshold::{format_value, Kind};

/// What a change must exceed to count. Every field is configurable from the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NoiseFloor {
    /// Latency floor, µs (default 1 ms).
    pub latency_us: f64,
    /// Error-rate floor, as a fraction (default 0.001 = 0.1 percentage point).
    pub rate: f64,
    /// Throughput floor, per second (default 0.5/s).
    pub throughput: f64,
    /// Relative tolerance, as a fraction of the baseline (default 0.05 = 5 %).
    pub relative: f64,
}

impl Default for NoiseFloor {
    fn default() -> Self {
        NoiseFloor {
            latency_us: 1000.0,
            rate: 0.001,
            throughput: 0.5,
            relative: 0.05,
        }
    }
}

/// How one metric changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Regression,
    Improvement,
    /// Under the noise floor (or no change at all).
    Noise,
}

/// One line of a comparison table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricDelta {
    /// `create_post` or `delivery`.
    pub subject: String,
    /// `throughput`, `error_rate`, `mean`, `p50`, `p95`, `p99`, `max`.
    pub metric: String,
    /// Base units: µs for latencies, a fraction for rates, per second for throughput.
    pub baseline: f64,
    pub actual: f64,
    pub delta: f64,
    /// `delta / baseline`; `null` when the baseline is 0.
    pub delta_rel: Option<f64>,
    pub change: Change,
    #[serde(skip)]
    pub kind: Kind,
}

impl MetricDelta {
    pub fn fmt_value(&self, v: f64) -> String {
        format_value(self.kind, v)
    }

    pub fn fmt_delta(&self) -> String {
        // A difference of two rates is in percentage points, not percent.
        if self.kind == Kind::Rate {
            return format!("{:+.2} pp", self.delta * 100.0);
        }
        let s = format_value(self.kind, self.delta.abs());
        if self.delta < 0.0 {
            format!("-{s}")
        } else {
            format!("+{s}")
        }
    }

    pub fn fmt_delta_rel(&self) -> String {
        match self.delta_rel {
            Some(r) => format!("{:+.1}%", r * 100.0),
            None => "n/a".into(),
        }
    }

    /// `create_post p99: 12.00 ms → 18.00 ms (+6.00 ms, +50.0%)`.
    pub fn sentence(&self) -> String {
        format!(
            "{} {}: {} → {} ({}, {})",
            self.subject,
            self.metric,
            self.fmt_value(self.baseline),
            self.fmt_value(self.actual),
            self.fmt_delta(),
            self.fmt_delta_rel()
        )
    }
}

/// A run compared with its baseline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub baseline_run: String,
    pub run: String,
    /// Every compared metric, grouped by subject (actions by name, then delivery).
    pub rows: Vec<MetricDelta>,
    /// Actions only one side has (not compared).
    pub only_in_baseline: Vec<String>,
    pub only_in_actual: Vec<String>,
}

impl Comparison {
    pub fn regressions(&self) -> impl Iterator<Item = &MetricDelta> {
        self.rows.iter().filter(|r| r.change == Change::Regression)
    }

    pub fn improvements(&self) -> impl Iterator<Item = &MetricDelta> {
        self.rows.iter().filter(|r| r.change == Change::Improvement)
    }

    pub fn has_regression(&self) -> bool {
        self.regressions().next().is_some()
    }
}

fn classify(
    kind: Kind,
    baseline: f64,
    actual: f64,
    higher_is_better: bool,
    n: &NoiseFloor,
) -> Change {
    let delta = actual - baseline;
    let floor = match kind {
        Kind::Latency => n.latency_us,
        Kind::Rate => n.rate,
        Kind::Throughput => n.throughput,
        Kind::Count => 0.0,
    };
    let rel = if baseline != 0.0 {
        (delta / baseline).abs()
    } else if delta == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    if delta == 0.0 || delta.abs() <= floor || rel <= n.relative {
        return Change::Noise;
    }
    if (delta > 0.0) == higher_is_better {
        Change::Improvement
    } else {
        Change::Regression
    }
}

fn row(
    subject: &str,
    metric: &str,
    kind: Kind,
    baseline: f64,
    actual: f64,
    higher_is_better: bool,
    n: &NoiseFloor,
) -> MetricDelta {
    let delta = actual - baseline;
    MetricDelta {
        subject: subject.to_string(),
        metric: metric.to_string(),
        baseline,
        actual,
        delta,
        delta_rel: (baseline != 0.0).then(|| delta / baseline),
        change: classify(kind, baseline, actual, higher_is_better, n),
        kind,
    }
}

fn latency_rows(
    out: &mut Vec<MetricDelta>,
    subject: &str,
    metrics: &[&str],
    b: &LatencySummary,
    a: &LatencySummary,
    n: &NoiseFloor,
) {
    // A side without samples has no latency to compare (all errors, or not run).
    if b.count == 0 || a.count == 0 {
        return;
    }
    for m in metrics {
        let pick = |l: &LatencySummary| match *m {
            "mean" => l.mean_us,
            "p50" => l.p50_us as f64,
            "p95" => l.p95_us as f64,
            "p99" => l.p99_us as f64,
            _ => l.max_us as f64,
        };
        out.push(row(subject, m, Kind::Latency, pick(b), pick(a), false, n));
    }
}

/// Compares `actual` with `baseline`.
pub fn compare(baseline: &RunSummary, actual: &RunSummary, noise: &NoiseFloor) -> Comparison {
    let mut rows = Vec::new();
    let mut only_in_baseline = Vec::new();
    for b in &baseline.actions {
        let Some(a) = actual.action(&b.action) else {
            only_in_baseline.push(b.action.clone());
            continue;
        };
        let s = b.action.as_str();
        rows.push(row(
            s,
            "throughput",
            Kind::Throughput,
            b.throughput_per_s,
            a.throughput_per_s,
            true,
            noise,
        ));
        rows.push(row(
            s,
            "error_rate",
            Kind::Rate,
            b.error_rate,
            a.error_rate,
            false,
            noise,
        ));
        latency_rows(
            &mut rows,
            s,
            &["mean", "p50", "p95", "p99", "max"],
            &b.response_time,
            &a.response_time,
            noise,
        );
    }
    latency_rows(
        &mut rows,
        "delivery",
        &["p99"],
        &baseline.delivery.latency,
        &actual.delivery.latency,
        noise,
    );
    let only_in_actual = actual
        .actions
        .iter()
        .filter(|a| baseline.action(&a.action).is_none())
        .map(|a| a.action.clone())
        .collect();
    Comparison {
        baseline_run: baseline.label(),
        run: actual.label(),
        rows,
        only_in_baseline,
        only_in_actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_needs_both_floor_and_tolerance_to_be_exceeded() {
        let n = NoiseFloor::default();
        // +100 % but only +0.3 ms: noise.
        assert_eq!(
            classify(Kind::Latency, 300.0, 600.0, false, &n),
            Change::Noise
        );
        // +10 ms but +1.1 %: noise.
        assert_eq!(
            classify(Kind::Latency, 900_000.0, 910_000.0, false, &n),
            Change::Noise
        );
        assert_eq!(
            classify(Kind::Latency, 20_000.0, 30_000.0, false, &n),
            Change::Regression
        );
        assert_eq!(
            classify(Kind::Latency, 30_000.0, 20_000.0, false, &n),
            Change::Improvement
        );
        assert_eq!(
            classify(Kind::Throughput, 100.0, 80.0, true, &n),
            Change::Regression
        );
        assert_eq!(
            classify(Kind::Throughput, 100.0, 120.0, true, &n),
            Change::Improvement
        );
        assert_eq!(
            classify(Kind::Rate, 0.0, 0.02, false, &n),
            Change::Regression
        );
        assert_eq!(classify(Kind::Rate, 0.0, 0.0005, false, &n), Change::Noise);
        assert_eq!(classify(Kind::Rate, 0.0, 0.0, false, &n), Change::Noise);
    }
}
