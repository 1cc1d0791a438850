//! The agent against the real chat server on loopback: a small run measured end to end, setup
//! idempotence, recovery after a server restart, and the control API. Every run here is bounded
//! in users (tens) and time (seconds).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loadtest_agent::measure::Recorder;
use loadtest_agent::{run_setup, start_run, RunPlan};
use loadtest_contract::results::{
    IntervalRecord, Item, Record, RunHeader, StopReason, SummaryRecord,
};
use loadtest_contract::{ResultsReader, WorkloadConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A chat server on a loopback port, restartable on the same port and data directory.
struct Server {
    port: u16,
    /// The server's own `/metrics`.
    metrics: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), chat_server::Error>>>,
}

impl Server {
    async fn start(dir: &Path, port: u16) -> Server {
        // Rebinding a port just released may take a moment.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        };
        let port = listener.local_addr().expect("addr").port();
        let metrics_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics = format!(
            "http://{}/metrics",
            metrics_listener.local_addr().expect("addr")
        );
        let mut config = chat_server::Config::for_data_dir(dir);
        config.metrics_listen = None;
        config.shutdown_grace = Duration::from_secs(2);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_server::run(
            listener,
            Some(metrics_listener),
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            port,
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server stops cleanly");
        }
    }
}

fn workload(url: &str, users: u64, duration: &str, mix: &str) -> WorkloadConfig {
    let text = format!(
        r#"
[target]
url = "{url}"
admin_password = "Lt-Admin-Passw0rd!"
request_timeout = "5s"

[dataset]
teams = 1
users = {users}
posts_per_channel = 3

[[dataset.channels]]
count = 3
members = {users}

[users]
count = {users}
ramp_up = "0s"
duration = "{duration}"

[behaviour]
mode = "closed"
mean_interval = "300ms"
interval_jitter = "100ms"
reply_fraction = 0.3
typing_fraction = 0.5

[behaviour.mix]
{mix}

[run]
seed = 3
interval = "500ms"
"#
    );
    WorkloadConfig::from_toml_str(&text, "test.toml").expect("valid test workload")
}

const FULL_MIX: &str = "switch_channel = 10\nread_more = 3\ncheck_unreads = 5\ncreate_post = 8\nadd_reaction = 3\nupdate_status = 2\n";

struct Results {
    header: RunHeader,
    intervals: Vec<IntervalRecord>,
    summary: SummaryRecord,
}

fn read_results(path: &Path) -> Results {
    let file = std::fs::File::open(path).expect("results file");
    let mut header = None;
    let mut intervals = Vec::new();
    let mut summary = None;
    for item in ResultsReader::new(std::io::BufReader::new(file), path.display().to_string()) {
        match item.expect("valid record") {
            Item::Record(r) => match *r {
                Record::Header(h) => header = Some(h),
                Record::Interval(i) => intervals.push(i),
                Record::Summary(s) => summary = Some(s),
                Record::Server(s) => panic!("an agent wrote a server record: {s:?}"),
            },
            Item::Unknown { kind, .. } => panic!("unknown record kind {kind}"),
        }
    }
    Results {
        header: header.expect("header"),
        intervals,
        summary: summary.expect("summary"),
    }
}

