//! `chat-server`: parses flags, environment and config file into a [`Config`], binds the
//! listeners, and runs the server until ctrl-c or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chat_server::{Config, Database};
use clap::Parser;
use serde::Deserialize;

/// mimalloc rather than glibc's malloc: at 10,000 WebSockets over two instances it holds a
/// quarter less memory per connection at the same CPU (BENCHMARKS.md, "Release memory").
/// (The agent keeps glibc's: there mimalloc held more.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AFTER_HELP: &str = "\
Every flag can also be set with an environment variable CHAT_SERVER_<FLAG> (e.g.
CHAT_SERVER_LISTEN) or as a key of the TOML file given by --config (keys are the flag names,
e.g. `metrics-listen = \"127.0.0.1:9000\"`). Precedence: flag > environment > file > default.

Passwords are hashed with Argon2id; the default cost (4096 KiB, 1 iteration, 1 lane) keeps a
load test's logins cheap. Raise --argon2-memory-kib/--argon2-iterations for internet-facing use.

Exit status: 0 after a clean shutdown (ctrl-c or SIGTERM), 2 for a bad flag or configuration,
1 for a runtime failure (cannot bind, database unreachable, ...).";

/// Reference chat server: a Mattermost API v4 + WebSocket subset on SQLite or PostgreSQL.
#[derive(Parser, Debug, Default)]
#[command(name = "chat-server", version, after_help = AFTER_HELP)]
struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, env = "CHAT_SERVER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// API address [default: 127.0.0.1:8065]
    #[arg(long, env = "CHAT_SERVER_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Prometheus metrics address, or `off` [default: 127.0.0.1:8067]
    #[arg(long, env = "CHAT_SERVER_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Directory of the SQLite database (WAL mode) [default: ./chat-data]
    #[arg(long, env = "CHAT_SERVER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use PostgreSQL instead of SQLite: postgres://user:pass@host:port/db
    #[arg(
        long,
        env = "CHAT_SERVER_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Database connection pool size [default: 8]
    #[arg(long, env = "CHAT_SERVER_DB_MAX_CONNECTIONS", value_name = "N")]
    db_max_connections: Option<u32>,
    /// Longest post message in characters; longer is 413 [default: 16383]
    #[arg(long, env = "CHAT_SERVER_MAX_POST_CHARS", value_name = "N")]
    max_post_chars: Option<usize>,
    /// Largest request body in bytes; larger is 413 [default: 1048576]
    #[arg(long, env = "CHAT_SERVER_MAX_BODY_BYTES", value_name = "N")]
    max_body_bytes: Option<usize>,
    /// Largest incoming WebSocket message in bytes [default: 65536]
    #[arg(long, env = "CHAT_SERVER_MAX_WS_FRAME_BYTES", value_name = "N")]
    max_ws_frame_bytes: Option<usize>,
    /// WebSocket connections accepted at once; more are refused with 503 [default: no limit]
    #[arg(long, env = "CHAT_SERVER_MAX_WEBSOCKETS", value_name = "N")]
    max_websockets: Option<usize>,
    /// Per-connection send queue (events); typing/status dropped at half, closed when full [default: 256]
    #[arg(long, env = "CHAT_SERVER_SEND_QUEUE", value_name = "N")]
    send_queue: Option<usize>,
    /// Events kept per connection for resume [default: 128]
    #[arg(long, env = "CHAT_SERVER_REPLAY_BUFFER", value_name = "N")]
    replay_buffer: Option<usize>,
    /// How long a disconnected connection can be resumed, e.g. 60s [default: 60s]
    #[arg(long, env = "CHAT_SERVER_REPLAY_KEEP", value_name = "DURATION")]
    replay_keep: Option<String>,
    /// Argon2id memory cost in KiB [default: 4096]
    #[arg(long, env = "CHAT_SERVER_ARGON2_MEMORY_KIB", value_name = "KIB")]
    argon2_memory_kib: Option<u32>,
    /// Argon2id iterations [default: 1]
    #[arg(long, env = "CHAT_SERVER_ARGON2_ITERATIONS", value_name = "N")]
    argon2_iterations: Option<u32>,
    /// Argon2id parallelism [default: 1]
    #[arg(long, env = "CHAT_SERVER_ARGON2_PARALLELISM", value_name = "N")]
    argon2_parallelism: Option<u32>,
    /// How long shutdown waits for connections to drain, e.g. 10s [default: 10s]
    #[arg(long, env = "CHAT_SERVER_SHUTDOWN_GRACE", value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// Log filter (tracing EnvFilter syntax) [default: info]
    #[arg(long, env = "CHAT_SERVER_LOG", value_name = "FILTER")]
    log: Option<String>,
}

