//! The `kubernetes` provider: the server, its PostgreSQL and the agents as pods in an existing
//! Kubernetes cluster, driven through its API server only (the `ltops-kube` crate, the only one
//! that links `kube`; no `kubectl` or `helm` needed).
//!
//! `create` connects with the kubeconfig context, checks what the cluster is sized for
//! (`--users`) against the nodes' allocatable resources, takes the namespace (its own `ltops-NAME`,
//! created and labelled, or an existing one with `--use-existing-namespace`) and records its
//! settings. `deploy` server-side applies the objects of `ltops_kube::manifests` (the same as the
//! Helm chart's in `charts/chat-loadtest`) and waits until every pod is ready, naming a stuck pod
//! and why. `loadtest` reaches each agent's control API through a port-forward held for the run;
//! nothing is exposed outside the cluster. `ssh` is an exec (with a TTY), `logs` reads the pod's
//! log, `delete` removes the namespace, or in a shared namespace every object with the cluster's
//! labels, and waits until they are gone.

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use ltops_kube::manifests::{self, Builder};
use ltops_kube::{ClusterSpec, DatabaseSpec, ExecIo, Secrets, Session, Sizing};
use serde::{Deserialize, Serialize};

use super::{
    Artifacts, ComponentHealth, CreateRequest, DeleteOptions, Endpoints, Health, LostAgent,
    Provider, Save, Shape, ShellCommand,
};
use crate::agent_client::AgentEndpoint;
use crate::error::{Error, Result};
use crate::state::{ClusterState, ClusterType, Component, Database, Home, Proxy, Role};

/// The product image of this version (build it with the root `Dockerfile`).
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/chat-loadtest/chat-loadtest:",
    env!("CARGO_PKG_VERSION")
);
/// How long `deploy` waits for every pod to be ready.
const READY_WAIT: Duration = Duration::from_secs(600);
/// How long `delete` waits for the objects to be gone.
const DELETE_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_USERS: u64 = 1000;
const DEFAULT_STORAGE: &str = "10Gi";

/// `ltops create --type kubernetes` flags.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub use_existing_namespace: bool,
    pub image: Option<String>,
    /// `NAME[:KEY]` of an existing Secret holding the database URL.
    pub database_url_secret: Option<String>,
    pub storage_class: Option<String>,
    pub storage: Option<String>,
    pub users: Option<u64>,
    /// The URL agents load instead of the server Service's cluster DNS name.
    pub server_url: Option<String>,
}

impl KubeOptions {
    pub fn given(&self) -> bool {
        self.context.is_some()
            || self.namespace.is_some()
            || self.use_existing_namespace
            || self.image.is_some()
            || self.database_url_secret.is_some()
            || self.storage_class.is_some()
            || self.storage.is_some()
            || self.users.is_some()
            || self.server_url.is_some()
    }
}

/// The provider's section of `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubeState {
    context: String,
    namespace: String,
    /// Whether the cluster created the namespace (and `delete` removes it).
    own_namespace: bool,
    image: String,
    users: u64,
    #[serde(default)]
    storage_class: Option<String>,
    storage: String,
    postgres_image: String,
    /// The image of the cluster's Prometheus (when the cluster has one, `--metrics`).
    #[serde(default = "default_prometheus_image")]
    prometheus_image: String,
    /// The image of the Grafana beside it.
    #[serde(default = "default_grafana_image")]
    grafana_image: String,
    /// Grafana's `admin` password (clusters recorded before Grafana get one at their next read,
    /// kept by the next deploy).
    #[serde(default = "crate::state::random_token")]
    grafana_password: String,
    /// `[name, key]` of the Secret with an external database's URL.
    #[serde(default)]
    external_database: Option<[String; 2]>,
    /// The internal database's password (cluster.toml is 0600).
    postgres_password: String,
    #[serde(default)]
    server_url: Option<String>,
}

fn default_prometheus_image() -> String {
    manifests::PROMETHEUS_IMAGE.into()
}

fn default_grafana_image() -> String {
    manifests::GRAFANA_IMAGE.into()
}

