//! The `aws` provider: EC2 instances it provisions itself (through the `ltops-aws` crate, the
//! only one that links the AWS SDK), then drives like hosts you already have.
//!
//! `create` records its settings (region, profile, image, allowed SSH source, instance types)
//! and a locally generated key pair in the cluster's directory *before* the first API call, then
//! provisions with every resource id saved as soon as it exists: a create stopped anywhere is
//! resumed by running it again ([`Provider::pending_create`]) or cleaned up by `delete`. Once
//! the instances run, their addresses become an SSH inventory (one instance per component) and
//! everything else (deploy, load tests, status, shells, logs) is the SSH provider's, nested in
//! `[provider.ssh]` ([`SSH_SLOT`]). `delete` removes the cluster by recorded id *and* by its
//! `ltops:cluster-id` tag, then reads every resource type back (the leak check) and fails,
//! naming what is left, unless nothing is. `delete --type aws` without a state directory finds
//! the cluster by its name and this home's owner tag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use ltops_aws::{ConnectOptions, Image, InstanceSpec, Plan, Resources, Selector, Session, Tags};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::ssh::inventory::{Host, HostRole, Inventory, Ports};
use super::ssh::SshProvider;
use super::{
    Artifacts, ComponentHealth, CreateRequest, DeleteOptions, Endpoints, Health, LostAgent,
    Provider, Save, Shape, ShellCommand,
};
use crate::error::{Error, IoContext, Result};
use crate::state::{ClusterState, ClusterType, Database, Home, Proxy, Role, Slot, CLUSTER_FILE};

/// Where the SSH provider keeps its state inside an aws cluster's `[provider]`.
pub const SSH_SLOT: Slot = Slot(Some("ssh"));
/// Bound on each wait for EC2 (instances running or terminated, dependencies released).
const EC2_WAIT: Duration = Duration::from_secs(600);
/// How long `deploy` waits for fresh instances to accept SSH and finish cloud-init.
const BOOT_WAIT: Duration = Duration::from_secs(900);
const PRICES: &str = include_str!("prices.toml");
const KEY_FILE: &str = "id_ed25519";

/// `ltops create --type aws` flags (and `delete --type aws` for a lost state).
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub app_type: Option<String>,
    pub agent_type: Option<String>,
    pub db_type: Option<String>,
    pub proxy_type: Option<String>,
    pub metrics_type: Option<String>,
    pub ami: Option<String>,
    pub allow_ssh_from: Option<String>,
    /// `delete --cluster-id`: one specific cluster (from another home, say).
    pub cluster_id: Option<String>,
}

/// Instance types per role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Types {
    app: String,
    agent: String,
    db: String,
    proxy: String,
    /// The metrics instance (Prometheus); clusters recorded before it existed get the default.
    #[serde(default = "default_metrics_type")]
    metrics: String,
}

fn default_metrics_type() -> String {
    "m6i.large".into()
}

/// The aws provider's section of `cluster.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsState {
    region: String,
    #[serde(default)]
    profile: Option<String>,
    /// Digest of this machine and state directory (the `ltops:owner` tag).
    owner: String,
    allow_ssh_from: String,
    image: Image,
    types: Types,
    #[serde(default)]
    resources: Resources,
    /// Every instance runs and the SSH inventory is recorded.
    #[serde(default)]
    complete: bool,
    /// The SSH provider's state ([`SSH_SLOT`]); carried through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ssh: Option<toml::Table>,
}

pub struct AwsProvider {
    home: Home,
    ssh: SshProvider,
}

/// This home's owner tag: a digest of the host name and the state directory, so that clusters
/// of one name created from two homes never match each other's tags.
pub fn owner_digest(home: &Home) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let root = std::fs::canonicalize(&home.root).unwrap_or(home.root.clone());
    let d = sha2::Sha256::digest(format!("{host}:{}", root.display()).as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `--allow-ssh-from`: an IPv4 CIDR (a bare address means /32).
fn parse_cidr(flag: &str) -> Result<String> {
    let bad = || {
        Error::Usage(format!(
            "--allow-ssh-from {flag:?}: give an IPv4 address or CIDR such as 203.0.113.7/32 (your address as AWS sees it)"
        ))
    };
    let (addr, len) = match flag.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
        None => (flag, 32),
    };
    let ip: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok(format!("{ip}/{len}"))
}

