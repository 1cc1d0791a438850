//! A scripted Kubernetes API server for the `--type kubernetes` tests. No real API server can run
//! on the test machines, so this one runs inside the test process on `127.0.0.1` and speaks as
//! much of the Kubernetes REST and WebSocket protocols as `kube` (and so `ltops-kube`) uses:
//!
//! - server-side apply (`PATCH` with `application/apply-patch+yaml` and `fieldManager`), `GET`
//!   of one object or a list (`labelSelector` with `k=v`, `k==v`, `k!=v`, `k`), `DELETE` of one
//!   object or a collection, and a `watch=true` list that streams newline-delimited events;
//!   objects live in memory, keyed by (plural, namespace, name), with `uid`,
//!   `resourceVersion` (one counter for everything) and `creationTimestamp` added;
//! - errors as real `Status` bodies (`404 NotFound` names the object the way the API server
//!   does), plus failures scripted with [`FakeKube::fail_next`];
//! - `GET /api/v1/nodes`: two nodes of 8 CPUs and 32 GiB allocatable;
//! - `pods/log` (`tailLines`, `follow`), and the WebSocket subresources `pods/exec` and
//!   `pods/portforward` with the `v5.channel.k8s.io` / `v4.channel.k8s.io` framing.
//!
//! It also stands in for the controllers and the kubelet: applying a Deployment `…-server` or a
//! StatefulSet `…-agent` / `…-postgres` creates its pods (a StatefulSet's `NAME-0`, `NAME-1`, …,
//! a Deployment's `NAME-<hash>-<5 chars>`; the postgres StatefulSet's volume claims too) and runs
//! the real binaries as local processes:
//!
//! - each agent pod is one `loadtest-agent serve` on a free loopback port, with the
//!   `control-token` of the Secret its template mounts, its own results directory and
//!   `--agent-id POD`;
//! - a server Deployment is ONE `chat-server` whatever its replicas (every server pod is
//!   backed by it), listening on the port chosen at [`FakeKube::start`] for the first server
//!   Deployment (see [`FakeKube::server_url`]). The fake ignores the PostgreSQL URL in the
//!   Deployment: the server uses SQLite in a data directory;
//! - the postgres pod runs nothing and is ready at once.
//!
//! A pod becomes ready once its process answers its health route (agent `GET /healthz`,
//! server `GET /api/v4/system/ping`). A process that exits is not restarted: its pods are
//! reported the way a real kubelet reports a container that keeps crashing
//! (`CrashLoopBackOff`, 3 restarts, the exit code in `lastState`). Re-applying a workload keeps
//! its processes; changing `replicas` adds or removes pods. Deleting a workload, a pod or a
//! namespace (everything in it, at once) stops the processes. Pods are never recreated.
//!
//! `exec` runs the command as a local process in the pod's scratch directory (an agent pod's
//! results directory). For agent pods the container paths in its arguments are mapped to the
//! local ones: `/results` to the results directory, `/etc/ltops/control-token` to the token
//! file, `/usr/local/bin/` to the binaries' directory (which also leads `PATH`). There is no
//! TTY: `tty=true` only sends stderr to the stdout channel.
//!
//! Port-forwards reach the pod's process: an agent's 8070, a server's 8065 (API) and 8067
//! (metrics); any other port gets the error channel's message, as from a real kubelet.
//!
//! Every process's output goes to a log file under the scratch directory (`NS/POD/log` for an
//! agent, `NS/DEPLOYMENT.log` for the server, shared by its pods), which `pods/log` serves.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, watch};

/// The container ports the fake knows how to forward.
const AGENT_PORT: u16 = 8070;
const SERVER_PORT: u16 = 8065;
const SERVER_METRICS_PORT: u16 = 8067;
/// How long a watch request without news stays open at most.
const WATCH_HOLD: Duration = Duration::from_secs(2);
/// How long `follow=true` logs stream at most.
const FOLLOW_LIMIT: Duration = Duration::from_secs(30);
/// How long a process may take to answer its health route before the fake stops probing.
const PROBE_LIMIT: Duration = Duration::from_secs(120);

/// One request the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string (percent-encoded), empty when none.
    pub query: String,
    /// The `fieldManager` query parameter, if any.
    pub field_manager: Option<String>,
}

struct Failure {
    method: String,
    path_contains: String,
    status: u16,
    reason: String,
    message: String,
}

/// The scripted API server; see the module documentation.
pub struct FakeKube {
    inner: Arc<Inner>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

struct Inner {
    bins: PathBuf,
    dir: PathBuf,
    server_port: u16,
    state: Mutex<St>,
    /// The latest resourceVersion, for watches.
    changes: watch::Sender<u64>,
}

#[derive(Clone, Debug, PartialEq)]
enum PodState {
    /// The process runs but does not answer yet.
    Starting,
    Ready,
    /// The container cannot start (reason, message).
    Waiting(String, String),
    /// The process exited with this code.
    Crashed(i32),
}

struct PodRt {
    /// (plural, name) of the workload.
    owner: (String, String),
    proc_key: Option<String>,
    dir: PathBuf,
    log: PathBuf,
    /// Container paths mapped to local ones for exec.
    paths: Vec<(String, String)>,
    state: PodState,
    started: String,
}

struct Proc {
    ns: String,
    /// Container port → local port.
    ports: HashMap<u16, u16>,
    log: PathBuf,
    ready: bool,
    exited: Option<i32>,
    kill: Option<oneshot::Sender<()>>,
    pid: u32,
}

type Key = (String, String, String);

#[derive(Default)]
struct St {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    /// resourceVersion at creation, to tell ADDED from MODIFIED.
    created: BTreeMap<Key, u64>,
    /// Deleted objects: (plural, ns, rv of the deletion, object).
    tombstones: Vec<(String, String, u64, Value)>,
    requests: Vec<Seen>,
    failures: Vec<Failure>,
    pods: BTreeMap<(String, String), PodRt>,
    procs: BTreeMap<String, Proc>,
    /// Every process ever started: pid and "it has been reaped".
    all: Vec<(u32, watch::Receiver<bool>)>,
}

impl St {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }
    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid)
    }
}

impl FakeKube {
    /// Starts the server; `bins` holds `chat-server` and `loadtest-agent` (target/debug).
    /// `dir` is a scratch directory (kubeconfig, logs, data).
    pub async fn start(bins: &Path, dir: &Path) -> FakeKube {
        std::fs::create_dir_all(dir).unwrap();
        for b in ["chat-server", "loadtest-agent"] {
            assert!(
                bins.join(b).is_file(),
                "{} is missing: run `cargo build -p chat-server -p loadtest-agent --bins`",
                bins.join(b).display()
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changes, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            bins: bins.to_path_buf(),
            dir: dir.to_path_buf(),
            server_port: free_port(),
            state: Mutex::new(St::default()),
            changes,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\npreferences: {{}}\n"
            ),
        )
        .unwrap();
        FakeKube {
            inner,
            addr,
            kubeconfig,
            server,
        }
    }

