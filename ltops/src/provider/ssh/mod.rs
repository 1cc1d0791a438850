//! The `ssh` provider: a cluster on hosts you already have, reached with the system OpenSSH
//! client ([`client`]), described by an inventory ([`inventory`]).
//!
//! On each host the cluster lives in one directory, `R = ~/<remote_dir>/<name>-<cluster id>/`:
//!
//! ```text
//! R/bin/chat-server, loadtest-agent   uploaded by `deploy` (SHA-256 compared: unchanged → not sent)
//! R/bin/ltops-supervise               the supervisor (supervise.sh): restarts a crashed component,
//!                                     pid files in R/run/, output appended to R/logs/<name>.log
//! R/server-<i>/server.toml            0600: the database URL (never on a command line)
//! R/agent-<i>/token, results/         0600 control token; results flushed every interval
//! R/postgres-0/data, pw               a private PostgreSQL on the db host (no `database_url`)
//! R/proxy-0/nginx.conf                nginx (`least_conn`, WebSocket upgrade) on the proxy host
//! R/prometheus-0/prometheus.yml, data Prometheus on the metrics host (the host's own binary, or
//!                                     this machine's uploaded to R/bin/prometheus)
//! ```
//!
//! Servers listen on every interface of their host (agents on other hosts reach them at the
//! host's `private_address`); their metrics, the agents' `/metrics` and Prometheus listen on
//! the host's `private_address`, and the agents' control API (which takes the token) on its
//! loopback only. `ltops` reaches what it needs through SSH port forwards held by
//! [`Endpoints`]: the agents' control API for the coordinator, the servers' metrics for the
//! run's server samples. A deploy that
//! changes nothing restarts nothing: each component's spec (binary checksum, arguments,
//! configuration) is recorded, and a running component with the same spec is left alone.
//! `delete` stops every component on every host, removes `R`, and closes the connections; a host
//! it cannot reach is reported and the state kept so the delete can be repeated.

pub mod client;
pub mod inventory;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use self::client::{sh_quote, Forward, Ssh};
use self::inventory::{DatabaseUrl, Host, HostRole, Inventory, Ports};
use super::{
    Artifact, Artifacts, ComponentHealth, CreateRequest, DeleteOptions, Endpoints, Health,
    LostAgent, Provider, Save, Shape, ShellCommand,
};
use crate::agent_client::AgentEndpoint;
use crate::error::{Error, IoContext, Result};
use crate::interrupt;
use crate::process::indent;
use crate::state::{
    ClusterState, ClusterType, Component, Database, Home, Proxy, Role, Slot, CLUSTER_FILE,
};

fn default_prometheus() -> String {
    "prometheus".into()
}

fn default_grafana() -> String {
    inventory::DEFAULT_GRAFANA.into()
}

fn default_grafana_home() -> String {
    inventory::DEFAULT_GRAFANA_HOME.into()
}

/// The supervisor uploaded to every host.
const SUPERVISE: &str = include_str!("supervise.sh");
/// How long a component may take to pass its health check after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds between SIGTERM and SIGKILL when stopping a component.
const STOP_GRACE: u32 = 10;

/// The ssh provider's section of `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SshState {
    /// The inventory the cluster was created from (for messages; the hosts below are a copy).
    pub inventory: PathBuf,
    pub remote_dir: String,
    pub nginx: String,
    /// The Prometheus program on the metrics host (default `prometheus`).
    #[serde(default = "default_prometheus")]
    pub prometheus: String,
    /// Grafana's program and home directory on the metrics host.
    #[serde(default = "default_grafana")]
    pub grafana: String,
    #[serde(default = "default_grafana_home")]
    pub grafana_home: String,
    /// Grafana's `admin` password (the file is 0600).
    #[serde(default = "crate::state::random_token")]
    pub grafana_password: String,
    #[serde(default)]
    pub postgres_bin_dir: Option<String>,
    pub ports: Ports,
    pub hosts: Vec<Host>,
    /// An existing PostgreSQL instead of a private one.
    #[serde(default)]
    pub database_url: Option<DatabaseUrl>,
    /// PostgreSQL's binaries on the db host, as found by the last deploy.
    #[serde(default)]
    pub pg_bin: Option<String>,
    /// Password of the private PostgreSQL (the file is 0600).
    #[serde(default)]
    pub postgres_password: Option<String>,
    /// Which host runs each component, on which ports.
    #[serde(default)]
    pub placements: Vec<Placement>,
}

impl SshState {
    /// The one component of `role` (PostgreSQL, proxy, Prometheus), with its index in `placements`.
    fn only(&self, role: Role) -> Option<(usize, Placement)> {
        let idx = self.placements.iter().position(|p| p.role == role)?;
        Some((idx, self.placements[idx].clone()))
    }
}

/// Where one component runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub role: Role,
    pub index: u32,
    /// Index into `hosts`.
    pub host: usize,
    pub port: u16,
    #[serde(default)]
    pub metrics_port: Option<u16>,
    /// Checksum of what it was last started with (binary, arguments, configuration).
    #[serde(default)]
    pub spec: Option<String>,
}

impl Placement {
    fn name(&self) -> String {
        format!("{}-{}", self.role.name(), self.index)
    }
}

/// What the supervisor says about a component.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Supervised {
    Running { restarts: u32 },
    Starting { restarts: u32 },
    Failed { status: String },
    Stopped,
}

fn parse_supervised(line: &str) -> Supervised {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| w.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
    match w.first().copied() {
        Some("running") => Supervised::Running { restarts: num(3) },
        Some("starting") => Supervised::Starting { restarts: num(3) },
        Some("failed") => Supervised::Failed {
            status: w.get(1).unwrap_or(&"?").to_string(),
        },
        _ => Supervised::Stopped,
    }
}

pub struct SshProvider {
    home: Home,
    slot: Slot,
}

impl SshProvider {
    pub fn new(home: Home) -> Self {
        Self {
            home,
            slot: Slot(None),
        }
    }

    /// The SSH provider working for another one (`aws`), its state kept in `slot`.
    pub fn nested(home: Home, slot: Slot) -> Self {
        Self { home, slot }
    }

    /// Places a new cluster's components on `inv`'s hosts and records the result (this
    /// provider's state and the cluster's components) in `st`.
    pub(crate) fn record(&self, inv: &Inventory, st: &mut ClusterState) -> Result<SshState> {
        let shape = Shape::of(st);
        let private_db = st.database == Database::Postgres && inv.database_url.is_none();
        let placements = place(inv, &shape, private_db)?;
        let ss = SshState {
            inventory: std::fs::canonicalize(&inv.path).unwrap_or(inv.path.clone()),
            remote_dir: inv.remote_dir.clone(),
            nginx: inv.nginx.clone(),
            prometheus: inv.prometheus.clone(),
            grafana: inv.grafana.clone(),
            grafana_home: inv.grafana_home.clone(),
            grafana_password: crate::state::random_token(),
            postgres_bin_dir: inv.postgres_bin_dir.clone(),
            ports: inv.ports,
            hosts: inv.hosts.clone(),
            database_url: if st.database == Database::Postgres {
                inv.database_url.clone()
            } else {
                None
            },
            pg_bin: None,
            postgres_password: None,
            placements,
        };
        Self::external_database(&ss)?;
        st.components = ss.placements.iter().map(|p| component(&ss, p)).collect();
        st.set_provider_state_in(self.slot, &ss)?;
        Ok(ss)
    }

    /// Closes this cluster's SSH connections and removes their control directory (the hosts
    /// themselves are going away).
    pub(crate) async fn disconnect_all(&self, st: &ClusterState) {
        if let Ok(ss) = self.state(st) {
            if let Ok(c) = Cluster::new(st, ss, self.slot) {
                for h in &c.ss.hosts {
                    c.ssh.disconnect(h).await;
                }
                c.ssh.remove_control_dir();
            }
        }
    }

    /// Waits until every host in use accepts SSH and `ready` (a shell command) succeeds there;
    /// for machines that are still booting. Gives up after `timeout`, naming the hosts.
    pub(crate) async fn wait_ready(
        &self,
        st: &ClusterState,
        ready: &str,
        timeout: Duration,
    ) -> Result<()> {
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let wait_one = |i: usize| {
            let c = &c;
            async move {
                let h = &c.ss.hosts[i];
                let mut last;
                loop {
                    last = match c.ssh.connect(h).await {
                        Ok(()) => match c
                            .ssh
                            .run_ok(h, "waiting until the host is ready", ready, None)
                            .await
                        {
                            Ok(_) => return Ok(()),
                            Err(e) => e.to_string(),
                        },
                        Err(e) => e.to_string(),
                    };
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "  {}: not ready after {timeout:?}: {last}",
                            h.label()
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        let results = join_all(c.hosts_in_use().into_iter().map(wait_one)).await;
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Runtime(format!(
                "{}\nCheck that the hosts boot (console output) and that SSH is allowed from here; then deploy again",
                errors.join("\n")
            )))
        }
    }

    fn state(&self, st: &ClusterState) -> Result<SshState> {
        let file = self.home.cluster_dir(&st.name).join(CLUSTER_FILE);
        let ss: SshState = st.provider_state_in(self.slot, &file)?;
        // Everything below ends up in ssh arguments and remote scripts: a hand-edited value must
        // not become an option or a command.
        let bad = |key: &str, v: &str| {
            Err(Error::Usage(format!(
                "{}: {key}: {v:?} is not a plain value (letters, digits, . - _ : / only); fix the file, or delete and create the cluster again",
                crate::state::at_key(&file, key)
            )))
        };
        crate::state::validate_name(&st.name)?;
        if st.cluster_id.is_empty() || !st.cluster_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return bad("cluster_id", &st.cluster_id);
        }
        if !inventory::plain_path(&ss.remote_dir) || ss.remote_dir.split('/').any(|p| p == "..") {
            return bad("provider.remote_dir", &ss.remote_dir);
        }
        for v in ss
            .pg_bin
            .iter()
            .chain(ss.postgres_bin_dir.iter())
            .chain([&ss.nginx, &ss.prometheus])
        {
            if !inventory::plain_path(v) {
                return bad("provider (a program path)", v);
            }
        }
        for h in &ss.hosts {
            if !inventory::plain(&h.address) || !inventory::plain(&h.private_address) {
                return bad("provider.hosts.address", &h.address);
            }
            if let Some(u) = &h.user {
                if !inventory::plain(u) {
                    return bad("provider.hosts.user", u);
                }
            }
        }
        if let Some(p) = ss.placements.iter().find(|p| p.host >= ss.hosts.len()) {
            return Err(Error::Usage(format!(
                "{}: provider.placements: {} is placed on host {} but only {} hosts are listed; \
                 fix the file or delete and create the cluster again",
                crate::state::at_key(&file, "provider.placements"),
                p.name(),
                p.host,
                ss.hosts.len()
            )));
        }
        Ok(ss)
    }

