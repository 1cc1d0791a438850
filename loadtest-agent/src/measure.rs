//! Measurement: every action's service time (sent → answered) and response time (intended start
//! from the schedule → answered, so an agent or server that falls behind cannot hide it), start
//! lag and late actions, errors by class, and end-to-end delivery of posts.
//!
//! Delivery: each post carries `props.lt_id` (`{agent}-{n}`) and `props.lt_sent_at` (Unix ms).
//! Before sending, the sender snapshots which users *of this agent* are members of the channel
//! and connected; they are the expected receivers, counted when the post is acknowledged. A
//! receiver's first `posted` for it counts as received (latency measured on this agent's
//! monotonic clock), a repeat as duplicate. An acknowledged post older than the grace period is
//! settled: whatever did not arrive is missing.
//!
//! Posts from other agents of the same run (`props.lt_run` equal to this run, another agent's
//! `lt_id` prefix) are *remote*: a receiver's first receipt counts in `remote_received`, with
//! latency (now − own clock offset) − `props.lt_sent_at_ref` (the send time in the coordinator's
//! clock), clamped at zero. Nothing is expected or missing for them (their expected receivers are
//! unknown here), and a bounded ring of recent remote ids per receiver drops repeats. Posts of
//! other runs or without the stamps are counted as events only.
//!
//! Recording is sharded by user to keep lock hold times short; the flusher takes all shards at
//! once together with the delivery lock, so "post acknowledged" and "deliveries expected" always
//! land in the same interval.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use loadtest_contract::results::{
    ActionStats, DeliveryStats, ErrorClass, ScheduleStats, LATE_THRESHOLD_MS,
};
use loadtest_contract::{Action, LatencyHistogram};
use parking_lot::Mutex;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Few shards: each holds a full set of histograms (~190 KB each at the contract's range and
/// precision), and two cores contend little.
const SHARDS: usize = 2;

/// Remote post ids remembered per receiver to drop repeated receipts (WebSocket replays after a
/// resume are recent, so a short ring suffices and memory stays bounded).
const REMOTE_RING: usize = 64;

#[derive(Default)]
struct Shard {
    actions: BTreeMap<Action, ActionStats>,
    schedule: ScheduleStats,
}

struct Pending {
    sent: Instant,
    /// Sorted local indexes of the expected receivers.
    expected: Vec<u32>,
    received: Vec<bool>,
    acked_at: Option<Instant>,
}

#[derive(Default)]
struct DeliveryState {
    pending: HashMap<u64, Pending>,
    /// Per receiver: the most recent remote post ids it received, as [`id_hash`]es (a repeat is
    /// looked for among them at every delivery).
    remote_seen: HashMap<u32, VecDeque<u64>>,
    interval: DeliveryStats,
    missing_total: u64,
}

/// Live counters for status, progress and Prometheus.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub active_users: AtomicI64,
    pub ws_connections: AtomicI64,
    /// `posted` events received (all, this interval); swapped to 0 by the flusher.
    pub posted_events: AtomicU64,
    pub posted_events_total: AtomicU64,
    /// WebSocket reconnects this interval; swapped to 0 by the flusher.
    pub reconnects: AtomicU64,
    pub reconnects_total: AtomicU64,
    /// Resumes the server could not honour (a new connection id: events were lost).
    pub resume_failures: AtomicU64,
    pub late_total: AtomicU64,
    /// Users removed from a running run that logged out.
    pub logouts: AtomicU64,
}

/// Cumulative histograms for "so far" figures (updated at each interval flush).
#[derive(Default)]
pub struct SoFar {
    pub response: LatencyHistogram,
    pub delivery: LatencyHistogram,
    pub lag: LatencyHistogram,
}

