//! `ltops --type kubernetes` end to end, across real processes: the `ltops` binary, real
//! `chat-server` and `loadtest-agent` processes, and the Helm chart, strict schemas and checkov.
//!
//! No Kubernetes API server can run on this machine (no kube-apiserver, kind, k3s or envtest,
//! and no images can be pulled), so `ltops` talks to a scripted API server
//! (`util::fake_kube`): it answers the REST and WebSocket calls as the API server would and
//! stands in for the kubelet by running the real binaries as local processes, so a load test
//! goes through real port-forwards to real agents that load a real server.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::fake_kube::FakeKube;
use util::{require_binaries, text, Env};

fn bins() -> PathBuf {
    util::ltops_bin().parent().unwrap().to_path_buf()
}

/// Runs `ltops args…` with the fake's kubeconfig, off the runtime's threads (the fake serves
/// meanwhile).
async fn run(env: &Env, fake: &FakeKube, args: &[&str]) -> Output {
    let mut cmd = env.cmd(args);
    cmd.env("KUBECONFIG", fake.kubeconfig());
    let shown = args.join(" ");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    eprintln!(
        "$ ltops {shown}\n[exit {:?}]\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn workload(dir: &Path) -> PathBuf {
    util::tiny_workload(dir, "6s")
}

/// Interval records in the results files under `dir`.
fn intervals(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| t.matches("\"interval\"").count())
                .sum()
        })
        .unwrap_or(0)
}