    fn inventory(req: &CreateRequest) -> Result<Inventory> {
        if let Some(dir) = &req.inventory_from_terraform {
            return Inventory::from_terraform(dir);
        }
        let path = req.inventory.as_ref().ok_or_else(|| {
            Error::Usage("--type ssh needs --inventory FILE: the hosts and their roles".into())
        })?;
        Inventory::from_file(path)
    }
}

/// The cluster's directory on a host, as a shell expression.
fn remote_root(ss: &SshState, st: &ClusterState) -> String {
    let leaf = format!(
        "{}/{}-{}",
        ss.remote_dir.trim_end_matches('/'),
        st.name,
        st.cluster_id
    );
    if leaf.starts_with('/') {
        format!("\"{leaf}\"")
    } else {
        format!("\"$HOME/{leaf}\"")
    }
}

/// A script preamble: fail on errors, `R` is the cluster's directory.
fn preamble(ss: &SshState, st: &ClusterState) -> String {
    format!("set -e\nR={}\n", remote_root(ss, st))
}

/// The cluster as one command sees it: its definition, the provider's state, the connections.
struct Cluster {
    st: ClusterState,
    ss: SshState,
    ssh: Ssh,
    /// Where `ss` is kept in the cluster's state.
    slot: Slot,
}

impl Cluster {
    fn new(st: &ClusterState, ss: SshState, slot: Slot) -> Result<Self> {
        Ok(Cluster {
            st: st.clone(),
            ssh: Ssh::new(&st.cluster_id)?,
            ss,
            slot,
        })
    }

    fn host(&self, p: &Placement) -> &Host {
        &self.ss.hosts[p.host]
    }

    fn placement(&self, role: Role, index: u32) -> Result<&Placement> {
        self.st.find(role, index)?;
        self.ss
            .placements
            .iter()
            .find(|p| p.role == role && p.index == index)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "cluster {:?}: {}-{index} has no host in the provider's state; delete and create the cluster again",
                    self.st.name,
                    role.name()
                ))
            })
    }

    fn hosts_in_use(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.ss.placements.iter().map(|p| p.host).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    async fn script(
        &self,
        h: &Host,
        what: &str,
        body: &str,
        input: Option<&[u8]>,
    ) -> Result<String> {
        let script = format!("{}{body}", preamble(&self.ss, &self.st));
        self.ssh.run_ok(h, what, &script, input).await
    }

    /// Connects to every host in `hosts` at once; all failures are reported together.
    async fn connect_all(&self, hosts: &[usize]) -> Result<()> {
        let results = join_all(hosts.iter().map(|&i| self.ssh.connect(&self.ss.hosts[i]))).await;
        let errors: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Runtime(errors.join("\n")))
        }
    }

    /// The supervisor's view of every component on host `i` (empty before the first deploy).
    async fn supervised(&self, i: usize) -> Result<HashMap<String, Supervised>> {
        let out = self
            .script(
                &self.ss.hosts[i],
                "reading the components' state",
                "[ -x \"$R/bin/ltops-supervise\" ] || exit 0\nexec \"$R/bin/ltops-supervise\" status-all\n",
                None,
            )
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, rest)| (name.to_string(), parse_supervised(rest)))
            .collect())
    }

    /// The last lines of a component's log.
    async fn log_tail(&self, p: &Placement, lines: usize) -> String {
        let body = format!(
            "tail -n {lines} \"$R/logs/{}.log\" 2>/dev/null || true\n",
            p.name()
        );
        self.script(self.host(p), "reading a log", &body, None)
            .await
            .unwrap_or_else(|e| format!("(log unavailable: {e})"))
    }

    /// Health of a running component: HTTP through a forward, `pg_isready` for PostgreSQL.
    async fn probe(&self, p: &Placement) -> Result<()> {
        let h = self.host(p);
        match p.role {
            Role::Postgres => {
                let bin = self.ss.pg_bin.clone().unwrap_or_default();
                let body = format!(
                    "\"{bin}/pg_isready\" -q -h {} -p {}\n",
                    sh_quote(&h.private_address),
                    p.port
                );
                self.script(h, "pg_isready", &body, None).await.map(drop)
            }
            Role::Server | Role::Proxy | Role::Agent | Role::Prometheus | Role::Grafana => {
                let at = match p.role {
                    Role::Prometheus | Role::Grafana => h.private_address.as_str(),
                    _ => "127.0.0.1",
                };
                let fwd = self.ssh.forward(h, at, p.port).await?;
                let (path, token) = match p.role {
                    Role::Agent => (
                        loadtest_contract::control::PATH_CLOCK,
                        Some(self.st.control_token.as_str()),
                    ),
                    Role::Prometheus => ("/-/ready", None),
                    Role::Grafana => ("/api/health", None),
                    _ => ("/api/v4/system/ping", None),
                };
                http_probe(&fwd, path, token).await
            }
        }
    }

    /// Stops components, clients first; errors are collected per host.
    /// Connects to every host a component is placed on: the hosts reached, and those that
    /// could not be, with why.
    async fn reach_used_hosts(&self) -> (Vec<usize>, Vec<(usize, String)>) {
        let hosts: Vec<usize> = (0..self.ss.hosts.len())
            .filter(|i| self.ss.placements.iter().any(|p| p.host == *i))
            .collect();
        let reached = join_all(hosts.iter().map(|&i| self.ssh.connect(&self.ss.hosts[i]))).await;
        let mut ok = Vec::new();
        let mut unreachable = Vec::new();
        for (&i, r) in hosts.iter().zip(reached) {
            match r {
                Ok(()) => ok.push(i),
                Err(e) => unreachable.push((i, e.to_string())),
            }
        }
        (ok, unreachable)
    }

    async fn stop(&self, which: &[&Placement]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut ranks: Vec<u8> = which.iter().map(|p| p.role.stop_rank()).collect();
        ranks.sort_unstable();
        ranks.dedup();
        for rank in ranks {
            let batch: Vec<&&Placement> = which
                .iter()
                .filter(|p| p.role.stop_rank() == rank)
                .collect();
            let results = join_all(batch.iter().map(|p| {
                let body = format!(
                    "[ -x \"$R/bin/ltops-supervise\" ] || exit 0\nexec \"$R/bin/ltops-supervise\" stop {} {STOP_GRACE}\n",
                    p.name()
                );
                async move { self.script(self.host(p), &format!("stopping {}", p.name()), &body, None).await }
            }))
            .await;
            errors.extend(
                results
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| e.to_string())),
            );
        }
        errors
    }
}

/// `GET path` through a forward; healthy on 200.
async fn http_probe(fwd: &Forward, path: &str, token: Option<&str>) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| Error::Runtime(format!("cannot build an HTTP client: {e}")))?;
    let mut req = http.get(format!("http://{}{path}", fwd.address()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if r.status().as_u16() == 200 => Ok(()),
        Ok(r) => Err(Error::Runtime(format!(
            "health check answered {}",
            r.status().as_u16()
        ))),
        Err(e) => Err(Error::Runtime(format!("health check failed: {e}"))),
    }
}

/// Hex SHA-256 of some bytes.
fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Places components on hosts: server instances round-robin over `app` hosts, agents over
/// `agent` hosts, PostgreSQL on the `db` host, nginx on the `proxy` host; the k-th component of
/// a kind on a host gets the kind's first port + k.
fn place(inv: &Inventory, shape: &Shape, private_db: bool) -> Result<Vec<Placement>> {
    let need = |role: HostRole, what: &str| -> Result<Vec<usize>> {
        let v = inv.with_role(role);
        if v.is_empty() {
            Err(Error::Usage(format!(
                "{}: host: no host has the role {:?}, which {what} needs; add it to a host's `roles`",
                inv.path.display(),
                format!("{role:?}").to_lowercase()
            )))
        } else {
            Ok(v)
        }
    };
    let mut out = Vec::new();
    let mut spread = |role: Role, count: u32, hosts: &[usize], base: u16, metrics: Option<u16>| {
        // Past 65535 a port becomes 0, which the range check below refuses.
        let nth = |first: u16, k: u32| u16::try_from(u32::from(first) + k).unwrap_or(0);
        let mut per_host: HashMap<usize, u32> = HashMap::new();
        for i in 0..count {
            let host = hosts[i as usize % hosts.len()];
            let k = per_host.entry(host).or_insert(0);
            out.push(Placement {
                role,
                index: i,
                host,
                port: nth(base, *k),
                metrics_port: metrics.map(|m| nth(m, *k)),
                spec: None,
            });
            *k += 1;
        }
    };
    let apps = need(HostRole::App, "a server instance")?;
    spread(
        Role::Server,
        shape.app_count,
        &apps,
        inv.ports.server,
        Some(inv.ports.server_metrics),
    );
    let agents = need(HostRole::Agent, "an agent")?;
    spread(
        Role::Agent,
        shape.agents,
        &agents,
        inv.ports.agent,
        Some(inv.ports.agent_metrics),
    );
    if private_db {
        let db = need(HostRole::Db, "a private PostgreSQL (or set database_url)")?;
        spread(Role::Postgres, 1, &db[..1], inv.ports.postgres, None);
    }
    if shape.proxy == Proxy::Nginx {
        let proxy = need(HostRole::Proxy, "--proxy nginx")?;
        spread(Role::Proxy, 1, &proxy[..1], inv.ports.proxy, None);
    }
    if shape.metrics {
        // A host of its own when the inventory names one; else beside the first agent, whose
        // host already serves the operator (Prometheus at a 2 s interval costs little there).
        let metrics = inv.with_role(HostRole::Metrics);
        let host = metrics.first().copied().unwrap_or(agents[0]);
        spread(Role::Prometheus, 1, &[host], inv.ports.prometheus, None);
        spread(Role::Grafana, 1, &[host], inv.ports.grafana, None);
    }
    // The ranges of one host must not overlap.
    let mut used: HashMap<(usize, u16), String> = HashMap::new();
    for p in &out {
        for port in std::iter::once(p.port).chain(p.metrics_port) {
            if port == 0 {
                return Err(Error::Usage(format!(
                    "{}: ports: {} on {} would need a port above 65535; lower the first ports in [ports]",
                    inv.path.display(),
                    p.name(),
                    inv.hosts[p.host].label()
                )));
            }
            if let Some(other) = used.insert((p.host, port), p.name()) {
                return Err(Error::Usage(format!(
                    "{}: ports: {} and {} would both use port {port} on {}; move the first ports of \
                     [ports] further apart",
                    inv.path.display(),
                    other,
                    p.name(),
                    inv.hosts[p.host].label()
                )));
            }
        }
    }
    Ok(out)
}