/// The operator's public address as AWS sees it, for the default `--allow-ssh-from`.
async fn own_address() -> Result<String> {
    let fail = |why: String| {
        Error::Usage(format!(
            "could not find this machine's public address ({why}); pass --allow-ssh-from CIDR, \
             for example --allow-ssh-from 203.0.113.7/32 (0.0.0.0/0 opens SSH to everyone)"
        ))
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let text = client
        .get("https://checkip.amazonaws.com")
        .send()
        .await
        .map_err(|e| fail(format!("asking checkip.amazonaws.com: {e}")))?
        .text()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let ip: std::net::Ipv4Addr = text
        .trim()
        .parse()
        .map_err(|_| fail(format!("checkip.amazonaws.com answered {:?}", text.trim())))?;
    Ok(format!("{ip}/32"))
}

/// A profile named `ltops` in the shared config or credentials files, if there is one.
fn ltops_profile() -> Option<String> {
    if std::env::var_os("AWS_PROFILE").is_some() {
        return None;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or(home.join(".aws/config"));
    let creds = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or(home.join(".aws/credentials"));
    let has = |p: &Path, header: &str| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().any(|l| l.trim() == header))
            .unwrap_or(false)
    };
    (has(&config, "[profile ltops]") || has(&creds, "[ltops]")).then(|| "ltops".to_string())
}

/// A value that ends up in API calls and the state file: no spaces, quotes or shell syntax.
fn plain_flag(flag: &str, v: &str) -> Result<()> {
    if super::ssh::inventory::plain(v) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{flag} {v:?}: use letters, digits and . - _ only"
        )))
    }
}

/// cloud-init user data per role, shared with the Terraform module (`terraform/aws/cloud-init/`):
/// the packages the role needs (the SSH deploy runs them as the login user, so the
/// distribution's own services are disabled) and limits for many connections.
fn user_data(role: HostRole) -> String {
    match role {
        HostRole::Db => include_str!("../../../../terraform/aws/cloud-init/db.yaml"),
        HostRole::Proxy => include_str!("../../../../terraform/aws/cloud-init/proxy.yaml"),
        HostRole::Metrics => include_str!("../../../../terraform/aws/cloud-init/metrics.yaml"),
        HostRole::App | HostRole::Agent => {
            include_str!("../../../../terraform/aws/cloud-init/host.yaml")
        }
    }
    .to_string()
}

/// One instance per component: (role, index) in the order of [`HostRole`].
fn layout(st: &Shape) -> Vec<(HostRole, u32)> {
    let mut v: Vec<(HostRole, u32)> = (0..st.app_count).map(|i| (HostRole::App, i)).collect();
    if st.database == Database::Postgres {
        v.push((HostRole::Db, 0));
    }
    if st.proxy == Proxy::Nginx {
        v.push((HostRole::Proxy, 0));
    }
    v.extend((0..st.agents).map(|i| (HostRole::Agent, i)));
    if st.metrics {
        v.push((HostRole::Metrics, 0));
    }
    v
}

fn role_name(r: HostRole) -> &'static str {
    match r {
        HostRole::App => "app",
        HostRole::Db => "db",
        HostRole::Agent => "agent",
        HostRole::Proxy => "proxy",
        HostRole::Metrics => "metrics",
    }
}

/// Hourly prices from the table in the repository, and its date.
struct Prices {
    date: String,
    region: String,
    hourly: std::collections::BTreeMap<String, f64>,
}

impl Prices {
    fn load() -> Prices {
        #[derive(Deserialize)]
        struct File {
            date: String,
            region: String,
            hourly_usd: std::collections::BTreeMap<String, f64>,
        }
        match toml::from_str::<File>(PRICES) {
            Ok(f) => Prices {
                date: f.date,
                region: f.region,
                hourly: f.hourly_usd,
            },
            Err(_) => Prices {
                date: "?".into(),
                region: "?".into(),
                hourly: Default::default(),
            },
        }
    }
}