impl KubeState {
    /// What a hand edit could break: names, sizes and the image.
    fn check(&self) -> Result<()> {
        check_dns_label(&self.namespace, "namespace")?;
        check_storage(&self.storage, "storage")?;
        check_image(&self.image, "image")?;
        check_image(&self.postgres_image, "postgres_image")?;
        check_image(&self.prometheus_image, "prometheus_image")?;
        check_image(&self.grafana_image, "grafana_image")?;
        if self.grafana_password.len() < 16 {
            return Err(Error::Usage(
                "grafana_password is shorter than 16 characters; remove the line and ltops makes a new one".into(),
            ));
        }
        if self.users == 0 {
            return Err(Error::Usage("users must be at least 1".into()));
        }
        if self.context.trim().is_empty() {
            return Err(Error::Usage(
                "context is empty; name a kubeconfig context".into(),
            ));
        }
        if let Some([name, key]) = &self.external_database {
            check_dns_label(name, "external_database")?;
            if key.is_empty() {
                return Err(Error::Usage("external_database has an empty key".into()));
            }
        }
        Ok(())
    }
}

/// A volume size Kubernetes accepts (`10Gi`, `500Mi`), of at least 1 MiB.
fn check_storage(q: &str, what: &str) -> Result<()> {
    match ltops_kube::quantity::memory_mib(q) {
        Some(mib) if mib >= 1 && q.trim() == q => Ok(()),
        _ => Err(Error::Usage(format!(
            "{what}: {q:?} is not a volume size; write it as Kubernetes does, e.g. 10Gi or 500Mi"
        ))),
    }
}

/// An image reference: non-empty, no whitespace.
fn check_image(image: &str, what: &str) -> Result<()> {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(Error::Usage(format!(
            "{what}: {image:?} is not an image reference; e.g. registry.example.com/chat-loadtest:0.1.0"
        )));
    }
    Ok(())
}

pub struct KubeProvider {
    home: Home,
}

impl KubeProvider {
    pub fn new(home: Home) -> Self {
        KubeProvider { home }
    }

    /// The provider's section, checked like flags are (a hand-edited `cluster.toml` is input).
    fn state(&self, st: &ClusterState) -> Result<KubeState> {
        let file = self.file(st);
        let ks: KubeState = st.provider_state(&file)?;
        ks.check()
            .map_err(|e| Error::Usage(format!("{}: [provider] {e}", file.display())))?;
        Ok(ks)
    }

    /// The cluster's secret values, from its state.
    fn secrets(st: &ClusterState, ks: &KubeState) -> Secrets {
        Secrets {
            control_token: st.control_token.clone(),
            postgres_password: ks.postgres_password.clone(),
            grafana_password: ks.grafana_password.clone(),
        }
    }

    fn file(&self, st: &ClusterState) -> std::path::PathBuf {
        self.home
            .cluster_dir(&st.name)
            .join(crate::state::CLUSTER_FILE)
    }

    fn spec(st: &ClusterState, ks: &KubeState) -> ClusterSpec {
        ClusterSpec {
            name: st.name.clone(),
            cluster_id: st.cluster_id.clone(),
            namespace: ks.namespace.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            image: ks.image.clone(),
            app_count: st.app_count,
            agents: st.agents,
            database: match &ks.external_database {
                Some([name, key]) => DatabaseSpec::External {
                    secret_name: name.clone(),
                    secret_key: key.clone(),
                },
                None => DatabaseSpec::Internal {
                    storage_class: ks.storage_class.clone(),
                    storage: ks.storage.clone(),
                    image: ks.postgres_image.clone(),
                },
            },
            users: ks.users,
            prometheus: st.metrics.then(|| ks.prometheus_image.clone()),
            grafana: st.metrics.then(|| ks.grafana_image.clone()),
        }
    }

    async fn session(ks: &KubeState) -> Result<Session> {
        Ok(Session::connect(Some(&ks.context), &ks.namespace)
            .await
            .map_err(kube_err)?
            .0)
    }

    /// The URL agents load: the server Service inside the cluster, unless overridden.
    fn target(st: &ClusterState, ks: &KubeState) -> String {
        ks.server_url.clone().unwrap_or_else(|| {
            format!(
                "http://{}.{}.svc:{}",
                manifests::server_name(&st.name),
                ks.namespace,
                manifests::SERVER_PORT
            )
        })
    }

