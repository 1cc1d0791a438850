//! Server configuration: the validated [`Config`] that [`crate::run`] consumes.
//!
//! Parsing flags, environment variables and files is the binary's job; this module only holds the
//! typed result, its defaults, and the checks that turn a nonsensical combination into a
//! [`ConfigError`] naming the key at fault instead of a surprise at run time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (`chat.db`) inside this directory, created if missing.
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL database, `postgres://user:pass@host:port/db`.
    Postgres { url: String },
}

impl Database {
    /// A description safe for logs: the PostgreSQL password is replaced by `***`.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite { data_dir } => {
                format!(
                    "sqlite {}",
                    data_dir.join(crate::store::SQLITE_FILE).display()
                )
            }
            Database::Postgres { url } => format!("postgres {}", redact_url(url)),
        }
    }
}

/// Replaces the password part of `scheme://user:password@host/...` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    // The last `@` before the query ends the user info. Not the first `/`: a password someone
    // typed without percent-encoding may contain `/`, and must not leak because of it.
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..query].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// Resource limits; each is a flag of the binary.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest accepted post message, in characters (Mattermost: 16383). Longer → 413.
    pub max_post_chars: usize,
    /// Largest accepted request body in bytes. Larger → 413.
    pub max_body_bytes: usize,
    /// Largest accepted incoming WebSocket frame/message in bytes.
    pub max_ws_frame_bytes: usize,
    /// Events queued per WebSocket connection before it is closed as too slow (Mattermost: 256).
    /// `typing` and `status_change` are dropped once it is half full.
    pub send_queue: usize,
    /// Events kept per connection for resuming with `connection_id` + `sequence_number`.
    pub replay_buffer: usize,
    /// How long a disconnected connection's replay buffer is kept for a resume.
    pub replay_keep: Duration,
    /// Per-connection read buffer. Clients send small frames (the authentication challenge,
    /// typing); a larger frame grows the buffer as it arrives. 4 KiB was 4 KiB of every one of
    /// 30,000 connections (heap profile in BENCHMARKS.md).
    pub ws_read_buffer_bytes: usize,
    /// Per-connection write buffer before a flush.
    pub ws_write_buffer_bytes: usize,
    /// WebSocket connections this instance accepts at once; more get 503 (none: no limit).
    /// Protects an instance sized for a known number of users, as a proxy's connection
    /// limit would.
    pub max_websockets: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_post_chars: 16383,
            max_body_bytes: 1024 * 1024,
            max_ws_frame_bytes: 64 * 1024,
            send_queue: 256,
            replay_buffer: 128,
            replay_keep: Duration::from_secs(60),
            ws_read_buffer_bytes: 512,
            ws_write_buffer_bytes: 8192,
            max_websockets: None,
        }
    }
}

/// Argon2id cost. The default (4 MiB, 1 pass, 1 lane) takes a few milliseconds so a load test's
/// thousands of logins do not dominate the server's CPU, while still being memory-hard: every
/// guess costs an attacker 4 MiB. Raise it for a deployment that faces the internet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        PasswordCost {
            memory_kib: 4096,
            iterations: 1,
            parallelism: 1,
        }
    }
}

/// Everything [`crate::run`] needs besides its listeners.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the binary binds for the API (informational for `run`, which gets a listener).
    pub listen: SocketAddr,
    /// Address for Prometheus metrics; `None` disables the metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    pub database: Database,
    /// Connections in the database pool.
    pub db_max_connections: u32,
    pub limits: Limits,
    pub password_cost: PasswordCost,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// How long shutdown waits for WebSockets and requests to finish.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8065)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8067))),
            database: Database::Sqlite {
                data_dir: PathBuf::from("./chat-data"),
            },
            db_max_connections: 8,
            limits: Limits::default(),
            password_cost: PasswordCost::default(),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Largest accepted Argon2id memory cost (1 GiB): every concurrent login allocates it.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;
/// Largest accepted Argon2id parallelism (lanes).
pub const MAX_ARGON2_PARALLELISM: u32 = 64;

