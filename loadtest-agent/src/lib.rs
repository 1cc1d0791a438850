//! `loadtest-agent`: thousands of simulated chat users in one process, talking the Mattermost API v4
//! and WebSocket protocol, measured honestly (coordinated-omission-correct response times, schedule
//! lag, end-to-end delivery latency and loss).
//!
//! Codemap, roughly in the order a run touches it:
//! - [`net`]: file-descriptor limit and source-address spreading for tens of thousands of sockets.
//! - [`shards`]: the load runtimes, single-threaded, one per core; each user lives on one.
//! - [`http`]: the agent's HTTP/1.1 client, connections pooled per load runtime and source address.
//! - [`client`]: the Mattermost API calls over it and error classification.
//! - [`page`]: a posts page read only as far as a user needs it (a few ids out of ~14 KB).
//! - [`ws`]: WebSocket connect with the authentication challenge, resume parameters, frame parsing.
//! - [`dataset`]: the deterministic data-set layout (names, teams, channel membership).
//! - [`setup`]: idempotent creation of that data set through the API.
//! - [`schedule`]: seeded per-user schedules (waits in milliseconds, rate factors, action mix) and
//!   the open-model arrival process.
//! - [`measure`]: per-action recorders, schedule lag, delivery tracking, Prometheus metrics.
//! - [`user`]: one simulated user as one tokio task.
//! - [`run`]: a run from start to summary: spawns users, ramps, stops, flushes results.
//! - [`results`]: the results file (contract JSON Lines) and its interval flusher.
//! - [`progress`]: the terminal progress bar or plain log lines.
//! - [`control`]: the HTTP control API of `serve` mode.
//!
//! Invariants: no thread per user (a few single-threaded load runtimes, one task per user, its
//! HTTP action polled inside it; posts of the open model a task each);
//! every error is counted and retried, never fatal to the run; every recorded latency has an
//! intended start from the schedule, so an agent that falls behind shows it as schedule lag.

pub mod cancel;
pub mod client;
pub mod control;
pub mod dataset;
pub mod frame;
pub mod http;
pub mod json;
pub mod measure;
pub mod net;
pub mod page;
pub mod progress;
pub mod results;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod shards;
pub mod user;
pub mod ws;
pub mod wsconn;

pub use run::{start_run, RunError, RunHandle, RunPlan};
pub use setup::{run_setup, SetupError, SetupReport};

/// Name written as `tool` in results headers.
pub const TOOL: &str = "loadtest-agent";
/// Version written as `tool_version` in results headers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
