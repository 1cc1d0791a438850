//! The state directory: where clusters are recorded, and how their definition is read and
//! written.
//!
//! Layout (`$LTOPS_HOME`, else `~/.ltops/`):
//!
//! ```text
//! <home>/clusters/<name>/cluster.toml    definition + live state (mode 0600: token, db password)
//!                       /lock            held by the command working on the cluster
//!                       /results/<run-id>/agent-<i>.jsonl, workload.toml
//!                       /workload.toml   the config given to `deploy --config`
//!                       …                whatever the provider keeps here (local: logs/,
//!                                        <role>-<i>/; ssh: the inventory copy, host logs)
//! ```
//!
//! `cluster.toml` has a shared part — the layout version (`schema`), the cluster's shape
//! (agents, app count, database, proxy), the control token, generic components (role, index,
//! address) — and a `[provider]` section tagged with `type` that only that provider reads.
//!
//! Writes are atomic (temporary file in the same directory, then rename), so a reader never
//! sees half a file and a crash never leaves a corrupt definition.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Name of the cluster `ltops loadtest --quick` creates or reuses.
pub const QUICK_CLUSTER: &str = "quick";

/// The root of all state.
#[derive(Clone, Debug)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `$LTOPS_HOME`, else `$HOME/.ltops`.
    pub fn from_env() -> Result<Self> {
        if let Some(h) = std::env::var_os("LTOPS_HOME").filter(|h| !h.is_empty()) {
            return Ok(Home { root: h.into() });
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Ok(Home {
                root: PathBuf::from(h).join(".ltops"),
            }),
            None => Err(Error::Usage(
                "neither LTOPS_HOME nor HOME is set; set LTOPS_HOME to a directory for ltops' state"
                    .into(),
            )),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }

    pub fn clusters_dir(&self) -> PathBuf {
        self.root.join("clusters")
    }

    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.clusters_dir().join(name)
    }

    /// Where a cluster's load-test results go (`results/<name>/<run-id>/`): outside its state
    /// directory, so `delete` keeps them (baselines a CI gate compares against) unless asked.
    pub fn results_dir(&self, name: &str) -> PathBuf {
        self.root.join("results").join(name)
    }

    /// Names of the recorded clusters, sorted.
    pub fn cluster_names(&self) -> Result<Vec<String>> {
        let dir = self.clusters_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(CLUSTER_FILE).is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Loads a cluster, or explains which ones exist.
    pub fn load(&self, name: &str) -> Result<ClusterState> {
        validate_name(name)?;
        let path = self.cluster_dir(name).join(CLUSTER_FILE);
        if !path.is_file() {
            let known = self.cluster_names()?;
            let hint = if known.is_empty() {
                format!("create one with `ltops create --name {name}` (or run `ltops loadtest --quick`)")
            } else {
                format!(
                    "known clusters: {}; or create it with `ltops create --name {name}`",
                    known.join(", ")
                )
            };
            return Err(Error::UnknownCluster {
                name: name.into(),
                home: self.root.clone(),
                hint,
            });
        }
        ClusterState::read(&path)
    }

    /// [`Home::load`] plus [`ClusterState::check`]: for commands that act on the definition
    /// (deploy, loadtest). Status, logs and delete use plain `load`, so a cluster whose numbers
    /// were edited wrongly can still be inspected and deleted.
    pub fn load_checked(&self, name: &str) -> Result<ClusterState> {
        let st = self.load(name)?;
        st.check(&self.cluster_dir(name).join(CLUSTER_FILE), name)?;
        Ok(st)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.cluster_dir(name).join(CLUSTER_FILE).is_file()
    }

    /// Writes a cluster's definition atomically with mode 0600.
    pub fn save(&self, state: &ClusterState) -> Result<()> {
        let dir = self.cluster_dir(&state.name);
        let text = toml::to_string(state)
            .map_err(|e| Error::Runtime(format!("cannot encode cluster state: {e}")))?;
        write_atomic(&dir.join(CLUSTER_FILE), text.as_bytes(), 0o600)
    }
}

pub const CLUSTER_FILE: &str = "cluster.toml";

/// Cluster names become directory names: keep them simple.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid cluster name {name:?}: use 1-40 characters of letters, digits, - and _"
        )))
    }
}

/// Version of the `cluster.toml` layout this `ltops` writes. 1 (no `schema` key, local only,
/// process details on the components) is migrated on read; newer versions are refused.
pub const SCHEMA_VERSION: u32 = 2;

