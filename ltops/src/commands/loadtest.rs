//! `ltops loadtest`: a coordinated run on a deployed cluster, from data-set preparation to the
//! `ltparse` summary.
//!
//! `--quick` makes it one command on a fresh machine: it creates (or reuses) the local cluster
//! `quick` (two agents, one server on SQLite), deploys it if it is not running, and runs the
//! `quick` preset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use loadtest_contract::WorkloadConfig;

use loadtest_contract::capacity::{CapacityOutcome, CapacityReport, CAPACITY_FILE};

use crate::capacity::{self as cap, SearchOptions};
use crate::commands::create::{self, CreateOptions};
use crate::commands::{deploy, lock};
use crate::coordinator::{self, AgentOutcome, RunPlan, Steer};
use crate::error::{exit, Error, Result};
use crate::progress::{self, Progress};
use crate::provider::{self, Artifacts, Health, Provider};
use crate::state::{
    self, ClusterState, Database, DatasetState, Home, LastRun, Role, QUICK_CLUSTER,
};

/// How the live progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    #[default]
    Auto,
    Plain,
    None,
}

/// `ltops loadtest` options; the same struct is the command line (clap) and the library's input.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LoadtestOptions {
    /// Cluster name (default with --quick: `quick`).
    #[arg(short = 'c', long = "cluster")]
    pub cluster: Option<String>,
    /// Create/reuse the local cluster `quick`, deploy it if needed, run the `quick` preset.
    #[arg(long)]
    pub quick: bool,
    /// Workload config (TOML); default: the one recorded by `deploy --config`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Simulated users across all agents (overrides users.count).
    #[arg(long)]
    pub users: Option<u64>,
    /// Test duration, e.g. 90s or 5m (overrides users.duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Do not run the data-set setup even if it was never recorded as done.
    #[arg(long, conflicts_with = "force_setup")]
    pub skip_setup: bool,
    /// Run the data-set setup even if it was recorded as done.
    #[arg(long)]
    pub force_setup: bool,
    /// Pass/fail threshold, e.g. 'create_post.p99<200ms', '*.error_rate<1%' (repeatable;
    /// added to the config's run.thresholds).
    #[arg(long = "threshold", short = 't', value_name = "EXPR")]
    pub thresholds: Vec<String>,
    /// Baseline results to compare with: a results file or a previous run's directory (repeatable).
    #[arg(long, value_name = "PATH")]
    pub baseline: Vec<PathBuf>,
    /// Also append the report as Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// With --quick: path of the `chat-server` binary.
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// With --quick: path of the `loadtest-agent` binary.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Progress display: auto (bars on a terminal), plain (periodic lines) or none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Search for the number of users the cluster holds within its SLOs (the thresholds):
    /// grow from --start-users, bisect to --tolerance, confirm; writes capacity.json.
    /// (With --baseline: a previous capacity search's results directory, whose supported users
    /// this search is compared with; exit 4 when they fell beyond the tolerance.)
    #[arg(long, conflicts_with = "duration")]
    pub find_capacity: bool,
    /// With --find-capacity: the first level probed (default: --max-users / 16, at least 1).
    #[arg(long, requires = "find_capacity")]
    pub start_users: Option<u64>,
    /// With --find-capacity: the highest level probed (default: --users, or users.count).
    #[arg(long, requires = "find_capacity")]
    pub max_users: Option<u64>,
    /// With --find-capacity: precision of the answer, e.g. 5% (the default).
    #[arg(long, requires = "find_capacity", value_parser = parse_percent)]
    pub tolerance: Option<f64>,
    /// With --find-capacity: how long each level is held before it is judged (default 30s).
    #[arg(long, requires = "find_capacity", value_parser = humantime::parse_duration)]
    pub probe_warmup: Option<Duration>,
    /// With --find-capacity: how long each level is judged over (default 60s; at least two
    /// run.interval).
    #[arg(long, requires = "find_capacity", value_parser = humantime::parse_duration)]
    pub probe_window: Option<Duration>,
    /// With --find-capacity: exit with code 6 unless at least this many users are supported.
    #[arg(long, requires = "find_capacity")]
    pub min_capacity: Option<u64>,
}

