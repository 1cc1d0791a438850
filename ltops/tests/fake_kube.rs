//! The self-test of `tests/util/fake_kube.rs`. No Kubernetes API server can run on this
//! machine, so the `--type kubernetes` tests use a scripted stand-in that answers the REST and
//! WebSocket protocols `kube` speaks and runs the real `chat-server` and `loadtest-agent`
//! binaries as the pods' processes. This drives it with `ltops_kube::Session`, the client
//! `ltops` uses, through everything `ltops` does with a cluster: capacity, server-side apply,
//! readiness, port-forward, exec, logs and delete. Only 127.0.0.1 is used.
#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use ltops_kube::manifests::{self, Builder};
use ltops_kube::{ClusterSpec, DatabaseSpec, ExecIo, Secrets, Session};
use util::fake_kube::FakeKube;

fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "k1".into(),
        cluster_id: "id1".into(),
        namespace: "ltops-k1".into(),
        version: "0.1.0".into(),
        image: "chat-loadtest:test".into(),
        app_count: 2,
        agents: 2,
        database: DatabaseSpec::Internal {
            storage_class: None,
            storage: "1Gi".into(),
            image: manifests::POSTGRES_IMAGE.into(),
        },
        users: 100,
        prometheus: Some(manifests::PROMETHEUS_IMAGE.into()),
        grafana: Some(manifests::GRAFANA_IMAGE.into()),
    }
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// One test for the whole file: `KUBECONFIG` is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_api_server_runs_a_cluster_for_ltops_kube() {
    util::require_binaries();
    let bins = util::ltops_bin().parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(&bins, tmp.path()).await;
    std::env::set_var("KUBECONFIG", fake.kubeconfig());

    let spec = spec();
    let secrets = Secrets {
        control_token: "control-token-0123456789".into(),
        postgres_password: "pw-0123456789".into(),
        grafana_password: "gf-0123456789".into(),
    };
    let objects = Builder::new(&spec).build(true, Some(&secrets));
    let (session, context) = Session::connect(None, &spec.namespace).await.unwrap();
    assert_eq!(context, "fake");

    // Nodes.
    let cap = session.capacity().await.unwrap();
    assert_eq!(cap.nodes.len(), 2, "{cap:?}");
    assert_eq!(cap.total().cpu_m, 16_000);
    assert_eq!(cap.total().memory_mi, 64 * 1024);
    cap.check(&spec).unwrap();

    // Not there yet: a real NotFound.
    assert_eq!(session.namespace_labels().await.unwrap(), None);

    // A scripted failure comes back as the API's error, once.
    fake.fail_next(
        "PATCH",
        "/secrets/",
        403,
        "Forbidden",
        "secrets is forbidden: scripted",
    );
    let e = session.apply(&objects, &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(&e, ltops_kube::Error::Api { code: 403, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("scripted"), "{e}");

    let mut applied = Vec::new();
    session
        .apply(&objects, &mut |what| applied.push(what.to_string()))
        .await
        .unwrap();
    assert_eq!(applied.len(), objects.len(), "{applied:?}");
    let labels = session.namespace_labels().await.unwrap().unwrap();
    assert_eq!(labels[manifests::LABEL_CLUSTER], "k1");
    let applies: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(!applies.is_empty());
    assert!(
        applies.iter().all(
            |r| r.field_manager.as_deref() == Some(ltops_kube::FIELD_MANAGER)
                && r.query.contains("force=true")
        ),
        "{applies:?}"
    );

    // Ready: the real processes answer their health routes.
    let started = Instant::now();
    let mut progress = Vec::new();
    session
        .wait_ready(&spec, Duration::from_secs(60), &mut |l| {
            progress.push(l.to_string())
        })
        .await
        .unwrap();
    eprintln!("ready after {:?}: {progress:?}", started.elapsed());
    let pods = session.pods(&spec.name, &spec.cluster_id).await.unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        pods.len(),
        7,
        "postgres, 2 servers, 2 agents, prometheus, grafana: {names:?}"
    );
    assert!(
        pods.iter().all(|p| p.ready && p.phase == "Running"),
        "{pods:?}"
    );
    assert!(
        names.contains(&"k1-agent-0") && names.contains(&"k1-agent-1"),
        "{names:?}"
    );
    assert!(names.contains(&"k1-postgres-0"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("k1-prometheus-")),
        "{names:?}"
    );
    let servers: Vec<&str> = pods
        .iter()
        .filter(|p| p.component == "server")
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(servers.len(), 2, "{names:?}");
    assert!(pods
        .iter()
        .all(|p| p.node.as_deref() == Some("fake-node-1")));
    // One chat-server for both server pods, one agent each.
    let procs = fake.processes();
    assert_eq!(procs.len(), 3, "{procs:?}");

    // Re-applying keeps the processes.
    session.apply(&objects, &mut |_| {}).await.unwrap();
    assert_eq!(fake.processes(), procs);
    session
        .wait_ready(&spec, Duration::from_secs(5), &mut |_| {})
        .await
        .unwrap();

    // Port-forwards through the API server to the agent and the server.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let agent = session
        .forward("k1-agent-0", manifests::AGENT_PORT)
        .await
        .unwrap();
    for _ in 0..3 {
        let r = http
            .get(format!("http://{}/healthz", agent.address()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The control API wants the token from the Secret.
    let r = http
        .get(format!("http://{}/v1/clock", agent.address()))
        .bearer_auth(&secrets.control_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let server = session
        .forward(servers[0], manifests::SERVER_PORT)
        .await
        .unwrap();
    let r = http
        .get(format!("http://{}/api/v4/system/ping", server.address()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The same process as the server URL the agents are given.
    let r = http
        .get(format!("{}/api/v4/system/ping", fake.server_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A port nothing listens on: the connection just ends.
    let nothing = session.forward("k1-agent-0", 9999).await.unwrap();
    assert!(http
        .get(format!("http://{}/", nothing.address()))
        .send()
        .await
        .is_err());
    // A pod that does not exist fails at once.
    let e = session.forward("k1-agent-9", 8070).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    drop((agent, server, nothing));

    // Exec: output, exit code, working directory, stdin.
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, out) = session
        .exec_output(
            "k1-agent-0",
            "loadtest-agent",
            &argv(&["sh", "-c", "echo hi; exit 3"]),
        )
        .await
        .unwrap();
    assert_eq!(
        (code, String::from_utf8_lossy(&out).to_string()),
        (3, "hi\n".into())
    );
    let (code, out) = session
        .exec_output(
            "k1-agent-0",
            "loadtest-agent",
            &argv(&[
                "sh",
                "-c",
                "cd /results && echo result > r1.jsonl && ls && cat /etc/ltops/control-token",
            ]),
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "r1.jsonl\ncontrol-token-0123456789"
    );
    let (code, _) = session
        .exec_output(
            "k1-agent-1",
            "loadtest-agent",
            &argv(&["no-such-command-here"]),
        )
        .await
        .unwrap();
    assert_ne!(code, 0);
    let (tx, rx) = tokio::io::duplex(1024);
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut tx = tx;
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"one\ntwo\n")
            .await
            .unwrap();
    });
    let code = session
        .exec(
            "k1-agent-1",
            "loadtest-agent",
            &argv(&["sh", "-c", "wc -l"]),
            false,
            ExecIo {
                stdin: Some(Box::new(rx)),
                stdout: Box::new(out_w),
                stderr: Box::new(tokio::io::sink()),
            },
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    let mut counted = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out_r, &mut counted)
        .await
        .unwrap();
    assert_eq!(counted.trim(), "2");

    // Logs: the agent's own output; a follow ends when the limit does (bounded here).
    let tail = session.log_tail("k1-agent-0", false, 20).await;
    assert!(!tail.is_empty() && !tail.starts_with("(no log"), "{tail}");
    let mut buf = Vec::new();
    session
        .logs(
            "k1-agent-0",
            Some("loadtest-agent"),
            false,
            Some(1),
            &mut buf,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&buf).lines().count(), 1, "{buf:?}");
    let mut buf = Vec::new();
    let follow = session.logs(servers[1], None, true, Some(5), &mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(2), follow).await;
    assert!(!buf.is_empty());
    let e = session
        .logs("k1-agent-0", Some("nope"), false, None, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");

    // Delete: the namespace, everything in it and every process.
    let pids: Vec<u32> = procs.iter().map(|(_, p)| *p).collect();
    let left = session
        .delete(&spec.name, &spec.cluster_id, true, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(session.namespace_labels().await.unwrap(), None);
    assert!(fake.processes().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pids.iter().any(|p| alive(*p)), "processes left: {pids:?}");
    // Applying into the deleted namespace is a NotFound, as on a real API server.
    let e = session
        .apply(&objects[1..2], &mut |_| {})
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // A second delete finds nothing to do.
    assert!(session
        .delete(&spec.name, &spec.cluster_id, true, Duration::from_secs(5))
        .await
        .unwrap()
        .is_empty());

    // A cluster in a namespace it shares: deleted by label, the namespace stays.
    let shared = ClusterSpec {
        name: "k2".into(),
        cluster_id: "id2".into(),
        namespace: "team".into(),
        app_count: 1,
        agents: 1,
        ..spec.clone()
    };
    fake.create_namespace("team");
    let (session, _) = Session::connect(None, "team").await.unwrap();
    let objects = Builder::new(&shared).build(false, Some(&secrets));
    session.apply(&objects, &mut |_| {}).await.unwrap();
    session
        .wait_ready(&shared, Duration::from_secs(60), &mut |_| {})
        .await
        .unwrap();
    // The fixed server port is free again, so this cluster's server has it.
    let r = http
        .get(format!("{}/api/v4/system/ping", fake.server_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.objects("persistentvolumeclaims", "team").len(), 1);
    let pids: Vec<u32> = fake.processes().iter().map(|(_, p)| *p).collect();
    assert_eq!(pids.len(), 2);
    let left = session
        .delete(
            &shared.name,
            &shared.cluster_id,
            false,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(session.namespace_labels().await.unwrap().is_some());
    assert!(fake.objects("persistentvolumeclaims", "team").is_empty());
    assert!(fake.objects("pods", "team").is_empty());
    assert!(fake.processes().is_empty());
    assert!(fake.requests().iter().any(|r| r.method == "DELETE"
        && r.path.ends_with("/namespaces/team/deployments")
        && r.query.contains("labelSelector")));

    fake.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pids.iter().any(|p| alive(*p)), "processes left: {pids:?}");
}