/// The generic component of a placement.
fn component(ss: &SshState, p: &Placement) -> Component {
    let h = &ss.hosts[p.host];
    let address = match p.role {
        // On the host's own loopback (reached through a forward).
        Role::Agent => format!("127.0.0.1:{}", p.port),
        _ => format!("{}:{}", h.private_address, p.port),
    };
    Component {
        role: p.role,
        index: p.index,
        address,
        // On the private network, for the cluster's Prometheus; ltops forwards to it.
        metrics_address: p.metrics_port.map(|m| format!("{}:{m}", h.private_address)),
        started: false,
    }
}

/// One deploy, one method per phase.
struct Deploy<'a> {
    c: Cluster,
    artifacts: &'a Artifacts,
    /// Components this deploy (re)started, to stop again if it fails.
    started: Vec<Placement>,
    /// What changed, for the summary.
    notes: Vec<String>,
    /// PostgreSQL's binaries on the db host, nginx on the proxy host (found by `check_hosts`).
    pg_bin: Option<String>,
    nginx_path: Option<String>,
    /// Prometheus on the metrics host (`check_hosts`), `None` when the cluster has none.
    prometheus: Option<PromBinary>,
    /// Grafana's program there, or why it does not run; `None` when the cluster has none.
    grafana: Option<std::result::Result<String, String>>,
}

/// Which Prometheus the metrics host runs.
#[derive(Clone, Debug)]
enum PromBinary {
    /// The host's own.
    Installed(String),
    /// This machine's, to upload (`upload` turns it into `Uploaded`).
    Upload(PathBuf),
    Uploaded {
        sha256: String,
    },
    /// None anywhere: the deploy goes on without it and says how to add it.
    Missing(String),
}

/// A component ready to start: its command line (run in `R/<name>/`) and its spec.
struct Launch {
    program: String,
    args: Vec<String>,
    spec: String,
}

impl Launch {
    /// `inputs`: what else the component depends on (binary checksum, configuration).
    fn new(program: String, args: Vec<String>, inputs: &[&[u8]]) -> Self {
        let line = args.join(" ");
        let mut parts: Vec<&[u8]> = vec![program.as_bytes(), line.as_bytes()];
        parts.extend_from_slice(inputs);
        let spec = sha256_hex(&parts);
        Launch {
            program,
            args,
            spec,
        }
    }
}

impl<'a> Deploy<'a> {
    fn say(&mut self, line: String) {
        eprintln!("  {line}");
        self.notes.push(line);
    }

    /// Phase 1: reach every host, check what each role needs there.
    async fn check_hosts(&mut self) -> Result<()> {
        let hosts = self.c.hosts_in_use();
        self.c.connect_all(&hosts).await?;
        interrupt::check()?;
        for &i in &hosts {
            self.c.ssh.check_forwarding(&self.c.ss.hosts[i]).await?;
        }
        let ss = self.c.ss.clone();
        let mut pg_bin = None;
        let server_machine = elf_machine(&self.artifacts.server.path);
        let agent_machine = elf_machine(&self.artifacts.agent.path);
        for &i in &hosts {
            let h = &ss.hosts[i];
            let mut body = String::from("echo \"arch=$(uname -m)\"\necho \"uid=$(id -u)\"\n");
            let here = |role: Role| ss.placements.iter().any(|p| p.role == role && p.host == i);
            let (db_here, proxy_here) = (here(Role::Postgres), here(Role::Proxy));
            let (prometheus_here, grafana_here) = (here(Role::Prometheus), here(Role::Grafana));
            if prometheus_here {
                body.push_str(&find_program(
                    "prometheus",
                    &ss.prometheus,
                    "/usr/bin/prometheus",
                ));
            }
            if grafana_here {
                body.push_str(&find_program(
                    "grafana",
                    &ss.grafana,
                    "/usr/sbin/grafana-server",
                ));
                body.push_str(&format!(
                    "[ -f {}/conf/defaults.ini ] && echo grafana_home=1 || true\n",
                    sh_quote(&ss.grafana_home)
                ));
            }
            if db_here {
                match &ss.postgres_bin_dir {
                    Some(d) => body.push_str(&format!("[ -x {0}/initdb ] && echo pg={0} || true\n", sh_quote(d))),
                    None => body.push_str(
                        "for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do [ -x \"$d/initdb\" ] && pg=\"$d\"; done\n[ -n \"${pg:-}\" ] && echo \"pg=$pg\" || true\n",
                    ),
                }
            }
            if proxy_here {
                body.push_str(&find_program("nginx", &ss.nginx, "/usr/sbin/nginx"));
            }
            body.push_str("command -v sha256sum >/dev/null && echo sha=1 || true\ncommand -v setsid >/dev/null && echo setsid=1 || true\n");
            let out = self.c.script(h, "checking the host", &body, None).await?;
            let kv: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
            let arch = kv.get("arch").copied().unwrap_or("?");
            // Only hosts that run one of our binaries need its CPU architecture.
            for (role, artifact, machine) in [
                (Role::Server, &self.artifacts.server, server_machine),
                (Role::Agent, &self.artifacts.agent, agent_machine),
            ] {
                let runs_here = ss.placements.iter().any(|p| p.role == role && p.host == i);
                if let (true, Some(built), Some(host)) = (runs_here, machine, uname_machine(arch)) {
                    if built != host {
                        return Err(Error::Usage(format!(
                            "host {}: its CPU architecture is {arch}, but {} is built for another one; \
                             build it for {arch} (e.g. `cargo build --release --target …`) and deploy with \
                             --server/--agent, or run that role on hosts like this one",
                            h.label(),
                            artifact.path.display()
                        )));
                    }
                }
            }
            for (key, what) in [
                ("sha", "sha256sum (coreutils)"),
                ("setsid", "setsid (util-linux)"),
            ] {
                if !kv.contains_key(key) {
                    return Err(Error::Usage(format!(
                        "host {}: `{what}` is missing there; install it (e.g. `apt-get install coreutils util-linux`)",
                        h.label()
                    )));
                }
            }
            if db_here {
                if kv.get("uid") == Some(&"0") {
                    return Err(Error::Usage(format!(
                        "host {}: PostgreSQL refuses to run as root; log in to the db host as another user \
                         (`user` in the inventory), or set database_url to use an existing database",
                        h.label()
                    )));
                }
                match kv.get("pg") {
                    Some(p) => pg_bin = Some(p.to_string()),
                    None => {
                        return Err(Error::Usage(format!(
                            "host {}: no PostgreSQL server binaries (initdb) in {}; install PostgreSQL there \
                             (e.g. `apt-get install postgresql`), set defaults.postgres_bin_dir in the inventory, \
                             or set database_url to use an existing database",
                            h.label(),
                            ss.postgres_bin_dir.as_deref().unwrap_or("/usr/lib/postgresql/*/bin")
                        )))
                    }
                }
            }
            if proxy_here && !kv.contains_key("nginx") {
                return Err(Error::Usage(format!(
                    "host {}: nginx ({}) is not installed there; install it (e.g. `apt-get install nginx`), \
                     set defaults.nginx in the inventory to its path, or create the cluster without --proxy",
                    h.label(),
                    ss.nginx
                )));
            }
            if proxy_here {
                self.nginx_path = kv.get("nginx").map(|s| s.to_string());
            }
            if grafana_here {
                self.grafana = Some(match (kv.get("grafana"), kv.contains_key("grafana_home")) {
                    (Some(g), true) => Ok(g.to_string()),
                    (Some(_), false) => Err(format!(
                        "Grafana's home {} on {} has no conf/defaults.ini; set defaults.grafana_home \
                         in the inventory to the directory its package installed (e.g. /usr/share/grafana)",
                        ss.grafana_home,
                        h.label()
                    )),
                    (None, _) => Err(format!(
                        "Grafana ({}) is not installed on {}; Prometheus runs without it. Install \
                         Grafana's package there (https://apt.grafana.com, package grafana) and deploy \
                         again, or import dashboards/ into a Grafana of your own",
                        ss.grafana,
                        h.label()
                    )),
                });
            }
            if prometheus_here {
                let fix = "install it on either (`apt-get install prometheus`; from here it is \
                           uploaded) and deploy again, or create the cluster with --no-metrics";
                self.prometheus = Some(match (kv.get("prometheus"), super::prometheus::binary()) {
                    (Some(p), _) => PromBinary::Installed(p.to_string()),
                    (None, Ok(local)) => match (elf_machine(&local), uname_machine(arch)) {
                        (Some(built), Some(host)) if built != host => PromBinary::Missing(format!(
                            "Prometheus is not installed on {}, and this machine's ({}) is for \
                             another CPU architecture than {arch}; {fix}",
                            h.label(),
                            local.display()
                        )),
                        _ => PromBinary::Upload(local),
                    },
                    (None, Err(_)) => PromBinary::Missing(format!(
                        "Prometheus is installed neither on {} nor here; {fix}",
                        h.label()
                    )),
                });
            }
        }
        self.pg_bin = pg_bin;
        Ok(())
    }