impl AwsProvider {
    pub fn new(home: Home) -> Self {
        AwsProvider {
            ssh: SshProvider::nested(home.clone(), SSH_SLOT),
            home,
        }
    }

    fn file(&self, st: &ClusterState) -> PathBuf {
        self.home.cluster_dir(&st.name).join(CLUSTER_FILE)
    }

    fn state(&self, st: &ClusterState) -> Result<AwsState> {
        let file = self.file(st);
        let a: AwsState = st.provider_state(&file)?;
        let bad = |key: &str, v: &str| {
            Err(Error::Usage(format!(
                "{}: provider.{key}: {v:?} is not a plain value; fix the file, or delete the cluster and create it again",
                crate::state::at_key(&file, &format!("provider.{key}"))
            )))
        };
        for (k, v) in [
            ("region", &a.region),
            ("owner", &a.owner),
            ("image.id", &a.image.id),
            ("image.user", &a.image.user),
            ("types.app", &a.types.app),
            ("types.agent", &a.types.agent),
            ("types.db", &a.types.db),
            ("types.proxy", &a.types.proxy),
            ("types.metrics", &a.types.metrics),
        ] {
            if !super::ssh::inventory::plain(v) {
                return bad(k, v);
            }
        }
        if parse_cidr(&a.allow_ssh_from).is_err() {
            return bad("allow_ssh_from", &a.allow_ssh_from);
        }
        Ok(a)
    }

    /// Writes the aws state, keeping the nested SSH state as it is in `st`.
    fn put(st: &mut ClusterState, a: &mut AwsState) -> Result<()> {
        a.ssh = match st.provider.data.get("ssh") {
            Some(toml::Value::Table(t)) => Some(t.clone()),
            _ => None,
        };
        st.set_provider_state(a)
    }

    async fn session(region: Option<&str>, profile: Option<&str>) -> Result<Session> {
        Session::connect(&ConnectOptions {
            region: region.map(str::to_string),
            profile: profile.map(str::to_string).or_else(ltops_profile),
        })
        .await
        .map_err(aws_err)
    }

    /// The settings of a new cluster, resolved once and recorded before anything is created.
    async fn settings(&self, req: &CreateRequest) -> Result<AwsState> {
        let o = &req.aws;
        for (flag, v) in [
            ("--region", &o.region),
            ("--profile", &o.profile),
            ("--app-type", &o.app_type),
            ("--agent-type", &o.agent_type),
            ("--db-type", &o.db_type),
            ("--proxy-type", &o.proxy_type),
            ("--metrics-type", &o.metrics_type),
            ("--ami", &o.ami),
        ] {
            if let Some(v) = v {
                plain_flag(flag, v)?;
            }
        }
        let allow = match &o.allow_ssh_from {
            Some(c) => parse_cidr(c)?,
            None => own_address().await?,
        };
        if allow.ends_with("/0") {
            eprintln!("warning: --allow-ssh-from {allow} lets every address on the internet try SSH on the cluster's instances");
        }
        let profile = o.profile.clone().or_else(ltops_profile);
        let session = Self::session(o.region.as_deref(), profile.as_deref()).await?;
        let image = match &o.ami {
            Some(id) => session.image(id).await.map_err(aws_err)?,
            None => session.default_image().await.map_err(aws_err)?,
        };
        eprintln!(
            "region {}, image {} ({}, login user {}), SSH allowed from {allow}",
            session.region(),
            image.id,
            image.name,
            image.user
        );
        Ok(AwsState {
            region: session.region().to_string(),
            profile,
            owner: owner_digest(&self.home),
            allow_ssh_from: allow,
            image,
            types: Types {
                app: o.app_type.clone().unwrap_or_else(|| "c6i.xlarge".into()),
                agent: o.agent_type.clone().unwrap_or_else(|| "c6i.xlarge".into()),
                db: o.db_type.clone().unwrap_or_else(|| "m6i.large".into()),
                proxy: o.proxy_type.clone().unwrap_or_else(|| "c6i.large".into()),
                metrics: o.metrics_type.clone().unwrap_or_else(default_metrics_type),
            },
            resources: Resources::default(),
            complete: false,
            ssh: None,
        })
    }

