//! Integration tests of [`ltops_kube::Session`] against a scripted Kubernetes API server.
//!
//! No Kubernetes API server can run on this machine, so the client is tested against a scripted
//! one that asserts each request and answers as the API server would. The session's
//! `kube::Client` is built over `tower_test`'s mock service; each test spawns a script that takes
//! the client's HTTP requests one by one, checks method, path, query and body, and replies with
//! the status and JSON (or text) a real API server sends. A request the script does not expect
//! fails the test, and so does one it expects but never gets (the script sees the client hang up
//! when the test drops the session).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response};
use kube::client::Body;
use ltops_kube::manifests::{self, Builder};
use ltops_kube::{
    Capacity, ClusterSpec, DatabaseSpec, Error, Leftover, Resources, Secrets, Session,
};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_test::mock::{self, Handle, SendResponse};

const NS: &str = "ltops-k1";
const IMAGE: &str = "ghcr.io/chat-loadtest/chat-loadtest:0.1.0";
/// The label selector of cluster `k1` / `c0ffee42`, decoded and as it appears in a URL (kube's
/// query serializer puts a `&` before the first pair, which the API server ignores).
const SELECTOR: &str = "ltops.dev/cluster=k1,ltops.dev/cluster-id=c0ffee42";
const SELECTOR_QUERY: &str =
    "&labelSelector=ltops.dev%2Fcluster%3Dk1%2Cltops.dev%2Fcluster-id%3Dc0ffee42";
const PODS: &str = "/api/v1/namespaces/ltops-k1/pods";
const PVCS: &str = "/api/v1/namespaces/ltops-k1/persistentvolumeclaims";
const NAMESPACE: &str = "/api/v1/namespaces/ltops-k1";
const TIME: &str = "2025-06-01T10:00:00Z";

// ----- the scripted API server -----

/// The scripted API server: the other end of the session's client.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the script took, and the way to answer it.
struct Call {
    method: Method,
    path: String,
    raw_query: String,
    content_type: Option<String>,
    body: Vec<u8>,
    send: SendResponse<Response<Body>>,
}

/// A session of namespace `ltops-k1` whose client talks to the returned scripted server.
fn connect() -> (Session, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "ns");
    (Session::new(client, NS), ApiServer(handle))
}

/// Ends a test: drops the session (the client hangs up) and waits for the script, re-raising its
/// panic so that a failed request assertion is the test's failure.
async fn hang_up(session: Session, script: JoinHandle<()>) {
    drop(session);
    if let Err(e) = script.await {
        std::panic::resume_unwind(e.into_panic());
    }
}

impl ApiServer {
    /// Takes the client's next request, which must be `method path` (query checked separately).
    async fn expect(&mut self, method: Method, path: &str) -> Call {
        let Some((req, send)) = self.0.next_request().await else {
            panic!("expected {method} {path}, but the client hung up without sending it");
        };
        let (parts, body) = req.into_parts();
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&method, path),
            "unexpected request {} {}",
            parts.method,
            parts.uri
        );
        let body = body.collect_bytes().await.unwrap().to_vec();
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            raw_query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string()),
            body,
            send,
        }
    }

    /// The script's end: the client must send nothing more before it hangs up.
    async fn done(mut self) {
        if let Some((req, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

impl Call {
    /// The decoded query pairs, sorted.
    fn query(&self) -> Vec<(String, String)> {
        let mut q: Vec<(String, String)> = form_urlencoded::parse(self.raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        q.sort();
        q
    }

    /// The query is exactly these pairs (in any order).
    fn assert_query(&self, want: &[(&str, &str)]) {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        assert_eq!(
            self.query(),
            want,
            "query of {} {}?{}",
            self.method,
            self.path,
            self.raw_query
        );
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn reply(self, status: u16, body: &Value) {
        reply_json(self.send, status, body);
    }

    /// Replies with the API server's `Status` object for a failure.
    fn reply_status(self, code: u16, reason: &str, message: &str, kind: &str, name: &str) {
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {"name": name, "kind": kind},
            "code": code,
        });
        reply_json(self.send, code, &status);
    }

    fn reply_text(self, text: &str) {
        reply_bytes(self.send, 200, "text/plain", text.as_bytes().to_vec());
    }
}

fn reply_json(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    reply_bytes(
        send,
        status,
        "application/json",
        serde_json::to_vec(body).unwrap(),
    );
}

fn reply_bytes(send: SendResponse<Response<Body>>, status: u16, content_type: &str, body: Vec<u8>) {
    send.send_response(
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap(),
    );
}

// ----- what the API server holds -----

fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "k1".into(),
        cluster_id: "c0ffee42".into(),
        namespace: NS.into(),
        version: "0.1.0".into(),
        image: IMAGE.into(),
        app_count: 1,
        agents: 2,
        database: DatabaseSpec::Internal {
            storage_class: None,
            storage: "10Gi".into(),
            image: manifests::POSTGRES_IMAGE.into(),
        },
        users: 1000,
        prometheus: None,
        grafana: None,
    }
}

fn secrets() -> Secrets {
    Secrets {
        control_token: "tok-3b9f".into(),
        postgres_password: "pw-81c2".into(),
        grafana_password: "gf-0123456789".into(),
    }
}

/// An applied object as the API server returns it: the manifest plus the fields it sets.
fn served(body: &Value, rv: u32) -> Value {
    let mut o = body.clone();
    let meta = &mut o["metadata"];
    meta["uid"] = json!(format!("6f1c2a4e-9d3b-4e7a-8c21-{rv:012}"));
    meta["resourceVersion"] = json!(rv.to_string());
    meta["creationTimestamp"] = json!(TIME);
    meta["managedFields"] = json!([{
        "manager": "ltops",
        "operation": "Apply",
        "apiVersion": body["apiVersion"],
        "time": TIME,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {}}},
    }]);
    if body["kind"] == "Namespace" {
        meta["labels"]["kubernetes.io/metadata.name"] = json!(NS);
        o["spec"] = json!({"finalizers": ["kubernetes"]});
        o["status"] = json!({"phase": "Active"});
    }
    o
}

fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/instance": "k1",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "ltops",
        "ltops.dev/cluster": "k1",
        "ltops.dev/cluster-id": "c0ffee42",
    })
}

fn container_of(component: &str) -> &'static str {
    match component {
        "postgres" => "postgres",
        "server" => "chat-server",
        _ => "loadtest-agent",
    }
}

fn image_of(component: &str) -> &'static str {
    if component == "postgres" {
        manifests::POSTGRES_IMAGE
    } else {
        IMAGE
    }
}

/// A pod of cluster `k1` as the API server lists it (scheduled when its status has a host).
fn pod(name: &str, component: &str, status: Value) -> Value {
    let mut spec = json!({
        "containers": [{"name": container_of(component), "image": image_of(component)}],
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
    });
    if status.get("hostIP").is_some() {
        spec["nodeName"] = json!("pool-a-1");
    }
    json!({
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("0b7e4c1d-{name}"),
            "resourceVersion": "5100",
            "creationTimestamp": TIME,
            "labels": labels(component),
        },
        "spec": spec,
        "status": status,
    })
}

fn condition(type_: &str, status: bool) -> Value {
    json!({"type": type_, "status": if status { "True" } else { "False" }, "lastTransitionTime": TIME})
}

fn container_status(component: &str, ready: bool, restarts: i32, state: Value) -> Value {
    json!({
        "name": container_of(component),
        "image": image_of(component),
        "imageID": format!("{}@sha256:5d1f0e6c", image_of(component)),
        "containerID": "containerd://9a4f2b",
        "ready": ready,
        "started": state.get("running").is_some(),
        "restartCount": restarts,
        "state": state,
    })
}

/// Running and ready.
fn ready(component: &str) -> Value {
    json!({
        "phase": "Running",
        "hostIP": "10.0.0.11",
        "podIP": "10.244.1.7",
        "startTime": TIME,
        "conditions": [condition("Initialized", true), condition("Ready", true),
            condition("ContainersReady", true), condition("PodScheduled", true)],
        "containerStatuses": [container_status(component, true, 0, json!({"running": {"startedAt": TIME}}))],
    })
}

/// Running, its readiness probe not passing yet.
fn running_not_ready(component: &str) -> Value {
    json!({
        "phase": "Running",
        "hostIP": "10.0.0.11",
        "podIP": "10.244.1.8",
        "startTime": TIME,
        "conditions": [condition("Initialized", true),
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
             "message": format!("containers with unready status: [{}]", container_of(component))},
            condition("ContainersReady", false), condition("PodScheduled", true)],
        "containerStatuses": [container_status(component, false, 0, json!({"running": {"startedAt": TIME}}))],
    })
}

/// Scheduled, its container still being created.
fn creating(component: &str) -> Value {
    json!({
        "phase": "Pending",
        "hostIP": "10.0.0.12",
        "startTime": TIME,
        "conditions": [condition("Initialized", true), condition("Ready", false),
            condition("ContainersReady", false), condition("PodScheduled", true)],
        "containerStatuses": [container_status(component, false, 0,
            json!({"waiting": {"reason": "ContainerCreating"}}))],
    })
}