/// Most agents a cluster may have (a sanity bound, not a technical limit).
pub const MAX_AGENTS: u32 = 64;
/// Most server instances a cluster may have.
pub const MAX_APP_COUNT: u32 = 16;

/// Which provider runs the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterType {
    /// Processes on this machine.
    Local,
    /// Hosts you already have, reached with the system OpenSSH client (`--inventory`).
    Ssh,
    /// Pods in an existing Kubernetes cluster (not yet supported).
    Kubernetes,
    /// EC2 instances it provisions (through the `ltops-aws` crate).
    Aws,
}

impl ClusterType {
    pub fn name(self) -> &'static str {
        match self {
            ClusterType::Local => "local",
            ClusterType::Ssh => "ssh",
            ClusterType::Kubernetes => "kubernetes",
            ClusterType::Aws => "aws",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// The server's embedded SQLite (one server instance only).
    Sqlite,
    /// PostgreSQL: a private one the cluster starts, or an existing one (`database_url`).
    Postgres,
}

impl Database {
    pub fn name(self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres => "postgres",
        }
    }
}

/// What stands in front of several server instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    /// Agents talk to the instances directly (agent `i` to instance `i mod N`).
    #[default]
    None,
    /// nginx (`least_conn`, WebSocket upgrades) in front of every instance; agents use it.
    Nginx,
}

impl Proxy {
    pub fn name(self) -> &'static str {
        match self {
            Proxy::None => "none",
            Proxy::Nginx => "nginx",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A chat server instance.
    Server,
    /// A load-test agent.
    Agent,
    /// The cluster's private PostgreSQL.
    Postgres,
    /// The reverse proxy in front of the server instances.
    Proxy,
    /// The cluster's Prometheus (`ltops create --metrics`), scraping every server and agent.
    Prometheus,
    /// Grafana beside that Prometheus, with the dashboards of `dashboards/` (ssh, aws and
    /// kubernetes clusters).
    Grafana,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Postgres => "postgres",
            Role::Proxy => "proxy",
            Role::Prometheus => "prometheus",
            Role::Grafana => "grafana",
        }
    }

    /// Order in which components are stopped: clients before what they talk to.
    pub fn stop_rank(self) -> u8 {
        match self {
            Role::Agent | Role::Prometheus | Role::Grafana => 0,
            Role::Proxy => 1,
            Role::Server => 2,
            Role::Postgres => 3,
        }
    }
}

/// The shape rules every cluster obeys, whoever wrote it: `ltops create` reports a violation
/// against its flag, [`ClusterState::check`] against the key of a hand-edited file. Returns the
/// key and what is wrong.
pub fn check_shape(
    agents: u32,
    app_count: u32,
    database: Database,
    proxy: Proxy,
) -> std::result::Result<(), (&'static str, String)> {
    if agents == 0 || agents > MAX_AGENTS {
        return Err((
            "agents",
            format!("must be between 1 and {MAX_AGENTS} (got {agents})"),
        ));
    }
    if app_count == 0 || app_count > MAX_APP_COUNT {
        return Err((
            "app_count",
            format!("must be between 1 and {MAX_APP_COUNT} (got {app_count})"),
        ));
    }
    if app_count > 1 && database == Database::Sqlite {
        return Err((
            "app_count",
            format!(
                "{app_count} server instances cannot share SQLite: use 1 instance, or PostgreSQL \
                 (--database postgres), which the instances share"
            ),
        ));
    }
    // A proxy in front of one instance is a valid topology to measure: no rule for `proxy`.
    let _ = proxy;
    Ok(())
}