    /// The pod of a component (`server -i N` is the N-th server pod by name).
    async fn pod(&self, s: &Session, st: &ClusterState, role: Role, index: u32) -> Result<String> {
        match role {
            Role::Agent => {
                check_index(st, role, index, st.agents)?;
                Ok(manifests::agent_pod(&st.name, index))
            }
            Role::Postgres => Ok(format!("{}-0", manifests::postgres_name(&st.name))),
            Role::Server => {
                check_index(st, role, index, st.app_count)?;
                let pods = s.pods(&st.name, &st.cluster_id).await.map_err(kube_err)?;
                pods.into_iter()
                    .filter(|p| p.component == "server" && !p.terminating)
                    .nth(index as usize)
                    .map(|p| p.name)
                    .ok_or_else(|| {
                        Error::Runtime(format!(
                            "server -i {index} of cluster {:?} has no pod; run `ltops deploy -c {}`",
                            st.name, st.name
                        ))
                    })
            }
            Role::Proxy => Err(Error::Usage(
                "a kubernetes cluster has no proxy: its Service balances the server pods".into(),
            )),
            Role::Prometheus | Role::Grafana if !st.metrics => Err(Error::Usage(format!(
                "cluster {:?} runs no {} (it was created with --no-metrics)",
                st.name,
                role.name()
            ))),
            Role::Prometheus | Role::Grafana => {
                check_index(st, role, index, 1)?;
                let pods = s.pods(&st.name, &st.cluster_id).await.map_err(kube_err)?;
                pods.into_iter()
                    .find(|p| p.component == role.name() && !p.terminating)
                    .map(|p| p.name)
                    .ok_or_else(|| {
                        Error::Runtime(format!(
                            "the {} of cluster {:?} has no pod; run `ltops deploy -c {}`",
                            role.name(),
                            st.name,
                            st.name
                        ))
                    })
            }
        }
    }

