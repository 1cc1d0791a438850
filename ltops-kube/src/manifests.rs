//! The objects of one cluster, built from a [`ClusterSpec`]: the same objects, names, labels,
//! ports, probes, security contexts and resources as the Helm chart in `charts/chat-loadtest`
//! renders for the same settings (a test renders both and compares them).
//!
//! Objects are built as JSON and checked by deserializing each into its `k8s-openapi` type, so a
//! misspelt field is caught here; note that `k8s-openapi` ignores unknown fields, so the strict
//! schema check is the tests' `kubernetes-validate` run over `ltops deploy --dry-run -o yaml`.

use base64::Engine as _;
use serde_json::{json, Value};

/// Ports inside the pods.
pub const SERVER_PORT: u16 = 8065;
pub const SERVER_METRICS_PORT: u16 = 8067;
pub const AGENT_PORT: u16 = 8070;
pub const POSTGRES_PORT: u16 = 5432;
pub const PROMETHEUS_PORT: u16 = 9090;
pub const GRAFANA_PORT: u16 = 3000;
/// The agent's unauthenticated health route (the control API's `/healthz`).
pub const AGENT_HEALTH_PATH: &str = "/healthz";
/// Where the chart and `ltops` mount things.
const TOKEN_FILE: &str = "/etc/ltops/control-token";
const SERVER_CONFIG_FILE: &str = "/etc/chat-server/server.toml";
/// The label every object carries with the cluster's name / id.
pub const LABEL_CLUSTER: &str = "ltops.dev/cluster";
pub const LABEL_CLUSTER_ID: &str = "ltops.dev/cluster-id";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// The default PostgreSQL image.
pub const POSTGRES_IMAGE: &str = "postgres:16-bookworm";
/// The default Prometheus image (the project's official one, a long-term-support release).
pub const PROMETHEUS_IMAGE: &str = "quay.io/prometheus/prometheus:v3.5.0";
/// The default Grafana image: the release whose published schema `dashboards/` is checked against.
pub const GRAFANA_IMAGE: &str = "docker.io/grafana/grafana:13.2.3";
/// The uid of the provisioned Prometheus datasource, which the dashboards' `${DS_PROMETHEUS}`
/// becomes.
pub const GRAFANA_DATASOURCE_UID: &str = "prometheus";
/// The dashboards provisioned into Grafana (`dashboards/` of the repository; the chart reads the
/// same files through its `dashboards` link).
pub const DASHBOARDS: [(&str, &str); 3] = [
    ("agents.json", include_str!("../../dashboards/agents.json")),
    (
        "overview.json",
        include_str!("../../dashboards/overview.json"),
    ),
    ("server.json", include_str!("../../dashboards/server.json")),
];
/// How often the cluster's Prometheus scrapes every pod, as ltops's own Prometheus does.
pub const SCRAPE_INTERVAL_S: u32 = 2;
/// Non-root ids: the product image's user, and the PostgreSQL image's `postgres`.
const APP_UID: i64 = 10001;
const POSTGRES_UID: i64 = 999;
/// The Prometheus image's `nobody`.
const PROMETHEUS_UID: i64 = 65534;
/// Grafana runs as a uid of its own (the image supports arbitrary uids).
const GRAFANA_UID: i64 = 10472;

/// Where the cluster's database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseSpec {
    /// A PostgreSQL StatefulSet of the cluster's own, with a PVC.
    Internal {
        storage_class: Option<String>,
        storage: String,
        image: String,
    },
    /// An existing database whose URL is in an existing Secret's key.
    External {
        secret_name: String,
        secret_key: String,
    },
}

/// Everything the manifests depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub cluster_id: String,
    pub namespace: String,
    /// The product's version (the `app.kubernetes.io/version` label).
    pub version: String,
    pub image: String,
    pub app_count: u32,
    pub agents: u32,
    pub database: DatabaseSpec,
    /// How many simulated users the cluster is sized for.
    pub users: u64,
    /// The cluster's Prometheus (its image), scraping every server and agent pod.
    pub prometheus: Option<String>,
    /// Grafana (its image) with that Prometheus as its datasource and `dashboards/` provisioned;
    /// only with a Prometheus.
    pub grafana: Option<String>,
}

/// The secret values; `None` in a dry run, which prints placeholders.
#[derive(Clone)]
pub struct Secrets {
    pub control_token: String,
    /// The internal database's password.
    pub postgres_password: String,
    /// Grafana's `admin` password.
    pub grafana_password: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// CPU in millicores and memory in MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_m: u64,
    pub memory_mi: u64,
}

impl Resources {
    fn json(self) -> Value {
        json!({
            "requests": {"cpu": format!("{}m", self.cpu_m), "memory": format!("{}Mi", self.memory_mi)},
            "limits": {"cpu": format!("{}m", self.cpu_m * 2), "memory": format!("{}Mi", self.memory_mi * 2)},
        })
    }
}

/// Requests per pod of each component (limits are twice these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub agent: Resources,
    pub server: Resources,
    pub postgres: Option<Resources>,
    pub prometheus: Option<Resources>,
    pub grafana: Option<Resources>,
}

