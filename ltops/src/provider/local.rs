//! The `local` provider: every component is a process on this machine.
//!
//! - servers: `chat-server --listen 127.0.0.1:P --metrics-listen 127.0.0.1:M` with
//!   `--data-dir <cluster>/server-<i>/data` (SQLite) or `--database-url` (PostgreSQL);
//! - agents: `loadtest-agent serve --listen 127.0.0.1:P --token-file <cluster>/agent-<i>/token
//!   --results-dir <cluster>/agent-<i>/results --agent-id agent-<i>` (the agent flushes its
//!   results file there every interval: what `salvage_results` copies when an agent dies);
//! - PostgreSQL (optional): see [`super::postgres`].
//!
//! Each process runs detached in its own process group with its working directory
//! `<cluster>/<role>-<i>/` and its output appended to `<cluster>/logs/<role>-<i>.log`. Ports are
//! picked by binding port 0 and releasing it; if another process grabs one in between, start-up
//! fails with "address in use" and we retry with new ports. With several server instances
//! (PostgreSQL only), agent `i` sends its users to server `i mod N`: no proxy in between, and
//! every instance gets a share of the load.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ComponentHealth, Health, Provider, ShellCommand};
use crate::agent_client::AgentEndpoint;
use crate::error::{Error, IoContext, Result};
use crate::interrupt;
use crate::process::{self, indent, tail};
use crate::state::{Binaries, ClusterState, ClusterType, Component, Database, Home, Role};

/// How long a component may take to answer its health check after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period between SIGTERM and SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Attempts when a freshly picked port turns out to be taken.
const PORT_ATTEMPTS: usize = 3;

pub struct LocalProvider {
    home: Home,
}

impl LocalProvider {
    pub fn new(home: Home) -> Self {
        Self { home }
    }

    fn dir(&self, state: &ClusterState) -> PathBuf {
        self.home.cluster_dir(&state.name)
    }

    fn component_dir(&self, state: &ClusterState, role: Role, index: u32) -> PathBuf {
        self.dir(state).join(format!("{}-{index}", role.name()))
    }

    fn log_path(&self, state: &ClusterState, role: Role, index: u32) -> PathBuf {
        self.dir(state)
            .join("logs")
            .join(format!("{}-{index}.log", role.name()))
    }

