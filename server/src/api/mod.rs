//! The REST API under `/api/v4`: router, shared state, request extractors and the middleware that
//! records metrics and guarantees every error is a Mattermost error body.
//!
//! Handlers live in one module per resource. They authorize with the in-memory membership index
//! of the [`Hub`] (the same index fan-out uses) and read or write through the [`Store`]. After a
//! commit they change membership and fan events out through [`AppState`]'s helpers, which also
//! tell the other instances when there is a [`bus`](crate::bus).

pub mod channels;
pub mod edge;
use crate::model;
pub mod posts;
pub mod status;
pub mod teams;
pub mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{token_from_request, Auth};
use crate::bus::{Message, Publisher, Target};
use crate::config::Config;
use crate::error::{error_response, ApiError, JSON};
use crate::event::Event;
use crate::hub::Hub;
use crate::ids::is_valid_id;
use crate::metrics::Metrics;
use crate::store::{ChannelRow, Store};

/// Everything handlers share.
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub auth: Auth,
    pub hub: Arc<Hub>,
    /// Relays changes and events to other instances (PostgreSQL only).
    pub bus: Option<Publisher>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down; WebSocket tasks watch it to send their close frame.
    pub shutdown: CancellationToken,
    /// WebSocket tasks, awaited during shutdown.
    pub ws_tasks: TaskTracker,
    /// The runtime every WebSocket's task runs on, apart from the one serving HTTP requests
    /// ([`crate::run`] says why).
    pub sockets: tokio::runtime::Handle,
    /// The runtime serving HTTP requests, the bus and metrics: a socket's task runs its database
    /// work here, so the store's connections belong to this runtime alone.
    pub api: tokio::runtime::Handle,
    /// WebSockets admitted and not yet ended, for `limits.max_websockets`.
    pub ws_admitted: std::sync::atomic::AtomicUsize,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// Applies a committed membership (or manual status) change here and on other instances.
    pub fn change(&self, m: Message) {
        m.apply_to(&self.hub);
        if let Some(b) = &self.bus {
            b.publish(&m);
        }
    }

    /// Fans `ev` out to a channel's members here and on other instances. `post_id` names the
    /// post of a post event, which lets the bus send a reference when the event is too large.
    pub fn broadcast_channel(
        &self,
        channel_id: &str,
        ev: &Event,
        omit: Option<&str>,
        post_id: Option<&str>,
    ) {
        // The other instances first: queueing for the bus is quick, this instance's fan-out not.
        if let Some(b) = &self.bus {
            b.publish_event(Target::Channel(channel_id.to_string()), omit, ev, post_id);
        }
        self.hub.broadcast_channel(channel_id, ev, omit);
    }

    /// Sends `ev` to every connection of a user, here and on other instances.
    pub fn send_user(&self, user_id: &str, ev: &Event) {
        if let Some(b) = &self.bus {
            b.publish_event(Target::User(user_id.to_string()), None, ev, None);
        }
        self.hub.send_user(user_id, ev);
    }
}

/// Handler result: a JSON response or an [`ApiError`].
pub type ApiResult = Result<Response, ApiError>;

/// A JSON response with the exact `Content-Type: application/json`.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> ApiResult {
    let text = serde_json::to_string(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    Ok(resp)
}

pub fn ok<T: serde::Serialize>(body: &T) -> ApiResult {
    json(StatusCode::OK, body)
}

pub fn status_ok() -> ApiResult {
    ok(&serde_json::json!({"status": "OK"}))
}

/// The authenticated caller.
pub struct Session {
    pub user_id: Arc<str>,
    pub token: String,
}

impl Session {
    /// Resolves a `{user_id}` path segment (`me` allowed) and requires it to be the caller.
    pub fn require_self(&self, id: &str) -> Result<(), ApiError> {
        let id = self.resolve(id)?;
        if id != *self.user_id {
            return Err(ApiError::forbidden());
        }
        Ok(())
    }

    /// `me` → the caller's id; anything else must be a well-formed id.
    pub fn resolve(&self, id: &str) -> Result<String, ApiError> {
        if id == "me" {
            return Ok(self.user_id.to_string());
        }
        check_id("user_id", id)?;
        Ok(id.to_string())
    }
}

