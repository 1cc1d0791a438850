//! The provider boundary: everything that depends on *where* a cluster runs.
//!
//! A [`Provider`] creates a cluster's infrastructure, starts and stops its components (server
//! instances, agents, a database), reports their health, opens a shell or shows logs in them, runs
//! the data-set setup from an agent's machine, and deletes it all. It hands the coordinator the
//! agents' control endpoints ([`AgentEndpoint`]: URL + token + the server URL their users should
//! use) and nothing else — the coordination code (`crate::coordinator`) never asks which provider
//! it is talking to.
//!
//! `local` (processes on this machine) is implemented; `kubernetes` and `aws` are accepted names
//! that answer "not yet supported" so the command line is stable when they arrive.

pub mod local;
pub mod postgres;

use std::path::{Path, PathBuf};

use crate::agent_client::AgentEndpoint;
use crate::error::{Error, Result};
use crate::state::{Binaries, ClusterState, ClusterType, Component, Home, Role};

/// Health of one component as `status` shows it.
#[derive(Clone, Debug)]
pub struct ComponentHealth {
    pub component: Component,
    pub health: Health,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Process alive and answering its health check.
    Healthy,
    /// Process alive but the health check failed (why).
    Unhealthy(String),
    /// No process.
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

/// The operations every cluster type provides.
pub trait Provider {
    fn kind(&self) -> ClusterType;

    /// Provisions what a new cluster needs before anything is deployed (directories, the
    /// database). `state` is already filled with the cluster's shape and token.
    fn create(&self, state: &mut ClusterState) -> Result<()>;

    /// Starts (or restarts) every server instance and agent from `binaries`; on failure stops
    /// whatever this call started and explains why (with the component's last log lines).
    /// `save` persists the state after each start, so a crash never loses a PID.
    fn deploy(
        &self,
        state: &mut ClusterState,
        binaries: &Binaries,
        save: &dyn Fn(&ClusterState) -> Result<()>,
    ) -> Result<()>;

    /// Stops every component (not the database); they can be started again with `deploy`.
    fn stop(&self, state: &mut ClusterState) -> Result<()>;

    /// Health of each component.
    fn status(&self, state: &ClusterState) -> Vec<ComponentHealth>;

    /// The agents' control endpoints, in agent order.
    fn agents(&self, state: &ClusterState) -> Result<Vec<AgentEndpoint>>;

    /// URLs of the server instances (what the workload's `target.url` becomes).
    fn server_urls(&self, state: &ClusterState) -> Vec<String>;

    /// The last lines an agent logged, for messages about it.
    fn agent_log_tail(&self, state: &ClusterState, index: u32, lines: usize) -> String;

    /// Whether an agent's process is still there (without asking its API).
    fn agent_alive(&self, state: &ClusterState, index: u32) -> bool;

    /// Copies whatever results an agent that can no longer answer has flushed for `run_id` to
    /// `dest`; returns whether something was found.
    fn salvage_results(&self, state: &ClusterState, index: u32, run_id: &str, dest: &Path) -> bool;

    /// Runs a shell or command in a component's environment; returns its exit code.
    fn ssh(&self, state: &ClusterState, role: Role, index: u32, cmd: &ShellCommand) -> Result<i32>;

    /// Prints a component's log (the last `lines`, or all), following it if asked.
    fn logs(
        &self,
        state: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()>;

    /// Stops everything the cluster started and removes its infrastructure. The state directory
    /// itself is removed by the caller.
    fn delete(&self, state: &mut ClusterState) -> Result<()>;
}

/// The provider for a cluster type.
pub fn for_type(kind: ClusterType, home: &Home) -> Result<Box<dyn Provider>> {
    match kind {
        ClusterType::Local => Ok(Box::new(local::LocalProvider::new(home.clone()))),
        other => Err(Error::Unsupported {
            kind: other.name().into(),
        }),
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
