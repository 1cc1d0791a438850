//! The `local` provider: every component is a process on this machine.
//!
//! - servers: `chat-server --listen 127.0.0.1:P --metrics-listen 127.0.0.1:M` with
//!   `--data-dir <cluster>/server-<i>/data` (SQLite) or, for PostgreSQL, `--config
//!   <cluster>/server-<i>/server.toml` (mode 0600) holding the database URL, so the password is
//!   never on a command line;
//! - agents: `loadtest-agent serve --listen 127.0.0.1:P --token-file <cluster>/agent-<i>/token
//!   --results-dir <cluster>/agent-<i>/results --agent-id agent-<i>` (the agent flushes its
//!   results file there every interval: what [`Provider::lost_agent`] copies when an agent dies);
//! - PostgreSQL (optional): see [`super::postgres`].
//!
//! Each process runs detached in its own process group with its working directory
//! `<cluster>/<role>-<i>/` and its output appended to `<cluster>/logs/<role>-<i>.log`. Ports are
//! picked by binding port 0 and releasing it; if another process grabs one in between, start-up
//! fails with "address in use" and we retry with new ports. With several server instances
//! (PostgreSQL only), agent `i` sends its users to server `i mod N`: no proxy in between, and
//! every instance gets a share of the load (`--proxy nginx` is for remote providers).
//!
//! The provider's section of `cluster.toml` ([`LocalState`]) holds each process's PID and start
//! time and the private PostgreSQL's data directory and password; nothing outside this module and
//! [`super::postgres`] knows about them.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::postgres::PostgresState;
use super::{
    Artifacts, ComponentHealth, CreateRequest, DeleteOptions, Endpoints, Health, LostAgent,
    Provider, Save, Shape, ShellCommand,
};
use crate::agent_client::AgentEndpoint;
use crate::error::{Error, IoContext, Result};
use crate::interrupt;
use crate::process::{self, indent, tail};
use crate::state::{
    ClusterState, ClusterType, Component, Database, Home, Proxy, Role, CLUSTER_FILE,
};

/// How long a component may take to answer its health check after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period between SIGTERM and SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Attempts when a freshly picked port turns out to be taken.
const PORT_ATTEMPTS: usize = 3;

/// The local provider's section of `cluster.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    #[serde(default)]
    pub postgres: Option<PostgresState>,
    #[serde(default)]
    pub processes: Vec<Process>,
}

/// How one component runs here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub role: Role,
    pub index: u32,
    /// Process id (the leader of its own process group); absent when stopped.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Start time of the process (`/proc/PID/stat` field 22), to detect PID reuse.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Process {
    fn alive(&self) -> bool {
        self.pid
            .is_some_and(|p| process::is_alive(p, self.start_ticks))
    }
}

