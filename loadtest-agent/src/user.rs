//! One simulated user: one tokio task that logs in once (keeping the token), holds one WebSocket
//! (reading every event, answering pings, resuming after drops with capped, jittered backoff) and
//! acts on its schedule. An HTTP action in flight is polled by the same task beside the WebSocket,
//! so events keep being read while a request waits; the user still waits for its action to finish
//! before the next one (a closed loop), and an action that starts after its intended time is
//! recorded as lag.
//!
//! State is bounded: the user's channel ids, the current channel, the last few post ids seen
//! there and the oldest post id loaded (for "read more").

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use loadtest_contract::results::ErrorClass;
use loadtest_contract::workload::WorkloadConfig;
use loadtest_contract::{now_ms, Action};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use serde_json::json;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::cancel::Cancelled;
use crate::client::{Api, ApiError, NewPost, Page, NEWEST_KEPT};
use crate::dataset::Layout;
use crate::measure::{Recorder, Stamp};
use crate::net::SourceAddrs;
use crate::schedule::{Pacer, UserSchedule};
use crate::ws::{self, SeqOutcome, SeqTracker, Ws, WsError, WsTarget};

/// Posts kept per user for replies and reactions.
const RECENT_POSTS: usize = NEWEST_KEPT;
/// Posts fetched per page when viewing a channel or reading back.
const PAGE: u32 = 30;
const EMOJIS: [&str; 6] = ["thumbsup", "smile", "tada", "eyes", "heart", "rocket"];
const STATUSES: [&str; 3] = ["online", "away", "dnd"];

/// Everything the users of one run share.
pub struct UserEnv {
    pub api: Api,
    /// The load runtimes users run on (see [`crate::shards`]).
    pub shards: &'static crate::shards::Shards,
    pub ws: WsTarget,
    pub sources: SourceAddrs,
    pub layout: Layout,
    pub config: WorkloadConfig,
    pub recorder: Arc<Recorder>,
    /// Data-set index of local user 0.
    pub first_index: u64,
    /// Connected (authenticated WebSocket) flag per local user.
    pub live: Vec<AtomicBool>,
    /// Channel id → local users that are members (from the layout).
    pub members: Mutex<HashMap<String, Vec<u32>>>,
    /// Sessions by local index, for the open model's post dispatcher.
    pub sessions: Mutex<Vec<Option<Arc<Session>>>>,
    pub directory: Directory,
    /// Cancelled when the run stops scheduling actions (WebSockets stay open for the grace period).
    pub actions_stop: CancellationToken,
}

