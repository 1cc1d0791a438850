//! One connection to a Kubernetes API server and the operations `ltops` runs through it.
//!
//! Every call goes through the API server: server-side apply for objects, list + watch for
//! readiness, the `pods/portforward`, `pods/exec` and `pods/log` subresources for reaching,
//! entering and reading pods. Nothing needs `kubectl` or `helm`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as MetaStatus;
use kube::api::{
    Api, ApiResource, AttachParams, DeleteParams, DynamicObject, ListParams, LogParams, Patch,
    PatchParams, WatchEvent, WatchParams,
};
use kube::Client;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::manifests::{self, ClusterSpec, Kind, Manifest, Resources, Sizing, LABEL_COMPONENT};
use crate::quantity;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "ltops";

/// How long one watch request lasts at most (the API server's own limit is a few minutes).
const WATCH_SLICE: Duration = Duration::from_secs(120);
/// Pause between checks while waiting for objects to go away.
const DELETE_POLL: Duration = Duration::from_secs(2);
/// How often `wait_no_pods` looks.
const STOP_POLL: Duration = Duration::from_millis(500);

/// A failure, worded for the person who runs `ltops`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or context.
    #[error("{0}")]
    Config(String),
    /// The API server answered with an error status.
    #[error("the Kubernetes API refused to {action} ({code} {reason}): {message}{hint}")]
    Api {
        action: String,
        code: u16,
        reason: String,
        message: String,
        hint: String,
    },
    /// The API server could not be reached or answered nonsense.
    #[error("could not {action}: {message}")]
    Connection { action: String, message: String },
    /// The cluster's nodes cannot hold what it requests.
    #[error("{0}")]
    TooSmall(String),
    /// A namespace that is not the cluster's own.
    #[error("{0}")]
    Namespace(String),
    /// Pods did not become ready: which and why.
    #[error("{0}")]
    NotReady(String),
    /// Objects still there after a delete.
    #[error("{0}")]
    Timeout(String),
    /// A local socket or stream failed.
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a `kube` error from the call described by `action` (in namespace `ns`).
    pub fn from_kube(action: impl Into<String>, ns: &str, e: kube::Error) -> Error {
        let action = action.into();
        match e {
            kube::Error::Api(s) => {
                let hint = match s.code {
                    401 => "; the credentials in your kubeconfig were rejected: refresh them (log in again) and retry".to_string(),
                    403 => format!(
                        "; your kubeconfig user lacks that permission in namespace {ns:?}: ask a cluster administrator for a Role that allows it, or pick a namespace you may manage with --namespace"
                    ),
                    409 => "; another field manager owns these fields (was the object edited by hand or by another tool?): delete the object or the cluster and retry".to_string(),
                    422 => "; a value given to `ltops create` (--image, --storage-class, --database-url-secret) may be wrong; otherwise report it with the output of `ltops deploy --dry-run -o yaml`".to_string(),
                    _ => String::new(),
                };
                Error::Api {
                    action,
                    code: s.code,
                    reason: s.reason.clone(),
                    message: s.message.clone(),
                    hint,
                }
            }
            other => Error::Connection {
                action,
                message: format!("{other}; check that the API server in your kubeconfig is reachable (`--context` picks another)"),
            },
        }
    }

    /// Whether it is the API server's 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { code: 404, .. })
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// What the schedulable nodes can allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// `(node, allocatable)` of each node that accepts pods.
    pub nodes: Vec<(String, Resources)>,
}

impl Capacity {
    pub fn total(&self) -> Resources {
        self.nodes.iter().fold(
            Resources {
                cpu_m: 0,
                memory_mi: 0,
            },
            |a, (_, r)| Resources {
                cpu_m: a.cpu_m + r.cpu_m,
                memory_mi: a.memory_mi + r.memory_mi,
            },
        )
    }

