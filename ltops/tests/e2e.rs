//! End to end through the real binaries: `ltops`, `chat-server` and `loadtest-agent` from the
//! same target directory (`cargo build --workspace --bins` builds them), with `LTOPS_HOME` in a
//! temporary directory.
#![allow(clippy::unwrap_used)]

mod util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use loadtest_contract::results::{Item, Record};
use loadtest_contract::ResultsReader;
use ltops::provider::local::LocalState;
use ltops::state::{ClusterState, Role};
use util::{require_binaries, text, Env};

impl Env {
    /// Starts `ltops loadtest -c CLUSTER --config CFG ARGS…` in the background, output captured.
    fn spawn_loadtest(&self, cluster: &str, cfg: &Path, args: &[&str]) -> std::process::Child {
        let cfg = cfg.to_str().unwrap();
        let mut all = vec!["loadtest", "-c", cluster, "--config", cfg];
        all.extend_from_slice(args);
        self.cmd(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A tiny workload: 20 users over 2 agents for a few seconds.
    fn tiny_config(&self, duration: &str) -> PathBuf {
        let p = self.home.path().join(format!("tiny-{duration}.toml"));
        std::fs::write(
            &p,
            format!(
                r#"preset = "quick"
[dataset]
teams = 1
users = 40
posts_per_channel = 2
[[dataset.channels]]
count = 4
members = 10
[users]
count = 20
ramp_up = "1s"
duration = "{duration}"
[behaviour]
mode = "closed"
mean_interval = "500ms"
interval_jitter = "200ms"
[run]
interval = "1s"
"#
            ),
        )
        .unwrap();
        p
    }
}

fn local(st: &ClusterState) -> LocalState {
    st.provider_state(Path::new("cluster.toml")).unwrap()
}

fn pids(st: &ClusterState) -> Vec<u32> {
    local(st).processes.iter().filter_map(|p| p.pid).collect()
}

fn pid_of(st: &ClusterState, role: Role, index: u32) -> Option<u32> {
    local(st)
        .processes
        .iter()
        .find(|p| p.role == role && p.index == index)
        .and_then(|p| p.pid)
}

fn alive(pid: u32) -> bool {
    // Zombies (not reaped yet) count as gone.
    ltops::process::is_alive(pid, None)
}

/// Live processes whose working directory is under `dir` (our components run in theirs).
fn running_under(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(dir) && alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// Users per agent from the results headers of a run directory.
fn users_in(dir: &Path) -> Vec<u64> {
    let mut users = Vec::new();
    for f in ltparse::results_files_in(dir).unwrap() {
        let r = ResultsReader::new(
            std::io::BufReader::new(std::fs::File::open(&f).unwrap()),
            f.display().to_string(),
        );
        for rec in r {
            if let Ok(Item::Record(r)) = rec {
                if let Record::Header(h) = *r {
                    users.push(h.settings.users);
                }
            }
        }
    }
    users
}

/// Plain HTTP GET with the agent token; returns the body.
fn agent_get(addr: &str, path: &str, token: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn lifecycle_create_deploy_loadtest_status_delete() {
    require_binaries();
    let env = Env::new();
    let cfg = env.tiny_config("5s");
    let o = env.run(&["create", "--name", "e2e", "--agents", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mode = std::fs::metadata(env.home.path().join("clusters/e2e/cluster.toml"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let o = env.run(&["deploy", "-c", "e2e"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let st = env.state("e2e");
    assert_eq!(st.components(Role::Agent).count(), 2);
    assert_eq!(st.components(Role::Server).count(), 1);
    let started = pids(&st);
    assert_eq!(started.len(), 3);

    let o = env.run(&[
        "loadtest",
        "-c",
        "e2e",
        "--config",
        cfg.to_str().unwrap(),
        "--progress",
        "plain",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ltparse results"), "{out}");

    let st = env.state("e2e");
    let last = st.last_run.clone().expect("last run recorded");
    assert_eq!(last.verdict, "pass");
    assert!(st.dataset.is_some());
    let mut users = users_in(&last.results_dir);
    users.sort();
    assert_eq!(users, vec![10, 10], "each agent simulated its slice");
    let summary = util::summarize(&last.results_dir);
    assert_eq!(summary.outcome, ltparse::Outcome::Pass);
    // The server's own figures travel with the run: sampled every interval from its /metrics.
    let servers = &summary.report.runs[0].servers;
    assert_eq!(servers.len(), 1, "{servers:?}");
    let s0 = &servers[0];
    assert_eq!(s0.instance, "server-0");
    assert!(s0.samples >= 3, "{s0:?}");
    assert!(s0.requests_per_s > 0.0 && s0.cpu_cores_mean > 0.0, "{s0:?}");
    assert!(
        s0.rss_peak_bytes > 1_000_000 && s0.websocket_connections_peak >= 10,
        "{s0:?}"
    );
    assert!(
        summary
            .rendered
            .contains("Server (each instance's own /metrics"),
        "{}",
        summary.rendered
    );
    // The HTML report puts users, latency and the server's CPU on one time axis.
    let html =
        ltparse::render(&summary.report, ltparse::Display::Html, &Default::default()).unwrap();
    let timeline = &html[html.find("id=\"timeline\"").expect("a timeline")..];
    for chart in [
        "active users and connections",
        "delivery p99",
        "server CPU",
        "server memory",
    ] {
        assert!(
            timeline.contains(&format!("<title>{chart}")),
            "no {chart} chart"
        );
    }
    assert!(
        timeline.matches("<polyline").count() >= 6,
        "charts without lines"
    );

    let o = env.run(&["status", "e2e"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("agent-1") && out.contains("healthy"), "{out}");
    assert!(out.contains(&last.run_id) && out.contains("pass"), "{out}");

    // A second run reuses the prepared data set.
    let o = env.run(&[
        "loadtest",
        "-c",
        "e2e",
        "--config",
        cfg.to_str().unwrap(),
        "--users",
        "6",
        "--duration",
        "2s",
        "--progress",
        "none",
        "--baseline",
        last.results_dir.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert!(out.contains("already prepared"), "{out}");
    assert!(matches!(o.status.code(), Some(0) | Some(4)), "{out}");
    look_at_the_html_report_in_a_browser(&env.state("e2e"), &last.results_dir);

    let o = env.run(&["logs", "agent", "-c", "e2e", "-i", "1", "-n", "5"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env.run(&["ssh", "server", "-c", "e2e", "--", "echo", "$LTOPS_CLUSTER"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "e2e");

    // `stop` ends every process and keeps the rest; `deploy` starts them again.
    let o = env.run(&["stop", "e2e"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("kept"), "{}", text(&o));
    wait_gone(&started);
    assert_eq!(running_under(env.home.path()), Vec::<u32>::new());
    let st = env.state("e2e");
    assert!(pids(&st).is_empty(), "{st:?}");
    assert!(st.last_run.is_some());
    assert!(last.results_dir.join("agent-0.jsonl").is_file());
    let o = env.run(&["status", "e2e"]);
    assert!(!text(&o).contains("healthy"), "{}", text(&o));
    let o = env.run(&["loadtest", "-c", "e2e", "--config", cfg.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("ltops deploy"), "{}", text(&o));
    let o = env.run(&["deploy", "-c", "e2e"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let started = pids(&env.state("e2e"));
    assert_eq!(started.len(), 3);
    assert!(started.iter().all(|p| alive(*p)));

    // Results are the user's data: a delete keeps them (and says where) unless asked.
    let o = env.run(&["delete", "e2e", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_gone(&started);
    assert_eq!(running_under(env.home.path()), Vec::<u32>::new());
    assert!(!env.home.path().join("clusters/e2e").exists());
    assert!(
        text(&o).contains("kept its results: 2 run(s)"),
        "{}",
        text(&o)
    );
    assert!(last.results_dir.join("agent-0.jsonl").is_file());
    assert!(last
        .results_dir
        .starts_with(env.home.path().join("results/e2e")));
    let o = env.run(&["delete", "e2e", "--purge-results"]);
    assert_eq!(o.status.code(), Some(ltops::exit::USAGE), "{}", text(&o));
    let o = env.run(&["delete", "e2e", "--purge-results", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!env.home.path().join("results/e2e").exists());
}

/// The HTML report of the last run, with `baseline` overlaid, in a real browser: headless
/// Chromium (`ltparse/tests/browser/check.mjs`, DevTools protocol) loads the file; there must be
/// no console message, exception or failed load, and every chart must draw data inside its plot.
/// The full-page screenshot is kept under `LTOPS_REPORT_SCREENSHOT` when that is set.
fn look_at_the_html_report_in_a_browser(st: &ClusterState, baseline: &Path) {
    let browser = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found(&browser) || !found("node") || !found("npm") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium, node and npm are required in CI (apt-get install chromium nodejs npm)"
        );
        eprintln!("note: not looking at the HTML report: chromium, node or npm is missing");
        return;
    }
    let run = st.last_run.clone().expect("a last run");
    let summary = ltparse::run(&ltparse::Options {
        files: ltparse::results_files_in(&run.results_dir).unwrap(),
        baseline: ltparse::results_files_in(baseline).unwrap(),
        display: ltparse::Display::Html,
        aggregate: true,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, &summary.rendered).unwrap();
    let shot = std::env::var_os("LTOPS_REPORT_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("report.png"));
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ltparse/tests/browser");
    if !js.join("node_modules/ws").exists() {
        let st = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .unwrap();
        assert!(st.success(), "npm ci failed in {}", js.display());
    }
    let o = std::process::Command::new("node")
        .arg("check.mjs")
        .arg(&page)
        .arg(&shot)
        .env("CHROMIUM", &browser)
        .current_dir(&js)
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(seen["errors"], serde_json::json!([]), "{out}");
    let charts = seen["charts"].as_array().unwrap();
    let titles: Vec<&str> = charts.iter().filter_map(|c| c["title"].as_str()).collect();
    for chart in [
        "active users and connections",
        "request rate",
        "delivery p99",
        "server CPU",
        "server memory",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(chart)),
            "no {chart} chart in {titles:?}"
        );
    }
    assert!(
        charts.iter().all(|c| c["drawn"] == true),
        "a chart drew nothing: {out}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
}

#[test]
fn agent_killed_mid_run_is_reported_and_the_others_results_kept() {
    require_binaries();
    let env = Env::new();
    let cfg = env.tiny_config("30s");
    assert_eq!(
        env.run(&["create", "--name", "kill", "--agents", "2"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(env.run(&["deploy", "-c", "kill"]).status.code(), Some(0));
    let st = env.state("kill");
    let started = pids(&st);
    let victim = st.component(Role::Agent, 1).unwrap().clone();

    let child = env.spawn_loadtest("kill", &cfg, &["--progress", "plain"]);
    // Wait until agent-1 runs its users, then kill it hard.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body =
            agent_get(&victim.address, "/v1/run/status", &st.control_token).unwrap_or_default();
        if body.contains("\"running\"") {
            break;
        }
        assert!(Instant::now() < deadline, "agent-1 never started running");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(&st, Role::Agent, 1).unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    eprintln!("{out}");
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("agent-1 was lost"), "{out}");
    assert!(out.contains("its process is gone"), "{out}");
    let st = env.state("kill");
    let last = st.last_run.clone().unwrap();
    assert!(last.verdict.contains("agent-1"), "{}", last.verdict);
    assert!(
        last.results_dir.join("agent-0.jsonl").is_file(),
        "the surviving agent's results are kept"
    );

    assert_eq!(env.run(&["delete", "kill", "--yes"]).status.code(), Some(0));
    wait_gone(&started);
}

#[test]
fn an_agent_that_fails_to_start_is_reported_and_nothing_is_left_running() {
    require_binaries();
    let env = Env::new();
    let broken = env.home.path().join("broken-agent");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho \"boom: this agent cannot start\" >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(env.run(&["create", "--name", "b"]).status.code(), Some(0));
    let o = env.run(&["deploy", "-c", "b", "--agent", broken.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("agent-0 exited during start-up"), "{out}");
    assert!(out.contains("boom: this agent cannot start"), "{out}");
    // The server that did start was stopped again.
    let st = env.state("b");
    let server = st.component(Role::Server, 0).unwrap();
    assert!(!server.started, "recorded as stopped");
    assert_eq!(pid_of(&st, Role::Server, 0), None, "recorded as stopped");
    assert_eq!(running_under(env.home.path()), Vec::<u32>::new());
    let o = env.run(&["status", "b"]);
    assert!(text(&o).contains("not running"), "{}", text(&o));
    assert_eq!(env.run(&["delete", "b", "--yes"]).status.code(), Some(0));
}

#[test]
fn a_second_command_on_a_locked_cluster_is_refused() {
    let env = Env::new();
    assert_eq!(
        env.run(&["create", "--name", "locked", "--agents", "1"])
            .status
            .code(),
        Some(0)
    );
    let _held = ltops::lock::ClusterLock::acquire(
        &env.home.path().join("clusters/locked"),
        "locked",
        "ltops loadtest -c locked",
    )
    .unwrap();
    let o = env.run(&["delete", "locked", "--yes"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(ltops::exit::LOCKED), "{out}");
    assert!(
        out.contains(&format!("pid {}", std::process::id())),
        "{out}"
    );
    assert!(out.contains("ltops loadtest -c locked"), "{out}");
    assert!(env
        .home
        .path()
        .join("clusters/locked/cluster.toml")
        .is_file());
}

#[test]
fn bad_arguments_say_what_to_do() {
    let env = Env::new();
    let usage = Some(ltops::exit::USAGE);

    let o = env.run(&["deploy", "-c", "nope"]);
    assert_eq!(o.status.code(), usage);
    assert!(
        text(&o).contains("no cluster named \"nope\""),
        "{}",
        text(&o)
    );

    let o = env.run(&[
        "create",
        "--name",
        "k",
        "--type",
        "kubernetes",
        "--database",
        "sqlite",
    ]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("--database-url-secret"), "{}", text(&o));
    assert!(!env.home.path().join("clusters/k").exists());
    let o = env.run(&["create", "--name", "k", "--users", "10"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("--type kubernetes"), "{}", text(&o));

    let o = env.run(&["create", "--name", "two", "--app-count", "2"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("--database postgres"), "{}", text(&o));

    assert_eq!(env.run(&["create", "--name", "c"]).status.code(), Some(0));
    let o = env.run(&["create", "--name", "c"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    let o = env.run(&["deploy", "-c", "c", "--server", "/nonexistent/chat-server"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("chat-server not found"), "{}", text(&o));

    let o = env.run(&["loadtest", "-c", "c", "--threshold", "nonsense"]);
    assert_eq!(o.status.code(), usage);

    let o = env.run(&["loadtest"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("--quick"), "{}", text(&o));

    let o = env.run(&["delete", "c"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("--yes"), "{}", text(&o));

    // A hand-edited type whose provider finds none of its state.
    let path = env.home.path().join("clusters/c/cluster.toml");
    let t = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        t.replace("type = \"local\"", "type = \"kubernetes\""),
    )
    .unwrap();
    let o = env.run(&["deploy", "-c", "c"]);
    assert_eq!(o.status.code(), usage);
    assert!(text(&o).contains("cluster.toml"), "{}", text(&o));

    let o = env.run(&["help", "loadtest"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o).contains("Examples:") && text(&o).contains("ltops loadtest --quick"),
        "{}",
        text(&o)
    );
}

/// No secret in any command line: a running local cluster with its private PostgreSQL and two
/// server instances (the database URL holds a password) and an agent (the control token). Every
/// process on the machine is inspected, so forks (PostgreSQL's backends) count too.
#[test]
fn no_secret_appears_in_a_command_line_of_a_running_cluster() {
    require_binaries();
    if !Path::new("/usr/lib/postgresql").is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "PostgreSQL binaries are missing (CI=true requires them; .ci/run installs them)"
            );
        }
        eprintln!("note: skipping: no PostgreSQL binaries");
        return;
    }
    let env = Env::new();
    let o = env.run(&[
        "create",
        "--name",
        "pgsec",
        "--database",
        "postgres",
        "--app-count",
        "2",
        "--agents",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env.run(&["deploy", "-c", "pgsec"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let st = env.state("pgsec");
    let local: LocalState = st.provider_state(Path::new("cluster.toml")).unwrap();
    let password = local.postgres.as_ref().unwrap().password.clone();
    assert!(password.len() >= 8);
    let mut seen = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        if line.contains("pgsec") || line.contains(env.home.path().to_str().unwrap()) {
            seen += 1;
        }
        assert!(
            !line.contains(&password),
            "the database password is in: {line}"
        );
        assert!(
            !line.contains(&st.control_token),
            "the control token is in: {line}"
        );
    }
    assert!(seen >= 3, "the cluster's processes were found ({seen})");
    let o = env.run(&["delete", "pgsec", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// `cluster.toml` is user-editable, so it is input: a PID ltops cannot prove it started (init's,
/// or one without a start time) and a PostgreSQL data directory outside the places ltops uses
/// are refused with the file and the key, before anything is signalled or removed; the
/// directory named stays untouched.
#[test]
fn hand_edited_state_cannot_make_delete_signal_or_remove_what_ltops_did_not_create() {
    require_binaries();
    let env = Env::new();
    let o = env.run(&["create", "--name", "h", "--agents", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let path = env.home.path().join("clusters/h/cluster.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let usage = Some(ltops::exit::USAGE);

    let edited = |provider: &str| {
        let mut t: toml::Table = original.parse().unwrap();
        let extra: toml::Table = provider.parse().unwrap();
        t["provider"].as_table_mut().unwrap().extend(extra);
        toml::to_string(&t).unwrap()
    };
    let pid1 = edited(
        r#"processes = [{ role = "server", index = 0, pid = 1, dir = "/", log = "/tmp/x.log" }]"#,
    );
    std::fs::write(&path, pid1).unwrap();
    let o = env.run(&["delete", "h", "--yes"]);
    assert_eq!(o.status.code(), usage, "{}", text(&o));
    assert!(
        text(&o).contains(
            "provider.processes[0].pid: server-0: pid = 1 is not a process ltops started"
        ),
        "{}",
        text(&o)
    );
    assert!(path.exists(), "the state was removed anyway");

    let victim = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(victim.path().join("data")).unwrap();
    std::fs::write(victim.path().join("keep-me"), "user data").unwrap();
    let pg = edited(&format!(
        "postgres = {{ bin_dir = \"/usr/lib/postgresql/17/bin\", data_dir = {:?}, port = 5999, user = \"ltops\", password = \"pw\", database = \"chat\" }}",
        victim.path().join("data").display().to_string()
    ));
    std::fs::write(&path, pg).unwrap();
    let o = env.run(&["delete", "h", "--yes"]);
    assert_eq!(o.status.code(), usage, "{}", text(&o));
    assert!(
        text(&o).contains("provider.postgres.data_dir: ")
            && text(&o).contains("is not where ltops keeps"),
        "{}",
        text(&o)
    );
    assert!(victim.path().join("keep-me").exists(), "{}", text(&o));
    assert!(victim.path().join("data").exists());

    std::fs::write(&path, &original).unwrap();
    let o = env.run(&["delete", "h", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(victim.path().join("keep-me").exists());
}

/// Intervals the agent has flushed for runs started after `since` (files in its results dir).
fn intervals_since(dir: &Path, before: &[PathBuf]) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !before.contains(&e.path()))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| t.matches("\"kind\":\"interval\"").count())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs a 10 s load test and freezes `pid` (SIGSTOP) for 2 s once it is under way; returns the
/// report and the agent's log from that run.
fn run_with_a_freeze(env: &Env, cluster: &str, pid: u32) -> (String, String) {
    let cfg = env.tiny_config("10s");
    let results = env
        .home
        .path()
        .join(format!("clusters/{cluster}/agent-0/results"));
    let before: Vec<PathBuf> = std::fs::read_dir(&results)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let log = env
        .home
        .path()
        .join(format!("clusters/{cluster}/logs/agent-0.log"));
    let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let child = env.spawn_loadtest(cluster, &cfg, &["--skip-setup", "--progress", "none"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while intervals_since(&results, &before) < 3 {
        assert!(Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(100));
    }
    let signal = |sig: &str| {
        let s = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(2));
    signal("-CONT");
    let o = child.wait_with_output().unwrap();
    let report = text(&o);
    assert!(matches!(o.status.code(), Some(0) | Some(3)), "{report}");
    let all = std::fs::read(&log).unwrap_or_default();
    let agent_log =
        String::from_utf8_lossy(&all[(log_start as usize).min(all.len())..]).to_string();
    eprintln!("--- froze pid {pid} for 2 s ---\n{report}\n--- agent log ---\n{agent_log}");
    (report, agent_log)
}

/// The interval numbers an agent's log flags with `prefix` (`… in interval N: …`).
fn flagged_intervals(log: &str, prefix: &str) -> Vec<u64> {
    log.match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &log[at + prefix.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Who was slow is said truthfully. A server frozen for 2 s (SIGSTOP) makes actions start late,
/// but the generator kept up: the report and the agent say the server stalled, and the latency
/// figures stay trusted. An agent frozen for 2 s is the generator falling behind: its times are
/// overstated (not "understated") and the run's latency figures are marked unreliable.
#[test]
fn lateness_is_attributed_to_the_server_or_to_the_generator() {
    require_binaries();
    let env = Env::new();
    let o = env.run(&["create", "--name", "who", "--agents", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env.run(&["deploy", "-c", "who"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cfg = env.tiny_config("2s");
    let o = env.run(&["loadtest", "-c", "who", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "setup run: {}", text(&o));
    let st = env.state("who");

    let (report, agent_log) = run_with_a_freeze(&env, "who", pid_of(&st, Role::Server, 0).unwrap());
    assert!(report.contains("WARNING: the server stalled: "), "{report}");
    assert!(report.contains("\n  limit       the server: "), "{report}");
    assert!(report.contains("the load generator kept up"), "{report}");
    assert!(!report.contains("fell behind"), "{report}");
    assert!(!report.contains("UNRELIABLE"), "{report}");
    // The frozen intervals are the server's. On a busy machine (CI runs tests side by side) the
    // agent may truthfully report falling behind in another interval, never in those.
    let stalled = flagged_intervals(&agent_log, "SERVER STALLED in interval ");
    let behind = flagged_intervals(&agent_log, "AGENT FALLING BEHIND in interval ");
    assert!(!stalled.is_empty(), "{agent_log}");
    assert!(
        stalled.iter().all(|i| !behind.contains(i)),
        "an interval blamed on both: {agent_log}"
    );

    let (report, agent_log) = run_with_a_freeze(&env, "who", pid_of(&st, Role::Agent, 0).unwrap());
    assert!(
        report.contains("WARNING: the load generator fell behind"),
        "{report}"
    );
    assert!(report.contains("overstated"), "{report}");
    assert!(!report.contains("understated"), "{report}");
    assert!(report.contains("LATENCY FIGURES UNRELIABLE"), "{report}");
    // The report leads with it: the limit line comes before the settings and the tables.
    let limit = report.find("\n  limit       the load generator, not the server: ");
    let tables = report.find("Response time, ms");
    assert!(
        limit.is_some() && tables.is_some() && limit < tables,
        "{report}"
    );
    assert!(agent_log.contains("AGENT FALLING BEHIND"), "{agent_log}");

    let o = env.run(&["delete", "who", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// Capacity search through the real binaries against a chat server whose capacity is small and
/// known on purpose: it refuses WebSockets beyond 30 (`CHAT_SERVER_MAX_WEBSOCKETS`), so from 31
/// users on, connects fail and the `*.error_rate<1%` SLO breaks. The search must answer within
/// its tolerance below that limit, never above it, with every probe in `capacity.json`; and
/// `--min-capacity` must set the exit code both ways.
#[test]
fn capacity_search_finds_a_small_known_capacity_and_gates_on_it() {
    require_binaries();
    let env = Env::new();
    let cfg = env.home.path().join("capacity.toml");
    std::fs::write(
        &cfg,
        r#"preset = "quick"
[dataset]
teams = 1
users = 100
posts_per_channel = 2
[[dataset.channels]]
count = 4
members = 25
[users]
count = 80
[behaviour]
mode = "closed"
mean_interval = "500ms"
interval_jitter = "200ms"
# No planned reconnects: a socket closing while its successor connects would count twice
# against the limit for a moment.
[behaviour.mix]
ws_reconnect = 0
[run]
interval = "1s"
thresholds = ["*.error_rate<1%"]
"#,
    )
    .unwrap();
    let o = env.run(&["create", "--name", "cap", "--agents", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env
        .cmd(&["deploy", "-c", "cap"])
        .env("CHAT_SERVER_MAX_WEBSOCKETS", "30")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let search = |extra: &[&str]| {
        let mut args = vec![
            "loadtest",
            "-c",
            "cap",
            "--config",
            cfg.to_str().unwrap(),
            "--find-capacity",
            "--start-users",
            "8",
            "--tolerance",
            "10%",
            "--probe-warmup",
            "3s",
            "--probe-window",
            "6s",
            "--progress",
            "plain",
        ];
        args.extend_from_slice(extra);
        let o = env.run(&args);
        let dir = env.state("cap").last_run.unwrap().results_dir;
        (o, dir)
    };

    // 8, 16 good; 32 bad; bisection to 30; confirmed.
    let started = Instant::now();
    let (o, dir) = search(&["--max-users", "80", "--min-capacity", "20"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let r = ltparse::load_capacity(&dir).unwrap();
    let supported = r.supported_users.expect("an answer");
    assert!(
        (27..=30).contains(&supported),
        "supported {supported}: {out}"
    );
    let bad = r.bracket.bad.expect("a bad level");
    assert!(
        bad > 30 && (bad - supported) as f64 / supported as f64 <= 0.10 + 1e-9 || bad <= 33,
        "{r:?}"
    );
    assert!(
        out.contains(&format!(
            "supported users: {supported} (between {supported} and {bad}, tolerance 10%)"
        )),
        "{out}"
    );
    assert!(out.contains("at least 20 (--min-capacity)"), "{out}");
    use loadtest_contract::capacity::ProbeVerdict;
    for p in &r.probes {
        if p.users > 30 {
            assert_eq!(p.verdict, ProbeVerdict::Bad, "{p:?}");
            assert!(
                p.reason.as_deref().unwrap_or("").contains("error_rate"),
                "{p:?}"
            );
        }
        assert!(p.window_end_ms - p.window_start_ms == 6_000, "{p:?}");
        assert!(!p.slos.is_empty(), "{p:?}");
    }
    let last = r.probes.last().unwrap();
    assert!(last.confirmation && last.users == supported && last.verdict == ProbeVerdict::Good);
    assert!(last.active_users == supported, "{last:?}");
    assert!(r
        .probes
        .iter()
        .any(|p| p.users == 16 && p.verdict == ProbeVerdict::Good));
    eprintln!(
        "capacity search: {} probes, {:.0} s, answer {supported} (bracket {supported}..{bad})",
        r.probes.len(),
        started.elapsed().as_secs_f64()
    );
    // The agents' results hold the whole run, with the user count following the probes.
    let mut peak = 0;
    let agent_files = ltparse::results_files_in(&dir)
        .unwrap()
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("agent-"))
        });
    for f in agent_files {
        let reader = ResultsReader::new(
            std::io::BufReader::new(std::fs::File::open(&f).unwrap()),
            "x",
        );
        let mut active = Vec::new();
        for item in reader {
            if let Item::Record(r) = item.unwrap() {
                if let Record::Interval(i) = *r {
                    active.push(i.gauges.active_users);
                }
            }
        }
        peak += active.iter().max().copied().unwrap_or(0);
        assert!(
            active.windows(2).any(|w| w[1] < w[0]),
            "users were removed: {active:?}"
        );
    }
    assert!(peak >= 32, "peak {peak}");

    // A search capped below the gate: it answers 16, under --min-capacity 20: exit 6; and
    // against the first search, a regression.
    let first = dir.to_str().unwrap().to_string();
    let (o, second) = search(&[
        "--max-users",
        "16",
        "--min-capacity",
        "20",
        "--baseline",
        &first,
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains("below --min-capacity 20"), "{out}");
    assert!(
        out.contains(&format!("supported users fell from {supported} to 16")),
        "{out}"
    );
    let r2 = ltparse::load_capacity(&second).unwrap();
    assert_eq!(r2.supported_users, Some(16));
    // Compared with the first search: fewer users supported, beyond the tolerance.
    let c = ltparse::compare_capacity(&r, &r2);
    assert!(c.is_regression(), "{}", c.sentence);
    let html = ltparse::render_capacity(&r, Some(&c), ltparse::Display::Html).unwrap();
    assert_eq!(html.matches("<rect class=\"probe").count(), r.probes.len());

    // SLOs are required.
    let plain = env.home.path().join("plain.toml");
    std::fs::write(
        &plain,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("thresholds = [\"*.error_rate<1%\"]", ""),
    )
    .unwrap();
    let o = env.run(&[
        "loadtest",
        "-c",
        "cap",
        "--config",
        plain.to_str().unwrap(),
        "--find-capacity",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("needs SLOs"), "{}", text(&o));
    let o = env.run(&["delete", "cap", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// `promtool check metrics` (Prometheus's own linter, Debian's `prometheus` package) finds both
/// endpoints clean in the middle of a run: the server's and every agent's, with the standard
/// process metrics and the runtime's live tasks present.
#[test]
fn promtool_finds_server_and_agent_metrics_clean_during_a_run() {
    require_binaries();
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (Debian package prometheus)"
        );
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let env = Env::new();
    let cfg = env.tiny_config("8s");
    assert_eq!(
        env.run(&["create", "--name", "prom", "--agents", "2"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(env.run(&["deploy", "-c", "prom"]).status.code(), Some(0));
    let child = env.spawn_loadtest("prom", &cfg, &["--progress", "none"]);
    let st = env.state("prom");
    let mut endpoints: Vec<(String, &str)> = st
        .components(Role::Server)
        .filter_map(|c| c.metrics_address.clone())
        .map(|a| (a, "chat_runtime_alive_tasks"))
        .collect();
    endpoints.extend(
        st.components(Role::Agent)
            .map(|c| (c.address.clone(), "loadtest_agent_runtime_alive_tasks")),
    );
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    // Wait until the run has users, then lint every endpoint.
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = |addr: &str| {
        agent_get(addr, "/metrics", "")
            .and_then(|r| r.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))
            .unwrap_or_default()
    };
    loop {
        let active: f64 = endpoints[1..]
            .iter()
            .map(|(a, _)| {
                body(a)
                    .lines()
                    .find_map(|l| l.strip_prefix("loadtest_agent_active_users "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum();
        if active >= 20.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never got its users");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (addr, tasks) in &endpoints {
        let text = body(addr);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            tasks,
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{addr}: no {name}:\n{text}"
            );
        }
        let mut lint = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        lint.stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let o = lint.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{addr}: promtool check metrics:\n{}\n{text}",
            text_of(&o)
        );
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(env.run(&["delete", "prom", "--yes"]).status.code(), Some(0));
}

fn text_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn have(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{program} is missing (Debian package prometheus)"
    );
    found
}

/// The dashboards in `dashboards/` against a real Prometheus scraping a real local cluster
/// (`ltops create --metrics`): every panel's PromQL is evaluated through Prometheus's HTTP API
/// after a short load and must be valid and return at least one series. Grafana itself cannot
/// run here: the dashboard JSON is checked for the structure Grafana's import needs (schema
/// version, the `${DS_PROMETHEUS}` input, the `$instance` variable, panels with ids, grid
/// positions, typed targets); `examples.rs` checks it against Grafana's published schema.
#[test]
fn every_dashboard_panel_has_live_data_in_the_clusters_prometheus() {
    require_binaries();
    if !have("prometheus") || !have("promtool") {
        eprintln!("skipped: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut queries: Vec<(String, String)> = Vec::new();
    for name in ["server.json", "agents.json", "overview.json"] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "{name}");
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "{name}");
        assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS", "{name}");
        assert_eq!(d["templating"]["list"][0]["name"], "instance", "{name}");
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{name}");
        let mut ids = std::collections::HashSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: duplicate id"
            );
            assert_eq!(p["type"], "timeseries", "{name}: {title}");
            assert_eq!(
                p["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{name}: {title}"
            );
            for k in ["h", "w", "x", "y"] {
                assert!(
                    p["gridPos"][k].as_u64().is_some(),
                    "{name}: {title}: gridPos.{k}"
                );
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title}");
            for t in targets {
                assert!(t["refId"].as_str().is_some(), "{name}: {title}");
                let expr = t["expr"].as_str().unwrap();
                queries.push((format!("{name}: {title}: {expr}"), expr.to_string()));
            }
        }
    }

    let env = Env::new();
    let cfg = env.tiny_config("10s");
    let o = env.run(&["create", "--name", "dash", "--agents", "2", "--metrics"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = env.run(&["deploy", "-c", "dash"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let config = env
        .home
        .path()
        .join("clusters/dash/prometheus-0/prometheus.yml");
    let o = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "promtool check config: {}", text_of(&o));
    let st = env.state("dash");
    let prom = st.component(Role::Prometheus, 0).unwrap().address.clone();
    let o = env.run(&["status", "dash"]);
    assert!(
        text(&o).contains(&format!("Prometheus at http://{prom}")),
        "{}",
        text(&o)
    );
    let o = env.run(&[
        "loadtest",
        "-c",
        "dash",
        "--config",
        cfg.to_str().unwrap(),
        "--progress",
        "none",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let query = |expr: String| {
        let http = http.clone();
        let url = format!("http://{prom}/api/v1/query");
        async move {
            let r = http
                .get(url)
                .query(&[("query", expr)])
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            v
        }
    };
    // Every target (3 components) is up.
    let up = rt.block_on(query("up".into()));
    let ups = up["data"]["result"].as_array().unwrap();
    assert_eq!(ups.len(), 3, "{up}");
    assert!(ups.iter().all(|s| s["value"][1] == "1"), "{up}");
    let mut failed = Vec::new();
    for (what, expr) in &queries {
        let expr = expr
            .replace("$__rate_interval", "30s")
            .replace("$instance", ".*");
        let v = rt.block_on(query(expr));
        let series = v["data"]["result"].as_array().map_or(0, Vec::len);
        if v["status"] != "success" || series == 0 {
            failed.push(format!("{what}\n    -> {v}"));
        } else {
            eprintln!("ok ({series} series): {what}");
        }
    }
    assert!(
        failed.is_empty(),
        "panels without data:\n{}",
        failed.join("\n")
    );
    eprintln!("{} panel queries checked against Prometheus", queries.len());

    let pid = local(&env.state("dash"))
        .processes
        .iter()
        .find(|p| p.role == Role::Prometheus)
        .and_then(|p| p.pid)
        .unwrap();
    assert_eq!(env.run(&["delete", "dash", "--yes"]).status.code(), Some(0));
    wait_gone(&[pid]);
}