/// One recorded cluster: its shape, what runs where, and the provider's own section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Layout version of this file ([`SCHEMA_VERSION`]).
    pub schema: u32,
    pub name: String,
    /// Random id, unique per created cluster: names remote directories (and cloud tags), so two
    /// clusters of the same name, one deleted and one new, never mix.
    pub cluster_id: String,
    pub agents: u32,
    pub database: Database,
    pub app_count: u32,
    #[serde(default)]
    pub proxy: Proxy,
    /// A Prometheus scrapes every server and agent (`ltops create --metrics`).
    #[serde(default)]
    pub metrics: bool,
    pub created_at_ms: i64,
    /// Shared secret of the agents' control API.
    pub control_token: String,
    /// Config given to `deploy --config`, copied into the cluster directory.
    #[serde(default)]
    pub workload: Option<PathBuf>,
    /// The binaries the components were last deployed from (on this machine).
    #[serde(default)]
    pub binaries: Option<Binaries>,
    /// When the last successful deploy finished (to notice rebuilt binaries).
    #[serde(default)]
    pub deployed_at_ms: Option<i64>,
    #[serde(default)]
    pub dataset: Option<DatasetState>,
    #[serde(default)]
    pub last_run: Option<LastRun>,
    /// What the cluster runs, provider-independent: role, index, address.
    #[serde(default)]
    pub components: Vec<Component>,
    /// Everything about *where* it runs; only the provider of `provider.type` reads it.
    pub provider: ProviderSection,
}

/// Where in `[provider]` one provider keeps its state: `Slot(None)` is the whole section; a
/// provider built on another keeps that one's state under a key (`aws` keeps its SSH state in
/// `[provider.ssh]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot(pub Option<&'static str>);

/// The provider-tagged section (`[provider]`, `type = "local" | "ssh" | …`). Its other keys
/// belong to that provider, which decodes them with [`ClusterState::provider_state`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderSection {
    #[serde(rename = "type")]
    pub kind: ClusterType,
    #[serde(flatten)]
    pub data: toml::Table,
}

/// The binaries the components were started from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binaries {
    pub server: PathBuf,
    pub agent: PathBuf,
}

/// The data set prepared on the cluster's server, keyed by a hash of the `[dataset]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetState {
    pub hash: String,
    pub prepared_at_ms: i64,
    pub teams: u32,
    pub users: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub run_id: String,
    pub finished_at_ms: i64,
    /// `pass`, `thresholds failed`, `regression`, `agent lost`, `interrupted`, …
    pub verdict: String,
    pub exit_code: i32,
    pub results_dir: PathBuf,
}

/// A component of the cluster, as every command may see it. How it runs (a process, a unit on
/// a host, a pod) is in the provider's section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub role: Role,
    pub index: u32,
    /// Main address (`host:port`): HTTP API for servers and the proxy, control API for agents
    /// (on the agent's own loopback for remote providers), `host:port` of the database.
    pub address: String,
    /// Prometheus metrics address, when separate from `address`.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Whether the last deploy started it (and no stop or delete since).
    #[serde(default)]
    pub started: bool,
}

impl Component {
    pub fn label(&self) -> String {
        format!("{}-{}", self.role.name(), self.index)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The address as a user would type it (`postgres://…` for the database).
    pub fn display_url(&self) -> String {
        match self.role {
            Role::Postgres => format!("postgres://{}", self.address),
            _ => self.url(),
        }
    }
}

impl Binaries {
    /// True when a binary changed on disk after `since_ms` (it was rebuilt).
    pub fn changed_since(&self, since_ms: i64) -> bool {
        [&self.server, &self.agent].iter().any(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|d| d.as_millis() as i64 > since_ms)
        })
    }
}

/// Rewrites a schema-1 definition (local only; `type` at the top; PID, start time, directory and
/// log on each component; `postgres` at the top) as schema 2, in place.
fn migrate_v1(table: &mut toml::Table) -> std::result::Result<(), String> {
    let kind = table
        .remove("type")
        .ok_or_else(|| "neither `schema` nor `type` is set".to_string())?;
    let mut provider = toml::Table::new();
    provider.insert("type".into(), kind);
    if let Some(pg) = table.remove("postgres") {
        provider.insert("postgres".into(), pg);
    }
    let mut processes = Vec::new();
    if let Some(toml::Value::Array(components)) = table.get_mut("components") {
        for c in components.iter_mut() {
            let toml::Value::Table(c) = c else {
                return Err("components: every entry must be a table".into());
            };
            let mut p = toml::Table::new();
            for key in ["role", "index"] {
                if let Some(v) = c.get(key) {
                    p.insert(key.into(), v.clone());
                }
            }
            let started = c.contains_key("pid");
            for key in ["pid", "start_ticks", "dir", "log"] {
                if let Some(v) = c.remove(key) {
                    p.insert(key.into(), v);
                }
            }
            c.insert("started".into(), toml::Value::Boolean(started));
            processes.push(toml::Value::Table(p));
        }
    }
    provider.insert("processes".into(), toml::Value::Array(processes));
    let id_seed = format!(
        "{}{}",
        table.get("name").map(|v| v.to_string()).unwrap_or_default(),
        table
            .get("created_at_ms")
            .map(|v| v.to_string())
            .unwrap_or_default()
    );
    table.insert(
        "cluster_id".into(),
        toml::Value::String(stable_hash(id_seed.as_bytes())[..8].to_string()),
    );
    table.insert("provider".into(), toml::Value::Table(provider));
    table.insert(
        "schema".into(),
        toml::Value::Integer(i64::from(SCHEMA_VERSION)),
    );
    Ok(())
}