    /// Checks the cluster's requests against the nodes: the sum must fit in their total, and
    /// the largest pod on one node. The error says how much is missing. (What other workloads
    /// already use is not subtracted: the scheduler reports that, and `deploy` shows it.)
    pub fn check(&self, spec: &ClusterSpec) -> Result<()> {
        let sizing = Sizing::of(spec);
        let need = sizing.total(spec);
        let have = self.total();
        let cores = |m: u64| format!("{:.2} CPUs", m as f64 / 1000.0);
        let gib = |mi: u64| format!("{:.2} GiB", mi as f64 / 1024.0);
        if self.nodes.is_empty() {
            return Err(Error::TooSmall(
                "the Kubernetes cluster has no node that accepts pods (all are cordoned or none is registered); add a node or uncordon one".into(),
            ));
        }
        if need.cpu_m > have.cpu_m || need.memory_mi > have.memory_mi {
            return Err(Error::TooSmall(format!(
                "the Kubernetes cluster is too small for {} users on {} agents and {} servers: its {} nodes can allocate {} and {}, the cluster requests {} and {} ({} and {} missing). Add nodes, or lower --users, --agents or --app-count.",
                spec.users,
                spec.agents,
                spec.app_count,
                self.nodes.len(),
                cores(have.cpu_m),
                gib(have.memory_mi),
                cores(need.cpu_m),
                gib(need.memory_mi),
                cores(need.cpu_m.saturating_sub(have.cpu_m)),
                gib(need.memory_mi.saturating_sub(have.memory_mi)),
            )));
        }
        let largest = sizing.largest();
        let fits = self
            .nodes
            .iter()
            .any(|(_, r)| r.cpu_m >= largest.cpu_m && r.memory_mi >= largest.memory_mi);
        if !fits {
            return Err(Error::TooSmall(format!(
                "no node of the Kubernetes cluster can hold the largest pod ({} and {}); use bigger nodes, or spread the users over more --agents / --app-count",
                cores(largest.cpu_m),
                gib(largest.memory_mi)
            )));
        }
        Ok(())
    }
}

/// One pod as `status` and the readiness wait see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    /// `server`, `agent` or `postgres`.
    pub component: String,
    pub phase: String,
    pub ready: bool,
    pub restarts: i32,
    pub node: Option<String>,
    pub terminating: bool,
    /// Why it is not ready, from its status (`waiting: ImagePullBackOff: …`), if known.
    pub reason: Option<String>,
    /// A waiting container's reason alone (`CrashLoopBackOff`).
    pub waiting: Option<String>,
    /// The pod cannot be scheduled: the scheduler's message.
    pub unschedulable: Option<String>,
    pub image: Option<String>,
}

impl PodInfo {
    fn from_pod(p: &Pod) -> PodInfo {
        let meta = &p.metadata;
        let status = p.status.clone().unwrap_or_default();
        let conditions = status.conditions.clone().unwrap_or_default();
        let ready = conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let unschedulable = conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| {
                c.message
                    .clone()
                    .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
            });
        let statuses = status.container_statuses.clone().unwrap_or_default();
        let restarts = statuses.iter().map(|c| c.restart_count).sum();
        let mut waiting = None;
        let mut reason = None;
        for c in &statuses {
            if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let r = w.reason.clone().unwrap_or_else(|| "waiting".into());
                reason = Some(match &w.message {
                    Some(m) => format!("{r}: {m}"),
                    None => r.clone(),
                });
                waiting = Some(r);
            } else if let Some(t) = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .filter(|_| !c.ready)
            {
                reason.get_or_insert(format!(
                    "last exited with code {} ({})",
                    t.exit_code,
                    t.reason.clone().unwrap_or_default()
                ));
            }
        }
        if reason.is_none() && !ready {
            reason = unschedulable.clone();
        }
        PodInfo {
            name: meta.name.clone().unwrap_or_default(),
            component: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_COMPONENT).cloned())
                .unwrap_or_default(),
            phase: status.phase.clone().unwrap_or_else(|| "Unknown".into()),
            ready,
            restarts,
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            terminating: meta.deletion_timestamp.is_some(),
            reason,
            waiting,
            unschedulable,
            image: p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone()),
        }
    }

    /// A failure that waiting will not fix.
    fn hopeless(&self) -> bool {
        matches!(
            self.waiting.as_deref(),
            Some("InvalidImageName" | "CreateContainerConfigError" | "ErrImageNeverPull")
        ) || (self.waiting.as_deref() == Some("CrashLoopBackOff") && self.restarts >= 3)
    }
}

/// The standard streams of a command run in a pod.
pub struct ExecIo {
    pub stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    pub stdout: Box<dyn AsyncWrite + Unpin + Send>,
    pub stderr: Box<dyn AsyncWrite + Unpin + Send>,
}

/// A local port forwarded to a pod's port through the API server; closed when dropped.
#[derive(Debug)]
pub struct Forward {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// The `127.0.0.1:PORT` to connect to.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An object that a delete could not remove in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub kind: String,
    pub name: String,
}