impl FromRequestParts<Shared> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = token_from_request(&parts.headers, parts.uri.query())
            .ok_or_else(ApiError::unauthorized)?;
        let user_id = state
            .auth
            .user_for_token(&token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Session { user_id, token })
    }
}

/// A JSON body; malformed JSON is 400 and an oversized body 413, both as Mattermost errors.
/// The `Content-Type` is not checked: Mattermost does not either, and some clients omit it.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(
                        "api.context.request_body_too_large.app_error",
                        "The request body is too large.".into(),
                    )
                } else {
                    ApiError::bad_request("api.context.invalid_body_param.app_error", e.body_text())
                }
            })?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError::bad_request(
                "api.context.invalid_body_param.app_error",
                format!("Invalid or missing body: {e}"),
            )
        })
    }
}

/// Path parameters with a Mattermost error on rejection.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e: PathRejection| {
                ApiError::bad_request("api.context.invalid_url_param.app_error", e.body_text())
            })
    }
}

/// Query parameters with a Mattermost error on rejection.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request("api.context.invalid_url_param.app_error", e.body_text())
            })
    }
}

/// Body of `POST /teams/{id}/members` and `POST /channels/{id}/members`.
#[derive(serde::Deserialize)]
pub struct NewMember {
    pub user_id: String,
}

/// `?page=&per_page=` with Mattermost's defaults (0, 60) and cap (200).
#[derive(serde::Deserialize, Default)]
pub struct Paging {
    pub page: Option<i64>,
    pub per_page: Option<i64>,
}

impl Paging {
    pub fn get(&self) -> (i64, i64) {
        // Clamped so `page * per_page` can never overflow, whatever the client sends.
        (
            self.page.unwrap_or(0).clamp(0, 1_000_000),
            self.per_page.unwrap_or(60).clamp(1, 200),
        )
    }
}

/// 400 unless `value` is a well-formed id.
pub fn check_id(name: &str, value: &str) -> Result<(), ApiError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError::invalid_param(name))
    }
}

/// 400 unless `ids` (a `user_ids` body) holds at most 1000 well-formed ids.
pub fn check_user_ids(ids: &[String]) -> Result<(), ApiError> {
    if ids.len() > 1000 {
        return Err(ApiError::invalid_param("user_ids"));
    }
    ids.iter().try_for_each(|id| check_id("user_ids", id))
}

/// Loads a channel or 404.
pub async fn load_channel(state: &AppState, id: &str) -> Result<ChannelRow, ApiError> {
    check_id("channel_id", id)?;
    state
        .store
        .channel_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Channel"))
}

