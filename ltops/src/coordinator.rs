//! Coordinates a load test over a set of agents, whatever runs them.
//!
//! Input: the agents' control endpoints and a validated workload. Steps: split the users into
//! disjoint slices ([`WorkloadConfig::split_users`]), measure each agent's clock offset (a few
//! `GET /v1/clock` round trips, minimum-RTT sample), create the run on every agent with its slice,
//! start them all at one wall-clock instant a moment ahead, poll their status every second for
//! the live display, stop on time or on ctrl-c (`POST /v1/run/stop`, wait for `finished`), and
//! download each agent's results into `results/<run-id>/agent-<i>.jsonl`.
//!
//! A run can be *steered* while it goes on ([`run_steered`]): a task gets a [`Fleet`] handle to
//! change the number of users (spread over the agents in proportion to their slices) and to read
//! the agents' interval records; when it returns, the run is stopped and collected as usual.
//! Capacity search is such a task.
//!
//! An agent that stops answering (three polls in a row) or reports `failed` is *lost*: the
//! others are stopped cleanly and their results kept; the caller decides what else to salvage
//! and how to report it. Nothing here knows about processes, pods or machines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use futures_util::future::join_all;
use loadtest_contract::control::{
    CreateRun, IntervalsReply, RunState, RunStatus, SetUsers, SetupRequest, SetupState,
    SetupStatus, StartRun,
};
use loadtest_contract::WorkloadConfig;
use tokio_util::sync::CancellationToken;

use crate::agent_client::{AgentClient, AgentEndpoint, AgentError};
use crate::clock::ClockOffset;
use crate::error::{Error, IoContext, Result};
use crate::interrupt;
use crate::progress::Progress;

/// Polls without an answer before an agent counts as lost.
const LOST_AFTER_MISSES: u32 = 3;
/// How long to wait for agents to reach `finished` after a stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// A run to coordinate.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub run_id: String,
    /// The validated workload; `users.count` is the total over all agents.
    pub config: WorkloadConfig,
    pub agents: Vec<AgentEndpoint>,
    pub results_dir: PathBuf,
    /// How far ahead of "now" the common start is scheduled.
    pub start_delay: Duration,
    /// Users active at the start across all agents (the rest wait for a [`Fleet`] to add
    /// them); all of `users.count` when `None`.
    pub initial_users: Option<u64>,
    /// Server instances' `/metrics` (`server-N`, URL), sampled every `run.interval` into
    /// `server.jsonl` (none: no server figures).
    pub server_metrics: Vec<(String, String)>,
}

/// `total` users spread over agents in proportion to their `slices`, never above a slice.
pub fn spread(total: u64, slices: &[u64]) -> Vec<u64> {
    let sum: u64 = slices.iter().sum();
    let total = total.min(sum);
    if sum == 0 {
        return vec![0; slices.len()];
    }
    let mut out: Vec<u64> = slices
        .iter()
        .map(|s| (u128::from(total) * u128::from(*s) / u128::from(sum)) as u64)
        .collect();
    let mut left = total - out.iter().sum::<u64>();
    // The remainder goes to the agents with the most room, one each.
    while left > 0 {
        let Some(i) = (0..slices.len())
            .filter(|&i| out[i] < slices[i])
            .max_by_key(|&i| (slices[i] - out[i], std::cmp::Reverse(i)))
        else {
            break;
        };
        out[i] += 1;
        left -= 1;
    }
    out
}

