//! A run from start to summary: prepares the shared client, raises the file limit, opens the
//! results file, spawns users along the ramp, paces the open model's posts, flushes an interval
//! record every `run.interval`, and on completion or stop lets deliveries arrive for a grace
//! period before closing connections and writing the summary.
//!
//! The same engine serves `loadtest-agent run` and the control API; [`RunHandle`] is how both
//! observe and steer it (status, stop, number of users).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use loadtest_contract::control::{RunState, RunStatus};
use loadtest_contract::results::{IntervalRecord, Record, RunSettings, StopReason, SummaryRecord};
use loadtest_contract::workload::{Mode, WorkloadConfig};
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::client::{Api, ApiError};
use crate::dataset::Layout;
use crate::measure::Recorder;
use crate::net::{self, FdLimitError, SourceAddrs};
use crate::results::{self, ResultsSink, WrittenInterval, DELIVERY_GRACE};
use crate::schedule::{agent_rate, ramp_offset, Arrivals};
use crate::shards;
use crate::user::{self, Directory, UserEnv};
use crate::ws::WsTarget;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub run_id: String,
    pub agent_id: String,
    /// `users.offset`/`users.count` are this agent's slice.
    pub config: WorkloadConfig,
    /// Users across all agents, and the number of agents (for the header and the open model).
    pub total_users: u64,
    pub agents: u32,
    pub clock_offset_ms: i64,
    pub results_path: PathBuf,
    /// Users active at the start (the rest wait for [`RunHandle::set_users`]); all when `None`.
    pub initial_users: Option<u64>,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    FdLimit(#[from] FdLimitError),
    #[error("{0}")]
    Client(#[from] ApiError),
    #[error("cannot resolve {url}: {source}")]
    Resolve { url: String, source: std::io::Error },
    #[error("results file {path}: {source}")]
    Results {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the run task ended abnormally: {0}")]
    Task(String),
    #[error("cannot start the load threads: {0}")]
    Runtime(std::io::Error),
}

/// State shared between the engine and whoever watches it.
pub struct RunShared {
    pub plan: RunPlan,
    pub recorder: Arc<Recorder>,
    stop: CancellationToken,
    /// Users wanted, and over how long to spread the ones added.
    target_users: tokio::sync::watch::Sender<(u64, Duration)>,
    header: loadtest_contract::results::RunHeader,
    started: Mutex<Option<Instant>>,
    state: Mutex<RunState>,
    message: Mutex<Option<String>>,
    rates: Mutex<VecDeque<(Instant, u64, u64)>>,
    /// The interval records written so far (the last [`KEPT_INTERVALS`]), as the lines written
    /// to the results file: kept as records, a 10-minute run held 350 MiB per agent.
    intervals: Mutex<VecDeque<WrittenInterval>>,
}

/// Interval records kept in memory for `GET /v1/run/intervals` (about a day at 10 s).
const KEPT_INTERVALS: usize = 10_000;

impl RunShared {
    /// Asks the run to stop early (summary with `interrupted`).
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    pub fn state(&self) -> RunState {
        *self.state.lock()
    }

    /// The header record of the run's results file.
    pub fn header(&self) -> &loadtest_contract::results::RunHeader {
        &self.header
    }

    pub fn elapsed(&self) -> Duration {
        self.started
            .lock()
            .map(|s| Instant::now().saturating_duration_since(s))
            .unwrap_or_default()
    }

    fn keep_interval(&self, written: WrittenInterval) {
        let mut v = self.intervals.lock();
        if v.len() >= KEPT_INTERVALS {
            v.pop_front();
        }
        v.push_back(written);
    }

    /// The interval records with `index ≥ after` still kept.
    pub fn intervals_after(&self, after: u64) -> Vec<IntervalRecord> {
        let kept: Vec<Box<str>> = self
            .intervals
            .lock()
            .iter()
            .filter(|w| w.index >= after)
            .map(|w| w.line.clone())
            .collect();
        // Lines this process wrote from records: they parse back.
        kept.iter()
            .filter_map(|line| match serde_json::from_str(line) {
                Ok(Record::Interval(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn sample_rates(&self) {
        let c = &self.recorder.counters;
        let mut r = self.rates.lock();
        r.push_back((
            Instant::now(),
            c.requests.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
        ));
        while r.len() > 6 {
            r.pop_front();
        }
    }

    /// Requests and errors per second over the last few seconds.
    pub fn rates(&self) -> (f64, f64) {
        let r = self.rates.lock();
        match (r.front(), r.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let dt = (b.0 - a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / dt, (b.2 - a.2) as f64 / dt)
            }
            _ => (0.0, 0.0),
        }
    }

    pub fn status(&self) -> RunStatus {
        let c = &self.recorder.counters;
        let (rps, eps) = self.rates();
        let so_far = self.recorder.so_far.lock();
        let ms = |h: &loadtest_contract::LatencyHistogram| h.quantile_us(0.99) as f64 / 1000.0;
        RunStatus {
            agent_id: self.plan.agent_id.clone(),
            state: self.state(),
            run_id: Some(self.plan.run_id.clone()),
            elapsed_ms: self.elapsed().as_millis() as u64,
            duration_ms: self.plan.config.users.duration.as_millis() as u64,
            target_users: self.target_users.borrow().0,
            active_users: c.active_users.load(Ordering::Relaxed).max(0) as u64,
            websocket_connections: c.ws_connections.load(Ordering::Relaxed).max(0) as u64,
            requests_total: c.requests.load(Ordering::Relaxed),
            errors_total: c.errors.load(Ordering::Relaxed),
            requests_per_sec: rps,
            errors_per_sec: eps,
            response_p99_ms: ms(&so_far.response),
            delivery_p99_ms: ms(&so_far.delivery),
            deliveries_received: c.posted_events_total.load(Ordering::Relaxed),
            schedule_lag_p99_ms: ms(&so_far.lag),
            message: self.message.lock().clone(),
        }
    }
}

/// A started run.
pub struct RunHandle {
    pub shared: Arc<RunShared>,
    task: tokio::task::JoinHandle<Result<SummaryRecord, RunError>>,
}

impl RunHandle {
    /// Asks the run to stop early (summary with `interrupted`).
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Changes the number of active users (capped at the slice size) at once.
    pub fn set_users(&self, n: u64) -> u64 {
        self.set_users_over(n, Duration::ZERO)
    }

    /// Changes the number of active users (capped at the slice size); the users added start
    /// spread over `ramp`, the users removed log out and leave at once.
    pub fn set_users_over(&self, n: u64, ramp: Duration) -> u64 {
        let n = n.min(self.shared.plan.config.users.count);
        self.shared.target_users.send_replace((n, ramp));
        n
    }

    pub fn status(&self) -> RunStatus {
        self.shared.status()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the summary.
    pub async fn wait(self) -> Result<SummaryRecord, RunError> {
        self.task.await.map_err(|e| RunError::Task(e.to_string()))?
    }
}

/// Prepares everything that can fail up front (file limit, client, results file) and starts the
/// run at `start_at` (now when `None`).
pub async fn start_run(
    plan: RunPlan,
    start_at: Option<Instant>,
    recorder: Arc<Recorder>,
) -> Result<RunHandle, RunError> {
    let cfg = &plan.config;
    recorder.set_run(&plan.run_id, plan.clock_offset_ms);
    net::raise_nofile(net::fds_needed(cfg.users.count))?;
    let shards = shards::get().map_err(RunError::Runtime)?;
    let api = Api::new(
        &cfg.target.url,
        cfg.target.request_timeout,
        &cfg.target.local_addresses,
        shards.len(),
    )?;
    let ws_url = cfg.target.websocket_url();
    let addr = net::resolve_url(&ws_url)
        .await
        .map_err(|source| RunError::Resolve {
            url: ws_url.clone(),
            source,
        })?;
    let settings = RunSettings {
        load_runtimes: Some(u32::try_from(shards.len()).unwrap_or(u32::MAX)),
        ..cfg.run_settings(
            cfg.users.count,
            cfg.users.offset,
            plan.total_users.max(cfg.users.count),
            plan.agents.max(1),
        )
    };
    let sink = results::open(
        &plan.results_path,
        &plan.run_id,
        &plan.agent_id,
        cfg.run.interval,
        plan.clock_offset_ms,
        settings,
        recorder.clone(),
    )
    .map_err(|source| RunError::Results {
        path: plan.results_path.clone(),
        source,
    })?;
    let count = cfg.users.count;
    let env = Arc::new(UserEnv {
        api,
        shards,
        ws: WsTarget {
            url: ws_url,
            addr,
            timeout: cfg.target.request_timeout,
        },
        sources: SourceAddrs::new(cfg.target.local_addresses.clone()),
        layout: Layout::new(&cfg.dataset),
        config: cfg.clone(),
        recorder: recorder.clone(),
        first_index: cfg.users.offset,
        live: (0..count).map(|_| AtomicBool::new(false)).collect(),
        members: Mutex::new(Default::default()),
        sessions: Mutex::new(vec![None; count as usize]),
        directory: Directory::default(),
        actions_stop: CancellationToken::new(),
    });
    let initial = plan.initial_users.unwrap_or(count).min(count);
    let (target_users, _) = tokio::sync::watch::channel((initial, Duration::ZERO));
    let shared = Arc::new(RunShared {
        header: sink.header().clone(),
        plan,
        recorder,
        stop: CancellationToken::new(),
        target_users,
        started: Mutex::new(None),
        state: Mutex::new(RunState::Running),
        message: Mutex::new(None),
        rates: Mutex::new(VecDeque::new()),
        intervals: Mutex::new(VecDeque::new()),
    });
    let task = tokio::spawn(engine(shared.clone(), env, sink, start_at));
    Ok(RunHandle { shared, task })
}

async fn engine(
    shared: Arc<RunShared>,
    env: Arc<UserEnv>,
    mut sink: ResultsSink,
    start_at: Option<Instant>,
) -> Result<SummaryRecord, RunError> {
    let result = engine_inner(&shared, env, &mut sink, start_at).await;
    let path = sink.path().to_path_buf();
    let results_err = |source| RunError::Results { path, source };
    match result {
        Ok(reason) => {
            let (last, summary) = sink.finish(reason).map_err(results_err)?;
            shared.keep_interval(last);
            *shared.state.lock() = RunState::Finished;
            Ok(summary)
        }
        Err(e) => {
            *shared.message.lock() = Some(e.to_string());
            *shared.state.lock() = RunState::Failed;
            let _ = sink.finish(StopReason::Failed);
            Err(e)
        }
    }
}

/// How often the idle probe task wakes.
const PROBE_EVERY: Duration = Duration::from_millis(50);

async fn engine_inner(
    shared: &Arc<RunShared>,
    env: Arc<UserEnv>,
    sink: &mut ResultsSink,
    start_at: Option<Instant>,
) -> Result<StopReason, RunError> {
    let cfg = &shared.plan.config;
    if let Some(at) = start_at {
        tokio::select! {
            _ = shared.stop.cancelled() => {}
            _ = sleep_until(at) => {}
        }
    }
    let start = Instant::now();
    sink.begin();
    *shared.started.lock() = Some(start);
    let end = start + cfg.users.duration;
    let count = cfg.users.count;
    let ramp = cfg.users.ramp_up;
    let results_err = |source| RunError::Results {
        path: shared.plan.results_path.clone(),
        source,
    };

    let mut users: JoinSet<()> = JoinSet::new();
    let mut tokens: Vec<Option<CancellationToken>> = vec![None; count as usize];
    let all_users = CancellationToken::new();
    let spawn_user = |users: &mut JoinSet<()>, local: u64, at: Instant| {
        let token = all_users.child_token();
        users.spawn_on(
            user::run_user(env.clone(), local as u32, at, token.clone()),
            env.shards.of(local),
        );
        token
    };
    // The initial users ramp up; the rest of the slice waits for a higher target.
    let initial = shared.target_users.borrow().0;
    for (local, slot) in tokens.iter_mut().enumerate().take(initial as usize) {
        let local = local as u64;
        *slot = Some(spawn_user(
            &mut users,
            local,
            start + ramp_offset(local, initial, ramp),
        ));
    }

    // The idle probes, one on each load runtime: tasks that only sleep, so their timer lateness
    // is the runtime's own delay (a busy runtime, a process starved of CPU), never the server's.
    let mut probes = JoinSet::new();
    for shard in env.shards.all() {
        let rec = env.recorder.clone();
        let stop = all_users.clone();
        probes.spawn_on(
            async move {
                let mut due = Instant::now() + PROBE_EVERY;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = sleep_until(due) => {}
                    }
                    let now = Instant::now();
                    rec.note_probe(now.saturating_duration_since(due));
                    due = now + PROBE_EVERY;
                }
            },
            shard,
        );
    }

    // Open model: posts arrive at this agent's share of the global rate, whatever the server's
    // speed; each arrival is spawned on its own so a slow server cannot slow the arrivals.
    let dispatcher = (cfg.behaviour.mode == Mode::Open).then(|| {
        let rate = agent_rate(
            cfg.behaviour.posts_per_second.unwrap_or(0.0),
            count,
            shared.plan.total_users.max(count),
        );
        let env = env.clone();
        let seed = cfg.run.seed;
        let stream = cfg.users.offset;
        tokio::spawn(async move {
            let mut arrivals = Arrivals::new(seed, stream, rate);
            let mut next = Instant::now() + arrivals.next_gap();
            // Posts in flight, awaited at the end so that each is recorded before the summary.
            let mut posts = JoinSet::new();
            loop {
                tokio::select! {
                    _ = env.actions_stop.cancelled() => break,
                    _ = sleep_until(next) => {}
                    Some(_) = posts.join_next() => continue,
                }
                let intended = next;
                next += arrivals.next_gap();
                let (r, reply) = arrivals.post(env.config.behaviour.reply_fraction);
                // Arrivals wait for nothing: any lateness here is the generator's.
                env.recorder
                    .note_paced(r as u64, intended, intended, Instant::now());
                if let Some(s) = env.pick_session(r) {
                    // On the poster's load runtime, where its connections are.
                    let shard = env.shards.of(u64::from(s.local));
                    posts.spawn_on(user::post(env.clone(), s, intended, reply), shard);
                }
            }
            while posts.join_next().await.is_some() {}
        })
    });

    let mut tick = tokio::time::interval_at(start + cfg.run.interval, cfg.run.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut target_rx = shared.target_users.subscribe();
    let reason = loop {
        tokio::select! {
            _ = tick.tick() => shared.keep_interval(sink.flush_interval().map_err(results_err)?),
            _ = second.tick() => shared.sample_rates(),
            _ = sleep_until(end) => break StopReason::Completed,
            _ = shared.stop.cancelled() => break StopReason::Interrupted,
            Ok(()) = target_rx.changed() => {
                let (n, ramp) = *target_rx.borrow_and_update();
                let now = Instant::now();
                let adding = tokens.iter().take(n as usize).filter(|t| t.is_none()).count() as u64;
                let mut added = 0;
                for (local, slot) in tokens.iter_mut().enumerate() {
                    let want = (local as u64) < n;
                    match (want, slot.is_some()) {
                        // Removed while the run goes on: the user logs out (see `run_user`).
                        (false, true) => { if let Some(t) = slot.take() { t.cancel(); } }
                        (true, false) => {
                            let at = now + ramp_offset(added, adding, ramp);
                            added += 1;
                            *slot = Some(spawn_user(&mut users, local as u64, at));
                        }
                        _ => {}
                    }
                }
            }
            Some(_) = users.join_next() => {}
        }
    };
    *shared.state.lock() = RunState::Stopping;
    // Stop new actions, let posts in flight be answered and delivered, then disconnect.
    env.actions_stop.cancel();
    if let Some(d) = dispatcher {
        let _ = d.await;
    }
    let grace_end = Instant::now() + DELIVERY_GRACE;
    loop {
        tokio::select! {
            _ = tick.tick() => shared.keep_interval(sink.flush_interval().map_err(results_err)?),
            _ = sleep_until(grace_end) => break,
        }
    }
    all_users.cancel();
    while probes.join_next().await.is_some() {}
    let drain = async { while users.join_next().await.is_some() {} };
    if tokio::time::timeout(cfg.target.request_timeout + Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("some users did not stop in time; their last actions are not recorded");
        users.abort_all();
    }
    Ok(reason)
}
