//! The cluster's Prometheus (`ltops create --metrics`): finding the binary, and the scrape
//! configuration for every server instance and agent a cluster runs. Which process runs it is
//! the provider's business: the local provider starts Debian's `prometheus` on this machine, the
//! ssh provider on the cluster's metrics host (its own, or this machine's binary uploaded).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::state::{Component, Role};

/// How often every target is scraped: short enough that a minute of a test has a curve.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);

/// The `prometheus` binary: `$LTOPS_PROMETHEUS`, else the first on `PATH`.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LTOPS_PROMETHEUS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Usage(format!(
                "LTOPS_PROMETHEUS={} is not a file; point it at the prometheus binary",
                p.display()
            )))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Usage(
                "--metrics needs Prometheus, which is not installed: `apt-get install prometheus` \
                 (Debian), or set LTOPS_PROMETHEUS to its binary"
                    .into(),
            )
        })
}

/// `prometheus.yml` for a cluster's components: job `chat-server` (each instance's metrics
/// address) and job `loadtest-agent` (each agent's metrics address, else its control address,
/// where `/metrics` needs no token), with `instance` labels `server-N` / `agent-N` and a
/// `cluster` label.
pub fn scrape_config(cluster: &str, components: &[Component]) -> String {
    let job = |name: &str, role: Role| {
        let mut s = format!("  - job_name: {name}\n    static_configs:\n");
        for c in components.iter().filter(|c| c.role == role) {
            let addr = match role {
                Role::Agent => Some(c.metrics_address.clone().unwrap_or(c.address.clone())),
                _ => c.metrics_address.clone(),
            };
            if let Some(a) = addr {
                s.push_str(&format!(
                    "      - targets: [\"{a}\"]\n        labels: {{instance: \"{}-{}\", cluster: \"{cluster}\"}}\n",
                    role.name(),
                    c.index,
                ));
            }
        }
        s
    };
    format!(
        "# Written by ltops for cluster {cluster}; rewritten at every deploy.\nglobal:\n  scrape_interval: {i}s\n  evaluation_interval: {i}s\nscrape_configs:\n{}{}",
        job("chat-server", Role::Server),
        job("loadtest-agent", Role::Agent),
        i = SCRAPE_INTERVAL.as_secs(),
    )
}