/// A configuration value that cannot work, with the key that holds it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration `{key}`: {problem}")]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: String,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl Config {
    /// A configuration for tests and embedding: SQLite in `data_dir`, everything else default.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            database: Database::Sqlite {
                data_dir: data_dir.into(),
            },
            ..Config::default()
        }
    }

    /// Checks every value; call before [`crate::run`] (which calls it too).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Database::Postgres { url } = &self.database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(bad(
                    "database-url",
                    "must start with postgres:// (leave it unset to use SQLite in --data-dir)",
                ));
            }
        }
        if let Database::Sqlite { data_dir } = &self.database {
            if data_dir.as_os_str().is_empty() {
                return Err(bad("data-dir", "must not be empty"));
            }
        }
        let l = &self.limits;
        if l.max_post_chars == 0 {
            return Err(bad("max-post-chars", "must be at least 1"));
        }
        if l.max_body_bytes < 1024 {
            return Err(bad("max-body-bytes", "must be at least 1024"));
        }
        if l.max_ws_frame_bytes < 1024 {
            return Err(bad("max-ws-frame-bytes", "must be at least 1024"));
        }
        if l.send_queue < 4 {
            return Err(bad("send-queue", "must be at least 4"));
        }
        if l.replay_buffer == 0 {
            // Replays larger than the send queue fall back to a fresh hello, so only 0 is invalid.
            return Err(bad("replay-buffer", "must be at least 1"));
        }
        if self.db_max_connections == 0 {
            return Err(bad("db-max-connections", "must be at least 1"));
        }
        if self.limits.replay_keep.is_zero() {
            return Err(bad("replay-keep", "must be longer than 0, e.g. 60s"));
        }
        let c = &self.password_cost;
        if c.iterations == 0
            || c.parallelism == 0
            || c.parallelism > MAX_ARGON2_PARALLELISM
            || c.memory_kib < 8 * c.parallelism
            || c.memory_kib > MAX_ARGON2_MEMORY_KIB
        {
            return Err(bad(
                "argon2-memory-kib/argon2-iterations/argon2-parallelism",
                format!(
                    "need iterations >= 1, parallelism 1..={MAX_ARGON2_PARALLELISM} and memory \
                     from 8 KiB per lane up to {MAX_ARGON2_MEMORY_KIB} KiB"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/chat"),
            "postgres://bob:***@db:5432/chat"
        );
        assert_eq!(
            redact_url("postgres://bob@db/chat"),
            "postgres://bob@db/chat"
        );
        assert_eq!(redact_url("postgres://db/chat"), "postgres://db/chat");
        assert_eq!(
            redact_url("postgres://db:5432/chat?sslmode=disable"),
            "postgres://db:5432/chat?sslmode=disable"
        );
    }

    #[test]
    fn redacts_passwords_with_unencoded_slash_or_at() {
        assert_eq!(
            redact_url("postgres://bob:s3c/ret@db:5432/chat"),
            "postgres://bob:***@db:5432/chat"
        );
        assert_eq!(
            redact_url("postgres://bob:a@b/c@db/chat?x=y@z"),
            "postgres://bob:***@db/chat?x=y@z"
        );
    }

    #[test]
    fn default_is_valid_and_bad_values_name_their_key() {
        assert!(Config::default().validate().is_ok());
        let mut c = Config::default();
        c.limits.replay_buffer = 0;
        let e = c.validate().err().map(|e| e.key);
        assert_eq!(e, Some("replay-buffer"));
        let c = Config {
            database: Database::Postgres {
                url: "mysql://x".into(),
            },
            ..Config::default()
        };
        assert_eq!(c.validate().err().map(|e| e.key), Some("database-url"));
    }

    #[test]
    fn extreme_values_are_config_errors_not_panics() {
        let argon = "argon2-memory-kib/argon2-iterations/argon2-parallelism";
        let mut c = Config::default();
        c.password_cost.parallelism = u32::MAX;
        assert_eq!(c.validate().err().map(|e| e.key), Some(argon));
        let mut c = Config::default();
        c.password_cost.memory_kib = u32::MAX;
        assert_eq!(c.validate().err().map(|e| e.key), Some(argon));
        let mut c = Config::default();
        c.limits.replay_keep = Duration::ZERO;
        assert_eq!(c.validate().err().map(|e| e.key), Some("replay-keep"));
    }
}
