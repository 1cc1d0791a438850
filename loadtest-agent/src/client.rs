//! The HTTP side of a simulated user: typed calls for the Mattermost API v4 endpoints the agent
//! uses, over the agent's own pooled HTTP/1.1 client ([`crate::http`], one pool per source
//! address shared by every user), and the classification of every failure into the contract's
//! [`ErrorClass`].

use std::net::IpAddr;
use std::time::Duration;

use loadtest_contract::results::ErrorClass;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use serde_json::{json, Value};

pub use crate::http::Method;
use crate::http::{self, HttpError, Request};
pub use crate::page::{Page, NEWEST_KEPT};

/// A failed API call: its class (what the results count), the HTTP status when there was one,
/// and a message for logs (never a token).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {path}: {message}")]
pub struct ApiError {
    pub class: ErrorClass,
    pub status: Option<u16>,
    pub method: String,
    pub path: String,
    pub message: String,
}

impl ApiError {
    /// An answer (or a request) that does not fit the protocol.
    pub fn protocol(method: &str, path: &str, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Protocol,
            status: None,
            method: method.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
    /// The session is no longer valid: the user must log in again.
    pub fn is_unauthorized(&self) -> bool {
        self.status == Some(401)
    }
}

/// Maps a transport error to its class: timeouts, connection failures (refused, reset, closed
/// without an answer), and answers that do not fit HTTP as protocol errors.
pub fn classify(e: &HttpError) -> ErrorClass {
    match e {
        HttpError::Timeout(_) => ErrorClass::Timeout,
        HttpError::Connect { .. } | HttpError::Io(_) => ErrorClass::Connect,
        HttpError::Protocol(_) => ErrorClass::Protocol,
    }
}

/// Maps an HTTP status to its class (only called for non-2xx).
pub fn classify_status(status: u16) -> ErrorClass {
    if (500..600).contains(&status) {
        ErrorClass::Http5xx
    } else if (400..500).contains(&status) {
        ErrorClass::Http4xx
    } else {
        ErrorClass::Protocol
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Post {
    pub id: String,
    #[serde(default)]
    pub root_id: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Member {
    pub user_id: String,
}

/// The result of `POST /users/login`.
#[derive(Clone, Debug)]
pub struct Login {
    pub user: User,
    pub token: String,
}

/// The API of one server, through the agent's pooled HTTP client.
#[derive(Debug)]
pub struct Api {
    http: http::Client,
}

/// A JSON request body. Serializing the agent's own structs and maps cannot fail.
fn json_body<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Api {
    /// `url` is the server's base URL without `/api/v4`; `shards` the number of load runtimes
    /// (each keeps connections of its own).
    pub fn new(
        url: &str,
        timeout: Duration,
        local_addrs: &[IpAddr],
        shards: usize,
    ) -> Result<Self, ApiError> {
        let base = format!("{}/api/v4", url.trim_end_matches('/'));
        let http = http::Client::new(&base, timeout, local_addrs, shards)
            .map_err(|e| ApiError::protocol("-", "-", format!("target.url: {e}")))?;
        Ok(Self { http })
    }

    /// Sends one request and hands a 2xx answer (its `Token` header when `want_token`, its body)
    /// to `read`, in place in the connection's buffer.
    async fn exchange<T>(
        &self,
        slot: usize,
        req: Request<'_>,
        want_token: bool,
        read: impl FnOnce(Option<String>, &[u8]) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        let err = |class, status, message: String| ApiError {
            class,
            status,
            method: req.method.to_string(),
            path: req.path.to_string(),
            message,
        };
        let mut resp = self
            .http
            .send(slot, req, want_token)
            .await
            .map_err(|e| err(classify(&e), None, e.to_string()))?;
        let status = resp.status;
        let bytes = resp.body();
        if !(200..300).contains(&status) {
            // Mattermost error bodies carry an id and a message; keep them for the log.
            let detail = serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "{} ({})",
                        v.get("message")?.as_str()?,
                        v.get("id").and_then(Value::as_str).unwrap_or("")
                    ))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into());
            return Err(err(
                classify_status(status),
                Some(status),
                format!("HTTP {status}: {detail}"),
            ));
        }
        let token = resp.token.take();
        read(token, resp.body()).map_err(|m| err(ErrorClass::Protocol, Some(status), m))
    }

    /// Sends a request and decodes a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        slot: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<T, ApiError> {
        let req = Request {
            method,
            path,
            token,
            body,
        };
        self.exchange(slot, req, false, |_, b| {
            serde_json::from_slice(b).map_err(|e| format!("unexpected answer: {e}"))
        })
        .await
    }

