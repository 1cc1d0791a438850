//! Test support: a real server on 127.0.0.1:0 (in process), an HTTP helper that returns status,
//! headers and JSON, user sign-up helpers, and a small WebSocket client.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use chat_server::testing::TestServer;
use chat_server::Config;
use futures_util::{SinkExt, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub struct Harness {
    pub server: TestServer,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Asserts a Mattermost error body with this status.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "content type of {}",
            self.text
        );
        for k in ["id", "message", "detailed_error", "request_id"] {
            assert!(self.body[k].is_string(), "missing {k} in {}", self.text);
        }
        assert_eq!(self.body["status_code"], status, "{}", self.text);
    }
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub username: String,
    pub token: String,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// A server on the PostgreSQL database at `url` instead of SQLite.
    pub async fn start_postgres(url: &str) -> Harness {
        Harness::start_with(|c| {
            c.database = chat_server::Database::Postgres {
                url: url.to_string(),
            }
        })
        .await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path());
        config.shutdown_grace = Duration::from_secs(3);
        tweak(&mut config);
        let server = chat_server::testing::start(config).await.unwrap();
        Harness {
            server,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Graceful shutdown, asserting `run` returned Ok.
    pub async fn stop(self) {
        self.server.stop().await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v4{path}", self.server.url)
    }

    pub async fn req(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        into_resp(rb.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.req(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req(Method::POST, path, Some(token), Some(body)).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req(Method::PUT, path, Some(token), Some(body)).await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.req(Method::DELETE, path, Some(token), None).await
    }

    /// Signs up and logs in `name` (password `password1`).
    pub async fn user(&self, name: &str) -> User {
        let r = self
            .req(
                Method::POST,
                "/users",
                None,
                Some(json!({"username": name, "email": format!("{name}@example.com"), "password": "password1"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        self.login(name).await
    }

    /// Logs `name` in again (password `password1`): a new session and token.
    pub async fn login(&self, name: &str) -> User {
        let l = self
            .req(
                Method::POST,
                "/users/login",
                None,
                Some(json!({"login_id": name, "password": "password1"})),
            )
            .await;
        assert_eq!(l.status, 200, "{}", l.text);
        User {
            id: l.body["id"].as_str().unwrap().to_string(),
            username: name.to_string(),
            token: l.headers["token"].to_str().unwrap().to_string(),
        }
    }

    pub async fn team(&self, owner: &User, name: &str) -> String {
        let r = self
            .post(
                "/teams",
                &owner.token,
                json!({"name": name, "display_name": name, "type": "O"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    pub async fn join_team(&self, by: &User, team: &str, who: &User) {
        let r = self
            .post(
                &format!("/teams/{team}/members"),
                &by.token,
                json!({"team_id": team, "user_id": who.id}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }

    pub async fn channel(&self, owner: &User, team: &str, name: &str, kind: &str) -> String {
        let r = self
            .post(
                "/channels",
                &owner.token,
                json!({"team_id": team, "name": name, "display_name": name, "type": kind}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    pub async fn join_channel(&self, by: &User, channel: &str, who: &User) {
        let r = self
            .post(
                &format!("/channels/{channel}/members"),
                &by.token,
                json!({"user_id": who.id}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }

    pub async fn create_post(&self, by: &User, channel: &str, message: &str) -> Value {
        let r = self
            .post(
                "/posts",
                &by.token,
                json!({"channel_id": channel, "message": message}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.server.metrics_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A WebSocket authenticated with the `Authorization` header at upgrade.
    pub async fn ws(&self, user: &User) -> Ws {
        self.ws_query(user, "").await
    }

    pub async fn ws_query(&self, user: &User, query: &str) -> Ws {
        let mut req = format!("{}{query}", self.server.ws_url())
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", user.token).parse().unwrap(),
        );
        let (s, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws { s }
    }

    /// A WebSocket without credentials (for `authentication_challenge`).
    pub async fn ws_anonymous(&self, query: &str) -> Ws {
        let (s, _) = tokio_tungstenite::connect_async(format!("{}{query}", self.server.ws_url()))
            .await
            .unwrap();
        Ws { s }
    }
}

/// Total of a metric's samples whose line starts with `prefix` (name plus optional labels).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

pub struct Ws {
    pub s: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    /// The next JSON text frame, or `None` on close/timeout.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(wait, self.s.next())
                .await
                .ok()??
                .ok()?;
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next event (frames with `event`), skipping replies; panics on timeout.
    /// Reads until the server closes the socket: the close frame's code, or `None` for a close
    /// without one or a dropped connection.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some(m) = self.s.next().await {
            match m {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Err(_) => return None,
                Ok(_) => continue,
            }
        }
        None
    }

    pub async fn event(&mut self) -> Value {
        loop {
            let v = self
                .next_json(Duration::from_secs(5))
                .await
                .expect("expected an event");
            if v.get("event").is_some() {
                return v;
            }
        }
    }

    /// Next event of type `name`, skipping others (e.g. status_change).
    pub async fn event_named(&mut self, name: &str) -> Value {
        loop {
            let v = self.event().await;
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Whether an event of type `name` arrives within `wait`.
    pub async fn sees(&mut self, name: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
            match self.next_json(left).await {
                Some(v) if v["event"] == name => return true,
                Some(_) => continue,
                None => return false,
            }
        }
        false
    }

    pub async fn send(&mut self, v: Value) {
        self.s
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends an action and returns its reply (the frame carrying `seq_reply`).
    pub async fn action(&mut self, seq: i64, action: &str, data: Value) -> Value {
        self.send(json!({"seq": seq, "action": action, "data": data}))
            .await;
        loop {
            let v = self.next_json(Duration::from_secs(5)).await.expect("reply");
            if v.get("seq_reply").is_some() {
                return v;
            }
        }
    }
}
