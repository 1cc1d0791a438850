//! The provider boundary: everything that depends on *where* a cluster runs.
//!
//! A [`Provider`] resolves a new cluster's shape and provisions it, deploys [`Artifacts`] to it
//! (the local provider runs binaries in place; the SSH provider uploads them, checksummed), reports
//! each component's health, opens a shell or shows logs in a component, salvages what a lost agent
//! flushed, and deletes everything it started. For a load test it hands out [`Endpoints`]: the
//! agents' control endpoints and the server URL, with a guard that keeps whatever makes them
//! reachable (SSH port forwards, later port-forwards to pods) open while the coordinator uses them.
//! The coordination code (`crate::coordinator`) sees nothing else and never asks which provider
//! it is talking to.
//!
//! Each provider keeps its own state in the `[provider]` section of `cluster.toml`
//! ([`ClusterState::provider_state`]); only it knows what a PID, a host or a pod is. Everything
//! here is async (one tokio runtime in `ltops`) and fallible.
//!
//! `local` (processes on this machine), `ssh` (hosts you already have), `aws` (EC2 instances
//! it provisions, then driven through the SSH provider) and `kubernetes` (pods in an existing
//! cluster, through its API server) are the providers.

pub mod aws;
pub mod kubernetes;
pub mod local;
pub mod postgres;
pub mod prometheus;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use async_trait::async_trait;

use crate::agent_client::AgentEndpoint;
use crate::error::{Error, IoContext, Result};
use crate::state::{Binaries, ClusterState, ClusterType, Component, Database, Home, Proxy, Role};

/// Health of one component as `status` shows it.
#[derive(Clone, Debug)]
pub struct ComponentHealth {
    pub component: Component,
    pub health: Health,
    /// Where and how it runs, in the provider's words (`pid 4242`, `loadtest@10.0.0.2`).
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Running and answering its health check.
    Healthy,
    /// Running but the health check failed (why).
    Unhealthy(String),
    /// Not running.
    Stopped,
}

impl Health {
    pub fn label(&self) -> String {
        match self {
            Health::Healthy => "healthy".into(),
            Health::Unhealthy(why) => format!("unhealthy: {why}"),
            Health::Stopped => "not running".into(),
        }
    }
}

/// What `ssh` should run in a component.
#[derive(Clone, Debug)]
pub enum ShellCommand {
    /// An interactive shell.
    Interactive,
    /// A command line, run by `sh -c`.
    Run(Vec<String>),
}

/// What `ltops create` asks for; `None` leaves the choice to the provider (the SSH provider
/// derives defaults from the inventory).
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub name: String,
    pub agents: Option<u32>,
    pub app_count: Option<u32>,
    pub database: Option<Database>,
    pub proxy: Option<Proxy>,
    /// `--inventory`: the hosts of an `ssh` cluster.
    pub inventory: Option<PathBuf>,
    /// `--inventory-from-terraform`: a Terraform directory whose `ltops_inventory` output lists
    /// the hosts of an `ssh` cluster.
    pub inventory_from_terraform: Option<PathBuf>,
    /// The `aws` provider's flags.
    pub aws: aws::AwsOptions,
    /// The `kubernetes` provider's flags.
    pub kube: kubernetes::KubeOptions,
    /// `--metrics` (`Some(true)`), `--no-metrics` (`Some(false)`), or the provider's default.
    pub metrics: Option<bool>,
}

/// A cluster's shape, as resolved by its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub agents: u32,
    pub app_count: u32,
    pub database: Database,
    pub proxy: Proxy,
    /// A Prometheus scrapes every server and agent.
    pub metrics: bool,
}

impl Shape {
    /// The shape a recorded cluster was created with.
    pub fn of(st: &ClusterState) -> Shape {
        Shape {
            agents: st.agents,
            app_count: st.app_count,
            database: st.database,
            proxy: st.proxy,
            metrics: st.metrics,
        }
    }
}

/// One binary to deploy, built on this machine. Its SHA-256 is computed when first asked for
/// (the local provider never needs it).
#[derive(Debug)]
pub struct Artifact {
    pub path: PathBuf,
    sha256: OnceLock<String>,
}

impl Artifact {
    pub fn new(path: PathBuf) -> Self {
        Artifact {
            path,
            sha256: OnceLock::new(),
        }
    }

    /// Lowercase hex SHA-256 of the file.
    pub fn sha256(&self) -> Result<&str> {
        if let Some(s) = self.sha256.get() {
            return Ok(s);
        }
        let digest = sha256_file(&self.path)?;
        Ok(self.sha256.get_or_init(|| digest))
    }
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What a deploy installs: the server and the agent.
#[derive(Debug)]
pub struct Artifacts {
    pub server: Artifact,
    pub agent: Artifact,
}

impl Artifacts {
    pub fn from_binaries(b: &Binaries) -> Self {
        Artifacts {
            server: Artifact::new(b.server.clone()),
            agent: Artifact::new(b.agent.clone()),
        }
    }

