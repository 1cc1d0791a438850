//! The library's error type and the process exit codes it maps to.
//!
//! Every error says what went wrong *and what to do next*: the message is printed as is by the
//! binary, so variants carry the hint in their text. [`Error::exit_code`] maps each variant to
//! the documented exit codes in [`exit`].

use std::path::PathBuf;

/// Process exit codes of `ltops` (documented in `ltops --help`).
pub mod exit {
    /// Success; for `loadtest`, the run passed its thresholds and baseline checks.
    pub const OK: i32 = 0;
    /// A runtime failure: a process that would not start, an agent that died, I/O.
    pub const FAILURE: i32 = 1;
    /// Bad input: unknown cluster, missing binary, invalid config.
    pub const USAGE: i32 = 2;
    /// `loadtest`: a threshold failed (same code as `ltparse`).
    pub const THRESHOLDS: i32 = 3;
    /// `loadtest`: a regression against the baseline (same code as `ltparse`).
    pub const REGRESSION: i32 = 4;
    /// `loadtest`: thresholds failed *and* a regression (same code as `ltparse`).
    pub const THRESHOLDS_AND_REGRESSION: i32 = 5;
    /// `loadtest --find-capacity --min-capacity N`: the search answered, below N users.
    pub const BELOW_CAPACITY: i32 = 6;
    /// Another `ltops` command holds the cluster's lock (EX_TEMPFAIL: try again later).
    pub const LOCKED: i32 = 75;
    /// Interrupted by ctrl-c (partial results are kept).
    pub const INTERRUPTED: i32 = 130;
}

/// Everything that can go wrong in `ltops`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input that the user can fix by changing the command line.
    #[error("{0}")]
    Usage(String),
    #[error("no cluster named {name:?} in {home}; {hint}")]
    UnknownCluster {
        name: String,
        home: PathBuf,
        hint: String,
    },
    #[error("{what} not found at {path}; {hint}")]
    MissingBinary {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("invalid workload config: {0}\nFix the file (or start from one in examples/), then run the command again.")]
    Config(#[from] loadtest_contract::workload::ConfigError),
    #[error("cluster {cluster:?} is busy: {holder}\nWait for that command to finish (or stop it), then try again.")]
    Locked { cluster: String, holder: String },
    /// A runtime failure; the message includes the next step.
    #[error("{0}")]
    Runtime(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::UnknownCluster { .. }
            | Error::MissingBinary { .. }
            | Error::Config(_) => exit::USAGE,
            Error::Locked { .. } => exit::LOCKED,
            Error::Runtime(_) | Error::Io { .. } => exit::FAILURE,
            Error::Interrupted => exit::INTERRUPTED,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to `std::io::Result`s.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