    fn container(role: Role) -> &'static str {
        match role {
            Role::Agent => "loadtest-agent",
            Role::Postgres => "postgres",
            Role::Prometheus => "prometheus",
            Role::Grafana => "grafana",
            _ => "chat-server",
        }
    }

    fn components(st: &mut ClusterState, ks: &KubeState) {
        let ns = &ks.namespace;
        let name = st.name.clone();
        let mut all = Vec::new();
        if ks.external_database.is_none() {
            all.push(Component {
                role: Role::Postgres,
                index: 0,
                address: format!(
                    "{}.{ns}.svc:{}",
                    manifests::postgres_name(&name),
                    manifests::POSTGRES_PORT
                ),
                metrics_address: None,
                started: true,
            });
        }
        for i in 0..st.app_count {
            all.push(Component {
                role: Role::Server,
                index: i,
                address: format!(
                    "{}.{ns}.svc:{}",
                    manifests::server_name(&name),
                    manifests::SERVER_PORT
                ),
                metrics_address: None,
                started: true,
            });
        }
        for i in 0..st.agents {
            all.push(Component {
                role: Role::Agent,
                index: i,
                address: format!(
                    "{}.{}.{ns}.svc:{}",
                    manifests::agent_pod(&name, i),
                    manifests::agent_name(&name),
                    manifests::AGENT_PORT
                ),
                metrics_address: None,
                started: true,
            });
        }
        if st.metrics {
            all.push(Component {
                role: Role::Prometheus,
                index: 0,
                address: format!(
                    "{}.{ns}.svc:{}",
                    manifests::prometheus_name(&name),
                    manifests::PROMETHEUS_PORT
                ),
                metrics_address: None,
                started: true,
            });
            all.push(Component {
                role: Role::Grafana,
                index: 0,
                address: format!(
                    "{}.{ns}.svc:{}",
                    manifests::grafana_name(&name),
                    manifests::GRAFANA_PORT
                ),
                metrics_address: None,
                started: true,
            });
        }
        for c in all {
            st.upsert(c);
        }
    }

    async fn settings(req: &CreateRequest, st: &ClusterState) -> Result<KubeState> {
        let o = &req.kube;
        let namespace = o
            .namespace
            .clone()
            .unwrap_or_else(|| format!("ltops-{}", st.name.to_lowercase().replace('_', "-")));
        check_dns_label(&namespace, "--namespace")?;
        check_dns_label(&format!("{}-postgres", st.name), "--name")?;
        let external_database = match &o.database_url_secret {
            Some(s) => {
                let (name, key) = s.split_once(':').unwrap_or((s.as_str(), "database-url"));
                check_dns_label(name, "--database-url-secret")?;
                if key.is_empty() {
                    return Err(Error::Usage(
                        "--database-url-secret NAME:KEY has an empty KEY".into(),
                    ));
                }
                Some([name.to_string(), key.to_string()])
            }
            None => None,
        };
        if let Some(u) = &o.server_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Error::Usage(format!(
                    "--server-url {u:?} must start with http:// or https://"
                )));
            }
        }
        if let Some(s) = &o.storage {
            check_storage(s, "--storage")?;
        }
        if let Some(i) = &o.image {
            check_image(i, "--image")?;
        }
        if let Some(c) = &o.storage_class {
            // A DNS subdomain: labels joined by dots (`ebs.csi.example.com`).
            if c.len() > 253 {
                return Err(Error::Usage(
                    "--storage-class is longer than 253 characters".into(),
                ));
            }
            c.split('.')
                .try_for_each(|label| check_dns_label(label, "--storage-class"))?;
        }
        let users = o.users.unwrap_or(DEFAULT_USERS);
        if users == 0 {
            return Err(Error::Usage("--users must be at least 1".into()));
        }
        let (_, context) = Session::connect(o.context.as_deref(), &namespace)
            .await
            .map_err(kube_err)?;
        Ok(KubeState {
            context,
            namespace,
            own_namespace: !o.use_existing_namespace,
            image: o.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()),
            users,
            storage_class: o.storage_class.clone(),
            storage: o.storage.clone().unwrap_or_else(|| DEFAULT_STORAGE.into()),
            postgres_image: manifests::POSTGRES_IMAGE.into(),
            prometheus_image: default_prometheus_image(),
            grafana_image: default_grafana_image(),
            grafana_password: crate::state::random_token(),
            external_database,
            postgres_password: crate::state::random_token(),
            server_url: o.server_url.clone(),
        })
    }

    /// Takes the namespace: creates and labels the cluster's own, or checks a shared one exists.
    async fn take_namespace(
        s: &Session,
        spec: &ClusterSpec,
        ks: &KubeState,
        shared_asked: bool,
    ) -> Result<()> {
        let labels = s.namespace_labels().await.map_err(kube_err)?;
        match labels {
            Some(l) if l.get(manifests::LABEL_CLUSTER_ID) == Some(&spec.cluster_id) => Ok(()),
            Some(l) if ks.own_namespace => Err(Error::Usage(format!(
                "namespace {:?} already exists{}; pass --use-existing-namespace to put the cluster into it (its objects are labelled and `delete` removes only those), or choose another with --namespace",
                ks.namespace,
                match l.get(manifests::LABEL_CLUSTER) {
                    Some(other) => format!(" and belongs to ltops cluster {other:?}"),
                    None => String::new(),
                }
            ))),
            Some(_) => Ok(()),
            None if shared_asked => Err(Error::Usage(format!(
                "namespace {:?} does not exist; drop --use-existing-namespace to have ltops create it, or name an existing one with --namespace",
                ks.namespace
            ))),
            None => {
                let ns = Builder::new(spec).build(true, None);
                s.apply(&ns[..1], &mut |_| {}).await.map_err(kube_err)
            }
        }
    }
}

fn check_index(st: &ClusterState, role: Role, index: u32, count: u32) -> Result<()> {
    if index >= count {
        return Err(Error::Usage(format!(
            "cluster {:?} has {count} {}(s): -i takes 0…{}",
            st.name,
            role.name(),
            count.saturating_sub(1)
        )));
    }
    Ok(())
}

/// Kubernetes object names: lowercase letters, digits and `-`, at most 63 characters.
fn check_dns_label(name: &str, flag: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{flag}: {name:?} cannot name a Kubernetes object (lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'); kubernetes clusters need such names"
        )))
    }
}

