//! `loadtest-agent`: the command line. Parses flags, loads and validates the workload, and hands
//! over to the library; errors become an exit code and one readable message.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use loadtest_agent::control::{self, ServeConfig};
use loadtest_agent::measure::Recorder;
use loadtest_agent::{progress, results, run_setup, start_run, RunPlan};
use loadtest_contract::results::StopReason;
use loadtest_contract::WorkloadConfig;

const EXIT_HELP: &str =
    "Exit status: 0 = success, 1 = the run or setup failed, 2 = bad configuration or usage.";

/// Simulated chat users against a Mattermost-compatible server: thousands per process, honest
/// latency (from the intended start), end-to-end delivery measurement.
#[derive(Parser)]
#[command(version, after_help = EXIT_HELP)]
struct Cli {
    /// Load threads: simulated users are dealt over this many single-threaded runtimes (1 to 256;
    /// default one per core).
    #[arg(long, global = true, env = "LOADTEST_AGENT_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a workload standalone: set up the data set, run, write results, print a summary.
    #[command(after_help = EXIT_HELP)]
    Run {
        /// Workload file (TOML; see examples/agent-quick.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Results file (JSON Lines); default results/<run id>.jsonl.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Override users.count.
        #[arg(long)]
        users: Option<u64>,
        /// Override users.duration, e.g. 30s or 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Do not check and create the data set first (it must exist).
        #[arg(long)]
        skip_setup: bool,
        /// Agent id written in the results.
        #[arg(long, default_value = "agent-0")]
        agent_id: String,
        /// Run id written in the results; default run-<unix seconds>.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Create the workload's data set (teams, users, channels, memberships, posts), idempotently.
    #[command(after_help = EXIT_HELP)]
    Setup {
        #[arg(long, short)]
        config: PathBuf,
        /// Requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Serve the control API that ltops drives (every /v1 request needs the token).
    #[command(after_help = EXIT_HELP)]
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8070")]
        listen: String,
        /// File holding the shared bearer token (at least 8 characters).
        #[arg(long)]
        token_file: PathBuf,
        /// Directory for results files ({run_id}-{agent_id}.jsonl).
        #[arg(long, default_value = "agent-results")]
        results_dir: PathBuf,
        /// Agent id reported by /v1/clock.
        #[arg(long, default_value = "agent")]
        agent_id: String,
        /// Also serve /metrics and /healthz (no token) on this address, for a Prometheus on
        /// another host; the control API stays on --listen.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

/// A failure that is the user's to fix (exit 2) rather than the run's (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn load(
    path: &std::path::Path,
    users: Option<u64>,
    duration: Option<Duration>,
) -> Result<WorkloadConfig, UsageError> {
    let mut cfg = WorkloadConfig::from_file(path).map_err(|e| UsageError(e.to_string()))?;
    if let Some(u) = users {
        cfg.users.count = u;
    }
    if let Some(d) = duration {
        cfg.users.duration = d;
        cfg.users.ramp_up = cfg.users.ramp_up.min(d);
    }
    cfg.validate().map_err(|(k, m)| {
        UsageError(format!(
            "{}: {k}: {m} (after command-line overrides)",
            path.display()
        ))
    })?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(n) = cli.threads {
        if let Err(e) = loadtest_agent::shards::configure(n) {
            eprintln!("error: --threads: {e}");
            return ExitCode::from(2);
        }
    }
    // The users run on the load runtimes (`shards`); this one runs the engine, the results and
    // the setup, none of which needs more than a thread.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Setup {
            config,
            concurrency,
        } => {
            let cfg = load(&config, None, None)?;
            let report = run_setup(&cfg, concurrency).await.context("setup failed")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            config,
            results: results_path,
            users,
            duration,
            skip_setup,
            agent_id,
            run_id,
        } => {
            let cfg = load(&config, users, duration)?;
            if !skip_setup {
                let report = run_setup(&cfg, 32)
                    .await
                    .context("preparing the data set failed (use --skip-setup if it exists)")?;
                tracing::info!(
                    "data set ready: {} created, {} existing",
                    report.created(),
                    report.existing
                );
            }
            let run_id =
                run_id.unwrap_or_else(|| format!("run-{}", loadtest_contract::now_ms() / 1000));
            let results_path =
                results_path.unwrap_or_else(|| PathBuf::from(format!("results/{run_id}.jsonl")));
            let recorder = Arc::new(Recorder::new(&agent_id));
            let plan = RunPlan {
                run_id,
                agent_id,
                total_users: cfg.users.count,
                agents: 1,
                clock_offset_ms: 0,
                config: cfg,
                results_path: results_path.clone(),
                initial_users: None,
            };
            let handle = start_run(plan, None, recorder).await?;
            let done = tokio_util::sync::CancellationToken::new();
            let shown = tokio::spawn(progress::show(handle.shared.clone(), done.clone()));
            let shared = handle.shared.clone();
            let stopper = {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        tracing::warn!("interrupted: stopping users and writing the summary (ctrl-c again to abort)");
                        shared_stop(&shared);
                        if tokio::signal::ctrl_c().await.is_ok() {
                            std::process::exit(1);
                        }
                    }
                })
            };
            let summary = handle.wait().await;
            done.cancel();
            let _ = shown.await;
            stopper.abort();
            let summary = summary?;
            println!("{}", results::describe(&summary));
            println!("results: {}", results_path.display());
            Ok(if summary.stop_reason == StopReason::Failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Serve {
            listen,
            token_file,
            results_dir,
            agent_id,
            metrics_listen,
        } => {
            let token = control::read_token(&token_file)
                .map_err(|e| UsageError(format!("--token-file {}: {e}", token_file.display())))?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| UsageError(format!("--listen {listen}: {e}")))?;
            tracing::info!("control API on http://{}", listener.local_addr()?);
            let metrics = match &metrics_listen {
                Some(addr) => {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| UsageError(format!("--metrics-listen {addr}: {e}")))?;
                    tracing::info!("metrics on http://{}/metrics", l.local_addr()?);
                    Some(l)
                }
                None => None,
            };
            let cfg = ServeConfig {
                token,
                agent_id,
                results_dir,
            };
            control::serve(listener, metrics, cfg, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn shared_stop(shared: &loadtest_agent::run::RunShared) {
    shared.request_stop();
}