    pub fn binaries(&self) -> Binaries {
        Binaries {
            server: self.server.path.clone(),
            agent: self.agent.path.clone(),
        }
    }
}

/// The agents' control endpoints and the server URL for one load test; dropping it closes what
/// made them reachable.
pub struct Endpoints {
    pub agents: Vec<AgentEndpoint>,
    /// The URL the report names as the target (each agent's own is in its endpoint).
    pub server_url: String,
    /// Each server instance's `/metrics` URL, reachable from here (`server-N`, URL), when the
    /// provider can offer them; the coordinator samples them into the results.
    pub server_metrics: Vec<(String, String)>,
    _guard: Box<dyn Send + Sync>,
}

impl Endpoints {
    pub fn new(
        agents: Vec<AgentEndpoint>,
        server_url: String,
        guard: impl Send + Sync + 'static,
    ) -> Self {
        Endpoints {
            agents,
            server_url,
            server_metrics: Vec::new(),
            _guard: Box::new(guard),
        }
    }

    /// Adds the server instances' metrics URLs.
    pub fn with_server_metrics(mut self, urls: Vec<(String, String)>) -> Self {
        self.server_metrics = urls;
        self
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("agents", &self.agents)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

/// What could be learnt about an agent the coordinator lost.
#[derive(Clone, Debug)]
pub struct LostAgent {
    /// Whether its process (unit, pod) still runs.
    pub alive: bool,
    /// Its last log lines.
    pub log_tail: String,
    /// Whether a results file it flushed was copied to the destination.
    pub saved: bool,
}

/// Persists the cluster's state; providers call it after every change that must survive a
/// crash (a process started, a file uploaded).
pub type Save<'a> = dyn Fn(&ClusterState) -> Result<()> + Send + Sync + 'a;

/// Options of `delete`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteOptions {
    /// Forget hosts (instances…) that cannot be reached instead of failing; what ran there is
    /// reported as possibly left behind.
    pub forget_unreachable: bool,
}

/// The operations every cluster type provides.
#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ClusterType;

    /// Resolves the shape of a new cluster (defaults that depend on where it runs) and checks
    /// the request against what this provider can do, before anything is created.
    fn shape(&self, req: &CreateRequest) -> Result<Shape>;

    /// Provisions what a new cluster needs before anything is deployed and fills in the
    /// provider's section. `state` already holds the shape, the id and the token. A provider
    /// whose resources cost money records each one with `save` as soon as it exists.
    async fn create(
        &self,
        req: &CreateRequest,
        state: &mut ClusterState,
        save: &Save<'_>,
    ) -> Result<()>;

    /// Whether `state` records a create that did not finish and can be resumed by running the
    /// same `create` again (a failed create is then kept, not undone, so `delete` can also
    /// clean up what it made). Providers whose create is cheap to redo answer `false`.
    fn pending_create(&self, _state: &ClusterState) -> bool {
        false
    }

    /// Whether `deploy` installs the `chat-server` and `loadtest-agent` binaries built here
    /// (a kubernetes cluster runs the product image instead).
    fn uses_binaries(&self) -> bool {
        true
    }

    /// The objects `deploy` would apply, as YAML (`deploy --dry-run -o yaml`); only providers
    /// that deploy manifests have them.
    async fn manifests(&self, state: &ClusterState) -> Result<String> {
        Err(Error::Usage(format!(
            "`deploy --dry-run` prints Kubernetes manifests; {:?} is a {} cluster, which has none",
            state.name,
            self.kind().name()
        )))
    }

    /// Extra lines for `status` below the components (instances, cost).
    async fn summary(&self, _state: &ClusterState) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Deletes what a cluster whose state directory is gone left behind, found by what the
    /// provider put on it (cloud tags). `req` carries the provider's flags (region…).
    async fn delete_lost(&self, name: &str, _req: &CreateRequest) -> Result<()> {
        Err(Error::Usage(format!(
            "no cluster named {name:?} is recorded, and a {} cluster leaves nothing to find without its state",
            self.kind().name()
        )))
    }

    /// Starts (or brings up to date) every component from `artifacts`; on failure stops
    /// whatever this call started and explains why (naming the component and its last log
    /// lines). Calls `save` after each change.
    async fn deploy(
        &self,
        state: &mut ClusterState,
        artifacts: &Artifacts,
        save: &Save<'_>,
    ) -> Result<()>;

    /// Health of each component.
    async fn status(&self, state: &ClusterState) -> Result<Vec<ComponentHealth>>;

    /// The agents' control endpoints (in agent order) and the server URL, reachable from here
    /// for as long as the result lives. Fails when an agent or server is not running.
    async fn endpoints(&self, state: &ClusterState) -> Result<Endpoints>;