    /// The kubeconfig (in `dir`): one context `fake`, current, whose server is this fake over
    /// plain HTTP with a token user.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }

    /// `http://127.0.0.1:PORT` of the API server itself.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` where the chat-server of a server Deployment listens: the port is
    /// chosen at start, so it is known before deploy (`--server-url`). It goes to the first
    /// server Deployment applied while no other server runs (a second cluster's server at the
    /// same time gets another port).
    pub fn server_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.server_port)
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// Makes the next request whose method is `method` and whose path contains `path_contains`
    /// answer `status` with a `Status` body of `reason` and `message` (once; scripted failures
    /// are used in the order they were added).
    pub fn fail_next(
        &self,
        method: &str,
        path_contains: &str,
        status: u16,
        reason: &str,
        message: &str,
    ) {
        self.inner.state.lock().unwrap().failures.push(Failure {
            method: method.to_uppercase(),
            path_contains: path_contains.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        });
    }

    /// Creates a namespace, as an administrator would before a cluster that shares it.
    pub fn create_namespace(&self, name: &str) {
        let mut st = self.inner.state.lock().unwrap();
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        store(&mut st, "namespaces", "", name, body, None);
        let rv = st.rv;
        drop(st);
        self.inner.changes.send_replace(rv);
    }

    /// The objects stored of `plural` in `namespace` ("" for cluster-scoped ones), by name.
    pub fn objects(&self, plural: &str, namespace: &str) -> Vec<Value> {
        let st = self.inner.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The processes running now: (what, pid), as `agent/NS/POD` or `server/NS/DEPLOYMENT`.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let st = self.inner.state.lock().unwrap();
        st.procs
            .iter()
            .filter(|(_, p)| p.exited.is_none())
            .map(|(k, p)| (k.clone(), p.pid))
            .collect()
    }

    /// The local port behind each container port of a pod whose process runs (container port →
    /// port on 127.0.0.1); empty for a pod without a process.
    pub fn pod_ports(&self, namespace: &str, pod: &str) -> HashMap<u16, u16> {
        let st = self.inner.state.lock().unwrap();
        st.pods
            .get(&(namespace.to_string(), pod.to_string()))
            .and_then(|p| p.proc_key.as_ref())
            .and_then(|k| st.procs.get(k))
            .map(|p| p.ports.clone())
            .unwrap_or_default()
    }

    /// The log file of a pod's process, if the pod exists.
    pub fn log_file(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        let st = self.inner.state.lock().unwrap();
        st.pods
            .get(&(namespace.to_string(), pod.to_string()))
            .map(|p| p.log.clone())
    }

    /// Stops every process it started (waiting until each is gone) and the server.
    pub async fn stop(self) {
        self.server.abort();
        let waits = self.inner.kill_all();
        for mut w in waits {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.wait_for(|d| *d)).await;
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        let waits = self.inner.kill_all();
        let st = self.inner.state.lock().unwrap();
        for (pid, done) in &st.all {
            if !*done.borrow() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        drop(waits);
    }
}

impl Inner {
    /// Sends every process its kill; returns the receivers that say when each is reaped.
    fn kill_all(&self) -> Vec<watch::Receiver<bool>> {
        let mut st = self.state.lock().unwrap();
        for (_, p) in std::mem::take(&mut st.procs) {
            if let Some(k) = p.kill {
                let _ = k.send(());
            }
        }
        st.all.iter().map(|(_, d)| d.clone()).collect()
    }

    fn notify(&self, st: &St) {
        self.changes.send_replace(st.rv);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Small helpers: time, names, responses.
// ---------------------------------------------------------------------------------------------

/// Now as RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `len` characters of the alphabet Kubernetes uses for generated names.
fn name_chars(mut n: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            n ^= 0x9e37_79b9_7f4a_7c15;
            c
        })
        .collect()
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn not_found(plural: &str, name: &str) -> Response {
    // The API server names a grouped resource `plural.group`.
    let what = match kind_of(plural).map(|(_, v, _)| v.split_once('/')) {
        Some(Some((group, _))) => format!("{plural}.{group}"),
        _ => plural.to_string(),
    };
    status_response(404, "NotFound", &format!("{what} \"{name}\" not found"))
}

/// Kind and apiVersion of a plural the fake serves, and whether it is namespaced.
fn kind_of(plural: &str) -> Option<(&'static str, &'static str, bool)> {
    Some(match plural {
        "namespaces" => ("Namespace", "v1", false),
        "nodes" => ("Node", "v1", false),
        "secrets" => ("Secret", "v1", true),
        "configmaps" => ("ConfigMap", "v1", true),
        "services" => ("Service", "v1", true),
        "pods" => ("Pod", "v1", true),
        "persistentvolumeclaims" => ("PersistentVolumeClaim", "v1", true),
        "serviceaccounts" => ("ServiceAccount", "v1", true),
        "endpoints" => ("Endpoints", "v1", true),
        "events" => ("Event", "v1", true),
        "limitranges" => ("LimitRange", "v1", true),
        "resourcequotas" => ("ResourceQuota", "v1", true),
        "statefulsets" => ("StatefulSet", "apps/v1", true),
        "deployments" => ("Deployment", "apps/v1", true),
        "replicasets" => ("ReplicaSet", "apps/v1", true),
        "daemonsets" => ("DaemonSet", "apps/v1", true),
        "networkpolicies" => ("NetworkPolicy", "networking.k8s.io/v1", true),
        "ingresses" => ("Ingress", "networking.k8s.io/v1", true),
        "poddisruptionbudgets" => ("PodDisruptionBudget", "policy/v1", true),
        "roles" => ("Role", "rbac.authorization.k8s.io/v1", true),
        "rolebindings" => ("RoleBinding", "rbac.authorization.k8s.io/v1", true),
        "horizontalpodautoscalers" => ("HorizontalPodAutoscaler", "autoscaling/v2", true),
        "jobs" => ("Job", "batch/v1", true),
        _ => return None,
    })
}

/// What a path names.
struct Target {
    plural: String,
    /// "" for cluster-scoped objects.
    ns: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest): (String, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".into(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let t = match rest {
        ["namespaces"] => Target {
            plural: "namespaces".into(),
            ns: String::new(),
            name: None,
            sub: None,
        },
        ["namespaces", name] if group_version == "v1" => Target {
            plural: "namespaces".into(),
            ns: String::new(),
            name: Some(name.to_string()),
            sub: None,
        },
        ["nodes"] => Target {
            plural: "nodes".into(),
            ns: String::new(),
            name: None,
            sub: None,
        },
        ["nodes", name] => Target {
            plural: "nodes".into(),
            ns: String::new(),
            name: Some(name.to_string()),
            sub: None,
        },
        ["namespaces", ns, plural] => Target {
            plural: plural.to_string(),
            ns: ns.to_string(),
            name: None,
            sub: None,
        },
        ["namespaces", ns, plural, name] => Target {
            plural: plural.to_string(),
            ns: ns.to_string(),
            name: Some(name.to_string()),
            sub: None,
        },
        ["namespaces", ns, plural, name, sub] => Target {
            plural: plural.to_string(),
            ns: ns.to_string(),
            name: Some(name.to_string()),
            sub: Some(sub.to_string()),
        },
        _ => return None,
    };
    let (_, api_version, namespaced) = kind_of(&t.plural)?;
    if api_version != group_version || (namespaced == t.ns.is_empty()) {
        return None;
    }
    Some(t)
}