fn kube_err(e: ltops_kube::Error) -> Error {
    match e {
        ltops_kube::Error::Config(m)
        | ltops_kube::Error::TooSmall(m)
        | ltops_kube::Error::Namespace(m) => Error::Usage(m),
        other => Error::Runtime(other.to_string()),
    }
}

/// Puts the terminal in raw mode while a TTY session runs (restored on drop).
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

#[async_trait]
impl Provider for KubeProvider {
    fn kind(&self) -> ClusterType {
        ClusterType::Kubernetes
    }

    fn shape(&self, req: &CreateRequest) -> Result<Shape> {
        if req.inventory.is_some() || req.inventory_from_terraform.is_some() {
            return Err(Error::Usage(
                "--inventory is for --type ssh; a kubernetes cluster runs in pods".into(),
            ));
        }
        if req.database == Some(Database::Sqlite) {
            return Err(Error::Usage(
                "kubernetes clusters use PostgreSQL (a StatefulSet of their own, or an existing database with --database-url-secret); drop --database sqlite".into(),
            ));
        }
        if req.proxy == Some(Proxy::Nginx) {
            return Err(Error::Usage(
                "--proxy nginx is for ssh and aws clusters; in Kubernetes the server Service balances the pods".into(),
            ));
        }
        Ok(Shape {
            agents: req.agents.unwrap_or(1),
            app_count: req.app_count.unwrap_or(1),
            database: Database::Postgres,
            proxy: Proxy::None,
            metrics: req.metrics.unwrap_or(true),
        })
    }

    async fn create(
        &self,
        req: &CreateRequest,
        st: &mut ClusterState,
        save: &Save<'_>,
    ) -> Result<()> {
        let ks = Self::settings(req, st).await?;
        let spec = Self::spec(st, &ks);
        let s = Self::session(&ks).await?;
        let capacity = s.capacity().await.map_err(kube_err)?;
        capacity.check(&spec).map_err(kube_err)?;
        Self::take_namespace(&s, &spec, &ks, req.kube.use_existing_namespace).await?;
        st.set_provider_state(&ks)?;
        save(st)?;
        let sizing = Sizing::of(&spec);
        eprintln!(
            "kubernetes: context {:?}, namespace {:?} ({}); sized for {} users: agent {}m CPU / {} MiB, server {}m / {} MiB per pod",
            ks.context,
            ks.namespace,
            if ks.own_namespace { "created for this cluster" } else { "shared" },
            ks.users,
            sizing.agent.cpu_m,
            sizing.agent.memory_mi,
            sizing.server.cpu_m,
            sizing.server.memory_mi
        );
        Ok(())
    }

    fn uses_binaries(&self) -> bool {
        false
    }

    async fn manifests(&self, st: &ClusterState) -> Result<String> {
        let ks = self.state(st)?;
        let spec = Self::spec(st, &ks);
        let ms = Builder::new(&spec).build(ks.own_namespace, None);
        manifests::to_yaml(&ms)
            .map_err(|e| Error::Runtime(format!("cannot print the manifests as YAML: {e}")))
    }

    async fn summary(&self, st: &ClusterState) -> Result<Vec<String>> {
        let ks = self.state(st)?;
        let mut lines = vec![
            format!(
                "kubernetes: context {:?}, namespace {:?}{}",
                ks.context,
                ks.namespace,
                if ks.own_namespace { "" } else { " (shared)" }
            ),
            format!("image: {}; sized for {} users", ks.image, ks.users),
            format!("agents load: {}", Self::target(st, &ks)),
        ];
        if st.metrics {
            let ns = &ks.namespace;
            let ctx = &ks.context;
            let svc = manifests::prometheus_name(&st.name);
            let port = manifests::PROMETHEUS_PORT;
            lines.push(format!(
                "prometheus: http://{svc}.{ns}.svc:{port} inside the cluster; from here: `kubectl --context {ctx} -n {ns} port-forward svc/{svc} {port}`, then http://127.0.0.1:{port}",
            ));
            let svc = manifests::grafana_name(&st.name);
            let port = manifests::GRAFANA_PORT;
            lines.push(format!(
                "grafana: the dashboards of dashboards/ on that Prometheus; `kubectl --context {ctx} -n {ns} port-forward svc/{svc} {port}`, then http://127.0.0.1:{port} as admin, password: `kubectl --context {ctx} -n {ns} get secret {} -o jsonpath='{{.data.grafana-admin-password}}' | base64 -d`",
                manifests::secret_name(&st.name),
            ));
        }
        Ok(lines)
    }