    /// After the coordinator lost agent `index`: whether it still runs, its last log lines, and
    /// the results it flushed for `run_id`, copied to `dest`.
    async fn lost_agent(
        &self,
        state: &ClusterState,
        index: u32,
        run_id: &str,
        dest: &Path,
    ) -> Result<LostAgent>;

    /// Runs a shell or command in a component's environment; returns its exit code.
    async fn shell(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        cmd: &ShellCommand,
    ) -> Result<i32>;

    /// Prints a component's log (the last `lines`, or all), following it if asked.
    async fn logs(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()>;

    /// Stops every component and keeps everything else: the state, the data (database, volumes),
    /// the results and, where the provider rents machines, the machines. `deploy` starts the
    /// components again. Returns lines for the user about what keeps running (or billing).
    async fn stop(&self, state: &mut ClusterState, save: &Save<'_>) -> Result<Vec<String>>;

    /// Stops everything the cluster started and removes what it installed, wherever it is.
    /// The local state directory itself is removed by the caller once this succeeds.
    async fn delete(
        &self,
        state: &mut ClusterState,
        opts: DeleteOptions,
        save: &Save<'_>,
    ) -> Result<()>;
}

/// The provider for a cluster type.
pub fn for_type(kind: ClusterType, home: &Home) -> Result<Box<dyn Provider>> {
    match kind {
        ClusterType::Local => Ok(Box::new(local::LocalProvider::new(home.clone()))),
        ClusterType::Ssh => Ok(Box::new(ssh::SshProvider::new(home.clone()))),
        ClusterType::Aws => Ok(Box::new(aws::AwsProvider::new(home.clone()))),
        ClusterType::Kubernetes => Ok(Box::new(kubernetes::KubeProvider::new(home.clone()))),
    }
}

/// Where to find the server and agent binaries; like [`resolve_binaries`], but when `ltops` was
/// started by `cargo run` and the default binaries are missing, builds them first with the same
/// cargo and profile (so `cargo run --release -p ltops -- loadtest --quick` works from a fresh
/// clone).
pub fn resolve_or_build_binaries(
    server: Option<PathBuf>,
    agent: Option<PathBuf>,
) -> Result<Binaries> {
    match resolve_binaries(server.clone(), agent.clone()) {
        Err(Error::MissingBinary { .. }) if server.is_none() || agent.is_none() => {
            if let Some(()) = build_with_cargo()? {
                return resolve_binaries(server, agent);
            }
            resolve_binaries(server, agent)
        }
        other => other,
    }
}

/// `Some(())` when it built, `None` when not started by cargo.
fn build_with_cargo() -> Result<Option<()>> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Ok(None);
    };
    let Some(profile) = std::env::current_exe().ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }) else {
        return Ok(None);
    };
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(PathBuf::from(manifest_dir).join("Cargo.toml"))
        .args(["-p", "chat-server", "-p", "loadtest-agent", "--bins"]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building chat-server and loadtest-agent ({profile}), once…");
    let status = cmd
        .status()
        .map_err(|e| Error::io("running cargo build", e))?;
    if status.success() {
        Ok(Some(()))
    } else {
        Err(Error::Runtime(
            "building chat-server and loadtest-agent failed (see above); fix the build, or run `cargo build --release --workspace`".into(),
        ))
    }
}

/// Where to find the server and agent binaries.
pub fn resolve_binaries(server: Option<PathBuf>, agent: Option<PathBuf>) -> Result<Binaries> {
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let pick = |given: Option<PathBuf>, name: &'static str, flag: &str| -> Result<PathBuf> {
        let (path, hint) = match (given, &here) {
            (Some(p), _) => (
                p,
                format!("pass the path of a built `{name}` to {flag}"),
            ),
            (None, Some(dir)) => (
                dir.join(name),
                format!(
                    "ltops looks next to its own executable; build it with `cargo build --release --workspace` \
                     (or `cargo build --workspace` for debug builds), or pass its path with {flag}"
                ),
            ),
            (None, None) => (
                PathBuf::from(name),
                format!("pass its path with {flag}"),
            ),
        };
        let executable = std::fs::metadata(&path).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        });
        if executable {
            Ok(std::fs::canonicalize(&path).unwrap_or(path))
        } else if path.is_file() {
            Err(Error::Usage(format!(
                "{} is not executable, so it cannot be the `{name}` to start; {hint}",
                path.display()
            )))
        } else {
            Err(Error::MissingBinary {
                what: name,
                path,
                hint,
            })
        }
    };
    Ok(Binaries {
        server: pick(server, "chat-server", "--server")?,
        agent: pick(agent, "loadtest-agent", "--agent")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_binary_that_is_not_executable_is_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("chat-server");
        std::fs::write(&plain, b"not a program").unwrap();
        let e = resolve_binaries(Some(plain.clone()), Some(plain)).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(e.to_string().contains("not executable"), "{e}");
        let e = resolve_binaries(Some(dir.path().join("nope")), None).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
    }
}