/// Prometheus metrics of the agent (served on `/metrics` in serve mode).
pub struct Metrics {
    pub registry: Registry,
    pub active_users: IntGauge,
    pub ws_connections: IntGauge,
    pub requests: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub late_actions: IntCounter,
    pub reconnects: IntCounter,
    pub schedule_lag_p99_seconds: prometheus::Gauge,
    /// Response time (from the intended start) of successful actions, by action.
    pub response: prometheus::HistogramVec,
    /// Delivery latency of this agent's own posts to its receivers.
    pub delivery: prometheus::Histogram,
    /// Tasks alive on the runtime (one per simulated user plus a few).
    pub runtime_tasks: IntGauge,
    pub runtime_workers: IntGauge,
    /// Series of the hot paths, looked up once each: a lookup by label values hashes them under
    /// a lock, on every request and every delivery.
    series: Series,
}

/// Handles of labelled series, filled on first use (so `/metrics` lists only series in use).
#[derive(Default)]
struct Series {
    /// By action and outcome (`STATUSES` order).
    requests: [[OnceLock<IntCounter>; 6]; Action::ALL.len()],
    response: [OnceLock<prometheus::Histogram>; Action::ALL.len()],
    /// By kind (`DELIVERY_KINDS` order).
    deliveries: [OnceLock<IntCounter>; 5],
}

/// The `kind` labels of `loadtest_agent_deliveries_total`.
const DELIVERY_KINDS: [&str; 5] = [
    "expected",
    "received",
    "duplicate",
    "missing",
    "remote_received",
];

/// A delivery kind of `loadtest_agent_deliveries_total`.
#[derive(Clone, Copy)]
enum Kind {
    Expected,
    Received,
    Duplicate,
    Missing,
    RemoteReceived,
}