fn crash_looping(component: &str, name: &str, restarts: i32) -> Value {
    let mut cs = container_status(
        component,
        false,
        restarts,
        json!({"waiting": {
            "reason": "CrashLoopBackOff",
            "message": format!("back-off 40s restarting failed container={} pod={name}_{NS}(0b7e4c1d-{name})", container_of(component)),
        }}),
    );
    cs["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "startedAt": TIME, "finishedAt": TIME,
        "containerID": "containerd://77c0d1",
    }});
    json!({
        "phase": "Running",
        "hostIP": "10.0.0.12",
        "podIP": "10.244.2.4",
        "startTime": TIME,
        "conditions": [condition("Initialized", true), condition("Ready", false),
            condition("ContainersReady", false), condition("PodScheduled", true)],
        "containerStatuses": [cs],
    })
}

/// Not placed by the scheduler.
fn unschedulable(message: &str) -> Value {
    json!({
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": TIME}],
        "qosClass": "Burstable",
    })
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items})
}

/// A deleted object as a delete-collection reply lists it.
fn object(name: &str, component: Option<&str>) -> Value {
    json!({"metadata": {
        "name": name,
        "namespace": NS,
        "uid": format!("1c2d3e4f-{name}"),
        "resourceVersion": "6001",
        "creationTimestamp": TIME,
        "labels": labels(component.unwrap_or("none")),
    }})
}

/// The collections a shared-namespace delete removes, in its order: path, list kind, group
/// version, and the objects the reply lists as deleted.
fn collections() -> Vec<(&'static str, &'static str, &'static str, Vec<Value>)> {
    vec![
        (
            "/apis/apps/v1/namespaces/ltops-k1/deployments",
            "DeploymentList",
            "apps/v1",
            vec![object("k1-server", Some("server"))],
        ),
        (
            "/apis/apps/v1/namespaces/ltops-k1/statefulsets",
            "StatefulSetList",
            "apps/v1",
            vec![
                object("k1-postgres", Some("postgres")),
                object("k1-agent", Some("agent")),
            ],
        ),
        (
            "/api/v1/namespaces/ltops-k1/services",
            "ServiceList",
            "v1",
            vec![
                object("k1-postgres", Some("postgres")),
                object("k1-server", Some("server")),
                object("k1-agent", Some("agent")),
            ],
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/ltops-k1/networkpolicies",
            "NetworkPolicyList",
            "networking.k8s.io/v1",
            vec![
                object("k1-postgres", Some("postgres")),
                object("k1-server", Some("server")),
                object("k1-agent", Some("agent")),
            ],
        ),
        // (This cluster runs no Prometheus: nothing of its account, Role and binding to delete.)
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ltops-k1/rolebindings",
            "RoleBindingList",
            "rbac.authorization.k8s.io/v1",
            vec![],
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ltops-k1/roles",
            "RoleList",
            "rbac.authorization.k8s.io/v1",
            vec![],
        ),
        (
            "/api/v1/namespaces/ltops-k1/configmaps",
            "ConfigMapList",
            "v1",
            vec![object("k1-server-config", None)],
        ),
        (
            "/api/v1/namespaces/ltops-k1/secrets",
            "SecretList",
            "v1",
            vec![object("k1-secrets", None)],
        ),
        (
            "/api/v1/namespaces/ltops-k1/serviceaccounts",
            "ServiceAccountList",
            "v1",
            vec![],
        ),
    ]
}

/// The database's claim, kept by its protection finalizer while the pod still uses it.
fn claim() -> Value {
    json!({
        "metadata": {
            "name": "data-k1-postgres-0",
            "namespace": NS,
            "uid": "4e5f6a7b-data",
            "resourceVersion": "6002",
            "creationTimestamp": TIME,
            "deletionTimestamp": TIME,
            "finalizers": ["kubernetes.io/pvc-protection"],
            "labels": labels("postgres"),
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}},
            "volumeName": "pvc-4e5f6a7b", "volumeMode": "Filesystem", "storageClassName": "standard"},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}},
    })
}

/// A namespace as the API server returns it while it is being deleted.
fn terminating_namespace() -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": NS,
            "uid": "9f8e7d6c-ns",
            "resourceVersion": "7300",
            "creationTimestamp": TIME,
            "deletionTimestamp": "2025-06-01T11:00:00Z",
            "labels": {"kubernetes.io/metadata.name": NS, "ltops.dev/cluster": "k1"},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Terminating", "conditions": [{
            "type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
            "message": "Some resources are remaining: pods. has 4 resource instances",
            "lastTransitionTime": "2025-06-01T11:00:01Z",
        }]},
    })
}