/// A label selector of equality terms: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k`.
fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.trim().is_empty()) else {
        return true;
    };
    let labels = &obj["metadata"]["labels"];
    sel.split(',').map(str::trim).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term].is_null()
        }
    })
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Stores `body` as the object (plural, ns, name), keeping the identity of an existing one.
/// Returns the stored object and whether it was created.
fn store(
    st: &mut St,
    plural: &str,
    ns: &str,
    name: &str,
    mut body: Value,
    manager: Option<&str>,
) -> (Value, bool) {
    let key = (plural.to_string(), ns.to_string(), name.to_string());
    let old = st.objects.get(&key).cloned();
    let rv = st.next_rv();
    let (uid, created_at, generation) = match &old {
        Some(o) => (
            o["metadata"]["uid"].clone(),
            o["metadata"]["creationTimestamp"].clone(),
            o["metadata"]["generation"].as_i64().unwrap_or(1)
                + i64::from(o.get("spec") != body.get("spec")),
        ),
        None => (json!(st.next_uid()), json!(now()), 1),
    };
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    let (kind, api_version, namespaced) = kind_of(plural).unwrap_or(("Unknown", "v1", true));
    body["kind"] = json!(kind);
    body["apiVersion"] = json!(api_version);
    let m = &mut body["metadata"];
    m["name"] = json!(name);
    if namespaced {
        m["namespace"] = json!(ns);
    }
    m["uid"] = uid;
    m["creationTimestamp"] = created_at;
    m["resourceVersion"] = json!(rv.to_string());
    m["generation"] = json!(generation);
    if let Some(manager) = manager {
        m["managedFields"] = json!([{
            "manager": manager, "operation": "Apply", "apiVersion": api_version,
            "time": now(), "fieldsType": "FieldsV1", "fieldsV1": {},
        }]);
    }
    if plural == "namespaces" {
        m["labels"]["kubernetes.io/metadata.name"] = json!(name);
        body["spec"] = json!({"finalizers": ["kubernetes"]});
        body["status"] = json!({"phase": "Active"});
    }
    if plural == "persistentvolumeclaims" && body["status"].is_null() {
        body["status"] = json!({"phase": "Bound", "accessModes": body["spec"]["accessModes"].clone(),
            "capacity": body["spec"]["resources"]["requests"].clone()});
    }
    // Keep a status the fake computed (pods, workloads) across re-applies without one.
    if let (Some(o), true) = (&old, body.get("status").is_none()) {
        if let Some(s) = o.get("status") {
            body["status"] = s.clone();
        }
    }
    if old.is_none() {
        st.created.insert(key.clone(), rv);
    }
    st.objects.insert(key, body.clone());
    (body, old.is_none())
}

/// Removes an object, leaving a tombstone for watches.
fn remove(st: &mut St, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let key = (plural.to_string(), ns.to_string(), name.to_string());
    let mut obj = st.objects.remove(&key)?;
    st.created.remove(&key);
    let rv = st.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    obj["metadata"]["deletionTimestamp"] = json!(now());
    st.tombstones
        .push((plural.to_string(), ns.to_string(), rv, obj.clone()));
    if plural == "pods" {
        st.pods.remove(&(ns.to_string(), name.to_string()));
    }
    if matches!(plural, "deployments" | "statefulsets") {
        let owned: Vec<String> = st
            .pods
            .iter()
            .filter(|((pns, _), rt)| {
                pns == ns && rt.owner == (plural.to_string(), name.to_string())
            })
            .map(|((_, p), _)| p.clone())
            .collect();
        for p in owned {
            remove(st, "pods", ns, &p);
        }
    }
    Some(obj)
}