impl ClusterState {
    /// Reads a definition. A file that is not one (edited by hand, damaged) is bad input named
    /// `file:line: key: problem`; other commands' checks come from [`ClusterState::check`]. A
    /// schema-1 file is migrated (and written as schema 2 by the next command that saves); a
    /// file of a newer schema is refused, never guessed at.
    pub fn read(path: &Path) -> Result<Self> {
        let invalid = |line: Option<usize>, key: &str, msg: &str| {
            let at = match line {
                Some(l) => format!("{}:{l}", path.display()),
                None => path.display().to_string(),
            };
            Error::Usage(format!(
                "{at}: {key}: {msg}\n{HAND_EDIT_HINT}",
                HAND_EDIT_HINT = hand_edit_hint(path)
            ))
        };
        let bytes = std::fs::read(path).context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| invalid(None, "(encoding)", &format!("not UTF-8 text ({e})")))?;
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| loadtest_contract::toml_span::line_at(&text, s.start));
            invalid(line, "(syntax)", e.message())
        })?;
        match table.get("schema") {
            None | Some(toml::Value::Integer(1)) => {
                table.remove("schema");
                migrate_v1(&mut table).map_err(|m| invalid(None, "(top level)", &m))?
            }
            Some(toml::Value::Integer(v)) if *v == i64::from(SCHEMA_VERSION) => {}
            Some(toml::Value::Integer(v)) if *v > i64::from(SCHEMA_VERSION) => {
                return Err(Error::Usage(format!(
                    "{}: schema: version {v} was written by a newer ltops (this one reads versions 1 to {SCHEMA_VERSION}); \
                     use that ltops for this cluster, or upgrade this one",
                    path.display()
                )))
            }
            Some(other) => {
                return Err(invalid(
                    loadtest_contract::toml_span::key_line(&text, "schema"),
                    "schema",
                    &format!("{other} is not a layout version this ltops knows (1 to {SCHEMA_VERSION})"),
                ))
            }
        }
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let line = loadtest_contract::toml_span::nearest_line(&text, &key);
            let key = if key == "." {
                "(top level)".into()
            } else {
                key
            };
            invalid(line, &key, e.inner().message())
        })
    }

    pub fn kind(&self) -> ClusterType {
        self.provider.kind
    }

    /// Decodes the provider's own section; `file` names the definition in errors.
    pub fn provider_state<T: serde::de::DeserializeOwned>(&self, file: &Path) -> Result<T> {
        serde_path_to_error::deserialize(toml::Value::Table(self.provider.data.clone())).map_err(
            |e| {
                let key = format!("provider.{}", e.path());
                let text = std::fs::read_to_string(file).unwrap_or_default();
                Error::Usage(format!(
                    "{}: {key}: {}\n{}",
                    file_line(file, &text, &key),
                    e.inner().message(),
                    hand_edit_hint(file)
                ))
            },
        )
    }

    /// A provider's state kept under one key of `[provider]` (`Slot(Some("ssh"))`: the SSH
    /// state of an `aws` cluster, whose provider builds on the SSH one), or the whole section.
    pub fn provider_state_in<T: serde::de::DeserializeOwned>(
        &self,
        slot: Slot,
        file: &Path,
    ) -> Result<T> {
        let Some(key) = slot.0 else {
            return self.provider_state(file);
        };
        let table = match self.provider.data.get(key) {
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => {
                return Err(Error::Usage(format!(
                    "{}: provider.{key}: not a table\n{}",
                    file.display(),
                    hand_edit_hint(file)
                )))
            }
            None => toml::Table::new(),
        };
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = format!("provider.{key}.{}", e.path());
            let text = std::fs::read_to_string(file).unwrap_or_default();
            Error::Usage(format!(
                "{}: {key}: {}\n{}",
                file_line(file, &text, &key),
                e.inner().message(),
                hand_edit_hint(file)
            ))
        })
    }

    /// Whether the slot holds anything yet.
    pub fn provider_slot_is_empty(&self, slot: Slot) -> bool {
        match slot.0 {
            None => self.provider.data.is_empty(),
            Some(key) => !self.provider.data.contains_key(key),
        }
    }

    /// Replaces a provider's state in its slot.
    pub fn set_provider_state_in<T: Serialize>(&mut self, slot: Slot, value: &T) -> Result<()> {
        let Some(key) = slot.0 else {
            return self.set_provider_state(value);
        };
        let encoded = toml::Table::try_from(value)
            .map_err(|e| Error::Runtime(format!("cannot encode the provider's state: {e}")))?;
        self.provider
            .data
            .insert(key.to_string(), toml::Value::Table(encoded));
        Ok(())
    }

    /// Replaces the provider's own section (keeping `type`).
    pub fn set_provider_state<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let encoded = toml::Table::try_from(value)
            .map_err(|e| Error::Runtime(format!("cannot encode the provider's state: {e}")))?;
        self.provider.data = encoded;
        self.provider.data.remove("type");
        Ok(())
    }

    /// Checks what the TOML types cannot: the same rules as `ltops create`, so a hand-edited
    /// definition cannot make `deploy` start 100,000 agents or two servers on one SQLite file.
    /// `dir_name` is the cluster's directory, which the recorded name must match.
    pub fn check(&self, path: &Path, dir_name: &str) -> Result<()> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let bad = |key: &str, msg: String| {
            Err(Error::Usage(format!(
                "{}: {key}: {msg}\n{}",
                file_line(path, &text, key),
                hand_edit_hint(path)
            )))
        };
        if self.name != dir_name {
            return bad(
                "name",
                format!("{:?} does not match the directory {dir_name:?}", self.name),
            );
        }
        if let Err((key, msg)) = check_shape(self.agents, self.app_count, self.database, self.proxy)
        {
            return bad(key, msg);
        }
        if self.control_token.len() < 32 {
            return bad(
                "control_token",
                "must be at least 32 characters (ltops writes 64 random hex digits)".into(),
            );
        }
        if self.cluster_id.is_empty() || !self.cluster_id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return bad(
                "cluster_id",
                format!("{:?} must be letters and digits", self.cluster_id),
            );
        }
        Ok(())
    }

    pub fn components(&self, role: Role) -> impl Iterator<Item = &Component> {
        self.components.iter().filter(move |c| c.role == role)
    }

    pub fn component(&self, role: Role, index: u32) -> Option<&Component> {
        self.components
            .iter()
            .find(|c| c.role == role && c.index == index)
    }

    pub fn component_mut(&mut self, role: Role, index: u32) -> Option<&mut Component> {
        self.components
            .iter_mut()
            .find(|c| c.role == role && c.index == index)
    }

    /// Replaces (or adds) the component with the same role and index.
    pub fn upsert(&mut self, c: Component) {
        match self.component_mut(c.role, c.index) {
            Some(slot) => *slot = c,
            None => {
                self.components.push(c);
                self.components.sort_by_key(|c| (c.role, c.index));
            }
        }
    }

    /// A component that a command names (`ltops ssh server -i 1`), or an error listing the ones
    /// there are.
    pub fn find(&self, role: Role, index: u32) -> Result<&Component> {
        self.component(role, index).ok_or_else(|| {
            let have: Vec<String> = self.components(role).map(|c| c.index.to_string()).collect();
            let hint = if have.is_empty() {
                format!(
                    "the cluster has no {} component; run `ltops deploy -c {}` first",
                    role.name(),
                    self.name
                )
            } else {
                format!("choose one of -i {}", have.join(", "))
            };
            Error::Usage(format!(
                "cluster {:?} has no {} {index}; {hint}",
                self.name,
                role.name()
            ))
        })
    }
}