    /// Checks a resumed create's flags against what was recorded: the shape and the region
    /// cannot change once resources exist; instance types given again replace the recorded
    /// ones for instances not launched yet (the fix for a rejected type).
    fn resume_with(a: &mut AwsState, req: &CreateRequest, st: &ClusterState) -> Result<()> {
        let differs = |flag: &str, was: String| {
            Err(Error::Usage(format!(
                "{flag}: the interrupted create of {:?} was started with {was}; resume it with the same value, or `ltops delete {} --yes` and create again",
                st.name, st.name
            )))
        };
        if req.agents.is_some_and(|n| n != st.agents) {
            return differs("--agents", st.agents.to_string());
        }
        if req.app_count.is_some_and(|n| n != st.app_count) {
            return differs("--app-count", st.app_count.to_string());
        }
        if req.database.is_some_and(|d| d != st.database) {
            return differs("--database", st.database.name().to_string());
        }
        if req.proxy.is_some_and(|p| p != st.proxy) {
            return differs("--proxy", st.proxy.name().to_string());
        }
        if req.metrics.is_some_and(|m| m != st.metrics) {
            let was = if st.metrics {
                "--metrics"
            } else {
                "--no-metrics"
            };
            return differs(
                if st.metrics {
                    "--no-metrics"
                } else {
                    "--metrics"
                },
                was.into(),
            );
        }
        let o = &req.aws;
        if o.region.as_ref().is_some_and(|r| *r != a.region) {
            return differs("--region", a.region.clone());
        }
        if o.ami.as_ref().is_some_and(|i| *i != a.image.id) {
            return differs("--ami", a.image.id.clone());
        }
        for (flag, new, slot) in [
            ("--app-type", &o.app_type, &mut a.types.app),
            ("--agent-type", &o.agent_type, &mut a.types.agent),
            ("--db-type", &o.db_type, &mut a.types.db),
            ("--proxy-type", &o.proxy_type, &mut a.types.proxy),
            ("--metrics-type", &o.metrics_type, &mut a.types.metrics),
        ] {
            if let Some(t) = new {
                plain_flag(flag, t)?;
                *slot = t.clone();
            }
        }
        Ok(())
    }