/// `5%` or `0.05`.
pub fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    v.ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v < 1.0)
        .ok_or_else(|| format!("{s:?} is not a percentage between 0% and 100% like 5%"))
}

/// A validated capacity search: what to search and how to probe.
#[derive(Clone, Debug)]
pub struct CapacityPlan {
    pub search: SearchOptions,
    pub warmup: Duration,
    pub window: Duration,
    pub min_capacity: Option<u64>,
}

/// Default warm-up and window of a probe.
pub const PROBE_WARMUP: Duration = Duration::from_secs(30);
pub const PROBE_WINDOW: Duration = Duration::from_secs(60);

impl CapacityPlan {
    /// Checks the flags against the workload and shapes the workload for the search: every
    /// agent gets its slice of `--max-users`, the run lasts as long as the longest search, the
    /// first level ramps up over half a warm-up.
    pub fn prepare(opts: &LoadtestOptions, config: &mut WorkloadConfig) -> Result<CapacityPlan> {
        if config.run.thresholds.is_empty() {
            return Err(Error::Usage(
                "--find-capacity needs SLOs to hold: add run.thresholds to the config or pass --threshold, e.g. -t 'delivery.p99<50ms' -t '*.error_rate<1%'".into(),
            ));
        }
        let max_users = opts.max_users.or(opts.users).unwrap_or(config.users.count);
        let search = SearchOptions {
            start_users: opts
                .start_users
                .unwrap_or((max_users / 16).max(1))
                .min(max_users),
            max_users,
            tolerance: opts.tolerance.unwrap_or(0.05),
        };
        if opts.start_users.is_some_and(|s| s > max_users) {
            return Err(Error::Usage(format!(
                "--start-users ({}) is above --max-users ({max_users})",
                opts.start_users.unwrap_or(0)
            )));
        }
        search.validate().map_err(Error::Usage)?;
        let warmup = opts.probe_warmup.unwrap_or(PROBE_WARMUP);
        let window = opts.probe_window.unwrap_or(PROBE_WINDOW);
        if window < config.run.interval * 2 {
            return Err(Error::Usage(format!(
                "--probe-window {} is shorter than two results intervals (run.interval = {}): lengthen it or shorten run.interval",
                humantime::format_duration(window),
                humantime::format_duration(config.run.interval)
            )));
        }
        if warmup.is_zero() {
            return Err(Error::Usage(
                "--probe-warmup must be longer than 0s: users added need time to log in".into(),
            ));
        }
        let per_probe = warmup + window + config.run.interval + Duration::from_secs(15);
        config.users.count = max_users;
        config.users.ramp_up = warmup / 2;
        config.users.duration = (per_probe * (crate::capacity::MAX_PROBES + 1)).min(MAX_DURATION);
        config.validate().map_err(|(key, message)| {
            Error::Usage(format!(
                "{key}: {message} (with --max-users {max_users}); raise dataset.users or lower --max-users"
            ))
        })?;
        Ok(CapacityPlan {
            search,
            warmup,
            window,
            min_capacity: opts.min_capacity,
        })
    }

    /// The exit code and verdict for what the search found.
    pub fn verdict(&self, r: &CapacityReport) -> (i32, String) {
        let found = match r.outcome {
            CapacityOutcome::Supported => r.supported_users,
            // At least the highest level that held, when the search could not finish.
            CapacityOutcome::AgentLimited | CapacityOutcome::Unconverged => r.bracket.good,
            CapacityOutcome::BelowStart => Some(0),
            CapacityOutcome::Interrupted => r.bracket.good,
        };
        let answered = matches!(
            r.outcome,
            CapacityOutcome::Supported | CapacityOutcome::BelowStart
        );
        let text = match (r.outcome, r.supported_users) {
            (CapacityOutcome::Supported, Some(u)) => format!("supports {u} users"),
            (CapacityOutcome::BelowStart, _) => format!(
                "supports fewer than {} users",
                r.bracket.bad.unwrap_or(r.start_users)
            ),
            _ => "no capacity answer".to_string(),
        };
        match self.min_capacity {
            Some(min) if found.is_some_and(|f| f >= min) => {
                (exit::OK, format!("{text}: at least {min} (--min-capacity)"))
            }
            Some(min) if answered => (
                exit::BELOW_CAPACITY,
                format!("{text}: below --min-capacity {min}"),
            ),
            _ if answered => (exit::OK, text),
            _ => (exit::FAILURE, text),
        }
    }
}