impl Sizing {
    /// What `spec.users` needs, per pod: agents by the users each simulates, servers by the
    /// connections each holds, PostgreSQL by the whole population (the chart computes the same).
    pub fn of(spec: &ClusterSpec) -> Sizing {
        let ceil = |a: u64, b: u64| a.div_ceil(b.max(1));
        let per_agent = ceil(spec.users, u64::from(spec.agents));
        let per_server = ceil(spec.users, u64::from(spec.app_count));
        Sizing {
            agent: Resources {
                cpu_m: 100 + per_agent / 10,
                memory_mi: 64 + per_agent / 32,
            },
            server: Resources {
                cpu_m: 250 + per_server / 10,
                memory_mi: 128 + per_server / 16,
            },
            postgres: matches!(spec.database, DatabaseSpec::Internal { .. }).then_some(Resources {
                cpu_m: 250 + spec.users / 20,
                memory_mi: 256 + spec.users / 64,
            }),
            // Its series grow with the pods it scrapes.
            prometheus: spec.prometheus.is_some().then(|| {
                let pods = u64::from(spec.agents) + u64::from(spec.app_count);
                Resources {
                    cpu_m: 100 + 10 * pods,
                    memory_mi: 256 + 16 * pods,
                }
            }),
            grafana: (spec.prometheus.is_some() && spec.grafana.is_some()).then_some(Resources {
                cpu_m: 100,
                memory_mi: 256,
            }),
        }
    }

    /// Requests of the whole cluster.
    pub fn total(&self, spec: &ClusterSpec) -> Resources {
        let n_a = u64::from(spec.agents);
        let n_s = u64::from(spec.app_count);
        let none = Resources {
            cpu_m: 0,
            memory_mi: 0,
        };
        let pg = self.postgres.unwrap_or(none);
        let prom = self.prometheus.unwrap_or(none);
        let gf = self.grafana.unwrap_or(none);
        Resources {
            cpu_m: self.agent.cpu_m * n_a
                + self.server.cpu_m * n_s
                + pg.cpu_m
                + prom.cpu_m
                + gf.cpu_m,
            memory_mi: self.agent.memory_mi * n_a
                + self.server.memory_mi * n_s
                + pg.memory_mi
                + prom.memory_mi
                + gf.memory_mi,
        }
    }

    /// The largest single pod's requests (each must fit on one node).
    pub fn largest(&self) -> Resources {
        let mut r = [
            Some(self.agent),
            Some(self.server),
            self.postgres,
            self.prometheus,
            self.grafana,
        ]
        .into_iter()
        .flatten();
        let first = r.next().unwrap_or(self.agent);
        r.fold(first, |a, b| Resources {
            cpu_m: a.cpu_m.max(b.cpu_m),
            memory_mi: a.memory_mi.max(b.memory_mi),
        })
    }
}

/// One object to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub kind: Kind,
    pub name: String,
    pub body: Value,
}

/// The kinds a cluster is made of, in apply order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    ServiceAccount,
    Secret,
    ConfigMap,
    Role,
    RoleBinding,
    NetworkPolicy,
    Service,
    StatefulSet,
    Deployment,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::StatefulSet => "StatefulSet",
            Kind::Deployment => "Deployment",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::StatefulSet | Kind::Deployment => "apps/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::Role | Kind::RoleBinding => "rbac.authorization.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Kinds deleted one by one in a shared namespace, dependents first.
    pub const DELETE_ORDER: [Kind; 9] = [
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::RoleBinding,
        Kind::Role,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
    ];
}

/// Object names of a cluster.
pub fn secret_name(cluster: &str) -> String {
    format!("{cluster}-secrets")
}
pub fn server_name(cluster: &str) -> String {
    format!("{cluster}-server")
}
pub fn agent_name(cluster: &str) -> String {
    format!("{cluster}-agent")
}
pub fn postgres_name(cluster: &str) -> String {
    format!("{cluster}-postgres")
}
/// The Prometheus Deployment, Service, ServiceAccount, Role and RoleBinding.
pub fn prometheus_name(cluster: &str) -> String {
    format!("{cluster}-prometheus")
}
/// Grafana's Deployment and Service (its ConfigMaps add `-provisioning` and `-dashboards`).
pub fn grafana_name(cluster: &str) -> String {
    format!("{cluster}-grafana")
}
/// The pod of agent `index` (a StatefulSet's stable name).
pub fn agent_pod(cluster: &str, index: u32) -> String {
    format!("{}-{index}", agent_name(cluster))
}

/// The labels every object of the cluster carries.
pub fn common_labels(spec: &ClusterSpec) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("app.kubernetes.io/name", "chat-loadtest"),
        (LABEL_INSTANCE, spec.name.as_str()),
        ("app.kubernetes.io/part-of", "chat-loadtest"),
        ("app.kubernetes.io/version", spec.version.as_str()),
        ("app.kubernetes.io/managed-by", "ltops"),
        (LABEL_CLUSTER, spec.name.as_str()),
        (LABEL_CLUSTER_ID, spec.cluster_id.as_str()),
    ] {
        m.insert(k.into(), Value::String(v.into()));
    }
    m
}

/// The label selector (`key=value,…`) that finds every object of a cluster.
pub fn cluster_selector(name: &str, cluster_id: &str) -> String {
    format!("{LABEL_CLUSTER}={name},{LABEL_CLUSTER_ID}={cluster_id}")
}

