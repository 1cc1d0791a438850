//! `ltparse`: turns load-test results files (the JSON Lines format of [`loadtest_contract::results`])
//! into reports — text, Markdown, JSON, HTML — and CI verdicts: k6-like thresholds and a
//! comparison with a baseline run, each with its own exit code.
//!
//! # One call
//!
//! `ltops` and the `ltparse` binary both go through [`run`], whose [`Options`] mirror the CLI:
//!
//! ```no_run
//! let mut opts = ltparse::Options::default();
//! opts.files = ltparse::results_files_in(std::path::Path::new("results/run-42"))?;
//! opts.thresholds.push("create_post.p99<200ms".into());
//! // opts.add_workload_thresholds(&workload_config); // thresholds from `run.thresholds`
//! let out = ltparse::run(&opts)?;
//! for w in &out.warnings { eprintln!("warning: {w}"); }
//! print!("{}", out.rendered);               // also written to opts.output when set
//! std::process::exit(out.outcome.exit_code());
//! # Ok::<(), ltparse::Error>(())
//! ```
//! Any [`Error`] maps to exit code [`EXIT_USAGE`] (2).
//!
//! # The steps, for finer control
//!
//! 1. [`load`] streams [`Input`]s (files, stdin, readers) into a [`Loaded`]: records grouped by
//!    run id, each run's agents merged exactly (HDR histogram addition); an agent without a
//!    summary record has its totals rebuilt from its intervals and the run is marked cut short.
//!    Memory is bounded by runs × agents × actions × intervals, not by the input size.
//! 2. [`summarize`] turns one run ([`load::RunData`]; [`Loaded::aggregate`] merges several) into a
//!    [`RunSummary`].
//! 3. [`parse_threshold`] + [`evaluate`] check thresholds; [`compare`] compares with a baseline.
//! 4. [`Report`] gathers it all with its [`Outcome`]; [`render`] formats it for a [`Display`].
//!
//! # Exit codes
//!
//! [`EXIT_PASS`] 0, [`EXIT_USAGE`] 2 (bad usage, unreadable or invalid input),
//! [`EXIT_THRESHOLDS`] 3, [`EXIT_REGRESSION`] 4, [`EXIT_BOTH`] 5 (thresholds failed *and*
//! regression).

pub mod baseline;
pub mod capacity;
pub mod html;
pub mod junit;
pub mod load;
pub mod render;
pub mod summary;
pub mod threshold;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use loadtest_contract::results::ReadError;
use serde::Serialize;

pub use baseline::{compare, Change, Comparison, MetricDelta, NoiseFloor};
pub use capacity::{compare_capacity, load_capacity, render_capacity, CapacityComparison};
pub use load::{load, Input, Loaded};
pub use summary::{summarize, RunSummary};
pub use threshold::{evaluate, parse_threshold, Threshold, ThresholdResult};

/// Everything passed.
pub const EXIT_PASS: i32 = 0;
/// Bad usage, or input that cannot be read or is invalid (no report).
pub const EXIT_USAGE: i32 = 2;
/// At least one threshold failed (and no regression against a baseline).
pub const EXIT_THRESHOLDS: i32 = 3;
/// Regression against the baseline (and every threshold passed).
pub const EXIT_REGRESSION: i32 = 4;
/// Thresholds failed and regression against the baseline.
pub const EXIT_BOTH: i32 = 5;

/// Why no report could be made. Every variant means exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed line, a newer schema major: `file:line: what was expected`.
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no results records in {0}")]
    Empty(String),
    /// Input that parses but does not add up (the same agent twice, unmergeable histograms).
    #[error("{0}")]
    Invalid(String),
    #[error("the input holds {} runs ({}); pass --aggregate to merge them into one report, or give only one run's files (the text display shows each run in turn)", .0.len(), .0.join(", "))]
    SeveralRuns(Vec<String>),
    #[error("invalid threshold {expr:?}: {message}")]
    Threshold { expr: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] loadtest_contract::workload::ConfigError),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        EXIT_USAGE
    }
}