/// Applies `--users` / `--duration` and re-validates.
/// Longest `--duration` accepted: a soak test runs for days, not for years (a typo).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn apply_overrides(
    config: &mut WorkloadConfig,
    users: Option<u64>,
    duration: Option<Duration>,
) -> Result<()> {
    if let Some(u) = users {
        config.users.count = u;
    }
    if let Some(d) = duration {
        if d > MAX_DURATION {
            return Err(Error::Usage(format!(
                "--duration {}: longer than the {} a run may last; pass e.g. 30m or 24h",
                humantime::format_duration(d),
                humantime::format_duration(MAX_DURATION)
            )));
        }
        config.users.duration = d;
        if config.users.ramp_up > d {
            // A shorter run keeps a proportionate ramp-up rather than failing validation.
            config.users.ramp_up = d / 4;
        }
    }
    config.validate().map_err(|(key, message)| {
        Error::Usage(format!(
            "{key}: {message} (after applying --users/--duration); choose other values or edit the config"
        ))
    })
}

/// Hash of what `setup` creates: the `[dataset]` section and the admin account.
pub fn dataset_hash(config: &WorkloadConfig) -> String {
    let key = serde_json::json!({
        "dataset": config.dataset,
        "admin": config.target.admin_username,
    });
    state::stable_hash(key.to_string().as_bytes())
}

fn expand_baseline(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(
                ltparse::results_files_in(p)
                    .map_err(|e| Error::Usage(format!("--baseline {}: {e}", p.display())))?,
            );
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::Usage(format!(
                "--baseline {}: no such file or directory; pass a results file or a previous run's results directory",
                p.display()
            )));
        }
    }
    // Read it now: an unreadable baseline found only after the run would cost the verdict.
    if !out.is_empty() {
        out.iter()
            .map(|p| ltparse::Input::file(p))
            .collect::<Result<Vec<_>, _>>()
            .and_then(ltparse::load)
            .map_err(|e| {
                Error::Usage(format!(
                    "--baseline: {e}; pass the results of a previous run (its directory, or its .jsonl files)"
                ))
            })?;
    }
    Ok(out)
}

/// Checks that `--markdown` can be appended to before the run, not after it.
fn check_markdown(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| {
            Error::Usage(format!(
                "--markdown {}: cannot append to it ({e}); pass a writable file",
                path.display()
            ))
        })
}

async fn healthy(p: &dyn Provider, st: &ClusterState) -> bool {
    let Ok(h) = p.status(st).await else {
        return false;
    };
    let count = |r: Role| {
        h.iter()
            .filter(|c| c.component.role == r && c.health == Health::Healthy)
            .count() as u32
    };
    count(Role::Server) == st.app_count && count(Role::Agent) == st.agents
}