/// A client bound to one namespace.
#[derive(Clone)]
pub struct Session {
    client: Client,
    namespace: String,
}

impl Session {
    /// Connects with the kubeconfig (`$KUBECONFIG` or `~/.kube/config`) and `context`, or its
    /// current context; returns the session and the context's name.
    pub async fn connect(context: Option<&str>, namespace: &str) -> Result<(Session, String)> {
        // kube builds its TLS configuration with the process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read().map_err(|e| {
            Error::Config(format!(
                "no usable kubeconfig ({e}); point $KUBECONFIG at one, or create ~/.kube/config (your cluster's documentation says how)"
            ))
        })?;
        let name = match context {
            Some(c) => c.to_string(),
            None => kubeconfig.current_context.clone().ok_or_else(|| {
                Error::Config("the kubeconfig has no current context; pass --context NAME (`kubectl config get-contexts` lists them)".into())
            })?,
        };
        if !kubeconfig.contexts.iter().any(|c| c.name == name) {
            let known: Vec<&str> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(Error::Config(format!(
                "the kubeconfig has no context {name:?} (it has: {}); pass one of them with --context",
                known.join(", ")
            )));
        }
        let opts = kube::config::KubeConfigOptions {
            context: Some(name.clone()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &opts)
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "the kubeconfig's context {name:?} is not usable: {e}"
                ))
            })?;
        let client = Client::try_from(config).map_err(|e| {
            Error::Config(format!("cannot build a client for context {name:?}: {e}"))
        })?;
        Ok((Session::new(client, namespace), name))
    }

    /// A session over any client (tests pass one backed by a scripted API server).
    pub fn new(client: Client, namespace: &str) -> Session {
        Session {
            client,
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn kube_err(&self, action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error + '_ {
        let action = action.into();
        move |e| Error::from_kube(action, &self.namespace, e)
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The nodes that accept pods and what each can allocate.
    pub async fn capacity(&self) -> Result<Capacity> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(self.kube_err("list the nodes"))?;
        let mut out = Vec::new();
        for n in list.items {
            if n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
            {
                continue;
            }
            let alloc = n.status.and_then(|s| s.allocatable).unwrap_or_default();
            let cpu = alloc
                .get("cpu")
                .and_then(|q| quantity::cpu_millis(&q.0))
                .unwrap_or(0);
            let mem = alloc
                .get("memory")
                .and_then(|q| quantity::memory_mib(&q.0))
                .unwrap_or(0);
            out.push((
                n.metadata.name.unwrap_or_default(),
                Resources {
                    cpu_m: cpu,
                    memory_mi: mem,
                },
            ));
        }
        Ok(Capacity { nodes: out })
    }

    /// The labels of the session's namespace, or `None` when it does not exist.
    pub async fn namespace_labels(&self) -> Result<Option<BTreeMap<String, String>>> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get(&self.namespace).await {
            Ok(ns) => Ok(Some(ns.metadata.labels.unwrap_or_default())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::from_kube(
                format!("read namespace {:?}", self.namespace),
                &self.namespace,
                e,
            )),
        }
    }

    /// Server-side applies each manifest in order (field manager [`FIELD_MANAGER`], taking
    /// over fields another manager set), reporting each with `progress`.
    pub async fn apply(
        &self,
        manifests: &[Manifest],
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<()> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for m in manifests {
            let api = self.dynamic_api(m.kind);
            let what = format!("{}/{}", m.kind.name(), m.name);
            api.patch(&m.name, &params, &Patch::Apply(&m.body))
                .await
                .map_err(self.kube_err(format!("apply {what}")))?;
            progress(&what);
        }
        Ok(())
    }

    fn dynamic_api(&self, kind: Kind) -> Api<DynamicObject> {
        use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
        let ar = match kind {
            Kind::Namespace => ApiResource::erase::<core::Namespace>(&()),
            Kind::Secret => ApiResource::erase::<core::Secret>(&()),
            Kind::ConfigMap => ApiResource::erase::<core::ConfigMap>(&()),
            Kind::NetworkPolicy => {
                ApiResource::erase::<k8s_openapi::api::networking::v1::NetworkPolicy>(&())
            }
            Kind::Service => ApiResource::erase::<core::Service>(&()),
            Kind::StatefulSet => ApiResource::erase::<apps::StatefulSet>(&()),
            Kind::Deployment => ApiResource::erase::<apps::Deployment>(&()),
            Kind::ServiceAccount => ApiResource::erase::<core::ServiceAccount>(&()),
            Kind::Role => ApiResource::erase::<k8s_openapi::api::rbac::v1::Role>(&()),
            Kind::RoleBinding => ApiResource::erase::<k8s_openapi::api::rbac::v1::RoleBinding>(&()),
        };
        if kind == Kind::Namespace {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
        }
    }

    /// Waits until the cluster has no pods left (after scaling it to zero); returns the names
    /// of those still there at `timeout`.
    pub async fn wait_no_pods(
        &self,
        name: &str,
        cluster_id: &str,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let pods = self.pods(name, cluster_id).await?;
            if pods.is_empty() || Instant::now() >= deadline {
                return Ok(pods.into_iter().map(|p| p.name).collect());
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// The cluster's pods (not yet deleted ones included), sorted by name.
    pub async fn pods(&self, spec_name: &str, cluster_id: &str) -> Result<Vec<PodInfo>> {
        Ok(self.list_pods(spec_name, cluster_id).await?.0)
    }

    async fn list_pods(&self, name: &str, cluster_id: &str) -> Result<(Vec<PodInfo>, String)> {
        let lp = ListParams::default().labels(&manifests::cluster_selector(name, cluster_id));
        let list = self
            .pods_api()
            .list(&lp)
            .await
            .map_err(self.kube_err("list the cluster's pods"))?;
        let mut pods: Vec<PodInfo> = list.items.iter().map(PodInfo::from_pod).collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((pods, list.metadata.resource_version.unwrap_or_default()))
    }

    /// Waits until every server, agent and database pod of `spec` is ready, watching the pods
    /// between checks. `progress` gets a one-line summary whenever it changes. Fails at once for
    /// a pod that waiting will not fix (a crash loop, a bad image name) and at `timeout` for the
    /// rest, naming each pod that is not ready and why, with a crashed pod's last log lines.
    pub async fn wait_ready(
        &self,
        spec: &ClusterSpec,
        timeout: Duration,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let (pods, version) = self.list_pods(&spec.name, &spec.cluster_id).await?;
            let missing = not_ready(spec, &pods);
            if missing.is_empty() {
                return Ok(());
            }
            let line = summary(spec, &pods);
            if line != last {
                progress(&line);
                last = line;
            }
            let hopeless: Vec<&PodInfo> = pods
                .iter()
                .filter(|p| !p.terminating && p.hopeless())
                .collect();
            if !hopeless.is_empty() {
                return Err(Error::NotReady(
                    self.explain(spec, &hopeless, &missing).await,
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                let stuck: Vec<&PodInfo> =
                    pods.iter().filter(|p| !p.terminating && !p.ready).collect();
                return Err(Error::NotReady(self.explain(spec, &stuck, &missing).await));
            }
            self.watch_once(spec, &version, (deadline - now).min(WATCH_SLICE))
                .await;
        }
    }

    /// Blocks until the next change to the cluster's pods (or `limit`); errors only end the wait.
    async fn watch_once(&self, spec: &ClusterSpec, version: &str, limit: Duration) {
        let secs = limit.as_secs().clamp(1, 290) as u32;
        let wp = WatchParams::default()
            .labels(&manifests::cluster_selector(&spec.name, &spec.cluster_id))
            .timeout(secs);
        let wait = async {
            match self.pods_api().watch(&wp, version).await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(WatchEvent::Bookmark(_)) => continue,
                            _ => break,
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Why the cluster is not ready, pod by pod.
    async fn explain(&self, spec: &ClusterSpec, stuck: &[&PodInfo], missing: &[String]) -> String {
        let mut lines = vec![format!(
            "cluster {:?} is not ready in namespace {:?}: {}",
            spec.name,
            self.namespace,
            missing.join("; ")
        )];
        for p in stuck {
            lines.push(self.explain_pod(p).await);
        }
        lines.join("\n")
    }

    async fn explain_pod(&self, p: &PodInfo) -> String {
        let image = p.image.clone().unwrap_or_default();
        match p.waiting.as_deref() {
            Some("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull") => format!(
                "- pod {} cannot pull its image {image:?} ({}). Build and push the image (README: Kubernetes) and pass it with --image, or give the namespace an image pull secret.",
                p.name,
                p.reason.clone().unwrap_or_default()
            ),
            Some("CrashLoopBackOff") => {
                let tail = self.log_tail(&p.name, true, 15).await;
                format!(
                    "- pod {} is crash-looping ({} restarts, {}); its last log lines:\n{}",
                    p.name,
                    p.restarts,
                    p.reason.clone().unwrap_or_default(),
                    indent(&tail)
                )
            }
            _ if p.unschedulable.is_some() => format!(
                "- pod {} cannot be scheduled: {}. Add nodes, or lower --users, --agents or --app-count.",
                p.name,
                // The scheduler's message ends with a period already.
                p.unschedulable.as_deref().unwrap_or_default().trim_end_matches('.')
            ),
            _ => {
                let tail = self.log_tail(&p.name, false, 10).await;
                format!(
                    "- pod {} is {} but not ready ({}); its last log lines:\n{}",
                    p.name,
                    p.phase,
                    p.reason.clone().unwrap_or_else(|| "its readiness probe fails".into()),
                    indent(&tail)
                )
            }
        }
    }

    /// The last `lines` of a pod's log (of its previous container if asked), or a note why not.
    pub async fn log_tail(&self, pod: &str, previous: bool, lines: i64) -> String {
        let lp = LogParams {
            previous,
            tail_lines: Some(lines),
            ..Default::default()
        };
        match self.pods_api().logs(pod, &lp).await {
            Ok(text) if text.trim().is_empty() => "(empty log)".into(),
            Ok(text) => text.trim_end().to_string(),
            Err(e) => format!(
                "(no log: {})",
                Error::from_kube("read the log", &self.namespace, e)
            ),
        }
    }

    /// Writes a pod's log to `out`: the last `tail` lines (or all), following it if asked.
    pub async fn logs(
        &self,
        pod: &str,
        container: Option<&str>,
        follow: bool,
        tail: Option<i64>,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<()> {
        let lp = LogParams {
            container: container.map(str::to_string),
            follow,
            tail_lines: tail,
            ..Default::default()
        };
        let stream = self
            .pods_api()
            .log_stream(pod, &lp)
            .await
            .map_err(self.kube_err(format!("read the log of pod {pod}")))?;
        let mut lines = std::pin::pin!(stream.lines());
        while let Some(line) = lines.next().await {
            let line = line.map_err(|source| Error::Io {
                action: format!("reading the log of pod {pod}"),
                source,
            })?;
            let io = |source| Error::Io {
                action: "writing the log".into(),
                source,
            };
            out.write_all(line.as_bytes()).await.map_err(io)?;
            out.write_all(b"\n").await.map_err(io)?;
        }
        out.flush().await.map_err(|source| Error::Io {
            action: "writing the log".into(),
            source,
        })
    }

    /// Forwards a new `127.0.0.1` port to `port` of `pod`: each connection to it opens its own
    /// port-forward stream through the API server. Nothing is exposed outside this machine.
    pub async fn forward(&self, pod: &str, port: u16) -> Result<Forward> {
        // Fail here, not on the first connection, when the pod does not exist.
        self.pods_api()
            .get(pod)
            .await
            .map_err(self.kube_err(format!("read pod {pod}")))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| Error::Io {
                action: "opening a local port for a port-forward".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            action: "reading the port-forward's address".into(),
            source,
        })?;
        let api = self.pods_api();
        let pod = pod.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let api = api.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    let Ok(mut pf) = api.portforward(&pod, &[port]).await else {
                        tracing::warn!(pod, port, "port-forward refused");
                        return;
                    };
                    if let Some(mut upstream) = pf.take_stream(port) {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                    pf.abort();
                });
            }
        });
        Ok(Forward { addr, task })
    }

    /// Runs `argv` in `container` of `pod` with the given streams (a TTY if asked); returns the
    /// command's exit code.
    pub async fn exec(
        &self,
        pod: &str,
        container: &str,
        argv: &[String],
        tty: bool,
        io: ExecIo,
    ) -> Result<i32> {
        let ap = AttachParams::default()
            .container(container)
            .stdin(io.stdin.is_some())
            .stdout(true)
            .stderr(!tty)
            .tty(tty);
        let mut proc = self
            .pods_api()
            .exec(pod, argv.to_vec(), &ap)
            .await
            .map_err(self.kube_err(format!("run a command in pod {pod}")))?;
        let status = proc.take_status();
        let ExecIo {
            stdin,
            mut stdout,
            mut stderr,
        } = io;
        if let (Some(mut from), Some(mut to)) = (stdin, proc.stdin()) {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            });
        }
        let out = proc.stdout().map(|mut r| async move {
            let _ = tokio::io::copy(&mut r, &mut stdout).await;
            let _ = stdout.flush().await;
        });
        let err = proc.stderr().map(|mut r| async move {
            let _ = tokio::io::copy(&mut r, &mut stderr).await;
            let _ = stderr.flush().await;
        });
        let copies = async {
            if let Some(o) = out {
                o.await;
            }
        };
        let copies_err = async {
            if let Some(e) = err {
                e.await;
            }
        };
        let (_, _, status) = tokio::join!(copies, copies_err, async {
            match status {
                Some(s) => s.await,
                None => None,
            }
        });
        Ok(exit_code(status.as_ref()))
    }

    /// Runs `argv` in a pod without input and returns its exit code and standard output.
    pub async fn exec_output(
        &self,
        pod: &str,
        container: &str,
        argv: &[String],
    ) -> Result<(i32, Vec<u8>)> {
        let (reader, writer) = tokio::io::duplex(1 << 16);
        let collect = tokio::spawn(async move {
            let mut reader = reader;
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf).await;
            buf
        });
        let code = self
            .exec(
                pod,
                container,
                argv,
                false,
                ExecIo {
                    stdin: None,
                    stdout: Box::new(writer),
                    stderr: Box::new(tokio::io::sink()),
                },
            )
            .await?;
        let out = collect.await.unwrap_or_default();
        Ok((code, out))
    }

    /// Deletes the cluster: its namespace when it owns it, else every object carrying its
    /// labels (and the database's volume claims). Waits up to `timeout` until they are gone and
    /// returns what is left.
    pub async fn delete(
        &self,
        name: &str,
        cluster_id: &str,
        own_namespace: bool,
        timeout: Duration,
    ) -> Result<Vec<Leftover>> {
        let deadline = Instant::now() + timeout;
        let selector = manifests::cluster_selector(name, cluster_id);
        if own_namespace {
            let api: Api<Namespace> = Api::all(self.client.clone());
            match api
                .delete(&self.namespace, &DeleteParams::foreground())
                .await
            {
                Ok(_) => {}
                // Already terminating (an earlier delete): the API server answers 409 Conflict
                // until the namespace is gone; wait for it all the same.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) if not_found(&e) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(Error::from_kube(
                        format!("delete namespace {:?}", self.namespace),
                        &self.namespace,
                        e,
                    ))
                }
            }
            loop {
                match api.get(&self.namespace).await {
                    Err(e) if not_found(&e) => return Ok(Vec::new()),
                    Err(e) => {
                        return Err(Error::from_kube(
                            "read the namespace being deleted",
                            &self.namespace,
                            e,
                        ))
                    }
                    Ok(_) if Instant::now() >= deadline => {
                        let mut left = self.leftovers(&selector).await?;
                        left.insert(
                            0,
                            Leftover {
                                kind: "Namespace".into(),
                                name: self.namespace.clone(),
                            },
                        );
                        return Ok(left);
                    }
                    Ok(_) => tokio::time::sleep(DELETE_POLL).await,
                }
            }
        }
        let lp = ListParams::default().labels(&selector);
        let dp = DeleteParams::background();
        for kind in Kind::DELETE_ORDER {
            self.dynamic_api(kind)
                .delete_collection(&dp, &lp)
                .await
                .map_err(self.kube_err(format!("delete the cluster's {}s", kind.name())))?;
        }
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.namespace);
        pvcs.delete_collection(&dp, &lp)
            .await
            .map_err(self.kube_err("delete the cluster's PersistentVolumeClaims"))?;
        loop {
            let left = self.leftovers(&selector).await?;
            if left.is_empty() || Instant::now() >= deadline {
                return Ok(left);
            }
            tokio::time::sleep(DELETE_POLL).await;
        }
    }

    /// Objects of the cluster (by label) that still exist in the namespace.
    async fn leftovers(&self, selector: &str) -> Result<Vec<Leftover>> {
        let lp = ListParams::default().labels(selector);
        let mut out = Vec::new();
        let pods = self
            .pods_api()
            .list(&lp)
            .await
            .map_err(self.kube_err("list the cluster's pods"))?;
        for p in pods.items {
            out.push(Leftover {
                kind: "Pod".into(),
                name: p.metadata.name.unwrap_or_default(),
            });
        }
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let list = pvcs
            .list(&lp)
            .await
            .map_err(self.kube_err("list the cluster's PersistentVolumeClaims"))?;
        for p in list.items {
            out.push(Leftover {
                kind: "PersistentVolumeClaim".into(),
                name: p.metadata.name.unwrap_or_default(),
            });
        }
        for kind in Kind::DELETE_ORDER {
            let list = self
                .dynamic_api(kind)
                .list(&lp)
                .await
                .map_err(self.kube_err(format!("list the cluster's {}s", kind.name())))?;
            for o in list.items {
                out.push(Leftover {
                    kind: kind.name().into(),
                    name: o.metadata.name.unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}

/// Expected pods not (yet) ready, as `server: 1 of 2 ready`.
fn not_ready(spec: &ClusterSpec, pods: &[PodInfo]) -> Vec<String> {
    expected(spec)
        .into_iter()
        .filter_map(|(component, want)| {
            let ready = pods
                .iter()
                .filter(|p| p.component == component && p.ready && !p.terminating)
                .count() as u32;
            (ready < want).then(|| format!("{component}: {ready} of {want} ready"))
        })
        .collect()
}

fn expected(spec: &ClusterSpec) -> Vec<(&'static str, u32)> {
    let mut v = vec![("server", spec.app_count), ("agent", spec.agents)];
    if matches!(spec.database, manifests::DatabaseSpec::Internal { .. }) {
        v.insert(0, ("postgres", 1));
    }
    if spec.prometheus.is_some() {
        v.push(("prometheus", 1));
        if spec.grafana.is_some() {
            v.push(("grafana", 1));
        }
    }
    v
}

/// One progress line: ready counts per component.
fn summary(spec: &ClusterSpec, pods: &[PodInfo]) -> String {
    expected(spec)
        .into_iter()
        .map(|(c, want)| {
            let ready = pods
                .iter()
                .filter(|p| p.component == c && p.ready && !p.terminating)
                .count();
            format!("{c} {ready}/{want}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A command's exit code from the API server's final status.
fn exit_code(status: Option<&MetaStatus>) -> i32 {
    let Some(s) = status else {
        return 1;
    };
    if s.status.as_deref() == Some("Success") {
        return 0;
    }
    s.details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse().ok())
        .unwrap_or(1)
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    fn spec() -> ClusterSpec {
        ClusterSpec {
            name: "k1".into(),
            cluster_id: "id1".into(),
            namespace: "ltops-k1".into(),
            version: "0.1.0".into(),
            image: "img".into(),
            app_count: 2,
            agents: 4,
            database: manifests::DatabaseSpec::Internal {
                storage_class: None,
                storage: "10Gi".into(),
                image: "postgres".into(),
            },
            users: 20_000,
            prometheus: Some(manifests::PROMETHEUS_IMAGE.into()),
            grafana: Some(manifests::GRAFANA_IMAGE.into()),
        }
    }

    #[test]
    fn too_small_a_cluster_says_how_much_is_missing() {
        let small = Capacity {
            nodes: vec![(
                "n1".into(),
                Resources {
                    cpu_m: 2000,
                    memory_mi: 4096,
                },
            )],
        };
        let e = small.check(&spec()).unwrap_err().to_string();
        assert!(e.contains("too small for 20000 users"), "{e}");
        assert!(e.contains("missing"), "{e}");
        let big = Capacity {
            nodes: vec![
                (
                    "n1".into(),
                    Resources {
                        cpu_m: 8000,
                        memory_mi: 16384,
                    },
                ),
                (
                    "n2".into(),
                    Resources {
                        cpu_m: 8000,
                        memory_mi: 16384,
                    },
                ),
            ],
        };
        big.check(&spec()).unwrap();
        let narrow = Capacity {
            nodes: (0..20)
                .map(|i| {
                    (
                        format!("n{i}"),
                        Resources {
                            cpu_m: 500,
                            memory_mi: 1024,
                        },
                    )
                })
                .collect(),
        };
        let e = narrow.check(&spec()).unwrap_err().to_string();
        assert!(e.contains("largest pod"), "{e}");
        assert!(Capacity { nodes: vec![] }.check(&spec()).is_err());
    }

    #[test]
    fn exit_codes_come_from_the_status_causes() {
        let ok = MetaStatus {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(exit_code(Some(&ok)), 0);
        let fail = MetaStatus {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("7".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code(Some(&fail)), 7);
        assert_eq!(exit_code(None), 1);
    }
}