/// The `--config` file: the same settings, keyed by flag name.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    db_max_connections: Option<u32>,
    max_post_chars: Option<usize>,
    max_body_bytes: Option<usize>,
    max_ws_frame_bytes: Option<usize>,
    max_websockets: Option<usize>,
    send_queue: Option<usize>,
    replay_buffer: Option<usize>,
    replay_keep: Option<String>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    argon2_parallelism: Option<u32>,
    shutdown_grace: Option<String>,
    log: Option<String>,
}

/// A configuration problem: exit status 2.
#[derive(Debug)]
struct Usage(String);

fn load_file(path: &Path) -> Result<FileConfig, Usage> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        Usage(format!(
            "config file {}: {e}\n(keys are the flag names, e.g. listen = \"127.0.0.1:8065\")",
            path.display()
        ))
    })
}

fn addr(key: &str, v: &str) -> Result<SocketAddr, Usage> {
    v.parse().map_err(|_| {
        Usage(format!(
            "`{key}`: {v:?} is not an address; use HOST:PORT, e.g. 127.0.0.1:8065"
        ))
    })
}

fn duration(key: &str, v: &str) -> Result<Duration, Usage> {
    humantime::parse_duration(v).map_err(|e| {
        Usage(format!(
            "`{key}`: {v:?} is not a duration ({e}); use e.g. 30s or 2m"
        ))
    })
}

fn build(args: Args) -> Result<(Config, String), Usage> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let mut c = Config::default();
    if let Some(v) = args.listen.or(file.listen) {
        c.listen = addr("listen", &v)?;
    }
    if let Some(v) = args.metrics_listen.or(file.metrics_listen) {
        c.metrics_listen = if v.eq_ignore_ascii_case("off") || v.is_empty() {
            None
        } else {
            Some(addr("metrics-listen", &v)?)
        };
    }
    let data_dir = args.data_dir.or(file.data_dir);
    match args
        .database_url
        .or(file.database_url)
        .filter(|u| !u.is_empty())
    {
        Some(url) => c.database = Database::Postgres { url },
        None => {
            if let Some(d) = data_dir {
                c.database = Database::Sqlite { data_dir: d };
            }
        }
    }
    if let Some(v) = args.db_max_connections.or(file.db_max_connections) {
        c.db_max_connections = v;
    }
    let l = &mut c.limits;
    if let Some(v) = args.max_post_chars.or(file.max_post_chars) {
        l.max_post_chars = v;
    }
    if let Some(v) = args.max_body_bytes.or(file.max_body_bytes) {
        l.max_body_bytes = v;
    }
    if let Some(v) = args.max_ws_frame_bytes.or(file.max_ws_frame_bytes) {
        l.max_ws_frame_bytes = v;
    }
    if let Some(v) = args.max_websockets.or(file.max_websockets) {
        l.max_websockets = Some(v);
    }
    if let Some(v) = args.send_queue.or(file.send_queue) {
        l.send_queue = v;
    }
    if let Some(v) = args.replay_buffer.or(file.replay_buffer) {
        l.replay_buffer = v;
    }
    if let Some(v) = args.replay_keep.or(file.replay_keep) {
        l.replay_keep = duration("replay-keep", &v)?;
    }
    let p = &mut c.password_cost;
    if let Some(v) = args.argon2_memory_kib.or(file.argon2_memory_kib) {
        p.memory_kib = v;
    }
    if let Some(v) = args.argon2_iterations.or(file.argon2_iterations) {
        p.iterations = v;
    }
    if let Some(v) = args.argon2_parallelism.or(file.argon2_parallelism) {
        p.parallelism = v;
    }
    if let Some(v) = args.shutdown_grace.or(file.shutdown_grace) {
        c.shutdown_grace = duration("shutdown-grace", &v)?;
    }
    c.validate().map_err(|e| {
        Usage(format!(
            "{e} (set it with --{} or CHAT_SERVER_{})",
            e.key.split('/').next().unwrap_or(e.key),
            e.key
                .split('/')
                .next()
                .unwrap_or(e.key)
                .replace('-', "_")
                .to_uppercase()
        ))
    })?;
    let log = args.log.or(file.log).unwrap_or_else(|| "info".into());
    Ok((c, log))
}