pub async fn loadtest(home: &Home, opts: &LoadtestOptions) -> Result<i32> {
    let name = match (&opts.cluster, opts.quick) {
        (Some(n), _) => n.clone(),
        (None, true) => QUICK_CLUSTER.to_string(),
        (None, false) => {
            return Err(Error::Usage(
                "which cluster? pass -c NAME (see `ltops status`), or --quick for a local test with no setup"
                    .into(),
            ))
        }
    };
    state::validate_name(&name)?;
    if opts.skip_setup && opts.force_setup {
        return Err(Error::Usage(
            "--skip-setup and --force-setup contradict each other; pass one".into(),
        ));
    }
    // Validate everything the user typed before touching the cluster.
    for t in &opts.thresholds {
        ltparse::parse_threshold(t).map_err(|e| Error::Usage(format!("--threshold: {e}")))?;
    }
    let (baseline, capacity_baseline) = if opts.find_capacity {
        (Vec::new(), capacity_baseline(&opts.baseline)?)
    } else {
        (expand_baseline(&opts.baseline)?, None)
    };
    if let Some(md) = &opts.markdown {
        check_markdown(md)?;
    }
    let mut config = match (&opts.config, opts.quick) {
        (Some(path), _) => Some(WorkloadConfig::from_file(path)?),
        (None, true) => Some(WorkloadConfig::preset("quick")?),
        (None, false) => None,
    };
    if let Some(c) = config.as_mut() {
        apply_overrides(c, opts.users, opts.duration)?;
    }
    if !opts.quick {
        let st = home.load_checked(&name)?;
        provider::for_type(st.kind(), home)?;
    }

    let _lock = lock(home, &name)?;
    let mut st = if opts.quick && !home.exists(&name) {
        eprintln!("creating local cluster {name:?} (2 agents, SQLite)…");
        create::create_locked(home, &CreateOptions::local(&name, 2, Database::Sqlite, 1)).await?
    } else {
        home.load_checked(&name)?
    };
    let p = provider::for_type(st.kind(), home)?;

    // --quick keeps the cluster on the binaries this ltops would pick, as they are now.
    let wanted = if opts.quick {
        provider::resolve_binaries(opts.server.clone(), opts.agent.clone()).ok()
    } else {
        None
    };
    let switched = wanted.is_some() && st.binaries.is_some() && wanted != st.binaries;
    let rebuilt = opts.quick
        && match (&st.binaries, st.deployed_at_ms) {
            (Some(b), Some(at)) => b.changed_since(at),
            _ => false,
        };
    if switched || rebuilt {
        eprintln!("the server or agent binary changed since the last deploy; redeploying");
    }
    let rebuilt = switched || rebuilt;
    if rebuilt || !healthy(p.as_ref(), &st).await {
        if opts.quick {
            let binaries =
                provider::resolve_or_build_binaries(opts.server.clone(), opts.agent.clone())?;
            eprintln!(
                "deploying {name:?} ({} and {})…",
                binaries.server.display(),
                binaries.agent.display()
            );
            let artifacts = Artifacts::from_binaries(&binaries);
            deploy::deploy_locked(home, &mut st, p.as_ref(), &artifacts).await?;
        } else {
            return Err(Error::Runtime(format!(
                "cluster {name:?} is not running (see `ltops status {name}`); start it with `ltops deploy -c {name}`"
            )));
        }
    }

    let mut config = match config.take() {
        Some(c) => c,
        None => match &st.workload {
            Some(path) => {
                let mut c = WorkloadConfig::from_file(path)?;
                apply_overrides(&mut c, opts.users, opts.duration)?;
                c
            }
            None => {
                return Err(Error::Usage(format!(
                    "no workload config: pass --config FILE (examples/ has some), record one with \
                     `ltops deploy -c {name} --config FILE`, or use --quick"
                )))
            }
        },
    };
    config
        .run
        .thresholds
        .extend(opts.thresholds.iter().cloned());
    let capacity = if opts.find_capacity {
        Some(CapacityPlan::prepare(opts, &mut config)?)
    } else {
        None
    };
    // One set of endpoints (and whatever keeps them reachable) for setup, run and download.
    let endpoints = p.endpoints(&st).await?;
    config.target.url = endpoints.server_url.clone();
    config.target.websocket_url = None;

    let run_id = coordinator::new_run_id();
    let results_dir = home.results_dir(&name).join(&run_id);
    state::create_private_dir(&results_dir)?;
    let config_file = results_dir.join("workload.toml");
    let text = toml::to_string(&config)
        .map_err(|e| Error::Runtime(format!("cannot encode the workload: {e}")))?;
    state::write_atomic(&config_file, text.as_bytes(), 0o600)?;

    // Data set: once per distinct [dataset].
    let hash = dataset_hash(&config);
    let prepared = st.dataset.as_ref().is_some_and(|d| d.hash == hash);
    if opts.skip_setup {
        if !prepared {
            eprintln!("warning: --skip-setup, but this data set was never prepared on {name:?} by ltops; users may fail to log in");
        }
    } else if prepared && !opts.force_setup {
        eprintln!("data set already prepared (use --force-setup to run setup again)");
    } else {
        let Some(agent) = endpoints.agents.first() else {
            return Err(Error::Runtime(format!(
                "cluster {name:?} has no agent; run `ltops deploy -c {name}`"
            )));
        };
        eprintln!(
            "preparing the data set: {} team(s), {} users, through agent-{}…",
            config.dataset.teams, config.dataset.users, agent.index
        );
        // Through the control API, like everything the coordinator does, so every provider
        // prepares data the same way. With several server instances setup goes through one of
        // them; the chat server's PostgreSQL bus propagates the memberships to the others.
        let done = coordinator::prepare_dataset(agent, &config).await?;
        eprintln!(
            "data set ready: {} created, {} already there",
            done.created, done.existing
        );
        st.dataset = Some(DatasetState {
            hash,
            prepared_at_ms: loadtest_contract::now_ms(),
            teams: config.dataset.teams,
            users: config.dataset.users,
        });
        home.save(&st)?;
    }
    crate::interrupt::check()?;

    // Per-agent targets come from the provider; the config's is what the header shows.
    let plan = RunPlan {
        run_id: run_id.clone(),
        config: config.clone(),
        agents: endpoints.agents.clone(),
        results_dir: results_dir.clone(),
        start_delay: Duration::from_secs(2),
        initial_users: capacity.as_ref().map(|c| c.search.start_users),
        server_metrics: endpoints.server_metrics.clone(),
    };
    let mut display: Box<dyn Progress> = match opts.progress {
        ProgressMode::Auto => progress::for_stderr(),
        ProgressMode::Plain => Box::new(progress::Plain::new(Duration::from_secs(5))),
        ProgressMode::None => Box::new(progress::Silent),
    };
    eprintln!(
        "run {run_id}: {} users on {} agent(s) for {} against {}",
        config.users.count,
        plan.agents.len(),
        humantime::format_duration(config.users.duration),
        config.target.url
    );
    let (steer, found) = match &capacity {
        Some(c) => {
            let (steer, found) = capacity_steer(c, &config, &run_id)?;
            (Some(steer), Some(found))
        }
        None => (None, None),
    };
    let report = coordinator::run_steered(&plan, display.as_mut(), steer).await?;

    // Lost agents: report them, salvage what they flushed.
    let mut lost_names = Vec::new();
    for a in report.lost() {
        let dest = coordinator::agent_results_path(&results_dir, a.index);
        let AgentOutcome::Lost { reason } = &a.outcome else {
            continue;
        };
        let found = p.lost_agent(&st, a.index, &run_id, &dest).await;
        let (alive, log_tail, saved) = match found {
            Ok(l) => (l.alive, l.log_tail, l.saved),
            Err(e) => (true, format!("(could not be read: {e})"), false),
        };
        eprintln!(
            "\nagent-{} was lost: {reason}{}\nits last log lines:\n{}\n{}",
            a.index,
            if alive { "" } else { " (its process is gone)" },
            crate::process::indent(&log_tail),
            if saved {
                format!(
                    "the partial results it had flushed are in {}",
                    dest.display()
                )
            } else {
                "nothing it measured could be saved".to_string()
            }
        );
        lost_names.push(format!("agent-{}", a.index));
    }

    if let (Some(plan), Some(found)) = (&capacity, found) {
        let code = match found.await {
            Ok(r) => finish_capacity(
                plan,
                &r,
                capacity_baseline.as_ref(),
                &results_dir,
                &lost_names,
                report.interrupted,
                opts,
            )?,
            Err(_) => {
                eprintln!("the capacity search did not report (the run stopped before it began)");
                (exit::FAILURE, "no capacity answer".to_string())
            }
        };
        return save_last_run(home, &mut st, run_id, results_dir, code, endpoints);
    }

    // Summary through ltparse.
    let mut lt = ltparse::Options {
        thresholds: config.run.thresholds.clone(),
        baseline: baseline.clone(),
        aggregate: true,
        ..Default::default()
    };
    let (code, verdict) = match ltparse::results_files_in(&results_dir) {
        Ok(files) => {
            lt.files = files;
            match ltparse::run(&lt) {
                Ok(out) => {
                    for w in &out.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}", out.rendered.trim_end());
                    if let Some(md) = &opts.markdown {
                        append_markdown(md, &out.report)?;
                    }
                    let verdict = match out.outcome {
                        ltparse::Outcome::Pass => "pass",
                        ltparse::Outcome::ThresholdsFailed => "thresholds failed",
                        ltparse::Outcome::Regression => "regression",
                        ltparse::Outcome::ThresholdsFailedAndRegression => {
                            "thresholds failed and regression"
                        }
                    };
                    (out.outcome.exit_code(), verdict.to_string())
                }
                Err(e) => {
                    eprintln!("the results could not be summarized: {e}");
                    (exit::FAILURE, "results unreadable".to_string())
                }
            }
        }
        Err(e) => {
            eprintln!("no results to summarize: {e}");
            (exit::FAILURE, "no results".to_string())
        }
    };
    let (code, verdict) = if !lost_names.is_empty() {
        (exit::FAILURE, format!("{} lost", lost_names.join(", ")))
    } else if report.interrupted {
        (exit::INTERRUPTED, format!("interrupted ({verdict} so far)"))
    } else {
        (code, verdict)
    };

    let files = ltparse::results_files_in(&results_dir).unwrap_or_default();
    println!();
    println!("results:  {}", results_dir.display());
    println!("verdict:  {verdict} (exit code {code})");
    println!(
        "compare a later run with this one:\n  ltops loadtest -c {name} --baseline {}\n  ltparse results --file NEW.jsonl --baseline {}",
        results_dir.display(),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" --baseline ")
    );

    save_last_run(
        home,
        &mut st,
        run_id,
        results_dir,
        (code, verdict),
        endpoints,
    )
}