fn nix_kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// create → deploy → status → loadtest through port-forwards → logs → ssh (exec) → dry run →
/// delete, against the scripted API server, asserting what `ltops` asked it for: server-side
/// apply with the `ltops` field manager, secrets only in a Secret, every process gone after
/// the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_against_a_scripted_api_server() {
    require_binaries();
    let scratch = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(&bins(), scratch.path()).await;
    let env = Env::new();
    let server_url = fake.server_url();

    let o = run(
        &env,
        &fake,
        &[
            "create",
            "--name",
            "k1",
            "--type",
            "kubernetes",
            "--agents",
            "2",
            "--app-count",
            "2",
            "--users",
            "200",
            "--server-url",
            &server_url,
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("namespace \"ltops-k1\""), "{}", text(&o));
    assert_eq!(fake.objects("namespaces", "").len(), 1);

    let o = run(&env, &fake, &["deploy", "-c", "k1"]).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("applied Deployment/k1-server"), "{out}");
    assert_eq!(
        out.matches("healthy").count(),
        7,
        "postgres, 2 servers, 2 agents, prometheus, grafana: {out}"
    );
    // Prometheus (on by default) discovers pods with its own account, allowed to read pods.
    for plural in ["serviceaccounts", "roles", "rolebindings"] {
        let objs = fake.objects(plural, "ltops-k1");
        assert_eq!(objs.len(), 1, "{plural}: {objs:?}");
    }
    let roles = serde_json::to_string(&fake.objects("roles", "ltops-k1")).unwrap();
    assert!(roles.contains(r#""resources":["pods"]"#), "{roles}");
    let applies: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(applies.len() >= 10, "{applies:?}");
    for r in &applies {
        assert_eq!(r.field_manager.as_deref(), Some("ltops"), "{r:?}");
    }
    // The control token is in the Secret and nowhere else.
    let token = env.state("k1").control_token;
    for plural in ["configmaps", "deployments", "statefulsets", "services"] {
        let all = serde_json::to_string(&fake.objects(plural, "ltops-k1")).unwrap();
        assert!(!all.contains(&token), "{plural} holds the token");
    }
    assert_eq!(fake.objects("statefulsets", "ltops-k1").len(), 2);

    let o = run(&env, &fake, &["status", "k1"]).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("pod k1-agent-1 on"), "{out}");
    assert!(out.contains("context \"fake\""), "{out}");
    assert!(out.contains("pod k1-prometheus-"), "{out}");
    assert!(out.contains("pod k1-grafana-"), "{out}");
    prometheus_finds_and_scrapes_the_pods(&fake, "ltops-k1", "k1", scratch.path()).await;
    assert!(
        out.contains(
            "-n ltops-k1 port-forward svc/k1-prometheus 9090`, then http://127.0.0.1:9090"
        ),
        "{out}"
    );
    assert!(
        out.contains("port-forward svc/k1-grafana 3000`, then http://127.0.0.1:3000 as admin"),
        "{out}"
    );
    // Grafana's password is in the Secret only, like the control token.
    let toml = std::fs::read_to_string(env.home.path().join("clusters/k1/cluster.toml")).unwrap();
    let gf = toml
        .lines()
        .find_map(|l| l.strip_prefix("grafana_password = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap();
    assert!(gf.len() >= 16);
    assert!(!out.contains(&gf), "status prints no password");
    for plural in ["configmaps", "deployments", "statefulsets", "services"] {
        let all = serde_json::to_string(&fake.objects(plural, "ltops-k1")).unwrap();
        assert!(!all.contains(&gf), "{plural} holds Grafana's password");
    }
    let secret = serde_json::to_string(&fake.objects("secrets", "ltops-k1")).unwrap();
    use base64::Engine as _;
    assert!(secret.contains(&base64::engine::general_purpose::STANDARD.encode(&gf)));

    let cfg = workload(env.home.path());
    let o = run(
        &env,
        &fake,
        &[
            "loadtest",
            "-c",
            "k1",
            "--config",
            cfg.to_str().unwrap(),
            "--progress",
            "none",
        ],
    )
    .await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("verdict:  pass"), "{out}");
    let last = env.state("k1").last_run.unwrap();
    for i in 0..2 {
        assert!(last.results_dir.join(format!("agent-{i}.jsonl")).is_file());
    }
    // The server pod was sampled every interval through a port-forward to its metrics port.
    let summary = util::summarize(&last.results_dir);
    let servers = &summary.report.runs[0].servers;
    assert!(!servers.is_empty(), "no server samples");
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(s.instance, format!("server-{i}"), "{servers:?}");
        assert!(
            s.samples >= 2 && s.rss_peak_bytes > 1_000_000,
            "{servers:?}"
        );
    }
    let forwards = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/portforward"))
        .count();
    assert!(
        forwards >= 2,
        "the agents were reached through port-forwards"
    );

    // An agent killed mid-run: lost (exit 1), its flushed results copied out of its pod.
    let long = util::tiny_workload(env.home.path(), "30s");
    let results = scratch.path().join("ltops-k1/k1-agent-1/results");
    let before = intervals(&results);
    let mut cmd = env.cmd(&[
        "loadtest",
        "-c",
        "k1",
        "--config",
        long.to_str().unwrap(),
        "--skip-setup",
        "--progress",
        "none",
    ]);
    cmd.env("KUBECONFIG", fake.kubeconfig());
    let child = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while intervals(&results) < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "agent-1 never flushed 3 intervals"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (_, pid) = fake
        .processes()
        .into_iter()
        .find(|(what, _)| what == "agent/ltops-k1/k1-agent-1")
        .unwrap();
    nix_kill(pid);
    let o = child.await.unwrap();
    let out = text(&o);
    eprintln!("{out}");
    assert_eq!(o.status.code(), Some(ltops::exit::FAILURE), "{out}");
    assert!(out.contains("agent-1"), "{out}");
    let last = env.state("k1").last_run.unwrap();
    let salvaged = std::fs::read_to_string(last.results_dir.join("agent-1.jsonl")).unwrap();
    assert!(salvaged.contains("\"interval\""), "{salvaged}");

    // Logs and an exec of the surviving agent.
    let o = run(
        &env,
        &fake,
        &["logs", "agent", "-c", "k1", "-i", "0", "-n", "5"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!o.stdout.is_empty(), "{}", text(&o));

    let o = run(
        &env,
        &fake,
        &[
            "ssh", "agent", "-c", "k1", "-i", "0", "--", "echo", "inside", "&&", "exit", "7",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("inside"),
        "{}",
        text(&o)
    );

    let o = run(
        &env,
        &fake,
        &["deploy", "-c", "k1", "--dry-run", "-o", "yaml"],
    )
    .await;
    let yaml = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(yaml.contains("kind: Deployment"), "{yaml}");
    assert!(!yaml.contains(&token), "a dry run prints no secret");

    // `stop` scales the workloads to zero (objects and volumes stay); `deploy` brings them back.
    let o = run(&env, &fake, &["stop", "k1"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("PersistentVolumeClaims"), "{}", text(&o));
    assert!(fake.processes().is_empty(), "{:?}", fake.processes());
    assert!(fake.objects("pods", "ltops-k1").is_empty());
    assert_eq!(
        fake.objects("deployments", "ltops-k1").len(),
        3,
        "server, prometheus, grafana"
    );
    assert_eq!(fake.objects("statefulsets", "ltops-k1").len(), 2);
    for o in fake.objects("deployments", "ltops-k1") {
        assert_eq!(o["spec"]["replicas"], 0, "{o}");
    }
    for o in fake.objects("statefulsets", "ltops-k1") {
        assert_eq!(o["spec"]["replicas"], 0, "{o}");
    }
    assert_eq!(fake.objects("secrets", "ltops-k1").len(), 1);
    let o = run(&env, &fake, &["deploy", "-c", "k1"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(text(&o).matches("healthy").count(), 7, "{}", text(&o));

    let o = run(&env, &fake, &["delete", "k1", "--yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(fake.processes().is_empty(), "{:?}", fake.processes());
    assert!(fake.objects("namespaces", "").is_empty());
    assert!(!env.home.path().join("clusters/k1").exists());
    fake.stop().await;
}

/// The refusals a user meets first, each before anything is left behind: a cluster too small
/// for `--users` (says how much is missing), a namespace that exists without
/// `--use-existing-namespace`, and a 403 on apply (says which object and what permission).
/// Against the scripted API server (no real one can run here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_to_do() {
    require_binaries();
    let scratch = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(&bins(), scratch.path()).await;
    let env = Env::new();
    let usage = Some(ltops::exit::USAGE);

    let o = run(
        &env,
        &fake,
        &[
            "create",
            "--name",
            "big",
            "--type",
            "kubernetes",
            "--users",
            "5000000",
        ],
    )
    .await;
    assert_eq!(o.status.code(), usage, "{}", text(&o));
    assert!(text(&o).contains("missing"), "{}", text(&o));
    assert!(!env.home.path().join("clusters/big").exists());
    assert!(fake.objects("namespaces", "").is_empty());

    fake.create_namespace("ltops-busy");
    let o = run(
        &env,
        &fake,
        &["create", "--name", "busy", "--type", "kubernetes"],
    )
    .await;
    assert_eq!(o.status.code(), usage, "{}", text(&o));
    assert!(
        text(&o).contains("--use-existing-namespace"),
        "{}",
        text(&o)
    );
    let o = run(
        &env,
        &fake,
        &[
            "create",
            "--name",
            "busy",
            "--type",
            "kubernetes",
            "--namespace",
            "ltops-busy",
            "--use-existing-namespace",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A hand-edited cluster.toml is input too: a bad size names the file and the key.
    let state_file = env.home.path().join("clusters/busy/cluster.toml");
    let good = std::fs::read_to_string(&state_file).unwrap();
    assert!(good.contains("storage = \"10Gi\""), "{good}");
    std::fs::write(
        &state_file,
        good.replace("storage = \"10Gi\"", "storage = \"lots\""),
    )
    .unwrap();
    let o = run(&env, &fake, &["deploy", "-c", "busy"]).await;
    assert_eq!(o.status.code(), usage, "{}", text(&o));
    assert!(
        text(&o).contains("cluster.toml: [provider] storage"),
        "{}",
        text(&o)
    );
    std::fs::write(&state_file, good).unwrap();

    let o = run(
        &env,
        &fake,
        &[
            "create",
            "--name",
            "odd",
            "--type",
            "kubernetes",
            "--storage",
            "10 Gi",
        ],
    )
    .await;
    assert_eq!(o.status.code(), usage, "{}", text(&o));
    assert!(text(&o).contains("--storage"), "{}", text(&o));

    fake.fail_next(
        "PATCH",
        "/secrets/",
        403,
        "Forbidden",
        "secrets \"busy-secrets\" is forbidden: User \"dev\" cannot patch resource \"secrets\" in the namespace \"ltops-busy\"",
    );
    let o = run(&env, &fake, &["deploy", "-c", "busy"]).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(ltops::exit::FAILURE), "{out}");
    assert!(
        out.contains("apply Secret/busy-secrets (403 Forbidden)"),
        "{out}"
    );
    assert!(out.contains("Role"), "{out}");

    // A shared namespace: delete removes the cluster's objects, not the namespace.
    let o = run(&env, &fake, &["delete", "busy", "--yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(fake.objects("namespaces", "").len(), 1);
    assert!(fake.objects("secrets", "ltops-busy").is_empty());
    fake.stop().await;
}

/// A python3 with Helm as a library, the strict schemas and PyYAML, or `None` (a skip, or a
/// failure under CI=true).
fn checker() -> Option<PathBuf> {
    let beside = std::env::var("LTOPS_CI_TOOLS")
        .ok()
        .map(|t| format!("{t}/venv/bin/python"))
        .unwrap_or_else(|| "/opt/ltops-ci/venv/bin/python".into());
    let candidates = [PathBuf::from(beside), PathBuf::from("python3")];
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import helm_python, kubernetes_validate, yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    util::moto::missing("python3 with helm-python-sdk, kubernetes-validate and PyYAML");
    None
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn check(py: &Path, args: &[&str]) -> Output {
    let out = Command::new(py)
        .arg(repo().join("charts/tests/check.py"))
        .args(args)
        .output()
        .unwrap();
    eprintln!("$ check.py {}\n{}", args.join(" "), text(&out));
    out
}

/// `ltops deploy --dry-run -o yaml` and the Helm chart rendered (by real Helm, the
/// helm-python-sdk library) for the same settings: both validate against the strict schemas of
/// two Kubernetes versions, agree on every object, name, label, port, probe, security context
/// and resource (`check.py compare`), and pass checkov; the chart passes Helm's strict lint and
/// the Dockerfile checkov. `create` runs against the scripted API server (no real one here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_chart_agree_and_validate_strictly() {
    require_binaries();
    let Some(py) = checker() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(&bins(), scratch.path()).await;
    let env = Env::new();
    let out_dir = scratch.path();
    // The same settings twice: as `ltops create` flags and as the chart's values.
    for (name, extra, values) in [
        ("lt1", vec![], "{}\n"),
        (
            "lt2",
            vec![
                "--agents", "4", "--app-count", "3", "--users", "5000", "--storage-class",
                "fast-ssd", "--storage", "20Gi",
            ],
            "users: 5000\nserver:\n  replicas: 3\nagents:\n  replicas: 4\npostgres:\n  storage: 20Gi\n  storageClass: fast-ssd\n",
        ),
        (
            "lt3",
            vec!["--database-url-secret", "chat-db:url", "--users", "2000", "--agents", "2", "--app-count", "2"],
            "users: 2000\nserver:\n  replicas: 2\nagents:\n  replicas: 2\ndatabase:\n  mode: external\n  external:\n    secretName: chat-db\n    secretKey: url\n",
        ),
        ("lt4", vec!["--no-metrics"], "prometheus:\n  enabled: false\n"),
    ] {
        let mut args = vec!["create", "--name", name, "--type", "kubernetes"];
        args.extend(extra);
        let o = run(&env, &fake, &args).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = run(&env, &fake, &["deploy", "-c", name, "--dry-run", "-o", "yaml"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let ltops_yaml = out_dir.join(format!("{name}-ltops.yaml"));
        std::fs::write(&ltops_yaml, &o.stdout).unwrap();
        let chart_yaml = out_dir.join(format!("{name}-chart.yaml"));
        let values_file = out_dir.join(format!("{name}-values.yaml"));
        let id = env.state(name).cluster_id;
        // The id as a quoted string: `--set` would read an all-digit id as a number.
        std::fs::write(&values_file, format!("{values}clusterId: \"{id}\"\n").replace("{}\nclusterId", "clusterId")).unwrap();
        let ns = format!("ltops-{name}");
        let o = check(
            &py,
            &[
                "render",
                values_file.to_str().unwrap(),
                "--release",
                name,
                "--namespace",
                &ns,
                "-o",
                chart_yaml.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "render {name}: {}", text(&o));
        for file in [&ltops_yaml, &chart_yaml] {
            let o = check(&py, &["validate", file.to_str().unwrap(), "--versions", "1.29.0,1.35.0"]);
            assert!(o.status.success(), "{}: {}", file.display(), text(&o));
        }
        let o = check(&py, &["compare", ltops_yaml.to_str().unwrap(), chart_yaml.to_str().unwrap()]);
        assert!(o.status.success(), "ltops and the chart drifted ({name}): {}", text(&o));
        let o = check(&py, &["checkov", ltops_yaml.to_str().unwrap(), "--framework", "kubernetes"]);
        assert!(o.status.success(), "{}", text(&o));
        if name == "lt4" {
            let yaml = std::fs::read_to_string(&ltops_yaml).unwrap();
            assert!(!yaml.contains("-prometheus"), "--no-metrics renders no Prometheus");
        }
    }
    let o = check(&py, &["lint"]);
    assert!(o.status.success(), "{}", text(&o));
    let chart = repo().join("charts/chat-loadtest");
    let o = check(
        &py,
        &["checkov", chart.to_str().unwrap(), "--framework", "helm"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let dockerfile = repo().join("Dockerfile");
    let o = check(
        &py,
        &[
            "checkov",
            dockerfile.to_str().unwrap(),
            "--framework",
            "dockerfile",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    fake.stop().await;
}

/// Stops a process when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `NAME` as a Prometheus label name (Kubernetes discovery's sanitizing: `_` for the rest).
fn label_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// What Kubernetes pod discovery finds for one job's `namespaces` and `selectors`: a target per
/// container port of every matching pod, with its documented `__meta_kubernetes_*` labels, at
/// the local port of the fake's process for that pod (a closed port where it runs none).
fn discovered(fake: &FakeKube, ns: &str, selector: &str) -> serde_json::Value {
    let want: Vec<(&str, &str)> = selector
        .split(',')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let mut groups = Vec::new();
    for pod in fake.objects("pods", ns) {
        let meta = &pod["metadata"];
        let name = meta["name"].as_str().unwrap();
        if !want.iter().all(|(k, v)| meta["labels"][*k] == *v) {
            continue;
        }
        let local = fake.pod_ports(ns, name);
        let mut base = serde_json::Map::new();
        base.insert("__meta_kubernetes_namespace".into(), ns.into());
        base.insert("__meta_kubernetes_pod_name".into(), name.into());
        for (what, key) in [("label", "labels"), ("annotation", "annotations")] {
            for (k, v) in meta[key].as_object().into_iter().flatten() {
                base.insert(
                    format!("__meta_kubernetes_pod_{what}_{}", label_name(k)),
                    v.clone(),
                );
            }
        }
        for c in pod["spec"]["containers"].as_array().unwrap() {
            for port in c["ports"].as_array().into_iter().flatten() {
                let number = port["containerPort"].as_u64().unwrap() as u16;
                let mut labels = base.clone();
                labels.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    c["name"].clone(),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_port_name".into(),
                    port["name"].clone(),
                );
                labels.insert(
                    "__meta_kubernetes_pod_container_port_number".into(),
                    number.to_string().into(),
                );
                let at = local.get(&number).copied().unwrap_or(1);
                groups.push(
                    serde_json::json!({"targets": [format!("127.0.0.1:{at}")], "labels": labels}),
                );
            }
        }
    }
    serde_json::Value::Array(groups)
}

/// The Prometheus configuration `ltops` applied (the ConfigMap in the fake), run by a real
/// Prometheus against the fake's real server and agent processes. Debian's `prometheus` is built
/// without Kubernetes discovery, so each job's `kubernetes_sd_configs` is swapped for a file of
/// what that discovery finds (`discovered`: the job's namespace and label selector applied to
/// the fake's pods); the relabelling, the scrapes and the labels the dashboards select on are
/// Prometheus's own. Every server and agent pod must be up under its job, with `instance` the
/// pod's name and the `cluster` label, and every other port dropped.
async fn prometheus_finds_and_scrapes_the_pods(
    fake: &FakeKube,
    ns: &str,
    cluster: &str,
    dir: &Path,
) {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        util::moto::missing("prometheus (Debian package prometheus)");
        return;
    }
    let cm = fake
        .objects("configmaps", ns)
        .into_iter()
        .find(|o| o["metadata"]["name"] == format!("{cluster}-prometheus-config"))
        .expect("the Prometheus ConfigMap was applied");
    let applied = cm["data"]["prometheus.yml"].as_str().unwrap();
    let dir = dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<&str> = applied.lines().collect();
    let (mut out, mut job, mut i) = (String::new(), "", 0);
    while i < lines.len() {
        let l = lines[i];
        if let Some(j) = l.strip_prefix("  - job_name: ") {
            job = j;
        }
        if l != "    kubernetes_sd_configs:" {
            out.push_str(l);
            out.push('\n');
            i += 1;
            continue;
        }
        let end = i + lines[i..]
            .iter()
            .position(|l| *l == "    relabel_configs:")
            .unwrap();
        let block = lines[i..end].join("\n");
        assert!(block.contains(&format!("names: [{ns}]")), "{block}");
        let selector = block
            .split("label: \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        let file = dir.join(format!("{job}.json"));
        std::fs::write(&file, discovered(fake, ns, selector).to_string()).unwrap();
        out.push_str(&format!(
            "    file_sd_configs:\n      - files: [\"{}\"]\n",
            file.display()
        ));
        i = end;
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, &out).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let targets = loop {
        let t = get("/api/v1/targets".into()).await;
        let active = t
            .as_ref()
            .and_then(|t| t["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default();
        if active.len() == 4 && active.iter().all(|a| a["health"] == "up") {
            break t.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus's targets never were 2 servers and 2 agents, all up: {t:?}\n{}\nits log:\n{}",
            out,
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let mut seen: Vec<(String, String, String)> = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let l = &t["labels"];
            (
                l["job"].as_str().unwrap().to_string(),
                l["instance"].as_str().unwrap().to_string(),
                l["cluster"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let servers: Vec<String> = fake
        .objects("pods", ns)
        .iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "server")
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<(String, String, String)> = servers
        .iter()
        .map(|s| ("chat-server".to_string(), s.clone(), cluster.to_string()))
        .chain((0..2).map(|i| {
            (
                "loadtest-agent".to_string(),
                format!("{cluster}-agent-{i}"),
                cluster.to_string(),
            )
        }))
        .collect();
    want.sort();
    assert_eq!(seen, want, "{targets}");
    let dropped = targets["data"]["droppedTargets"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        dropped,
        servers.len(),
        "each server pod's API port is not scraped: {targets}"
    );
    // The scraped series carry the labels the dashboards select on.
    let q = get(
        "/api/v1/query?query=process_resident_memory_bytes%7Bjob%3D%22chat-server%22%7D".into(),
    )
    .await
    .unwrap();
    assert_eq!(
        q["data"]["result"].as_array().map_or(0, Vec::len),
        servers.len(),
        "{q}"
    );
    eprintln!("prometheus: {} targets up: {seen:?}", seen.len());
}

/// No Docker engine runs here, so the image's build is checked statically: its build stage uses
/// this machine's Rust (the toolchain CI builds and tests with), builds exactly the two
/// binaries with the committed lock file, and the runtime stage runs as the uid the manifests
/// and the chart set.
#[test]
fn the_dockerfile_builds_what_ci_builds_with_the_same_toolchain() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let rustc = Command::new("rustc").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&rustc.stdout).to_string();
    let minor: Vec<&str> = version
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split('.')
        .take(2)
        .collect();
    let from = format!("FROM rust:{}-", minor.join("."));
    assert!(
        text.contains(&from),
        "the build stage should be {from}… ({version})"
    );
    assert!(
        text.contains("cargo build --release --locked -p chat-server -p loadtest-agent --bins"),
        "the build step changed: keep it the one CI's `cargo build --workspace --bins --locked` covers"
    );
    assert!(text.contains("USER 10001:10001"));
    let bins = bins();
    for b in ["chat-server", "loadtest-agent"] {
        assert!(text.contains(&format!("/usr/local/bin/{b}")) || text.contains(b));
        assert!(bins.join(b).is_file(), "{b} is built by CI");
    }
}