// ----- script steps shared by tests -----

/// Answers the list of the cluster's pods, checking its label selector.
async fn answer_pod_list(api: &mut ApiServer, rv: &str, pods: Vec<Value>) {
    let call = api.expect(Method::GET, PODS).await;
    assert_eq!(call.raw_query, SELECTOR_QUERY);
    call.assert_query(&[("labelSelector", SELECTOR)]);
    call.reply(200, &list("PodList", "v1", rv, pods));
}

/// Answers the session's check of what is left after a delete: pods, claims, then each kind.
async fn answer_leftovers(api: &mut ApiServer, pods: Vec<Value>) {
    answer_pod_list(api, "6100", pods).await;
    let call = api.expect(Method::GET, PVCS).await;
    call.assert_query(&[("labelSelector", SELECTOR)]);
    call.reply(
        200,
        &list("PersistentVolumeClaimList", "v1", "6100", vec![]),
    );
    for (path, kind, version, _) in collections() {
        let call = api.expect(Method::GET, path).await;
        call.assert_query(&[("labelSelector", SELECTOR)]);
        call.reply(200, &list(kind, version, "6100", vec![]));
    }
}

/// Answers the GET of the session's namespace with a 404.
fn namespace_not_found(call: Call) {
    call.reply_status(
        404,
        "NotFound",
        "namespaces \"ltops-k1\" not found",
        "namespaces",
        NS,
    );
}