impl LocalState {
    /// Rejects what ltops never writes and could not act on safely: a PID it cannot prove it
    /// started (1 and below, or without the start time that detects reuse) and a PostgreSQL
    /// data directory other than the two places `postgres::init` uses.
    fn check(&self, cluster_dir: &Path, name: &str) -> std::result::Result<(), (String, String)> {
        for (i, p) in self.processes.iter().enumerate() {
            let key = format!("processes[{i}].pid");
            let who = format!("{}-{}", p.role.name(), p.index);
            match (p.pid, p.start_ticks) {
                (Some(pid), _) if pid <= 1 => {
                    return Err((
                        key,
                        format!(
                            "{who}: pid = {pid} is not a process ltops started; remove the pid and \
                             start_ticks lines (the component then counts as stopped)"
                        ),
                    ))
                }
                (Some(pid), None) => {
                    return Err((
                        key,
                        format!(
                            "{who}: pid = {pid} has no start_ticks, so ltops cannot tell whether \
                             that PID is still the process it started; remove the pid line (the \
                             component then counts as stopped) or restore start_ticks"
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let Some(pg) = &self.postgres {
            super::postgres::check_location(pg, cluster_dir, name)
                .map_err(|e| ("postgres.data_dir".to_string(), e))?;
        }
        Ok(())
    }

    fn process(&self, role: Role, index: u32) -> Option<&Process> {
        self.processes
            .iter()
            .find(|p| p.role == role && p.index == index)
    }

    fn upsert(&mut self, p: Process) {
        match self
            .processes
            .iter_mut()
            .find(|q| q.role == p.role && q.index == p.index)
        {
            Some(slot) => *slot = p,
            None => {
                self.processes.push(p);
                self.processes.sort_by_key(|p| (p.role, p.index));
            }
        }
    }
}

/// What `deploy` (re)starts and `stop` stops; PostgreSQL is handled on its own.
const COMPONENT_ROLES: [Role; 3] = [Role::Agent, Role::Prometheus, Role::Server];

pub struct LocalProvider {
    home: Home,
}

/// A component to start: what to run with which arguments, given its ports.
struct Plan {
    role: Role,
    index: u32,
    program: PathBuf,
    args: Box<dyn Fn(u16, u16) -> Vec<String> + Send + Sync>,
    with_metrics: bool,
}

impl LocalProvider {
    pub fn new(home: Home) -> Self {
        Self { home }
    }

    fn dir(&self, state: &ClusterState) -> PathBuf {
        self.home.cluster_dir(&state.name)
    }

    fn file(&self, state: &ClusterState) -> PathBuf {
        self.dir(state).join(CLUSTER_FILE)
    }

    /// The provider's section of `cluster.toml`, checked: it is user-editable, and what it names
    /// is what `stop` signals and `delete` removes.
    fn local(&self, state: &ClusterState) -> Result<LocalState> {
        let file = self.file(state);
        let local: LocalState = state.provider_state(&file)?;
        local
            .check(&self.dir(state), &state.name)
            .map_err(|(key, e)| {
                Error::Usage(format!(
                    "{}: provider.{key}: {e}",
                    crate::state::at_key(&file, &format!("provider.{key}"))
                ))
            })?;
        Ok(local)
    }

    fn component_dir(&self, state: &ClusterState, role: Role, index: u32) -> PathBuf {
        self.dir(state).join(format!("{}-{index}", role.name()))
    }

    fn log_path(&self, state: &ClusterState, role: Role, index: u32) -> PathBuf {
        self.dir(state)
            .join("logs")
            .join(format!("{}-{index}.log", role.name()))
    }

    fn token_file(&self, state: &ClusterState, index: u32) -> PathBuf {
        self.component_dir(state, Role::Agent, index).join("token")
    }

    /// Records a started process in both the generic and the provider's part, and saves.
    fn record(
        state: &mut ClusterState,
        local: &mut LocalState,
        c: Component,
        p: Process,
        save: &Save<'_>,
    ) -> Result<()> {
        state.upsert(c);
        local.upsert(p);
        state.set_provider_state(local)?;
        save(state)
    }

    /// Starts one process and waits until its health check ([`probe`]) passes, retrying with
    /// fresh ports when the port was taken. The process is recorded (and saved) as soon as it
    /// exists, so a crash of `ltops` never loses its PID.
    async fn start_component(
        &self,
        state: &mut ClusterState,
        local: &mut LocalState,
        plan: &Plan,
        save: &Save<'_>,
    ) -> Result<()> {
        let (role, index) = (plan.role, plan.index);
        let dir = self.component_dir(state, role, index);
        crate::state::create_private_dir(&dir)?;
        let log = self.log_path(state, role, index);
        let mut last_err = None;
        for _attempt in 0..PORT_ATTEMPTS {
            interrupt::check()?;
            let port = process::free_port()?;
            let metrics_port = if plan.with_metrics {
                process::free_port()?
            } else {
                0
            };
            let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = Command::new(&plan.program);
            cmd.args((plan.args)(port, metrics_port)).current_dir(&dir);
            let spawned = process::spawn_detached(&mut cmd, &log)?;
            let c = Component {
                role,
                index,
                address: format!("127.0.0.1:{port}"),
                metrics_address: plan
                    .with_metrics
                    .then(|| format!("127.0.0.1:{metrics_port}")),
                started: true,
            };
            let p = Process {
                role,
                index,
                pid: Some(spawned.pid),
                start_ticks: spawned.start_ticks,
                dir: dir.clone(),
                log: log.clone(),
            };
            Self::record(state, local, c.clone(), p, save)?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Err(e) = interrupt::check() {
                    process::stop_group(spawned.pid, spawned.start_ticks, STOP_GRACE);
                    return Err(e);
                }
                if !process::is_alive(spawned.pid, spawned.start_ticks) {
                    let lower = read_from(&log, log_start).to_lowercase();
                    if lower.contains("address in use")
                        || lower.contains("already in use")
                        || lower.contains("addrinuse")
                    {
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
                    return Ok(());
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
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(Error::Runtime(format!(
            "could not start {}-{index}: {} (tried {PORT_ATTEMPTS} times); something on this machine keeps taking ports — try again",
            role.name(),
            last_err.unwrap_or_default()
        )))
    }

    /// Stops agents and Prometheus, then servers, then the private PostgreSQL (`pg_ctl stop`,
    /// then by PID).
    fn stop_all(state: &mut ClusterState, local: &mut LocalState) {
        Self::stop_processes(state, local, &COMPONENT_ROLES);
        if let Some(pg) = &local.postgres {
            super::postgres::stop(pg);
        }
        Self::stop_processes(state, local, &[Role::Postgres]);
    }

    /// Stops the processes of `roles` (clients before servers before the database).
    fn stop_processes(state: &mut ClusterState, local: &mut LocalState, roles: &[Role]) {
        let mut order: Vec<usize> = (0..local.processes.len())
            .filter(|i| roles.contains(&local.processes[*i].role))
            .collect();
        order.sort_by_key(|i| local.processes[*i].role.stop_rank());
        for i in order {
            let p = &mut local.processes[i];
            if let Some(pid) = p.pid.take() {
                process::stop_group(pid, p.start_ticks.take(), STOP_GRACE);
            }
            if let Some(c) = state.component_mut(p.role, p.index) {
                c.started = false;
            }
        }
    }

    /// Prometheus with a scrape configuration for the components started (its data in its own
    /// directory, kept across deploys).
    fn prometheus_plan(&self, state: &ClusterState) -> Result<Plan> {
        let dir = self.component_dir(state, Role::Prometheus, 0);
        crate::state::create_private_dir(&dir)?;
        let config = dir.join("prometheus.yml");
        let text = super::prometheus::scrape_config(&state.name, &state.components);
        crate::state::write_atomic(&config, text.as_bytes(), 0o600)?;
        let data = dir.join("data").display().to_string();
        let config = config.display().to_string();
        Ok(Plan {
            role: Role::Prometheus,
            index: 0,
            program: super::prometheus::binary()?,
            args: Box::new(move |port: u16, _| {
                vec![
                    format!("--config.file={config}"),
                    format!("--storage.tsdb.path={data}"),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    "--storage.tsdb.retention.time=15d".into(),
                ]
            }),
            with_metrics: false,
        })
    }

    /// The start plan for every server instance and agent.
    fn plan(
        &self,
        state: &ClusterState,
        local: &LocalState,
        artifacts: &Artifacts,
    ) -> Result<Vec<Plan>> {
        let mut plan = Vec::new();
        for i in 0..state.app_count {
            let dir = self.component_dir(state, Role::Server, i);
            let data_dir = dir.join("data");
            // The database URL holds a password: it goes into a 0600 config file, not argv.
            let config_file = match &local.postgres {
                Some(pg) => {
                    crate::state::create_private_dir(&dir)?;
                    let file = dir.join("server.toml");
                    let text = format!("database-url = {}\n", toml_string(&pg.url()));
                    crate::state::write_atomic(&file, text.as_bytes(), 0o600)?;
                    Some(file)
                }
                None => None,
            };
            let args = move |port: u16, metrics: u16| {
                let mut a = vec![
                    "--listen".to_string(),
                    format!("127.0.0.1:{port}"),
                    "--metrics-listen".into(),
                    format!("127.0.0.1:{metrics}"),
                ];
                match &config_file {
                    Some(f) => a.extend(["--config".to_string(), f.display().to_string()]),
                    None => a.extend(["--data-dir".to_string(), data_dir.display().to_string()]),
                }
                a
            };
            plan.push(Plan {
                role: Role::Server,
                index: i,
                program: artifacts.server.path.clone(),
                args: Box::new(args),
                with_metrics: true,
            });
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
            plan.push(Plan {
                role: Role::Agent,
                index: i,
                program: artifacts.agent.path.clone(),
                args: Box::new(args),
                with_metrics: false,
            });
        }
        Ok(plan)
    }

    /// Makes sure the private PostgreSQL runs (after a reboot, say).
    fn ensure_postgres(
        state: &mut ClusterState,
        local: &mut LocalState,
        save: &Save<'_>,
    ) -> Result<()> {
        let Some(pg) = local.postgres.as_mut() else {
            return Ok(());
        };
        if local
            .processes
            .iter()
            .any(|p| p.role == Role::Postgres && p.alive())
        {
            return Ok(());
        }
        let (c, p) = super::postgres::start(pg)?;
        Self::record(state, local, c, p, save)
    }

    /// Servers that run, as URLs.
    fn server_urls(state: &ClusterState, local: &LocalState) -> Vec<String> {
        state
            .components(Role::Server)
            .filter(|c| local.process(c.role, c.index).is_some_and(Process::alive))
            .map(Component::url)
            .collect()
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
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
        Role::Server | Role::Proxy => {
            process::http_get_status(addr, "/api/v4/system/ping", None, timeout)
        }
        Role::Prometheus => process::http_get_status(addr, "/-/ready", None, timeout),
        // (Local clusters run no Grafana: `dashboards/README.md` says how to import them.)
        Role::Grafana => process::http_get_status(addr, "/api/health", None, timeout),
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

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> ClusterType {
        ClusterType::Local
    }

    fn shape(&self, req: &CreateRequest) -> Result<Shape> {
        if let Some(inv) = &req.inventory {
            return Err(Error::Usage(format!(
                "--inventory {} is for --type ssh; a local cluster runs on this machine (drop --inventory, or add --type ssh)",
                inv.display()
            )));
        }
        if req.proxy == Some(Proxy::Nginx) {
            return Err(Error::Usage(
                "--proxy nginx needs a remote cluster (--type ssh with a `proxy` host); locally, agents talk to the instances directly"
                    .into(),
            ));
        }
        Ok(Shape {
            agents: req.agents.unwrap_or(2),
            app_count: req.app_count.unwrap_or(1),
            database: req.database.unwrap_or(Database::Sqlite),
            proxy: Proxy::None,
            metrics: match req.metrics {
                Some(true) => {
                    super::prometheus::binary()?;
                    true
                }
                _ => false,
            },
        })
    }

    async fn create(
        &self,
        _req: &CreateRequest,
        state: &mut ClusterState,
        _save: &Save<'_>,
    ) -> Result<()> {
        let dir = self.dir(state);
        for sub in ["logs", "results"] {
            crate::state::create_private_dir(&dir.join(sub))?;
        }
        let mut local = LocalState::default();
        if state.database == Database::Postgres {
            let mut pg = super::postgres::init(&dir, &state.name)?;
            local.postgres = Some(pg.clone());
            state.set_provider_state(&local)?;
            let (c, p) = super::postgres::start(&mut pg)?;
            local.postgres = Some(pg);
            state.upsert(c);
            local.upsert(p);
        }
        state.set_provider_state(&local)
    }

    async fn deploy(
        &self,
        state: &mut ClusterState,
        artifacts: &Artifacts,
        save: &Save<'_>,
    ) -> Result<()> {
        let mut local = self.local(state)?;
        // Restart semantics: stop what runs, then start everything fresh.
        Self::stop_processes(state, &mut local, &COMPONENT_ROLES);
        state
            .components
            .retain(|c| !COMPONENT_ROLES.contains(&c.role));
        local
            .processes
            .retain(|p| !COMPONENT_ROLES.contains(&p.role));
        state.set_provider_state(&local)?;
        save(state)?;
        Self::ensure_postgres(state, &mut local, save)?;

        let result = async {
            for plan in self.plan(state, &local, artifacts)? {
                self.start_component(state, &mut local, &plan, save).await?;
            }
            // Prometheus last: its targets are the addresses just started.
            if state.metrics {
                let plan = self.prometheus_plan(state)?;
                self.start_component(state, &mut local, &plan, save).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            // Leave nothing half-started behind.
            Self::stop_processes(state, &mut local, &COMPONENT_ROLES);
            state.set_provider_state(&local)?;
            let _ = save(state);
            return Err(e);
        }
        Ok(())
    }

    async fn status(&self, state: &ClusterState) -> Result<Vec<ComponentHealth>> {
        let local = self.local(state)?;
        Ok(state
            .components
            .iter()
            .map(|c| {
                let p = local.process(c.role, c.index);
                let health = match p {
                    Some(p) if p.alive() => match probe(c.role, &c.address, &state.control_token) {
                        Ok(200) => Health::Healthy,
                        Ok(code) => Health::Unhealthy(format!("health check answered {code}")),
                        Err(e) => Health::Unhealthy(e.to_string()),
                    },
                    _ => Health::Stopped,
                };
                let location = match p.and_then(|p| p.pid.filter(|_| p.alive())) {
                    Some(pid) => format!("pid {pid}"),
                    None => "-".into(),
                };
                ComponentHealth {
                    component: c.clone(),
                    health,
                    location,
                }
            })
            .collect())
    }

    async fn endpoints(&self, state: &ClusterState) -> Result<Endpoints> {
        let local = self.local(state)?;
        let servers = Self::server_urls(state, &local);
        if servers.is_empty() {
            return Err(Error::Runtime(format!(
                "cluster {:?} has no server running; run `ltops deploy -c {}`",
                state.name, state.name
            )));
        }
        let mut out = Vec::new();
        for i in 0..state.agents {
            let c = state.find(Role::Agent, i)?;
            let p = local.process(Role::Agent, i);
            if !p.is_some_and(Process::alive) {
                return Err(Error::Runtime(format!(
                    "agent-{i} of cluster {:?} is not running; its last log lines:\n{}\nRun `ltops deploy -c {}` to restart the cluster.",
                    state.name,
                    indent(&tail(&self.log_path(state, Role::Agent, i), 10)),
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
        let metrics = state
            .components(Role::Server)
            .filter_map(|c| {
                let m = c.metrics_address.as_ref()?;
                Some((c.label(), format!("http://{m}/metrics")))
            })
            .collect();
        Ok(Endpoints::new(out, servers[0].clone(), ()).with_server_metrics(metrics))
    }

    async fn lost_agent(
        &self,
        state: &ClusterState,
        index: u32,
        run_id: &str,
        dest: &Path,
    ) -> Result<LostAgent> {
        let local = self.local(state)?;
        let alive = local
            .process(Role::Agent, index)
            .is_some_and(Process::alive);
        let log_tail = tail(&self.log_path(state, Role::Agent, index), 15);
        // The agent flushes its results to a file in its working directory as it runs; take
        // the newest `.jsonl` there whose name or first line mentions the run.
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
        let saved = match candidates.pop() {
            Some((_, p)) => {
                std::fs::copy(&p, dest)
                    .context(|| format!("copying {} to {}", p.display(), dest.display()))?;
                true
            }
            None => false,
        };
        Ok(LostAgent {
            alive,
            log_tail,
            saved,
        })
    }

    async fn shell(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        cmd: &ShellCommand,
    ) -> Result<i32> {
        let c = state.find(role, index)?;
        let local = self.local(state)?;
        let p = local.process(role, index);
        let dir = p
            .map(|p| p.dir.clone())
            .unwrap_or_else(|| self.component_dir(state, role, index));
        let log = p
            .map(|p| p.log.clone())
            .unwrap_or_else(|| self.log_path(state, role, index));
        let mut command = match cmd {
            ShellCommand::Interactive => {
                let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
                eprintln!(
                    "ltops: shell in {} of cluster {:?} ({}); exit to return",
                    c.label(),
                    state.name,
                    dir.display()
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
            .current_dir(&dir)
            .env("LTOPS_CLUSTER", &state.name)
            .env("LTOPS_ROLE", role.name())
            .env("LTOPS_INDEX", index.to_string())
            .env("LTOPS_URL", c.url())
            .env("LTOPS_LOG", &log);
        if let Some(pid) = p.and_then(|p| p.pid) {
            command.env("LTOPS_PID", pid.to_string());
        }
        if let Some(m) = &c.metrics_address {
            command.env("LTOPS_METRICS_URL", format!("http://{m}/metrics"));
        }
        if role == Role::Agent {
            command.env("LTOPS_TOKEN_FILE", self.token_file(state, index));
        }
        if role == Role::Postgres {
            if let Some(pg) = &local.postgres {
                command.env("DATABASE_URL", pg.url());
            }
        }
        let status = command
            .status()
            .context(|| format!("running a shell in {}", dir.display()))?;
        Ok(status.code().unwrap_or(1))
    }

    async fn logs(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()> {
        state.find(role, index)?;
        let local = self.local(state)?;
        let path = local
            .process(role, index)
            .map(|p| p.log.clone())
            .unwrap_or_else(|| self.log_path(state, role, index));
        let mut f = std::fs::File::open(&path).context(|| {
            format!(
                "opening {} (the component may never have started; run `ltops deploy -c {}`)",
                path.display(),
                state.name
            )
        })?;
        let mut out = std::io::stdout();
        match lines {
            Some(n) => {
                let _ = writeln!(out, "{}", tail(&path, n));
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
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
        }
        Ok(())
    }

    async fn stop(&self, state: &mut ClusterState, save: &Save<'_>) -> Result<Vec<String>> {
        let mut local = self.local(state)?;
        Self::stop_all(state, &mut local);
        state.set_provider_state(&local)?;
        save(state)?;
        Ok(Vec::new())
    }

    async fn delete(
        &self,
        state: &mut ClusterState,
        _opts: DeleteOptions,
        save: &Save<'_>,
    ) -> Result<()> {
        let mut local = self.local(state)?;
        Self::stop_all(state, &mut local);
        if let Some(pg) = &local.postgres {
            super::postgres::remove(pg, &self.dir(state), &state.name);
        }
        state.set_provider_state(&local)?;
        save(state)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_pid(pid: Option<u32>, start_ticks: Option<u64>) -> LocalState {
        LocalState {
            postgres: None,
            processes: vec![Process {
                role: Role::Server,
                index: 0,
                pid,
                start_ticks,
                dir: PathBuf::from("/c/server-0"),
                log: PathBuf::from("/c/logs/server-0.log"),
            }],
        }
    }

    #[test]
    fn pids_ltops_cannot_prove_it_started_are_rejected() {
        let dir = Path::new("/c");
        assert_eq!(with_pid(None, None).check(dir, "c"), Ok(()));
        assert_eq!(with_pid(Some(4242), Some(99)).check(dir, "c"), Ok(()));
        for (pid, ticks, says) in [
            (1, Some(5), "pid = 1 is not a process ltops started"),
            (0, Some(5), "pid = 0 is not a process ltops started"),
            (4242, None, "pid = 4242 has no start_ticks"),
        ] {
            let (key, e) = with_pid(Some(pid), ticks).check(dir, "c").unwrap_err();
            assert_eq!(key, "processes[0].pid");
            assert!(e.starts_with("server-0: "), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }
}