impl UserEnv {
    /// Local members of `channel_id` connected right now: the receivers a post there is owed to.
    pub fn live_members(&self, channel_id: &str) -> Vec<u32> {
        self.members
            .lock()
            .get(channel_id)
            .map(|m| {
                m.iter()
                    .copied()
                    .filter(|l| self.live[*l as usize].load(Ordering::Relaxed))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_live(&self, local: u32, live: bool) {
        let was = self.live[local as usize].swap(live, Ordering::Relaxed);
        if was != live {
            let d = if live { 1 } else { -1 };
            self.recorder
                .counters
                .ws_connections
                .fetch_add(d, Ordering::Relaxed);
            self.recorder.metrics.ws_connections.add(d);
        }
    }

    /// Live sessions, for the open model.
    pub fn pick_session(&self, r: usize) -> Option<Arc<Session>> {
        let sessions = self.sessions.lock();
        let n = sessions.len();
        if n == 0 {
            return None;
        }
        // Start at a random slot and take the first live user with channels.
        (0..n)
            .map(|k| (r + k) % n)
            .find_map(|i| {
                sessions[i].as_ref().filter(|s| {
                    !s.channels.is_empty() && self.live[s.local as usize].load(Ordering::Relaxed)
                })
            })
            .cloned()
    }
}

/// Name → id resolution, once per name for the whole agent (ids never change during a run).
#[derive(Default)]
pub struct Directory {
    cells: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<String>>>>,
}

impl Directory {
    pub async fn resolve<F>(&self, key: String, lookup: F) -> Result<String, ApiError>
    where
        F: std::future::Future<Output = Result<String, ApiError>>,
    {
        let cell = self.cells.lock().entry(key).or_default().clone();
        cell.get_or_try_init(|| lookup).await.cloned()
    }
}

/// What a user keeps between actions.
#[derive(Default)]
pub struct UserState {
    pub current: usize,
    /// (post id, root id) of recent posts in the current channel, newest last.
    pub recent: VecDeque<(String, String)>,
    /// Oldest post id loaded in the current channel, for reading back.
    pub oldest: Option<String>,
}

/// Copies `from` into the string `to` already is.
fn set(to: &mut String, from: &str) {
    to.clear();
    to.push_str(from);
}

impl UserState {
    /// Remembers a post the user saw, in the strings of the oldest one it forgets.
    fn remember(&mut self, id: &str, root_id: &str) {
        let mut slot = if self.recent.len() >= RECENT_POSTS {
            self.recent.pop_front().unwrap_or_default()
        } else {
            Default::default()
        };
        set(&mut slot.0, id);
        set(&mut slot.1, root_id);
        self.recent.push_back(slot);
    }

    /// Takes in a page: its newest posts replace the recent ones when `replace` (a channel
    /// opened, not scrolled back), and its oldest is where the next page back starts (or none:
    /// an opened channel without posts). The ids are copied into the strings the user already
    /// holds, so a page read costs no allocation once a user has read one.
    fn load_page(&mut self, page: &Page<'_>, replace: bool) {
        if replace {
            let newest = page.newest();
            self.recent.truncate(newest.len());
            self.recent.resize_with(newest.len(), Default::default);
            // Newest first in the page: remembered oldest-first.
            for (kept, (id, root)) in self.recent.iter_mut().zip(newest.iter().rev()) {
                set(&mut kept.0, id);
                set(&mut kept.1, root);
            }
        }
        match (&mut self.oldest, &page.oldest) {
            (Some(kept), Some(oldest)) => set(kept, oldest),
            (kept, Some(oldest)) => *kept = Some(oldest.to_string()),
            (kept, None) if replace => *kept = None,
            (_, None) => {}
        }
    }
}

/// A logged-in user.
pub struct Session {
    pub local: u32,
    pub index: u64,
    pub user_id: String,
    pub token: RwLock<Arc<str>>,
    pub team_id: String,
    pub channels: Vec<String>,
    pub state: Mutex<UserState>,
    /// Set when the server rejected the token; the user logs in again before its next action.
    pub stale: AtomicBool,
}

impl Session {
    fn token(&self) -> Arc<str> {
        self.token.read().clone()
    }
    fn slot(&self) -> usize {
        self.local as usize
    }
    fn current_channel(&self) -> Option<String> {
        let st = self.state.lock();
        self.channels.get(st.current).cloned()
    }
}

/// Capped exponential backoff with jitter: 100 ms doubling to 10 s, each wait in [½, 1]× so
/// thousands of users dropped together do not come back in lockstep.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.min(7));
    let capped = base.min(Duration::from_secs(10));
    capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// What a finished HTTP action reports back to its user.
pub struct Done {
    pub unauthorized: bool,
}

/// The choices of one action, drawn from the user's seeded schedule.
#[derive(Clone, Copy)]
enum Plan {
    Switch { to: usize },
    ReadMore,
    CheckUnreads,
    Post { reply: bool },
    React { emoji: &'static str, pick: usize },
    Status { status: &'static str },
}

fn class_of(r: &Result<(), ApiError>) -> Option<bool> {
    r.as_ref().err().map(|e| e.is_unauthorized())
}

/// Runs one HTTP action and records it.
async fn execute(env: Arc<UserEnv>, s: Arc<Session>, plan: Plan, intended: Instant) -> Done {
    if let Plan::Post { reply } = plan {
        // Boxed: a post's future is most of this one's size, and the read mix never posts.
        return Box::pin(post(env, s, intended, reply)).await;
    }
    let token = s.token();
    let slot = s.slot();
    let api = &env.api;
    let started = Instant::now();
    let (action, result): (Action, Result<(), ApiError>) = match plan {
        Plan::Switch { to } => {
            let (prev, next) = {
                let st = s.state.lock();
                (
                    s.channels.get(st.current).cloned(),
                    s.channels.get(to).cloned(),
                )
            };
            let r = match next {
                None => Ok(()),
                Some(ch) => {
                    // Like a client: load the channel's recent posts, then mark it viewed.
                    let loaded = api.channel_posts(slot, &token, &ch, None, PAGE, |page| {
                        let mut st = s.state.lock();
                        st.current = to;
                        st.load_page(page, true);
                    });
                    match loaded.await {
                        Ok(()) => {
                            api.view_channel(
                                slot,
                                &token,
                                &s.user_id,
                                &ch,
                                prev.as_deref().unwrap_or(""),
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            (Action::SwitchChannel, r)
        }
        Plan::ReadMore => {
            let (ch, before) = {
                let st = s.state.lock();
                (s.channels.get(st.current).cloned(), st.oldest.clone())
            };
            let r = match ch {
                None => Ok(()),
                Some(ch) => {
                    api.channel_posts(slot, &token, &ch, before.as_deref(), PAGE, |page| {
                        let mut st = s.state.lock();
                        if page.len == 0 {
                            // Reached the beginning: start over from the newest.
                            st.oldest = None;
                        } else {
                            st.load_page(page, false);
                        }
                    })
                    .await
                }
            };
            (Action::ReadMore, r)
        }
        Plan::CheckUnreads => (
            Action::CheckUnreads,
            api.channel_members_for_user(slot, &token, &s.user_id, &s.team_id)
                .await,
        ),
        Plan::React { emoji, pick } => {
            let target = {
                let st = s.state.lock();
                let n = st.recent.len();
                (n > 0).then(|| st.recent[pick % n].0.clone())
            };
            let target = match (target, s.current_channel()) {
                (Some(t), _) => Ok(Some(t)),
                // Nothing seen yet: load the channel first, as a client would have.
                (None, Some(ch)) => {
                    api.channel_posts(slot, &token, &ch, None, PAGE, |page| {
                        s.state.lock().load_page(page, true);
                        page.newest().first().map(|(id, _)| id.to_string())
                    })
                    .await
                }
                (None, None) => Ok(None),
            };
            let r = match target {
                Ok(Some(post_id)) => {
                    api.add_reaction(slot, &token, &s.user_id, &post_id, emoji)
                        .await
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            (Action::AddReaction, r)
        }
        Plan::Status { status } => (
            Action::UpdateStatus,
            api.update_status(slot, &token, &s.user_id, status).await,
        ),
        Plan::Post { .. } => unreachable!("handled above"),
    };
    let end = Instant::now();
    let unauthorized = class_of(&result).unwrap_or(false);
    if let Err(e) = &result {
        tracing::debug!(user = s.index, "{action}: {e}");
    }
    env.recorder.record(
        s.index,
        action,
        intended,
        started,
        result.map(|_| end).map_err(|e| e.class),
    );
    Done { unauthorized }
}

/// Creates a post stamped for delivery measurement. Also used by the open model's dispatcher.
pub async fn post(env: Arc<UserEnv>, s: Arc<Session>, intended: Instant, reply: bool) -> Done {
    let Some(channel) = s.current_channel() else {
        return Done {
            unauthorized: false,
        };
    };
    let root_id = if reply {
        let st = s.state.lock();
        st.recent
            .back()
            .map(|(id, root)| {
                if root.is_empty() {
                    id.clone()
                } else {
                    root.clone()
                }
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let token = s.token();
    let expected = env.live_members(&channel);
    let (n, lt_id) = env.recorder.begin_post(expected);
    let message = format!("load test message {n} from user {}", s.index);
    let started = Instant::now();
    let body = NewPost {
        channel_id: &channel,
        message: &message,
        root_id: &root_id,
        props: {
            let sent_at = now_ms();
            json!({
                "lt_id": lt_id,
                "lt_sent_at": sent_at,
                "lt_sent_at_ref": sent_at - env.recorder.clock_offset_ms(),
                "lt_run": env.recorder.run_id(),
            })
        },
    };
    match env.api.create_post(s.slot(), &token, &body).await {
        Ok(p) => {
            let end = Instant::now();
            env.recorder
                .record_post_ok(s.index, intended, started, end, n);
            s.state.lock().remember(&p.id, &p.root_id);
            Done {
                unauthorized: false,
            }
        }
        Err(e) => {
            env.recorder.abandon_post(n);
            tracing::debug!(user = s.index, "create_post: {e}");
            env.recorder
                .record(s.index, Action::CreatePost, intended, started, Err(e.class));
            Done {
                unauthorized: e.is_unauthorized(),
            }
        }
    }
}

/// Logs in and resolves the user's team and channel ids. Recorded as `login`.
async fn establish(
    env: &UserEnv,
    local: u32,
    index: u64,
    intended: Instant,
) -> Result<Session, ApiError> {
    let layout = &env.layout;
    let slot = local as usize;
    let started = Instant::now();
    let result: Result<Session, ApiError> = async {
        let login = env
            .api
            .login(
                slot,
                &layout.username(index),
                &env.config.dataset.user_password,
            )
            .await?;
        let token = login.token;
        let team_name = layout.team_name(layout.team_of(index));
        let team_id = env
            .directory
            .resolve(format!("t:{team_name}"), async {
                env.api
                    .team_by_name(slot, &token, &team_name)
                    .await
                    .map(|t| t.id)
            })
            .await?;
        let mut channels = Vec::new();
        for key in layout.channels_of(index) {
            let name = layout.channel_name(key);
            let id = env
                .directory
                .resolve(format!("c:{team_id}:{name}"), async {
                    env.api
                        .channel_by_name(slot, &token, &team_id, &name)
                        .await
                        .map(|c| c.id)
                })
                .await?;
            channels.push(id);
        }
        Ok(Session {
            local,
            index,
            user_id: login.user.id,
            token: RwLock::new(token.into()),
            team_id,
            channels,
            state: Mutex::new(UserState::default()),
            stale: AtomicBool::new(false),
        })
    }
    .await;
    let end = Instant::now();
    env.recorder.record(
        index,
        Action::Login,
        intended,
        started,
        result.as_ref().map(|_| end).map_err(|e| e.class),
    );
    result
}

/// The WebSocket side of the user task.
struct Conn {
    ws: Option<Ws>,
    /// What handling an event needs, apart from the socket it is read from.
    events: Events,
    client_seq: u64,
    failures: u32,
    /// When to try connecting again (and the intended time of that attempt).
    retry_at: Option<Instant>,
    connected_once: bool,
}

/// The state events update: sequence tracking and the unanswered `user_typing`.
#[derive(Default)]
struct Events {
    seq: SeqTracker,
    /// An unanswered `user_typing`: (seq, intended, started).
    typing: Option<(u64, Instant, Instant)>,
}

/// Reads the connection's next message and handles it where it lies in the read buffer;
/// `Ok(None)` once the connection closed. Cancel-safe.
async fn next_event(
    env: &UserEnv,
    s: &Session,
    ws: &mut Option<Ws>,
    events: &mut Events,
) -> std::io::Result<Option<()>> {
    match ws {
        Some(w) => w.recv(|text| handle_event(env, s, events, text)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// An HTTP action in flight. It runs inside the user's task rather than as a task of its own:
/// its answer wakes the user directly, and nothing is spawned, scheduled and joined per action.
type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

async fn finish(action: &mut Option<InFlight>) -> Done {
    match action {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

struct ActiveGuard<'a>(&'a Recorder);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.counters.active_users.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active_users.dec();
    }
}

/// The life of local user `local`: start at `start_at`, act until `cancel`.
pub async fn run_user(env: Arc<UserEnv>, local: u32, start_at: Instant, cancel: CancellationToken) {
    let index = env.first_index + u64::from(local);
    let mut sched = UserSchedule::new(&env.config.behaviour, env.config.run.seed, index);
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = sleep_until(start_at) => {}
    }
    env.recorder
        .counters
        .active_users
        .fetch_add(1, Ordering::Relaxed);
    env.recorder.metrics.active_users.inc();
    let _active = ActiveGuard(&env.recorder);

    // Log in, retrying with backoff: errors are counted, never fatal.
    let mut failures = 0;
    let mut intended = start_at;
    let session = loop {
        match Box::pin(establish(&env, local, index, intended)).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                tracing::debug!(user = index, "login: {e}");
                failures += 1;
                intended = Instant::now() + backoff(failures);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = sleep_until(intended) => {}
                }
            }
        }
    };
    {
        let mut members = env.members.lock();
        for ch in &session.channels {
            members.entry(ch.clone()).or_default().push(local);
        }
    }
    if !session.channels.is_empty() {
        session.state.lock().current = sched.pick(session.channels.len());
    }
    if let Some(slot) = env.sessions.lock().get_mut(local as usize) {
        *slot = Some(session.clone());
    }

    let mut conn = Conn {
        ws: None,
        events: Events::default(),
        client_seq: 1,
        failures: 0,
        retry_at: None,
        connected_once: false,
    };
    Box::pin(connect(
        &env,
        &session,
        &mut conn,
        Action::WsConnect,
        Instant::now(),
    ))
    .await;

    let mut pacer = Pacer::new(Instant::now() + sched.first_wait());
    let mut inflight: Option<InFlight> = None;
    // When the user's last action was answered: the next one cannot start before.
    let mut answered = Instant::now();
    let mut stopped = env.actions_stop.is_cancelled();
    // Made once and polled in place: a cancellation future or a timer made anew at every wake-up
    // (every event the socket brings) would register and unregister itself each time. The
    // cancellation asks its token only when the token woke the task (crate::cancel).
    let mut cancelled = Cancelled::new(cancel);
    let pace = sleep_until(pacer.due());
    tokio::pin!(pace);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            done = finish(&mut inflight) => {
                inflight = None;
                answered = Instant::now();
                if done.unauthorized {
                    session.stale.store(true, Ordering::Relaxed);
                }
            }
            msg = next_event(&env, &session, &mut conn.ws, &mut conn.events) => match msg {
                Ok(Some(())) => {}
                Err(e) => {
                    tracing::debug!(user = index, "websocket dropped: {e}");
                    lost(&env, &session, &mut conn);
                }
                Ok(None) => lost(&env, &session, &mut conn),
            },
            // After the action in flight: it runs in this task, so it waits while this one does.
            _ = sleep_opt(conn.retry_at), if inflight.is_none() => {
                let at = conn.retry_at.take().unwrap_or_else(Instant::now);
                if session.stale.load(Ordering::Relaxed) {
                    Box::pin(relogin(&env, &session, at)).await;
                }
                Box::pin(connect(&env, &session, &mut conn, Action::WsConnect, at)).await;
                answered = Instant::now();
            }
            _ = &mut pace, if inflight.is_none() && !stopped => {
                if env.actions_stop.is_cancelled() {
                    stopped = true;
                    continue;
                }
                let intended = pacer.advance(sched.next_wait());
                pace.as_mut().reset(pacer.due());
                env.recorder
                    .note_paced(index, intended, answered.max(intended), Instant::now());
                if session.stale.load(Ordering::Relaxed) {
                    let ok = Box::pin(relogin(&env, &session, intended)).await;
                    answered = Instant::now();
                    if !ok {
                        continue;
                    }
                }
                let Some(action) = sched.next_action() else {
                    // Nothing in the mix for users (open model with posts only): just listen.
                    pacer = Pacer::new(intended + Duration::from_secs(3600));
                    pace.as_mut().reset(pacer.due());
                    continue;
                };
                let n = session.channels.len();
                let plan = match action {
                    Action::WsReconnect => {
                        if conn.ws.is_some() {
                            Box::pin(planned_reconnect(&env, &session, &mut conn, intended)).await;
                            answered = Instant::now();
                        }
                        continue;
                    }
                    Action::SwitchChannel if n > 0 => {
                        let cur = session.state.lock().current;
                        let mut to = sched.pick(n);
                        if to == cur && n > 1 {
                            to = (to + 1) % n;
                        }
                        Plan::Switch { to }
                    }
                    Action::ReadMore if n > 0 => Plan::ReadMore,
                    Action::CheckUnreads => Plan::CheckUnreads,
                    Action::CreatePost if n > 0 => {
                        let b = &env.config.behaviour;
                        let typing = sched.chance(b.typing_fraction);
                        let reply = sched.chance(b.reply_fraction);
                        if typing {
                            Box::pin(send_typing(&env, &session, &mut conn, intended)).await;
                        }
                        Plan::Post { reply }
                    }
                    Action::AddReaction if n > 0 => Plan::React {
                        emoji: EMOJIS[sched.pick(EMOJIS.len())],
                        pick: sched.pick(RECENT_POSTS),
                    },
                    Action::UpdateStatus => Plan::Status {
                        status: STATUSES[sched.pick(STATUSES.len())],
                    },
                    // A user without channels has nothing to view or post in.
                    _ => continue,
                };
                inflight = Some(Box::pin(execute(env.clone(), session.clone(), plan, intended)));
            }
        }
    }
    // Boxed: the logout's request future would otherwise make every idle user's task as big.
    Box::pin(leave(&env, &session, conn, local, inflight)).await;
}

/// The end of a user: its action in flight recorded, its socket closed, its membership gone,
/// and (when the run goes on without it) its session logged out.
async fn leave(
    env: &UserEnv,
    session: &Session,
    mut conn: Conn,
    local: u32,
    inflight: Option<InFlight>,
) {
    let index = session.index;
    // Let an action in flight finish so that it is recorded.
    if let Some(h) = inflight {
        let _ = h.await;
    }
    // No post is owed to this user from now on.
    env.set_live(local, false);
    if let Some(mut w) = conn.ws.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
    }
    if let Some(slot) = env.sessions.lock().get_mut(local as usize) {
        *slot = None;
    }
    {
        let mut members = env.members.lock();
        for ch in &session.channels {
            if let Some(m) = members.get_mut(ch) {
                m.retain(|l| *l != local);
            }
        }
    }
    // Removed from a run that goes on (capacity search): leave as a real user does, so the
    // server holds no session for it. At the end of a run users just disconnect.
    if !env.actions_stop.is_cancelled() {
        let timeout = env.config.target.request_timeout;
        let r =
            tokio::time::timeout(timeout, env.api.logout(session.slot(), &session.token())).await;
        match r {
            Ok(Ok(())) => {
                env.recorder
                    .counters
                    .logouts
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::debug!(user = index, "logout: {e}"),
            Err(_) => tracing::debug!(user = index, "logout: no answer within {timeout:?}"),
        }
    }
}

/// Logs in again after the server rejected the token (for example after losing its sessions).
async fn relogin(env: &UserEnv, s: &Session, intended: Instant) -> bool {
    let started = Instant::now();
    let r = env
        .api
        .login(
            s.slot(),
            &env.layout.username(s.index),
            &env.config.dataset.user_password,
        )
        .await;
    let end = Instant::now();
    env.recorder.record(
        s.index,
        Action::Login,
        intended,
        started,
        r.as_ref().map(|_| end).map_err(|e| e.class),
    );
    match r {
        Ok(l) => {
            *s.token.write() = l.token.into();
            s.stale.store(false, Ordering::Relaxed);
            true
        }
        Err(_) => false,
    }
}

/// Connects (resuming when a previous connection existed) and records the attempt as `action`.
async fn connect(env: &UserEnv, s: &Session, conn: &mut Conn, action: Action, intended: Instant) {
    let resume = conn.events.seq.resume();
    let started = Instant::now();
    let r = ws::connect(&env.ws, env.sources.pick(), &s.token(), resume.as_ref()).await;
    let end = Instant::now();
    match r {
        Ok(c) => {
            env.recorder
                .record(s.index, action, intended, started, Ok(end));
            conn.ws = Some(c.ws);
            conn.client_seq = c.next_client_seq;
            conn.failures = 0;
            if conn.connected_once {
                env.recorder
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
                env.recorder
                    .counters
                    .reconnects_total
                    .fetch_add(1, Ordering::Relaxed);
                env.recorder.metrics.reconnects.inc();
            }
            conn.connected_once = true;
            // A resumed connection may not send a new hello: it is live once authenticated.
            if resume.is_some() {
                env.set_live(s.local, true);
            }
            for text in c.early {
                handle_event(env, s, &mut conn.events, &text);
            }
        }
        Err(e) => {
            tracing::debug!(user = s.index, "{action}: {e}");
            env.recorder
                .record(s.index, action, intended, started, Err(e.class()));
            if matches!(e, WsError::Auth(_)) {
                s.stale.store(true, Ordering::Relaxed);
            }
            conn.failures += 1;
            conn.retry_at = Some(Instant::now() + backoff(conn.failures));
        }
    }
}

/// The ws_reconnect action: drop the connection and resume it.
async fn planned_reconnect(env: &UserEnv, s: &Session, conn: &mut Conn, intended: Instant) {
    if let Some(mut w) = conn.ws.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
    }
    fail_typing(env, s, conn);
    env.set_live(s.local, false);
    connect(env, s, conn, Action::WsReconnect, intended).await;
}

fn fail_typing(env: &UserEnv, s: &Session, conn: &mut Conn) {
    if let Some((_, intended, started)) = conn.events.typing.take() {
        env.recorder.record(
            s.index,
            Action::UserTyping,
            intended,
            started,
            Err(ErrorClass::Connect),
        );
    }
}

/// The connection dropped: go offline and schedule a resume.
fn lost(env: &UserEnv, s: &Session, conn: &mut Conn) {
    conn.ws = None;
    fail_typing(env, s, conn);
    env.set_live(s.local, false);
    conn.retry_at = Some(Instant::now() + backoff(conn.failures));
}

async fn send_typing(env: &UserEnv, s: &Session, conn: &mut Conn, intended: Instant) {
    let (Some(w), Some(ch)) = (conn.ws.as_mut(), s.current_channel()) else {
        return;
    };
    // An unanswered earlier one is a protocol failure: the server answers every action.
    if let Some((_, i, st)) = conn.events.typing.take() {
        env.recorder
            .record(s.index, Action::UserTyping, i, st, Err(ErrorClass::Timeout));
    }
    let seq = conn.client_seq;
    conn.client_seq += 1;
    let started = Instant::now();
    match w.send_text(&ws::typing_frame(seq, &ch, "")).await {
        Ok(()) => conn.events.typing = Some((seq, intended, started)),
        Err(_) => {
            env.recorder.record(
                s.index,
                Action::UserTyping,
                intended,
                started,
                Err(ErrorClass::Connect),
            );
            lost(env, s, conn);
        }
    }
}

/// One message from the server, decoded where it lies: sequence tracking, the answer to a
/// `user_typing`, and for `posted` the delivery's receipt and the user's recent posts.
fn handle_event(env: &UserEnv, s: &Session, ev: &mut Events, text: &[u8]) {
    let f = match crate::frame::parse_frame(text) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(user = s.index, "unparsable frame: {e}");
            return;
        }
    };
    match ev.seq.observe(&f) {
        SeqOutcome::Hello { new_connection } => {
            env.set_live(s.local, true);
            if new_connection {
                // The server could not replay the gap: events were lost while disconnected.
                env.recorder
                    .counters
                    .resume_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        SeqOutcome::Gap(n) => tracing::debug!(user = s.index, "{n} events skipped"),
        _ => {}
    }
    if let (Some(reply), Some((seq, intended, started))) = (f.seq_reply, ev.typing) {
        if reply == seq {
            ev.typing = None;
            let outcome = if f.status.as_deref() == Some("OK") {
                Ok(Instant::now())
            } else {
                Err(ErrorClass::Protocol)
            };
            env.recorder
                .record(s.index, Action::UserTyping, intended, started, outcome);
        }
        return;
    }
    if f.event.as_deref() == Some("posted") {
        env.recorder.posted_event();
        // The post's text is unescaped into this thread's buffer, not a new one per event.
        thread_local! {
            static POST: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        POST.with_borrow_mut(|buf| {
            let p = match f.data.as_ref().and_then(|d| d.post(buf)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::debug!(user = s.index, "unreadable post: {e}");
                    return;
                }
                None => return,
            };
            if let Some(pr) = p.props.as_ref() {
                if let Some(lt_id) = pr.lt_id.as_deref() {
                    let stamp = Stamp {
                        lt_id,
                        lt_run: pr.lt_run.as_deref(),
                        lt_sent_at_ref: pr.lt_sent_at_ref,
                    };
                    env.recorder.receipt_stamped(stamp, s.local);
                }
            }
            let mut st = s.state.lock();
            if s.channels.get(st.current).map(String::as_str) == Some(&*p.channel_id) {
                st.remember(&p.id, &p.root_id);
            }
        });
        // A rare huge post (up to the 4 MiB message limit) does not stay allocated.
        POST.with_borrow_mut(|buf| {
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for f in 0..20 {
            let b = backoff(f);
            let cap = Duration::from_millis(100 * (1u64 << f.min(7))).min(Duration::from_secs(10));
            assert!(b >= cap / 2 && b <= cap, "{f}: {b:?} vs {cap:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(3)).collect();
        assert!(samples.len() > 1, "no jitter");
    }

    /// An idle user is its task's future plus its WebSocket buffers: keep the future small
    /// (rarely used, large futures such as connect and login are boxed).
    #[tokio::test]
    async fn an_idle_user_task_stays_small() {
        let config = WorkloadConfig::preset("quick").expect("preset");
        let env = Arc::new(UserEnv {
            api: Api::new("http://127.0.0.1:9", Duration::from_secs(1), &[], 1).expect("client"),
            shards: crate::shards::get().expect("shards"),
            ws: WsTarget {
                url: "ws://127.0.0.1:9/api/v4/websocket".into(),
                addr: "127.0.0.1:9".parse().expect("addr"),
                timeout: Duration::from_secs(1),
            },
            sources: SourceAddrs::default(),
            layout: Layout::new(&config.dataset),
            config,
            recorder: Arc::new(Recorder::new("a")),
            first_index: 0,
            live: vec![AtomicBool::new(false)],
            members: Mutex::new(HashMap::new()),
            sessions: Mutex::new(vec![None]),
            directory: Directory::default(),
            actions_stop: CancellationToken::new(),
        });
        let fut = run_user(env, 0, Instant::now(), CancellationToken::new());
        let size = std::mem::size_of_val(&fut);
        eprintln!("run_user future: {size} bytes");
        assert!(size < 3072, "run_user future is {size} bytes");
    }

    #[test]
    fn a_page_replaces_the_recent_posts_or_only_moves_the_oldest() {
        let mut st = UserState::default();
        let page = |json: &str, replace: bool, st: &mut UserState| {
            st.load_page(&Page::parse(json.as_bytes()).expect("page"), replace)
        };
        let recent =
            |st: &UserState| -> Vec<(String, String)> { st.recent.iter().cloned().collect() };
        page(
            r#"{"order":["c","b","a"],"posts":{"c":{"root_id":"a"}}}"#,
            true,
            &mut st,
        );
        let three = [("a", ""), ("b", ""), ("c", "a")].map(|(i, r)| (i.to_string(), r.to_string()));
        assert_eq!(recent(&st), three);
        assert_eq!(st.oldest.as_deref(), Some("a"));
        // Scrolling back moves only the oldest.
        page(r#"{"order":["z"],"posts":{}}"#, false, &mut st);
        assert_eq!(
            (recent(&st), st.oldest.as_deref()),
            (three.to_vec(), Some("z"))
        );
        // Another channel: fewer posts replace more; an empty one leaves nothing to page from.
        page(
            r#"{"order":["d"],"posts":{"d":{"root_id":"c"}}}"#,
            true,
            &mut st,
        );
        assert_eq!(recent(&st), [("d".to_string(), "c".to_string())]);
        page(r#"{"order":[],"posts":{}}"#, true, &mut st);
        assert!(st.recent.is_empty() && st.oldest.is_none());
    }

    #[test]
    fn user_state_is_bounded() {
        let mut st = UserState::default();
        for i in 0..100 {
            st.remember(&format!("p{i}"), "");
        }
        assert_eq!(st.recent.len(), RECENT_POSTS);
        assert_eq!(st.recent.back().map(|r| r.0.as_str()), Some("p99"));
    }
}