// ----- apply -----

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// `apply` sends one server-side apply PATCH per manifest, in order, to the object's own path,
/// with field manager `ltops`, `force=true`, the apply-patch content type and the manifest as the
/// body; it reports each object once the API server has accepted it.
#[tokio::test]
async fn apply_patches_each_object_in_order_with_server_side_apply() {
    let sp = spec();
    let manifests = Builder::new(&sp).build(true, Some(&secrets()));
    let expected = [
        ("Namespace/ltops-k1", "/api/v1/namespaces/ltops-k1"),
        (
            "Secret/k1-secrets",
            "/api/v1/namespaces/ltops-k1/secrets/k1-secrets",
        ),
        (
            "ConfigMap/k1-server-config",
            "/api/v1/namespaces/ltops-k1/configmaps/k1-server-config",
        ),
        (
            "NetworkPolicy/k1-postgres",
            "/apis/networking.k8s.io/v1/namespaces/ltops-k1/networkpolicies/k1-postgres",
        ),
        (
            "Service/k1-postgres",
            "/api/v1/namespaces/ltops-k1/services/k1-postgres",
        ),
        (
            "StatefulSet/k1-postgres",
            "/apis/apps/v1/namespaces/ltops-k1/statefulsets/k1-postgres",
        ),
        (
            "NetworkPolicy/k1-server",
            "/apis/networking.k8s.io/v1/namespaces/ltops-k1/networkpolicies/k1-server",
        ),
        (
            "Service/k1-server",
            "/api/v1/namespaces/ltops-k1/services/k1-server",
        ),
        (
            "Deployment/k1-server",
            "/apis/apps/v1/namespaces/ltops-k1/deployments/k1-server",
        ),
        (
            "NetworkPolicy/k1-agent",
            "/apis/networking.k8s.io/v1/namespaces/ltops-k1/networkpolicies/k1-agent",
        ),
        (
            "Service/k1-agent",
            "/api/v1/namespaces/ltops-k1/services/k1-agent",
        ),
        (
            "StatefulSet/k1-agent",
            "/apis/apps/v1/namespaces/ltops-k1/statefulsets/k1-agent",
        ),
    ];
    assert_eq!(manifests.len(), expected.len());

    let (session, mut api) = connect();
    let bodies: Vec<Value> = manifests.iter().map(|m| m.body.clone()).collect();
    let script = tokio::spawn(async move {
        for (i, ((_, path), body)) in expected.iter().zip(&bodies).enumerate() {
            let call = api.expect(Method::PATCH, path).await;
            assert_eq!(
                call.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
            call.assert_query(&[("fieldManager", "ltops"), ("force", "true")]);
            assert_eq!(&call.json(), body, "body of PATCH {path}");
            call.reply(200, &served(body, 5000 + i as u32));
        }
        api.done().await;
    });

    let mut applied = Vec::new();
    let result = session
        .apply(&manifests, &mut |what| applied.push(what.to_string()))
        .await;
    hang_up(session, script).await;
    result.unwrap();
    let want: Vec<&str> = expected.iter().map(|(what, _)| *what).collect();
    assert_eq!(applied, want);
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// A 403 Forbidden on the Secret stops `apply` there with an `Error::Api` that names the code, the
/// object and what to do about the missing permission.
#[tokio::test]
async fn apply_forbidden_names_the_object_and_the_missing_permission() {
    let sp = spec();
    let manifests = Builder::new(&sp).build(true, Some(&secrets()));
    let (session, mut api) = connect();
    let ns_body = manifests[0].body.clone();
    let script = tokio::spawn(async move {
        let call = api.expect(Method::PATCH, NAMESPACE).await;
        call.reply(200, &served(&ns_body, 5000));
        let call = api
            .expect(
                Method::PATCH,
                "/api/v1/namespaces/ltops-k1/secrets/k1-secrets",
            )
            .await;
        call.assert_query(&[("fieldManager", "ltops"), ("force", "true")]);
        assert_eq!(call.json()["kind"], "Secret");
        call.reply_status(
            403,
            "Forbidden",
            "secrets \"k1-secrets\" is forbidden: User \"alice@example.com\" cannot patch resource \"secrets\" in API group \"\" in the namespace \"ltops-k1\"",
            "secrets",
            "k1-secrets",
        );
        api.done().await;
    });

    let mut applied = Vec::new();
    let result = session
        .apply(&manifests, &mut |what| applied.push(what.to_string()))
        .await;
    hang_up(session, script).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Api { code: 403, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("403 Forbidden"), "{text}");
    assert!(text.contains("apply Secret/k1-secrets"), "{text}");
    assert!(text.contains("cannot patch resource"), "{text}");
    assert!(
        text.contains("lacks that permission in namespace \"ltops-k1\""),
        "{text}"
    );
    assert_eq!(applied, ["Namespace/ltops-k1"]);
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// A 409 Conflict on an apply says that another field manager owns the fields.
#[tokio::test]
async fn apply_conflict_points_at_the_other_field_manager() {
    let sp = spec();
    let manifests = Builder::new(&sp).build(false, Some(&secrets()));
    let (session, mut api) = connect();
    let secret = manifests[0].body.clone();
    let script = tokio::spawn(async move {
        let call = api
            .expect(
                Method::PATCH,
                "/api/v1/namespaces/ltops-k1/secrets/k1-secrets",
            )
            .await;
        call.assert_query(&[("fieldManager", "ltops"), ("force", "true")]);
        assert_eq!(call.json(), secret);
        call.reply_status(
            409,
            "Conflict",
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.control-token",
            "secrets",
            "k1-secrets",
        );
        api.done().await;
    });

    let result = session.apply(&manifests, &mut |_| {}).await;
    hang_up(session, script).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Api { code: 409, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("409 Conflict"), "{text}");
    assert!(text.contains("apply Secret/k1-secrets"), "{text}");
    assert!(
        text.contains("another field manager owns these fields"),
        "{text}"
    );
}

// ----- capacity -----

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// `capacity` lists the nodes and counts the allocatable CPU and memory of those that accept
/// pods, skipping a cordoned one.
#[tokio::test]
async fn capacity_counts_the_schedulable_nodes_only() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        let call = api.expect(Method::GET, "/api/v1/nodes").await;
        call.assert_query(&[]);
        let node = |name: &str, spec: Value| {
            json!({
                "metadata": {
                    "name": name,
                    "uid": format!("d1e2f3a4-{name}"),
                    "resourceVersion": "48190",
                    "creationTimestamp": TIME,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                        "node.kubernetes.io/instance-type": "m6i.xlarge"},
                },
                "spec": spec,
                "status": {
                    "capacity": {"cpu": "4", "memory": "16420440Ki", "pods": "110", "ephemeral-storage": "83873772Ki"},
                    "allocatable": {"cpu": "3920m", "memory": "16318040Ki", "pods": "110", "ephemeral-storage": "77298068Ki"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status", "lastHeartbeatTime": TIME, "lastTransitionTime": TIME}],
                    "nodeInfo": {"architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "containerd://1.7.27",
                        "kernelVersion": "6.1.0", "kubeProxyVersion": "v1.33.1", "kubeletVersion": "v1.33.1",
                        "machineID": "m", "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)",
                        "systemUUID": "s"},
                },
            })
        };
        call.reply(
            200,
            &list(
                "NodeList",
                "v1",
                "48213",
                vec![
                    node("pool-a-1", json!({"podCIDR": "10.244.0.0/24"})),
                    node(
                        "pool-a-2",
                        json!({"podCIDR": "10.244.1.0/24", "unschedulable": true, "taints": [
                            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": TIME}]}),
                    ),
                ],
            ),
        );
        api.done().await;
    });

    let result = session.capacity().await;
    hang_up(session, script).await;
    assert_eq!(
        result.unwrap(),
        Capacity {
            nodes: vec![(
                "pool-a-1".to_string(),
                Resources {
                    cpu_m: 3920,
                    memory_mi: 15935,
                },
            )],
        }
    );
}

// ----- wait_ready -----

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// `wait_ready` lists the cluster's pods, watches them from the list's resource version while
/// some are not ready, lists again after the watch reports a change, and returns once every
/// expected pod is ready.
#[tokio::test(start_paused = true)]
async fn wait_ready_lists_watches_and_lists_again_until_all_are_ready() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        answer_pod_list(
            &mut api,
            "5120",
            vec![
                pod("k1-agent-0", "agent", ready("agent")),
                pod("k1-agent-1", "agent", creating("agent")),
                pod("k1-postgres-0", "postgres", ready("postgres")),
                pod(
                    "k1-server-6d9f8b7c4-x2x9q",
                    "server",
                    running_not_ready("server"),
                ),
            ],
        )
        .await;

        let call = api.expect(Method::GET, PODS).await;
        call.assert_query(&[
            ("allowWatchBookmarks", "true"),
            ("labelSelector", SELECTOR),
            ("resourceVersion", "5120"),
            ("timeoutSeconds", "120"),
            ("watch", "true"),
        ]);
        let mut changed = pod("k1-server-6d9f8b7c4-x2x9q", "server", ready("server"));
        changed["kind"] = json!("Pod");
        changed["apiVersion"] = json!("v1");
        changed["metadata"]["resourceVersion"] = json!("5127");
        let line = format!("{}\n", json!({"type": "MODIFIED", "object": changed}));
        reply_bytes(call.send, 200, "application/json", line.into_bytes());

        answer_pod_list(
            &mut api,
            "5131",
            vec![
                pod("k1-agent-0", "agent", ready("agent")),
                pod("k1-agent-1", "agent", ready("agent")),
                pod("k1-postgres-0", "postgres", ready("postgres")),
                pod("k1-server-6d9f8b7c4-x2x9q", "server", ready("server")),
            ],
        )
        .await;
        api.done().await;
    });

    let mut progress = Vec::new();
    let result = session
        .wait_ready(&spec(), Duration::from_secs(300), &mut |line| {
            progress.push(line.to_string())
        })
        .await;
    hang_up(session, script).await;
    result.unwrap();
    assert_eq!(progress, ["postgres 1/1, server 0/1, agent 1/2"]);
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// An agent in `CrashLoopBackOff` after 3 restarts ends `wait_ready` at once (no watch) with an
/// `Error::NotReady` that names the pod and shows the last lines of its previous container's log.
#[tokio::test]
async fn wait_ready_fails_at_once_for_a_crash_loop_with_its_last_log_lines() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        answer_pod_list(
            &mut api,
            "5200",
            vec![
                pod("k1-agent-0", "agent", ready("agent")),
                pod(
                    "k1-agent-1",
                    "agent",
                    crash_looping("agent", "k1-agent-1", 3),
                ),
                pod("k1-postgres-0", "postgres", ready("postgres")),
                pod("k1-server-6d9f8b7c4-x2x9q", "server", ready("server")),
            ],
        )
        .await;
        let call = api
            .expect(
                Method::GET,
                "/api/v1/namespaces/ltops-k1/pods/k1-agent-1/log",
            )
            .await;
        call.assert_query(&[("previous", "true"), ("tailLines", "15")]);
        call.reply_text(
            "2025-06-01T10:00:02.113Z  INFO loadtest_agent: starting agent k1-agent-1\n\
             Error: cannot read the control token /etc/ltops/control-token: Permission denied (os error 13)\n",
        );
        api.done().await;
    });

    let result = session
        .wait_ready(&spec(), Duration::from_secs(300), &mut |_| {})
        .await;
    hang_up(session, script).await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::NotReady(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("cluster \"k1\" is not ready in namespace \"ltops-k1\": agent: 1 of 2 ready"),
        "{text}"
    );
    assert!(
        text.contains(
            "- pod k1-agent-1 is crash-looping (3 restarts, CrashLoopBackOff: back-off 40s"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "its last log lines:\n    2025-06-01T10:00:02.113Z  INFO loadtest_agent: starting agent k1-agent-1\n    Error: cannot read the control token /etc/ltops/control-token: Permission denied (os error 13)"
        ),
        "{text}"
    );
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// When the scheduler cannot place an agent, `wait_ready` watches until its timeout (the watch
/// reports nothing), lists once more, and fails naming the pod and the scheduler's message.
#[tokio::test(start_paused = true)]
async fn wait_ready_times_out_naming_an_unschedulable_pod_and_why() {
    let message = "0/3 nodes are available: 3 Insufficient cpu.";
    let pods = move || {
        vec![
            pod("k1-agent-0", "agent", ready("agent")),
            pod("k1-agent-1", "agent", unschedulable(message)),
            pod("k1-postgres-0", "postgres", ready("postgres")),
            pod("k1-server-6d9f8b7c4-x2x9q", "server", ready("server")),
        ]
    };
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        answer_pod_list(&mut api, "7001", pods()).await;
        let watch = api.expect(Method::GET, PODS).await;
        watch.assert_query(&[
            ("allowWatchBookmarks", "true"),
            ("labelSelector", SELECTOR),
            ("resourceVersion", "7001"),
            ("timeoutSeconds", "90"),
            ("watch", "true"),
        ]);
        // Nothing changes: the watch stays open with no event until the session gives up on it.
        answer_pod_list(&mut api, "7001", pods()).await;
        drop(watch);
        api.done().await;
    });

    let start = Instant::now();
    let mut progress = Vec::new();
    let result = session
        .wait_ready(&spec(), Duration::from_secs(90), &mut |line| {
            progress.push(line.to_string())
        })
        .await;
    hang_up(session, script).await;
    assert_eq!(start.elapsed(), Duration::from_secs(90));
    let err = result.unwrap_err();
    assert!(matches!(err, Error::NotReady(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("agent: 1 of 2 ready"), "{text}");
    assert!(
        text.contains(
            "- pod k1-agent-1 cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu. Add nodes"
        ),
        "{text}"
    );
    assert!(!text.contains("k1-agent-0"), "{text}");
    assert_eq!(progress, ["postgres 1/1, server 1/1, agent 1/2"]);
}

// ----- logs -----

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// `logs` without follow asks for the last lines only and writes the log as the API server sent it.
#[tokio::test]
async fn logs_writes_the_tail_the_api_server_sends() {
    let log = "2025-06-01T10:00:00.001Z  INFO loadtest_agent: listening on 0.0.0.0:8070\n\
               2025-06-01T10:00:05.420Z  INFO loadtest_agent: run r-17 started: 500 users\n\
               2025-06-01T10:05:05.433Z  INFO loadtest_agent: run r-17 finished\n";
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        let call = api
            .expect(
                Method::GET,
                "/api/v1/namespaces/ltops-k1/pods/k1-agent-0/log",
            )
            .await;
        call.assert_query(&[("tailLines", "20")]);
        call.reply_text(log);
        api.done().await;
    });

    let mut out = Vec::new();
    let result = session
        .logs("k1-agent-0", None, false, Some(20), &mut out)
        .await;
    hang_up(session, script).await;
    result.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), log);
}

