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
}

/// Deploys with the lock held.
pub async fn deploy_locked(
    home: &Home,
    st: &mut ClusterState,
    p: &dyn Provider,
    artifacts: &Artifacts,
) -> Result<()> {
    let save = |s: &ClusterState| home.save(s);
    st.binaries = Some(artifacts.binaries());
    p.deploy(st, artifacts, &save).await?;
    st.deployed_at_ms = Some(loadtest_contract::now_ms());
    home.save(st)
}

pub async fn deploy(home: &Home, opts: &DeployOptions) -> Result<i32> {
    let (_, p) = open(home, &opts.cluster)?;
    let binaries = provider::resolve_binaries(opts.server.clone(), opts.agent.clone())?;
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
    let artifacts = Artifacts::from_binaries(&binaries);
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
