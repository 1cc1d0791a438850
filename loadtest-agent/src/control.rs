//! The control API of `loadtest-agent serve`, as `ltops` drives it (paths and bodies in the
//! contract's `control` module). Every `/v1/*` request must carry `Authorization: Bearer
//! <token>`; anything else gets 401 and an `ErrorReply`. `GET /metrics` (Prometheus text) is open
//! so a scraper needs no secret, and exposes only counters; so is `GET /healthz` (`200 ok`), for
//! probes. With `--metrics-listen`, those two are also served on a listener of their own, so a
//! Prometheus on another host can scrape the agent while the control API stays on loopback.
//!
//! One run at a time: `POST /v1/run` stores a validated plan (state `ready`), `start` launches
//! it (optionally at a coordinator time corrected by the clock offset), `users` changes the
//! number of active users, `stop` ends it early, `status` reports, `results` returns the results
//! file, which lives at `{results_dir}/{run_id}-{agent_id}.jsonl`. `POST /v1/setup` creates the
//! data set in the background; `GET /v1/setup` reports its progress.
//!
//! The control API runs on a thread and a runtime of its own; the run and the setup run on the
//! caller's runtime (the "load runtime"). A box so full that the simulated users' tasks wait for
//! a core must still answer the coordinator's status polls, or the coordinator takes the agent
//! for lost and ends the test: a request here never waits behind thousands of user tasks, and an
//! idle thread that wakes is scheduled ahead of the busy load workers.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use loadtest_contract::control::{
    ClockReply, CreateRun, ErrorReply, IntervalsReply, RunState, RunStatus, SetUsers, SetupRequest,
    SetupState, SetupStatus, StartRun, PATH_CLOCK, PATH_HEALTH, PATH_INTERVALS, PATH_METRICS,
    PATH_RESULTS, PATH_RUN, PATH_SETUP, PATH_START, PATH_STATUS, PATH_STOP, PATH_USERS,
};
use loadtest_contract::now_ms;
use tokio::net::TcpListener;

use crate::measure::Recorder;
use crate::run::{start_run, RunHandle, RunPlan};

/// Settings of the control server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The shared secret every `/v1` request must present.
    pub token: String,
    /// Reported by `/v1/clock` (runs use the id `ltops` gives in `CreateRun`).
    pub agent_id: String,
    /// Where results files are written.
    pub results_dir: PathBuf,
}

enum Slot {
    Idle,
    Ready(Box<CreateRun>),
    Active { handle: RunHandle, path: PathBuf },
}

struct ControlState {
    cfg: ServeConfig,
    /// Where runs and setups are spawned: the caller's runtime, not the control API's own.
    load: tokio::runtime::Handle,
    slot: tokio::sync::Mutex<Slot>,
    /// The current (or last) run's recorder, for `/metrics`.
    recorder: parking_lot::Mutex<Option<Arc<Recorder>>>,
    setup: Arc<parking_lot::Mutex<SetupStatus>>,
}

type Reply = Result<Response, (StatusCode, Json<ErrorReply>)>;

fn error(status: StatusCode, msg: impl Into<String>) -> (StatusCode, Json<ErrorReply>) {
    (status, Json(ErrorReply { error: msg.into() }))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, (StatusCode, Json<ErrorReply>)> {
    b.map(|Json(t)| t)
        .map_err(|e| error(e.status(), e.body_text()))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<ControlState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    match presented {
        Some(t) if same(t.as_bytes(), st.cfg.token.as_bytes()) => next.run(req).await,
        Some(_) => error(StatusCode::UNAUTHORIZED, "wrong token").into_response(),
        None => error(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token> (the content of the agent's --token-file)",
        )
        .into_response(),
    }
}

fn status_of(st: &ControlState, slot: &Slot) -> RunStatus {
    match slot {
        Slot::Idle => RunStatus::idle(&st.cfg.agent_id),
        Slot::Ready(c) => RunStatus {
            state: RunState::Ready,
            run_id: Some(c.run_id.clone()),
            duration_ms: c.config.users.duration.as_millis() as u64,
            target_users: c.config.users.count,
            ..RunStatus::idle(&c.agent_id)
        },
        Slot::Active { handle, .. } => handle.status(),
    }
}

fn is_active(slot: &Slot) -> bool {
    match slot {
        Slot::Idle => false,
        Slot::Ready(_) => true,
        Slot::Active { handle, .. } => !handle.is_finished(),
    }
}

async fn clock(State(st): State<Arc<ControlState>>) -> Json<ClockReply> {
    Json(ClockReply {
        now_ms: now_ms(),
        agent_id: st.cfg.agent_id.clone(),
        version: crate::VERSION.into(),
    })
}

async fn create(
    State(st): State<Arc<ControlState>>,
    b: Result<Json<CreateRun>, JsonRejection>,
) -> Reply {
    let c = body(b)?;
    c.config
        .validate()
        .map_err(|(k, m)| error(StatusCode::BAD_REQUEST, format!("config: {k}: {m}")))?;
    crate::net::check_capacity(c.config.users.count).map_err(|m| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("users.count: {m}"),
        )
    })?;
    for (what, id) in [("run_id", &c.run_id), ("agent_id", &c.agent_id)] {
        if id.is_empty()
            || id.len() > 100
            || !id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            || id.starts_with('.')
        {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{what} must be 1-100 characters of a-z, A-Z, 0-9, -, _ and ."),
            ));
        }
    }
    let mut slot = st.slot.lock().await;
    if is_active(&slot) {
        return Err(error(
            StatusCode::CONFLICT,
            "a run is already active; stop it first",
        ));
    }
    *slot = Slot::Ready(Box::new(c));
    Ok(Json(status_of(&st, &slot)).into_response())
}