// ----- delete -----

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// Deleting a cluster that owns its namespace deletes the namespace in the foreground, then polls
/// it while it is terminating, and returns nothing left once the API server no longer finds it.
#[tokio::test(start_paused = true)]
async fn delete_own_namespace_waits_until_it_is_gone() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        let call = api.expect(Method::DELETE, NAMESPACE).await;
        call.assert_query(&[]);
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
        assert_eq!(call.json(), json!({"propagationPolicy": "Foreground"}));
        call.reply(200, &terminating_namespace());

        let call = api.expect(Method::GET, NAMESPACE).await;
        call.assert_query(&[]);
        call.reply(200, &terminating_namespace());
        let call = api.expect(Method::GET, NAMESPACE).await;
        namespace_not_found(call);
        api.done().await;
    });

    let start = Instant::now();
    let result = session
        .delete("k1", "c0ffee42", true, Duration::from_secs(300))
        .await;
    hang_up(session, script).await;
    assert_eq!(result.unwrap(), Vec::<Leftover>::new());
    // One poll interval between the two reads.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// Deleting again while the namespace is still terminating (a first delete timed out): the API
/// server answers the DELETE with 409 Conflict ("The system is ensuring all content is removed
/// from this namespace"), and the session waits for the namespace to go like the first time.
#[tokio::test(start_paused = true)]
async fn delete_own_namespace_that_is_already_terminating_waits_for_it() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        let call = api.expect(Method::DELETE, NAMESPACE).await;
        assert_eq!(call.json(), json!({"propagationPolicy": "Foreground"}));
        call.reply_status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on namespaces \"ltops-k1\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system.",
            "namespaces",
            NS,
        );
        let call = api.expect(Method::GET, NAMESPACE).await;
        call.reply(200, &terminating_namespace());
        let call = api.expect(Method::GET, NAMESPACE).await;
        namespace_not_found(call);
        api.done().await;
    });

    let result = session
        .delete("k1", "c0ffee42", true, Duration::from_secs(300))
        .await;
    hang_up(session, script).await;
    assert_eq!(result.unwrap(), Vec::<Leftover>::new());
}