/// Builds a cluster's manifests.
pub struct Builder<'a> {
    spec: &'a ClusterSpec,
    sizing: Sizing,
}

impl<'a> Builder<'a> {
    pub fn new(spec: &'a ClusterSpec) -> Self {
        Builder {
            spec,
            sizing: Sizing::of(spec),
        }
    }

    /// Every object in apply order; `namespace` adds the Namespace itself (when the cluster owns
    /// it). Without `secrets` (a dry run) the Secret holds placeholders.
    /// The cluster's workloads (Deployments, StatefulSet) with zero replicas, agents first:
    /// what `stop` applies. Every other object, the volumes and the data stay; applying
    /// [`Builder::build`] again scales them back.
    pub fn stopped(&self, secrets: Option<&Secrets>) -> Vec<Manifest> {
        let mut ms: Vec<Manifest> = self
            .build(false, secrets)
            .into_iter()
            .filter(|m| matches!(m.kind, Kind::Deployment | Kind::StatefulSet))
            .rev()
            .collect();
        for m in &mut ms {
            m.body["spec"]["replicas"] = json!(0);
        }
        ms
    }

    pub fn build(&self, namespace: bool, secrets: Option<&Secrets>) -> Vec<Manifest> {
        let mut out = Vec::new();
        if namespace {
            out.push(self.namespace());
        }
        out.push(self.secret(secrets));
        out.push(self.server_config());
        if let DatabaseSpec::Internal { .. } = self.spec.database {
            out.push(self.network_policy("postgres", &[POSTGRES_PORT], Some("server")));
            out.push(self.postgres_service());
            out.push(self.postgres_statefulset());
        }
        out.push(self.network_policy("server", &[SERVER_PORT, SERVER_METRICS_PORT], None));
        out.push(self.server_service());
        out.push(self.server_deployment());
        out.push(self.network_policy("agent", &[AGENT_PORT], None));
        out.push(self.agent_service());
        out.push(self.agent_statefulset());
        if let Some(image) = &self.spec.prometheus {
            out.push(self.prometheus_account());
            out.push(self.prometheus_config());
            out.push(self.prometheus_role());
            out.push(self.prometheus_binding());
            out.push(self.network_policy("prometheus", &[PROMETHEUS_PORT], None));
            out.push(self.prometheus_service());
            out.push(self.prometheus_deployment(image));
            if let Some(image) = &self.spec.grafana {
                out.push(self.grafana_provisioning());
                out.push(self.grafana_dashboards());
                out.push(self.network_policy("grafana", &[GRAFANA_PORT], None));
                out.push(self.grafana_service());
                out.push(self.grafana_deployment(image));
            }
        }
        out
    }

    fn labels(&self, component: Option<&str>) -> Value {
        let mut m = common_labels(self.spec);
        if let Some(c) = component {
            m.insert(LABEL_COMPONENT.into(), Value::String(c.into()));
        }
        Value::Object(m)
    }

    /// Labels that never change over the cluster's life, for volume claim templates (which a
    /// StatefulSet update may not change): no version, no manager.
    fn stable_labels(&self, component: &str) -> Value {
        let mut m = common_labels(self.spec);
        m.remove("app.kubernetes.io/version");
        m.remove("app.kubernetes.io/managed-by");
        m.insert(LABEL_COMPONENT.into(), Value::String(component.into()));
        Value::Object(m)
    }

    fn selector(&self, component: &str) -> Value {
        json!({LABEL_INSTANCE: self.spec.name, LABEL_COMPONENT: component})
    }

    fn object(&self, kind: Kind, name: String, component: Option<&str>, rest: Value) -> Manifest {
        let mut metadata = json!({"name": name, "labels": self.labels(component)});
        if kind != Kind::Namespace {
            metadata["namespace"] = json!(self.spec.namespace);
        }
        let mut body =
            json!({"apiVersion": kind.api_version(), "kind": kind.name(), "metadata": metadata});
        if let (Value::Object(b), Value::Object(r)) = (&mut body, rest) {
            b.extend(r);
        }
        Manifest { kind, name, body }
    }

    fn namespace(&self) -> Manifest {
        self.object(
            Kind::Namespace,
            self.spec.namespace.clone(),
            None,
            json!({}),
        )
    }

    fn secret(&self, secrets: Option<&Secrets>) -> Manifest {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let placeholder = "set-by-ltops-at-deploy";
        let mut data = serde_json::Map::new();
        let token = secrets.map_or(placeholder, |s| s.control_token.as_str());
        data.insert("control-token".into(), json!(b64(token)));
        if self.grafana() {
            let pw = secrets.map_or(placeholder, |s| s.grafana_password.as_str());
            data.insert("grafana-admin-password".into(), json!(b64(pw)));
        }
        if let DatabaseSpec::Internal { .. } = self.spec.database {
            let pw = secrets.map_or(placeholder, |s| s.postgres_password.as_str());
            data.insert("postgres-password".into(), json!(b64(pw)));
            let url = format!(
                "postgres://ltops:{pw}@{}:{POSTGRES_PORT}/chat?sslmode=disable",
                postgres_name(&self.spec.name)
            );
            data.insert("database-url".into(), json!(b64(&url)));
        }
        self.object(
            Kind::Secret,
            secret_name(&self.spec.name),
            None,
            json!({"type": "Opaque", "data": data}),
        )
    }