/// Stops processes that no pod uses any more.
fn gc_procs(st: &mut St) {
    let used: BTreeSet<String> = st
        .pods
        .values()
        .filter_map(|p| p.proc_key.clone())
        .collect();
    let unused: Vec<String> = st
        .procs
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    for k in unused {
        if let Some(mut p) = st.procs.remove(&k) {
            if let Some(kill) = p.kill.take() {
                let _ = kill.send(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake kubelet: pods and processes.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Agent,
    /// Pods without a process, ready at once (postgres and anything else).
    Idle,
}

fn pod_status(spec: &Value, state: &PodState, started: &str) -> Value {
    let ready = *state == PodState::Ready;
    let t = now();
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let mut s = json!({
                "name": c["name"], "image": c["image"], "imageID": "",
                "containerID": format!("fake://{}", fnv(&format!("{}{started}", c["name"]))),
                "ready": ready, "restartCount": 0, "started": matches!(state, PodState::Starting | PodState::Ready),
            });
            match state {
                PodState::Starting | PodState::Ready => {
                    s["state"] = json!({"running": {"startedAt": started}});
                }
                PodState::Waiting(reason, message) => {
                    s["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    s["started"] = json!(false);
                }
                PodState::Crashed(code) => {
                    s["restartCount"] = json!(3);
                    s["state"] = json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off restarting failed container {} (the fake API server does not restart processes)", c["name"].as_str().unwrap_or(""))}});
                    s["lastState"] = json!({"terminated": {"exitCode": code,
                        "reason": if *code == 0 { "Completed" } else { "Error" },
                        "startedAt": started, "finishedAt": t}});
                }
            }
            s
        })
        .collect();
    let b = |x: bool| if x { "True" } else { "False" };
    let phase = match state {
        PodState::Waiting(..) => "Pending",
        _ => "Running",
    };
    let mut ready_cond = json!({"type": "Ready", "status": b(ready), "lastTransitionTime": t});
    if !ready {
        ready_cond["reason"] = json!("ContainersNotReady");
        ready_cond["message"] = json!("containers with unready status");
    }
    json!({
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": b(ready), "lastTransitionTime": t},
            ready_cond,
        ],
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": started,
        "qosClass": "Burstable",
        "containerStatuses": statuses,
    })
}

/// Sets a pod's state, updating its object when it changes.
fn set_pod_state(st: &mut St, ns: &str, pod: &str, state: PodState) {
    let k = (ns.to_string(), pod.to_string());
    let Some(rt) = st.pods.get_mut(&k) else {
        return;
    };
    if rt.state == state {
        return;
    }
    rt.state = state.clone();
    let started = rt.started.clone();
    let rv = st.next_rv();
    let key = ("pods".to_string(), ns.to_string(), pod.to_string());
    if let Some(obj) = st.objects.get_mut(&key) {
        obj["status"] = pod_status(&obj["spec"], &state, &started);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    }
}

fn proc_state(st: &St, key: &str) -> PodState {
    match st.procs.get(key) {
        Some(p) if p.exited.is_some() => PodState::Crashed(p.exited.unwrap_or(1)),
        Some(p) if p.ready => PodState::Ready,
        Some(_) => PodState::Starting,
        None => PodState::Waiting(
            "ContainerCreating".into(),
            "the fake kubelet has not started it".into(),
        ),
    }
}

fn secret_value(st: &St, ns: &str, secret: &str, key: &str) -> Option<String> {
    let obj = st
        .objects
        .get(&("secrets".to_string(), ns.to_string(), secret.to_string()))?;
    if let Some(v) = obj["data"][key].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
        return String::from_utf8(bytes).ok();
    }
    obj["stringData"][key].as_str().map(str::to_string)
}

/// Brings every workload of `ns` to its pods and processes.
fn reconcile_ns(inner: &Arc<Inner>, st: &mut St, ns: &str) {
    let workloads: Vec<(String, String, Value)> = st
        .objects
        .iter()
        .filter(|((p, n, _), _)| n == ns && matches!(p.as_str(), "deployments" | "statefulsets"))
        .map(|((p, _, name), v)| (p.clone(), name.clone(), v.clone()))
        .collect();
    for (plural, name, obj) in workloads {
        reconcile(inner, st, ns, &plural, &name, &obj);
    }
    gc_procs(st);
}

fn reconcile(inner: &Arc<Inner>, st: &mut St, ns: &str, plural: &str, name: &str, obj: &Value) {
    let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let template = &obj["spec"]["template"];
    let role = match plural {
        "deployments" if name.ends_with("-server") => Role::Server,
        "statefulsets" if name.ends_with("-agent") => Role::Agent,
        _ => Role::Idle,
    };
    let desired: Vec<String> = (0..replicas)
        .map(|i| {
            if plural == "statefulsets" {
                format!("{name}-{i}")
            } else {
                format!(
                    "{name}-{}-{}",
                    name_chars(fnv(name), 10),
                    name_chars(fnv(&format!("{name}/{i}")), 5)
                )
            }
        })
        .collect();
    let owner = (plural.to_string(), name.to_string());
    let extra: Vec<String> = st
        .pods
        .iter()
        .filter(|((pns, p), rt)| pns == ns && rt.owner == owner && !desired.contains(p))
        .map(|((_, p), _)| p.clone())
        .collect();
    for p in extra {
        remove(st, "pods", ns, &p);
    }
    let ns_dir = inner.dir.join(ns);
    // The server's one process, shared by its pods.
    let server_key = format!("server/{ns}/{name}");
    if role == Role::Server && replicas > 0 && !st.procs.contains_key(&server_key) {
        // The fixed port unless another server holds it now.
        let taken = st
            .procs
            .values()
            .any(|p| p.exited.is_none() && p.ports.get(&SERVER_PORT) == Some(&inner.server_port));
        let port = if taken {
            free_port()
        } else {
            inner.server_port
        };
        let metrics = free_port();
        let data = ns_dir.join(format!("{name}-data"));
        let log = ns_dir.join(format!("{name}.log"));
        std::fs::create_dir_all(&data).unwrap();
        let args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        spawn_proc(
            inner,
            st,
            &server_key,
            ns,
            inner.bins.join("chat-server"),
            args,
            vec![],
            &ns_dir,
            log,
            format!("http://127.0.0.1:{port}/api/v4/system/ping"),
            HashMap::from([(SERVER_PORT, port), (SERVER_METRICS_PORT, metrics)]),
        );
    }
    // The agents' token, from the Secret their template mounts.
    let (secret, secret_key) = template["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| {
            let s = &v["secret"];
            let name = s["secretName"].as_str()?;
            let key = s["items"][0]["key"].as_str().unwrap_or("control-token");
            Some((name.to_string(), key.to_string()))
        })
        .unwrap_or_else(|| {
            (
                format!("{}-secrets", name.trim_end_matches("-agent")),
                "control-token".into(),
            )
        });
    for pod in &desired {
        let pk = (ns.to_string(), pod.clone());
        let pod_dir = ns_dir.join(pod);
        let results = pod_dir.join("results");
        let token_file = pod_dir.join("control-token");
        let (proc_key, log, paths) = match role {
            Role::Server => (
                Some(server_key.clone()),
                ns_dir.join(format!("{name}.log")),
                vec![(
                    "/usr/local/bin/".to_string(),
                    format!("{}/", inner.bins.display()),
                )],
            ),
            Role::Agent => (
                Some(format!("agent/{ns}/{pod}")),
                pod_dir.join("log"),
                vec![
                    ("/results".to_string(), results.display().to_string()),
                    (
                        "/etc/ltops/control-token".to_string(),
                        token_file.display().to_string(),
                    ),
                    (
                        "/usr/local/bin/".to_string(),
                        format!("{}/", inner.bins.display()),
                    ),
                ],
            ),
            Role::Idle => (None, pod_dir.join("log"), vec![]),
        };
        if !st.pods.contains_key(&pk) {
            std::fs::create_dir_all(&results).unwrap();
            if role == Role::Idle {
                std::fs::write(
                    &log,
                    "the fake API server runs no process for this pod (its chat-server uses SQLite)\n",
                )
                .unwrap();
            }
            let started = now();
            let mut labels = template["metadata"]["labels"].clone();
            if plural == "statefulsets" {
                labels["statefulset.kubernetes.io/pod-name"] = json!(pod);
                labels["apps.kubernetes.io/pod-index"] =
                    json!(pod.rsplit('-').next().unwrap_or("0"));
            }
            let mut spec = template["spec"].clone();
            spec["nodeName"] = json!("fake-node-1");
            spec["restartPolicy"] = json!("Always");
            let owner_kind = if plural == "statefulsets" {
                "StatefulSet"
            } else {
                "ReplicaSet"
            };
            let body = json!({
                "metadata": {
                    "labels": labels,
                    "annotations": template["metadata"]["annotations"].clone(),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind,
                        "name": name, "uid": obj["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": spec,
            });
            let (_, _) = store(st, "pods", ns, pod, body, None);
            st.pods.insert(
                pk.clone(),
                PodRt {
                    owner: owner.clone(),
                    proc_key: proc_key.clone(),
                    dir: if role == Role::Agent {
                        results.clone()
                    } else {
                        pod_dir.clone()
                    },
                    log: log.clone(),
                    paths,
                    // Differs from any real state, so the first set_pod_state writes the status.
                    state: PodState::Waiting(String::new(), String::new()),
                    started,
                },
            );
        }
        let state = match role {
            Role::Idle => PodState::Ready,
            Role::Server => proc_state(st, &server_key),
            Role::Agent => {
                let key = format!("agent/{ns}/{pod}");
                if !st.procs.contains_key(&key) {
                    if let Some(token) = secret_value(st, ns, &secret, &secret_key) {
                        std::fs::write(&token_file, token).unwrap();
                        let port = free_port();
                        let args = vec![
                            "serve".to_string(),
                            "--listen".into(),
                            format!("127.0.0.1:{port}"),
                            "--token-file".into(),
                            token_file.display().to_string(),
                            "--results-dir".into(),
                            results.display().to_string(),
                            "--agent-id".into(),
                            pod.clone(),
                        ];
                        spawn_proc(
                            inner,
                            st,
                            &key,
                            ns,
                            inner.bins.join("loadtest-agent"),
                            args,
                            vec![("POD_NAME".into(), pod.clone())],
                            &results,
                            log.clone(),
                            format!("http://127.0.0.1:{port}/healthz"),
                            HashMap::from([(AGENT_PORT, port)]),
                        );
                    }
                }
                if st.procs.contains_key(&key) {
                    proc_state(st, &key)
                } else {
                    PodState::Waiting(
                        "CreateContainerConfigError".into(),
                        format!("secret \"{secret}\" not found"),
                    )
                }
            }
        };
        set_pod_state(st, ns, pod, state);
        // A StatefulSet's volume claims, kept when it goes (as Kubernetes does).
        if plural == "statefulsets" {
            for claim in obj["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let cname = format!(
                    "{}-{pod}",
                    claim["metadata"]["name"].as_str().unwrap_or("data")
                );
                let ckey = (
                    "persistentvolumeclaims".to_string(),
                    ns.to_string(),
                    cname.clone(),
                );
                if !st.objects.contains_key(&ckey) {
                    let mut labels = claim["metadata"]["labels"].clone();
                    if let Some(sel) = obj["spec"]["selector"]["matchLabels"].as_object() {
                        for (k, v) in sel {
                            labels[k] = v.clone();
                        }
                    }
                    let mut spec = claim["spec"].clone();
                    spec["volumeName"] = json!(format!("pvc-{}", name_chars(fnv(&cname), 12)));
                    store(
                        st,
                        "persistentvolumeclaims",
                        ns,
                        &cname,
                        json!({"metadata": {"labels": labels}, "spec": spec}),
                        None,
                    );
                }
            }
        }
    }
    // A little status on the workload itself.
    let ready = desired
        .iter()
        .filter(|p| {
            st.pods
                .get(&(ns.to_string(), (*p).clone()))
                .is_some_and(|r| r.state == PodState::Ready)
        })
        .count();
    let key = (plural.to_string(), ns.to_string(), name.to_string());
    if let Some(o) = st.objects.get_mut(&key) {
        let status = json!({"replicas": replicas, "readyReplicas": ready,
            "availableReplicas": ready, "observedGeneration": o["metadata"]["generation"]});
        o["status"] = status;
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_proc(
    inner: &Arc<Inner>,
    st: &mut St,
    key: &str,
    ns: &str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: &Path,
    log: PathBuf,
    health: String,
    ports: HashMap<u16, u16>,
) {
    std::fs::create_dir_all(cwd).unwrap();
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true);
    // The pod's configuration is what the fake passes, not the test process's environment.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("CHAT_SERVER_") || k.starts_with("LOADTEST_") || k.starts_with("LTOPS_") {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(env);
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = watch::channel(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::write(&log, format!("cannot start {}: {e}\n", program.display()));
            st.procs.insert(
                key.to_string(),
                Proc {
                    ns: ns.into(),
                    ports,
                    log,
                    ready: false,
                    exited: Some(127),
                    kill: None,
                    pid: 0,
                },
            );
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    st.all.push((pid, done_rx.clone()));
    st.procs.insert(
        key.to_string(),
        Proc {
            ns: ns.into(),
            ports,
            log,
            ready: false,
            exited: None,
            kill: Some(kill_tx),
            pid,
        },
    );
    // Its exit.
    let (inner2, key2) = (inner.clone(), key.to_string());
    tokio::spawn(async move {
        let code = tokio::select! {
            s = child.wait() => s.ok().and_then(|s| s.code()).unwrap_or(137),
            _ = kill_rx => {
                let _ = child.kill().await;
                137
            }
        };
        let _ = done_tx.send(true);
        let mut st = inner2.state.lock().unwrap();
        let Some(p) = st.procs.get_mut(&key2) else {
            return; // stopped on purpose: its pods are gone
        };
        if p.exited.is_none() {
            p.exited = Some(code);
            p.ready = false;
            let pods: Vec<(String, String)> = st
                .pods
                .iter()
                .filter(|(_, rt)| rt.proc_key.as_deref() == Some(key2.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            for (ns, pod) in pods {
                set_pod_state(&mut st, &ns, &pod, PodState::Crashed(code));
            }
            inner2.notify(&st);
        }
    });
    // Its readiness probe.
    let (inner3, key3) = (inner.clone(), key.to_string());
    let mut done = done_rx;
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + PROBE_LIMIT;
        while tokio::time::Instant::now() < deadline && !*done.borrow() {
            let ok = matches!(client.get(&health).send().await, Ok(r) if r.status().is_success());
            if ok {
                let mut st = inner3.state.lock().unwrap();
                let Some(p) = st.procs.get_mut(&key3) else {
                    return;
                };
                if p.exited.is_some() {
                    return;
                }
                p.ready = true;
                let pods: Vec<(String, String)> = st
                    .pods
                    .iter()
                    .filter(|(_, rt)| rt.proc_key.as_deref() == Some(key3.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for (ns, pod) in &pods {
                    set_pod_state(&mut st, ns, pod, PodState::Ready);
                }
                // The workloads' readyReplicas.
                let namespaces: BTreeSet<String> = pods.into_iter().map(|(n, _)| n).collect();
                for ns in namespaces {
                    reconcile_ns(&inner3, &mut st, &ns);
                }
                inner3.notify(&st);
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), done.changed()).await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The HTTP side.
// ---------------------------------------------------------------------------------------------

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let q: Vec<(String, String)> = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|Query(v)| v)
        .unwrap_or_default();
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let field_manager = param("fieldManager");
    {
        let mut st = inner.state.lock().unwrap();
        st.requests.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            field_manager: field_manager.clone(),
        });
        if let Some(i) = st
            .failures
            .iter()
            .position(|f| f.method == method.as_str() && path.contains(&f.path_contains))
        {
            let f = st.failures.remove(i);
            return status_response(f.status, &f.reason, &f.message);
        }
    }
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
        );
    }
    let Some(t) = parse_path(&path) else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if let Some(sub) = t.sub.clone() {
        if t.plural != "pods" {
            return status_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        let pod = t.name.clone().unwrap_or_default();
        return match (method.clone(), sub.as_str()) {
            (Method::GET, "log") => logs(&inner, &t.ns, &pod, &param).await,
            (Method::GET | Method::POST, "exec") => {
                match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                    Ok(ws) => exec(&inner, &t.ns, &pod, &q, ws),
                    Err(_) => status_response(400, "BadRequest", "Upgrade request required"),
                }
            }
            (Method::GET | Method::POST, "portforward") => {
                match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                    Ok(ws) => portforward(&inner, &t.ns, &pod, &param, ws),
                    Err(_) => status_response(400, "BadRequest", "Upgrade request required"),
                }
            }
            _ => status_response(
                405,
                "MethodNotAllowed",
                &format!("{method} is not supported on pods/{sub} here"),
            ),
        };
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let selector = param("labelSelector");
    let name = t.name.clone();
    match (method, name.as_ref()) {
        (Method::GET, None) if param("watch").is_some_and(|w| w == "true" || w == "1") => {
            let since = param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let secs = param("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(290u64);
            watch_pods(inner, t, selector, since, Duration::from_secs(secs))
        }
        (Method::GET, None) => list(&inner, &t, selector.as_deref()),
        (Method::GET, Some(name)) => {
            if t.plural == "nodes" {
                return match nodes().into_iter().find(|n| n["metadata"]["name"] == name.as_str()) {
                    Some(n) => json_response(StatusCode::OK, &n),
                    None => not_found("nodes", name),
                };
            }
            let st = inner.state.lock().unwrap();
            match st.objects.get(&(t.plural.clone(), t.ns.clone(), name.clone())) {
                Some(o) => json_response(StatusCode::OK, o),
                None => not_found(&t.plural, name),
            }
        }
        (Method::PATCH, Some(name)) => {
            apply(&inner, &t, name, &content_type, field_manager.as_deref(), &body)
        }
        (Method::DELETE, Some(name)) => delete_one(&inner, &t, name),
        (Method::DELETE, None) => delete_collection(&inner, &t, selector.as_deref()),
        (m, _) => status_response(
            405,
            "MethodNotAllowed",
            &format!("the fake API server does not support {m} on {path} (only server-side apply, get, list, watch and delete)"),
        ),
    }
}

fn nodes() -> Vec<Value> {
    (1..=2)
        .map(|i| {
            let r = json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("fake-node-{i}"), "uid": format!("00000000-0000-4000-9000-00000000000{i}"),
                    "resourceVersion": "1", "creationTimestamp": "2024-01-01T00:00:00Z",
                    "labels": {"kubernetes.io/hostname": format!("fake-node-{i}"), "kubernetes.io/os": "linux"}},
                "spec": {},
                "status": {"capacity": r, "allocatable": r,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
            })
        })
        .collect()
}

fn list(inner: &Arc<Inner>, t: &Target, selector: Option<&str>) -> Response {
    let (kind, api_version, _) = kind_of(&t.plural).unwrap_or(("Unknown", "v1", true));
    let st = inner.state.lock().unwrap();
    let items: Vec<Value> = if t.plural == "nodes" {
        nodes()
    } else {
        st.objects
            .iter()
            .filter(|((p, ns, _), o)| {
                *p == t.plural && *ns == t.ns && matches_selector(o, selector)
            })
            .map(|(_, o)| o.clone())
            .collect()
    };
    json_response(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": api_version,
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn apply(
    inner: &Arc<Inner>,
    t: &Target,
    name: &str,
    content_type: &str,
    manager: Option<&str>,
    body: &[u8],
) -> Response {
    if !content_type.starts_with("application/apply-patch+yaml") {
        return status_response(
            415,
            "UnsupportedMediaType",
            &format!(
                "the fake API server only supports server-side apply patches, not {content_type:?}"
            ),
        );
    }
    let Some(manager) = manager.filter(|m| !m.is_empty()) else {
        return status_response(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch");
    };
    if t.plural == "nodes" || t.plural == "pods" {
        return status_response(
            403,
            "Forbidden",
            &format!(
                "the fake API server does not accept applies of {}",
                t.plural
            ),
        );
    }
    let obj: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return status_response(400, "BadRequest", "the fake API server takes apply patches as JSON (kube sends JSON) and this is not a JSON object"),
    };
    let (kind, api_version, namespaced) = kind_of(&t.plural).unwrap();
    if obj["kind"] != kind || obj["apiVersion"] != api_version {
        return status_response(
            400,
            "BadRequest",
            &format!(
                "the kind/apiVersion of the body ({}/{}) is not that of {} ({api_version}/{kind})",
                obj["apiVersion"], obj["kind"], t.plural
            ),
        );
    }
    if obj["metadata"]["name"] != name {
        return status_response(
            400,
            "BadRequest",
            &format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj["metadata"]["name"]
            ),
        );
    }
    if namespaced {
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            if ns != t.ns {
                return status_response(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                );
            }
        }
    }
    let mut st = inner.state.lock().unwrap();
    if namespaced
        && !st
            .objects
            .contains_key(&("namespaces".to_string(), String::new(), t.ns.clone()))
    {
        return not_found("namespaces", &t.ns);
    }
    let (_, created) = store(&mut st, &t.plural, &t.ns, name, obj, Some(manager));
    if namespaced {
        reconcile_ns(inner, &mut st, &t.ns);
    }
    let stored = st
        .objects
        .get(&(t.plural.clone(), t.ns.clone(), name.to_string()))
        .cloned()
        .unwrap_or(Value::Null);
    inner.notify(&st);
    json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &stored,
    )
}