    /// The key pair in the cluster's directory, generated with ssh-keygen if missing; returns
    /// the public key line.
    fn key(&self, st: &ClusterState) -> Result<String> {
        let private = self.home.cluster_dir(&st.name).join(KEY_FILE);
        let public = private.with_extension("pub");
        if !private.exists() {
            let out = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                .arg(format!("ltops-{}-{}", st.name, st.cluster_id))
                .arg("-f")
                .arg(&private)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| {
                    Error::Usage(format!(
                        "running ssh-keygen to make the cluster's key pair: {e}; install the OpenSSH client (Debian: openssh-client)"
                    ))
                })?;
            if !out.status.success() {
                return Err(Error::Runtime(format!(
                    "ssh-keygen failed making {}: {}",
                    private.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))
            .context(|| format!("restricting {} to its owner", private.display()))?;
        let line = std::fs::read_to_string(&public)
            .context(|| format!("reading the cluster's public key {}", public.display()))?;
        Ok(line.trim().to_string())
    }

    fn plan(&self, st: &ClusterState, a: &AwsState, public_key: String) -> Plan {
        let instances = layout(&Shape::of(st))
            .into_iter()
            .map(|(role, index)| InstanceSpec {
                role: role_name(role).to_string(),
                index,
                instance_type: match role {
                    HostRole::App => a.types.app.clone(),
                    HostRole::Db => a.types.db.clone(),
                    HostRole::Proxy => a.types.proxy.clone(),
                    HostRole::Agent => a.types.agent.clone(),
                    HostRole::Metrics => a.types.metrics.clone(),
                },
                user_data: user_data(role),
            })
            .collect();
        Plan {
            tags: Tags {
                name: st.name.clone(),
                cluster_id: st.cluster_id.clone(),
                owner: a.owner.clone(),
            },
            vpc_cidr: "10.60.0.0/16".into(),
            subnet_cidr: "10.60.1.0/24".into(),
            allow_ssh_from: a.allow_ssh_from.clone(),
            public_key,
            image: a.image.clone(),
            root_volume_gib: 20,
            instances,
            wait: EC2_WAIT,
        }
    }

    /// The running instances as an SSH inventory: one host per component.
    fn inventory(
        &self,
        st: &ClusterState,
        a: &AwsState,
        instances: &[ltops_aws::Instance],
    ) -> Result<Inventory> {
        let dir = self.home.cluster_dir(&st.name);
        let mut hosts = Vec::new();
        for (role, index) in layout(&Shape::of(st)) {
            let name = role_name(role);
            let i = instances
                .iter()
                .find(|i| i.role == name && i.index == index && i.state == "running")
                .ok_or_else(|| {
                    Error::Runtime(format!(
                        "instance {name}-{index} is not running; run the same create again"
                    ))
                })?;
            let public = i.public_ip.clone().ok_or_else(|| {
                Error::Runtime(format!(
                    "instance {} ({name}-{index}) has no public address; run the same create again",
                    i.id
                ))
            })?;
            hosts.push(Host {
                private_address: i.private_ip.clone().unwrap_or(public.clone()),
                address: public,
                user: Some(a.image.user.clone()),
                port: 22,
                identity_file: Some(dir.join(KEY_FILE)),
                ssh_config: None,
                known_hosts: Some(dir.join("known_hosts")),
                roles: vec![role],
            });
        }
        Ok(Inventory {
            path: self.file(st),
            hosts,
            ports: Ports::default(),
            remote_dir: ".ltops".into(),
            nginx: "nginx".into(),
            prometheus: "prometheus".into(),
            grafana: super::ssh::inventory::DEFAULT_GRAFANA.into(),
            grafana_home: super::ssh::inventory::DEFAULT_GRAFANA_HOME.into(),
            postgres_bin_dir: None,
            database_url: None,
        })
    }

    fn require_complete(&self, st: &ClusterState) -> Result<()> {
        if self.state(st)?.complete {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "the create of cluster {:?} did not finish: run the same `ltops create --name {} --type aws …` again to resume it, or `ltops delete {} --yes`",
                st.name, st.name, st.name
            )))
        }
    }

    /// Deletes by selector, then runs the leak check; fails naming what is left.
    async fn teardown(
        session: &Session,
        sel: &Selector,
        res: &mut Resources,
        record: &mut ltops_aws::Record<'_>,
        what: &str,
    ) -> Result<()> {
        let report = tokio::select! {
            r = session.teardown(sel, res, record, EC2_WAIT) => r,
            _ = crate::interrupt::wait() => {
                return Err(Error::Runtime(format!(
                    "interrupted; what is not deleted yet is still recorded (and tagged {what}): run the delete again"
                )))
            }
        };
        for r in &report.removed {
            eprintln!("  removed {r}");
        }
        let leaks = session.leaks(sel).await.map_err(aws_err)?;
        if report.errors.is_empty() && leaks.is_empty() {
            eprintln!(
                "leak check: nothing tagged {what} is left in {}",
                session.region()
            );
            return Ok(());
        }
        let mut msg = String::new();
        for e in &report.errors {
            msg.push_str(&format!("{e}\n"));
        }
        if !leaks.is_empty() {
            msg.push_str(&format!(
                "leak check: {} resource(s) tagged {what} are still in {}:\n",
                leaks.len(),
                session.region()
            ));
            for l in &leaks {
                msg.push_str(&format!("  {l}\n"));
            }
        }
        msg.push_str("run the delete again; if they stay, remove them in the EC2 console (they carry the tags above)");
        Err(Error::Runtime(msg))
    }
}