/// What to do about a damaged `cluster.toml`.
/// `FILE:LINE` where `key` (a serde path such as `provider.processes[1].pid`) is written in
/// the state file at `path`, or just `FILE` when it is not written there: for providers'
/// messages about their (hand-editable) section.
pub fn at_key(path: &Path, key: &str) -> String {
    file_line(
        path,
        &std::fs::read_to_string(path).unwrap_or_default(),
        key,
    )
}

/// `FILE:LINE` where `key` (a serde path) is written in `text` (the file's contents), or just
/// `FILE` when it is not written there.
fn file_line(path: &Path, text: &str, key: &str) -> String {
    match loadtest_contract::toml_span::nearest_line(text, key) {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

fn hand_edit_hint(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("."));
    format!(
        "Fix that file by hand, or stop the cluster's processes and remove {} to start over \
         (then `ltops create` it again).",
        dir.display()
    )
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory with `mode`,
/// synced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.context(|| format!("writing {}", path.display()))
}

/// Creates a directory (and parents) with mode 0700 for the last component.
pub fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .context(|| format!("setting permissions of {}", path.display()))
}

/// A random hex token of 32 bytes.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 64 bit: a stable hash (unlike `DefaultHasher`) for keying the prepared data set.
pub fn stable_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(name: &str) -> ClusterState {
        let mut processes = toml::Table::new();
        processes.insert("processes".into(), toml::Value::Array(Vec::new()));
        ClusterState {
            schema: SCHEMA_VERSION,
            name: name.into(),
            cluster_id: "ab12cd34".into(),
            agents: 2,
            database: Database::Sqlite,
            app_count: 1,
            proxy: Proxy::None,
            metrics: false,
            created_at_ms: 1,
            control_token: random_token(),
            workload: None,
            deployed_at_ms: Some(5),
            binaries: Some(Binaries {
                server: "/x/chat-server".into(),
                agent: "/x/loadtest-agent".into(),
            }),
            dataset: Some(DatasetState {
                hash: stable_hash(b"x"),
                prepared_at_ms: 2,
                teams: 1,
                users: 300,
            }),
            last_run: Some(LastRun {
                run_id: "r".into(),
                finished_at_ms: 3,
                verdict: "pass".into(),
                exit_code: 0,
                results_dir: "/r".into(),
            }),
            components: vec![Component {
                role: Role::Agent,
                index: 0,
                address: "127.0.0.1:1".into(),
                metrics_address: None,
                started: true,
            }],
            provider: ProviderSection {
                kind: ClusterType::Local,
                data: processes,
            },
        }
    }

    /// A definition as the first version of `ltops` wrote it (no `schema`).
    const V1: &str = r#"name = "old"