    async fn deploy(
        &self,
        st: &mut ClusterState,
        _artifacts: &Artifacts,
        save: &Save<'_>,
    ) -> Result<()> {
        let ks = self.state(st)?;
        // Keeps what a read filled in (a Grafana password for a cluster recorded before it).
        st.set_provider_state(&ks)?;
        save(st)?;
        let spec = Self::spec(st, &ks);
        let s = Self::session(&ks).await?;
        let ms = Builder::new(&spec).build(ks.own_namespace, Some(&Self::secrets(st, &ks)));
        s.apply(&ms, &mut |what| eprintln!("  applied {what}"))
            .await
            .map_err(kube_err)?;
        Self::components(st, &ks);
        save(st)?;
        eprintln!(
            "  waiting for the pods to be ready (up to {} s)…",
            READY_WAIT.as_secs()
        );
        s.wait_ready(&spec, READY_WAIT, &mut |line| eprintln!("  ready: {line}"))
            .await
            .map_err(kube_err)
    }

    async fn status(&self, st: &ClusterState) -> Result<Vec<ComponentHealth>> {
        let ks = self.state(st)?;
        let s = Self::session(&ks).await?;
        let pods = s.pods(&st.name, &st.cluster_id).await.map_err(kube_err)?;
        let mut out = Vec::new();
        let mut servers = pods
            .iter()
            .filter(|p| p.component == "server" && !p.terminating);
        for c in &st.components {
            let pod = match c.role {
                Role::Server => servers.next(),
                Role::Agent => pods
                    .iter()
                    .find(|p| p.name == manifests::agent_pod(&st.name, c.index)),
                Role::Postgres => pods.iter().find(|p| p.component == "postgres"),
                Role::Prometheus | Role::Grafana => pods
                    .iter()
                    .find(|p| p.component == c.role.name() && !p.terminating),
                Role::Proxy => None,
            };
            let (health, location) = match pod {
                None => (Health::Stopped, "no pod".to_string()),
                Some(p) => (
                    if p.ready {
                        Health::Healthy
                    } else {
                        Health::Unhealthy(
                            p.reason
                                .clone()
                                .unwrap_or_else(|| format!("{}, not ready", p.phase)),
                        )
                    },
                    format!(
                        "pod {} on {}, {} restart(s)",
                        p.name,
                        p.node.as_deref().unwrap_or("no node yet"),
                        p.restarts
                    ),
                ),
            };
            out.push(ComponentHealth {
                component: c.clone(),
                health,
                location,
            });
        }
        Ok(out)
    }

    async fn endpoints(&self, st: &ClusterState) -> Result<Endpoints> {
        let ks = self.state(st)?;
        let s = Self::session(&ks).await?;
        let pods = s.pods(&st.name, &st.cluster_id).await.map_err(kube_err)?;
        let target = Self::target(st, &ks);
        let mut forwards = Vec::new();
        let mut out = Vec::new();
        for i in 0..st.agents {
            let name = manifests::agent_pod(&st.name, i);
            match pods.iter().find(|p| p.name == name) {
                Some(p) if p.ready => {}
                other => {
                    let why = other.map_or("it has no pod".to_string(), |p| {
                        p.reason
                            .clone()
                            .unwrap_or_else(|| format!("its pod is {} and not ready", p.phase))
                    });
                    return Err(Error::Runtime(format!(
                        "agent-{i} of cluster {:?} is not ready ({why}); its last log lines:\n{}\nRun `ltops deploy -c {}` to bring it back.",
                        st.name,
                        s.log_tail(&name, false, 10).await,
                        st.name
                    )));
                }
            }
            let fwd = s
                .forward(&name, manifests::AGENT_PORT)
                .await
                .map_err(kube_err)?;
            out.push(AgentEndpoint {
                index: i,
                control_url: format!("http://{}", fwd.address()),
                token: st.control_token.clone(),
                target_url: target.clone(),
            });
            forwards.push(fwd);
        }
        // Each ready server pod's /metrics, for the run's server samples (a Deployment's pods
        // have generated names: they are numbered here in name order).
        let mut servers: Vec<&str> = pods
            .iter()
            .filter(|p| p.component == "server" && p.ready && !p.terminating)
            .map(|p| p.name.as_str())
            .collect();
        servers.sort_unstable();
        let mut server_metrics = Vec::new();
        for (i, pod) in servers.into_iter().enumerate() {
            let fwd = s
                .forward(pod, manifests::SERVER_METRICS_PORT)
                .await
                .map_err(kube_err)?;
            server_metrics.push((
                format!("server-{i}"),
                format!("http://{}/metrics", fwd.address()),
            ));
            forwards.push(fwd);
        }
        Ok(Endpoints::new(out, target, forwards).with_server_metrics(server_metrics))
    }