/// Answers a shared-namespace delete's collection deletes: each kind in order, then the claims.
async fn answer_collection_deletes(api: &mut ApiServer) {
    for (path, kind, version, deleted) in collections() {
        let call = api.expect(Method::DELETE, path).await;
        assert_eq!(call.raw_query, SELECTOR_QUERY, "query of DELETE {path}");
        assert_eq!(call.json(), json!({"propagationPolicy": "Background"}));
        call.reply(200, &list(kind, version, "6050", deleted));
    }
    let call = api.expect(Method::DELETE, PVCS).await;
    call.assert_query(&[("labelSelector", SELECTOR)]);
    assert_eq!(call.json(), json!({"propagationPolicy": "Background"}));
    call.reply(
        200,
        &list("PersistentVolumeClaimList", "v1", "6051", vec![claim()]),
    );
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// In a shared namespace, delete removes the cluster's objects by label, kind by kind (dependents
/// first) and then the database's claims, and returns nothing left when every list comes back
/// empty.
#[tokio::test(start_paused = true)]
async fn delete_in_a_shared_namespace_deletes_each_kind_by_label() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        answer_collection_deletes(&mut api).await;
        answer_leftovers(&mut api, vec![]).await;
        api.done().await;
    });

    let result = session
        .delete("k1", "c0ffee42", false, Duration::from_secs(60))
        .await;
    hang_up(session, script).await;
    assert_eq!(result.unwrap(), Vec::<Leftover>::new());
}

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// A pod that is still terminating when the timeout passes is returned as left over (after a
/// check every 2 seconds: at 0, 2 and 4 seconds for a 3-second timeout).
#[tokio::test(start_paused = true)]
async fn delete_in_a_shared_namespace_returns_a_pod_left_past_the_timeout() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        answer_collection_deletes(&mut api).await;
        for _ in 0..3 {
            let mut stuck = pod("k1-postgres-0", "postgres", ready("postgres"));
            stuck["metadata"]["deletionTimestamp"] = json!("2025-06-01T11:00:00Z");
            stuck["metadata"]["deletionGracePeriodSeconds"] = json!(30);
            answer_leftovers(&mut api, vec![stuck]).await;
        }
        api.done().await;
    });

    let start = Instant::now();
    let result = session
        .delete("k1", "c0ffee42", false, Duration::from_secs(3))
        .await;
    hang_up(session, script).await;
    assert_eq!(
        result.unwrap(),
        [Leftover {
            kind: "Pod".into(),
            name: "k1-postgres-0".into(),
        }]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

// ----- namespace_labels -----

/// No Kubernetes API server can run on this machine, so the client is tested against a scripted
/// one that asserts each request and answers as the API server would.
///
/// `namespace_labels` is `None` when the API server does not find the namespace, and its labels
/// when it does.
#[tokio::test]
async fn namespace_labels_are_none_for_a_missing_namespace() {
    let (session, mut api) = connect();
    let script = tokio::spawn(async move {
        let call = api.expect(Method::GET, NAMESPACE).await;
        call.assert_query(&[]);
        namespace_not_found(call);
        let call = api.expect(Method::GET, NAMESPACE).await;
        call.reply(
            200,
            &json!({
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {
                    "name": NS,
                    "uid": "9f8e7d6c-ns",
                    "resourceVersion": "7000",
                    "creationTimestamp": TIME,
                    "labels": {
                        "kubernetes.io/metadata.name": NS,
                        "app.kubernetes.io/managed-by": "ltops",
                        "ltops.dev/cluster": "k1",
                    },
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }),
        );
        api.done().await;
    });

    let missing = session.namespace_labels().await;
    let present = session.namespace_labels().await;
    hang_up(session, script).await;
    assert_eq!(missing.unwrap(), None);
    let labels = present.unwrap().unwrap();
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        [
            (
                "app.kubernetes.io/managed-by".to_string(),
                "ltops".to_string()
            ),
            ("kubernetes.io/metadata.name".to_string(), NS.to_string()),
            ("ltops.dev/cluster".to_string(), "k1".to_string()),
        ]
    );
}