    /// Sends a request whose answer body does not matter (but must be a 2xx).
    pub async fn call_ignore(
        &self,
        slot: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        let req = Request {
            method,
            path,
            token,
            body,
        };
        self.exchange(slot, req, false, |_, _| Ok(())).await
    }

    /// `POST /users/login`; the session token comes back in the `Token` header.
    pub async fn login(
        &self,
        slot: usize,
        login_id: &str,
        password: &str,
    ) -> Result<Login, ApiError> {
        let body = json_body(&json!({"login_id": login_id, "password": password}));
        let req = Request {
            method: Method::Post,
            path: "/users/login",
            token: None,
            body: Some(&body),
        };
        self.exchange(slot, req, true, |token, b| {
            let token = token.ok_or("login answer has no Token header")?;
            let user: User =
                serde_json::from_slice(b).map_err(|e| format!("unexpected login answer: {e}"))?;
            Ok(Login { user, token })
        })
        .await
    }

    pub async fn create_user(
        &self,
        slot: usize,
        token: Option<&str>,
        username: &str,
        password: &str,
    ) -> Result<User, ApiError> {
        let body = json_body(&json!({
            "username": username,
            "password": password,
            "email": format!("{username}@loadtest.example.com"),
        }));
        self.call(slot, Method::Post, "/users", token, Some(&body))
            .await
    }