    fn find<'a>(&self, state: &'a ClusterState, role: Role, index: u32) -> Result<&'a Component> {
        state.component(role, index).ok_or_else(|| {
            let have: Vec<String> = state
                .components(role)
                .map(|c| c.index.to_string())
                .collect();
            let hint = if have.is_empty() {
                format!(
                    "the cluster has no {} component; run `ltops deploy -c {}` first",
                    role.name(),
                    state.name
                )
            } else {
                format!("choose one of -i {}", have.join(", "))
            };
            Error::Usage(format!(
                "cluster {:?} has no {} {index}; {hint}",
                state.name,
                role.name()
            ))
        })
    }

    /// Starts one process and waits until its health check ([`probe`]) passes, retrying with
    /// fresh ports when the port was taken. Returns the component as recorded.
    #[allow(clippy::too_many_arguments)]
    fn start_component(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        program: &Path,
        args: &dyn Fn(u16, u16) -> Vec<String>,
        with_metrics: bool,
        on_spawn: &mut dyn FnMut(Component) -> Result<()>,
    ) -> Result<Component> {
        let dir = self.component_dir(state, role, index);
        crate::state::create_private_dir(&dir)?;
        let log = self.log_path(state, role, index);
        let mut last_err = None;
        for _attempt in 0..PORT_ATTEMPTS {
            interrupt::check()?;
            let port = process::free_port()?;
            let metrics_port = if with_metrics {
                process::free_port()?
            } else {
                0
            };
            let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = Command::new(program);
            cmd.args(args(port, metrics_port)).current_dir(&dir);
            let spawned = process::spawn_detached(&mut cmd, &log)?;
            let c = Component {
                role,
                index,
                address: format!("127.0.0.1:{port}"),
                metrics_address: with_metrics.then(|| format!("127.0.0.1:{metrics_port}")),
                pid: Some(spawned.pid),
                start_ticks: spawned.start_ticks,
                dir: dir.clone(),
                log: log.clone(),
            };
            on_spawn(c.clone())?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Err(e) = interrupt::check() {
                    process::stop_group(spawned.pid, spawned.start_ticks, STOP_GRACE);
                    return Err(e);
                }
                if !process::is_alive(spawned.pid, spawned.start_ticks) {
                    let new_output = read_from(&log, log_start);
                    let lower = new_output.to_lowercase();
                    if lower.contains("address in use") || lower.contains("addrinuse") {
                        last_err = Some(format!("port {port} was taken"));
                        break;
                    }
                    return Err(Error::Runtime(format!(
                        "{} exited during start-up; its last log lines ({}):\n{}\nFix the cause, then run `ltops deploy -c {}` again.",
                        c.label(),
                        log.display(),
                        indent(&tail(&log, 15)),
                        state.name
                    )));
                }
                if matches!(probe(role, &c.address, &state.control_token), Ok(200)) {
                    return Ok(c);
                }
                if Instant::now() > deadline {
                    process::stop_group(spawned.pid, spawned.start_ticks, STOP_GRACE);
                    return Err(Error::Runtime(format!(
                        "{} did not become healthy within {}s; its last log lines ({}):\n{}\nCheck the log, then run `ltops deploy -c {}` again.",
                        c.label(),
                        START_TIMEOUT.as_secs(),
                        log.display(),
                        indent(&tail(&log, 15)),
                        state.name
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Err(Error::Runtime(format!(
            "could not start {}-{index}: {} (tried {PORT_ATTEMPTS} times); something on this machine keeps taking ports — try again",
            role.name(),
            last_err.unwrap_or_default()
        )))
    }

    fn stop_components(&self, state: &mut ClusterState, roles: &[Role]) {
        // Agents first (they talk to servers), then servers.
        let mut order: Vec<usize> = (0..state.components.len())
            .filter(|i| roles.contains(&state.components[*i].role))
            .collect();
        order.sort_by_key(|i| match state.components[*i].role {
            Role::Agent => 0,
            Role::Server => 1,
            Role::Postgres => 2,
        });
        for i in order {
            let c = &mut state.components[i];
            if let Some(pid) = c.pid.take() {
                process::stop_group(pid, c.start_ticks.take(), STOP_GRACE);
            }
        }
    }

    fn token_file(&self, state: &ClusterState, index: u32) -> PathBuf {
        self.component_dir(state, Role::Agent, index).join("token")
    }
}

/// What a log gained since `offset`.
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

/// A component's health check; `Ok(200)` is healthy. Servers: `GET /api/v4/system/ping`;
/// agents: `GET /v1/clock` with the token; PostgreSQL: a TCP connection.
fn probe(role: Role, addr: &str, token: &str) -> Result<u16> {
    let timeout = Duration::from_secs(2);
    match role {
        Role::Server => process::http_get_status(addr, "/api/v4/system/ping", None, timeout),
        Role::Agent => process::http_get_status(
            addr,
            loadtest_contract::control::PATH_CLOCK,
            Some(token),
            timeout,
        ),
        Role::Postgres => {
            let sock: std::net::SocketAddr = addr
                .parse()
                .map_err(|_| Error::Runtime(format!("{addr} is not an address")))?;
            std::net::TcpStream::connect_timeout(&sock, timeout)
                .map(|_| 200)
                .context(|| format!("connecting to {addr}"))
        }
    }
}

impl Provider for LocalProvider {
    fn kind(&self) -> ClusterType {
        ClusterType::Local
    }

    fn create(&self, state: &mut ClusterState) -> Result<()> {
        let dir = self.dir(state);
        for sub in ["logs", "results"] {
            crate::state::create_private_dir(&dir.join(sub))?;
        }
        if state.database == Database::Postgres {
            let pg = super::postgres::init(&dir, &state.name)?;
            let mut pg_state = pg;
            let started = super::postgres::start(&mut pg_state)?;
            state.postgres = Some(pg_state);
            state.upsert(started);
        }
        Ok(())
    }

    fn deploy(
        &self,
        state: &mut ClusterState,
        binaries: &Binaries,
        save: &dyn Fn(&ClusterState) -> Result<()>,
    ) -> Result<()> {
        // Restart semantics: stop what runs, then start everything fresh.
        self.stop_components(state, &[Role::Server, Role::Agent]);
        state.components.retain(|c| c.role == Role::Postgres);
        state.binaries = Some(binaries.clone());
        save(state)?;

        if let Some(pg) = state.postgres.as_mut() {
            let alive = state
                .components
                .iter()
                .find(|c| c.role == Role::Postgres)
                .and_then(|c| c.pid.map(|p| process::is_alive(p, c.start_ticks)))
                .unwrap_or(false);
            if !alive {
                let c = super::postgres::start(pg)?;
                state.upsert(c);
                save(state)?;
            }
        }

        let result = (|| -> Result<()> {
            // What to start: (role, index, program, args(port, metrics port), metrics?).
            type Args = Box<dyn Fn(u16, u16) -> Vec<String>>;
            let mut plan: Vec<(Role, u32, PathBuf, Args, bool)> = Vec::new();
            for i in 0..state.app_count {
                let data_dir = self.component_dir(state, Role::Server, i).join("data");
                let db_url = state.postgres.as_ref().map(|p| p.url());
                let args = move |port: u16, metrics: u16| {
                    let mut a = vec![
                        "--listen".to_string(),
                        format!("127.0.0.1:{port}"),
                        "--metrics-listen".into(),
                        format!("127.0.0.1:{metrics}"),
                    ];
                    match &db_url {
                        Some(url) => a.extend(["--database-url".to_string(), url.clone()]),
                        None => {
                            a.extend(["--data-dir".to_string(), data_dir.display().to_string()])
                        }
                    }
                    a
                };
                plan.push((
                    Role::Server,
                    i,
                    binaries.server.clone(),
                    Box::new(args),
                    true,
                ));
            }
            for i in 0..state.agents {
                let token_file = self.token_file(state, i);
                crate::state::write_atomic(&token_file, state.control_token.as_bytes(), 0o600)?;
                let tf = token_file.display().to_string();
                let results = self
                    .component_dir(state, Role::Agent, i)
                    .join("results")
                    .display()
                    .to_string();
                let args = move |port: u16, _metrics: u16| {
                    vec![
                        "serve".to_string(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--token-file".into(),
                        tf.clone(),
                        "--results-dir".into(),
                        results.clone(),
                        "--agent-id".into(),
                        format!("agent-{i}"),
                    ]
                };
                plan.push((
                    Role::Agent,
                    i,
                    binaries.agent.clone(),
                    Box::new(args),
                    false,
                ));
            }
            for (role, i, program, args, with_metrics) in plan {
                let snapshot = state.clone();
                let c = self.start_component(
                    &snapshot,
                    role,
                    i,
                    &program,
                    &args,
                    with_metrics,
                    &mut |c| {
                        state.upsert(c);
                        save(state)
                    },
                )?;
                state.upsert(c);
                save(state)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Leave nothing half-started behind.
            self.stop_components(state, &[Role::Server, Role::Agent]);
            let _ = save(state);
            return Err(e);
        }
        Ok(())
    }

    fn stop(&self, state: &mut ClusterState) -> Result<()> {
        self.stop_components(state, &[Role::Server, Role::Agent]);
        Ok(())
    }

    fn status(&self, state: &ClusterState) -> Vec<ComponentHealth> {
        state
            .components
            .iter()
            .map(|c| {
                let health = match c.pid {
                    Some(pid) if process::is_alive(pid, c.start_ticks) => {
                        let check = probe(c.role, &c.address, &state.control_token);
                        match check {
                            Ok(200) => Health::Healthy,
                            Ok(code) => Health::Unhealthy(format!("health check answered {code}")),
                            Err(e) => Health::Unhealthy(e.to_string()),
                        }
                    }
                    _ => Health::Stopped,
                };
                ComponentHealth {
                    component: c.clone(),
                    health,
                }
            })
            .collect()
    }

    fn agents(&self, state: &ClusterState) -> Result<Vec<AgentEndpoint>> {
        let servers = self.server_urls(state);
        if servers.is_empty() {
            return Err(Error::Usage(format!(
                "cluster {:?} has no server running; run `ltops deploy -c {}`",
                state.name, state.name
            )));
        }
        let mut out = Vec::new();
        for i in 0..state.agents {
            let c = self.find(state, Role::Agent, i)?;
            if !c.pid.is_some_and(|p| process::is_alive(p, c.start_ticks)) {
                return Err(Error::Runtime(format!(
                    "agent-{i} of cluster {:?} is not running; its last log lines:\n{}\nRun `ltops deploy -c {}` to restart the cluster.",
                    state.name,
                    indent(&tail(&c.log, 10)),
                    state.name
                )));
            }
            out.push(AgentEndpoint {
                index: i,
                control_url: c.url(),
                token: state.control_token.clone(),
                target_url: servers[i as usize % servers.len()].clone(),
            });
        }
        Ok(out)
    }

    fn server_urls(&self, state: &ClusterState) -> Vec<String> {
        state
            .components(Role::Server)
            .filter(|c| c.pid.is_some())
            .map(Component::url)
            .collect()
    }

    fn agent_log_tail(&self, state: &ClusterState, index: u32, lines: usize) -> String {
        tail(&self.log_path(state, Role::Agent, index), lines)
    }

    fn agent_alive(&self, state: &ClusterState, index: u32) -> bool {
        state
            .component(Role::Agent, index)
            .and_then(|c| c.pid.map(|p| process::is_alive(p, c.start_ticks)))
            .unwrap_or(false)
    }

    fn salvage_results(&self, state: &ClusterState, index: u32, run_id: &str, dest: &Path) -> bool {
        // The agent flushes its results to a file in its working directory as it runs; take
        // the newest `.jsonl` there whose name or content mentions the run.
        let dir = self.component_dir(state, Role::Agent, index);
        let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        let mut stack = vec![(dir, 0)];
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && depth < 3 {
                    stack.push((p, depth + 1));
                } else if p.extension().is_some_and(|x| x == "jsonl") {
                    let named = p.to_string_lossy().contains(run_id);
                    let mentions = named
                        || std::fs::read_to_string(&p)
                            .map(|t| t.lines().next().is_some_and(|l| l.contains(run_id)))
                            .unwrap_or(false);
                    if mentions {
                        let m = e
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(std::time::UNIX_EPOCH);
                        candidates.push((m, p));
                    }
                }
            }
        }
        candidates.sort();
        match candidates.pop() {
            Some((_, p)) => std::fs::copy(&p, dest).is_ok(),
            None => false,
        }
    }

    fn ssh(&self, state: &ClusterState, role: Role, index: u32, cmd: &ShellCommand) -> Result<i32> {
        let c = self.find(state, role, index)?;
        let mut command = match cmd {
            ShellCommand::Interactive => {
                let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
                eprintln!(
                    "ltops: shell in {} of cluster {:?} ({}); exit to return",
                    c.label(),
                    state.name,
                    c.dir.display()
                );
                Command::new(shell)
            }
            ShellCommand::Run(words) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(words.join(" "));
                sh
            }
        };
        command
            .current_dir(&c.dir)
            .env("LTOPS_CLUSTER", &state.name)
            .env("LTOPS_ROLE", role.name())
            .env("LTOPS_INDEX", index.to_string())
            .env("LTOPS_URL", c.url())
            .env("LTOPS_LOG", &c.log);
        if let Some(pid) = c.pid {
            command.env("LTOPS_PID", pid.to_string());
        }
        if let Some(m) = &c.metrics_address {
            command.env("LTOPS_METRICS_URL", format!("http://{m}/metrics"));
        }
        if role == Role::Agent {
            command.env("LTOPS_TOKEN_FILE", self.token_file(state, index));
        }
        if role == Role::Postgres {
            if let Some(pg) = &state.postgres {
                command.env("DATABASE_URL", pg.url());
            }
        }
        let status = command
            .status()
            .context(|| format!("running a shell in {}", c.dir.display()))?;
        Ok(status.code().unwrap_or(1))
    }

    fn logs(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()> {
        let c = self.find(state, role, index)?;
        let path = &c.log;
        let mut f = std::fs::File::open(path).context(|| {
            format!(
                "opening {} (the component may never have started; run `ltops deploy -c {}`)",
                path.display(),
                state.name
            )
        })?;
        let mut out = std::io::stdout().lock();
        match lines {
            Some(n) => {
                let _ = writeln!(out, "{}", tail(path, n));
                let _ = f.seek(SeekFrom::End(0));
            }
            None => {
                let _ = std::io::copy(&mut f, &mut out);
            }
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        let mut buf = vec![0u8; 64 * 1024];
        while !interrupt::interrupted() {
            let n = f
                .read(&mut buf)
                .context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
        }
        Ok(())
    }

    fn delete(&self, state: &mut ClusterState) -> Result<()> {
        self.stop_components(state, &[Role::Server, Role::Agent]);
        if let Some(pg) = &state.postgres {
            super::postgres::stop(pg);
            super::postgres::remove(pg, &self.dir(state));
        }
        self.stop_components(state, &[Role::Postgres]);
        Ok(())
    }
}
