//! Presence and typing: `/users/{id}/status`, `/users/status/ids`, `/users/{id}/typing`, and the
//! health check `/system/ping`. Presence itself is tracked by the hub from WebSocket sockets.

use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use super::{
    check_user_ids, load_channel, ok, require_member, status_ok, ApiResult, AppState, Body,
    Session, Shared, P,
};
use crate::error::ApiError;
use crate::event::{Broadcast, Event, EventKind};

pub async fn ping() -> ApiResult {
    status_ok()
}

fn status_json(st: &AppState, user_id: &str) -> serde_json::Value {
    let (status, manual) = st.hub.status(user_id);
    json!({
        "user_id": user_id,
        "status": status,
        "manual": manual,
        "last_activity_at": crate::ids::now_ms(),
        "dnd_end_time": 0,
    })
}

pub async fn get_status(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let id = s.resolve(&id)?;
    ok(&status_json(&st, &id))
}

#[derive(Deserialize)]
pub struct SetStatus {
    status: String,
}

pub async fn put_status(
    State(st): State<Shared>,
    s: Session,
    P(id): P<String>,
    Body(b): Body<SetStatus>,
) -> ApiResult {
    s.require_self(&id)?;
    if !["online", "away", "dnd", "offline"].contains(&b.status.as_str()) {
        return Err(ApiError::invalid_param("status"));
    }
    st.change(crate::bus::Message::ManualStatus {
        user_id: s.user_id.to_string(),
        status: b.status,
    });
    ok(&status_json(&st, &s.user_id))
}

pub async fn statuses_by_ids(
    State(st): State<Shared>,
    _s: Session,
    Body(ids): Body<Vec<String>>,
) -> ApiResult {
    check_user_ids(&ids)?;
    ok(&ids
        .iter()
        .map(|id| status_json(&st, id))
        .collect::<Vec<_>>())
}

#[derive(Deserialize)]
pub struct Typing {
    channel_id: String,
    #[serde(default)]
    parent_id: String,
}

/// Broadcasts `typing` to the channel's other members (never back to the typist).
pub fn publish_typing(st: &AppState, user_id: &str, channel_id: &str, parent_id: &str) {
    let ev = Event::new(
        EventKind::Typing,
        json!({"parent_id": parent_id, "user_id": user_id}),
        Broadcast {
            omit_users: Some(user_id),
            channel_id,
            ..Broadcast::default()
        },
    );
    st.broadcast_channel(channel_id, &ev, Some(user_id), None);
}

pub async fn typing(
    State(st): State<Shared>,
    s: Session,
    P(id): P<String>,
    Body(t): Body<Typing>,
) -> ApiResult {
    s.require_self(&id)?;
    let ch = load_channel(&st, &t.channel_id).await?;
    require_member(&st, &ch.id, &s.user_id)?;
    publish_typing(&st, &s.user_id, &ch.id, &t.parent_id);
    status_ok()
}