fn delete_one(inner: &Arc<Inner>, t: &Target, name: &str) -> Response {
    if t.plural == "nodes" {
        return status_response(403, "Forbidden", "the fake API server keeps its nodes");
    }
    let mut st = inner.state.lock().unwrap();
    if t.plural == "namespaces" {
        let Some(mut ns_obj) = st
            .objects
            .get(&("namespaces".to_string(), String::new(), name.to_string()))
            .cloned()
        else {
            return not_found("namespaces", name);
        };
        // Everything in it goes at once (a real API server takes a while, the fake does not).
        let inside: Vec<Key> = st
            .objects
            .keys()
            .filter(|(_, ns, _)| ns == name)
            .cloned()
            .collect();
        for (p, ns, n) in inside {
            remove(&mut st, &p, &ns, &n);
        }
        remove(&mut st, "namespaces", "", name);
        gc_procs(&mut st);
        ns_obj["metadata"]["deletionTimestamp"] = json!(now());
        ns_obj["status"] = json!({"phase": "Terminating"});
        inner.notify(&st);
        return json_response(StatusCode::OK, &ns_obj);
    }
    let Some(obj) = remove(&mut st, &t.plural, &t.ns, name) else {
        return not_found(&t.plural, name);
    };
    gc_procs(&mut st);
    inner.notify(&st);
    json_response(StatusCode::OK, &obj)
}