    /// Phase 2: the supervisor everywhere, the server and agent binaries where they run;
    /// unchanged files (same SHA-256) are not sent again.
    async fn upload(&mut self) -> Result<()> {
        let supervise_sum = {
            use sha2::Digest;
            sha2::Sha256::digest(SUPERVISE.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let server_sum = self.artifacts.server.sha256()?.to_string();
        let agent_sum = self.artifacts.agent.sha256()?.to_string();
        for i in self.c.hosts_in_use() {
            interrupt::check()?;
            let h = self.c.ss.hosts[i].clone();
            let here = |role: Role| {
                self.c
                    .ss
                    .placements
                    .iter()
                    .any(|p| p.role == role && p.host == i)
            };
            let mut wanted: Vec<(&str, String, Option<PathBuf>)> =
                vec![("ltops-supervise", supervise_sum.clone(), None)];
            if here(Role::Server) {
                wanted.push((
                    "chat-server",
                    server_sum.clone(),
                    Some(self.artifacts.server.path.clone()),
                ));
            }
            if here(Role::Agent) {
                wanted.push((
                    "loadtest-agent",
                    agent_sum.clone(),
                    Some(self.artifacts.agent.path.clone()),
                ));
            }
            if let (true, Some(PromBinary::Upload(path))) =
                (here(Role::Prometheus), self.prometheus.clone())
            {
                let local = Artifact::new(path);
                let sum = local.sha256()?.to_string();
                self.prometheus = Some(PromBinary::Uploaded {
                    sha256: sum.clone(),
                });
                wanted.push(("prometheus", sum, Some(local.path.clone())));
            }
            let sums = self
                .c
                .script(
                    &h,
                    "reading checksums",
                    "cd \"$R/bin\" 2>/dev/null || exit 0\nsha256sum -- * 2>/dev/null || true\n",
                    None,
                )
                .await?;
            let have: HashMap<&str, &str> = sums
                .lines()
                .filter_map(|l| {
                    l.split_once("  ")
                        .map(|(sum, name)| (name.trim(), sum.trim()))
                })
                .collect();
            for (name, sum, local) in wanted {
                if have.get(name) == Some(&sum.as_str()) {
                    self.say(format!("{name}: up to date on {}", h.label()));
                    continue;
                }
                let body = format!(
                    "mkdir -p \"$R/bin\" \"$R/run\" \"$R/logs\"\nchmod 700 \"$R\"\ncat > \"$R/bin/.{name}.part\"\nchmod 755 \"$R/bin/.{name}.part\"\nmv -f \"$R/bin/.{name}.part\" \"$R/bin/{name}\"\nsha256sum \"$R/bin/{name}\"\n"
                );
                let script = format!("{}{body}", preamble(&self.c.ss, &self.c.st));
                eprintln!("  uploading {name} to {}…", h.label());
                let out = match &local {
                    Some(path) => self.c.ssh.upload(&h, path, &script).await?,
                    None => {
                        self.c
                            .ssh
                            .run(&h, &script, Some(SUPERVISE.as_bytes()))
                            .await?
                    }
                };
                let got = out.stdout.split_whitespace().next().unwrap_or("");
                if !out.ok() || got != sum {
                    return Err(Error::Runtime(format!(
                        "host {}: uploading {name} failed ({}); check the free space in the cluster's directory there and deploy again",
                        h.label(),
                        if out.ok() { format!("checksum {got} instead of {sum}") } else { out.stderr.trim().to_string() }
                    )));
                }
                self.say(format!(
                    "{name}: uploaded to {} (sha256 {})",
                    h.label(),
                    &sum[..12]
                ));
            }
        }
        Ok(())
    }

    /// Writes a private file (0600) below `R` on a placement's host, through stdin.
    async fn write_file(&self, p: &Placement, rel: &str, bytes: &[u8]) -> Result<()> {
        let body = format!(
            "umask 077\nmkdir -p \"$R/{dir}\"\ncat > \"$R/{rel}.part\"\nmv -f \"$R/{rel}.part\" \"$R/{rel}\"\n",
            dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("."),
        );
        self.c
            .script(
                self.c.host(p),
                &format!("writing {rel}"),
                &body,
                Some(bytes),
            )
            .await
            .map(drop)
    }

    /// Starts `p` unless it runs with the same spec; waits for its health check.
    async fn launch(
        &mut self,
        st: &mut ClusterState,
        idx: usize,
        l: Launch,
        save: &Save<'_>,
    ) -> Result<()> {
        interrupt::check()?;
        let p = self.c.ss.placements[idx].clone();
        let h = self.c.host(&p).clone();
        let name = p.name();
        let running = self.c.supervised(p.host).await?.get(&name).cloned();
        if matches!(running, Some(Supervised::Running { .. }))
            && p.spec.as_deref() == Some(l.spec.as_str())
            && self.c.probe(&p).await.is_ok()
        {
            self.say(format!("{name}: unchanged on {}", h.label()));
            mark_started(st, &p, true);
            return Ok(());
        }
        let mut cmd = format!("\"$R/bin/ltops-supervise\" start {name} \"$R/logs/{name}.log\" --");
        for a in std::iter::once(&l.program).chain(&l.args) {
            cmd.push(' ');
            cmd.push_str(a);
        }
        let body = format!(
            "mkdir -p \"$R/{name}\" \"$R/logs\" \"$R/run\"\ncd \"$R/{name}\"\n\"$R/bin/ltops-supervise\" stop {name} {STOP_GRACE} >/dev/null\nlog_start=$(wc -c < \"$R/logs/{name}.log\" 2>/dev/null || echo 0)\necho \"$log_start\" > \"$R/run/{name}.logstart\"\n{cmd}\n"
        );
        // Counted as started before the attempt: a start that times out may still come up, and
        // stopping what is not running is harmless.
        self.started.push(self.c.ss.placements[idx].clone());
        self.c
            .script(&h, &format!("starting {name}"), &body, None)
            .await?;
        self.c.ss.placements[idx].spec = Some(l.spec.clone());
        mark_started(st, &p, true);
        st.set_provider_state_in(self.c.slot, &self.c.ss)?;
        save(st)?;
        self.wait_healthy(&p).await?;
        self.say(format!("{name}: started on {}", h.label()));
        Ok(())
    }

    /// Waits for a just-started component's health check; a crash or a taken port is an error
    /// naming the host, with the log lines that say why.
    async fn wait_healthy(&self, p: &Placement) -> Result<()> {
        let h = self.c.host(p);
        let name = p.name();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            interrupt::check()?;
            let state = self.c.supervised(p.host).await?.remove(&name);
            let crashed = match &state {
                Some(Supervised::Running { restarts })
                | Some(Supervised::Starting { restarts }) => *restarts > 0,
                Some(Supervised::Failed { .. }) | Some(Supervised::Stopped) | None => true,
            };
            if crashed {
                let body = format!(
                    "s=$(cat \"$R/run/{name}.logstart\" 2>/dev/null || echo 0)\ntail -c +$((s + 1)) \"$R/logs/{name}.log\" 2>/dev/null | tail -n 15\n"
                );
                let log = self
                    .c
                    .script(h, "reading a log", &body, None)
                    .await
                    .unwrap_or_default();
                let lower = log.to_lowercase();
                let taken =
                    lower.contains("address already in use") || lower.contains("address in use");
                let ports: Vec<String> = std::iter::once(p.port)
                    .chain(p.metrics_port)
                    .map(|x| x.to_string())
                    .collect();
                let msg = if taken {
                    format!(
                        "{name} on host {} cannot listen: port {} is already in use there by another program. \
                         Stop that program, or choose other first ports in the inventory's [ports] and create the \
                         cluster again; then run `ltops deploy -c {}`.\nits log:\n{}",
                        h.label(),
                        ports.join(" or "),
                        self.c.st.name,
                        indent(&log)
                    )
                } else {
                    format!(
                        "{name} on host {} exited during start-up; its last log lines (~/{}/{}-{}/logs/{name}.log):\n{}\nFix the cause, then run `ltops deploy -c {}` again.",
                        h.label(),
                        self.c.ss.remote_dir,
                        self.c.st.name,
                        self.c.st.cluster_id,
                        indent(&log),
                        self.c.st.name
                    )
                };
                return Err(Error::Runtime(msg));
            }
            if matches!(state, Some(Supervised::Running { .. })) && self.c.probe(p).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Runtime(format!(
                    "{name} on host {} did not become healthy within {}s; its last log lines:\n{}\nCheck it with `ltops logs {} -c {} -i {}`, then deploy again.",
                    h.label(),
                    START_TIMEOUT.as_secs(),
                    indent(&self.c.log_tail(p, 15).await),
                    p.role.name(),
                    self.c.st.name,
                    p.index
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Phase 3: the private PostgreSQL (initialized once, then started and given its database).
    async fn postgres(&mut self, st: &mut ClusterState, save: &Save<'_>) -> Result<Option<String>> {
        let Some((idx, p)) = self.c.ss.only(Role::Postgres) else {
            return Ok(None);
        };
        let h = self.c.host(&p).clone();
        let bin = self
            .pg_bin
            .clone()
            .ok_or_else(|| Error::Runtime("PostgreSQL binaries were not found".into()))?;
        self.c.ss.pg_bin = Some(bin.clone());
        let password = match &self.c.ss.postgres_password {
            Some(p) => p.clone(),
            None => {
                let pw = crate::state::random_token()[..32].to_string();
                self.c.ss.postgres_password = Some(pw.clone());
                st.set_provider_state_in(self.c.slot, &self.c.ss)?;
                save(st)?;
                pw
            }
        };
        let init = format!(
            "D=\"$R/postgres-0\"\nmkdir -p \"$D\" \"$R/run\" \"$R/logs\"\nchmod 700 \"$D\"\numask 077\ncat > \"$D/pw\"\nif [ ! -f \"$D/data/PG_VERSION\" ]; then\n  rm -rf \"$D/data\"\n  \"{bin}/initdb\" -D \"$D/data\" -U ltops --pwfile=\"$D/pw\" --auth=scram-sha-256 -E UTF8 > \"$R/logs/postgres-0.initdb.log\" 2>&1 || {{ cat \"$R/logs/postgres-0.initdb.log\" >&2; exit 1; }}\n  printf 'host all all 0.0.0.0/0 scram-sha-256\\nhost all all ::/0 scram-sha-256\\n' >> \"$D/data/pg_hba.conf\"\n  echo initialized\nfi\n"
        );
        let out = self
            .c
            .script(
                &h,
                "initializing PostgreSQL",
                &init,
                Some(password.as_bytes()),
            )
            .await?;
        if out.contains("initialized") {
            self.say(format!("postgres-0: initialized on {}", h.label()));
        }
        let args = vec![
            "-D".to_string(),
            "\"$R/postgres-0/data\"".into(),
            "-p".into(),
            p.port.to_string(),
            "-c".into(),
            sh_quote(&format!("listen_addresses={}", h.private_address)),
            "-c".into(),
            "\"unix_socket_directories=$R/run\"".into(),
            "-c".into(),
            "max_connections=300".into(),
        ];
        let program = format!("\"{bin}/postgres\"");
        self.launch(st, idx, Launch::new(program, args, &[]), save)
            .await?;
        let create = format!(
            "PGPASSWORD=\"$(cat \"$R/postgres-0/pw\")\"\nexport PGPASSWORD\nif ! \"{bin}/psql\" -h {a} -p {port} -U ltops -d postgres -tAc \"SELECT 1 FROM pg_database WHERE datname = 'chat'\" | grep -q 1; then\n  \"{bin}/createdb\" -h {a} -p {port} -U ltops chat\nfi\n",
            a = sh_quote(&h.private_address),
            port = p.port
        );
        self.c
            .script(&h, "creating the database", &create, None)
            .await?;
        Ok(Some(format!(
            "postgres://ltops:{password}@{}:{}/chat",
            h.private_address, p.port
        )))
    }

    /// Phase 4: the server instances.
    async fn servers(
        &mut self,
        st: &mut ClusterState,
        db_url: Option<String>,
        save: &Save<'_>,
    ) -> Result<()> {
        let sum = self.artifacts.server.sha256()?.to_string();
        for idx in 0..self.c.ss.placements.len() {
            let p = self.c.ss.placements[idx].clone();
            if p.role != Role::Server {
                continue;
            }
            let name = p.name();
            let mut args = vec![
                "--listen".to_string(),
                format!("0.0.0.0:{}", p.port),
                "--metrics-listen".into(),
                format!(
                    "{}:{}",
                    self.c.ss.hosts[p.host].private_address,
                    p.metrics_port.unwrap_or(0)
                ),
            ];
            let config = match &db_url {
                Some(url) => format!("database-url = {}\n", toml::Value::String(url.clone())),
                None => "data-dir = \"data\"\n".to_string(),
            };
            self.write_file(&p, &format!("{name}/server.toml"), config.as_bytes())
                .await?;
            args.extend(["--config".to_string(), "server.toml".into()]);
            let program = "\"$R/bin/chat-server\"".to_string();
            self.launch(
                st,
                idx,
                Launch::new(program, args, &[sum.as_bytes(), config.as_bytes()]),
                save,
            )
            .await?;
        }
        Ok(())
    }

    /// Phase 5: nginx in front of every instance.
    async fn proxy(&mut self, st: &mut ClusterState, save: &Save<'_>) -> Result<()> {
        let Some((idx, p)) = self.c.ss.only(Role::Proxy) else {
            return Ok(());
        };
        let upstreams: Vec<String> = self
            .c
            .ss
            .placements
            .iter()
            .filter(|q| q.role == Role::Server)
            .map(|q| format!("{}:{}", self.c.ss.hosts[q.host].private_address, q.port))
            .collect();
        let conf = nginx_conf(p.port, &upstreams);
        self.write_file(&p, "proxy-0/nginx.conf", conf.as_bytes())
            .await?;
        self.c
            .script(
                self.c.host(&p),
                "preparing nginx",
                "mkdir -p \"$R/proxy-0/tmp\"\n",
                None,
            )
            .await?;
        let nginx = self
            .nginx_path
            .clone()
            .unwrap_or_else(|| self.c.ss.nginx.clone());
        let program = sh_quote(&nginx);
        let args = vec![
            "-p".to_string(),
            "\"$R/proxy-0\"".into(),
            "-c".into(),
            "\"$R/proxy-0/nginx.conf\"".into(),
            "-e".into(),
            "stderr".into(),
            "-g".into(),
            sh_quote("daemon off;"),
        ];
        self.launch(
            st,
            idx,
            Launch::new(program, args, &[conf.as_bytes()]),
            save,
        )
        .await
    }

    /// Phase 6: the agents.
    async fn agents(&mut self, st: &mut ClusterState, save: &Save<'_>) -> Result<()> {
        let sum = self.artifacts.agent.sha256()?.to_string();
        let token_sum = sha256_hex(&[self.c.st.control_token.as_bytes()]);
        for idx in 0..self.c.ss.placements.len() {
            let p = self.c.ss.placements[idx].clone();
            if p.role != Role::Agent {
                continue;
            }
            let name = p.name();
            self.write_file(
                &p,
                &format!("{name}/token"),
                self.c.st.control_token.as_bytes(),
            )
            .await?;
            let mut args = vec![
                "serve".to_string(),
                "--listen".into(),
                format!("127.0.0.1:{}", p.port),
                "--token-file".into(),
                "token".into(),
                "--results-dir".into(),
                "results".into(),
                "--agent-id".into(),
                name.clone(),
            ];
            // Clusters created before agents had a metrics port have none.
            if let Some(m) = p.metrics_port {
                args.extend([
                    "--metrics-listen".into(),
                    format!("{}:{m}", self.c.ss.hosts[p.host].private_address),
                ]);
            }
            let program = "\"$R/bin/loadtest-agent\"".to_string();
            self.launch(
                st,
                idx,
                Launch::new(program, args, &[sum.as_bytes(), token_sum.as_bytes()]),
                save,
            )
            .await?;
        }
        Ok(())
    }

    /// Phase 7: the cluster's Prometheus on the metrics host, scraping every server and agent
    /// on the private network (its data in `R/prometheus-0/data`, kept across deploys).
    async fn prometheus(&mut self, st: &mut ClusterState, save: &Save<'_>) -> Result<()> {
        let Some((idx, p)) = self.c.ss.only(Role::Prometheus) else {
            return Ok(());
        };
        let ss = &self.c.ss;
        let components: Vec<Component> = ss.placements.iter().map(|q| component(ss, q)).collect();
        let conf = super::prometheus::scrape_config(&self.c.st.name, &components);
        self.write_file(&p, "prometheus-0/prometheus.yml", conf.as_bytes())
            .await?;
        let (program, binary) = match self.prometheus.clone() {
            Some(PromBinary::Installed(path)) => (sh_quote(&path), path),
            Some(PromBinary::Uploaded { sha256 }) => ("\"$R/bin/prometheus\"".to_string(), sha256),
            Some(PromBinary::Missing(why)) => {
                self.say(format!("prometheus-0: not started: {why}"));
                return Ok(());
            }
            Some(PromBinary::Upload(_)) | None => {
                return Err(Error::Runtime(
                    "internal: the metrics host's Prometheus was neither found nor uploaded".into(),
                ))
            }
        };
        let listen = format!("{}:{}", self.c.ss.hosts[p.host].private_address, p.port);
        let args = vec![
            "--config.file=prometheus.yml".to_string(),
            "--storage.tsdb.path=data".into(),
            "--storage.tsdb.retention.time=30d".into(),
            format!("--web.listen-address={listen}"),
        ];
        self.launch(
            st,
            idx,
            Launch::new(program, args, &[binary.as_bytes(), conf.as_bytes()]),
            save,
        )
        .await
    }
}

impl Deploy<'_> {
    /// Phase 8: Grafana beside the cluster's Prometheus, with it as the datasource and the
    /// dashboards of `dashboards/` provisioned; its configuration (0600, the `admin` password
    /// in it) and provisioning files are rewritten every deploy.
    async fn grafana(&mut self, st: &mut ClusterState, save: &Save<'_>) -> Result<()> {
        let Some((idx, p)) = self.c.ss.only(Role::Grafana) else {
            return Ok(());
        };
        let program = match self.grafana.clone() {
            Some(Ok(program)) => program,
            Some(Err(why)) => {
                self.say(format!("grafana-0: not started: {why}"));
                return Ok(());
            }
            None => {
                return Err(Error::Runtime(
                    "internal: the metrics host was not checked for Grafana".into(),
                ))
            }
        };
        let prometheus = match self.c.ss.only(Role::Prometheus) {
            Some((_, q)) if st.component(Role::Prometheus, 0).is_some_and(|c| c.started) => q,
            _ => {
                self.say("grafana-0: not started: the cluster's Prometheus does not run".into());
                return Ok(());
            }
        };
        let h = self.c.host(&p).clone();
        // The cluster's directory on the host, absolute: Grafana resolves relative paths
        // against its home, not against where it runs.
        let dir = self
            .c
            .script(
                &h,
                "finding the cluster's directory",
                "cd \"$R\" && pwd\n",
                None,
            )
            .await?
            .trim()
            .to_string();
        let me = format!("{dir}/grafana-0");
        let prom = &self.c.ss.hosts[prometheus.host];
        let url = format!("http://{}:{}", prom.private_address, prometheus.port);
        use ltops_kube::manifests as m;
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "grafana-0/provisioning/datasources/ltops.yaml".into(),
                m::grafana_datasources(&url).into_bytes(),
            ),
            (
                "grafana-0/provisioning/dashboards/ltops.yaml".into(),
                m::grafana_dashboard_provider(&format!("{me}/dashboards")).into_bytes(),
            ),
        ];
        for (file, text) in m::DASHBOARDS {
            files.push((
                format!("grafana-0/dashboards/{file}"),
                m::dashboard_for_grafana(text).into_bytes(),
            ));
        }
        let ini = format!(
            "# Written by ltops for cluster {name}; rewritten at every deploy.\n[paths]\ndata = {me}/data\nlogs = {me}/logs\nplugins = {me}/plugins\nprovisioning = {me}/provisioning\n[server]\nhttp_addr = {addr}\nhttp_port = {port}\n[security]\nadmin_user = admin\nadmin_password = {pw}\n[users]\nallow_sign_up = false\n[analytics]\nreporting_enabled = false\ncheck_for_updates = false\n[dashboards]\ndefault_home_dashboard_path = {me}/dashboards/overview.json\n[log]\nmode = console\n",
            name = self.c.st.name,
            addr = h.private_address,
            port = p.port,
            pw = self.c.ss.grafana_password,
        );
        files.push(("grafana-0/grafana.ini".into(), ini.into_bytes()));
        for (rel, bytes) in &files {
            self.write_file(&p, rel, bytes).await?;
            inputs.push(bytes.clone());
        }
        let args = vec![
            "--homepath".to_string(),
            sh_quote(&self.c.ss.grafana_home),
            "--config".into(),
            sh_quote(&format!("{me}/grafana.ini")),
        ];
        let inputs: Vec<&[u8]> = std::iter::once(program.as_bytes())
            .chain(inputs.iter().map(Vec::as_slice))
            .collect();
        self.launch(
            st,
            idx,
            Launch::new(sh_quote(&program), args, &inputs),
            save,
        )
        .await
    }
}

/// A check-script line printing `KEY=PATH` when `program` is found on the host: on its `PATH`,
/// or, when `program` is the package's own name (its default), at `packaged` (a login shell's
/// `PATH` often lacks `/usr/sbin`).
fn find_program(key: &str, program: &str, packaged: &str) -> String {
    let name = packaged.rsplit('/').next().unwrap_or(packaged);
    format!(
        "n=$(command -v {0} 2>/dev/null || true)\n[ -z \"$n\" ] && [ {0} = {name} ] && [ -x {packaged} ] && n={packaged}\n[ -n \"$n\" ] && echo \"{key}=$n\" || true\n",
        sh_quote(program)
    )
}

/// The ELF machine of a binary (`e_machine`, bytes 18–19, little-endian on the architectures
/// we map), `None` when it cannot be read or is not ELF.
fn elf_machine(path: &Path) -> Option<u16> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    (head[..4] == *b"\x7fELF" && head[5] == 1).then(|| u16::from_le_bytes([head[18], head[19]]))
}

/// The ELF machine that `uname -m` names, for the architectures a load test plausibly runs on.
fn uname_machine(uname: &str) -> Option<u16> {
    match uname {
        "x86_64" | "amd64" => Some(0x3e),
        "aarch64" | "arm64" => Some(0xb7),
        "i386" | "i486" | "i586" | "i686" => Some(0x03),
        "riscv64" => Some(0xf3),
        "ppc64le" => Some(0x15),
        "s390x" => Some(0x16),
        m if m.starts_with("armv") => Some(0x28),
        _ => None,
    }
}

/// Marks a placement's generic component as started or not.
fn mark_started(st: &mut ClusterState, p: &Placement, started: bool) {
    if let Some(c) = st.component_mut(p.role, p.index) {
        c.started = started;
    }
}

/// nginx in front of the instances: `least_conn`, WebSocket upgrades, long timeouts for idle
/// sockets, everything it writes below its prefix directory.
fn nginx_conf(port: u16, upstreams: &[String]) -> String {
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u} max_fails=0;\n"))
        .collect();
    format!(
        "# Written by ltops; rewritten by every deploy.\n\
worker_processes auto;\n\
worker_rlimit_nofile 20000;\n\
pid nginx.pid;\n\
events {{\n    worker_connections 16384;\n}}\n\
http {{\n\
    access_log off;\n\
    client_body_temp_path tmp/body;\n\
    proxy_temp_path tmp/proxy;\n\
    fastcgi_temp_path tmp/fastcgi;\n\
    uwsgi_temp_path tmp/uwsgi;\n\
    scgi_temp_path tmp/scgi;\n\
    client_max_body_size 50m;\n\
    map $http_upgrade $connection_upgrade {{\n        default upgrade;\n        '' '';\n    }}\n\
    upstream chat {{\n        least_conn;\n{servers}        keepalive 64;\n    }}\n\
    server {{\n\
        listen {port} reuseport;\n\
        location / {{\n\
            proxy_pass http://chat;\n\
            proxy_http_version 1.1;\n\
            proxy_set_header Upgrade $http_upgrade;\n\
            proxy_set_header Connection $connection_upgrade;\n\
            proxy_set_header Host $host;\n\
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
            proxy_read_timeout 600s;\n\
            proxy_send_timeout 600s;\n\
            proxy_buffering off;\n\
        }}\n\
    }}\n\
}}\n"
    )
}

