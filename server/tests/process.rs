//! The real `chat-server` binary: durability across `kill -9`, graceful shutdown on SIGTERM, and
//! exit status 2 for bad configuration.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_chat-server");

/// Starts the binary on a kernel-chosen port and returns it with its base URL, read from the
/// startup log line.
fn spawn(data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("NO_COLOR", "1")
        .env_remove("CHAT_SERVER_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on ".len()..];
                    let url = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(url);
                    sent = true;
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("startup line");
    (child, url)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let mut rb = http.request(method, url).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let token = r
        .headers()
        .get("token")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), token)
}

async fn login(http: &reqwest::Client, base: &str, create: bool) -> String {
    if create {
        let (s, _, _) = call(
            http,
            reqwest::Method::POST,
            format!("{base}/api/v4/users"),
            None,
            json!({"username": "alice", "email": "alice@example.com", "password": "password1"}),
        )
        .await;
        assert_eq!(s, 201);
    }
    let (s, _, token) = call(
        http,
        reqwest::Method::POST,
        format!("{base}/api/v4/users/login"),
        None,
        json!({"login_id": "alice", "password": "password1"}),
    )
    .await;
    assert_eq!(s, 200);
    token.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_post_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn(dir.path());
    let http = reqwest::Client::new();
    let token = login(&http, &base, true).await;
    let (_, team, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v4/teams"),
        Some(&token),
        json!({"name": "team1"}),
    )
    .await;
    let (_, chan, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v4/channels"),
        Some(&token),
        json!({"team_id": team["id"], "name": "burst", "type": "O"}),
    )
    .await;
    let channel_id = chan["id"].as_str().unwrap().to_string();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = vec![];
    for w in 0..8 {
        let (http, base, token, channel_id, acked) = (
            http.clone(),
            base.clone(),
            token.clone(),
            channel_id.clone(),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..400 {
                let r = http
                    .post(format!("{base}/api/v4/posts"))
                    .bearer_auth(&token)
                    .json(&json!({"channel_id": channel_id, "message": format!("w{w} #{i}")}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 201 {
                    break;
                }
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(v["id"].as_str().unwrap().to_string());
            }
        }));
    }
    // Kill mid-burst, once a good number of posts are acknowledged.
    for _ in 0..200 {
        if acked.lock().unwrap().len() >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "burst too small to mean anything: {}",
        acked.len()
    );
    eprintln!("{} posts acknowledged before kill -9", acked.len());

    let (mut child, base) = spawn(dir.path());
    let token = login(&http, &base, false).await;
    let mut stored = std::collections::HashSet::new();
    for page in 0.. {
        let (s, list, _) = call(
            &http,
            reqwest::Method::GET,
            format!("{base}/api/v4/channels/{channel_id}/posts?page={page}&per_page=200"),
            Some(&token),
            Value::Null,
        )
        .await;
        assert_eq!(s, 200);
        let order = list["order"].as_array().unwrap();
        if order.is_empty() {
            break;
        }
        stored.extend(order.iter().map(|v| v.as_str().unwrap().to_string()));
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged posts lost",
        lost.len(),
        acked.len()
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn sigterm_closes_websockets_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn(dir.path());
    let http = reqwest::Client::new();
    let token = login(&http, &base, true).await;
    let mut req = format!("{}/api/v4/websocket", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"hello\""));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1001));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_configuration_exits_2_and_names_the_key() {
    let out = Command::new(BIN)
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "send-queue = 2\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("send-queue"));

    std::fs::write(&file, "no-such-key = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-key"));

    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit status"));
}

/// A bad database URL, an unusable data directory or an extreme value is a configuration error:
/// exit 2, a message naming the setting, no panic, and never the password.
#[test]
fn bad_database_or_data_dir_exits_2_without_leaking_the_password() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for url in [
        "postgres://u:s3cr/et@127.0.0.1:1/db",
        "postgres://u:s3cret@127.0.0.1:notaport/db",
        "postgres://u:s3cret@127.0.0.1:1/db?sslmode=bogus",
    ] {
        let (code, err) = run(&["--database-url", url]);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(err.contains("database-url"), "{err}");
        assert!(!err.contains("s3cr"), "password leaked: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let (code, err) = run(&["--data-dir", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("data-dir") && err.contains("not-a-dir"),
        "{err}"
    );
    for args in [
        ["--argon2-parallelism", "4294967295"],
        ["--argon2-memory-kib", "4294967295"],
        ["--replay-keep", "0s"],
    ] {
        let d = dir.path().join("data");
        let (code, err) = run(&[args[0], args[1], "--data-dir", d.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