/// Checks what can be checked before binding: a PostgreSQL URL that cannot be parsed, or a data
/// directory that cannot be created or written, is a configuration mistake (exit 2), not a
/// runtime failure. Messages name the setting and never show the password.
fn preflight(c: &Config) -> Result<(), Usage> {
    match &c.database {
        Database::Postgres { url } => {
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url).map_err(
                |e| {
                    Usage(format!(
                        "`database-url` {}: {e}; use postgres://USER:PASSWORD@HOST:PORT/DB \
                         (percent-encode special characters in the password)",
                        chat_server::config::redact_url(url)
                    ))
                },
            )?;
        }
        Database::Sqlite { data_dir } => {
            let unusable = |e: std::io::Error| {
                Usage(format!(
                    "`data-dir` {}: {e}; choose a writable directory with --data-dir",
                    data_dir.display()
                ))
            };
            std::fs::create_dir_all(data_dir).map_err(unusable)?;
            // SQLite creates the file on open; fail here, naming the directory, rather than with
            // SQLite's "unable to open database file" later.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data_dir.join(chat_server::store::SQLITE_FILE))
                .map_err(unusable)?;
        }
    }
    Ok(())
}

/// The message for a failure of [`serve`]: the server's own errors already say everything in
/// their top-level message (their sources would only repeat it), and a database failure says
/// which database.
fn describe_failure(e: &anyhow::Error, database: &Database) -> String {
    match e.downcast_ref::<chat_server::Error>() {
        Some(chat_server::Error::Store(inner)) => {
            format!("database {}: {inner}", database.describe())
        }
        Some(other) => other.to_string(),
        None => format!("{e:#}"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let metrics = match config.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let api_addr = listener.local_addr()?;
    let metrics_addr = match &metrics {
        Some(m) => format!("http://{}/metrics", m.local_addr()?),
        None => "off".into(),
    };
    tracing::info!(
        "chat-server {} listening on http://{api_addr} (API /api/v4, WebSocket /api/v4/websocket), metrics {metrics_addr}, database {}",
        env!("CARGO_PKG_VERSION"),
        config.database.describe()
    );
    chat_server::run(listener, metrics, config, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, log) = match build(args).and_then(|(c, log)| preflight(&c).map(|()| (c, log))) {
        Ok(v) => v,
        Err(Usage(msg)) => {
            eprintln!("chat-server: {msg}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-server: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let database = config.database.clone();
    match rt.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = describe_failure(&e, &database);
            tracing::error!("{msg}");
            eprintln!("chat-server: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { return };
        let file = dir.path().join("c.toml");
        let written = std::fs::write(
            &file,
            "listen = \"127.0.0.1:9001\"\nsend-queue = 64\nmetrics-listen = \"off\"\n",
        );
        assert!(written.is_ok());
        let args = Args {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:9002".into()),
            ..Args::default()
        };
        let (c, _) = build(args).map_err(|u| u.0).expect("valid");
        assert_eq!(c.listen.port(), 9002);
        assert_eq!(c.limits.send_queue, 64);
        assert_eq!(c.metrics_listen, None);
        let args = Args {
            config: Some(file),
            database_url: Some("postgres://u:pw@h/db".into()),
            ..Args::default()
        };
        let (c, _) = build(args).map_err(|u| u.0).expect("valid");
        assert_eq!(c.database.describe(), "postgres postgres://u:***@h/db");
    }
}
