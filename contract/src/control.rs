//! The agent's HTTP control API, as `ltops` (or any coordinator) drives it.
//!
//! Every request under [`PREFIX`] carries the shared token as `Authorization: Bearer <token>`;
//! requests without it, or with another token, get 401 and an [`ErrorReply`]. Bodies are JSON.
//! `GET /metrics` (Prometheus text) is the only path outside the prefix.
//!
//! | method | path                  | body            | reply                        |
//! |--------|-----------------------|-----------------|------------------------------|
//! | GET    | `/v1/clock`           |                 | [`ClockReply`]               |
//! | POST   | `/v1/run`             | [`CreateRun`]   | [`RunStatus`] (state `ready`) |
//! | POST   | `/v1/run/start`       | [`StartRun`]    | [`RunStatus`]                |
//! | POST   | `/v1/run/users`       | [`SetUsers`]    | [`RunStatus`]                |
//! | POST   | `/v1/run/stop`        |                 | [`RunStatus`]                |
//! | GET    | `/v1/run/status`      |                 | [`RunStatus`]                |
//! | GET    | `/v1/run/results`     |                 | the results file (JSON Lines) |
//! | GET    | `/v1/run/intervals?after=N` |           | [`IntervalsReply`]: the run's interval records with `index ≥ N` |
//! | POST   | `/v1/setup`           | [`SetupRequest`] | [`SetupStatus`] (202, runs in the background) |
//! | GET    | `/v1/setup`           |                 | [`SetupStatus`]              |
//!
//! A second `POST /v1/run` while a run is active answers 409.

use serde::{Deserialize, Serialize};

use crate::workload::WorkloadConfig;

/// Path prefix of the authenticated control routes.
pub const PREFIX: &str = "/v1";
pub const PATH_CLOCK: &str = "/v1/clock";
pub const PATH_RUN: &str = "/v1/run";
pub const PATH_START: &str = "/v1/run/start";
pub const PATH_USERS: &str = "/v1/run/users";
pub const PATH_STOP: &str = "/v1/run/stop";
pub const PATH_STATUS: &str = "/v1/run/status";
pub const PATH_RESULTS: &str = "/v1/run/results";
/// The running run's interval records so far (`?after=N`: those with `index ≥ N`), for a
/// coordinator that judges parts of a run while it goes on (capacity search); added in
/// contract 1.0 additively.
pub const PATH_INTERVALS: &str = "/v1/run/intervals";
pub const PATH_METRICS: &str = "/metrics";
/// Liveness and readiness for probes (Kubernetes, load balancers): unauthenticated, answers
/// `200 ok` while the control API serves; added in contract 1.0 additively.
pub const PATH_HEALTH: &str = "/healthz";
/// Data-set creation (`loadtest-agent setup` over HTTP); added in contract 1.0 additively.
pub const PATH_SETUP: &str = "/v1/setup";

/// Creates the workload's data set through the target's API, idempotently. Only one setup runs
/// at a time (a second `POST` while one runs answers 409).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetupRequest {
    pub config: WorkloadConfig,
    /// Requests in flight; the agent's default when absent.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupState {
    Idle,
    Running,
    Done,
    Failed,
}

/// Progress and outcome of a setup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupStatus {
    pub state: SetupState,
    /// Objects created (users, teams, channels, memberships, posts) once done.
    #[serde(default)]
    pub created: u64,
    /// Users, teams and channels found existing once done.
    #[serde(default)]
    pub existing: u64,
    /// Error when failed.
    #[serde(default)]
    pub message: Option<String>,
}

/// The agent's wall clock, for `ltops` to estimate its offset (NTP-style, from the round trip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReply {
    pub now_ms: i64,
    pub agent_id: String,
    pub version: String,
}

/// Prepares a run: the agent logs nobody in yet, it validates and stores the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateRun {
    pub run_id: String,
    pub agent_id: String,
    /// The full workload; `users.offset`/`users.count` are this agent's slice.
    pub config: WorkloadConfig,
    /// Users across all agents of the run, and the number of agents (for the results header).
    pub total_users: u64,
    pub agents: u32,
    /// Agent clock minus coordinator clock, milliseconds, as measured by the coordinator.
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// Users active at the start (the rest of the slice waits for `POST /v1/run/users`);
    /// the whole slice when absent.
    #[serde(default)]
    pub initial_users: Option<u64>,
}

/// The interval records of the running run, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalsReply {
    pub intervals: Vec<crate::results::IntervalRecord>,
    /// The run's header record, so that a coordinator can judge the intervals as a results
    /// file of their own (added in contract 1.0 additively).
    #[serde(default)]
    pub header: Option<crate::results::RunHeader>,
}

/// Starts a prepared run, optionally at a coordinator-chosen wall-clock time so that every agent
/// starts together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRun {
    /// Coordinator wall clock, Unix ms; the agent corrects it with its clock offset.
    #[serde(default)]
    pub start_at_ms: Option<i64>,
}

/// Changes the number of active users of a running run (within the agent's slice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetUsers {
    pub users: u64,
    /// Spread the users added over this long, milliseconds (they log in and connect at once
    /// when absent). Users removed leave at once: they log out and close their WebSocket.
    #[serde(default)]
    pub ramp_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// No run created.
    Idle,
    /// Created, waiting for start.
    Ready,
    Running,
    Stopping,
    /// Ended; results are complete (summary written).
    Finished,
    /// Ended abnormally; `message` says why. Results hold what was measured.
    Failed,
}

/// What an agent is doing, for live progress and health checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub agent_id: String,
    pub state: RunState,
    #[serde(default)]
    pub run_id: Option<String>,
    pub elapsed_ms: u64,
    pub duration_ms: u64,
    pub target_users: u64,
    pub active_users: u64,
    pub websocket_connections: u64,
    pub requests_total: u64,
    pub errors_total: u64,
    /// Over the last few seconds.
    pub requests_per_sec: f64,
    pub errors_per_sec: f64,
    /// Response time p99 of all actions so far, milliseconds.
    pub response_p99_ms: f64,
    /// Delivery latency p99 so far, milliseconds.
    pub delivery_p99_ms: f64,
    pub deliveries_received: u64,
    /// p99 of how late actions started, milliseconds: high means the agent is overloaded.
    pub schedule_lag_p99_ms: f64,
    #[serde(default)]
    pub message: Option<String>,
}

impl RunStatus {
    pub fn idle(agent_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            state: RunState::Idle,
            run_id: None,
            elapsed_ms: 0,
            duration_ms: 0,
            target_users: 0,
            active_users: 0,
            websocket_connections: 0,
            requests_total: 0,
            errors_total: 0,
            requests_per_sec: 0.0,
            errors_per_sec: 0.0,
            response_p99_ms: 0.0,
            delivery_p99_ms: 0.0,
            deliveries_received: 0,
            schedule_lag_p99_ms: 0.0,
            message: None,
        }
    }
}

/// Body of every non-2xx control reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
