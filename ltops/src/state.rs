//! The state directory: where clusters are recorded, and how their definition is read and
//! written.
//!
//! Layout (`$LTOPS_HOME`, else `~/.ltops/`):
//!
//! ```text
//! <home>/clusters/<name>/cluster.toml    definition + live state (mode 0600: token, db password)
//!                       /lock            held by the command working on the cluster
//!                       /logs/<role>-<i>.log
//!                       /results/<run-id>/agent-<i>.jsonl, workload.toml
//!                       /<role>-<i>/     a component's working directory
//!                       /workload.toml   the config given to `deploy --config`
//! ```
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

/// Which provider runs the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterType {
    /// Processes on this machine.
    Local,
    /// Pods in an existing Kubernetes cluster (not yet supported).
    Kubernetes,
    /// EC2 instances (not yet supported).
    Aws,
}

impl ClusterType {
    pub fn name(self) -> &'static str {
        match self {
            ClusterType::Local => "local",
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
    /// A private PostgreSQL started in the cluster's directory.
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
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Postgres => "postgres",
        }
    }
}

/// One recorded cluster: its definition plus what is running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ClusterType,
    pub agents: u32,
    pub database: Database,
    pub app_count: u32,
    pub created_at_ms: i64,
    /// Shared secret of the agents' control API.
    pub control_token: String,
    /// Config given to `deploy --config`, copied into the cluster directory.
    #[serde(default)]
    pub workload: Option<PathBuf>,
    #[serde(default)]
    pub binaries: Option<Binaries>,
    /// When the last successful deploy finished (to notice rebuilt binaries).
    #[serde(default)]
    pub deployed_at_ms: Option<i64>,
    #[serde(default)]
    pub postgres: Option<PostgresState>,
    #[serde(default)]
    pub dataset: Option<DatasetState>,
    #[serde(default)]
    pub last_run: Option<LastRun>,
    #[serde(default)]
    pub components: Vec<Component>,
}

/// The binaries the components were started from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binaries {
    pub server: PathBuf,
    pub agent: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresState {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl PostgresState {
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            self.user, self.password, self.port, self.database
        )
    }
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

/// A process the cluster runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub role: Role,
    pub index: u32,
    /// Main address (`host:port`): HTTP API for servers, control API for agents.
    pub address: String,
    /// Prometheus metrics address, when separate from `address`.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Process id (the leader of its own process group); absent when stopped.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Start time of the process (`/proc/PID/stat` field 22), to detect PID reuse.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    pub dir: PathBuf,
    pub log: PathBuf,
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

impl ClusterState {
    /// Reads a definition. A file that is not one (edited by hand, damaged) is bad input named
    /// `file:line: key: problem`; other commands' checks come from [`ClusterState::check`].
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
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            invalid(line, "(syntax)", e.message())
        })?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let key_line = text
                .lines()
                .position(|l| {
                    let t = l.trim_start();
                    t.starts_with(key.as_str()) && t[key.len()..].trim_start().starts_with('=')
                })
                .map(|i| i + 1);
            let key = if key == "." {
                "(top level)".into()
            } else {
                key
            };
            invalid(key_line, &key, e.inner().message())
        })
    }

    /// Checks what the TOML types cannot: the same rules as `ltops create`, so a hand-edited
    /// definition cannot make `deploy` start 100,000 agents or two servers on one SQLite file.
    /// `dir_name` is the cluster's directory, which the recorded name must match.
    pub fn check(&self, path: &Path, dir_name: &str) -> Result<()> {
        let bad = |key: &str, msg: String| {
            Err(Error::Usage(format!(
                "{}: {key}: {msg}\n{}",
                path.display(),
                hand_edit_hint(path)
            )))
        };
        if self.name != dir_name {
            return bad(
                "name",
                format!("{:?} does not match the directory {dir_name:?}", self.name),
            );
        }
        if self.agents == 0 || self.agents > crate::commands::create::MAX_AGENTS {
            return bad(
                "agents",
                format!(
                    "must be between 1 and {} (got {})",
                    crate::commands::create::MAX_AGENTS,
                    self.agents
                ),
            );
        }
        if self.app_count == 0 || self.app_count > crate::commands::create::MAX_APP_COUNT {
            return bad(
                "app_count",
                format!(
                    "must be between 1 and {} (got {})",
                    crate::commands::create::MAX_APP_COUNT,
                    self.app_count
                ),
            );
        }
        if self.app_count > 1 && self.database == Database::Sqlite {
            return bad(
                "app_count",
                format!(
                    "{} server instances cannot share SQLite; use 1 or database = \"postgres\"",
                    self.app_count
                ),
            );
        }
        if self.control_token.len() < 32 {
            return bad(
                "control_token",
                "must be at least 32 characters (ltops writes 64 random hex digits)".into(),
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
}

/// What to do about a damaged `cluster.toml`.
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
        ClusterState {
            name: name.into(),
            kind: ClusterType::Local,
            agents: 2,
            database: Database::Sqlite,
            app_count: 1,
            created_at_ms: 1,
            control_token: random_token(),
            workload: None,
            deployed_at_ms: Some(5),
            binaries: Some(Binaries {
                server: "/x/chat-server".into(),
                agent: "/x/loadtest-agent".into(),
            }),
            postgres: None,
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
                pid: Some(42),
                start_ticks: Some(7),
                dir: "/d".into(),
                log: "/l".into(),
            }],
        }
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
                ":3: agents: invalid type",
            ),
            (
                text.replace("agents = 2\n", ""),
                "(top level): missing field `agents`",
            ),
            (text.replace("type = \"local\"", "type = "), ":2: (syntax)"),
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
            std::fs::write(&path, text).unwrap();
            assert!(home.load("c1").is_ok(), "{key}");
            let e = home.load_checked("c1").unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{e}");
            assert!(e.to_string().contains(&format!(": {key}: ")), "{e}");
        }
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash(b""), "cbf29ce484222325");
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
    }
}
