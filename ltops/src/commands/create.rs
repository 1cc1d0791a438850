//! `ltops create`: records a cluster and provisions what it needs before a deploy.

use crate::commands::lock;
use crate::error::{Error, Result};
use crate::provider;
use crate::state::{self, ClusterState, ClusterType, Database, Home};

#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub name: String,
    pub kind: ClusterType,
    pub agents: u32,
    pub database: Database,
    pub app_count: u32,
}

/// Most agents a cluster may have (a sanity bound, not a technical limit).
pub const MAX_AGENTS: u32 = 64;
/// Most server instances a cluster may have.
pub const MAX_APP_COUNT: u32 = 16;

pub fn validate(opts: &CreateOptions) -> Result<()> {
    state::validate_name(&opts.name)?;
    if opts.agents == 0 || opts.agents > MAX_AGENTS {
        return Err(Error::Usage(format!(
            "--agents must be between 1 and {MAX_AGENTS} (got {})",
            opts.agents
        )));
    }
    if opts.app_count == 0 || opts.app_count > MAX_APP_COUNT {
        return Err(Error::Usage(format!(
            "--app-count must be between 1 and {MAX_APP_COUNT} (got {})",
            opts.app_count
        )));
    }
    if opts.app_count > 1 && opts.database == Database::Sqlite {
        return Err(Error::Usage(format!(
            "--app-count {} needs a database the instances can share: add --database postgres \
             (SQLite belongs to a single server instance)",
            opts.app_count
        )));
    }
    Ok(())
}

/// Creates the cluster; the caller already holds its lock.
pub fn create_locked(home: &Home, opts: &CreateOptions) -> Result<ClusterState> {
    validate(opts)?;
    let p = provider::for_type(opts.kind, home)?;
    if home.exists(&opts.name) {
        return Err(Error::Usage(format!(
            "cluster {:?} already exists; deploy to it with `ltops deploy -c {}`, or remove it with `ltops delete {} --yes`",
            opts.name, opts.name, opts.name
        )));
    }
    let mut st = ClusterState {
        name: opts.name.clone(),
        kind: opts.kind,
        agents: opts.agents,
        database: opts.database,
        app_count: opts.app_count,
        created_at_ms: loadtest_contract::now_ms(),
        control_token: state::random_token(),
        workload: None,
        binaries: None,
        deployed_at_ms: None,
        postgres: None,
        dataset: None,
        last_run: None,
        components: Vec::new(),
    };
    if let Err(e) = p.create(&mut st) {
        // Undo: stop what may have started, remove the directory.
        let _ = p.delete(&mut st);
        let _ = std::fs::remove_dir_all(home.cluster_dir(&opts.name));
        return Err(e);
    }
    home.save(&st)?;
    Ok(st)
}

pub fn create(home: &Home, opts: &CreateOptions) -> Result<i32> {
    validate(opts)?;
    // Refuse unsupported types before touching the state directory.
    provider::for_type(opts.kind, home)?;
    if home.exists(&opts.name) {
        return create_locked(home, opts).map(|_| 0);
    }
    let _lock = lock(home, &opts.name)?;
    let result = create_locked(home, opts);
    if result.is_err() && !home.exists(&opts.name) {
        let _ = std::fs::remove_dir_all(home.cluster_dir(&opts.name));
    }
    let st = result?;
    println!(
        "created {} cluster {:?}: {} agent(s), {} server instance(s), {}",
        st.kind.name(),
        st.name,
        st.agents,
        st.app_count,
        st.database.name()
    );
    println!("state: {}", home.cluster_dir(&st.name).display());
    println!("next:  ltops deploy -c {}", st.name);
    Ok(0)
}
