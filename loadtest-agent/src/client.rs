//! The HTTP side of a simulated user: one pooled `reqwest` client per source address, shared by
//! every user (connection reuse matters — creating clients per request costs an order of magnitude
//! in throughput), typed calls for the Mattermost API v4 endpoints the agent uses, and the
//! classification of every failure into the contract's [`ErrorClass`].

use std::net::IpAddr;
use std::time::Duration;

use loadtest_contract::results::ErrorClass;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

/// Maps a transport error to its class: timeouts, connection failures, and everything else that
/// broke mid-exchange (resets, bad bodies) as protocol errors.
pub fn classify(e: &reqwest::Error) -> ErrorClass {
    if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_connect() {
        ErrorClass::Connect
    } else if e.is_decode() || e.is_body() {
        ErrorClass::Protocol
    } else if e.is_request() {
        // Resets and closed connections while sending surface as request errors.
        ErrorClass::Connect
    } else {
        ErrorClass::Protocol
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

/// A page of posts, decoded only as far as a user's next actions need: the ids in `order` and,
/// for the replies among them, their thread's root. A page is ~14 KB of JSON; every other field
/// of every post is skipped without allocating.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PostList {
    #[serde(default)]
    pub order: Vec<String>,
    /// (post id, root id) of the page's replies (posts with a non-empty `root_id`).
    #[serde(default, rename = "posts")]
    pub replies: Replies,
}

impl PostList {
    /// The thread root of post `id` ("" when it is not a reply).
    pub fn root_of(&self, id: &str) -> &str {
        self.replies
            .0
            .iter()
            .find(|(p, _)| p == id)
            .map_or("", |(_, r)| r.as_str())
    }
}

/// The replies of a post map (see [`PostList`]).
#[derive(Clone, Debug, Default)]
pub struct Replies(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Replies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A string borrowed from the input where it has no escapes.
        struct Str<'a>(std::borrow::Cow<'a, str>);
        impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
                    type Value = Str<'a>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'a>, E> {
                        Ok(Str(v.into()))
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Str<'a>, E> {
                        Ok(Str(v.to_owned().into()))
                    }
                }
                d.deserialize_str(V(std::marker::PhantomData))
            }
        }
        #[derive(Deserialize)]
        struct Root<'a> {
            #[serde(default, borrow)]
            root_id: Option<Str<'a>>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Replies;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of post id to post")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Replies, A::Error> {
                let mut out = Vec::new();
                while let Some((id, post)) = m.next_entry::<Str<'de>, Root<'de>>()? {
                    if let Some(root) = post.root_id.filter(|r| !r.0.is_empty()) {
                        out.push((id.0.into_owned(), root.0.into_owned()));
                    }
                }
                Ok(Replies(out))
            }
        }
        d.deserialize_map(V)
    }
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

/// The API of one server, through pooled clients (one per configured source address).
#[derive(Debug)]
pub struct Api {
    /// `{url}/api/v4`, parsed once: a request's URL is this with its path and query replaced,
    /// so the host is not parsed (IDNA included) again for every request.
    base: reqwest::Url,
    clients: Vec<reqwest::Client>,
}

