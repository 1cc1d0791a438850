//! `ltops create`: records a cluster and provisions what it needs before a deploy.

use std::path::PathBuf;

use crate::commands::lock;
use crate::error::{Error, Result};
use crate::provider::aws::AwsOptions;
use crate::provider::kubernetes::KubeOptions;
use crate::provider::{self, CreateRequest, Provider, Shape};
use crate::state::{self, ClusterState, ClusterType, Database, Home, ProviderSection, Proxy};

#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub name: String,
    pub kind: ClusterType,
    /// `None`: the provider's default (local: 2; ssh: one per `agent` host).
    pub agents: Option<u32>,
    pub database: Option<Database>,
    pub app_count: Option<u32>,
    pub proxy: Option<Proxy>,
    /// The hosts of an `ssh` cluster.
    pub inventory: Option<PathBuf>,
    /// An `ssh` cluster's hosts from a Terraform directory's `ltops_inventory` output.
    pub inventory_from_terraform: Option<PathBuf>,
    /// The `aws` provider's flags.
    pub aws: AwsOptions,
    /// The `kubernetes` provider's flags.
    pub kube: KubeOptions,
    /// Run a Prometheus scraping every server and agent (`--metrics`/`--no-metrics`; `None`:
    /// the provider's default).
    pub metrics: Option<bool>,
}

impl CreateOptions {
    /// A local cluster of the given shape.
    pub fn local(name: &str, agents: u32, database: Database, app_count: u32) -> Self {
        CreateOptions {
            name: name.into(),
            kind: ClusterType::Local,
            agents: Some(agents),
            database: Some(database),
            app_count: Some(app_count),
            proxy: None,
            inventory: None,
            inventory_from_terraform: None,
            aws: AwsOptions::default(),
            kube: KubeOptions::default(),
            metrics: None,
        }
    }

    fn request(&self) -> CreateRequest {
        CreateRequest {
            name: self.name.clone(),
            agents: self.agents,
            app_count: self.app_count,
            database: self.database,
            proxy: self.proxy,
            inventory: self.inventory.clone(),
            inventory_from_terraform: self.inventory_from_terraform.clone(),
            aws: self.aws.clone(),
            kube: self.kube.clone(),
            metrics: self.metrics,
        }
    }
}

/// Checks the name and the shape the provider resolved (the rules live in [`state::check_shape`];
/// here a violation is reported against its flag).
fn validate(opts: &CreateOptions, p: &dyn Provider) -> Result<Shape> {
    state::validate_name(&opts.name)?;
    if opts.kind == ClusterType::Ssh
        && opts.inventory.is_none() == opts.inventory_from_terraform.is_none()
    {
        return Err(Error::Usage(
            "--type ssh needs one of --inventory FILE (the hosts and their roles, see `ltops create --help`) or --inventory-from-terraform DIR"
                .into(),
        ));
    }
    if opts.kind != ClusterType::Kubernetes && opts.kube.given() {
        return Err(Error::Usage(
            "--context, --namespace, --use-existing-namespace, --image, --database-url-secret, --storage-class, --storage, --users and --server-url are for --type kubernetes".into(),
        ));
    }
    let shape = p.shape(&opts.request())?;
    state::check_shape(shape.agents, shape.app_count, shape.database, shape.proxy).map_err(
        |(key, msg)| {
            let flag = match key {
                "app_count" => "--app-count",
                "agents" => "--agents",
                other => other,
            };
            Error::Usage(format!("{flag}: {msg}"))
        },
    )?;
    Ok(shape)
}

/// Creates the cluster, or resumes a create its provider recorded as unfinished; the caller
/// already holds its lock.
pub async fn create_locked(home: &Home, opts: &CreateOptions) -> Result<ClusterState> {
    let p = provider::for_type(opts.kind, home)?;
    let shape = validate(opts, p.as_ref())?;
    let mut st = if home.exists(&opts.name) {
        let st = home.load(&opts.name)?;
        if st.kind() != opts.kind || !p.pending_create(&st) {
            return Err(Error::Usage(format!(
                "cluster {:?} already exists; deploy to it with `ltops deploy -c {}`, or remove it with `ltops delete {} --yes`",
                opts.name, opts.name, opts.name
            )));
        }
        st
    } else {
        ClusterState {
            schema: state::SCHEMA_VERSION,
            name: opts.name.clone(),
            cluster_id: state::random_token()[..8].to_string(),
            agents: shape.agents,
            database: shape.database,
            app_count: shape.app_count,
            proxy: shape.proxy,
            metrics: shape.metrics,
            created_at_ms: loadtest_contract::now_ms(),
            control_token: state::random_token(),
            workload: None,
            binaries: None,
            deployed_at_ms: None,
            dataset: None,
            last_run: None,
            components: Vec::new(),
            provider: ProviderSection {
                kind: opts.kind,
                data: Default::default(),
            },
        }
    };
    let save = |s: &ClusterState| home.save(s);
    if let Err(e) = p.create(&opts.request(), &mut st, &save).await {
        if p.pending_create(&st) {
            // What exists is recorded (and may cost money): keep it for a resume or a delete.
            let _ = home.save(&st);
            let hint = format!(
                "What was created so far is recorded in {}: run the same `ltops create` again to resume, \
                 or `ltops delete {} --yes` to remove it.",
                home.cluster_dir(&opts.name).display(),
                opts.name
            );
            return Err(match e {
                Error::Usage(m) => Error::Usage(format!("{m}\n{hint}")),
                Error::Interrupted => {
                    eprintln!("{hint}");
                    Error::Interrupted
                }
                other => Error::Runtime(format!("{other}\n{hint}")),
            });
        }
        // Undo: stop what may have started, remove the directory.
        let noop = |_: &ClusterState| Ok(());
        let _ = p.delete(&mut st, Default::default(), &noop).await;
        let _ = std::fs::remove_dir_all(home.cluster_dir(&opts.name));
        return Err(e);
    }
    home.save(&st)?;
    Ok(st)
}

pub async fn create(home: &Home, opts: &CreateOptions) -> Result<i32> {
    // Refuse unsupported types and bad shapes before touching the state directory.
    let p = provider::for_type(opts.kind, home)?;
    validate(opts, p.as_ref())?;
    if home.exists(&opts.name) && !home.load(&opts.name).is_ok_and(|st| p.pending_create(&st)) {
        return create_locked(home, opts).await.map(|_| 0);
    }
    let _lock = lock(home, &opts.name)?;
    let result = create_locked(home, opts).await;
    if result.is_err() && !home.exists(&opts.name) {
        let _ = std::fs::remove_dir_all(home.cluster_dir(&opts.name));
    }
    let st = result?;
    println!(
        "created {} cluster {:?}: {} agent(s), {} server instance(s), {}{}{}",
        st.kind().name(),
        st.name,
        st.agents,
        st.app_count,
        st.database.name(),
        match st.proxy {
            Proxy::None => String::new(),
            other => format!(", {} in front", other.name()),
        },
        if st.metrics { ", Prometheus" } else { "" }
    );
    println!("state: {}", home.cluster_dir(&st.name).display());
    println!("next:  ltops deploy -c {}", st.name);
    Ok(0)
}