async fn run(cfg: WorkloadConfig, dir: &Path, name: &str) -> (SummaryRecord, Results) {
    let path = dir.join(format!("{name}.jsonl"));
    let plan = RunPlan {
        run_id: name.into(),
        agent_id: "agent-t".into(),
        total_users: cfg.users.count,
        agents: 1,
        clock_offset_ms: 0,
        config: cfg,
        results_path: path.clone(),
        initial_users: None,
    };
    let handle = start_run(plan, None, Arc::new(Recorder::new("agent-t")))
        .await
        .expect("run starts");
    let summary = tokio::time::timeout(Duration::from_secs(90), handle.wait())
        .await
        .expect("run ends in time")
        .expect("run succeeds");
    eprintln!("{name}: {}", loadtest_agent::results::describe(&summary));
    (summary, read_results(&path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_run_measures_every_action_and_loses_no_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("db"), 0).await;
    let users = 20;
    let cfg = workload(&server.url(), users, "5s", FULL_MIX);
    run_setup(&cfg, 8).await.expect("setup");
    let (summary, r) = run(cfg.clone(), dir.path(), "small").await;
    server.stop().await;

    assert_eq!(r.summary, summary);
    assert_eq!(summary.stop_reason, StopReason::Completed);
    assert_eq!(r.header.settings.users, users);
    assert_eq!(summary.intervals as usize, r.intervals.len());
    assert!(r.intervals.len() >= 9, "{} intervals", r.intervals.len());
    let t = &summary.totals;
    let mut expected_actions: Vec<&str> = cfg.behaviour.mix.keys().map(String::as_str).collect();
    expected_actions.extend(["login", "ws_connect", "user_typing"]);
    for name in expected_actions {
        let s = t
            .actions
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", t.actions.keys()));
        assert!(s.ok > 0, "{name}: no successes");
        assert_eq!(s.errors.total(), 0, "{name}: {:?}", s.errors);
        // Sane bounds for a debug build on a small box.
        assert!(
            s.service_time.quantile_us(0.99) < 3_000_000,
            "{name} p99 {}",
            s.service_time.quantile_us(0.99)
        );
        assert!(s.response_time.min_us() >= s.service_time.min_us());
        assert!(s.service_time.min_us() > 0);
    }
    assert_eq!(t.actions["login"].ok, users);
    assert_eq!(t.actions["ws_connect"].ok, users);
    assert_eq!(t.peak_active_users, users);
    assert_eq!(t.peak_websocket_connections, users);

    // Deliveries: every expected one arrived, once.
    let d = &t.delivery;
    assert!(d.expected > 0);
    assert_eq!(d.received, d.expected, "{d:?}");
    assert_eq!((d.missing, d.duplicate), (0, 0));
    assert!(d.latency.count() == d.received);
    assert!(
        d.latency.quantile_us(0.99) < 2_000_000,
        "delivery p99 {}",
        d.latency.quantile_us(0.99)
    );
    // Exactly posts × online members in every interval where all users were connected
    // throughout (every user is in every channel here).
    let mut steady = 0;
    for w in r.intervals.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        if prev.gauges.websocket_connections == users && cur.gauges.websocket_connections == users {
            let posts = cur.actions.get("create_post").map_or(0, |s| s.ok);
            assert_eq!(
                cur.delivery.expected,
                posts * users,
                "interval {}",
                cur.index
            );
            steady += posts;
        }
    }
    assert!(steady > 0, "no steady interval with posts");
    // The agent kept up with its schedule.
    assert!(t.schedule.actions > 0);
    assert!(
        t.schedule.late * 10 <= t.schedule.actions,
        "late {} of {}",
        t.schedule.late,
        t.schedule.actions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_of_one_run_measure_each_others_deliveries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("db"), 0).await;
    let users = 6;
    let cfg = workload(
        &server.url(),
        users,
        "4s",
        "switch_channel = 2\ncreate_post = 8\n",
    );
    run_setup(&cfg, 4).await.expect("setup");
    // Both agents claim the same (fictitious) offset from the coordinator: a sign error in the
    // correction would show as a 14 s latency.
    let plan = |agent: &str, offset: u64| {
        let mut c = cfg.clone();
        c.users.offset = offset;
        c.users.count = users / 2;
        RunPlan {
            run_id: "pair".into(),
            agent_id: agent.into(),
            total_users: users,
            agents: 2,
            clock_offset_ms: 7_000,
            config: c,
            results_path: dir.path().join(format!("pair-{agent}.jsonl")),
            initial_users: None,
        }
    };
    let start = |agent: &'static str, offset: u64| {
        let plan = plan(agent, offset);
        async move {
            let h = start_run(plan, None, Arc::new(Recorder::new(agent)))
                .await
                .expect("run starts");
            tokio::time::timeout(Duration::from_secs(60), h.wait())
                .await
                .expect("run ends in time")
                .expect("run succeeds")
        }
    };
    let (a, b) = tokio::join!(start("agent-a", 0), start("agent-b", users / 2));
    server.stop().await;
    for s in [&a, &b] {
        let d = &s.totals.delivery;
        eprintln!(
            "{}: own {}/{} remote {} p99 {} us",
            s.agent_id,
            d.received,
            d.expected,
            d.remote_received,
            d.remote_latency.quantile_us(0.99)
        );
        // Own deliveries unchanged: all arrived.
        assert!(d.expected > 0);
        assert_eq!((d.received, d.missing), (d.expected, 0), "{d:?}");
        assert!(d.remote_received > 0, "{}: no remote receipts", s.agent_id);
        assert_eq!(d.remote_latency.count(), d.remote_received);
        assert!(
            d.remote_latency.max_us() < 5_000_000,
            "remote max {}",
            d.remote_latency.max_us()
        );
    }
    // Every post of one agent reaches each connected user of the other at most once: the remote
    // receipts cannot exceed posts × receivers.
    let posts = |s: &SummaryRecord| s.totals.actions.get("create_post").map_or(0, |a| a.ok);
    assert!(a.totals.delivery.remote_received <= posts(&b) * (users / 2));
    assert!(b.totals.delivery.remote_received <= posts(&a) * (users / 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("db"), 0).await;
    let mut cfg = workload(&server.url(), 12, "1s", FULL_MIX);
    cfg.dataset.channels[0].members = 5;
    cfg.dataset
        .channels
        .push(loadtest_contract::workload::ChannelGroup {
            count: 2,
            members: 4,
            private: true,
        });
    let first = run_setup(&cfg, 4).await.expect("first setup");
    assert!(first.admin_created);
    assert_eq!(first.users_created, 12);
    assert_eq!(first.channels_created, 5);
    assert_eq!(first.posts_created, 15);
    let second = run_setup(&cfg, 4).await.expect("second setup");
    assert_eq!(second.created(), 0, "{second:?}");
    assert_eq!(second.existing, 1 + 12 + 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_come_back_after_a_server_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let mut server = Server::start(&db, 0).await;
    let port = server.port;
    let users = 10;
    let mix = format!("{FULL_MIX}ws_reconnect = 2\n");
    let cfg = workload(&server.url(), users, "9s", &mix);
    run_setup(&cfg, 8).await.expect("setup");

    let run_task = tokio::spawn({
        let dir = dir.path().to_path_buf();
        async move { run(cfg, &dir, "restart").await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut server = Server::start(&db, port).await;
    let (summary, r) = run_task.await.expect("run task");
    server.stop().await;

    let t = &summary.totals;
    // Everyone reconnected at least once (planned reconnects add more).
    assert!(t.reconnects >= users, "reconnects {}", t.reconnects);
    // The outage shows: some interval with users offline, and users back before the end.
    let gap = r
        .intervals
        .iter()
        .position(|i| i.gauges.websocket_connections < users);
    let gap = gap.expect("an interval shows the outage");
    assert!(
        r.intervals[gap..]
            .iter()
            .any(|i| i.gauges.websocket_connections == users),
        "users did not come back: {:?}",
        r.intervals
            .iter()
            .map(|i| i.gauges.websocket_connections)
            .collect::<Vec<_>>()
    );
    let errors: u64 = t.actions.values().map(|s| s.errors.total()).sum();
    assert!(errors > 0, "the outage should show as errors");
    // Actions continued after the restart.
    let last_posts: u64 = r.intervals[r.intervals.len().saturating_sub(6)..]
        .iter()
        .filter_map(|i| i.actions.get("switch_channel"))
        .map(|s| s.ok)
        .sum();
    assert!(last_posts > 0, "no successful actions after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_posts_arrive_at_the_configured_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("db"), 0).await;
    let mut cfg = workload(&server.url(), 10, "4s", "check_unreads = 1\n");
    cfg.behaviour.mode = loadtest_contract::workload::Mode::Open;
    cfg.behaviour.posts_per_second = Some(10.0);
    cfg.behaviour.mean_interval = Duration::from_secs(1);
    cfg.behaviour.interval_jitter = Duration::ZERO;
    cfg.validate().expect("valid open workload");
    run_setup(&cfg, 8).await.expect("setup");
    let (summary, _) = run(cfg, dir.path(), "open").await;
    server.stop().await;
    let t = &summary.totals;
    let posts = t.actions.get("create_post").map_or(0, |s| s.ok);
    // ~40 arrivals in 4 s (Poisson), fewer while users log in.
    assert!((10..=80).contains(&posts), "{posts} posts");
    assert_eq!(t.delivery.received, t.delivery.expected);
    assert_eq!(t.delivery.missing, 0);
    assert!(t.actions.get("check_unreads").is_some_and(|s| s.ok > 0));
}

mod control {
    use super::*;
    use loadtest_agent::control::{serve, ServeConfig};
    use loadtest_contract::control::{
        CreateRun, ErrorReply, IntervalsReply, RunState, RunStatus, SetupRequest, SetupState,
        SetupStatus,
    };

    const TOKEN: &str = "s3cret-token-for-tests";

    async fn start_agent(results_dir: &Path) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cfg = ServeConfig {
            token: TOKEN.into(),
            agent_id: "agent-c".into(),
            results_dir: results_dir.to_path_buf(),
        };
        tokio::spawn(serve(listener, None, cfg, std::future::pending()));
        format!("http://{addr}")
    }

    /// `--metrics-listen`: the open routes on a listener of their own, and nothing else there.
    #[tokio::test]
    async fn a_metrics_listener_serves_metrics_and_health_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (c, m) = (
            control.local_addr().expect("addr"),
            metrics.local_addr().expect("addr"),
        );
        let cfg = ServeConfig {
            token: TOKEN.into(),
            agent_id: "agent-m".into(),
            results_dir: dir.path().to_path_buf(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(control, Some(metrics), cfg, async {
            let _ = stop_rx.await;
        }));
        let http = reqwest::Client::new();
        let get = |url: String| http.get(url).bearer_auth(TOKEN).send();
        let r = get(format!("http://{m}/metrics")).await.expect("metrics");
        assert_eq!(r.status(), 200);
        let r = get(format!("http://{m}/healthz")).await.expect("healthz");
        assert_eq!(r.text().await.expect("body"), "ok\n");
        // The control API is not there, even with the token; it is on its own listener.
        let r = get(format!("http://{m}/v1/clock")).await.expect("clock");
        assert_eq!(r.status(), 404);
        let r = get(format!("http://{c}/v1/clock")).await.expect("clock");
        assert_eq!(r.status(), 200);
        // One shutdown ends both listeners.
        stop_tx.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returned")
            .expect("task")
            .expect("serve ok");
        assert!(reqwest::get(format!("http://{m}/metrics")).await.is_err());
    }

    /// One plain HTTP/1.1 GET with the token over a blocking socket (no task on any runtime),
    /// the status line and body of the answer; `None` when nothing comes within 10 s.
    fn blocking_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// A full box must not make the agent look lost: with every worker of the runtime that runs
    /// the users blocked, the control API (on a thread of its own) still answers the status
    /// poll. Before it had its own thread this request waited until the worker was free.
    #[test]
    fn the_control_api_answers_while_the_load_runtime_is_blocked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let load = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = load
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cfg = ServeConfig {
            token: TOKEN.into(),
            agent_id: "agent-b".into(),
            results_dir: dir.path().to_path_buf(),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let served = load.spawn(serve(listener, None, cfg, async {
            let _ = stop_rx.await;
        }));
        let up = (0..100).any(|_| {
            let ok = blocking_get(addr, "/healthz").is_some_and(|r| r.ends_with("ok\n"));
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(up, "the control API never came up");
        // Take the load runtime's only worker and keep it until the poll has been answered.
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        load.spawn(async move {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
        });
        started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the blocking task started");
        let answer = blocking_get(addr, "/v1/run/status");
        release_tx.send(()).expect("release");
        let answer = answer.expect("an answer while the load runtime was blocked");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"state\":\"idle\""), "{answer}");
        let _ = stop_tx.send(());
        load.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .expect("serve returned")
                .expect("task")
                .expect("serve ok")
        });
    }

    /// Sends a request and decodes its JSON answer.
    async fn json_of<T: serde::de::DeserializeOwned>(r: reqwest::RequestBuilder) -> T {
        r.send().await.expect("request").json().await.expect("json")
    }

    async fn status(http: &reqwest::Client, base: &str) -> RunStatus {
        http.get(format!("{base}/v1/run/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    #[tokio::test]
    async fn rejects_missing_and_wrong_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = start_agent(dir.path()).await;
        let http = reqwest::Client::new();
        for path in ["/v1/clock", "/v1/run/status", "/v1/setup"] {
            let r = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 401, "{path}");
            let e: ErrorReply = r.json().await.expect("error body");
            assert!(e.error.contains("Bearer"), "{}", e.error);
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth("wrong-token-123")
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 401, "{path}");
        }
        let r = http
            .post(format!("{base}/v1/run/stop"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{base}/v1/clock"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        // Metrics are open (no secrets in them).
        let r = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        // So is the health route that Kubernetes probes (they cannot carry the token).
        let r = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "ok\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_run_over_the_control_api() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start(&dir.path().join("db"), 0).await;
        let base = start_agent(&dir.path().join("results")).await;
        let http = reqwest::Client::new();
        let cfg = workload(&server.url(), 8, "30s", FULL_MIX);

        // Setup in the background, polled.
        let r = http
            .post(format!("{base}/v1/setup"))
            .bearer_auth(TOKEN)
            .json(&SetupRequest {
                config: cfg.clone(),
                concurrency: Some(4),
            })
            .send()
            .await
            .expect("setup");
        assert_eq!(r.status(), 202);
        let mut done = false;
        for _ in 0..600 {
            let s: SetupStatus = http
                .get(format!("{base}/v1/setup"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("setup status")
                .json()
                .await
                .expect("json");
            assert_ne!(s.state, SetupState::Failed, "{:?}", s.message);
            if s.state == SetupState::Done {
                assert!(s.created > 0);
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(done, "setup did not finish");

        let create = CreateRun {
            run_id: "ctl-run".into(),
            agent_id: "agent-c".into(),
            config: cfg,
            total_users: 8,
            agents: 1,
            clock_offset_ms: 0,
            // Six start; the other two wait for a higher target.
            initial_users: Some(6),
        };
        let post = |path: &str| http.post(format!("{base}{path}")).bearer_auth(TOKEN);
        let s: RunStatus = post("/v1/run")
            .json(&create)
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        assert_eq!(s.state, RunState::Ready);
        let r = post("/v1/run")
            .json(&create)
            .send()
            .await
            .expect("create again");
        assert_eq!(r.status(), 409);
        let r = post("/v1/run")
            .json(&serde_json::json!({"run_id": 1}))
            .send()
            .await
            .expect("bad body");
        // Wrong shape: 422; not JSON at all: 400; both with an ErrorReply naming the problem.
        assert_eq!(r.status(), 422);
        let e: ErrorReply = r.json().await.expect("error body");
        assert!(e.error.contains("run_id"), "{}", e.error);
        let r = post("/v1/run")
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("bad json");
        assert_eq!(r.status(), 400);
        // More users than this agent can hold: refused before anything is allocated per user.
        let mut huge = create.clone();
        huge.config.dataset.users = 1 << 40;
        huge.config.users.count = 1 << 40;
        let r = post("/v1/run").json(&huge).send().await.expect("huge");
        assert_eq!(r.status(), 422);
        let e: ErrorReply = r.json().await.expect("error body");
        assert!(e.error.contains("users.count"), "{}", e.error);
        assert!(e.error.contains("more agents"), "{}", e.error);

        let s: RunStatus = post("/v1/run/start")
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("start")
            .json()
            .await
            .expect("json");
        assert_eq!(s.state, RunState::Running);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let s = status(&http, &base).await;
        assert_eq!(s.state, RunState::Running);
        assert_eq!((s.target_users, s.active_users), (6, 6));
        assert!(s.requests_total > 0);
        // Raised in the running run: the two new users log in and connect.
        let s: RunStatus =
            json_of(post("/v1/run/users").json(&serde_json::json!({"users": 8}))).await;
        assert_eq!(s.target_users, 8);
        let mut all_in = false;
        for _ in 0..100 {
            let s = status(&http, &base).await;
            if s.active_users == 8 && s.websocket_connections == 8 {
                all_in = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            all_in,
            "the added users did not come in: {:?}",
            status(&http, &base).await
        );
        // The run's intervals so far, for a coordinator judging part of a run.
        let get = |path: &str| http.get(format!("{base}{path}")).bearer_auth(TOKEN);
        let all: IntervalsReply = json_of(get("/v1/run/intervals")).await;
        assert!(all.intervals.len() >= 3, "{}", all.intervals.len());
        let index: Vec<u64> = all.intervals.iter().map(|i| i.index).collect();
        assert_eq!(index, (0..index.len() as u64).collect::<Vec<_>>());
        let later: IntervalsReply = json_of(get("/v1/run/intervals?after=2")).await;
        // (an interval may have been flushed in between)
        assert_eq!(later.intervals.first().map(|i| i.index), Some(2));
        assert!(later.intervals.len() >= all.intervals.len() - 2);
        let r = get("/v1/run/intervals?after=x").send().await.expect("bad");
        assert_eq!(r.status(), 400);
        assert!(all.header.as_ref().is_some_and(|h| h.run_id == "ctl-run"));
        // Beyond the slice: refused, naming the slice.
        let r = post("/v1/run/users")
            .json(&serde_json::json!({"users": 9}))
            .send()
            .await
            .expect("too many");
        assert_eq!(r.status(), 422);
        let e: ErrorReply = r.json().await.expect("error body");
        assert!(e.error.contains("slice of 8"), "{}", e.error);
        // Lowered: the four removed users log out and close their sockets, on the server too.
        let server_metric = |name: &'static str| {
            let http = http.clone();
            let url = server.metrics.clone();
            async move {
                let text = http
                    .get(url)
                    .send()
                    .await
                    .expect("server metrics")
                    .text()
                    .await
                    .expect("text");
                text.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            }
        };
        let logouts_before =
            server_metric("chat_http_requests_total{handler=\"/api/v4/users/logout\"").await;
        let s: RunStatus =
            json_of(post("/v1/run/users").json(&serde_json::json!({"users": 4}))).await;
        assert_eq!(s.target_users, 4);
        let mut left = false;
        for _ in 0..100 {
            let s = status(&http, &base).await;
            let sockets = server_metric("chat_websocket_connections").await;
            let logouts =
                server_metric("chat_http_requests_total{handler=\"/api/v4/users/logout\"").await;
            if (s.active_users, s.websocket_connections) == (4, 4)
                && sockets == 4.0
                && logouts - logouts_before == 4.0
            {
                left = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            left,
            "the removed users did not leave: {:?}, server sockets {}, logouts {}",
            status(&http, &base).await,
            server_metric("chat_websocket_connections").await,
            server_metric("chat_http_requests_total{handler=\"/api/v4/users/logout\"").await
                - logouts_before,
        );
        // Raised again, spread over a second: the same users come back with new sessions.
        let s: RunStatus =
            json_of(post("/v1/run/users").json(&serde_json::json!({"users": 8, "ramp_ms": 1000})))
                .await;
        assert_eq!(s.target_users, 8);
        let mut back = false;
        for _ in 0..100 {
            let s = status(&http, &base).await;
            if (s.active_users, s.websocket_connections) == (8, 8)
                && server_metric("chat_websocket_connections").await == 8.0
            {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            back,
            "the users did not come back: {:?}",
            status(&http, &base).await
        );
        let s: RunStatus =
            json_of(post("/v1/run/users").json(&serde_json::json!({"users": 4}))).await;
        assert_eq!(s.target_users, 4);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("loadtest_agent_active_users 4"),
            "{metrics}"
        );
        assert!(
            metrics.contains("loadtest_agent_requests_total"),
            "{metrics}"
        );

        post("/v1/run/stop").send().await.expect("stop");
        let mut finished = false;
        for _ in 0..200 {
            let s = status(&http, &base).await;
            if s.state == RunState::Finished {
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(finished, "run did not finish after stop");
        let text = http
            .get(format!("{base}/v1/run/results"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("results")
            .text()
            .await
            .expect("text");
        let path = dir.path().join("fetched.jsonl");
        std::fs::write(&path, &text).expect("write");
        let r = read_results(&path);
        assert_eq!(r.header.run_id, "ctl-run");
        assert_eq!(r.summary.stop_reason, StopReason::Interrupted);
        assert!(r.summary.totals.actions.contains_key("switch_channel"));
        assert!(dir.path().join("results/ctl-run-agent-c.jsonl").exists());
        // The intervals the control API kept (as their JSON, to stay small) are exactly the
        // file's, histograms included.
        let kept: IntervalsReply = json_of(get("/v1/run/intervals")).await;
        assert_eq!(kept.intervals.len(), r.intervals.len());
        assert!(
            kept.intervals == r.intervals,
            "kept intervals differ from the file's"
        );

        // A synchronized start two seconds ahead: the wait is not part of the first interval
        // (nor of the run's duration), which starts when the run does.
        let mut second = create.clone();
        second.run_id = "ctl-sync".into();
        let r = post("/v1/run").json(&second).send().await.expect("create");
        assert_eq!(r.status(), 200);
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as i64
        };
        let start_at_ms = now_ms() + 2_000;
        let r = post("/v1/run/start")
            .json(&serde_json::json!({ "start_at_ms": start_at_ms }))
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), 200);
        while now_ms() < start_at_ms + 1_000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        post("/v1/run/stop").send().await.expect("stop");
        let mut finished = false;
        for _ in 0..200 {
            if status(&http, &base).await.state == RunState::Finished {
                finished = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(finished, "the synchronized run did not finish after stop");
        let r = read_results(&dir.path().join("results/ctl-sync-agent-c.jsonl"));
        let first = r.intervals.first().expect("an interval");
        assert!(
            first.start_ms >= start_at_ms - 50,
            "the first interval starts at {} but the run started at {start_at_ms}",
            first.start_ms
        );
        assert!(r.summary.started_at_ms >= start_at_ms - 50);
        server.stop().await;
    }
}
