//! Fan-out benchmark: N WebSocket clients on loopback, spread over M channel members, while one
//! member posts at a fixed rate for a fixed time. Reports posts/s, deliveries/s and the delivery
//! latency (post request sent → `posted` frame received) p50/p99/max.
//!
//! ```text
//! cargo run --release -p chat-server --example fanout_bench -- \
//!     --connections 2000 --members 500 --rate 20 --seconds 10
//! ```
//! Client and server share this process (and machine), so the figures are a floor. Every loop
//! is bounded in count and time and only 127.0.0.1 is used.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    connections: usize,
    members: usize,
    rate: f64,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        connections: 2000,
        members: 500,
        rate: 20.0,
        seconds: 10,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--connections" => a.connections = val.parse().expect("--connections N"),
            "--members" => a.members = val.parse().expect("--members N"),
            "--rate" => a.rate = val.parse().expect("--rate POSTS_PER_SEC"),
            "--seconds" => a.seconds = val.parse().expect("--seconds N"),
            other => {
                panic!("unknown argument {other}; use --connections --members --rate --seconds")
            }
        }
    }
    assert!(
        a.members >= 1 && a.connections >= a.members,
        "need connections >= members >= 1"
    );
    assert!(a.seconds <= 600 && a.rate <= 2000.0, "bounded runs only");
    a
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (Value, Option<String>) {
    let mut rb = http.post(format!("{base}/api/v4{path}")).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    let tok = r
        .headers()
        .get("token")
        .map(|v| v.to_str().unwrap().to_string());
    (r.json().await.unwrap(), tok)
}

/// Resident set size of this process in KiB (Linux), for the per-connection memory estimate.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let a = args();
    raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    let mut config = chat_server::Config::for_data_dir(dir.path());
    config.shutdown_grace = Duration::from_secs(5);
    let server = chat_server::testing::start(config).await.unwrap();
    let base = server.url.clone();
    let http = reqwest::Client::new();

    println!("setting up {} members ...", a.members);
    let setup = Instant::now();
    let mut tokens = Vec::with_capacity(a.members);
    let mut ids = Vec::with_capacity(a.members);
    for i in 0..a.members {
        let name = format!("user{i}");
        let (u, _) = api(&http, &base, "/users", None, json!({"username": name, "email": format!("{name}@example.com"), "password": "password1"})).await;
        let (_, tok) = api(
            &http,
            &base,
            "/users/login",
            None,
            json!({"login_id": name, "password": "password1"}),
        )
        .await;
        ids.push(u["id"].as_str().unwrap().to_string());
        tokens.push(tok.unwrap());
    }
    let (team, _) = api(
        &http,
        &base,
        "/teams",
        Some(&tokens[0]),
        json!({"name": "bench"}),
    )
    .await;
    let team_id = team["id"].as_str().unwrap().to_string();
    let (chan, _) = api(
        &http,
        &base,
        "/channels",
        Some(&tokens[0]),
        json!({"team_id": team_id, "name": "fanout", "type": "O"}),
    )
    .await;
    let channel_id = chan["id"].as_str().unwrap().to_string();
    for id in &ids[1..] {
        api(
            &http,
            &base,
            &format!("/teams/{team_id}/members"),
            Some(&tokens[0]),
            json!({"team_id": team_id, "user_id": id}),
        )
        .await;
        api(
            &http,
            &base,
            &format!("/channels/{channel_id}/members"),
            Some(&tokens[0]),
            json!({"user_id": id}),
        )
        .await;
    }
    println!(
        "setup took {:.1}s; connecting {} WebSockets ...",
        setup.elapsed().as_secs_f64(),
        a.connections
    );

    let rss_before = rss_kib();
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let mut req = server.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", tokens[i % a.members]).parse().unwrap(),
        );
        // A small read buffer: the default (128 KiB) is zeroed on every read and would make the
        // client, not the server, the bottleneck.
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(8192);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), false)
            .await
            .unwrap();
        let (received, latencies, stop) = (received.clone(), latencies.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let stopped = stop.cancelled();
            tokio::pin!(stopped);
            loop {
                let m = tokio::select! {
                    _ = &mut stopped => break,
                    m = ws.next() => m,
                };
                let Some(Ok(Message::Text(t))) = m else {
                    if matches!(m, Some(Ok(_))) {
                        continue;
                    } else {
                        break;
                    }
                };
                let now = epoch.elapsed().as_micros() as u64;
                // Find the send time without a full JSON parse: the message is "bench-t=<micros>".
                if let Some(i) = t.as_str().find("bench-t=") {
                    let digits: String = t.as_str()[i + 8..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(sent) = digits.parse::<u64>() {
                        mine.push(now.saturating_sub(sent));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib();
    println!(
        "idle connections: RSS grew {} KiB, {:.1} KiB per connection (client and server sides together)",
        rss_idle.saturating_sub(rss_before),
        rss_idle.saturating_sub(rss_before) as f64 / a.connections as f64
    );
    println!("posting {} posts/s for {}s ...", a.rate, a.seconds);

    let total_posts = (a.rate * a.seconds as f64).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    for _ in 0..total_posts {
        tick.tick().await;
        let (http, base, tok, channel_id, sent) = (
            http.clone(),
            base.clone(),
            tokens[0].clone(),
            channel_id.clone(),
            sent.clone(),
        );
        inflight.push(tokio::spawn(async move {
            let t = epoch.elapsed().as_micros() as u64;
            let r = http
                .post(format!("{base}/api/v4/posts"))
                .bearer_auth(tok)
                .json(&json!({"channel_id": channel_id, "message": format!("bench-t={t} {}", "x".repeat(200))}))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if matches!(r, Ok(ref r) if r.status() == 201) {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for f in inflight {
        let _ = f.await;
    }
    let post_elapsed = started.elapsed().as_secs_f64();
    let expected = sent.load(Ordering::Relaxed) * a.connections as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliver_elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| -> String {
        metrics
            .lines()
            .filter(|x| x.starts_with(name))
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let ok_posts = sent.load(Ordering::Relaxed);
    println!(
        "connections={} members={} posts_ok={} of {}",
        a.connections, a.members, ok_posts, total_posts
    );
    println!("posts/s={:.1}", ok_posts as f64 / post_elapsed);
    println!(
        "deliveries={} of {} expected; deliveries/s={:.0}",
        l.len(),
        expected,
        l.len() as f64 / deliver_elapsed
    );
    println!(
        "delivery latency ms: p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        percentile(&l, 0.50),
        percentile(&l, 0.90),
        percentile(&l, 0.99),
        percentile(&l, 1.0)
    );
    println!("server: {}", metric("chat_events_dropped_total"));
    println!("server: {}", metric("chat_websocket_slow_closed_total"));
    server.stop().await.unwrap();
}
