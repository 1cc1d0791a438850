//! `ltops status`: what each cluster runs and how it is doing. Read-only: takes no lock.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use crate::error::Result;
use crate::provider::{self, Health, Provider};
use crate::state::{ClusterState, Home, Proxy, Role};

fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The component table: address, where it runs (in the provider's words), health, metrics.
pub async fn print_components(st: &ClusterState, p: &dyn Provider) {
    let health = match p.status(st).await {
        Ok(h) => h,
        Err(e) => {
            println!("  components: unknown ({e})");
            return;
        }
    };
    if health.is_empty() {
        println!("  components: none (run `ltops deploy -c {}`)", st.name);
        return;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["component", "address", "runs", "health", "metrics"]);
    for h in &health {
        let c = &h.component;
        let metrics = match (c.role, &c.metrics_address) {
            (Role::Server, Some(m)) => format!("http://{m}/metrics"),
            (Role::Agent, _) => format!("{}/metrics", c.url()),
            _ => String::new(),
        };
        let health = match &h.health {
            Health::Healthy => "healthy".to_string(),
            other => other.label(),
        };
        table.add_row(vec![
            c.label(),
            c.display_url(),
            h.location.clone(),
            health,
            metrics,
        ]);
    }
    for line in table.to_string().lines() {
        println!("  {line}");
    }
}

async fn show(home: &Home, st: &ClusterState) {
    println!(
        "cluster {}  (type {}, {} agent(s), {} server instance(s), {}{})",
        st.name,
        st.kind().name(),
        st.agents,
        st.app_count,
        st.database.name(),
        match st.proxy {
            Proxy::None => String::new(),
            other => format!(", {} in front", other.name()),
        }
    );
    println!("  state:    {}", home.cluster_dir(&st.name).display());
    match provider::for_type(st.kind(), home) {
        Ok(p) => {
            print_components(st, p.as_ref()).await;
            match p.summary(st).await {
                Ok(lines) => {
                    for l in lines {
                        println!("  {l}");
                    }
                }
                Err(e) => println!("  {} details: unknown ({e})", st.kind().name()),
            }
        }
        Err(e) => println!("  components: unknown ({e})"),
    }
    if let Some(c) = st.component(Role::Prometheus, 0).filter(|c| c.started) {
        println!(
            "  metrics:  Prometheus at http://{} (dashboards for your Grafana: dashboards/)",
            c.address
        );
    }
    if let Some(c) = st.component(Role::Grafana, 0).filter(|c| c.started) {
        println!(
            "  grafana:  http://{} (user admin; the dashboards of dashboards/ provisioned)",
            c.address
        );
    }
    match &st.dataset {
        Some(d) => println!(
            "  data set: prepared {} ({} team(s), {} users, key {})",
            when(d.prepared_at_ms),
            d.teams,
            d.users,
            d.hash
        ),
        None => println!("  data set: not prepared yet (the first `ltops loadtest` prepares it)"),
    }
    match &st.last_run {
        Some(r) => println!(
            "  last run: {} at {}: {} (exit {})\n            results in {}",
            r.run_id,
            when(r.finished_at_ms),
            r.verdict,
            r.exit_code,
            r.results_dir.display()
        ),
        None => println!("  last run: none"),
    }
    if let Some(w) = &st.workload {
        println!("  workload: {}", w.display());
    }
}

pub async fn status(home: &Home, name: Option<&str>) -> Result<i32> {
    let names = match name {
        Some(n) => {
            home.load(n)?;
            vec![n.to_string()]
        }
        None => home.cluster_names()?,
    };
    if names.is_empty() {
        println!(
            "no clusters in {}; create one with `ltops create --name NAME`, or run `ltops loadtest --quick`",
            home.root.display()
        );
        return Ok(0);
    }
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match home.load(n) {
            Ok(st) => show(home, &st).await,
            Err(e) => println!("cluster {n}: {e}"),
        }
    }
    Ok(0)
}
