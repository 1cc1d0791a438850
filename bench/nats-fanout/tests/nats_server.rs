//! `nats-fanout` against a real two-server `nats-server` cluster on loopback (Debian's package;
//! `.ci/run` installs it): every message published on one server reaches every subscriber on
//! both, and the report counts them. Bounded: 40 subscribers, 2 s of publishing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Nats {
    child: Child,
    log: PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address after `marker` in the server's log (`-p -1` and `:-1` pick free ports).
fn logged_addr(log: &Path, marker: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(marker))?;
    let addr = line.rsplit(' ').next()?.trim();
    Some(addr.trim_start_matches("nats://").to_string())
}

fn start(dir: &Path, name: &str, routes: Option<&str>) -> Nats {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", "-1", "--cluster_name", "t"])
        .args(["--cluster", "nats://127.0.0.1:-1", "--log"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = routes {
        cmd.args(["--routes", r]);
    }
    Nats {
        child: cmd.spawn().expect("start nats-server"),
        log,
    }
}

fn have_nats() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed (apt-get install nats-server); .ci/run installs it"
        );
        eprintln!("skipping: nats-server is not installed (apt-get install nats-server)");
    }
    found
}

#[test]
fn every_message_reaches_every_subscriber_across_a_two_server_cluster() {
    if !have_nats() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None);
    let a_client = eventually(10, "server a's client port", || {
        logged_addr(&a.log, "Listening for client connections on")
    });
    let a_route = eventually(10, "server a's route port", || {
        logged_addr(&a.log, "Listening for route connections on")
    });
    let b = start(dir.path(), "b", Some(&format!("nats://{a_route}")));
    let b_client = eventually(10, "server b's client port", || {
        logged_addr(&b.log, "Listening for client connections on")
    });
    eventually(10, "the route between the servers", || {
        let t = std::fs::read_to_string(&b.log).ok()?;
        t.contains("Route connection created").then_some(())
    });

    // 2 subjects of 20 members, half the subscribers on each server; 20 messages/s for 2 s.
    let out = Command::new(env!("CARGO_BIN_EXE_nats-fanout"))
        .args(["--servers", &format!("{a_client},{b_client}")])
        .args(["--subscribers", "40", "--members", "20", "--subjects", "2"])
        .args(["--rate", "20", "--payload", "300", "--settle", "500ms"])
        .args([
            "--publish",
            "2s",
            "--listen",
            "5s",
            "--connect-timeout",
            "10s",
        ])
        .output()
        .expect("run nats-fanout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nats-fanout failed: {stderr}");
    assert!(stderr.contains("ready 40"), "stderr: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let published: Vec<u64> = r["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(published, vec![20, 20], "report: {r}");
    assert_eq!(r["subscribers"], 40);
    assert_eq!(
        r["received"],
        40 * 20,
        "every subscriber got its subject's 20: {r}"
    );
    assert_eq!(r["closed"], 0);
    let p99 = r["latency_p99_us"].as_u64().unwrap();
    assert!(
        p99 > 0 && p99 <= r["latency_max_us"].as_u64().unwrap(),
        "{r}"
    );
    assert_intervals_add_up(&r, 800);

    // The same under Poisson arrivals (the F1 agents' open model): a seeded schedule, every
    // message still reaching all 20 of its subject's subscribers.
    let out = Command::new(env!("CARGO_BIN_EXE_nats-fanout"))
        .args(["--servers", &format!("{a_client},{b_client}")])
        .args(["--subscribers", "40", "--members", "20", "--subjects", "2"])
        .args(["--rate", "20", "--arrivals", "poisson", "--seed", "3"])
        .args(["--payload", "300", "--settle", "500ms", "--interval", "1s"])
        .args(["--publish", "2s", "--listen", "5s"])
        .args(["--connect-timeout", "10s"])
        .output()
        .expect("run nats-fanout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nats-fanout failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let sent: u64 = r["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(sent > 10, "a 2 s Poisson schedule at 20/s sent {sent}: {r}");
    assert_eq!(r["received"], sent * 20, "{r}");
    assert_eq!(r["interval_secs"], 1);
    assert_intervals_add_up(&r, sent * 20);
    drop((a, b));
}

/// The per-interval counts of a report add up to what it received, each interval's p99 is one
/// of its recorded values, and the intervals are aligned to their length.
fn assert_intervals_add_up(r: &serde_json::Value, received: u64) {
    let len = r["interval_secs"].as_u64().unwrap();
    let ivs = r["intervals"].as_array().unwrap();
    let mut total = 0;
    for iv in ivs {
        assert_eq!(iv["start_unix_s"].as_u64().unwrap() % len, 0, "{iv}");
        let counts: Vec<(u64, u64)> = iv["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_u64().unwrap(), c[1].as_u64().unwrap()))
            .collect();
        let n: u64 = counts.iter().map(|c| c.1).sum();
        assert_eq!(n, iv["received"].as_u64().unwrap(), "{iv}");
        let p99 = iv["p99_us"].as_u64().unwrap();
        assert!(counts.iter().any(|c| c.0 == p99), "{iv}");
        total += n;
    }
    assert_eq!(total, received, "{r}");
}

#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_nats-fanout"))
        .args(["--servers", "127.0.0.1:9", "--subscribers", "5000"])
        .args(["--members", "10", "--subjects", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--subscribers"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_nats-fanout"))
        .args(["--servers", "127.0.0.1:9", "--payload", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload"));
}