    async fn lost_agent(
        &self,
        st: &ClusterState,
        index: u32,
        run_id: &str,
        dest: &Path,
    ) -> Result<LostAgent> {
        let ks = self.state(st)?;
        let s = Self::session(&ks).await?;
        let name = manifests::agent_pod(&st.name, index);
        let pods = s.pods(&st.name, &st.cluster_id).await.map_err(kube_err)?;
        let alive = pods.iter().any(|p| p.name == name && p.ready);
        let log_tail = s.log_tail(&name, false, 15).await;
        let mut saved = false;
        let safe = !run_id.is_empty()
            && run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        // The results live in an emptyDir, which outlives a crashed container: try even when
        // the pod is not ready (an exec into a pod with no running container just fails).
        if safe && pods.iter().any(|p| p.name == name) {
            let script = format!(
                "cd /results 2>/dev/null || exit 0\nfor f in $(ls -t *.jsonl 2>/dev/null); do\n  case \"$f\" in *{run_id}*) cat \"$f\"; exit 0;; esac\ndone\n"
            );
            let argv = vec!["sh".to_string(), "-c".into(), script];
            if let Ok((0, bytes)) = s.exec_output(&name, "loadtest-agent", &argv).await {
                if !bytes.is_empty() {
                    crate::state::write_atomic(dest, &bytes, 0o600)?;
                    saved = true;
                }
            }
        }
        Ok(LostAgent {
            alive,
            log_tail,
            saved,
        })
    }

    async fn shell(
        &self,
        st: &ClusterState,
        role: Role,
        index: u32,
        cmd: &ShellCommand,
    ) -> Result<i32> {
        let ks = self.state(st)?;
        let s = Self::session(&ks).await?;
        let pod = self.pod(&s, st, role, index).await?;
        let terminal = std::io::stdin().is_terminal();
        let (argv, tty) = match cmd {
            ShellCommand::Interactive => (vec!["sh".to_string()], terminal),
            ShellCommand::Run(words) => (
                vec!["sh".to_string(), "-c".into(), words.join(" ")],
                terminal,
            ),
        };
        let _raw = tty.then(RawMode::enter);
        let io = ExecIo {
            stdin: Some(Box::new(tokio::io::stdin())),
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(tokio::io::stderr()),
        };
        s.exec(&pod, Self::container(role), &argv, tty, io)
            .await
            .map_err(kube_err)
    }

    async fn logs(
        &self,
        st: &ClusterState,
        role: Role,
        index: u32,
        follow: bool,
        lines: Option<usize>,
    ) -> Result<()> {
        let ks = self.state(st)?;
        let s = Self::session(&ks).await?;
        let pod = self.pod(&s, st, role, index).await?;
        let mut out = tokio::io::stdout();
        s.logs(
            &pod,
            Some(Self::container(role)),
            follow,
            lines.map(|n| n as i64),
            &mut out,
        )
        .await
        .map_err(kube_err)
    }