/// A running run as a steering task sees it: the agents' control APIs, nothing else.
#[derive(Clone)]
pub struct Fleet {
    agents: Vec<(AgentClient, u64, i64)>,
    stopping: CancellationToken,
    messages: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Fleet {
    /// Users the run can hold: the sum of the agents' slices.
    pub fn capacity(&self) -> u64 {
        self.agents.iter().map(|a| a.1).sum()
    }

    pub fn agents(&self) -> u32 {
        self.agents.len() as u32
    }

    /// Cancelled when the run stops for another reason (ctrl-c, a lost agent, an overrun):
    /// the task should return.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// A line for the live display.
    pub fn say(&self, line: String) {
        let _ = self.messages.send(line);
    }

    /// Sets `total` users across the agents; the users added start spread over `ramp`.
    pub async fn set_users(&self, total: u64, ramp: Duration) -> Result<()> {
        let slices: Vec<u64> = self.agents.iter().map(|a| a.1).collect();
        let shares = spread(total, &slices);
        let sent = join_all(self.agents.iter().zip(&shares).map(|((c, _, _), n)| {
            let body = SetUsers {
                users: *n,
                ramp_ms: Some(ramp.as_millis() as u64),
            };
            async move { c.set_users(&body).await }
        }))
        .await;
        for ((c, _, _), r) in self.agents.iter().zip(sent) {
            r.map_err(|e| {
                Error::Runtime(format!(
                    "agent-{} would not change its users: {e}",
                    c.endpoint.index
                ))
            })?;
        }
        Ok(())
    }

    /// Every agent's records with index ≥ `after[i]` (its header included), with the agent's
    /// clock offset (agent clock − coordinator clock, ms).
    pub async fn intervals(&self, after: &[u64]) -> Result<Vec<(IntervalsReply, i64)>> {
        let got = join_all(
            self.agents
                .iter()
                .enumerate()
                .map(|(i, (c, _, _))| c.intervals(after.get(i).copied().unwrap_or(0))),
        )
        .await;
        let mut out = Vec::with_capacity(got.len());
        for ((c, _, offset), r) in self.agents.iter().zip(got) {
            let reply = r.map_err(|e| {
                Error::Runtime(format!(
                    "agent-{}'s interval records could not be read: {e}",
                    c.endpoint.index
                ))
            })?;
            out.push((reply, *offset));
        }
        Ok(out)
    }
}

/// A task steering a running run; the run stops when it returns.
pub type Steer = Box<dyn FnOnce(Fleet) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Clone, Debug, PartialEq)]
pub enum AgentOutcome {
    /// Ran to the end (or was stopped cleanly) and its results were downloaded.
    Finished,
    /// Had no users to simulate (fewer users than agents).
    Idle,
    /// Stopped answering or failed; `reason` says how.
    Lost { reason: String },
}

#[derive(Clone, Debug)]
pub struct AgentReport {
    pub index: u32,
    pub agent_id: String,
    pub user_offset: u64,
    pub users: u64,
    pub clock: Option<ClockOffset>,
    pub outcome: AgentOutcome,
    pub results_file: Option<PathBuf>,
    pub last_status: Option<RunStatus>,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub run_id: String,
    pub agents: Vec<AgentReport>,
    /// The operator pressed ctrl-c.
    pub interrupted: bool,
}

impl RunReport {
    pub fn lost(&self) -> impl Iterator<Item = &AgentReport> {
        self.agents
            .iter()
            .filter(|a| matches!(a.outcome, AgentOutcome::Lost { .. }))
    }

    pub fn results_files(&self) -> Vec<PathBuf> {
        self.agents
            .iter()
            .filter_map(|a| a.results_file.clone())
            .collect()
    }
}

/// The results file of agent `index` in a run directory.
pub fn agent_results_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("agent-{index}.jsonl"))
}

/// A run id: UTC time plus a random suffix, e.g. `20261124T035803Z-3f2a`.
pub fn new_run_id() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = t.chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{compact}-{}", &crate::state::random_token()[..4])
}

fn is_active(s: &RunState) -> bool {
    matches!(s, RunState::Ready | RunState::Running | RunState::Stopping)
}

fn is_over(s: &RunState) -> bool {
    matches!(s, RunState::Finished | RunState::Failed)
}

/// Prepares the workload's data set through one agent's control API (`POST /v1/setup`, then
/// `GET /v1/setup` until it is done), so that this works for every provider alike. Setup is
/// idempotent on the agent's side: after a failure or ctrl-c, running it again resumes.
pub async fn prepare_dataset(
    agent: &AgentEndpoint,
    config: &WorkloadConfig,
) -> Result<SetupStatus> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| Error::Runtime(format!("cannot build an HTTP client: {e}")))?;
    let client = AgentClient::new(agent.clone(), http);
    let refused = |e: AgentError| {
        Error::Runtime(format!(
            "agent-{} could not prepare the data set: {e}; check `ltops logs agent -i {}`",
            agent.index, agent.index
        ))
    };
    // The data set is created through the server this agent's users talk to.
    let mut config = config.clone();
    config.target.url = agent.target_url.clone();
    config.target.websocket_url = None;
    let request = SetupRequest {
        config,
        concurrency: None,
    };
    let mut status = match client.start_setup(&request).await {
        Ok(s) => s,
        // 409: a setup is already running there (an earlier, interrupted command): follow it.
        Err(AgentError::Refused { status: 409, .. }) => {
            client.setup_status().await.map_err(refused)?
        }
        Err(e) => return Err(refused(e)),
    };
    let mut unanswered = 0;
    loop {
        match status.state {
            SetupState::Done => return Ok(status),
            SetupState::Failed => {
                return Err(Error::Runtime(format!(
                    "preparing the data set failed: {}\nFix the cause and run the command again (setup resumes where it stopped).",
                    status.message.as_deref().unwrap_or("no reason given")
                )))
            }
            SetupState::Idle | SetupState::Running => {}
        }
        interrupt::check()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        match client.setup_status().await {
            Ok(s) => {
                status = s;
                unanswered = 0;
            }
            // A busy agent may miss a poll or two while it creates thousands of users.
            Err(e) if unanswered < 20 => {
                unanswered += 1;
                tracing::debug!("setup status: {e}");
            }
            Err(e) => return Err(refused(e)),
        }
    }
}

