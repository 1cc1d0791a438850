//! `ltops deploy`: starts (or brings up to date) a cluster's servers and agents.

use std::path::PathBuf;

use loadtest_contract::WorkloadConfig;

use crate::commands::{lock, open, status};
use crate::error::{IoContext, Result};
use crate::provider::{self, Artifacts, Provider};
use crate::state::{self, ClusterState, Home};

#[derive(Clone, Debug, Default)]
pub struct DeployOptions {
    pub cluster: String,
    pub server: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    /// Workload config to record as the cluster's default for `loadtest`.
    pub config: Option<PathBuf>,
    /// `--dry-run -o FORMAT`: print what would be applied, change nothing.
    pub dry_run: Option<Output>,
}

/// The format of `deploy --dry-run`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Kubernetes manifests, one YAML document each.
    #[default]
    Yaml,
}

/// Deploys with the lock held.
pub async fn deploy_locked(
    home: &Home,
    st: &mut ClusterState,
    p: &dyn Provider,
    artifacts: &Artifacts,
) -> Result<()> {
    let save = |s: &ClusterState| home.save(s);
    if p.uses_binaries() {
        st.binaries = Some(artifacts.binaries());
    }
    p.deploy(st, artifacts, &save).await?;
    st.deployed_at_ms = Some(loadtest_contract::now_ms());
    home.save(st)
}

pub async fn deploy(home: &Home, opts: &DeployOptions) -> Result<i32> {
    let (st, p) = open(home, &opts.cluster)?;
    if opts.dry_run.is_some() {
        print!("{}", p.manifests(&st).await?);
        return Ok(0);
    }
    let binaries = if p.uses_binaries() {
        Some(provider::resolve_binaries(
            opts.server.clone(),
            opts.agent.clone(),
        )?)
    } else {
        None
    };
    let config_text = match &opts.config {
        Some(path) => {
            WorkloadConfig::from_file(path)?;
            Some(std::fs::read(path).context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let _lock = lock(home, &opts.cluster)?;
    let mut st = home.load_checked(&opts.cluster)?;
    if let Some(text) = config_text {
        let dest = home.cluster_dir(&st.name).join("workload.toml");
        state::write_atomic(&dest, &text, 0o600)?;
        st.workload = Some(dest);
    }
    eprintln!(
        "deploying {:?} ({}): {} server instance(s), {} agent(s)…",
        st.name,
        st.kind().name(),
        st.app_count,
        st.agents
    );
    let artifacts = match &binaries {
        Some(b) => Artifacts::from_binaries(b),
        // The provider runs its image: nothing of this machine's is installed.
        None => Artifacts::from_binaries(&state::Binaries {
            server: PathBuf::new(),
            agent: PathBuf::new(),
        }),
    };
    deploy_locked(home, &mut st, p.as_ref(), &artifacts).await?;
    status::print_components(&st, p.as_ref()).await;
    println!(
        "next: ltops loadtest -c {}{}",
        st.name,
        if st.workload.is_some() {
            ""
        } else {
            " --config FILE (or --quick)"
        }
    );
    Ok(0)
}