impl SshProvider {
    /// The URL agent `i`'s users talk to: the proxy, else instance `i mod N`.
    fn target(ss: &SshState, agent: u32) -> Result<String> {
        let url = |p: &Placement| format!("http://{}:{}", ss.hosts[p.host].private_address, p.port);
        if let Some(p) = ss.placements.iter().find(|p| p.role == Role::Proxy) {
            return Ok(url(p));
        }
        let servers: Vec<&Placement> = ss
            .placements
            .iter()
            .filter(|p| p.role == Role::Server)
            .collect();
        if servers.is_empty() {
            return Err(Error::Runtime("the cluster has no server instance".into()));
        }
        Ok(url(servers[agent as usize % servers.len()]))
    }

    /// The database URL the servers use, if any.
    fn external_database(ss: &SshState) -> Result<Option<String>> {
        match &ss.database_url {
            None => Ok(None),
            Some(DatabaseUrl::Literal(u)) => Ok(Some(u.clone())),
            Some(DatabaseUrl::Env(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(Error::Usage(format!(
                    "the inventory says database_url_env = {var:?}, but {var} is not set; export it \
                     (postgres://user:password@host:port/database) and run the command again"
                ))),
            },
        }
    }
}

#[async_trait]
impl Provider for SshProvider {
    fn kind(&self) -> ClusterType {
        ClusterType::Ssh
    }