type = "local"
agents = 2
database = "postgres"
app_count = 1
created_at_ms = 1700000000000
control_token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

[binaries]
server = "/x/chat-server"
agent = "/x/loadtest-agent"

[postgres]
bin_dir = "/usr/lib/postgresql/15/bin"
data_dir = "/tmp/pg/data"
port = 5999
user = "ltops"
password = "secret"
database = "chat"

[[components]]
role = "postgres"
index = 0
address = "127.0.0.1:5999"
pid = 4242
start_ticks = 77
dir = "/tmp/pg/data"
log = "/tmp/pg/postgres.log"

[[components]]
role = "agent"
index = 0
address = "127.0.0.1:4000"
dir = "/c/agent-0"
log = "/c/logs/agent-0.log"
"#;

    #[test]
    fn a_first_version_definition_is_migrated_not_misread() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let path = home.cluster_dir("old").join(CLUSTER_FILE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, V1).unwrap();
        let st = home.load_checked("old").unwrap();
        assert_eq!(st.schema, SCHEMA_VERSION);
        assert_eq!(st.kind(), ClusterType::Local);
        assert_eq!(st.database, Database::Postgres);
        assert_eq!(
            st.binaries.as_ref().unwrap().agent,
            PathBuf::from("/x/loadtest-agent")
        );
        assert!(st.component(Role::Postgres, 0).unwrap().started);
        assert!(!st.component(Role::Agent, 0).unwrap().started);
        // The process details moved into the local provider's section, untouched.
        let pg = st.provider.data["postgres"].as_table().unwrap();
        assert_eq!(pg["password"].as_str(), Some("secret"));
        let procs = st.provider.data["processes"].as_array().unwrap();
        assert_eq!(procs[0]["pid"].as_integer(), Some(4242));
        assert_eq!(procs[0]["start_ticks"].as_integer(), Some(77));
        assert_eq!(procs[1].get("pid"), None);
        // Saved as schema 2, read back the same.
        home.save(&st).unwrap();
        assert_eq!(home.load("old").unwrap(), st);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("schema = 2"));
    }

    #[test]
    fn a_newer_or_unknown_schema_is_refused_with_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        home.save(&sample("c1")).unwrap();
        let path = home.cluster_dir("c1").join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("schema = 2", "schema = 3")).unwrap();
        let e = home.load("c1").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(e.to_string().contains("newer ltops"), "{e}");
        std::fs::write(&path, text.replace("schema = 2", "schema = \"two\"")).unwrap();
        let e = home.load("c1").unwrap_err().to_string();
        assert!(e.contains(":1: schema:"), "{e}");
        std::fs::write(&path, text.replace("type = \"local\"", "type = \"moon\"")).unwrap();
        let e = home.load("c1").unwrap_err().to_string();
        assert!(e.contains("provider.type") || e.contains("provider"), "{e}");
    }

    #[test]
    fn state_round_trips_with_private_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let s = sample("c1");
        home.save(&s).unwrap();
        assert_eq!(home.load("c1").unwrap(), s);
        let mode = std::fs::metadata(home.cluster_dir("c1").join(CLUSTER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(home.cluster_names().unwrap(), vec!["c1".to_string()]);
    }

    #[test]
    fn unknown_cluster_names_the_known_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        home.save(&sample("alpha")).unwrap();
        let e = home.load("beta").unwrap_err().to_string();
        assert!(e.contains("\"beta\"") && e.contains("alpha"), "{e}");
        assert!(home.load("../etc").is_err());
    }

    #[test]
    fn damaged_definition_is_bad_input_naming_file_line_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let good = sample("c1");
        home.save(&good).unwrap();
        let path = home.cluster_dir("c1").join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let cases = [
            (
                text.replace("agents = 2", "agents = \"two\""),
                ": agents: invalid type",
            ),
            (
                text.replace("agents = 2\n", ""),
                "(top level): missing field `agents`",
            ),
            (text.replace("agents = 2", "agents = "), ": (syntax)"),
        ];
        for (bad, want) in cases {
            std::fs::write(&path, bad).unwrap();
            let e = home.load("c1").unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("cluster.toml") && msg.contains(want), "{msg}");
            assert!(msg.contains("Fix that file"), "{msg}");
        }
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(
            home.load("c1").unwrap_err().exit_code(),
            crate::error::exit::USAGE
        );

        // Parseable but impossible: loads (status, delete still work), but deploy refuses.
        type Edit = fn(&mut ClusterState);
        let edits: [(&str, Edit); 6] = [
            ("agents", |s| s.agents = 0),
            ("agents", |s| s.agents = 100_000),
            ("app_count", |s| s.app_count = 0),
            ("app_count", |s| s.app_count = 3),
            ("name", |s| s.name = "other".into()),
            ("control_token", |s| s.control_token.clear()),
        ];
        for (key, edit) in edits {
            let mut s = good.clone();
            edit(&mut s);
            let text = toml::to_string(&s).unwrap();
            std::fs::write(&path, &text).unwrap();
            assert!(home.load("c1").is_ok(), "{key}");
            let e = home.load_checked("c1").unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{e}");
            assert!(e.to_string().contains(&format!(": {key}: ")), "{e}");
            let line = text
                .lines()
                .position(|l| l.starts_with(&format!("{key} =")))
                .unwrap()
                + 1;
            assert!(
                e.to_string()
                    .contains(&format!("cluster.toml:{line}: {key}: ")),
                "{e}"
            );
        }

        // A provider key is found in its own table, whatever other tables hold the same name.
        let mut s = good.clone();
        s.provider.data = toml::toml! {
            type = "local"
            [[processes]]
            role = "server"
            index = 0
            dir = "/c/server-0"
            log = "/c/l"
            [[processes]]
            role = "agent"
            index = "one"
            dir = "/c/agent-0"
            log = "/c/l"
        };
        let text = toml::to_string(&s).unwrap();
        std::fs::write(&path, &text).unwrap();
        let st = home.load("c1").unwrap();
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Proc {
            role: String,
            index: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Section {
            processes: Vec<Proc>,
        }
        let e = st.provider_state::<Section>(&path).unwrap_err().to_string();
        let line = text.lines().position(|l| l.contains("\"one\"")).unwrap() + 1;
        assert!(
            e.contains(&format!(
                "cluster.toml:{line}: provider.processes[1].index: "
            )),
            "{e}\n{text}"
        );
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(b""), "cbf29ce484222325");
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
    }
}