/// Members read a channel; team members also read its public channels.
pub fn require_read(state: &AppState, ch: &ChannelRow, user_id: &str) -> Result<(), ApiError> {
    if state.hub.is_channel_member(&ch.id, user_id)
        || (ch.kind == "O" && state.hub.is_team_member(&ch.team_id, user_id))
    {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Team views and channel creation require team membership.
pub fn require_team_member(state: &AppState, team_id: &str, user_id: &str) -> Result<(), ApiError> {
    if state.hub.is_team_member(team_id, user_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Posting, reacting and typing require channel membership.
pub fn require_member(state: &AppState, channel_id: &str, user_id: &str) -> Result<(), ApiError> {
    if state.hub.is_channel_member(channel_id, user_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Marker put in response extensions by the route layer so the outer layer can label metrics
/// with the route template (e.g. `/api/v4/posts/{post_id}`) rather than the raw path.
#[derive(Clone)]
struct RouteLabel(Arc<str>);

async fn label_route(req: Request, next: Next) -> Response {
    let label = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| Arc::<str>::from(m.as_str()));
    let mut resp = next.run(req).await;
    if let Some(l) = label {
        resp.extensions_mut().insert(RouteLabel(l));
    }
    resp
}

async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let resp = normalize_error(resp);
    let handler = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|l| l.0.clone())
        .unwrap_or_else(|| Arc::from("unmatched"));
    let status = resp.status();
    let code = status.as_str();
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[&handler, &method, code])
        .inc();
    if status.is_client_error() || status.is_server_error() {
        m.http_errors.with_label_values(&[&handler, code]).inc();
    }
    m.http_duration
        .with_label_values(&[&handler])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// Rewrites error responses produced outside our handlers (axum's 405, a body-limit 413, a
/// failed WebSocket upgrade…) into the Mattermost error body.
fn normalize_error(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if resp.headers().get(header::CONTENT_TYPE) == Some(&JSON) {
        return resp;
    }
    let (id, message) = match status {
        StatusCode::NOT_FOUND => (
            "api.context.404.app_error",
            "Sorry, we could not find the page.",
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "api.context.method_not_allowed.app_error",
            "Method not allowed.",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "api.context.request_body_too_large.app_error",
            "The request body is too large.",
        ),
        StatusCode::UNAUTHORIZED => (
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.",
        ),
        s if s.is_server_error() => ("app.internal.error", "An internal error occurred."),
        _ => ("api.context.invalid_param.app_error", "Invalid request."),
    };
    let mut new = error_response(status, id, message, "");
    if let Some(l) = resp.extensions().get::<RouteLabel>() {
        new.extensions_mut().insert(l.clone());
    }
    new
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "api.context.404.app_error",
        "Sorry, we could not find the page.",
        "",
    )
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "api.context.method_not_allowed.app_error",
        "Method not allowed.",
        "",
    )
}

/// The whole HTTP surface: REST under `/api/v4` and the WebSocket gateway.
pub fn router(state: Shared) -> Router {
    use channels as c;
    use posts as p;
    use status as s;
    use teams as t;
    use users as u;
    let api = Router::new()
        .route("/system/ping", get(s::ping))
        .route("/users", post(u::create_user).get(u::list_users))
        .route("/users/login", post(u::login))
        .route("/users/logout", post(u::logout))
        .route("/users/ids", post(u::users_by_ids))
        .route("/users/status/ids", post(s::statuses_by_ids))
        .route("/users/username/{username}", get(u::user_by_username))
        .route("/users/{user_id}", get(u::get_user))
        .route("/users/{user_id}/teams", get(t::teams_for_user))
        .route(
            "/users/{user_id}/teams/{team_id}/channels",
            get(c::user_channels),
        )
        .route(
            "/users/{user_id}/teams/{team_id}/channels/members",
            get(c::user_channel_members),
        )
        .route(
            "/users/{user_id}/channels/{channel_id}/unread",
            get(c::unread),
        )
        .route(
            "/users/{user_id}/status",
            get(s::get_status).put(s::put_status),
        )
        .route("/users/{user_id}/typing", post(s::typing))
        .route(
            "/users/{user_id}/posts/{post_id}/reactions/{emoji_name}",
            delete(p::delete_reaction),
        )
        .route("/teams", post(t::create_team))
        .route("/teams/name/{name}", get(t::team_by_name))
        .route("/teams/{team_id}", get(t::get_team))
        .route(
            "/teams/{team_id}/members",
            post(t::add_member).get(t::members),
        )
        .route("/teams/{team_id}/channels", get(c::team_channels))
        .route(
            "/teams/{team_id}/channels/name/{name}",
            get(c::channel_by_name),
        )
        .route("/channels", post(c::create_channel))
        .route("/channels/members/{user_id}/view", post(c::view))
        .route("/channels/{channel_id}", get(c::get_channel))
        .route(
            "/channels/{channel_id}/members",
            post(c::add_member).get(c::members),
        )
        .route(
            "/channels/{channel_id}/members/{user_id}",
            delete(c::remove_member).get(c::get_member),
        )
        .route("/channels/{channel_id}/posts", get(p::channel_posts))
        .route("/posts", post(p::create_post))
        .route("/posts/{post_id}", get(p::get_post).delete(p::delete_post))
        .route("/posts/{post_id}/patch", put(p::patch_post))
        .route("/posts/{post_id}/thread", get(p::thread))
        .route("/posts/{post_id}/reactions", get(p::reactions))
        .route("/reactions", post(p::save_reaction))
        .route("/websocket", get(crate::ws::upgrade));
    Router::new()
        .nest("/api/v4", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn(label_route))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn(edge::guard))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