    fn shape(&self, req: &CreateRequest) -> Result<Shape> {
        let inv = Self::inventory(req)?;
        let count = |r: HostRole| inv.with_role(r).len() as u32;
        let database =
            req.database
                .unwrap_or(if count(HostRole::Db) > 0 || inv.database_url.is_some() {
                    Database::Postgres
                } else {
                    Database::Sqlite
                });
        let proxy = req.proxy.unwrap_or(if count(HostRole::Proxy) > 0 {
            Proxy::Nginx
        } else {
            Proxy::None
        });
        let shape = Shape {
            agents: req.agents.unwrap_or(count(HostRole::Agent).max(1)),
            app_count: req.app_count.unwrap_or(count(HostRole::App).max(1)),
            database,
            proxy,
            metrics: req.metrics.unwrap_or(true),
        };
        let private_db = database == Database::Postgres && inv.database_url.is_none();
        // Bounds first: placing 100,000 agents is not worth trying.
        if crate::state::check_shape(shape.agents, shape.app_count, database, proxy).is_ok() {
            place(&inv, &shape, private_db)?;
        }
        Ok(shape)
    }

    async fn create(
        &self,
        req: &CreateRequest,
        st: &mut ClusterState,
        _save: &Save<'_>,
    ) -> Result<()> {
        let inv = Self::inventory(req)?;
        let ss = self.record(&inv, st)?;
        // Reach every host now: a wrong address or key is found before anything is deployed.
        let c = Cluster::new(st, ss, self.slot)?;
        let hosts = c.hosts_in_use();
        eprintln!("checking SSH access to {} host(s)…", hosts.len());
        c.connect_all(&hosts).await?;
        for &i in &hosts {
            let h = &c.ss.hosts[i];
            let roles: Vec<String> =
                c.ss.placements
                    .iter()
                    .filter(|p| p.host == i)
                    .map(Placement::name)
                    .collect();
            eprintln!("  {}: reachable; will run {}", h.label(), roles.join(", "));
        }
        Ok(())
    }