    async fn stop(&self, st: &mut ClusterState, save: &Save<'_>) -> Result<Vec<String>> {
        if st.provider.data.is_empty() {
            return Ok(Vec::new());
        }
        let ks = self.state(st)?;
        let spec = Self::spec(st, &ks);
        let s = Self::session(&ks).await?;
        let ms = Builder::new(&spec).stopped(Some(&Self::secrets(st, &ks)));
        s.apply(&ms, &mut |what| eprintln!("  scaled {what} to 0"))
            .await
            .map_err(kube_err)?;
        for c in &mut st.components {
            c.started = false;
        }
        save(st)?;
        let left = s
            .wait_no_pods(&st.name, &st.cluster_id, DELETE_WAIT)
            .await
            .map_err(kube_err)?;
        if !left.is_empty() {
            return Err(Error::Runtime(format!(
                "scaled to zero, but {} pod(s) are still there after {} s: {}; see `kubectl -n {} get pods`, \
                 then run `ltops stop {}` again",
                left.len(),
                DELETE_WAIT.as_secs(),
                left.join(", "),
                ks.namespace,
                st.name
            )));
        }
        Ok(vec![format!(
            "namespace {:?} keeps its objects, Secrets and PersistentVolumeClaims (the database's data)",
            ks.namespace
        )])
    }

    async fn delete(
        &self,
        st: &mut ClusterState,
        opts: DeleteOptions,
        _save: &Save<'_>,
    ) -> Result<()> {
        if st.provider.data.is_empty() {
            return Ok(());
        }
        let ks = self.state(st)?;
        let s = match Self::session(&ks).await {
            Ok(s) => s,
            Err(e) if opts.forget_unreachable => {
                eprintln!(
                    "warning: {e}\nforgetting cluster {:?}: whatever runs in namespace {:?} of context {:?} may be left behind",
                    st.name, ks.namespace, ks.context
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        eprintln!(
            "deleting {} in context {:?}…",
            if ks.own_namespace {
                format!("namespace {:?}", ks.namespace)
            } else {
                format!("the cluster's objects in namespace {:?}", ks.namespace)
            },
            ks.context
        );
        let left = s
            .delete(&st.name, &st.cluster_id, ks.own_namespace, DELETE_WAIT)
            .await
            .map_err(kube_err)?;
        if left.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = left
            .iter()
            .map(|l| format!("{}/{}", l.kind, l.name))
            .collect();
        Err(Error::Runtime(format!(
            "after {} s these objects of cluster {:?} still exist in namespace {:?}: {}\nThey are being deleted (finalizers, a stuck node?); check them with your cluster's tools, then run `ltops delete {}` again.",
            DELETE_WAIT.as_secs(),
            st.name,
            ks.namespace,
            list.join(", "),
            st.name
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_must_be_dns_labels() {
        check_dns_label("ltops-k1", "--namespace").unwrap();
        let e = check_dns_label("Bad_Name", "--namespace").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(e.to_string().contains("--namespace"), "{e}");
        assert!(check_dns_label(&"a".repeat(64), "--name").is_err());
        assert!(check_dns_label("-x", "--name").is_err());
    }

    #[test]
    fn sqlite_and_nginx_are_refused_with_the_alternative() {
        let p = KubeProvider::new(Home::at("/nonexistent"));
        let e = p
            .shape(&CreateRequest {
                database: Some(Database::Sqlite),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("--database-url-secret"), "{e}");
        let e = p
            .shape(&CreateRequest {
                proxy: Some(Proxy::Nginx),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("Service"), "{e}");
        let s = p.shape(&CreateRequest::default()).unwrap();
        assert_eq!(
            (s.agents, s.app_count, s.database),
            (1, 1, Database::Postgres)
        );
    }

    #[test]
    fn sizes_and_images_are_checked_with_the_flag_named() {
        check_storage("10Gi", "--storage").unwrap();
        check_storage("500Mi", "--storage").unwrap();
        for bad in ["", "abc", "-1Gi", "10 Gi", "0"] {
            let e = check_storage(bad, "--storage").unwrap_err();
            assert!(e.to_string().contains("--storage"), "{bad:?}: {e}");
        }
        check_image("registry.example.com/chat-loadtest:0.1.0", "--image").unwrap();
        for bad in ["", "a b", "x\n"] {
            assert!(check_image(bad, "--image").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kube_options_know_when_they_were_given() {
        assert!(!KubeOptions::default().given());
        assert!(KubeOptions {
            users: Some(5),
            ..Default::default()
        }
        .given());
    }
}