    pub async fn user_by_name(
        &self,
        slot: usize,
        token: &str,
        username: &str,
    ) -> Result<User, ApiError> {
        self.call(
            slot,
            Method::Get,
            &format!("/users/username/{username}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn team_by_name(
        &self,
        slot: usize,
        token: &str,
        name: &str,
    ) -> Result<Team, ApiError> {
        self.call(
            slot,
            Method::Get,
            &format!("/teams/name/{name}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn create_team(
        &self,
        slot: usize,
        token: &str,
        name: &str,
    ) -> Result<Team, ApiError> {
        let body = json_body(&json!({"name": name, "display_name": name, "type": "O"}));
        self.call(slot, Method::Post, "/teams", Some(token), Some(&body))
            .await
    }

    pub async fn channel_by_name(
        &self,
        slot: usize,
        token: &str,
        team_id: &str,
        name: &str,
    ) -> Result<Channel, ApiError> {
        let path = format!("/teams/{team_id}/channels/name/{name}");
        self.call(slot, Method::Get, &path, Some(token), None).await
    }

    pub async fn create_channel(
        &self,
        slot: usize,
        token: &str,
        team_id: &str,
        name: &str,
        private: bool,
    ) -> Result<Channel, ApiError> {
        let body = json_body(&json!({
            "team_id": team_id,
            "name": name,
            "display_name": name,
            "type": if private { "P" } else { "O" },
        }));
        self.call(slot, Method::Post, "/channels", Some(token), Some(&body))
            .await
    }

    /// One page of members of a team (`kind` = "teams") or channel (`kind` = "channels").
    pub async fn members_page(
        &self,
        slot: usize,
        token: &str,
        kind: &str,
        id: &str,
        page: u32,
        per_page: u32,
    ) -> Result<Vec<Member>, ApiError> {
        let path = format!("/{kind}/{id}/members?page={page}&per_page={per_page}");
        self.call(slot, Method::Get, &path, Some(token), None).await
    }

    pub async fn add_team_member(
        &self,
        slot: usize,
        token: &str,
        team_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        let body = json_body(&json!({"team_id": team_id, "user_id": user_id}));
        let path = format!("/teams/{team_id}/members");
        self.call_ignore(slot, Method::Post, &path, Some(token), Some(&body))
            .await
    }

    pub async fn add_channel_member(
        &self,
        slot: usize,
        token: &str,
        channel_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        let body = json_body(&json!({"user_id": user_id}));
        let path = format!("/channels/{channel_id}/members");
        self.call_ignore(slot, Method::Post, &path, Some(token), Some(&body))
            .await
    }

    /// `GET /channels/{id}/posts`, newest first; `before` pages back from a post id. The page
    /// is handed to `take` where it lies, in the connection's buffer.
    pub async fn channel_posts<T>(
        &self,
        slot: usize,
        token: &str,
        channel_id: &str,
        before: Option<&str>,
        per_page: u32,
        take: impl FnOnce(&Page<'_>) -> T,
    ) -> Result<T, ApiError> {
        // The hot paths are joined with `concat` (one allocation of the exact length), not
        // `format!`: its formatting machinery was 3 % of the agent's CPU in the check-unreads
        // mix (`bench/peers.py --perf`).
        let mut n = itoa::Buffer::new();
        let (and_before, before) = before.map_or(("", ""), |b| ("&before=", b));
        let path = [
            "/channels/",
            channel_id,
            "/posts?page=0&per_page=",
            n.format(per_page),
            and_before,
            before,
        ]
        .concat();
        let req = Request {
            method: Method::Get,
            path: &path,
            token: Some(token),
            body: None,
        };
        self.exchange(slot, req, false, |_, b| {
            Page::parse(b)
                .map(|page| take(&page))
                .map_err(|e| format!("unexpected posts page: {e}"))
        })
        .await
    }

    pub async fn create_post(
        &self,
        slot: usize,
        token: &str,
        post: &NewPost<'_>,
    ) -> Result<Post, ApiError> {
        let body = json_body(post);
        self.call(slot, Method::Post, "/posts", Some(token), Some(&body))
            .await
    }

    /// Marks `channel_id` viewed (Mattermost's unread tracking).
    pub async fn view_channel(
        &self,
        slot: usize,
        token: &str,
        user_id: &str,
        channel_id: &str,
        prev: &str,
    ) -> Result<(), ApiError> {
        let body = json_body(&View {
            channel_id,
            prev_channel_id: prev,
        });
        let path = ["/channels/members/", user_id, "/view"].concat();
        self.call_ignore(slot, Method::Post, &path, Some(token), Some(&body))
            .await
    }

    /// Ends the session: the server revokes the token and closes the session's WebSockets.
    pub async fn logout(&self, slot: usize, token: &str) -> Result<(), ApiError> {
        self.call_ignore(slot, Method::Post, "/users/logout", Some(token), None)
            .await
    }

    /// Unread counts: the user's channel memberships in a team.
    pub async fn channel_members_for_user(
        &self,
        slot: usize,
        token: &str,
        user_id: &str,
        team_id: &str,
    ) -> Result<(), ApiError> {
        let path = ["/users/", user_id, "/teams/", team_id, "/channels/members"].concat();
        self.call_ignore(slot, Method::Get, &path, Some(token), None)
            .await
    }

    pub async fn add_reaction(
        &self,
        slot: usize,
        token: &str,
        user_id: &str,
        post_id: &str,
        emoji: &str,
    ) -> Result<(), ApiError> {
        let body = json_body(&Reaction {
            user_id,
            post_id,
            emoji_name: emoji,
            create_at: 0,
        });
        self.call_ignore(slot, Method::Post, "/reactions", Some(token), Some(&body))
            .await
    }

    pub async fn update_status(
        &self,
        slot: usize,
        token: &str,
        user_id: &str,
        status: &str,
    ) -> Result<(), ApiError> {
        let body = json_body(&Status { user_id, status });
        let path = ["/users/", user_id, "/status"].concat();
        self.call_ignore(slot, Method::Put, &path, Some(token), Some(&body))
            .await
    }
}

/// Body of `POST /channels/members/{user}/view`.
#[derive(Serialize)]
struct View<'a> {
    channel_id: &'a str,
    prev_channel_id: &'a str,
}

/// Body of `POST /reactions`.
#[derive(Serialize)]
struct Reaction<'a> {
    user_id: &'a str,
    post_id: &'a str,
    emoji_name: &'a str,
    create_at: i64,
}

/// Body of `PUT /users/{id}/status`.
#[derive(Serialize)]
struct Status<'a> {
    user_id: &'a str,
    status: &'a str,
}

/// Body of `POST /posts`. `props` carries the delivery-measurement stamp.
#[derive(Debug, Serialize)]
pub struct NewPost<'a> {
    pub channel_id: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub root_id: &'a str,
    pub props: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_that_is_not_http_is_refused_naming_the_field() {
        for bad in ["not a url", "ftp://127.0.0.1/", "http://user:pw@127.0.0.1/"] {
            let e = Api::new(bad, Duration::from_secs(1), &[], 1).expect_err(bad);
            assert!(e.message.starts_with("target.url: "), "{bad}: {e}");
        }
        assert!(Api::new(
            "https://chat.example.com/prefix/",
            Duration::from_secs(1),
            &[],
            1
        )
        .is_ok());
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(classify_status(404), ErrorClass::Http4xx);
        assert_eq!(classify_status(503), ErrorClass::Http5xx);
        assert_eq!(classify_status(302), ErrorClass::Protocol);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let api = Api::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(2),
            &[],
            1,
        )
        .expect("client");
        let e = api.login(0, "u", "p").await.expect_err("nobody listens");
        assert_eq!(e.class, ErrorClass::Connect, "{e}");
    }