    async fn deploy(
        &self,
        st: &mut ClusterState,
        artifacts: &Artifacts,
        save: &Save<'_>,
    ) -> Result<()> {
        let ss = self.state(st)?;
        let db_external = Self::external_database(&ss)?;
        let mut d = Deploy {
            c: Cluster::new(st, ss, self.slot)?,
            artifacts,
            started: Vec::new(),
            notes: Vec::new(),
            pg_bin: None,
            nginx_path: None,
            prometheus: None,
            grafana: None,
        };
        let result = async {
            d.check_hosts().await?;
            d.upload().await?;
            let private = d.postgres(st, save).await?;
            d.servers(st, db_external.or(private), save).await?;
            d.proxy(st, save).await?;
            d.agents(st, save).await?;
            d.prometheus(st, save).await?;
            d.grafana(st, save).await?;
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = result {
            // Leave nothing this deploy started behind; what ran before and was unchanged stays.
            let started: Vec<&Placement> = d.started.iter().collect();
            if !started.is_empty() {
                eprintln!("deploy failed; stopping what it started…");
                for err in d.c.stop(&started).await {
                    eprintln!("  {err}");
                }
                for p in &d.started {
                    mark_started(st, p, false);
                    if let Some(q) =
                        d.c.ss
                            .placements
                            .iter_mut()
                            .find(|q| q.role == p.role && q.index == p.index)
                    {
                        q.spec = None;
                    }
                }
            }
            st.set_provider_state_in(self.slot, &d.c.ss)?;
            let _ = save(st);
            return Err(e);
        }
        st.set_provider_state_in(self.slot, &d.c.ss)?;
        save(st)
    }

    async fn summary(&self, st: &ClusterState) -> Result<Vec<String>> {
        let ss = self.state(st)?;
        Ok(ss
            .placements
            .iter()
            // Where it runs, or will run once deployed; not one a deploy skipped (no binary).
            .filter(|p| {
                matches!(p.role, Role::Prometheus | Role::Grafana)
                    && (st.deployed_at_ms.is_none()
                        || st.component(p.role, p.index).is_some_and(|c| c.started))
            })
            .map(|p| {
                let h = &ss.hosts[p.host];
                let (addr, port) = (&h.private_address, p.port);
                let mut line = format!(
                    "{}: on {} at http://{addr}:{port} (private network); from here: `ssh -N -L {port}:{addr}:{port} {}`, then http://127.0.0.1:{port}",
                    p.role.name(),
                    h.label(),
                    h.label(),
                );
                if p.role == Role::Grafana {
                    line.push_str(&format!(
                        " as admin, password: grafana_password in {}",
                        self.home.cluster_dir(&st.name).join(CLUSTER_FILE).display()
                    ));
                }
                line
            })
            .collect())
    }

    async fn status(&self, st: &ClusterState) -> Result<Vec<ComponentHealth>> {
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let mut out = Vec::new();
        let mut per_host: HashMap<usize, std::result::Result<HashMap<String, Supervised>, String>> =
            HashMap::new();
        for i in c.hosts_in_use() {
            let got = match c.ssh.connect(&c.ss.hosts[i]).await {
                Ok(()) => c.supervised(i).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            per_host.insert(i, got);
        }
        for comp in &st.components {
            let Some(p) =
                c.ss.placements
                    .iter()
                    .find(|p| p.role == comp.role && p.index == comp.index)
            else {
                continue;
            };
            let h = c.host(p);
            let health = match per_host.get(&p.host) {
                Some(Err(e)) => Health::Unhealthy(format!("host unreachable: {e}")),
                Some(Ok(map)) => match map.get(&p.name()) {
                    Some(Supervised::Running { restarts }) => match c.probe(p).await {
                        Ok(()) if *restarts == 0 => Health::Healthy,
                        Ok(()) => Health::Unhealthy(format!("answering, but restarted {restarts} time(s) after crashes")),
                        Err(e) => Health::Unhealthy(e.to_string()),
                    },
                    Some(Supervised::Starting { restarts }) => {
                        Health::Unhealthy(format!("restarting after a crash (restart {restarts})"))
                    }
                    Some(Supervised::Failed { status }) => Health::Unhealthy(format!(
                        "crashed repeatedly and was given up on (last exit status {status}); see `ltops logs {} -c {} -i {}`",
                        p.role.name(),
                        st.name,
                        p.index
                    )),
                    Some(Supervised::Stopped) | None => Health::Stopped,
                },
                None => Health::Stopped,
            };
            out.push(ComponentHealth {
                component: comp.clone(),
                health,
                location: h.label(),
            });
        }
        Ok(out)
    }

    async fn endpoints(&self, st: &ClusterState) -> Result<Endpoints> {
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let agents: Vec<&Placement> =
            c.ss.placements
                .iter()
                .filter(|p| p.role == Role::Agent)
                .collect();
        let hosts: Vec<usize> = {
            let mut v: Vec<usize> = agents.iter().map(|p| p.host).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        c.connect_all(&hosts).await?;
        let mut forwards = Vec::new();
        let mut out = Vec::new();
        for p in agents {
            let running = c.supervised(p.host).await?.get(&p.name()).cloned();
            if !matches!(running, Some(Supervised::Running { .. })) {
                return Err(Error::Runtime(format!(
                    "{} of cluster {:?} is not running on {}; its last log lines:\n{}\nRun `ltops deploy -c {}` to start it again.",
                    p.name(),
                    st.name,
                    c.host(p).label(),
                    indent(&c.log_tail(p, 10).await),
                    st.name
                )));
            }
            let fwd = c.ssh.forward(c.host(p), "127.0.0.1", p.port).await?;
            out.push(AgentEndpoint {
                index: p.index,
                control_url: format!("http://{}", fwd.address()),
                token: st.control_token.clone(),
                target_url: Self::target(&c.ss, p.index)?,
            });
            forwards.push(fwd);
        }
        out.sort_by_key(|e| e.index);
        // Each server instance's /metrics (on its host's private address), for the run's
        // server samples.
        let servers: Vec<&Placement> =
            c.ss.placements
                .iter()
                .filter(|p| p.role == Role::Server)
                .collect();
        let mut server_hosts: Vec<usize> = servers.iter().map(|p| p.host).collect();
        server_hosts.sort_unstable();
        server_hosts.dedup();
        c.connect_all(&server_hosts).await?;
        let mut server_metrics = Vec::new();
        for p in servers {
            let Some(port) = p.metrics_port else { continue };
            let h = c.host(p);
            let fwd = c.ssh.forward(h, &h.private_address, port).await?;
            server_metrics.push((p.name(), format!("http://{}/metrics", fwd.address())));
            forwards.push(fwd);
        }
        let server_url = Self::target(&c.ss, 0)?;
        Ok(Endpoints::new(out, server_url, forwards).with_server_metrics(server_metrics))
    }

    async fn lost_agent(
        &self,
        st: &ClusterState,
        index: u32,
        run_id: &str,
        dest: &Path,
    ) -> Result<LostAgent> {
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let p = c.placement(Role::Agent, index)?.clone();
        let h = c.host(&p).clone();
        c.ssh.connect(&h).await?;
        let alive = matches!(
            c.supervised(p.host).await?.get(&p.name()),
            Some(Supervised::Running { .. })
        );
        let log_tail = c.log_tail(&p, 15).await;
        if !run_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        {
            return Err(Error::Runtime(format!("unexpected run id {run_id:?}")));
        }
        let body = format!(
            "cd \"$R/{name}/results\" 2>/dev/null || exit 0\nfor f in $(ls -t *.jsonl 2>/dev/null); do\n  case \"$f\" in *{run_id}*) cat \"$f\"; exit 0;; esac\n  if head -n 1 \"$f\" | grep -qF {run_id}; then cat \"$f\"; exit 0; fi\ndone\n",
            name = p.name()
        );
        let text = c.script(&h, "copying the results", &body, None).await?;
        let saved = !text.is_empty();
        if saved {
            std::fs::write(dest, text.as_bytes())
                .context(|| format!("writing {}", dest.display()))?;
        }
        Ok(LostAgent {
            alive,
            log_tail,
            saved,
        })
    }

    async fn shell(
        &self,
        st: &ClusterState,
        role: Role,
        index: u32,
        cmd: &ShellCommand,
    ) -> Result<i32> {
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let comp = st.find(role, index)?.clone();
        let p = c.placement(role, index)?.clone();
        let h = c.host(&p).clone();
        let name = p.name();
        let mut script = preamble(&c.ss, st);
        script.push_str(&format!(
            "cd \"$R/{name}\" 2>/dev/null || cd \"$R\" 2>/dev/null || true\nexport LTOPS_CLUSTER={} LTOPS_ROLE={} LTOPS_INDEX={index} LTOPS_URL={} LTOPS_LOG=\"$R/logs/{name}.log\"\n",
            sh_quote(&st.name),
            role.name(),
            sh_quote(&comp.url())
        ));
        if let Some(m) = &comp.metrics_address {
            script.push_str(&format!(
                "export LTOPS_METRICS_URL={}\n",
                sh_quote(&format!("http://{m}/metrics"))
            ));
        }
        if role == Role::Agent {
            script.push_str(&format!("export LTOPS_TOKEN_FILE=\"$R/{name}/token\"\n"));
        }
        use std::io::IsTerminal;
        let tty = matches!(cmd, ShellCommand::Interactive) && std::io::stdin().is_terminal();
        match cmd {
            ShellCommand::Interactive => {
                eprintln!(
                    "ltops: shell on {} for {name} of cluster {:?}; exit to return",
                    h.label(),
                    st.name
                );
                script.push_str("exec \"${SHELL:-/bin/sh}\" -l\n");
            }
            ShellCommand::Run(words) => {
                script.push_str(&format!("exec sh -c {}\n", sh_quote(&words.join(" "))));
            }
        }
        let mut command = c.ssh.std_client(&h, tty);
        command
            .arg(&h.address)
            .arg("--")
            .arg(format!("sh -c {}", sh_quote(&script)));
        let status = command.status().context(|| "running ssh".to_string())?;
        let code = status.code().unwrap_or(1);
        if code == 255 {
            // ssh's own failure (the remote command's 255 is rare): say what to do.
            c.ssh.connect(&h).await?;
        }
        Ok(code)
    }

    async fn logs(
        &self,
        st: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()> {
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let p = c.placement(role, index)?.clone();
        let h = c.host(&p).clone();
        c.ssh.connect(&h).await?;
        let name = p.name();
        let file = format!("\"$R/logs/{name}.log\"");
        let mut script = preamble(&c.ss, st);
        script.push_str(&format!(
            "[ -f {file} ] || {{ echo 'no log yet: {name} was never started; run ltops deploy -c {}' >&2; exit 3; }}\n",
            st.name
        ));
        let from = match lines {
            Some(n) => format!("-n {n}"),
            None => "-n +1".into(),
        };
        script.push_str(&if follow {
            format!("exec tail {from} -f {file}\n")
        } else {
            format!("exec tail {from} {file}\n")
        });
        let mut command = c.ssh.std_client(&h, false);
        command
            .arg(&h.address)
            .arg("--")
            .arg(format!("sh -c {}", sh_quote(&script)))
            .stdin(std::process::Stdio::null());
        let mut child = command.spawn().context(|| "running ssh".to_string())?;
        loop {
            if interrupt::interrupted() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            if let Some(status) = child.try_wait().context(|| "waiting for ssh".to_string())? {
                return match status.code() {
                    Some(0) => Ok(()),
                    Some(3) => Err(Error::Usage(format!(
                        "{name} of cluster {:?} has no log yet",
                        st.name
                    ))),
                    other => Err(Error::Runtime(format!(
                        "reading {name}'s log on {} failed (exit {other:?})",
                        h.label()
                    ))),
                };
            }
            if interrupt::interrupted() {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(&self, st: &mut ClusterState, save: &Save<'_>) -> Result<Vec<String>> {
        let ever_started = st.deployed_at_ms.is_some() || st.components.iter().any(|c| c.started);
        if st.provider_slot_is_empty(self.slot) || !ever_started {
            // Never deployed: nothing runs on the hosts, so none is contacted.
            return Ok(Vec::new());
        }
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let (ok_hosts, unreachable) = c.reach_used_hosts().await;
        let mut problems: Vec<String> = unreachable
            .iter()
            .map(|(i, e)| format!("{}: {e}", c.ss.hosts[*i].label()))
            .collect();
        let to_stop: Vec<&Placement> =
            c.ss.placements
                .iter()
                .filter(|p| ok_hosts.contains(&p.host))
                .collect();
        problems.extend(c.stop(&to_stop).await);
        for p in &to_stop {
            mark_started(st, p, false);
        }
        for &i in &ok_hosts {
            c.ssh.disconnect(&c.ss.hosts[i]).await;
        }
        save(st)?;
        if !problems.is_empty() {
            return Err(Error::Runtime(format!(
                "{}\nwhat could be reached was stopped; fix the cause and run `ltops stop {}` again",
                problems.join("\n"),
                st.name
            )));
        }
        Ok(Vec::new())
    }

    async fn delete(
        &self,
        st: &mut ClusterState,
        opts: DeleteOptions,
        save: &Save<'_>,
    ) -> Result<()> {
        if st.provider_slot_is_empty(self.slot) {
            // Nothing was recorded (a create that failed early): nothing to remove remotely.
            return Ok(());
        }
        let ss = self.state(st)?;
        let c = Cluster::new(st, ss, self.slot)?;
        let (mut ok_hosts, unreachable) = c.reach_used_hosts().await;
        let to_stop: Vec<&Placement> =
            c.ss.placements
                .iter()
                .filter(|p| ok_hosts.contains(&p.host))
                .collect();
        let mut errors = c.stop(&to_stop).await;
        // Keep the supervisor and its pid files where a stop failed, so a repeated delete can
        // still find what runs there.
        ok_hosts.retain(|&i| !errors.iter().any(|e| e.contains(&c.ss.hosts[i].label())));
        for &i in &ok_hosts {
            let h = &c.ss.hosts[i];
            let body = "rm -rf \"$R\"\nrmdir \"$(dirname \"$R\")\" 2>/dev/null || true\n";
            match c
                .script(h, "removing the cluster's directory", body, None)
                .await
            {
                Ok(_) => eprintln!(
                    "  {}: stopped everything, removed the cluster's directory",
                    h.label()
                ),
                Err(e) => errors.push(e.to_string()),
            }
            c.ssh.disconnect(h).await;
        }
        for p in &to_stop {
            mark_started(st, p, false);
        }
        let _ = save(st);
        if !errors.is_empty() {
            return Err(Error::Runtime(format!(
                "{}\nthe cluster's state is kept; fix the cause and run `ltops delete {} --yes` again",
                errors.join("\n"),
                st.name
            )));
        }
        if !unreachable.is_empty() {
            let list: Vec<String> = unreachable
                .iter()
                .map(|(i, e)| {
                    let left: Vec<String> =
                        c.ss.placements
                            .iter()
                            .filter(|p| p.host == *i)
                            .map(Placement::name)
                            .collect();
                    format!("  {} ({}): {e}", c.ss.hosts[*i].label(), left.join(", "))
                })
                .collect();
            if !opts.forget_unreachable {
                return Err(Error::Runtime(format!(
                    "could not reach {} host(s); nothing was stopped or removed there:\n{}\nThe cluster's state is kept: run \
                     `ltops delete {} --yes` again once they are reachable, or add --forget-unreachable to remove the \
                     state anyway (then stop what is listed by hand).",
                    unreachable.len(),
                    list.join("\n"),
                    st.name
                )));
            }
            eprintln!(
                "warning: forgetting {} unreachable host(s); these components may still run there (in ~/{}/{}-{}):\n{}",
                unreachable.len(),
                c.ss.remote_dir,
                st.name,
                st.cluster_id,
                list.join("\n")
            );
        }
        c.ssh.remove_control_dir();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn inv(text: &str) -> Inventory {
        Inventory::parse(text, Path::new("/x/hosts.toml")).unwrap()
    }

    #[test]
    fn components_are_spread_over_their_hosts_with_distinct_ports() {
        let i = inv(
            "[[host]]\naddress = \"a\"\nroles = [\"app\", \"db\"]\n[[host]]\naddress = \"b\"\nroles = [\"app\", \"proxy\"]\n[[host]]\naddress = \"c\"\nroles = [\"agent\"]\n",
        );
        let shape = Shape {
            agents: 3,
            app_count: 3,
            database: Database::Postgres,
            proxy: Proxy::Nginx,
            metrics: true,
        };
        let p = place(&i, &shape, true).unwrap();
        let at = |r: Role, n: u32| {
            p.iter()
                .find(|q| q.role == r && q.index == n)
                .map(|q| (q.host, q.port))
                .unwrap()
        };
        assert_eq!(at(Role::Server, 0), (0, 8065));
        assert_eq!(at(Role::Server, 1), (1, 8065));
        assert_eq!(at(Role::Server, 2), (0, 8066));
        assert_eq!(at(Role::Agent, 2), (2, 9167));
        assert_eq!(at(Role::Postgres, 0), (0, 15432));
        assert_eq!(at(Role::Proxy, 0), (1, 8080));
        // No `metrics` host: Prometheus goes beside the first agent; agents get metrics ports.
        assert_eq!(at(Role::Prometheus, 0), (2, 9090));
        let agent2 = p
            .iter()
            .find(|q| q.role == Role::Agent && q.index == 2)
            .unwrap();
        assert_eq!(agent2.metrics_port, Some(9267));
        let with_host = inv(
            "[[host]]\naddress = \"a\"\nroles = [\"app\", \"agent\"]\n[[host]]\naddress = \"m\"\nroles = [\"metrics\"]\n",
        );
        let solo = Shape {
            agents: 1,
            app_count: 1,
            database: Database::Sqlite,
            proxy: Proxy::None,
            metrics: true,
        };
        let q = place(&with_host, &solo, false).unwrap();
        assert!(
            q.iter().any(|x| x.role == Role::Prometheus && x.host == 1),
            "{q:?}"
        );
        let none = place(
            &with_host,
            &Shape {
                metrics: false,
                ..solo
            },
            false,
        )
        .unwrap();
        assert!(none.iter().all(|x| x.role != Role::Prometheus), "{none:?}");
        let no_proxy_host = inv("[[host]]\naddress = \"a\"\nroles = [\"app\", \"agent\"]\n");
        let e = place(&no_proxy_host, &shape, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hosts.toml") && e.contains("\"proxy\""), "{e}");
        let clash = inv("[ports]\nserver = 9000\nserver_metrics = 9001\n[[host]]\naddress = \"a\"\nroles = [\"app\", \"agent\"]\n");
        let two = Shape {
            agents: 1,
            app_count: 2,
            database: Database::Postgres,
            proxy: Proxy::None,
            metrics: false,
        };
        let e = place(&clash, &two, false).unwrap_err().to_string();
        assert!(e.contains("port 9001"), "{e}");
        let high = inv(
            "[ports]\nagent = 65530\n[[host]]\naddress = \"a\"\nroles = [\"app\", \"agent\"]\n",
        );
        let many = Shape {
            agents: 64,
            app_count: 1,
            database: Database::Sqlite,
            proxy: Proxy::None,
            metrics: false,
        };
        let e = place(&high, &many, false).unwrap_err().to_string();
        assert!(e.contains("above 65535"), "{e}");
    }

    #[test]
    fn architectures_are_compared_by_elf_machine() {
        // This test binary is an ELF file of this machine's architecture.
        let me = std::env::current_exe().unwrap();
        let built = elf_machine(&me).unwrap();
        let here = uname_machine(std::env::consts::ARCH).unwrap();
        assert_eq!(built, here);
        assert_ne!(uname_machine("aarch64"), uname_machine("x86_64"));
        assert_eq!(uname_machine("armv7l"), Some(0x28));
        assert_eq!(uname_machine("mips"), None);
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("x");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(elf_machine(&script), None);
    }

    #[test]
    fn supervisor_lines_are_understood() {
        assert_eq!(
            parse_supervised("running 10 11 0"),
            Supervised::Running { restarts: 0 }
        );
        assert_eq!(
            parse_supervised("starting 10 - 2"),
            Supervised::Starting { restarts: 2 }
        );
        assert_eq!(
            parse_supervised("failed 7 10"),
            Supervised::Failed { status: "7".into() }
        );
        assert_eq!(parse_supervised("stopped"), Supervised::Stopped);
        assert_eq!(parse_supervised(""), Supervised::Stopped);
    }

    #[test]
    fn nginx_config_upgrades_websockets_and_balances_least_connections() {
        let conf = nginx_conf(8080, &["10.0.0.2:8065".into(), "10.0.0.3:8065".into()]);
        for want in [
            "least_conn;",
            "server 10.0.0.2:8065",
            "server 10.0.0.3:8065",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $connection_upgrade;",
            "listen 8080",
            "client_body_temp_path tmp/body;",
        ] {
            assert!(conf.contains(want), "{want}\n{conf}");
        }
    }
}