fn delete_collection(inner: &Arc<Inner>, t: &Target, selector: Option<&str>) -> Response {
    if t.plural == "nodes" || t.plural == "namespaces" {
        return status_response(
            405,
            "MethodNotAllowed",
            "the fake API server does not delete collections of this kind",
        );
    }
    let (kind, api_version, _) = kind_of(&t.plural).unwrap();
    let mut st = inner.state.lock().unwrap();
    let names: Vec<String> = st
        .objects
        .iter()
        .filter(|((p, ns, _), o)| *p == t.plural && *ns == t.ns && matches_selector(o, selector))
        .map(|((_, _, n), _)| n.clone())
        .collect();
    let items: Vec<Value> = names
        .iter()
        .filter_map(|n| remove(&mut st, &t.plural, &t.ns, n))
        .collect();
    gc_procs(&mut st);
    inner.notify(&st);
    json_response(
        StatusCode::OK,
        &json!({"kind": format!("{kind}List"), "apiVersion": api_version,
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

/// A watch: the changes after `since` at once, else the first ones within
/// min(timeout, [`WATCH_HOLD`]); the response then ends (clients watch again).
fn watch_pods(
    inner: Arc<Inner>,
    t: Target,
    selector: Option<String>,
    since: u64,
    timeout: Duration,
) -> Response {
    let mut changes = inner.changes.subscribe();
    let events = move |st: &St| -> Vec<Value> {
        let sel = selector.as_deref();
        let mut out: Vec<(u64, Value)> = Vec::new();
        for ((p, ns, _), o) in &st.objects {
            if *p != t.plural || *ns != t.ns || !matches_selector(o, sel) {
                continue;
            }
            let rv = rv_of(o);
            if since == 0 || rv > since {
                let created = st
                    .created
                    .get(&(
                        p.clone(),
                        ns.clone(),
                        o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    ))
                    .copied()
                    .unwrap_or(0);
                let kind = if since == 0 || created > since {
                    "ADDED"
                } else {
                    "MODIFIED"
                };
                out.push((rv, json!({"type": kind, "object": o})));
            }
        }
        if since > 0 {
            for (p, ns, rv, o) in &st.tombstones {
                if *p == t.plural && *ns == t.ns && *rv > since && matches_selector(o, sel) {
                    out.push((*rv, json!({"type": "DELETED", "object": o})));
                }
            }
        }
        out.sort_by_key(|(rv, _)| *rv);
        out.into_iter().map(|(_, e)| e).collect()
    };
    let hold = timeout.min(WATCH_HOLD);
    let fut = async move {
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let evs = {
                let st = inner.state.lock().unwrap();
                events(&st)
            };
            if !evs.is_empty() {
                let mut text = String::new();
                for e in evs {
                    text.push_str(&e.to_string());
                    text.push('\n');
                }
                return Ok::<Bytes, std::io::Error>(Bytes::from(text));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Bytes::new());
            }
            let _ = tokio::time::timeout(deadline - now, changes.changed()).await;
        }
    };
    let mut resp = Response::new(Body::from_stream(futures_util::stream::once(fut)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn tail(text: &[u8], lines: Option<usize>) -> Vec<u8> {
    let Some(n) = lines else {
        return text.to_vec();
    };
    if n == 0 {
        return Vec::new();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut start = 0;
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                start = i + 1;
                break;
            }
        }
    }
    text[start..].to_vec()
}

async fn logs(
    inner: &Arc<Inner>,
    ns: &str,
    pod: &str,
    param: &impl Fn(&str) -> Option<String>,
) -> Response {
    let (log, proc_done) = {
        let st = inner.state.lock().unwrap();
        let Some(rt) = st.pods.get(&(ns.to_string(), pod.to_string())) else {
            return not_found("pods", pod);
        };
        if let Some(c) = param("container") {
            let spec = &st.objects[&("pods".to_string(), ns.to_string(), pod.to_string())]["spec"];
            let known = spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["name"] == c.as_str());
            if !known {
                return status_response(
                    400,
                    "BadRequest",
                    &format!("container {c} is not valid for pod {pod}"),
                );
            }
        }
        let done = rt
            .proc_key
            .as_ref()
            .and_then(|k| st.procs.get(k))
            .and_then(|p| st.all.iter().find(|(pid, _)| *pid == p.pid))
            .map(|(_, d)| d.clone());
        (rt.log.clone(), done)
    };
    let lines = param("tailLines").and_then(|v| v.parse().ok());
    let follow = param("follow").is_some_and(|v| v == "true");
    let text = tokio::fs::read(&log).await.unwrap_or_default();
    let first = tail(&text, lines);
    let text_plain = |body: Body| {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    if !follow {
        return text_plain(Body::from(first));
    }
    // Follow: what is there, then what the process adds until it exits or FOLLOW_LIMIT.
    let deadline = tokio::time::Instant::now() + FOLLOW_LIMIT;
    let state = (Some(first), text.len() as u64, log, proc_done, deadline);
    let stream = futures_util::stream::unfold(
        state,
        |(first, offset, log, mut done, deadline)| async move {
            if let Some(f) = first {
                return Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(f)),
                    (None, offset, log, done, deadline),
                ));
            }
            loop {
                let exited = done.as_ref().is_none_or(|d| *d.borrow());
                let mut buf = Vec::new();
                if let Ok(mut f) = tokio::fs::File::open(&log).await {
                    use tokio::io::AsyncSeekExt as _;
                    if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                        let _ = f.read_to_end(&mut buf).await;
                    }
                }
                if !buf.is_empty() {
                    let next = offset + buf.len() as u64;
                    return Some((Ok(Bytes::from(buf)), (None, next, log, done, deadline)));
                }
                if exited || tokio::time::Instant::now() >= deadline {
                    return None;
                }
                match done.as_mut() {
                    Some(d) => {
                        let _ = tokio::time::timeout(Duration::from_millis(200), d.changed()).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        },
    );
    text_plain(Body::from_stream(stream))
}

/// The pod's runtime facts an exec or port-forward needs.
struct PodAccess {
    dir: PathBuf,
    paths: Vec<(String, String)>,
    containers: Vec<String>,
    ports: HashMap<u16, u16>,
    uid: String,
}

fn pod_access(inner: &Arc<Inner>, ns: &str, pod: &str) -> Option<PodAccess> {
    let st = inner.state.lock().unwrap();
    let rt = st.pods.get(&(ns.to_string(), pod.to_string()))?;
    let obj = st
        .objects
        .get(&("pods".to_string(), ns.to_string(), pod.to_string()))?;
    let proc_ = rt.proc_key.as_ref().and_then(|k| st.procs.get(k));
    Some(PodAccess {
        dir: rt.dir.clone(),
        paths: rt.paths.clone(),
        containers: obj["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect(),
        ports: proc_
            .filter(|p| p.exited.is_none())
            .map(|p| p.ports.clone())
            .unwrap_or_default(),
        uid: obj["metadata"]["uid"].as_str().unwrap_or("").to_string(),
    })
}

/// Replaces container paths in `s` where they start a path (not in the middle of one).
fn map_paths(s: &str, paths: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (from, to) in paths {
        let mut result = String::new();
        let mut last = 0;
        for (i, _) in out.match_indices(from.as_str()) {
            let before = out[..i].chars().last();
            let after = out[i + from.len()..].chars().next();
            let starts = before.is_none_or(|c| !(c.is_alphanumeric() || "/_.-~$".contains(c)));
            let ends = from.ends_with('/')
                || after.is_none_or(|c| !(c.is_alphanumeric() || "_.-".contains(c)));
            if starts && ends {
                result.push_str(&out[last..i]);
                result.push_str(to);
                last = i + from.len();
            }
        }
        result.push_str(&out[last..]);
        out = result;
    }
    out
}

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

fn exec(
    inner: &Arc<Inner>,
    ns: &str,
    pod: &str,
    q: &[(String, String)],
    ws: WebSocketUpgrade,
) -> Response {
    let Some(access) = pod_access(inner, ns, pod) else {
        return not_found("pods", pod);
    };
    let flag = |k: &str| q.iter().any(|(n, v)| n == k && (v == "true" || v == "1"));
    let argv: Vec<String> = q
        .iter()
        .filter(|(n, _)| n == "command")
        .map(|(_, v)| map_paths(v, &access.paths))
        .collect();
    if argv.is_empty() {
        return status_response(400, "BadRequest", "you must specify at least 1 command");
    }
    let container = q
        .iter()
        .find(|(n, _)| n == "container")
        .map(|(_, v)| v.clone())
        .or_else(|| access.containers.first().cloned())
        .unwrap_or_default();
    if !access.containers.contains(&container) {
        return status_response(
            400,
            "BadRequest",
            &format!("container {container} is not valid for pod {pod}"),
        );
    }
    let (stdin, stdout, stderr, tty) = (flag("stdin"), flag("stdout"), flag("stderr"), flag("tty"));
    if !(stdin || stdout || stderr) {
        return status_response(
            400,
            "BadRequest",
            "you must specify at least one of stdin, stdout, stderr",
        );
    }
    let ws = ws.protocols(PROTOCOLS);
    let v5 = ws.selected_protocol().is_some_and(|p| p == PROTOCOLS[0]);
    let bins = inner.bins.clone();
    let pod = pod.to_string();
    ws.on_upgrade(move |socket| async move {
        let _ = run_exec(
            socket, v5, argv, access.dir, bins, pod, stdin, stdout, stderr, tty,
        )
        .await;
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_exec(
    mut ws: WebSocket,
    // v4 and v5 differ only in the client's stdin-close frame (255, 0), which v5 clients send.
    _v5: bool,
    argv: Vec<String>,
    dir: PathBuf,
    bins: PathBuf,
    pod: String,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(), axum::Error> {
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut all = vec![bins.clone()];
            all.extend(std::env::split_paths(&p));
            std::env::join_paths(all).unwrap_or(p)
        }
        None => bins.clone().into_os_string(),
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&dir)
        .env("PATH", path)
        .env("POD_NAME", &pod)
        .env("HOSTNAME", &pod)
        .stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "Internal error occurred: error executing command in container: failed to exec in container: exec: \"{}\": {e}",
                argv[0]
            );
            let status = json!({"metadata": {}, "status": "Failure", "message": msg,
                "reason": "InternalError", "details": {"causes": [{"message": msg}]}, "code": 500});
            send_channel(&mut ws, 3, status.to_string().as_bytes()).await?;
            return ws.send(Message::Close(None)).await;
        }
    };
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    // (pipe, channel, forwarded at all)
    let readers: [(Option<Pipe>, u8, bool); 2] = [
        (child.stdout.take().map(|s| Box::new(s) as _), 1, stdout),
        (
            child.stderr.take().map(|s| Box::new(s) as _),
            if tty { 1 } else { 2 },
            stderr || tty,
        ),
    ];
    for (reader, ch, wanted) in readers {
        let Some(mut reader) = reader else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if wanted => {
                        if tx.send((ch, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                }
            }
        });
    }
    drop(tx);
    let mut child_stdin = child.stdin.take();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some((ch, data)) => send_channel(&mut ws, ch, &data).await?,
                None => break,
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(w) = child_stdin.as_mut() {
                            if w.write_all(&b[1..]).await.is_err() {
                                child_stdin = None;
                            }
                        }
                    }
                    255 if b.get(1) == Some(&0) => child_stdin = None,
                    _ => {} // resize and the rest
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client went away: so does the command.
                    let _ = child.kill().await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
            },
        }
    }
    drop(child_stdin);
    let code = child
        .wait()
        .await
        .ok()
        .and_then(|s| s.code())
        .unwrap_or(137);
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", argv.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    send_channel(&mut ws, 3, status.to_string().as_bytes()).await?;
    let _ = ws.send(Message::Close(None)).await;
    // Read what the client still sends (its stdin's end, its own close) until it goes, as a
    // close handshake does: dropping a socket with bytes unread makes the kernel reset the
    // connection, and a reset can take the status above with it before the client reads it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

type Pipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

async fn send_channel(ws: &mut WebSocket, ch: u8, data: &[u8]) -> Result<(), axum::Error> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    ws.send(Message::Binary(Bytes::from(v))).await
}

fn portforward(
    inner: &Arc<Inner>,
    ns: &str,
    pod: &str,
    param: &impl Fn(&str) -> Option<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(access) = pod_access(inner, ns, pod) else {
        return not_found("pods", pod);
    };
    let ports: Option<Vec<u16>> =
        param("ports").map(|p| p.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return status_response(400, "BadRequest", "query parameter \"port\" is required");
    };
    let ws = ws.protocols(PROTOCOLS);
    let targets: Vec<(u16, Option<u16>)> = ports
        .iter()
        .map(|p| (*p, access.ports.get(p).copied()))
        .collect();
    let (pod, uid) = (pod.to_string(), access.uid.clone());
    ws.on_upgrade(move |socket| async move {
        let _ = run_portforward(socket, targets, pod, uid).await;
    })
}

async fn run_portforward(
    mut ws: WebSocket,
    targets: Vec<(u16, Option<u16>)>,
    pod: String,
    uid: String,
) -> Result<(), axum::Error> {
    // First, on both channels of each port, the port number (little endian).
    for (i, (port, _)) in targets.iter().enumerate() {
        let p = port.to_le_bytes();
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            ws.send(Message::Binary(Bytes::from(vec![ch, p[0], p[1]])))
                .await?;
        }
    }
    let (tx, mut rx) = mpsc::channel::<(usize, Option<Vec<u8>>)>(16);
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    let mut open = 0;
    for (i, (port, local)) in targets.iter().enumerate() {
        let conn = match local {
            Some(l) => tokio::net::TcpStream::connect(("127.0.0.1", *l)).await.ok(),
            None => None,
        };
        let Some(conn) = conn else {
            let msg = format!(
                "error forwarding port {port} to pod {pod}, uid {uid}: failed to connect to localhost:{port} inside the pod: connection refused"
            );
            send_channel(&mut ws, 2 * i as u8 + 1, msg.as_bytes()).await?;
            writers.push(None);
            continue;
        };
        let (mut r, w) = conn.into_split();
        writers.push(Some(w));
        open += 1;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send((i, None)).await;
                        break;
                    }
                    Ok(n) => {
                        if tx.send((i, Some(buf[..n].to_vec()))).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    while open > 0 {
        tokio::select! {
            from_pod = rx.recv() => match from_pod {
                Some((i, Some(data))) => send_channel(&mut ws, 2 * i as u8, &data).await?,
                Some((i, None)) => {
                    writers[i] = None;
                    open -= 1;
                }
                None => break,
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() > 1 && b[0] % 2 == 0 => {
                    let i = usize::from(b[0] / 2);
                    if let Some(Some(w)) = writers.get_mut(i) {
                        if w.write_all(&b[1..]).await.is_err() {
                            writers[i] = None;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = ws.send(Message::Close(None)).await;
    Ok(())
}