fn save_last_run<T>(
    home: &Home,
    st: &mut ClusterState,
    run_id: String,
    results_dir: PathBuf,
    (code, verdict): (i32, String),
    endpoints: T,
) -> Result<i32> {
    st.last_run = Some(LastRun {
        run_id,
        finished_at_ms: loadtest_contract::now_ms(),
        verdict,
        exit_code: code,
        results_dir,
    });
    drop(endpoints);
    home.save(st)?;
    Ok(code)
}

/// The steering task of a capacity search, and where its report arrives.
fn capacity_steer(
    plan: &CapacityPlan,
    config: &WorkloadConfig,
    run_id: &str,
) -> Result<(Steer, tokio::sync::oneshot::Receiver<CapacityReport>)> {
    let slos = config
        .run
        .thresholds
        .iter()
        .map(|t| {
            ltparse::parse_threshold(t).map_err(|e| Error::Usage(format!("run.thresholds: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let probe = cap::drive::ProbeOptions {
        warmup: plan.warmup,
        window: plan.window,
        interval: config.run.interval,
        slos,
    };
    let search = plan.search.clone();
    let run_id = run_id.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let steer: Steer = Box::new(move |fleet| {
        Box::pin(async move {
            let r = cap::drive::search(fleet, run_id, search, probe).await;
            let _ = tx.send(r);
        })
    });
    Ok((steer, rx))
}

/// The capacity report of `--baseline` with `--find-capacity`: one previous search.
fn capacity_baseline(paths: &[PathBuf]) -> Result<Option<CapacityReport>> {
    match paths {
        [] => Ok(None),
        [p] => ltparse::load_capacity(p).map(Some).map_err(|e| {
            Error::Usage(format!(
                "--baseline: {e}; with --find-capacity pass a previous capacity search's results directory (or its {CAPACITY_FILE})"
            ))
        }),
        _ => Err(Error::Usage(
            "--find-capacity compares with one previous search: pass --baseline once".into(),
        )),
    }
}

/// Writes `capacity.json`, prints the capacity report, and decides the exit code.
fn finish_capacity(
    plan: &CapacityPlan,
    r: &CapacityReport,
    baseline: Option<&CapacityReport>,
    results_dir: &Path,
    lost: &[String],
    interrupted: bool,
    opts: &LoadtestOptions,
) -> Result<(i32, String)> {
    let path = results_dir.join(CAPACITY_FILE);
    let json = serde_json::to_vec_pretty(r)
        .map_err(|e| Error::Runtime(format!("cannot encode the capacity report: {e}")))?;
    state::write_atomic(&path, &json, 0o644)?;
    let cmp = baseline.map(|b| ltparse::compare_capacity(b, r));
    let text = ltparse::render_capacity(r, cmp.as_ref(), ltparse::Display::Text)
        .map_err(|e| Error::Runtime(format!("cannot render the capacity report: {e}")))?;
    println!("{}", text.trim_end());
    if let Some(md) = &opts.markdown {
        use std::io::Write;
        let out = ltparse::render_capacity(r, cmp.as_ref(), ltparse::Display::Markdown)
            .map_err(|e| Error::Runtime(format!("cannot render the capacity report: {e}")))?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(md)
            .and_then(|mut f| f.write_all(out.as_bytes()))
            .map_err(|e| Error::io(format!("writing {}", md.display()), e))?;
    }
    let (code, verdict) = if !lost.is_empty() {
        (exit::FAILURE, format!("{} lost", lost.join(", ")))
    } else if interrupted {
        (exit::INTERRUPTED, "interrupted".to_string())
    } else {
        match (plan.verdict(r), &cmp) {
            // Below --min-capacity says more than a regression.
            ((exit::OK, v), Some(c)) if c.is_regression() => (
                exit::REGRESSION,
                format!("{v}; regression against the baseline"),
            ),
            (v, _) => v,
        }
    };
    println!();
    println!("results:  {}", results_dir.display());
    println!("verdict:  {verdict} (exit code {code})");
    println!(
        "the whole run, interval by interval:
  ltparse results --verbose --file {}/agent-*.jsonl
compare a later search with this one:
  ltparse capacity --file NEW_RUN_DIR --baseline {}",
        results_dir.display(),
        results_dir.display()
    );
    Ok((code, verdict))
}

fn append_markdown(path: &Path, report: &ltparse::Report) -> Result<()> {
    use std::io::Write;
    let md = ltparse::render(report, ltparse::Display::Markdown, &Default::default())
        .map_err(|e| Error::Runtime(format!("cannot render the Markdown report: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.write_all(md.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overrides_are_revalidated() {
        let mut c = WorkloadConfig::preset("quick").unwrap();
        apply_overrides(&mut c, Some(20), Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.users.count, 20);
        assert!(c.users.ramp_up <= c.users.duration);
        let mut c = WorkloadConfig::preset("quick").unwrap();
        let e = apply_overrides(&mut c, Some(1_000_000), None).unwrap_err();
        assert!(e.to_string().contains("users.count"), "{e}");
        assert_eq!(e.exit_code(), exit::USAGE);
    }

    #[test]
    fn inputs_that_would_only_fail_after_the_run_are_refused_before_it() {
        // A duration typo of years is refused, not run.
        let mut c = WorkloadConfig::preset("quick").unwrap();
        let e = apply_overrides(&mut c, None, Some(Duration::from_secs(99_999_999_999_999)))
            .unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("--duration"), "{e}");
        // A baseline that exists but is not results: named with its line, exit 2.
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("old.jsonl");
        std::fs::write(&garbage, b"\xff\xfe not results\n").unwrap();
        let e = expand_baseline(std::slice::from_ref(&garbage)).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("old.jsonl:1"), "{e}");
        // A --markdown file that cannot be written.
        let e = check_markdown(&dir.path().join("no/such/dir/report.md")).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("--markdown"), "{e}");
        assert!(check_markdown(&dir.path().join("report.md")).is_ok());
    }

    #[test]
    fn dataset_hash_ignores_the_run_shape() {
        let a = WorkloadConfig::preset("quick").unwrap();
        let mut b = a.clone();
        b.users.count = 3;
        b.target.url = "http://127.0.0.1:1".into();
        assert_eq!(dataset_hash(&a), dataset_hash(&b));
        b.dataset.teams = 2;
        assert_ne!(dataset_hash(&a), dataset_hash(&b));
    }

    #[test]
    fn the_effective_config_survives_toml() {
        let mut c = WorkloadConfig::preset("quick").unwrap();
        c.run.thresholds.push("create_post.p99<200ms".into());
        let text = toml::to_string(&c).unwrap();
        let back = WorkloadConfig::from_toml_str(&text, "x").unwrap();
        assert_eq!(back, c);
    }
}
