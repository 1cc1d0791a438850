//! The `ltparse` command line: parses arguments into [`ltparse::Options`], runs
//! [`ltparse::run`] and turns its outcome into an exit code. All logic lives in the library so
//! that `ltops` gets exactly the same behaviour.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ltparse::{Display, NoiseFloor, Options};

/// glibc's malloc returns freed memory to the OS and faults it back in for every ~190 KB
/// histogram that decoding a record allocates; mimalloc keeps it, halving parse time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_CODES: &str = "\
Exit codes:
  0  pass: every threshold held and no regression against the baseline
  2  bad usage, or input that cannot be read or is invalid (no report)
  3  at least one threshold failed
  4  regression against the baseline
  5  thresholds failed and regression against the baseline";

#[derive(Parser)]
#[command(name = "ltparse", version, about = "Load-test results: reports, thresholds, baseline verdicts", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summarize results files (JSON Lines written by loadtest-agent).
    #[command(after_help = EXIT_CODES)]
    Results(ResultsArgs),
    /// Render a capacity search (`ltops loadtest --find-capacity`) and compare its supported
    /// users with a baseline search's.
    #[command(
        after_help = "Exit codes:\n  0  rendered (and no regression against the baseline)\n  2  bad usage, or a capacity file that cannot be read\n  4  supported users fell by more than the searches' tolerance"
    )]
    Capacity(CapacityArgs),
}

#[derive(clap::Args)]
struct CapacityArgs {
    /// `capacity.json`, or the run's results directory holding it.
    #[arg(long = "file", short = 'f', value_name = "PATH")]
    file: PathBuf,
    /// The baseline search's `capacity.json` or results directory.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'd', value_enum, default_value_t = Display::Text)]
    display: Display,
    /// Write the report to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "PATH")]
    output: Option<PathBuf>,
}

fn capacity(a: CapacityArgs) -> anyhow::Result<i32> {
    let report = ltparse::load_capacity(&a.file)?;
    let cmp = match &a.baseline {
        Some(b) => Some(ltparse::compare_capacity(
            &ltparse::load_capacity(b).context("--baseline")?,
            &report,
        )),
        None => None,
    };
    let out = ltparse::render_capacity(&report, cmp.as_ref(), a.display)?;
    write_out(&out, a.output.as_deref())?;
    Ok(ltparse::capacity::capacity_exit_code(cmp.as_ref()))
}

fn write_out(text: &str, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write as _;
    match output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not worth a panic or an error message.
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct ResultsArgs {
    /// Results file (repeatable); reads standard input when none is given.
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short = 'd', value_enum, default_value_t = Display::Text)]
    display: Display,
    /// Merge every run found in the input into one summary (exact histogram merge).
    #[arg(long)]
    aggregate: bool,
    /// Results file of the baseline run to compare with (repeatable: all files of one run).
    #[arg(long, value_name = "FILE")]
    baseline: Vec<PathBuf>,
    /// Pass/fail threshold, e.g. 'create_post.p99<200ms', '*.error_rate<1%',
    /// 'delivery.p99<50ms', 'throughput>20/s' (repeatable).
    #[arg(long = "threshold", short = 't', value_name = "EXPR")]
    thresholds: Vec<String>,
    /// Also check the thresholds in this workload config's `run.thresholds`.
    #[arg(long, value_name = "TOML")]
    config: Option<PathBuf>,
    /// Write the report to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "PATH")]
    output: Option<PathBuf>,
    /// Add the per-interval view (text, markdown) and the intervals (json).
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Baseline noise floor for latencies: a change this small is noise, however large in percent
    /// (a change must exceed both this floor and --noise-rel to count).
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration_us)]
    noise_abs: f64,
    /// Baseline relative tolerance: a change this small relative to the baseline is noise, however
    /// large in absolute terms.
    #[arg(long, value_name = "PERCENT", default_value = "5%", value_parser = parse_fraction)]
    noise_rel: f64,
    /// Baseline noise floor for error rates, in percentage points (like --noise-abs).
    #[arg(long, value_name = "PERCENT", default_value = "0.1%", value_parser = parse_fraction)]
    noise_rate: f64,
    /// Baseline noise floor for throughput, per second (like --noise-abs).
    #[arg(long, value_name = "PER_S", default_value = "0.5", value_parser = parse_non_negative)]
    noise_throughput: f64,
}

fn parse_duration_us(s: &str) -> Result<f64, String> {
    humantime::parse_duration(s.trim())
        .map(|d| d.as_secs_f64() * 1_000_000.0)
        .map_err(|e| format!("{s:?} is not a duration like 1ms or 500us: {e}"))
}

fn parse_non_negative(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a number >= 0 like 0.5"))
}

/// `e` and its causes, each once: several errors repeat their source in their own message, and
/// printing the whole chain would then say the same thing two or three times.
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    v.ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a percentage like 5% (or a fraction like 0.05)"))
}

fn options(a: ResultsArgs) -> anyhow::Result<Options> {
    let mut opts = Options {
        files: a.files,
        display: a.display,
        aggregate: a.aggregate,
        baseline: a.baseline,
        thresholds: a.thresholds,
        output: a.output,
        verbose: a.verbose,
        noise: NoiseFloor {
            latency_us: a.noise_abs,
            rate: a.noise_rate,
            throughput: a.noise_throughput,
            relative: a.noise_rel,
        },
    };
    if let Some(path) = &a.config {
        let config = loadtest_contract::WorkloadConfig::from_file(path)
            .with_context(|| format!("reading thresholds from {}", path.display()))?;
        opts.add_workload_thresholds(&config);
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Results(args) => options(args).and_then(|opts| {
            let out = ltparse::run(&opts)?;
            for w in &out.warnings {
                eprintln!("ltparse: warning: {w}");
            }
            if opts.output.is_none() {
                write_out(&out.rendered, None)?;
            }
            Ok(out.outcome.exit_code())
        }),
        Command::Capacity(args) => capacity(args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("ltparse: error: {}", render(&e));
            ExitCode::from(ltparse::EXIT_USAGE as u8)
        }
    }
}