fn aws_err(e: ltops_aws::Error) -> Error {
    match e {
        ltops_aws::Error::Config(m) => Error::Usage(m),
        other => Error::Runtime(other.to_string()),
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn kind(&self) -> ClusterType {
        ClusterType::Aws
    }

    fn shape(&self, req: &CreateRequest) -> Result<Shape> {
        if req.inventory.is_some() || req.inventory_from_terraform.is_some() {
            return Err(Error::Usage(
                "--inventory is for --type ssh; an aws cluster's hosts are the instances it creates"
                    .into(),
            ));
        }
        let app_count = req.app_count.unwrap_or(1);
        Ok(Shape {
            agents: req.agents.unwrap_or(1),
            app_count,
            database: req.database.unwrap_or(Database::Postgres),
            proxy: req.proxy.unwrap_or(if app_count > 1 {
                Proxy::Nginx
            } else {
                Proxy::None
            }),
            metrics: req.metrics.unwrap_or(true),
        })
    }

    fn pending_create(&self, st: &ClusterState) -> bool {
        // Nothing recorded: nothing was created. Unreadable state counts as pending: `delete`,
        // not a silent undo, decides what happens to what it may record.
        !st.provider.data.is_empty() && self.state(st).map(|a| !a.complete).unwrap_or(true)
    }

    async fn create(
        &self,
        req: &CreateRequest,
        st: &mut ClusterState,
        save: &Save<'_>,
    ) -> Result<()> {
        let mut a = if st.provider.data.is_empty() {
            let mut a = self.settings(req).await?;
            Self::put(st, &mut a)?;
            save(st)?;
            a
        } else {
            let mut a = self.state(st)?;
            Self::resume_with(&mut a, req, st)?;
            eprintln!(
                "resuming the create of {:?} in {} (recorded settings; instance types given again replace them)",
                st.name, a.region
            );
            a
        };
        let public_key = self.key(st)?;
        let session = Self::session(Some(&a.region), a.profile.as_deref()).await?;
        let plan = self.plan(st, &a, public_key);
        let mut res = a.resources.clone();
        let result = {
            let mut record = |r: &Resources, note: &str| -> std::result::Result<(), String> {
                if !note.is_empty() {
                    eprintln!("  {note}");
                }
                a.resources = r.clone();
                Self::put(st, &mut a).map_err(|e| e.to_string())?;
                save(st).map_err(|e| e.to_string())
            };
            // Cancelling mid-call is safe: everything is tagged as it is created, and a resume
            // adopts what carries the cluster's tag.
            tokio::select! {
                r = session.provision(&plan, &mut res, &mut record) => r.map_err(aws_err),
                _ = crate::interrupt::wait() => Err(Error::Interrupted),
            }
        };
        result?;
        let instances = session
            .instances(&Selector::ClusterId(st.cluster_id.clone()))
            .await
            .map_err(aws_err)?;
        let inv = self.inventory(st, &a, &instances)?;
        self.ssh.record(&inv, st)?;
        a.complete = true;
        Self::put(st, &mut a)?;
        save(st)?;
        for h in &inv.hosts {
            eprintln!(
                "  {} ({}): {}",
                h.label(),
                h.private_address,
                h.roles
                    .iter()
                    .map(|r| role_name(*r))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        eprintln!("instances are running; `ltops deploy` waits for SSH and cloud-init on them");
        Ok(())
    }

    async fn deploy(
        &self,
        st: &mut ClusterState,
        artifacts: &Artifacts,
        save: &Save<'_>,
    ) -> Result<()> {
        self.require_complete(st)?;
        eprintln!("waiting for SSH and cloud-init on the instances…");
        let ready = "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi";
        self.ssh.wait_ready(st, ready, BOOT_WAIT).await?;
        self.ssh.deploy(st, artifacts, save).await
    }

    async fn status(&self, st: &ClusterState) -> Result<Vec<ComponentHealth>> {
        if !self.state(st)?.complete {
            return Ok(Vec::new());
        }
        if st.deployed_at_ms.is_none() {
            // Nothing runs yet: say where each component will run without connecting.
            return Ok(st
                .components
                .iter()
                .map(|c| ComponentHealth {
                    component: c.clone(),
                    health: Health::Stopped,
                    location: "not deployed yet".into(),
                })
                .collect());
        }
        self.ssh.status(st).await
    }

    async fn summary(&self, st: &ClusterState) -> Result<Vec<String>> {
        let a = self.state(st)?;
        let mut lines = Vec::new();
        if !a.complete {
            lines.push(format!(
                "create: not finished ({} instance(s) recorded); run the same create again, or delete",
                a.resources.instances.len()
            ));
        }
        let session = Self::session(Some(&a.region), a.profile.as_deref()).await?;
        let mut instances = session
            .instances(&Selector::ClusterId(st.cluster_id.clone()))
            .await
            .map_err(aws_err)?;
        let rank = |r: &str| {
            ["app", "db", "proxy", "agent", "metrics"]
                .iter()
                .position(|x| *x == r)
        };
        instances.sort_by_key(|i| (rank(&i.role), i.index));
        let prices = Prices::load();
        let mut hourly = 0.0;
        let mut unpriced = Vec::new();
        lines.push(format!(
            "instances in {} (cluster id {}):",
            a.region, st.cluster_id
        ));
        if instances.is_empty() {
            lines.push("  none".into());
        }
        for i in &instances {
            lines.push(format!(
                "  {:<9} {:<20} {:<12} {:<13} {} / {}",
                format!("{}-{}", i.role, i.index),
                i.id,
                i.instance_type,
                i.state,
                i.public_ip.as_deref().unwrap_or("-"),
                i.private_ip.as_deref().unwrap_or("-")
            ));
            if i.state == "running" || i.state == "pending" {
                match prices.hourly.get(&i.instance_type) {
                    Some(p) => hourly += p,
                    None => unpriced.push(i.instance_type.clone()),
                }
            }
        }
        let mut cost = format!(
            "estimated cost: ${hourly:.2}/hour for what runs (on-demand {} list prices of {}, from ltops's price table; EBS, traffic and other regions' prices not included)",
            prices.region, prices.date
        );
        if !unpriced.is_empty() {
            unpriced.dedup();
            cost.push_str(&format!(
                "; no price for {} in the table",
                unpriced.join(", ")
            ));
        }
        lines.push(cost);
        if a.complete && !st.provider_slot_is_empty(SSH_SLOT) {
            // Where Prometheus is, and the tunnel to reach it: the SSH provider's lines.
            lines.extend(self.ssh.summary(st).await?);
        }
        Ok(lines)
    }

    async fn endpoints(&self, st: &ClusterState) -> Result<Endpoints> {
        self.require_complete(st)?;
        self.ssh.endpoints(st).await
    }

    async fn lost_agent(
        &self,
        st: &ClusterState,
        index: u32,
        run_id: &str,
        dest: &Path,
    ) -> Result<LostAgent> {
        self.ssh.lost_agent(st, index, run_id, dest).await
    }

    async fn shell(
        &self,
        st: &ClusterState,
        role: Role,
        index: u32,
        cmd: &ShellCommand,
    ) -> Result<i32> {
        self.require_complete(st)?;
        self.ssh.shell(st, role, index, cmd).await
    }

    async fn logs(
        &self,
        st: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()> {
        self.require_complete(st)?;
        self.ssh.logs(st, role, index, follow, lines).await
    }

    async fn stop(&self, st: &mut ClusterState, save: &Save<'_>) -> Result<Vec<String>> {
        if st.provider.data.is_empty() {
            return Ok(Vec::new());
        }
        if !st.provider_slot_is_empty(SSH_SLOT) {
            self.ssh.stop(st, save).await?;
        }
        let a = self.state(st)?;
        let n = a.resources.instances.len();
        Ok(vec![format!(
            "its {n} EC2 instance(s) in {} keep running, and billing; `ltops delete {}` removes them",
            a.region, st.name
        )])
    }

    async fn delete(
        &self,
        st: &mut ClusterState,
        _opts: DeleteOptions,
        save: &Save<'_>,
    ) -> Result<()> {
        if st.provider.data.is_empty() {
            // Settings were never recorded, so nothing was created.
            return Ok(());
        }
        let mut a = self.state(st)?;
        // Whatever runs on the instances ends with them; only the local SSH connections remain.
        if !st.provider_slot_is_empty(SSH_SLOT) {
            self.ssh.disconnect_all(st).await;
        }
        let session = Self::session(Some(&a.region), a.profile.as_deref()).await?;
        eprintln!(
            "deleting cluster {:?} ({}) in {}…",
            st.name, st.cluster_id, a.region
        );
        let sel = Selector::ClusterId(st.cluster_id.clone());
        let mut res = a.resources.clone();
        let what = format!("ltops:cluster-id={}", st.cluster_id);
        let mut record = |r: &Resources, _: &str| -> std::result::Result<(), String> {
            a.resources = r.clone();
            a.complete = false;
            Self::put(st, &mut a).map_err(|e| e.to_string())?;
            save(st).map_err(|e| e.to_string())
        };
        Self::teardown(&session, &sel, &mut res, &mut record, &what).await
    }

    async fn delete_lost(&self, name: &str, req: &CreateRequest) -> Result<()> {
        let o = &req.aws;
        let session = Self::session(o.region.as_deref(), o.profile.as_deref()).await?;
        let owner = owner_digest(&self.home);
        let (sel, what) = match &o.cluster_id {
            Some(id) => {
                plain_flag("--cluster-id", id)?;
                (
                    Selector::ClusterId(id.clone()),
                    format!("ltops:cluster-id={id}"),
                )
            }
            None => {
                let ids = session.cluster_ids(name, &owner).await.map_err(aws_err)?;
                if ids.is_empty() {
                    eprintln!(
                        "no resources of a cluster {name:?} created from this home ({}) in {}",
                        self.home.root.display(),
                        session.region()
                    );
                } else {
                    eprintln!(
                        "cluster {name:?} has no state here; found cluster id(s) {} by tag in {}",
                        ids.join(", "),
                        session.region()
                    );
                }
                (
                    Selector::NameAndOwner {
                        name: name.into(),
                        owner: owner.clone(),
                    },
                    format!("ltops:cluster={name} and ltops:owner={owner}"),
                )
            }
        };
        let mut res = Resources::default();
        let mut record = |_: &Resources, _: &str| -> std::result::Result<(), String> { Ok(()) };
        Self::teardown(&session, &sel, &mut res, &mut record, &what).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidrs_are_checked_and_bare_addresses_mean_one_host() {
        assert_eq!(parse_cidr("203.0.113.7").unwrap(), "203.0.113.7/32");
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "::1/128", "1.2.3.4/x", "a b"] {
            let e = parse_cidr(bad).unwrap_err().to_string();
            assert!(e.contains("--allow-ssh-from"), "{e}");
        }
    }

    #[test]
    fn the_price_table_parses_and_prices_the_default_types() {
        let p = Prices::load();
        assert_ne!(p.date, "?");
        for t in ["c6i.xlarge", "m6i.large", "c6i.large"] {
            assert!(p.hourly.get(t).is_some_and(|v| *v > 0.0), "{t}");
        }
    }

    #[test]
    fn user_data_installs_what_each_role_needs_and_disables_its_service() {
        let db = user_data(HostRole::Db);
        assert!(db.starts_with("#cloud-config\n"));
        assert!(db.contains("  - postgresql\n"));
        assert!(db.contains("[systemctl, disable, --now, postgresql]"));
        let agent = user_data(HostRole::Agent);
        assert!(!agent.contains("packages:"));
        assert!(agent.contains("nofile 1048576"));
        let metrics = user_data(HostRole::Metrics);
        assert!(metrics.contains("  - prometheus\n"));
        assert!(metrics.contains("[systemctl, disable, --now, prometheus]"));
        assert!(metrics.contains("https://apt.grafana.com stable main"));
        assert!(metrics.contains("install -y -q grafana"));
        assert!(metrics.contains("systemctl disable --now grafana-server"));
    }

    #[test]
    fn the_metrics_instance_comes_last_and_only_when_asked_for() {
        let mut st = Shape {
            agents: 2,
            app_count: 1,
            database: Database::Postgres,
            proxy: Proxy::None,
            metrics: true,
        };
        assert_eq!(layout(&st).last(), Some(&(HostRole::Metrics, 0)));
        st.metrics = false;
        assert!(!layout(&st).iter().any(|(r, _)| *r == HostRole::Metrics));
        // A state recorded before the metrics type existed reads with the default.
        let t: Types =
            toml::from_str("app = \"a\"\nagent = \"b\"\ndb = \"c\"\nproxy = \"d\"\n").unwrap();
        assert_eq!(t.metrics, "m6i.large");
    }
}