    /// The requests a user's hot actions send, as a real server on 127.0.0.1:0 reads them: the
    /// paths joined without `format!`, the page's `before` only when paging back, the view's
    /// `Content-Length` the length of its body.
    #[tokio::test]
    async fn hot_paths_are_sent_as_written() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut pending = Vec::new();
            while got.len() < 4 {
                let req = crate::http::tests::read_request(&mut s, &mut pending)
                    .await
                    .expect("a request");
                let req = String::from_utf8_lossy(&req).into_owned();
                let (head, body) = req.split_once("\r\n\r\n").expect("a head");
                let page = r#"{"order":[],"posts":{}}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{page}",
                    page.len()
                );
                s.write_all(answer.as_bytes()).await.expect("answer");
                let line = head.lines().next().unwrap_or("").to_string();
                got.push((line, head.to_string(), body.to_string()));
            }
            got
        });
        let api = Api::new(&url, Duration::from_secs(5), &[], 1).expect("client");
        api.channel_posts(0, "tok", "ch1", None, 30, |p| p.len)
            .await
            .expect("page");
        api.channel_posts(0, "tok", "ch1", Some("p9"), 60, |p| p.len)
            .await
            .expect("older page");
        api.view_channel(0, "tok", "u1", "ch1", "ch0")
            .await
            .expect("view");
        api.channel_members_for_user(0, "tok", "u1", "t1")
            .await
            .expect("unreads");
        let got = server.await.expect("server");
        let lines: Vec<&str> = got.iter().map(|(l, _, _)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "GET /api/v4/channels/ch1/posts?page=0&per_page=30 HTTP/1.1",
                "GET /api/v4/channels/ch1/posts?page=0&per_page=60&before=p9 HTTP/1.1",
                "POST /api/v4/channels/members/u1/view HTTP/1.1",
                "GET /api/v4/users/u1/teams/t1/channels/members HTTP/1.1",
            ]
        );
        let (_, head, body) = &got[2];
        assert_eq!(body, r#"{"channel_id":"ch1","prev_channel_id":"ch0"}"#);
        let length = format!("Content-Length: {}", body.len());
        assert!(head.lines().any(|l| l == length), "{head}");
    }
}
