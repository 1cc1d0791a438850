//! End to end for `--type ssh`, on real SSH hosts: network namespaces this test creates
//! (`tests/support/testhosts.sh`: a bridge, a veth pair and an `sshd` per host, a user account
//! per host, keys generated per test), driven through the real `ltops`, `chat-server` and
//! `loadtest-agent` binaries. Nothing is mocked; the hosts' addresses exist only inside this
//! machine.
//!
//! Creating namespaces needs root. Without it the tests skip with a note, except under
//! `CI=true`, where they fail.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ltops::provider::ssh::SshState;
use ltops::state::Role;
use util::{require_binaries, text, Env};

/// Test hosts; torn down (users, namespaces, processes) on drop.
struct Hosts {
    dir: tempfile::TempDir,
    /// (address, user) per host.
    hosts: Vec<(String, String)>,
    namespaces: Vec<String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/testhosts.sh")
}

impl Hosts {
    /// `None` (skip) when namespaces cannot be made here and CI is not set.
    /// `subnet`: the third octet of 10.213.S.0/24, distinct per test so tests can run at once.
    fn up(n: usize, tag: &str, subnet: u8) -> Option<Hosts> {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("{tag}{}", std::process::id() % 100);
        let out = Command::new("bash")
            .env("TESTHOSTS_SUBNET", subnet.to_string())
            .arg(script())
            .args(["up", dir.path().to_str().unwrap(), &n.to_string(), &id])
            .output()
            .unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).to_string();
            let _ = Command::new("bash")
                .arg(script())
                .args(["down", dir.path().to_str().unwrap()])
                .output();
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot create SSH test hosts (CI=true requires them): {why}");
            }
            eprintln!("note: skipping: cannot create SSH test hosts here: {why}");
            return None;
        }
        let mut hosts = Vec::new();
        let mut namespaces = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() == 4 {
                hosts.push((w[1].to_string(), w[2].to_string()));
                namespaces.push(w[3].to_string());
            }
        }
        assert_eq!(hosts.len(), n, "{}", String::from_utf8_lossy(&out.stdout));
        Some(Hosts {
            dir,
            hosts,
            namespaces,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An inventory giving host `i` the roles `roles[i]`.
    fn inventory(&self, name: &str, roles: &[&[&str]], extra: &str, key: &str) -> PathBuf {
        let mut text = format!(
            "[defaults]\nssh_config = \"{}\"\nidentity_file = \"{}\"\nknown_hosts = \"known_hosts\"\n{extra}\n",
            self.path(if key == "wrong_ed25519" { "ssh_config_wrong_key" } else { "ssh_config" }).display(),
            self.path(key).display()
        );
        for (i, r) in roles.iter().enumerate() {
            let (addr, user) = &self.hosts[i];
            let list: Vec<String> = r.iter().map(|x| format!("\"{x}\"")).collect();
            text.push_str(&format!(
                "[[host]]\naddress = \"{addr}\"\nuser = \"{user}\"\nroles = [{}]\n",
                list.join(", ")
            ));
        }
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn control(&self, verb: &str, k: usize) {
        let out = Command::new("bash")
            .arg(script())
            .args([verb, self.dir.path().to_str().unwrap(), &k.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Live (not zombie) processes owned by host `i`'s user.
    fn processes_of(&self, i: usize) -> Vec<String> {
        let uid = nix::unistd::User::from_name(&self.hosts[i].1)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let field = |k: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(k))
                    .map(|l| l[k.len()..].trim().to_string())
                    .unwrap_or_default()
            };
            let owner: u32 = field("Uid:")
                .split_whitespace()
                .next()
                .and_then(|u| u.parse().ok())
                .unwrap_or(u32::MAX);
            if owner == uid && !field("State:").starts_with('Z') {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                found.push(format!(
                    "{pid} {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
        }
        found
    }

    fn home_of(&self, i: usize) -> PathBuf {
        nix::unistd::User::from_name(&self.hosts[i].1)
            .unwrap()
            .unwrap()
            .dir
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = &self.namespaces;
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", self.dir.path().to_str().unwrap()])
            .output();
    }
}

impl Env {
    fn config(&self, duration: &str) -> PathBuf {
        util::tiny_workload(self.home.path(), duration)
    }
}

/// Polls `check` until it holds or `within` passes.
/// Waits (bounded) until no process of the cluster runs on host `i`.
fn nothing_runs_on(h: &Hosts, i: usize) {
    eventually(Duration::from_secs(15), "nothing left running", || {
        let left = h.processes_of(i);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("host {i}: {left:?}"))
        }
    });
}

fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// create → deploy (two app instances behind nginx, PostgreSQL on the db host, two agents on
/// a third host) → a second deploy that changes nothing → loadtest → status → logs → ssh →
/// an agent killed mid-run (results salvaged over SSH) → delete, after which no process of the
/// cluster is left on any host.
/// `tests/support/grafana-standin` and its home, copied where the hosts' users can run them:
/// the inventory lines that make the metrics host's Grafana this stand-in. Grafana cannot be
/// installed on the test machines; the stand-in checks what ltops hands a real Grafana (home,
/// a 0600 config with absolute paths, the datasource answering, the dashboards with their
/// datasource input resolved) and answers `/api/health`, `/api/search` and `/api/datasources`.
fn grafana_standin() -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = dir.path().join("grafana-server");
    std::fs::copy(support.join("grafana-standin"), &program).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("conf")).unwrap();
    std::fs::copy(
        support.join("grafana-home/conf/defaults.ini"),
        home.join("conf/defaults.ini"),
    )
    .unwrap();
    for d in [&home, &home.join("conf")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lines = format!(
        "grafana = \"{}\"\ngrafana_home = \"{}\"",
        program.display(),
        home.display()
    );
    (dir, lines)
}

#[test]
fn three_hosts_full_lifecycle() {
    require_binaries();
    let Some(h) = Hosts::up(3, "l", 61) else {
        return;
    };
    let env = Env::new();
    let (_grafana, grafana_lines) = grafana_standin();
    let inv = h.inventory(
        "hosts.toml",
        &[&["app", "db"], &["app", "proxy"], &["agent", "metrics"]],
        &grafana_lines,
        "id_ed25519",
    );
    let inv = inv.to_str().unwrap();
    let o = env.run(&[
        "create",
        "--name",
        "lab",
        "--type",
        "ssh",
        "--inventory",
        inv,
        "--agents",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("2 agent(s), 2 server instance(s), postgres, nginx in front, Prometheus"),
        "{}",
        text(&o)
    );
    let st = env.state("lab");
    assert_eq!(st.schema, 2);
    let ss: SshState = st.provider_state(Path::new("cluster.toml")).unwrap();
    assert_eq!(ss.placements.len(), 8);
    let prometheus = ss
        .placements
        .iter()
        .find(|p| p.role == Role::Prometheus)
        .expect("a Prometheus by default");
    assert_eq!(prometheus.host, 2, "on the metrics host");
    let grafana = ss.placements.iter().find(|p| p.role == Role::Grafana);
    assert_eq!(grafana.map(|p| p.host), Some(2), "beside Prometheus");

    let o = env.run(&["deploy", "-c", "lab"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("chat-server: uploaded to"), "{out}");
    assert_eq!(out.matches("healthy").count(), 8, "{out}");
    assert!(out.contains("grafana-0: started on"), "{out}");
    // The metrics host's own Prometheus (Debian's, as on this machine) is used, not uploaded.
    assert!(!out.contains("uploading prometheus"), "{out}");
    for user in [&h.hosts[0].1, &h.hosts[1].1, &h.hosts[2].1] {
        assert!(out.contains(user.as_str()), "{out}");
    }

    // Idempotent: nothing uploaded, nothing restarted.
    let o = env.run(&["deploy", "-c", "lab"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("uploading"), "{out}");
    assert_eq!(out.matches(": unchanged on").count(), 8, "{out}");
    assert_eq!(out.matches(": up to date on").count(), 6, "{out}");

    let cfg = env.config("6s");
    let o = env.run(&[
        "loadtest",
        "-c",
        "lab",
        "--config",
        cfg.to_str().unwrap(),
        "--progress",
        "none",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("verdict:  pass"), "{out}");
    assert!(
        out.contains(&format!("against http://{}:8080", h.hosts[1].0)),
        "agents use nginx: {out}"
    );
    let last = env.state("lab").last_run.unwrap();
    for i in 0..2 {
        assert!(last.results_dir.join(format!("agent-{i}.jsonl")).is_file());
    }
    // Both server instances were sampled through forwards to their hosts' loopback /metrics.
    let summary = util::summarize(&last.results_dir);
    let servers = &summary.report.runs[0].servers;
    let names: Vec<&str> = servers.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(names, ["server-0", "server-1"], "{servers:?}");
    assert!(
        servers
            .iter()
            .all(|s| s.samples >= 2 && s.cpu_cores_mean > 0.0 && s.rss_peak_bytes > 1_000_000),
        "{servers:?}"
    );

    let o = env.run(&["status", "lab"]);
    let out = text(&o);
    assert_eq!(out.matches("healthy").count(), 8, "{out}");
    let gf = format!("{}:3000", h.hosts[2].0);
    assert!(out.contains(&format!("ssh -N -L 3000:{gf}")), "{out}");
    assert!(
        out.contains("as admin, password: grafana_password in"),
        "{out}"
    );
    let prom = format!("{}:9090", h.hosts[2].0);
    assert!(
        out.contains(&format!("Prometheus at http://{prom}")),
        "{out}"
    );
    assert!(out.contains(&format!("ssh -N -L 9090:{prom}")), "{out}");
    // It scrapes both instances and both agents on the private network, and holds the run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let query = |expr: &str| -> serde_json::Value {
        rt.block_on(async {
            match http
                .get(format!("http://{prom}/api/v1/query"))
                .query(&[("query", expr)])
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        })
    };
    eventually(Duration::from_secs(20), "every target is up", || {
        let up = query("up");
        let series = up["data"]["result"].as_array().cloned().unwrap_or_default();
        let mut seen: Vec<String> = series
            .iter()
            .filter(|s| s["value"][1] == "1")
            .map(|s| {
                format!(
                    "{}/{}",
                    s["metric"]["job"].as_str().unwrap_or("?"),
                    s["metric"]["instance"].as_str().unwrap_or("?")
                )
            })
            .collect();
        seen.sort();
        if seen
            == [
                "chat-server/server-0",
                "chat-server/server-1",
                "loadtest-agent/agent-0",
                "loadtest-agent/agent-1",
            ]
        {
            Ok(())
        } else {
            Err(format!("{up}"))
        }
    });
    let delivered = query("max_over_time(sum(chat_events_delivered_total)[5m:])");
    let total: f64 = delivered["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(total > 0.0, "no deliveries in Prometheus: {delivered}");
    // Grafana answers with the dashboards provisioned, and only to the generated password
    // (kept in the 0600 state file, never printed).
    let password = ss.grafana_password.clone();
    assert!(!out.contains(&password), "status prints no password");
    let grafana_get = |path: &str, auth: bool| -> (u16, serde_json::Value) {
        rt.block_on(async {
            let mut req = http.get(format!("http://{gf}{path}"));
            if auth {
                req = req.basic_auth("admin", Some(&password));
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or_default())
        })
    };
    assert_eq!(grafana_get("/api/search", false).0, 401);
    let (code, found) = grafana_get("/api/search", true);
    assert_eq!(code, 200, "{found}");
    let mut titles: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["title"].as_str().unwrap())
        .collect();
    titles.sort_unstable();
    assert_eq!(titles.len(), 3, "{found}");
    let (_, ds) = grafana_get("/api/datasources", true);
    assert_eq!(ds[0]["url"], format!("http://{prom}"), "{ds}");
    let o = env.run(&["logs", "server", "-c", "lab", "-i", "1", "-n", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("chat-server"),
        "{}",
        text(&o)
    );
    let o = env.run(&[
        "ssh",
        "agent",
        "-c",
        "lab",
        "-i",
        "1",
        "--",
        "echo",
        "$LTOPS_ROLE-$LTOPS_INDEX",
        "&&",
        "id",
        "-un",
        "&&",
        "exit",
        "7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("agent-1") && stdout.contains(&h.hosts[2].1),
        "{stdout}"
    );

    // An agent killed mid-run (supervisor and process): lost, its flushed results salvaged.
    let cfg = env.config("30s");
    let run_dir = h
        .home_of(2)
        .join(format!(".ltops/lab-{}/agent-1/results", st.cluster_id));
    let before: Vec<PathBuf> = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let child = env
        .cmd(&[
            "loadtest",
            "-c",
            "lab",
            "--config",
            cfg.to_str().unwrap(),
            "--skip-setup",
            "--progress",
            "plain",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "agent-1 flushes results of the new run",
        || {
            let n = std::fs::read_dir(&run_dir)
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|e| !before.contains(&e.path()))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| t.matches("\"interval\"").count())
                .sum::<usize>();
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} intervals"))
            }
        },
    );
    let o = env.run(&[
        "ssh",
        "agent",
        "-c",
        "lab",
        "-i",
        "1",
        "--",
        "kill -9 $(cat ../run/agent-1.pid) $(cut -d' ' -f1 ../run/agent-1.child)",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("agent-1 was lost"), "{out}");
    assert!(out.contains("its process is gone"), "{out}");
    assert!(
        out.contains("the partial results it had flushed are in"),
        "{out}"
    );
    let last = env.state("lab").last_run.unwrap();
    let salvaged = std::fs::read_to_string(last.results_dir.join("agent-1.jsonl")).unwrap();
    assert!(salvaged.contains("\"interval\""), "{salvaged}");

    // `stop` ends every component on every host and keeps what is installed and the data;
    // `deploy` starts them again.
    let o = env.run(&["stop", "lab"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for i in 0..3 {
        nothing_runs_on(&h, i);
        assert!(
            h.home_of(i).join(".ltops").exists(),
            "host {i} lost ~/.ltops"
        );
    }
    let o = env.run(&["deploy", "-c", "lab"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("uploading"), "{out}");
    let o = env.run(&["status", "lab"]);
    assert_eq!(text(&o).matches("healthy").count(), 8, "{}", text(&o));

    let o = env.run(&["delete", "lab", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for i in 0..3 {
        nothing_runs_on(&h, i);
        assert!(
            !h.home_of(i).join(".ltops").exists(),
            "host {i} keeps ~/.ltops"
        );
    }
    assert!(!env.home.path().join("clusters/lab").exists());
}

/// Bad inventories, a wrong key, an unreachable host, a host without nginx, a port already
/// taken, ctrl-c during deploy, and a delete while a host is down: each names the host and
/// what to do, and the cluster can be deployed or deleted again afterwards.
#[test]
fn faults_name_the_host_and_leave_the_cluster_usable() {
    require_binaries();
    let Some(h) = Hosts::up(2, "f", 62) else {
        return;
    };
    let env = Env::new();
    let create = |inv: &Path, name: &str| {
        env.run(&[
            "create",
            "--name",
            name,
            "--type",
            "ssh",
            "--inventory",
            inv.to_str().unwrap(),
            "--no-metrics",
        ])
    };

    // A bad inventory: file, line, key.
    let bad = h.path("bad.toml");
    std::fs::write(
        &bad,
        "[[host]]\naddress = \"10.0.0.1\"\nroles = [\"web\"]\n",
    )
    .unwrap();
    let o = create(&bad, "x");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("bad.toml:3: host[0].roles[0]"),
        "{}",
        text(&o)
    );
    let o = env.run(&["create", "--name", "x", "--type", "ssh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--inventory"), "{}", text(&o));

    // A wrong key: refused, nothing recorded.
    let wrong = h.inventory("wrong.toml", &[&["app", "agent"]], "", "wrong_ed25519");
    let o = create(&wrong, "w");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("SSH refused the login"), "{}", text(&o));
    assert!(text(&o).contains(&h.hosts[0].1), "{}", text(&o));
    assert!(!env.home.path().join("clusters/w/cluster.toml").exists());

    // An unreachable host: an address of the test subnet where no host is.
    let nobody = format!("{}.250", h.hosts[0].0.rsplit_once('.').unwrap().0);
    let gone = h.path("gone.toml");
    let text_inv =
        std::fs::read_to_string(h.inventory("tmp.toml", &[&["app", "agent"]], "", "id_ed25519"))
            .unwrap()
            .replace(&h.hosts[0].0, &nobody);
    std::fs::write(&gone, text_inv).unwrap();
    let o = create(&gone, "u");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{nobody} is unreachable")),
        "{}",
        text(&o)
    );

    // A proxy host without nginx.
    let nonginx = h.inventory(
        "nonginx.toml",
        &[&["app", "agent"], &["proxy"]],
        "nginx = \"/nonexistent/nginx\"",
        "id_ed25519",
    );
    assert_eq!(create(&nonginx, "n").status.code(), Some(0));
    let o = env.run(&["deploy", "-c", "n"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("nginx (/nonexistent/nginx) is not installed there"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains(&h.hosts[1].1), "{}", text(&o));
    assert_eq!(env.run(&["delete", "n", "--yes"]).status.code(), Some(0));

    // A metrics host without Prometheus: with none here either, the deploy goes on without it
    // and says how to add it; with this machine's, it is uploaded once and then left alone.
    let inv = h.inventory(
        "noprom.toml",
        &[&["app", "agent", "metrics"]],
        "prometheus = \"/nonexistent/prometheus\"",
        "id_ed25519",
    );
    let o = env.run(&[
        "create",
        "--name",
        "m",
        "--type",
        "ssh",
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let deploy = |prometheus_here: &str| {
        let o = env
            .cmd(&["deploy", "-c", "m"])
            .env("LTOPS_PROMETHEUS", prometheus_here)
            .output()
            .unwrap();
        let out = text(&o);
        eprintln!("$ LTOPS_PROMETHEUS={prometheus_here} ltops deploy -c m\n{out}");
        assert_eq!(o.status.code(), Some(0), "{out}");
        out
    };
    let out = deploy("/nonexistent/prometheus");
    assert!(
        out.contains(&format!(
            "prometheus-0: not started: Prometheus is installed neither on {}",
            h.hosts[0].1
        )) && out.contains("--no-metrics"),
        "{out}"
    );
    assert!(!out.contains("prometheus-0: started"), "{out}");
    assert!(
        out.contains(&format!(
            "grafana-0: not started: Grafana (grafana-server) is not installed on {}",
            h.hosts[0].1
        )),
        "{out}"
    );
    // `status` names no Prometheus that does not run.
    let o = env.run(&["status", "m"]);
    assert!(!text(&o).contains("prometheus: on "), "{}", text(&o));
    assert!(!text(&o).contains("Prometheus at"), "{}", text(&o));
    let out = deploy("/usr/bin/prometheus");
    assert!(out.contains("uploading prometheus to"), "{out}");
    assert!(out.contains("prometheus-0: started on"), "{out}");
    let o = env.run(&["status", "m"]);
    assert!(text(&o).contains("prometheus: on "), "{}", text(&o));
    let out = deploy("/usr/bin/prometheus");
    assert!(out.contains("prometheus: up to date on"), "{out}");
    assert!(out.contains("prometheus-0: unchanged on"), "{out}");
    let st = env.state("m");
    let prom = st.component(Role::Prometheus, 0).unwrap().address.clone();
    assert!(
        h.processes_of(0)
            .iter()
            .any(|p| p.contains("bin/prometheus") && p.contains(&prom)),
        "the uploaded Prometheus runs, listening on {prom}: {:?}",
        h.processes_of(0)
    );
    assert_eq!(env.run(&["delete", "m", "--yes"]).status.code(), Some(0));
    nothing_runs_on(&h, 0);

    // A port already taken on the app host.
    let inv = h.inventory(
        "one.toml",
        &[&["app", "agent"], &["agent"]],
        "",
        "id_ed25519",
    );
    assert_eq!(create(&inv, "p").status.code(), Some(0));
    let blocker = env.run(&[
        "ssh", "server", "-c", "p", "--",
        "nohup /usr/bin/python3 -m http.server 8065 >/dev/null 2>&1 </dev/null & echo $! > ~/blocker.pid",
    ]);
    assert_eq!(blocker.status.code(), Some(0), "{}", text(&blocker));
    let o = env.run(&["deploy", "-c", "p"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("port 8065") && out.contains("already in use there"),
        "{out}"
    );
    assert!(out.contains(&h.hosts[0].1), "{out}");
    assert!(
        h.processes_of(0).iter().all(|p| !p.contains("chat-server")),
        "stopped again"
    );
    let o = env.run(&[
        "ssh",
        "server",
        "-c",
        "p",
        "--",
        "kill $(cat ~/blocker.pid)",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // ctrl-c during deploy: exit 130, then a deploy succeeds.
    let child = env
        .cmd(&["deploy", "-c", "p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        matches!(o.status.code(), Some(130) | Some(0)),
        "{}",
        text(&o)
    );
    let o = env.run(&["deploy", "-c", "p"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(text(&o).matches("healthy").count(), 3, "{}", text(&o));

    // A host that is down at delete: reported, state kept; deleted once it is back.
    let st = env.state("p");
    kill_masters(&st.cluster_id);
    h.control("stop-sshd", 1);
    let o = env.run(&["delete", "p", "--yes"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("could not reach 1 host(s)"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains(&h.hosts[1].1), "{}", text(&o));
    assert!(
        env.home.path().join("clusters/p/cluster.toml").exists(),
        "state kept"
    );
    h.control("start-sshd", 1);
    let o = env.run(&["delete", "p", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for i in 0..2 {
        eventually(Duration::from_secs(15), "nothing left running", || {
            let left: Vec<String> = h
                .processes_of(i)
                .into_iter()
                .filter(|p| !p.contains("http.server"))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("host {i}: {left:?}"))
            }
        });
    }

    // A host whose sshd forbids TCP forwarding: found before anything starts, with the setting.
    let cfg = h.path("host1/sshd_config");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text_cfg.replace("AllowTcpForwarding yes", "AllowTcpForwarding no"),
    )
    .unwrap();
    h.control("stop-sshd", 1);
    h.control("start-sshd", 1);
    let noforward = h.inventory("nofwd.toml", &[&["app"], &["agent"]], "", "id_ed25519");
    assert_eq!(create(&noforward, "q").status.code(), Some(0));
    let o = env.run(&["deploy", "-c", "q"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("AllowTcpForwarding"), "{}", text(&o));
    assert!(text(&o).contains(&h.hosts[1].1), "{}", text(&o));
    assert_eq!(env.run(&["delete", "q", "--yes"]).status.code(), Some(0));
}

/// Ends this cluster's SSH master connections (found by their control directory, which is
/// unique to the cluster), as if the network had dropped them.
fn kill_masters(cluster_id: &str) {
    let dir = std::env::temp_dir()
        .join(format!("ltops-ssh-{}", nix::unistd::geteuid().as_raw()))
        .join(cluster_id);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(dir.to_str().unwrap()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