/// Runs the plan to the end. Errors before the start (an agent refusing the run) stop the
/// agents that accepted it; after the start, problems are reported in the [`RunReport`].
pub async fn run(plan: &RunPlan, progress: &mut dyn Progress) -> Result<RunReport> {
    run_steered(plan, progress, None).await
}

/// [`run`], with `steer` driving the run once it started; the run is stopped when `steer`
/// returns (or ends on its own, or on ctrl-c, a lost agent, an overrun: then
/// [`Fleet::stopping`] tells `steer` to return).
pub async fn run_steered(
    plan: &RunPlan,
    progress: &mut dyn Progress,
    steer: Option<Steer>,
) -> Result<RunReport> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| Error::Runtime(format!("cannot build an HTTP client: {e}")))?;
    let clients: Vec<AgentClient> = plan
        .agents
        .iter()
        .map(|e| AgentClient::new(e.clone(), http.clone()))
        .collect();
    let slices = plan.config.split_users(plan.agents.len() as u32);
    let mut reports: Vec<AgentReport> = plan
        .agents
        .iter()
        .zip(&slices)
        .map(|(e, (offset, count))| AgentReport {
            index: e.index,
            agent_id: format!("agent-{}", e.index),
            user_offset: *offset,
            users: *count,
            clock: None,
            outcome: if *count == 0 {
                AgentOutcome::Idle
            } else {
                AgentOutcome::Finished
            },
            results_file: None,
            last_status: None,
        })
        .collect();
    let busy: Vec<usize> = (0..reports.len())
        .filter(|i| reports[*i].users > 0)
        .collect();

    // 1. Make sure no earlier run is still active (an ltops that was killed).
    for &i in &busy {
        let c = &clients[i];
        let s = c.status().await.map_err(|e| {
            Error::Runtime(format!(
                "agent-{} does not answer: {e}\nRun `ltops status` to check the cluster, or `ltops deploy` to restart it.",
                c.endpoint.index
            ))
        })?;
        if is_active(&s.state) {
            progress.message(&format!(
                "agent-{} still has run {} active; stopping it first",
                c.endpoint.index,
                s.run_id.as_deref().unwrap_or("?")
            ));
            let _ = c.stop().await;
            wait_until_over(c, Duration::from_secs(30)).await;
        }
    }

    // 2. Clock offsets.
    let offsets = join_all(busy.iter().map(|&i| clients[i].measure_offset(5))).await;
    for (&i, r) in busy.iter().zip(offsets) {
        // The agent id in results must be unique per run: use the cluster position, not what
        // the agent calls itself.
        let (off, _id) = r.map_err(|e| {
            Error::Runtime(format!(
                "measuring agent-{}'s clock failed: {e}\nRun `ltops status` to check it.",
                reports[i].index
            ))
        })?;
        reports[i].clock = Some(off);
    }

    // 3. Create the run on each agent with its slice.
    let total_users = plan.config.users.count;
    let agents = busy.len() as u32;
    let initial: Option<Vec<u64>> = plan.initial_users.map(|n| {
        let slices: Vec<u64> = busy.iter().map(|&i| reports[i].users).collect();
        spread(n, &slices)
    });
    let creates = busy.iter().enumerate().map(|(k, &i)| {
        let mut config = plan.config.clone();
        config.users.offset = reports[i].user_offset;
        config.users.count = reports[i].users;
        config.target.url = clients[i].endpoint.target_url.clone();
        config.target.websocket_url = None;
        let body = CreateRun {
            run_id: plan.run_id.clone(),
            agent_id: reports[i].agent_id.clone(),
            config,
            total_users,
            agents,
            clock_offset_ms: reports[i].clock.map(|c| c.offset_ms).unwrap_or(0),
            initial_users: initial.as_ref().map(|v| v[k]),
        };
        let c = clients[i].clone();
        async move { c.create_run(&body).await }
    });
    let created = join_all(creates).await;
    let mut failure = None;
    for (&i, r) in busy.iter().zip(&created) {
        if let Err(e) = r {
            failure.get_or_insert(format!("agent-{} refused the run: {e}", reports[i].index));
        }
    }
    if let Some(msg) = failure {
        join_all(busy.iter().map(|&i| clients[i].stop())).await;
        return Err(Error::Runtime(format!(
            "{msg}\nNo run was started. Check `ltops logs agent -c CLUSTER -i N`; `ltops deploy` restarts the agents."
        )));
    }
    if interrupt::interrupted() {
        join_all(busy.iter().map(|&i| clients[i].stop())).await;
        return Err(Error::Interrupted);
    }

    // 4. Start together.
    let start_at_ms = loadtest_contract::now_ms() + plan.start_delay.as_millis() as i64;
    let start = StartRun {
        start_at_ms: Some(start_at_ms),
    };
    let started = join_all(busy.iter().map(|&i| clients[i].start(&start))).await;
    if let Some((i, Err(e))) = busy.iter().zip(&started).find(|(_, r)| r.is_err()) {
        join_all(busy.iter().map(|&i| clients[i].stop())).await;
        return Err(Error::Runtime(format!(
            "agent-{} would not start the run: {e}\nCheck its log with `ltops logs agent -i {}`.",
            reports[*i].index, reports[*i].index
        )));
    }
    let slices_shown: Vec<(u32, u64)> = busy
        .iter()
        .map(|&i| (reports[i].index, reports[i].users))
        .collect();
    for &i in &busy {
        let r = &reports[i];
        let clock = r
            .clock
            .map(|c| {
                format!(
                    "clock offset {:+} ms (±{} ms)",
                    c.offset_ms,
                    (c.rtt_ms + 1) / 2
                )
            })
            .unwrap_or_default();
        progress.message(&format!(
            "agent-{}: users {}..{} ({}), {clock}",
            r.index,
            r.user_offset,
            r.user_offset + r.users,
            r.users
        ));
    }
    progress.begin(&slices_shown, plan.config.users.duration);

    // The steering task, if any, runs beside the watch loop below.
    let stopping = CancellationToken::new();
    let steer_done = CancellationToken::new();
    let (messages, mut said) = tokio::sync::mpsc::unbounded_channel::<String>();
    let steering = steer.map(|steer| {
        let fleet = Fleet {
            agents: busy
                .iter()
                .map(|&i| {
                    let offset = reports[i].clock.map(|c| c.offset_ms).unwrap_or(0);
                    (clients[i].clone(), reports[i].users, offset)
                })
                .collect(),
            stopping: stopping.clone(),
            messages,
        };
        let done = steer_done.clone();
        let task = steer(fleet);
        tokio::spawn(async move {
            task.await;
            done.cancel();
        })
    });

    // 5. Watch (and sample the servers' own figures every results interval).
    let mut sampler = crate::server_sample::Sampler::new(
        &plan.run_id,
        plan.server_metrics.clone(),
        &plan.results_dir,
    );
    let sample_every = plan.config.run.interval;
    let mut next_sample = Instant::now() + plan.start_delay;
    let duration = plan.config.users.duration;
    let began = Instant::now();
    let hard_stop = plan.start_delay + duration + Duration::from_secs(120);
    let mut misses = vec![0u32; reports.len()];
    let mut stop_sent = false;
    let mut stop_sent_at: Option<Instant> = None;
    let mut interrupted = false;
    loop {
        let tick = Instant::now();
        if tick >= next_sample {
            sampler.sample().await;
            next_sample += sample_every;
        }
        let polled = join_all(busy.iter().map(|&i| clients[i].status())).await;
        let mut shown = Vec::with_capacity(busy.len());
        for (&i, r) in busy.iter().zip(polled) {
            if matches!(reports[i].outcome, AgentOutcome::Lost { .. }) {
                shown.push((reports[i].index, None));
                continue;
            }
            match r {
                Ok(s) => {
                    misses[i] = 0;
                    if s.state == RunState::Failed {
                        reports[i].outcome = AgentOutcome::Lost {
                            reason: format!(
                                "the agent reported its run failed: {}",
                                s.message.as_deref().unwrap_or("no reason given")
                            ),
                        };
                    }
                    reports[i].last_status = Some(s.clone());
                    shown.push((reports[i].index, Some(s)));
                }
                Err(e) => {
                    misses[i] += 1;
                    if misses[i] >= LOST_AFTER_MISSES {
                        reports[i].outcome = AgentOutcome::Lost {
                            reason: format!("stopped answering: {e}"),
                        };
                    }
                    shown.push((reports[i].index, None));
                }
            }
        }
        while let Ok(line) = said.try_recv() {
            progress.message(&line);
        }
        progress.update(&shown);

        let lost_any = busy
            .iter()
            .any(|&i| matches!(reports[i].outcome, AgentOutcome::Lost { .. }));
        let all_over = busy.iter().all(|&i| {
            matches!(reports[i].outcome, AgentOutcome::Lost { .. })
                || reports[i]
                    .last_status
                    .as_ref()
                    .is_some_and(|s| is_over(&s.state))
        });
        if all_over {
            break;
        }
        let steered_to_end = steer_done.is_cancelled();
        let want_stop =
            interrupt::interrupted() || lost_any || steered_to_end || began.elapsed() > hard_stop;
        if want_stop && !stop_sent {
            stopping.cancel();
            if interrupt::interrupted() {
                interrupted = true;
                progress.message("stopping every agent (partial results are kept)…");
            } else if lost_any {
                for &i in &busy {
                    if let AgentOutcome::Lost { reason } = &reports[i].outcome {
                        progress.message(&format!(
                            "agent-{} is lost ({reason}); stopping the others and keeping their results",
                            reports[i].index
                        ));
                    }
                }
            } else if steered_to_end {
                progress.message("stopping every agent and collecting the results…");
            } else {
                progress.message("the run overran its duration by 2 minutes; stopping it");
            }
            join_all(
                busy.iter()
                    .filter(|&&i| !matches!(reports[i].outcome, AgentOutcome::Lost { .. }))
                    .map(|&i| clients[i].stop()),
            )
            .await;
            stop_sent = true;
            stop_sent_at = Some(Instant::now());
        }
        if let Some(at) = stop_sent_at {
            if at.elapsed() > STOP_WAIT || interrupt::count() > 1 {
                for &i in &busy {
                    let over = reports[i]
                        .last_status
                        .as_ref()
                        .is_some_and(|s| is_over(&s.state));
                    if !over && !matches!(reports[i].outcome, AgentOutcome::Lost { .. }) {
                        reports[i].outcome = AgentOutcome::Lost {
                            reason: "did not finish after being asked to stop".into(),
                        };
                    }
                }
                break;
            }
        }
        let spent = tick.elapsed();
        let pause = Duration::from_secs(1).saturating_sub(spent);
        let deadline = Instant::now() + pause;
        while Instant::now() < deadline {
            if (interrupt::interrupted() || steer_done.is_cancelled()) && !stop_sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    sampler.sample().await;
    sampler.finish();
    stopping.cancel();
    if let Some(task) = steering {
        // It was told to stop; it only has to notice.
        if tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .is_err()
        {
            tracing::warn!("the steering task did not return after the run stopped");
        }
    }
    while let Ok(line) = said.try_recv() {
        progress.message(&line);
    }
    progress.end();
    interrupted |= interrupt::interrupted();

    // 6. Collect.
    std::fs::create_dir_all(&plan.results_dir)
        .context(|| format!("creating {}", plan.results_dir.display()))?;
    for &i in &busy {
        if matches!(reports[i].outcome, AgentOutcome::Lost { .. }) {
            continue;
        }
        match clients[i].results().await {
            Ok(bytes) => {
                let path = agent_results_path(&plan.results_dir, reports[i].index);
                std::fs::write(&path, &bytes).context(|| format!("writing {}", path.display()))?;
                reports[i].results_file = Some(path);
            }
            Err(e) => {
                reports[i].outcome = AgentOutcome::Lost {
                    reason: format!("its results could not be downloaded: {e}"),
                };
            }
        }
    }
    Ok(RunReport {
        run_id: plan.run_id.clone(),
        agents: reports,
        interrupted,
    })
}

async fn wait_until_over(c: &AgentClient, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match c.status().await {
            Ok(s) if !is_active(&s.state) => return,
            Err(_) => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_sortable_and_distinct() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "20261124T035803Z-3f2a".len(), "{a}");
        assert!(a.contains('T') && a.contains('Z'), "{a}");
    }
}