impl Api {
    /// `url` is the server's base URL without `/api/v4`.
    pub fn new(url: &str, timeout: Duration, local_addrs: &[IpAddr]) -> Result<Self, ApiError> {
        let build = |local: Option<IpAddr>| {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                // Keep connections for reuse (the pool is shared by all users of this process),
                // but only as many idle ones as steady traffic needs: each idle connection costs
                // a file descriptor on both ends and buffers in the agent, and after a burst
                // (the ramp-up's logins) thousands would otherwise linger.
                .pool_max_idle_per_host(256)
                .pool_idle_timeout(Duration::from_secs(60))
                .local_address(local)
                .user_agent(concat!("loadtest-agent/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ApiError::protocol("-", "-", format!("cannot build HTTP client: {e}")))
        };
        let clients = if local_addrs.is_empty() {
            vec![build(None)?]
        } else {
            local_addrs
                .iter()
                .map(|a| build(Some(*a)))
                .collect::<Result<_, _>>()?
        };
        let base = format!("{}/api/v4", url.trim_end_matches('/'));
        let base = reqwest::Url::parse(&base)
            .map_err(|e| ApiError::protocol("-", "-", format!("target.url {url:?}: {e}")))?;
        Ok(Self { base, clients })
    }

    /// Sends one request and returns the response headers and body of a 2xx answer.
    /// The URL of `path` (and its `?query`) under the API base.
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let (p, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        url.set_path(&format!("{}{p}", self.base.path()));
        url.set_query(query);
        url
    }

    pub async fn send(
        &self,
        slot: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), ApiError> {
        let err = |class, status, message: String| ApiError {
            class,
            status,
            method: method.to_string(),
            path: path.to_string(),
            message,
        };
        let client = &self.clients[slot % self.clients.len()];
        let mut req = client.request(method.clone(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| err(classify(&e), None, e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| err(classify(&e), Some(status), e.to_string()))?;
        if !(200..300).contains(&status) {
            // Mattermost error bodies carry an id and a message; keep them for the log.
            let detail = serde_json::from_slice::<Value>(&bytes)
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
        Ok((headers, bytes))
    }

    /// Sends a request and decodes a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        slot: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let (_, bytes) = self.send(slot, method.clone(), path, token, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::protocol(method.as_str(), path, format!("unexpected answer: {e}"))
        })
    }

    /// Sends a request whose answer body does not matter (but must be a 2xx).
    pub async fn call_ignore(
        &self,
        slot: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(), ApiError> {
        self.send(slot, method, path, token, body).await.map(|_| ())
    }

    /// `POST /users/login`; the session token comes back in the `Token` header.
    pub async fn login(
        &self,
        slot: usize,
        login_id: &str,
        password: &str,
    ) -> Result<Login, ApiError> {
        let body = json!({"login_id": login_id, "password": password});
        let (headers, bytes) = self
            .send(slot, Method::POST, "/users/login", None, Some(&body))
            .await?;
        let protocol = |m: String| ApiError::protocol("POST", "/users/login", m);
        let token = headers
            .get("Token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol("login answer has no Token header".into()))?
            .to_string();
        let user: User = serde_json::from_slice(&bytes)
            .map_err(|e| protocol(format!("unexpected login answer: {e}")))?;
        Ok(Login { user, token })
    }

    pub async fn create_user(
        &self,
        slot: usize,
        token: Option<&str>,
        username: &str,
        password: &str,
    ) -> Result<User, ApiError> {
        let body = json!({
            "username": username,
            "password": password,
            "email": format!("{username}@loadtest.example.com"),
        });
        self.call(slot, Method::POST, "/users", token, Some(&body))
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
            Method::GET,
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
            Method::GET,
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
        let body = json!({"name": name, "display_name": name, "type": "O"});
        self.call(slot, Method::POST, "/teams", Some(token), Some(&body))
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
        self.call(slot, Method::GET, &path, Some(token), None).await
    }

    pub async fn create_channel(
        &self,
        slot: usize,
        token: &str,
        team_id: &str,
        name: &str,
        private: bool,
    ) -> Result<Channel, ApiError> {
        let body = json!({
            "team_id": team_id,
            "name": name,
            "display_name": name,
            "type": if private { "P" } else { "O" },
        });
        self.call(slot, Method::POST, "/channels", Some(token), Some(&body))
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
        self.call(slot, Method::GET, &path, Some(token), None).await
    }

    pub async fn add_team_member(
        &self,
        slot: usize,
        token: &str,
        team_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        let body = json!({"team_id": team_id, "user_id": user_id});
        let path = format!("/teams/{team_id}/members");
        self.call_ignore(slot, Method::POST, &path, Some(token), Some(&body))
            .await
    }

    pub async fn add_channel_member(
        &self,
        slot: usize,
        token: &str,
        channel_id: &str,
        user_id: &str,
    ) -> Result<(), ApiError> {
        let body = json!({"user_id": user_id});
        let path = format!("/channels/{channel_id}/members");
        self.call_ignore(slot, Method::POST, &path, Some(token), Some(&body))
            .await
    }

    /// `GET /channels/{id}/posts`, newest first; `before` pages back from a post id.
    pub async fn channel_posts(
        &self,
        slot: usize,
        token: &str,
        channel_id: &str,
        before: Option<&str>,
        per_page: u32,
    ) -> Result<PostList, ApiError> {
        let mut path = format!("/channels/{channel_id}/posts?page=0&per_page={per_page}");
        if let Some(b) = before {
            path.push_str("&before=");
            path.push_str(b);
        }
        self.call(slot, Method::GET, &path, Some(token), None).await
    }

    pub async fn create_post(
        &self,
        slot: usize,
        token: &str,
        post: &NewPost<'_>,
    ) -> Result<Post, ApiError> {
        let body = serde_json::to_value(post)
            .map_err(|e| ApiError::protocol("POST", "/posts", e.to_string()))?;
        self.call(slot, Method::POST, "/posts", Some(token), Some(&body))
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
        let body = json!({"channel_id": channel_id, "prev_channel_id": prev});
        let path = format!("/channels/members/{user_id}/view");
        self.call_ignore(slot, Method::POST, &path, Some(token), Some(&body))
            .await
    }

    /// Ends the session: the server revokes the token and closes the session's WebSockets.
    pub async fn logout(&self, slot: usize, token: &str) -> Result<(), ApiError> {
        self.call_ignore(slot, Method::POST, "/users/logout", Some(token), None)
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
        let path = format!("/users/{user_id}/teams/{team_id}/channels/members");
        self.call_ignore(slot, Method::GET, &path, Some(token), None)
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
        let body =
            json!({"user_id": user_id, "post_id": post_id, "emoji_name": emoji, "create_at": 0});
        self.call_ignore(slot, Method::POST, "/reactions", Some(token), Some(&body))
            .await
    }

    pub async fn update_status(
        &self,
        slot: usize,
        token: &str,
        user_id: &str,
        status: &str,
    ) -> Result<(), ApiError> {
        let body = json!({"user_id": user_id, "status": status});
        let path = format!("/users/{user_id}/status");
        self.call_ignore(slot, Method::PUT, &path, Some(token), Some(&body))
            .await
    }
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

    /// A page as the server sends it: only ids and the replies' roots are kept, whatever else a
    /// post carries (nested objects, escapes in strings and ids, fields in any order).
    #[test]
    fn a_posts_page_keeps_the_order_and_the_replies_roots() {
        let page = r#"{"order":["p3","p2","p1"],"next_post_id":"","posts":{
            "p1":{"id":"p1","message":"hello \"there\"","props":{"lt_id":"a-1","n":[1,2]},"root_id":""},
            "p2":{"root_id":"p1","id":"p2","metadata":{"embeds":[]},"message":"re"},
            "p\u0033":{"id":"p3","root_id":"p\u0031","message":"escaped ids"}
        },"has_next":false}"#;
        let list: PostList = serde_json::from_str(page).expect("decodes");
        assert_eq!(list.order, ["p3", "p2", "p1"]);
        assert_eq!(list.root_of("p2"), "p1");
        assert_eq!(list.root_of("p3"), "p1");
        assert_eq!(list.root_of("p1"), "");
        assert_eq!(list.replies.0.len(), 2, "only replies are kept");
        let empty: PostList = serde_json::from_str(r#"{"order":[],"posts":{}}"#).expect("empty");
        assert!(empty.order.is_empty() && empty.replies.0.is_empty());
        let err =
            serde_json::from_str::<PostList>(r#"{"order":[],"posts":[]}"#).expect_err("not a map");
        assert!(
            err.to_string().contains("a map of post id to post"),
            "{err}"
        );
    }

    #[test]
    fn request_urls_keep_the_base_path_and_take_the_query() {
        let api =
            Api::new("http://127.0.0.1:8065/prefix/", Duration::from_secs(1), &[]).expect("api");
        assert_eq!(
            api.url("/channels/c1/posts?page=0&per_page=30").as_str(),
            "http://127.0.0.1:8065/prefix/api/v4/channels/c1/posts?page=0&per_page=30"
        );
        assert_eq!(
            api.url("/users/me").as_str(),
            "http://127.0.0.1:8065/prefix/api/v4/users/me"
        );
        assert!(Api::new("not a url", Duration::from_secs(1), &[]).is_err());
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
        )
        .expect("client");
        let e = api.login(0, "u", "p").await.expect_err("nobody listens");
        assert_eq!(e.class, ErrorClass::Connect, "{e}");
    }
}