    fn server_config(&self) -> Manifest {
        let toml = format!(
            "listen = \"0.0.0.0:{SERVER_PORT}\"\nmetrics-listen = \"0.0.0.0:{SERVER_METRICS_PORT}\"\n"
        );
        self.object(
            Kind::ConfigMap,
            format!("{}-server-config", self.spec.name),
            None,
            json!({"data": {"server.toml": toml}}),
        )
    }

    fn service(
        &self,
        name: String,
        component: &str,
        port: u16,
        port_name: &str,
        headless: bool,
    ) -> Manifest {
        let mut spec = json!({
            "type": "ClusterIP",
            "selector": self.selector(component),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
        });
        if headless {
            spec["clusterIP"] = json!("None");
            spec["publishNotReadyAddresses"] = json!(false);
        }
        self.object(Kind::Service, name, Some(component), json!({"spec": spec}))
    }

    /// Ingress to a component's pods only on its ports (and, for PostgreSQL, only from the
    /// cluster's servers). Port-forwards through the API server are not affected.
    fn network_policy(&self, component: &str, ports: &[u16], from: Option<&str>) -> Manifest {
        let ports: Vec<Value> = ports
            .iter()
            .map(|p| json!({"protocol": "TCP", "port": p}))
            .collect();
        let mut rule = json!({"ports": ports});
        if let Some(f) = from {
            rule["from"] = json!([{"podSelector": {"matchLabels": self.selector(f)}}]);
        }
        self.object(
            Kind::NetworkPolicy,
            format!("{}-{component}", self.spec.name),
            Some(component),
            json!({"spec": {
                "podSelector": {"matchLabels": self.selector(component)},
                "policyTypes": ["Ingress"],
                "ingress": [rule],
            }}),
        )
    }

    fn postgres_service(&self) -> Manifest {
        self.service(
            postgres_name(&self.spec.name),
            "postgres",
            POSTGRES_PORT,
            "postgres",
            false,
        )
    }

    fn server_service(&self) -> Manifest {
        self.service(
            server_name(&self.spec.name),
            "server",
            SERVER_PORT,
            "http",
            false,
        )
    }

    fn agent_service(&self) -> Manifest {
        self.service(
            agent_name(&self.spec.name),
            "agent",
            AGENT_PORT,
            "control",
            true,
        )
    }

    fn pod_security(uid: i64) -> Value {
        json!({
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    }

    fn container_security() -> Value {
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
        })
    }