/// How the report is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Display {
    /// Tables for a terminal (the default).
    #[default]
    Text,
    /// GitHub-flavoured Markdown, for pull-request comments and CI job summaries.
    Markdown,
    /// The machine-readable report (see the README for its fields).
    Json,
    /// One self-contained HTML file with charts.
    Html,
    /// JUnit XML: one test case per threshold and per baseline metric, for CI test reports.
    Junit,
}

/// The verdict a CI job acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    ThresholdsFailed,
    Regression,
    ThresholdsFailedAndRegression,
}

impl Outcome {
    pub fn new(thresholds_failed: bool, regression: bool) -> Self {
        match (thresholds_failed, regression) {
            (false, false) => Outcome::Pass,
            (true, false) => Outcome::ThresholdsFailed,
            (false, true) => Outcome::Regression,
            (true, true) => Outcome::ThresholdsFailedAndRegression,
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => EXIT_PASS,
            Outcome::ThresholdsFailed => EXIT_THRESHOLDS,
            Outcome::Regression => EXIT_REGRESSION,
            Outcome::ThresholdsFailedAndRegression => EXIT_BOTH,
        }
    }
}

/// Everything a display shows; the JSON display is this, serialized.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Always `"ltparse-report"`.
    pub format: &'static str,
    /// Bumped when a field changes meaning or disappears.
    pub version: u32,
    /// One per run, or one for all of them with `--aggregate`.
    pub runs: Vec<RunSummary>,
    /// The baseline run(s), merged, when `--baseline` was given.
    pub baseline: Option<RunSummary>,
    /// One per run, when a baseline was given.
    pub comparisons: Vec<Comparison>,
    pub thresholds: Vec<ThresholdResult>,
    pub outcome: Outcome,
    pub exit_code: i32,
}

impl Report {
    /// Evaluates thresholds on every run and compares every run with the baseline.
    pub fn build(
        runs: Vec<RunSummary>,
        baseline: Option<RunSummary>,
        thresholds: &[Threshold],
        noise: &NoiseFloor,
    ) -> Self {
        let results: Vec<ThresholdResult> =
            runs.iter().flat_map(|r| evaluate(thresholds, r)).collect();
        let comparisons: Vec<Comparison> = match &baseline {
            Some(b) => runs.iter().map(|r| compare(b, r, noise)).collect(),
            None => Vec::new(),
        };
        let outcome = Outcome::new(
            results.iter().any(|r| !r.passed),
            comparisons.iter().any(Comparison::has_regression),
        );
        Report {
            format: "ltparse-report",
            version: 1,
            runs,
            baseline,
            comparisons,
            thresholds: results,
            outcome,
            exit_code: outcome.exit_code(),
        }
    }
}

/// Rendering switches.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderOptions {
    /// Per-interval view in text and Markdown, intervals in JSON.
    pub verbose: bool,
}

/// Formats a report.
pub fn render(report: &Report, display: Display, opts: &RenderOptions) -> Result<String, Error> {
    Ok(match display {
        Display::Text => render::text(report, opts.verbose),
        Display::Markdown => render::markdown(report, opts.verbose),
        Display::Html => html::html(report),
        Display::Junit => junit::junit(report),
        Display::Json => {
            let mut r = report.clone();
            if !opts.verbose {
                r.runs.iter_mut().for_each(|x| {
                    x.intervals.clear();
                    x.server_timeline.clear();
                });
                if let Some(b) = &mut r.baseline {
                    b.intervals.clear();
                }
            }
            let mut s = serde_json::to_string_pretty(&r)
                .map_err(|e| Error::Invalid(format!("cannot encode the report: {e}")))?;
            s.push('\n');
            s
        }
    })
}

/// What `ltparse results` does, as data (the CLI fills it; `ltops` can too).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Results files; standard input when empty.
    pub files: Vec<PathBuf>,
    pub display: Display,
    /// Merge every run of the input into one report.
    pub aggregate: bool,
    /// Files of the baseline run (all merged into one baseline).
    pub baseline: Vec<PathBuf>,
    /// Threshold expressions, see [`threshold`].
    pub thresholds: Vec<String>,
    /// Also write the rendered report to this file.
    pub output: Option<PathBuf>,
    pub verbose: bool,
    pub noise: NoiseFloor,
}