/// Histogram buckets of the agent's latency metrics, seconds (dashboards take p99 from them;
/// the results' HDR histograms stay the exact figures).
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers a metric whose definition is a constant: only a programming error can fail here.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<C>,
) -> C {
    let c = made.unwrap_or_else(|e| unreachable!("metric definition: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn latency_opts(name: &str, help: &str) -> prometheus::HistogramOpts {
    prometheus::HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Metric definitions are constants; registration only fails on duplicates, which a fresh
        // registry cannot have.
        let gauge = |n: &str, h: &str| {
            let g = IntGauge::new(n, h).unwrap_or_else(|e| unreachable!("metric {n}: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let counter = |n: &str, h: &str| {
            let c = IntCounter::new(n, h).unwrap_or_else(|e| unreachable!("metric {n}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let counter_vec = |n: &str, h: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(n, h), labels)
                .unwrap_or_else(|e| unreachable!("metric {n}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let m = Self {
            active_users: gauge("loadtest_agent_active_users", "Simulated users running"),
            ws_connections: gauge(
                "loadtest_agent_websocket_connections",
                "Authenticated WebSocket connections",
            ),
            requests: counter_vec(
                "loadtest_agent_requests_total",
                "Actions by name and outcome (ok, timeout, connect, 4xx, 5xx, protocol)",
                &["action", "status"],
            ),
            deliveries: counter_vec(
                "loadtest_agent_deliveries_total",
                "Post deliveries to this agent's users (expected, received, duplicate, missing, remote_received)",
                &["kind"],
            ),
            late_actions: counter(
                "loadtest_agent_late_actions_total",
                "Actions that started more than 100 ms after their intended time",
            ),
            reconnects: counter("loadtest_agent_reconnects_total", "WebSocket reconnects"),
            schedule_lag_p99_seconds: registered(
                &registry,
                prometheus::Gauge::new(
                    "loadtest_agent_schedule_lag_p99_seconds",
                    "p99 of action start lag over the last interval",
                ),
            ),
            response: registered(
                &registry,
                prometheus::HistogramVec::new(
                    latency_opts(
                        "loadtest_agent_response_seconds",
                        "Response time of successful actions from their intended start, by action",
                    ),
                    &["action"],
                ),
            ),
            delivery: registered(
                &registry,
                prometheus::Histogram::with_opts(latency_opts(
                    "loadtest_agent_delivery_seconds",
                    "Delivery latency of this agent's posts to its own receivers",
                )),
            ),
            runtime_tasks: gauge(
                "loadtest_agent_runtime_alive_tasks",
                "Tasks alive on the load runtimes (one per simulated user plus a few)",
            ),
            runtime_workers: gauge(
                "loadtest_agent_runtime_workers",
                "Load runtimes (one thread each) the simulated users run on",
            ),
            series: Series::default(),
            registry: {
                let _ = registry.register(Box::new(process_metrics::ProcessCollector::for_self()));
                registry
            },
        };
        // Every delivery kind reads 0 rather than missing (dashboards, alerts).
        for kind in DELIVERY_KINDS {
            m.deliveries.with_label_values(&[kind]);
        }
        m
    }

    /// `loadtest_agent_requests_total` of `action` with outcome `class`.
    fn requests(&self, action: Action, class: Option<ErrorClass>) -> &IntCounter {
        let status = status_index(class);
        self.series.requests[action as usize][status].get_or_init(|| {
            self.requests
                .with_label_values(&[action.name(), STATUSES[status]])
        })
    }

    /// `loadtest_agent_response_seconds` of `action`.
    fn response_of(&self, action: Action) -> &prometheus::Histogram {
        self.series.response[action as usize]
            .get_or_init(|| self.response.with_label_values(&[action.name()]))
    }

    /// `loadtest_agent_deliveries_total` of `kind`.
    fn deliveries_of(&self, kind: Kind) -> &IntCounter {
        self.series.deliveries[kind as usize].get_or_init(|| {
            self.deliveries
                .with_label_values(&[DELIVERY_KINDS[kind as usize]])
        })
    }

    pub fn render(&self) -> String {
        // The load runtimes', not the caller's (the control API answers from a runtime of its own).
        if let Ok(shards) = crate::shards::get() {
            self.runtime_tasks.set(shards.alive_tasks() as i64);
            self.runtime_workers.set(shards.len() as i64);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `status` labels of `loadtest_agent_requests_total`.
const STATUSES: [&str; 6] = ["ok", "timeout", "connect", "4xx", "5xx", "protocol"];

fn status_index(class: Option<ErrorClass>) -> usize {
    match class {
        None => 0,
        Some(ErrorClass::Timeout) => 1,
        Some(ErrorClass::Connect) => 2,
        Some(ErrorClass::Http4xx) => 3,
        Some(ErrorClass::Http5xx) => 4,
        Some(ErrorClass::Protocol) => 5,
    }
}

/// A post id as 64 bits: two ids among a receiver's last [`REMOTE_RING`] that hash alike
/// (about one chance in 10^17 per delivery) would count one delivery as a repeat.
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// What one receipt meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    First,
    Duplicate,
    /// A post of this agent to a user that was not expected (connected after the snapshot).
    Unexpected,
    /// Not a post of this agent (or already settled), nor a measurable remote one.
    Foreign,
    /// First receipt of a post of another agent of the same run.
    RemoteFirst,
    /// Repeated receipt of a remote post (not counted).
    RemoteDuplicate,
}

/// The measurement stamps of a received post (`props.lt_*`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stamp<'a> {
    pub lt_id: &'a str,
    pub lt_run: Option<&'a str>,
    /// Send time in the coordinator's clock, Unix ms.
    pub lt_sent_at_ref: Option<i64>,
}

/// The run a recorder measures: set once when the run starts.
#[derive(Debug)]
struct RunRef {
    run_id: String,
    clock_offset_ms: i64,
}

/// One interval's worth of statistics, taken by the flusher.
pub struct IntervalStats {
    pub actions: BTreeMap<String, ActionStats>,
    pub delivery: DeliveryStats,
    pub schedule: ScheduleStats,
}

/// The agent's recorder, shared by all users of a run.
pub struct Recorder {
    agent_id: String,
    prefix: String,
    shards: Vec<Mutex<Shard>>,
    deliveries: Mutex<DeliveryState>,
    next_post: AtomicU64,
    run: OnceLock<RunRef>,
    pub counters: Counters,
    pub so_far: Mutex<SoFar>,
    pub metrics: Metrics,
    /// Timer lateness of the idle probe task since the last interval.
    probe: Mutex<LatencyHistogram>,
}

impl Recorder {
    pub fn new(agent_id: &str) -> Self {
        Self {
            agent_id: agent_id.to_string(),
            prefix: format!("{agent_id}-"),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            deliveries: Mutex::new(DeliveryState::default()),
            next_post: AtomicU64::new(1),
            run: OnceLock::new(),
            counters: Counters::default(),
            so_far: Mutex::new(SoFar::default()),
            metrics: Metrics::new(),
            probe: Mutex::new(LatencyHistogram::new()),
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Sets the run this recorder measures (the first call wins): remote posts are recognised by
    /// `run_id`, and `clock_offset_ms` (agent − coordinator clock) converts to coordinator time.
    pub fn set_run(&self, run_id: &str, clock_offset_ms: i64) {
        let _ = self.run.set(RunRef {
            run_id: run_id.to_string(),
            clock_offset_ms,
        });
    }

    /// The run id stamped into posts (empty before [`Recorder::set_run`]).
    pub fn run_id(&self) -> &str {
        self.run.get().map_or("", |r| r.run_id.as_str())
    }

    /// Agent clock minus coordinator clock, milliseconds (0 before [`Recorder::set_run`]).
    pub fn clock_offset_ms(&self) -> i64 {
        self.run.get().map_or(0, |r| r.clock_offset_ms)
    }

    /// A `posted` event with measurement stamps reached local user `receiver`: a post of this
    /// agent goes to [`Recorder::receipt`], one of another agent of the same run is a remote
    /// receipt, anything else is foreign.
    pub fn receipt_stamped(&self, stamp: Stamp<'_>, receiver: u32) -> Receipt {
        let own = stamp
            .lt_id
            .strip_prefix(&self.prefix)
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if own {
            return self.receipt(stamp.lt_id, receiver);
        }
        let (Some(run), Some(lt_run), Some(sent_ref)) =
            (self.run.get(), stamp.lt_run, stamp.lt_sent_at_ref)
        else {
            return Receipt::Foreign;
        };
        if lt_run != run.run_id || run.run_id.is_empty() {
            return Receipt::Foreign;
        }
        let now_ref = loadtest_contract::now_ms() - run.clock_offset_ms;
        let latency_ms = u64::try_from(now_ref.saturating_sub(sent_ref)).unwrap_or(0);
        let first = {
            let mut d = self.deliveries.lock();
            let d = &mut *d;
            let ring = d.remote_seen.entry(receiver).or_default();
            let id = id_hash(stamp.lt_id);
            if ring.contains(&id) {
                false
            } else {
                if ring.len() >= REMOTE_RING {
                    ring.pop_front();
                }
                ring.push_back(id);
                d.interval.remote_received += 1;
                d.interval
                    .remote_latency
                    .record_us(latency_ms.saturating_mul(1000));
                true
            }
        };
        if first {
            self.metrics.deliveries_of(Kind::RemoteReceived).inc();
            Receipt::RemoteFirst
        } else {
            Receipt::RemoteDuplicate
        }
    }

    fn note_schedule(shard: &mut Shard, intended: Instant, started: Instant) -> bool {
        let lag = started.saturating_duration_since(intended);
        shard.schedule.actions += 1;
        shard.schedule.lag.record(lag);
        let late = lag > Duration::from_millis(LATE_THRESHOLD_MS);
        if late {
            shard.schedule.late += 1;
        }
        late
    }

    /// Notes a paced action the runtime got to at `now`: `ready` is when it could have started
    /// (its intended time, or the user's previous answer if that came later). The wait for the
    /// previous answer is the server's; `now − ready` is the generator's own delay.
    pub fn note_paced(&self, key: u64, intended: Instant, ready: Instant, now: Instant) {
        let mut shard = self.shards[key as usize % SHARDS].lock();
        shard
            .schedule
            .generator_lag
            .record(now.saturating_duration_since(ready));
        if ready.saturating_duration_since(intended) > Duration::from_millis(LATE_THRESHOLD_MS) {
            shard.schedule.late_waiting += 1;
        }
    }

    /// Records one wake-up of the idle probe task: how late its timer fired.
    pub fn note_probe(&self, lateness: Duration) {
        self.probe.lock().record(lateness);
    }

    /// Counts a success with its service time (sent → answered) and response time (intended
    /// start → answered).
    fn note_ok(stats: &mut ActionStats, intended: Instant, started: Instant, end: Instant) {
        stats.ok += 1;
        stats
            .service_time
            .record(end.saturating_duration_since(started));
        stats
            .response_time
            .record(end.saturating_duration_since(intended));
    }

    fn observe_response(&self, action: Action, d: Duration) {
        self.metrics.response_of(action).observe(d.as_secs_f64());
    }

    fn count(&self, action: Action, class: Option<ErrorClass>, late: bool) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if class.is_some() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        if late {
            self.counters.late_total.fetch_add(1, Ordering::Relaxed);
            self.metrics.late_actions.inc();
        }
        self.metrics.requests(action, class).inc();
    }

    /// Records one attempted action. `intended` is the schedule's start, `started` when it was
    /// actually sent, and the outcome is its end time or its error class.
    pub fn record(
        &self,
        key: u64,
        action: Action,
        intended: Instant,
        started: Instant,
        outcome: Result<Instant, ErrorClass>,
    ) {
        let late;
        {
            let mut shard = self.shards[key as usize % SHARDS].lock();
            late = Self::note_schedule(&mut shard, intended, started);
            let stats = shard.actions.entry(action).or_default();
            match outcome {
                Ok(end) => Self::note_ok(stats, intended, started, end),
                Err(class) => stats.errors.count(class),
            }
        }
        if let Ok(end) = outcome {
            self.observe_response(action, end.saturating_duration_since(intended));
        }
        self.count(action, outcome.err(), late);
    }

    /// Registers a post about to be sent; returns its number and its `lt_id`.
    pub fn begin_post(&self, mut expected: Vec<u32>) -> (u64, String) {
        let n = self.next_post.fetch_add(1, Ordering::Relaxed);
        expected.sort_unstable();
        expected.dedup();
        let received = vec![false; expected.len()];
        self.deliveries.lock().pending.insert(
            n,
            Pending {
                sent: Instant::now(),
                expected,
                received,
                acked_at: None,
            },
        );
        (n, format!("{}{n}", self.prefix))
    }

    /// The post was not acknowledged: nobody is owed it.
    pub fn abandon_post(&self, n: u64) {
        self.deliveries.lock().pending.remove(&n);
    }

    /// Records an acknowledged post: the action's success and its expected deliveries, together.
    pub fn record_post_ok(
        &self,
        key: u64,
        intended: Instant,
        started: Instant,
        end: Instant,
        n: u64,
    ) {
        let late;
        let expected;
        {
            let mut shard = self.shards[key as usize % SHARDS].lock();
            late = Self::note_schedule(&mut shard, intended, started);
            let stats = shard.actions.entry(Action::CreatePost).or_default();
            Self::note_ok(stats, intended, started, end);
            let mut d = self.deliveries.lock();
            expected = match d.pending.get_mut(&n) {
                Some(p) => {
                    p.acked_at = Some(end);
                    p.expected.len() as u64
                }
                None => 0,
            };
            d.interval.expected += expected;
        }
        self.metrics.deliveries_of(Kind::Expected).inc_by(expected);
        self.observe_response(Action::CreatePost, end.saturating_duration_since(intended));
        self.count(Action::CreatePost, None, late);
    }

    /// Counts a `posted` event (any post, measured or not).
    pub fn posted_event(&self) {
        self.counters.posted_events.fetch_add(1, Ordering::Relaxed);
        self.counters
            .posted_events_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A `posted` event for `lt_id` reached local user `receiver`.
    pub fn receipt(&self, lt_id: &str, receiver: u32) -> Receipt {
        let Some(n) = lt_id
            .strip_prefix(&self.prefix)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Receipt::Foreign;
        };
        let now = Instant::now();
        let mut first_latency = None;
        let outcome = {
            let mut d = self.deliveries.lock();
            let d = &mut *d;
            match d.pending.get_mut(&n) {
                None => Receipt::Foreign,
                Some(p) => match p.expected.binary_search(&receiver) {
                    Err(_) => Receipt::Unexpected,
                    Ok(i) if p.received[i] => {
                        d.interval.duplicate += 1;
                        Receipt::Duplicate
                    }
                    Ok(i) => {
                        p.received[i] = true;
                        d.interval.received += 1;
                        let latency = now.saturating_duration_since(p.sent);
                        d.interval.latency.record(latency);
                        first_latency = Some(latency);
                        Receipt::First
                    }
                },
            }
        };
        if let Some(latency) = first_latency {
            self.metrics.delivery.observe(latency.as_secs_f64());
        }
        match outcome {
            Receipt::First => self.metrics.deliveries_of(Kind::Received).inc(),
            Receipt::Duplicate => self.metrics.deliveries_of(Kind::Duplicate).inc(),
            _ => {}
        }
        outcome
    }

    /// Settles acknowledged posts older than `grace` (all of them when `grace` is zero): every
    /// expected delivery not received by then is missing. Returns the newly missing count.
    pub fn settle(&self, grace: Duration, unacked_limit: Duration) -> u64 {
        let now = Instant::now();
        let mut d = self.deliveries.lock();
        let mut missing = 0;
        d.pending.retain(|_, p| match p.acked_at {
            Some(at) if grace.is_zero() || now.saturating_duration_since(at) >= grace => {
                missing += p.received.iter().filter(|r| !**r).count() as u64;
                false
            }
            Some(_) => true,
            // A post whose request never finished (cancelled): owed to nobody.
            None => grace.is_zero() || now.saturating_duration_since(p.sent) < unacked_limit,
        });
        d.missing_total += missing;
        drop(d);
        self.metrics.deliveries_of(Kind::Missing).inc_by(missing);
        missing
    }

    pub fn missing_total(&self) -> u64 {
        self.deliveries.lock().missing_total
    }

    pub fn pending_posts(&self) -> usize {
        self.deliveries.lock().pending.len()
    }

    /// Takes the statistics recorded since the last call. Each shard's lock is held only to
    /// swap its contents out (merging happens after): the users' threads record under these
    /// locks, and a load runtime whose thread waits for one waits with all its users.
    pub fn take_interval(&self) -> IntervalStats {
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        let mut d = self.deliveries.lock();
        let delivery = std::mem::take(&mut d.interval);
        drop(d);
        let taken: Vec<Shard> = guards
            .iter_mut()
            .map(|g| std::mem::take(&mut **g))
            .collect();
        drop(guards);
        let mut actions: BTreeMap<String, ActionStats> = BTreeMap::new();
        let mut schedule = ScheduleStats::default();
        for shard in taken {
            for (a, s) in shard.actions {
                // Same bucket layout everywhere: merging cannot fail.
                let _ = actions.entry(a.name().to_string()).or_default().merge(&s);
            }
            let _ = schedule.merge(&shard.schedule);
        }
        schedule.probe_lag = std::mem::take(&mut *self.probe.lock());
        IntervalStats {
            actions,
            delivery,
            schedule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_time_counts_from_the_intended_start() {
        let r = Recorder::new("a");
        let intended = Instant::now();
        let started = intended + Duration::from_millis(300);
        let end = started + Duration::from_millis(10);
        r.record(0, Action::SwitchChannel, intended, started, Ok(end));
        r.record(
            1,
            Action::SwitchChannel,
            intended,
            intended,
            Err(ErrorClass::Http5xx),
        );
        let i = r.take_interval();
        let s = &i.actions["switch_channel"];
        assert_eq!((s.ok, s.errors.http_5xx), (1, 1));
        assert!((9_900..10_100).contains(&s.service_time.max_us()));
        assert!((309_000..311_000).contains(&s.response_time.max_us()));
        assert_eq!((i.schedule.actions, i.schedule.late), (2, 1));
        // Taken: the next interval starts empty.
        assert!(r.take_interval().actions.is_empty());
    }

    #[test]
    fn deliveries_first_duplicate_missing_and_foreign() {
        let r = Recorder::new("agent-7");
        let (n, id) = r.begin_post(vec![3, 1, 2]);
        assert_eq!(id, format!("agent-7-{n}"));
        let t = Instant::now();
        r.record_post_ok(0, t, t, t, n);
        assert_eq!(r.receipt(&id, 1), Receipt::First);
        assert_eq!(r.receipt(&id, 1), Receipt::Duplicate);
        assert_eq!(r.receipt(&id, 3), Receipt::First);
        assert_eq!(r.receipt(&id, 9), Receipt::Unexpected);
        assert_eq!(r.receipt("agent-8-1", 1), Receipt::Foreign);
        let i = r.take_interval();
        assert_eq!(
            (
                i.delivery.expected,
                i.delivery.received,
                i.delivery.duplicate
            ),
            (3, 2, 1)
        );
        assert_eq!(i.actions["create_post"].ok, 1);
        // Not yet old enough, then settled: user 2 never got it.
        assert_eq!(
            r.settle(Duration::from_secs(60), Duration::from_secs(60)),
            0
        );
        assert_eq!(r.settle(Duration::ZERO, Duration::ZERO), 1);
        assert_eq!(r.missing_total(), 1);
        assert_eq!(r.pending_posts(), 0);
        let (n2, _) = r.begin_post(vec![1]);
        r.abandon_post(n2);
        assert_eq!(r.pending_posts(), 0);
    }

    #[test]
    fn remote_receipts_are_counted_once_with_offset_corrected_latency() {
        let r = Recorder::new("agent-1");
        // This agent's clock is 5 s ahead of the coordinator's.
        r.set_run("run-9", 5_000);
        let sent_ref = loadtest_contract::now_ms() - 5_000 - 200;
        let stamp = |id, run| Stamp {
            lt_id: id,
            lt_run: Some(run),
            lt_sent_at_ref: Some(sent_ref),
        };
        assert_eq!(
            r.receipt_stamped(stamp("agent-2-1", "run-9"), 4),
            Receipt::RemoteFirst
        );
        assert_eq!(
            r.receipt_stamped(stamp("agent-2-1", "run-9"), 4),
            Receipt::RemoteDuplicate
        );
        assert_eq!(
            r.receipt_stamped(stamp("agent-2-1", "run-9"), 5),
            Receipt::RemoteFirst
        );
        // Another run, or no stamps (preloaded posts): ignored.
        assert_eq!(
            r.receipt_stamped(stamp("agent-2-2", "run-8"), 4),
            Receipt::Foreign
        );
        let bare = Stamp {
            lt_id: "agent-2-3",
            ..Stamp::default()
        };
        assert_eq!(r.receipt_stamped(bare, 4), Receipt::Foreign);
        // A send time in the future (clock error) clamps at zero rather than failing.
        let future = Stamp {
            lt_sent_at_ref: Some(sent_ref + 60_000),
            ..stamp("agent-2-4", "run-9")
        };
        assert_eq!(r.receipt_stamped(future, 4), Receipt::RemoteFirst);
        // The ring is bounded.
        for k in 0..(REMOTE_RING as u64 * 2) {
            let id = format!("agent-3-{k}");
            let s = Stamp {
                lt_id: &id,
                lt_run: Some("run-9"),
                lt_sent_at_ref: Some(sent_ref),
            };
            r.receipt_stamped(s, 6);
        }
        assert_eq!(r.deliveries.lock().remote_seen[&6].len(), REMOTE_RING);
        let i = r.take_interval();
        let d = &i.delivery;
        assert_eq!(d.remote_received, 3 + REMOTE_RING as u64 * 2);
        assert_eq!(
            (d.expected, d.received, d.missing, d.duplicate),
            (0, 0, 0, 0)
        );
        let p50 = d.remote_latency.quantile_us(0.5);
        assert!((150_000..1_000_000).contains(&p50), "{p50}");
        assert!(d.remote_latency.min_us() <= 1, "clamped sample");
    }

    #[test]
    fn metrics_render() {
        let r = Recorder::new("a");
        let t = Instant::now();
        r.record(0, Action::CheckUnreads, t, t, Ok(t));
        let text = r.metrics.render();
        assert!(
            text.contains(
                "loadtest_agent_requests_total{action=\"check_unreads\",status=\"ok\"} 1"
            ),
            "{text}"
        );
    }
}