async fn start(
    State(st): State<Arc<ControlState>>,
    b: Result<Json<StartRun>, JsonRejection>,
) -> Reply {
    let s = body(b)?;
    let mut slot = st.slot.lock().await;
    let Slot::Ready(c) = &*slot else {
        return Err(error(
            StatusCode::CONFLICT,
            "no run is ready: POST /v1/run first",
        ));
    };
    let c = (**c).clone();
    let path = st
        .cfg
        .results_dir
        .join(format!("{}-{}.jsonl", c.run_id, c.agent_id));
    // The coordinator's time plus our offset from it is the moment on our clock.
    let start_at = s.start_at_ms.map(|at| {
        let wait = at + c.clock_offset_ms - now_ms();
        Instant::now() + Duration::from_millis(wait.clamp(0, 3_600_000) as u64)
    });
    let recorder = Arc::new(Recorder::new(&c.agent_id));
    let plan = RunPlan {
        run_id: c.run_id,
        agent_id: c.agent_id,
        config: c.config,
        total_users: c.total_users,
        agents: c.agents,
        clock_offset_ms: c.clock_offset_ms,
        results_path: path.clone(),
        initial_users: c.initial_users,
    };
    let handle = st
        .load
        .spawn(start_run(plan, start_at, recorder.clone()))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    *st.recorder.lock() = Some(recorder);
    *slot = Slot::Active { handle, path };
    Ok(Json(status_of(&st, &slot)).into_response())
}

async fn users(
    State(st): State<Arc<ControlState>>,
    b: Result<Json<SetUsers>, JsonRejection>,
) -> Reply {
    let u = body(b)?;
    let slot = st.slot.lock().await;
    match &*slot {
        Slot::Active { handle, .. } if !handle.is_finished() => {
            let slice = handle.shared.plan.config.users.count;
            if u.users > slice {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "users: {} is more than this agent's slice of {slice} users; create the run with a larger users.count",
                        u.users
                    ),
                ));
            }
            let ramp = Duration::from_millis(u.ramp_ms.unwrap_or(0));
            handle.set_users_over(u.users, ramp);
            Ok(Json(status_of(&st, &slot)).into_response())
        }
        _ => Err(error(StatusCode::CONFLICT, "no run is running")),
    }
}

/// `?after=N` of `GET /v1/run/intervals`.
#[derive(serde::Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn intervals(
    State(st): State<Arc<ControlState>>,
    q: Result<axum::extract::Query<After>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let after = q
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("query: {e}; use ?after=N")))?
        .after;
    match &*st.slot.lock().await {
        Slot::Active { handle, .. } => Ok(Json(IntervalsReply {
            intervals: handle.shared.intervals_after(after),
            header: Some(handle.shared.header().clone()),
        })
        .into_response()),
        _ => Err(error(StatusCode::NOT_FOUND, "no run has been started")),
    }
}

async fn stop(State(st): State<Arc<ControlState>>) -> Reply {
    let mut slot = st.slot.lock().await;
    match &*slot {
        Slot::Active { handle, .. } => handle.stop(),
        Slot::Ready(_) => *slot = Slot::Idle,
        Slot::Idle => {}
    }
    Ok(Json(status_of(&st, &slot)).into_response())
}

async fn status(State(st): State<Arc<ControlState>>) -> Json<RunStatus> {
    let slot = st.slot.lock().await;
    Json(status_of(&st, &slot))
}

async fn results(State(st): State<Arc<ControlState>>) -> Reply {
    let path = match &*st.slot.lock().await {
        Slot::Active { path, .. } => path.clone(),
        _ => return Err(error(StatusCode::NOT_FOUND, "no run has been started")),
    };
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], bytes).into_response())
}

