//! A client for one agent's HTTP control API (paths and types from `loadtest_contract::control`).
//!
//! This is all the coordinator knows about an agent: a base URL and the shared token. Whether
//! the agent is a local process, a pod or an EC2 instance is the provider's business.

use std::time::Duration;

use loadtest_contract::control::{
    ClockReply, CreateRun, ErrorReply, IntervalsReply, RunStatus, SetUsers, SetupRequest,
    SetupStatus, StartRun, PATH_CLOCK, PATH_INTERVALS, PATH_RESULTS, PATH_RUN, PATH_SETUP,
    PATH_START, PATH_STATUS, PATH_STOP, PATH_USERS,
};
use serde::de::DeserializeOwned;

use crate::clock::{estimate, ClockOffset, ClockSample};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the agent at {url}: {}", chain(.source))]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the agent at {url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the agent at {url} answered something unexpected: {message}")]
    Protocol { url: String, message: String },
}

/// An error with its causes, e.g. "error sending request: connection refused".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Where an agent's control API is and how to authenticate.
#[derive(Clone, Debug)]
pub struct AgentEndpoint {
    /// Position of the agent in the cluster (0-based); names its results file.
    pub index: u32,
    /// e.g. `http://127.0.0.1:40123`.
    pub control_url: String,
    pub token: String,
    /// The server URL this agent's users talk to.
    pub target_url: String,
}

#[derive(Clone, Debug)]
pub struct AgentClient {
    pub endpoint: AgentEndpoint,
    http: reqwest::Client,
}

impl AgentClient {
    pub fn new(endpoint: AgentEndpoint, http: reqwest::Client) -> Self {
        Self { endpoint, http }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.endpoint.control_url.trim_end_matches('/'),
            path
        )
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T, AgentError> {
        let bytes = self.send_raw(req, path).await?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Protocol {
            url: self.url(path),
            message: e.to_string(),
        })
    }

    async fn send_raw(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<bytes::Bytes, AgentError> {
        let url = self.url(path);
        let resp = req
            .bearer_auth(&self.endpoint.token)
            .send()
            .await
            .map_err(|source| AgentError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| AgentError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorReply>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(AgentError::Refused {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }

    pub async fn clock(&self) -> Result<ClockReply, AgentError> {
        self.send(self.http.get(self.url(PATH_CLOCK)), PATH_CLOCK)
            .await
    }

    /// `samples` clock round trips; the estimate from the tightest one.
    pub async fn measure_offset(
        &self,
        samples: usize,
    ) -> Result<(ClockOffset, String), AgentError> {
        let mut got = Vec::with_capacity(samples);
        let mut agent_id = String::new();
        for _ in 0..samples.max(1) {
            let sent_ms = loadtest_contract::now_ms();
            let reply = self.clock().await?;
            let received_ms = loadtest_contract::now_ms();
            agent_id = reply.agent_id;
            got.push(ClockSample {
                sent_ms,
                received_ms,
                agent_ms: reply.now_ms,
            });
        }
        let est = estimate(&got).unwrap_or(ClockOffset {
            offset_ms: 0,
            rtt_ms: 0,
        });
        Ok((est, agent_id))
    }

    pub async fn create_run(&self, body: &CreateRun) -> Result<RunStatus, AgentError> {
        self.send(self.http.post(self.url(PATH_RUN)).json(body), PATH_RUN)
            .await
    }

    pub async fn start(&self, body: &StartRun) -> Result<RunStatus, AgentError> {
        self.send(self.http.post(self.url(PATH_START)).json(body), PATH_START)
            .await
    }

    pub async fn stop(&self) -> Result<RunStatus, AgentError> {
        self.send(self.http.post(self.url(PATH_STOP)), PATH_STOP)
            .await
    }

    /// Changes the number of active users of the running run.
    pub async fn set_users(&self, body: &SetUsers) -> Result<RunStatus, AgentError> {
        self.send(self.http.post(self.url(PATH_USERS)).json(body), PATH_USERS)
            .await
    }

    /// The running run's header and its interval records with index ≥ `after`.
    pub async fn intervals(&self, after: u64) -> Result<IntervalsReply, AgentError> {
        let path = format!("{PATH_INTERVALS}?after={after}");
        self.send(
            self.http
                .get(self.url(&path))
                .timeout(Duration::from_secs(10)),
            PATH_INTERVALS,
        )
        .await
    }

    pub async fn status(&self) -> Result<RunStatus, AgentError> {
        self.send(
            self.http
                .get(self.url(PATH_STATUS))
                .timeout(Duration::from_secs(3)),
            PATH_STATUS,
        )
        .await
    }

    /// Starts creating the workload's data set on the agent (it runs in the background there).
    pub async fn start_setup(&self, body: &SetupRequest) -> Result<SetupStatus, AgentError> {
        self.send(self.http.post(self.url(PATH_SETUP)).json(body), PATH_SETUP)
            .await
    }

    pub async fn setup_status(&self) -> Result<SetupStatus, AgentError> {
        self.send(
            self.http
                .get(self.url(PATH_SETUP))
                .timeout(Duration::from_secs(5)),
            PATH_SETUP,
        )
        .await
    }

    /// The results file of the agent's current (or last) run.
    pub async fn results(&self) -> Result<bytes::Bytes, AgentError> {
        self.send_raw(
            self.http
                .get(self.url(PATH_RESULTS))
                .timeout(Duration::from_secs(120)),
            PATH_RESULTS,
        )
        .await
    }
}