impl Options {
    /// Appends the thresholds of a workload config's `run.thresholds`.
    pub fn add_workload_thresholds(&mut self, config: &loadtest_contract::WorkloadConfig) {
        self.thresholds
            .extend(config.run.thresholds.iter().cloned());
    }
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The report in the requested display.
    pub rendered: String,
    pub report: Report,
    pub outcome: Outcome,
    /// Input warnings (unknown record kinds, an incomplete last line): print them on stderr.
    pub warnings: Vec<String>,
}

/// The `.jsonl` files of a results directory (e.g. `results/<run-id>/`), sorted by name.
pub fn results_files_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e == "jsonl") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Empty(format!("{} (no .jsonl files)", dir.display())));
    }
    Ok(files)
}

/// Loads, summarizes, checks and renders as `opts` says; writes `opts.output` when set.
pub fn run(opts: &Options) -> Result<RunOutcome, Error> {
    let inputs = if opts.files.is_empty() {
        vec![Input::stdin()]
    } else {
        opts.files
            .iter()
            .map(|p| Input::file(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    run_with_inputs(opts, inputs)
}

/// [`run`] with the main inputs given as readers (`opts.files` is ignored; baselines are still
/// read from `opts.baseline`).
pub fn run_with_inputs<'a>(
    opts: &Options,
    inputs: impl IntoIterator<Item = Input<'a>>,
) -> Result<RunOutcome, Error> {
    // Parse thresholds first: a typo must fail fast, before a long read.
    let thresholds = opts
        .thresholds
        .iter()
        .map(|t| parse_threshold(t))
        .collect::<Result<Vec<_>, _>>()?;
    let loaded = load(inputs)?;
    let mut warnings = loaded.warnings.clone();
    let runs: Vec<RunSummary> = if opts.aggregate {
        vec![summarize(&loaded.aggregate()?)]
    } else {
        if loaded.runs.len() > 1 && opts.display != Display::Text {
            return Err(Error::SeveralRuns(
                loaded.runs.iter().flat_map(|r| r.run_ids.clone()).collect(),
            ));
        }
        loaded.runs.iter().map(summarize).collect()
    };
    let baseline = if opts.baseline.is_empty() {
        None
    } else {
        let inputs = opts
            .baseline
            .iter()
            .map(|p| Input::file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let b = load(inputs)?;
        warnings.extend(b.warnings.iter().map(|w| format!("baseline: {w}")));
        if b.runs.len() > 1 {
            warnings.push(format!(
                "baseline: {} runs found; they are merged into one baseline",
                b.runs.len()
            ));
        }
        Some(summarize(&b.aggregate()?))
    };
    let report = Report::build(runs, baseline, &thresholds, &opts.noise);
    let rendered = render(
        &report,
        opts.display,
        &RenderOptions {
            verbose: opts.verbose,
        },
    )?;
    if let Some(path) = &opts.output {
        let werr = |source| Error::Write {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::File::create(path).map_err(werr)?;
        f.write_all(rendered.as_bytes()).map_err(werr)?;
    }
    Ok(RunOutcome {
        rendered,
        outcome: report.outcome,
        report,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_documented_exit_codes() {
        assert_eq!(Outcome::new(false, false).exit_code(), 0);
        assert_eq!(Outcome::new(true, false).exit_code(), 3);
        assert_eq!(Outcome::new(false, true).exit_code(), 4);
        assert_eq!(Outcome::new(true, true).exit_code(), 5);
        assert_eq!(Error::Empty("x".into()).exit_code(), 2);
    }

    #[test]
    fn several_runs_need_aggregate_except_in_text() {
        let e = Error::SeveralRuns(vec!["a".into(), "b".into()]).to_string();
        assert!(e.contains("--aggregate") && e.contains("a, b"), "{e}");
    }
}