async fn setup_start(
    State(st): State<Arc<ControlState>>,
    b: Result<Json<SetupRequest>, JsonRejection>,
) -> Reply {
    let req = body(b)?;
    req.config
        .validate()
        .map_err(|(k, m)| error(StatusCode::BAD_REQUEST, format!("config: {k}: {m}")))?;
    {
        let mut s = st.setup.lock();
        if s.state == SetupState::Running {
            return Err(error(StatusCode::CONFLICT, "a setup is already running"));
        }
        *s = SetupStatus {
            state: SetupState::Running,
            created: 0,
            existing: 0,
            message: None,
        };
    }
    let status = st.setup.clone();
    st.load.spawn(async move {
        let concurrency = req.concurrency.unwrap_or(32) as usize;
        let r = crate::setup::run_setup(&req.config, concurrency).await;
        *status.lock() = match r {
            Ok(rep) => SetupStatus {
                state: SetupState::Done,
                created: rep.created(),
                existing: rep.existing,
                message: None,
            },
            Err(e) => SetupStatus {
                state: SetupState::Failed,
                created: 0,
                existing: 0,
                message: Some(e.to_string()),
            },
        };
    });
    let s = st.setup.lock().clone();
    Ok((StatusCode::ACCEPTED, Json(s)).into_response())
}

async fn setup_status(State(st): State<Arc<ControlState>>) -> Json<SetupStatus> {
    Json(st.setup.lock().clone())
}

async fn metrics(State(st): State<Arc<ControlState>>) -> Response {
    let text = st
        .recorder
        .lock()
        .as_ref()
        .map(|r| r.metrics.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn control_state(cfg: ServeConfig, load: tokio::runtime::Handle) -> Arc<ControlState> {
    Arc::new(ControlState {
        cfg,
        load,
        slot: tokio::sync::Mutex::new(Slot::Idle),
        recorder: parking_lot::Mutex::new(None),
        setup: Arc::new(parking_lot::Mutex::new(SetupStatus {
            state: SetupState::Idle,
            created: 0,
            existing: 0,
            message: None,
        })),
    })
}

/// The open routes: `/metrics` and `/healthz`.
fn open_routes(state: Arc<ControlState>) -> Router {
    Router::new()
        .route(PATH_METRICS, get(metrics))
        .route(PATH_HEALTH, get(|| async { "ok\n" }))
        .with_state(state)
}

fn control_routes(state: Arc<ControlState>) -> Router {
    Router::new()
        .route(PATH_CLOCK, get(clock))
        .route(PATH_RUN, post(create))
        .route(PATH_START, post(start))
        .route(PATH_USERS, post(users))
        .route(PATH_STOP, post(stop))
        .route(PATH_STATUS, get(status))
        .route(PATH_RESULTS, get(results))
        .route(PATH_INTERVALS, get(intervals))
        .route(PATH_SETUP, post(setup_start).get(setup_status))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state.clone())
        .merge(open_routes(state))
}

/// The control API's routes, with runs and setups spawned on the current runtime (call it
/// inside one).
pub fn router(cfg: ServeConfig) -> Router {
    control_routes(control_state(cfg, tokio::runtime::Handle::current()))
}

/// Serves the control API on `listener` until `shutdown` resolves; with `metrics`, also the
/// open routes alone (`/metrics`, `/healthz`) on that listener, for a scraper elsewhere.
///
/// The listeners are served from a thread named `control-api` with a runtime of its own; runs
/// and setups go to the runtime this is called on. Returns once that thread has closed them.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = control_state(cfg, tokio::runtime::Handle::current());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // A tokio listener belongs to the reactor it was registered with; hand the sockets over.
    let listener = listener.into_std()?;
    let metrics = metrics.map(TcpListener::into_std).transpose()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("control-api".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| rt.block_on(serve_here(listener, metrics, state, stop_rx)));
            let _ = done_tx.send(served);
        })?;
    done_rx.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the control API's thread ended without closing its listeners",
        ))
    })
}

/// The control API's thread: serves both listeners on its own runtime until `stop_rx` says so.
async fn serve_here(
    listener: std::net::TcpListener,
    metrics: Option<std::net::TcpListener>,
    state: Arc<ControlState>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let metrics = metrics.map(TcpListener::from_std).transpose()?;
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let control = axum::serve(listener, control_routes(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    match metrics {
        None => control.await,
        Some(m) => {
            let open = axum::serve(m, open_routes(state)).with_graceful_shutdown(stopped(stop_rx));
            let (a, b) = tokio::join!(control, open);
            a.and(b)
        }
    }
}

/// Reads the shared token from a file (trimmed); an empty file is an error.
pub fn read_token(path: &std::path::Path) -> std::io::Result<String> {
    let t = std::fs::read_to_string(path)?.trim().to_string();
    if t.len() < 8 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: token must be at least 8 characters", path.display()),
        ));
    }
    Ok(t)
}