    fn scrape(port: u16) -> Value {
        json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": port.to_string(),
            "prometheus.io/path": "/metrics",
        })
    }

    fn http_probes(path: &str, port: &str) -> (Value, Value) {
        (
            json!({"httpGet": {"path": path, "port": port}, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3}),
            json!({"httpGet": {"path": path, "port": port}, "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6}),
        )
    }

    fn pod_template(&self, component: &str, annotations: Option<Value>, spec: Value) -> Value {
        let mut metadata = json!({"labels": self.labels(Some(component))});
        if let Some(a) = annotations {
            metadata["annotations"] = a;
        }
        let mut spec = spec;
        spec["automountServiceAccountToken"] = json!(false);
        spec["enableServiceLinks"] = json!(false);
        json!({"metadata": metadata, "spec": spec})
    }

    fn database_url_env(&self) -> Value {
        let (name, key) = match &self.spec.database {
            DatabaseSpec::Internal { .. } => {
                (secret_name(&self.spec.name), "database-url".to_string())
            }
            DatabaseSpec::External {
                secret_name,
                secret_key,
            } => (secret_name.clone(), secret_key.clone()),
        };
        json!({"name": "CHAT_SERVER_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}})
    }

    fn postgres_statefulset(&self) -> Manifest {
        let name = postgres_name(&self.spec.name);
        let DatabaseSpec::Internal {
            storage_class,
            storage,
            image,
        } = &self.spec.database
        else {
            unreachable_external()
        };
        let res = self.sizing.postgres.unwrap_or(Resources {
            cpu_m: 250,
            memory_mi: 256,
        });
        let container = json!({
            "name": "postgres",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
            "env": [
                {"name": "POSTGRES_USER", "value": "ltops"},
                {"name": "POSTGRES_DB", "value": "chat"},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret_name(&self.spec.name), "key": "postgres-password"}}},
            ],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "ltops", "-d", "chat", "-h", "127.0.0.1"]}, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
            "livenessProbe": {"tcpSocket": {"port": "postgres"}, "initialDelaySeconds": 30, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6},
            "resources": res.json(),
            "securityContext": Self::container_security(),
            "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                {"name": "run", "mountPath": "/var/run/postgresql"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        });
        let mut claim = json!({
            "metadata": {"name": "data", "labels": self.stable_labels("postgres")},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
        });
        if let Some(class) = storage_class {
            claim["spec"]["storageClassName"] = json!(class);
        }
        let template = self.pod_template(
            "postgres",
            None,
            json!({
                "securityContext": Self::pod_security(POSTGRES_UID),
                "containers": [container],
                "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            }),
        );
        self.object(
            Kind::StatefulSet,
            name.clone(),
            Some("postgres"),
            json!({"spec": {
                "replicas": 1,
                "serviceName": name,
                "selector": {"matchLabels": self.selector("postgres")},
                "template": template,
                "volumeClaimTemplates": [claim],
            }}),
        )
    }

    fn server_deployment(&self) -> Manifest {
        let (ready, live) = Self::http_probes("/api/v4/system/ping", "http");
        let container = json!({
            "name": "chat-server",
            "image": self.spec.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/local/bin/chat-server"],
            "args": ["--config", SERVER_CONFIG_FILE],
            "env": [self.database_url_env()],
            "ports": [
                {"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"},
                {"name": "metrics", "containerPort": SERVER_METRICS_PORT, "protocol": "TCP"},
            ],
            "readinessProbe": ready,
            "livenessProbe": live,
            "resources": self.sizing.server.json(),
            "securityContext": Self::container_security(),
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/chat-server", "readOnly": true},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        });
        let template = self.pod_template(
            "server",
            Some(Self::scrape(SERVER_METRICS_PORT)),
            json!({
                "securityContext": Self::pod_security(APP_UID),
                "containers": [container],
                "volumes": [
                    {"name": "config", "configMap": {"name": format!("{}-server-config", self.spec.name)}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            }),
        );
        self.object(
            Kind::Deployment,
            server_name(&self.spec.name),
            Some("server"),
            json!({"spec": {
                "replicas": self.spec.app_count,
                "selector": {"matchLabels": self.selector("server")},
                "template": template,
            }}),
        )
    }

    fn agent_statefulset(&self) -> Manifest {
        let name = agent_name(&self.spec.name);
        let (ready, live) = Self::http_probes(AGENT_HEALTH_PATH, "control");
        let container = json!({
            "name": "loadtest-agent",
            "image": self.spec.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/local/bin/loadtest-agent"],
            "args": [
                "serve", "--listen", format!("0.0.0.0:{AGENT_PORT}"),
                "--token-file", TOKEN_FILE,
                "--results-dir", "/results",
                "--agent-id", "$(POD_NAME)",
            ],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "control", "containerPort": AGENT_PORT, "protocol": "TCP"}],
            "readinessProbe": ready,
            "livenessProbe": live,
            "resources": self.sizing.agent.json(),
            "securityContext": Self::container_security(),
            "volumeMounts": [
                {"name": "token", "mountPath": "/etc/ltops", "readOnly": true},
                {"name": "results", "mountPath": "/results"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        });
        let template = self.pod_template(
            "agent",
            Some(Self::scrape(AGENT_PORT)),
            json!({
                "securityContext": Self::pod_security(APP_UID),
                "containers": [container],
                "volumes": [
                    {"name": "token", "secret": {"secretName": secret_name(&self.spec.name), "defaultMode": 0o400,
                        "items": [{"key": "control-token", "path": "control-token"}]}},
                    {"name": "results", "emptyDir": {}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            }),
        );
        self.object(
            Kind::StatefulSet,
            name.clone(),
            Some("agent"),
            json!({"spec": {
                "replicas": self.spec.agents,
                "serviceName": name,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": self.selector("agent")},
                "template": template,
            }}),
        )
    }

    fn prometheus_account(&self) -> Manifest {
        // The token is mounted into the Prometheus pod only (its pod spec asks for it).
        self.object(
            Kind::ServiceAccount,
            prometheus_name(&self.spec.name),
            Some("prometheus"),
            json!({"automountServiceAccountToken": false}),
        )
    }

    /// Pod discovery in the cluster's namespace, and nothing else.
    fn prometheus_role(&self) -> Manifest {
        self.object(
            Kind::Role,
            prometheus_name(&self.spec.name),
            Some("prometheus"),
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
        )
    }

    fn prometheus_binding(&self) -> Manifest {
        let name = prometheus_name(&self.spec.name);
        self.object(
            Kind::RoleBinding,
            name.clone(),
            Some("prometheus"),
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.spec.namespace}],
            }),
        )
    }

    fn prometheus_config(&self) -> Manifest {
        self.object(
            Kind::ConfigMap,
            format!("{}-config", prometheus_name(&self.spec.name)),
            Some("prometheus"),
            json!({"data": {"prometheus.yml": prometheus_yml(self.spec)}}),
        )
    }

    fn prometheus_service(&self) -> Manifest {
        self.service(
            prometheus_name(&self.spec.name),
            "prometheus",
            PROMETHEUS_PORT,
            "http",
            false,
        )
    }

    fn prometheus_deployment(&self, image: &str) -> Manifest {
        let name = prometheus_name(&self.spec.name);
        let res = self.sizing.prometheus.unwrap_or(Resources {
            cpu_m: 100,
            memory_mi: 256,
        });
        let probe = |path: &str, delay: u32| json!({"httpGet": {"path": path, "port": "http"}, "initialDelaySeconds": delay, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6});
        let container = json!({
            "name": "prometheus",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "args": [
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--storage.tsdb.retention.time=15d",
                "--storage.tsdb.retention.size=4GB",
                format!("--web.listen-address=:{PROMETHEUS_PORT}"),
            ],
            "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
            "readinessProbe": probe("/-/ready", 0),
            "livenessProbe": probe("/-/healthy", 30),
            "resources": res.json(),
            "securityContext": Self::container_security(),
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/prometheus", "readOnly": true},
                {"name": "data", "mountPath": "/prometheus"},
            ],
        });
        let mut template = self.pod_template(
            "prometheus",
            None,
            json!({
                "securityContext": Self::pod_security(PROMETHEUS_UID),
                "containers": [container],
                "volumes": [
                    {"name": "config", "configMap": {"name": format!("{name}-config")}},
                    {"name": "data", "emptyDir": {"sizeLimit": "5Gi"}},
                ],
            }),
        );
        // Pod discovery needs the API token: this pod alone mounts its service account's.
        template["spec"]["serviceAccountName"] = json!(name);
        template["spec"]["automountServiceAccountToken"] = json!(true);
        let mut m = self.object(
            Kind::Deployment,
            name,
            Some("prometheus"),
            json!({"spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": self.selector("prometheus")},
                "template": template,
            }}),
        );
        m.body["metadata"]["annotations"] = json!({
            "checkov.io/skip1": "CKV_K8S_38=Prometheus discovers the cluster's pods through the API server: it needs its service account's token (a Role allowing get/list/watch on pods in this namespace only)",
        });
        m
    }

    /// Grafana runs only beside the cluster's Prometheus.
    fn grafana(&self) -> bool {
        self.spec.prometheus.is_some() && self.spec.grafana.is_some()
    }

    fn grafana_provisioning(&self) -> Manifest {
        let datasources = grafana_datasources(&format!(
            "http://{}:{PROMETHEUS_PORT}",
            prometheus_name(&self.spec.name)
        ));
        let dashboards = grafana_dashboard_provider("/etc/grafana/dashboards");
        self.object(
            Kind::ConfigMap,
            format!("{}-provisioning", grafana_name(&self.spec.name)),
            Some("grafana"),
            json!({"data": {"datasources.yaml": datasources, "dashboards.yaml": dashboards}}),
        )
    }

    fn grafana_dashboards(&self) -> Manifest {
        let data: serde_json::Map<String, Value> = DASHBOARDS
            .iter()
            .map(|(file, text)| ((*file).to_string(), json!(dashboard_for_grafana(text))))
            .collect();
        self.object(
            Kind::ConfigMap,
            format!("{}-dashboards", grafana_name(&self.spec.name)),
            Some("grafana"),
            json!({"data": data}),
        )
    }

    fn grafana_service(&self) -> Manifest {
        self.service(
            grafana_name(&self.spec.name),
            "grafana",
            GRAFANA_PORT,
            "http",
            false,
        )
    }

    fn grafana_deployment(&self, image: &str) -> Manifest {
        let name = grafana_name(&self.spec.name);
        let env = |k: &str, v: &str| json!({"name": k, "value": v});
        let container = json!({
            "name": "grafana",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "env": [
                env("GF_SECURITY_ADMIN_USER", "admin"),
                {"name": "GF_SECURITY_ADMIN_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret_name(&self.spec.name), "key": "grafana-admin-password"}}},
                env("GF_USERS_ALLOW_SIGN_UP", "false"),
                env("GF_ANALYTICS_REPORTING_ENABLED", "false"),
                env("GF_ANALYTICS_CHECK_FOR_UPDATES", "false"),
                env("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "/etc/grafana/dashboards/overview.json"),
            ],
            "ports": [{"name": "http", "containerPort": GRAFANA_PORT, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/api/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6},
            "livenessProbe": {"httpGet": {"path": "/api/health", "port": "http"}, "initialDelaySeconds": 30, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6},
            "resources": self.sizing.grafana.unwrap_or(Resources { cpu_m: 100, memory_mi: 256 }).json(),
            "securityContext": Self::container_security(),
            "volumeMounts": [
                {"name": "provisioning", "mountPath": "/etc/grafana/provisioning", "readOnly": true},
                {"name": "dashboards", "mountPath": "/etc/grafana/dashboards", "readOnly": true},
                {"name": "data", "mountPath": "/var/lib/grafana"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        });
        let template = self.pod_template(
            "grafana",
            None,
            json!({
                "securityContext": Self::pod_security(GRAFANA_UID),
                "containers": [container],
                "volumes": [
                    {"name": "provisioning", "configMap": {"name": format!("{name}-provisioning"), "items": [
                        {"key": "datasources.yaml", "path": "datasources/datasources.yaml"},
                        {"key": "dashboards.yaml", "path": "dashboards/dashboards.yaml"},
                    ]}},
                    {"name": "dashboards", "configMap": {"name": format!("{name}-dashboards")}},
                    {"name": "data", "emptyDir": {}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            }),
        );
        self.object(
            Kind::Deployment,
            name,
            Some("grafana"),
            json!({"spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": self.selector("grafana")},
                "template": template,
            }}),
        )
    }
}

/// Grafana's datasource provisioning: the cluster's Prometheus at `url`, the default datasource,
/// with the uid the provisioned dashboards use. (The ssh provider's metrics host uses it too.)
pub fn grafana_datasources(url: &str) -> String {
    format!(
        "apiVersion: 1\ndatasources:\n  - name: Prometheus\n    uid: {GRAFANA_DATASOURCE_UID}\n    type: prometheus\n    access: proxy\n    url: {url}\n    isDefault: true\n    editable: false\n    jsonData:\n      timeInterval: {SCRAPE_INTERVAL_S}s\n"
    )
}

/// Grafana's dashboard provisioning: the JSON files in `path`, read-only, in folder
/// `chat-loadtest`.
pub fn grafana_dashboard_provider(path: &str) -> String {
    format!(
        "apiVersion: 1\nproviders:\n  - name: chat-loadtest\n    folder: chat-loadtest\n    type: file\n    disableDeletion: true\n    allowUiUpdates: false\n    options:\n      path: {path}\n"
    )
}

/// A dashboard of `dashboards/` as Grafana's file provisioning takes it: provisioning resolves no
/// `__inputs`, so the `${DS_PROMETHEUS}` datasource input becomes the provisioned datasource's uid.
pub fn dashboard_for_grafana(text: &str) -> String {
    text.replace("${DS_PROMETHEUS}", GRAFANA_DATASOURCE_UID)
}

/// The cluster's `prometheus.yml`: jobs `chat-server` and `loadtest-agent` (the names the
/// dashboards select on), every pod of the cluster found through the API server (this namespace,
/// the cluster's id and component labels), scraped on its metrics port (a server's `metrics`, an
/// agent's `control`, where `/metrics` needs no token), with `instance` set to the pod's name and
/// a `cluster` label. The chart's `prometheus-configmap.yaml` renders the same text.
pub fn prometheus_yml(spec: &ClusterSpec) -> String {
    let job = |job: &str, component: &str, port: &str| {
        format!(
            "  - job_name: {job}\n    kubernetes_sd_configs:\n      - role: pod\n        namespaces:\n          names: [{ns}]\n        selectors:\n          - role: pod\n            label: \"{LABEL_CLUSTER_ID}={id},{LABEL_COMPONENT}={component}\"\n    relabel_configs:\n      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]\n        regex: \"true\"\n        action: keep\n      - source_labels: [__meta_kubernetes_pod_container_port_name]\n        regex: {port}\n        action: keep\n      - source_labels: [__meta_kubernetes_pod_name]\n        target_label: instance\n      - target_label: cluster\n        replacement: {name}\n",
            ns = spec.namespace,
            id = spec.cluster_id,
            name = spec.name,
        )
    };
    format!(
        "# The Prometheus of cluster {name} (ltops and the chart render the same file).\nglobal:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\nscrape_configs:\n{}{}",
        job("chat-server", "server", "metrics"),
        job("loadtest-agent", "agent", "control"),
        name = spec.name,
    )
}

/// `postgres_statefulset` is only built for an internal database (see `build`).
fn unreachable_external() -> ! {
    unreachable!("the PostgreSQL StatefulSet is only built for an internal database")
}

/// The manifests as one YAML stream (`---` before each document), for `deploy --dry-run -o yaml`.
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&m.body)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn spec(database: DatabaseSpec) -> ClusterSpec {
        ClusterSpec {
            name: "k1".into(),
            cluster_id: "abc123".into(),
            namespace: "ltops-k1".into(),
            version: "0.1.0".into(),
            image: "ghcr.io/chat-loadtest/chat-loadtest:0.1.0".into(),
            app_count: 2,
            agents: 3,
            database,
            users: 1000,
            prometheus: Some(PROMETHEUS_IMAGE.into()),
            grafana: Some(GRAFANA_IMAGE.into()),
        }
    }

    fn internal() -> DatabaseSpec {
        DatabaseSpec::Internal {
            storage_class: Some("fast".into()),
            storage: "10Gi".into(),
            image: POSTGRES_IMAGE.into(),
        }
    }

    #[test]
    fn sizing_follows_the_documented_formula() {
        let s = Sizing::of(&spec(internal()));
        // 1000 users over 3 agents: 334 each; over 2 servers: 500 each.
        assert_eq!(
            s.agent,
            Resources {
                cpu_m: 133,
                memory_mi: 74
            }
        );
        assert_eq!(
            s.server,
            Resources {
                cpu_m: 300,
                memory_mi: 159
            }
        );
        assert_eq!(
            s.postgres,
            Some(Resources {
                cpu_m: 300,
                memory_mi: 271
            })
        );
        // Prometheus: 5 pods to scrape.
        assert_eq!(
            s.prometheus,
            Some(Resources {
                cpu_m: 150,
                memory_mi: 336
            })
        );
        let t = s.total(&spec(internal()));
        assert_eq!(
            t.cpu_m,
            133 * 3 + 300 * 2 + 300 + 150 + 100,
            "with Grafana's 100m"
        );
        // The most CPU (PostgreSQL's) and the most memory (Prometheus's) of any pod.
        assert_eq!(
            s.largest(),
            Resources {
                cpu_m: 300,
                memory_mi: 336
            }
        );
    }

    #[test]
    fn every_object_deserializes_into_its_type_and_is_labelled() {
        use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
        for db in [
            internal(),
            DatabaseSpec::External {
                secret_name: "db".into(),
                secret_key: "url".into(),
            },
        ] {
            let sp = spec(db.clone());
            let ms = Builder::new(&sp).build(true, None);
            for m in &ms {
                let v = m.body.clone();
                match m.kind {
                    Kind::Namespace => drop(serde_json::from_value::<core::Namespace>(v).unwrap()),
                    Kind::Secret => drop(serde_json::from_value::<core::Secret>(v).unwrap()),
                    Kind::ConfigMap => drop(serde_json::from_value::<core::ConfigMap>(v).unwrap()),
                    Kind::NetworkPolicy => drop(
                        serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(
                            v,
                        )
                        .unwrap(),
                    ),
                    Kind::Service => drop(serde_json::from_value::<core::Service>(v).unwrap()),
                    Kind::StatefulSet => {
                        drop(serde_json::from_value::<apps::StatefulSet>(v).unwrap())
                    }
                    Kind::Deployment => {
                        drop(serde_json::from_value::<apps::Deployment>(v).unwrap())
                    }
                    Kind::ServiceAccount => {
                        drop(serde_json::from_value::<core::ServiceAccount>(v).unwrap())
                    }
                    Kind::Role => drop(serde_json::from_value::<rbac::Role>(v).unwrap()),
                    Kind::RoleBinding => {
                        drop(serde_json::from_value::<rbac::RoleBinding>(v).unwrap())
                    }
                }
                assert_eq!(m.body["metadata"]["labels"][LABEL_CLUSTER_ID], "abc123");
            }
            let names: Vec<_> = ms
                .iter()
                .map(|m| format!("{}/{}", m.kind.name(), m.name))
                .collect();
            for n in [
                "ServiceAccount/k1-prometheus",
                "Role/k1-prometheus",
                "Deployment/k1-prometheus",
                "ConfigMap/k1-grafana-dashboards",
                "Deployment/k1-grafana",
            ] {
                assert!(names.iter().any(|m| m == n), "{n}: {names:?}");
            }
            let has_pg = names.iter().any(|n| n == "StatefulSet/k1-postgres");
            assert_eq!(
                has_pg,
                matches!(db, DatabaseSpec::Internal { .. }),
                "{names:?}"
            );
        }
    }

    #[test]
    fn without_metrics_there_is_no_prometheus_and_no_grafana() {
        let mut sp = spec(internal());
        sp.prometheus = None;
        let ms = Builder::new(&sp).build(true, None);
        assert!(
            ms.iter()
                .all(|m| !m.name.contains("prometheus") && !m.name.contains("grafana")),
            "{:?}",
            ms.iter().map(|m| &m.name).collect::<Vec<_>>()
        );
        assert!(Sizing::of(&sp).grafana.is_none());
        assert!(ms[1].body["data"].get("grafana-admin-password").is_none());
    }

    #[test]
    fn grafana_gets_the_dashboards_with_its_provisioned_datasource() {
        let sp = spec(internal());
        let ms = Builder::new(&sp).build(false, None);
        let cm = ms
            .iter()
            .find(|m| m.name == "k1-grafana-dashboards")
            .unwrap();
        for (file, text) in DASHBOARDS {
            let got = cm.body["data"][file].as_str().unwrap();
            assert!(text.contains("${DS_PROMETHEUS}"), "{file}");
            assert!(!got.contains("${DS_PROMETHEUS}"), "{file}");
            let v: Value = serde_json::from_str(got).unwrap();
            assert_eq!(
                v["panels"][0]["datasource"]["uid"], GRAFANA_DATASOURCE_UID,
                "{file}"
            );
        }
        let prov = ms
            .iter()
            .find(|m| m.name == "k1-grafana-provisioning")
            .unwrap();
        let ds = prov.body["data"]["datasources.yaml"].as_str().unwrap();
        assert!(ds.contains("url: http://k1-prometheus:9090\n"), "{ds}");
        assert!(
            ds.contains(&format!("uid: {GRAFANA_DATASOURCE_UID}\n")),
            "{ds}"
        );
    }

    #[test]
    fn a_dry_run_prints_no_secret_and_parses_back() {
        let sp = spec(internal());
        let secrets = Secrets {
            control_token: "tok-very-secret".into(),
            postgres_password: "pw-very-secret".into(),
            grafana_password: "gf-very-secret".into(),
        };
        let real = Builder::new(&sp).build(false, Some(&secrets));
        let dry = Builder::new(&sp).build(false, None);
        let text = to_yaml(&dry).unwrap();
        for secret in ["tok-very-secret", "pw-very-secret", "gf-very-secret"] {
            assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(secret)));
            assert!(!text.contains(secret));
        }
        let real_text = to_yaml(&real).unwrap();
        assert!(
            real_text.contains(&base64::engine::general_purpose::STANDARD.encode("gf-very-secret"))
        );
        assert_ne!(real[0].body, dry[0].body);
        assert_eq!(text.matches("---\n").count(), dry.len());
        for (doc, m) in text.split("---\n").skip(1).zip(&dry) {
            let back: Value = serde_saphyr::from_str(doc).unwrap();
            assert_eq!(back, m.body, "{doc}");
        }
    }
}
