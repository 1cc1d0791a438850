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
        5,
        "postgres, 2 servers, 2 agents: {out}"
    );
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
    assert_eq!(fake.objects("deployments", "ltops-k1").len(), 1);
    assert_eq!(fake.objects("statefulsets", "ltops-k1").len(), 2);
    for o in fake.objects("statefulsets", "ltops-k1") {
        assert_eq!(o["spec"]["replicas"], 0, "{o}");
    }
    assert_eq!(fake.objects("secrets", "ltops-k1").len(), 1);
    let o = run(&env, &fake, &["deploy", "-c", "k1"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(text(&o).matches("healthy").count(), 5, "{}", text(&o));

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
