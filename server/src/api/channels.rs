//! `/channels` and per-user channel views: creation, lookup, membership and unread tracking.
//! Every membership change updates the hub's in-memory index (and, through the bus, the other
//! instances') right after it commits.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{
    check_id, json, load_channel, model, ok, require_member, require_read, require_team_member,
    status_ok, ApiResult, Body, NewMember, Paging, Session, Shared, P, Q,
};
use crate::bus::Message;
use crate::error::ApiError;
use crate::event::{Broadcast, Event, EventKind};
use crate::ids::{new_id, now_ms};
use crate::store::ChannelRow;

#[derive(Deserialize)]
pub struct NewChannel {
    team_id: String,
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    header: String,
}

pub async fn create_channel(
    State(st): State<Shared>,
    s: Session,
    Body(c): Body<NewChannel>,
) -> ApiResult {
    check_id("team_id", &c.team_id)?;
    if !super::teams::valid_name(&c.name) {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.name.app_error",
            "Channel name must be 1-64 lowercase letters, digits, '-' or '_'.",
        ));
    }
    let kind = match c.kind.as_str() {
        "" | "O" => "O",
        "P" => "P",
        _ => return Err(ApiError::invalid_param("type")),
    };
    if c.display_name.chars().count() > 64
        || c.purpose.chars().count() > 250
        || c.header.chars().count() > 1024
    {
        return Err(ApiError::invalid_param("display_name/purpose/header"));
    }
    if st.store.team_by_id(&c.team_id).await?.is_none() {
        return Err(ApiError::not_found("Team"));
    }
    require_team_member(&st, &c.team_id, &s.user_id)?;
    let now = now_ms();
    let row = ChannelRow {
        id: new_id(),
        team_id: c.team_id,
        display_name: if c.display_name.is_empty() {
            c.name.clone()
        } else {
            c.display_name
        },
        name: c.name,
        kind: kind.into(),
        purpose: c.purpose,
        header: c.header,
        creator_id: s.user_id.to_string(),
        create_at: now,
        update_at: now,
        delete_at: 0,
        last_post_at: now,
        total_msg_count: 0,
    };
    st.store.create_channel(&row).await?;
    st.change(Message::ChannelCreated {
        channel_id: row.id.clone(),
        team_id: row.team_id.clone(),
        kind: row.kind.clone(),
    });
    st.change(Message::ChannelMemberAdded {
        channel_id: row.id.clone(),
        user_id: s.user_id.to_string(),
    });
    json(StatusCode::CREATED, &model::channel(&row))
}

pub async fn get_channel(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let ch = load_channel(&st, &id).await?;
    require_read(&st, &ch, &s.user_id)?;
    ok(&model::channel(&ch))
}

pub async fn team_channels(
    State(st): State<Shared>,
    s: Session,
    P(team_id): P<String>,
    Q(paging): Q<Paging>,
) -> ApiResult {
    check_id("team_id", &team_id)?;
    require_team_member(&st, &team_id, &s.user_id)?;
    let (page, per_page) = paging.get();
    let rows = st.store.public_channels(&team_id, page, per_page).await?;
    ok(&rows.iter().map(model::channel).collect::<Vec<_>>())
}

pub async fn channel_by_name(
    State(st): State<Shared>,
    s: Session,
    P((team_id, name)): P<(String, String)>,
) -> ApiResult {
    check_id("team_id", &team_id)?;
    require_team_member(&st, &team_id, &s.user_id)?;
    let ch = st
        .store
        .channel_by_name(&team_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("Channel"))?;
    require_read(&st, &ch, &s.user_id)?;
    ok(&model::channel(&ch))
}

/// Channel members add team members; a team member may join a public channel themselves.
pub async fn add_member(
    State(st): State<Shared>,
    s: Session,
    P(channel_id): P<String>,
    Body(m): Body<NewMember>,
) -> ApiResult {
    let ch = load_channel(&st, &channel_id).await?;
    let target = s.resolve(&m.user_id)?;
    let is_member = st.hub.is_channel_member(&ch.id, &s.user_id);
    let self_join =
        target == *s.user_id && ch.kind == "O" && st.hub.is_team_member(&ch.team_id, &s.user_id);
    if !is_member && !self_join {
        return Err(ApiError::forbidden());
    }
    if !st.hub.is_team_member(&ch.team_id, &target) {
        return Err(ApiError::Forbidden(
            "api.channel.add_user.to.channel.failed.deleted.app_error",
            "The user is not a member of the channel's team.".into(),
        ));
    }
    let member = st
        .store
        .add_channel_member(&ch.id, &target, now_ms())
        .await?;
    st.change(Message::ChannelMemberAdded {
        channel_id: ch.id.clone(),
        user_id: target,
    });
    json(StatusCode::CREATED, &model::channel_member(&member))
}

pub async fn members(
    State(st): State<Shared>,
    s: Session,
    P(channel_id): P<String>,
    Q(paging): Q<Paging>,
) -> ApiResult {
    let ch = load_channel(&st, &channel_id).await?;
    require_read(&st, &ch, &s.user_id)?;
    let (page, per_page) = paging.get();
    let rows = st.store.channel_members(&ch.id, page, per_page).await?;
    ok(&rows.iter().map(model::channel_member).collect::<Vec<_>>())
}

pub async fn get_member(
    State(st): State<Shared>,
    s: Session,
    P((channel_id, user_id)): P<(String, String)>,
) -> ApiResult {
    let ch = load_channel(&st, &channel_id).await?;
    let target = s.resolve(&user_id)?;
    require_read(&st, &ch, &s.user_id)?;
    let m = st
        .store
        .channel_member(&ch.id, &target)
        .await?
        .ok_or_else(|| ApiError::not_found("Channel member"))?;
    ok(&model::channel_member(&m))
}

/// A member may remove itself or (being a member) another member.
pub async fn remove_member(
    State(st): State<Shared>,
    s: Session,
    P((channel_id, user_id)): P<(String, String)>,
) -> ApiResult {
    let ch = load_channel(&st, &channel_id).await?;
    let target = s.resolve(&user_id)?;
    require_member(&st, &ch.id, &s.user_id)?;
    if !st.store.remove_channel_member(&ch.id, &target).await? {
        return Err(ApiError::not_found("Channel member"));
    }
    st.change(Message::ChannelMemberRemoved {
        channel_id: ch.id.clone(),
        user_id: target,
    });
    status_ok()
}

pub async fn user_channels(
    State(st): State<Shared>,
    s: Session,
    P((user_id, team_id)): P<(String, String)>,
) -> ApiResult {
    s.require_self(&user_id)?;
    check_id("team_id", &team_id)?;
    require_team_member(&st, &team_id, &s.user_id)?;
    let rows = st.store.channels_for_user(&s.user_id, &team_id).await?;
    ok(&rows.iter().map(model::channel).collect::<Vec<_>>())
}

pub async fn user_channel_members(
    State(st): State<Shared>,
    s: Session,
    P((user_id, team_id)): P<(String, String)>,
) -> ApiResult {
    s.require_self(&user_id)?;
    check_id("team_id", &team_id)?;
    require_team_member(&st, &team_id, &s.user_id)?;
    let rows = st
        .store
        .channel_members_for_user(&s.user_id, &team_id)
        .await?;
    ok(&rows.iter().map(model::channel_member).collect::<Vec<_>>())
}

#[derive(Deserialize)]
pub struct View {
    #[serde(default)]
    channel_id: String,
}

/// Marks a channel read and tells the user's other sessions with `channel_viewed`.
pub async fn view(
    State(st): State<Shared>,
    s: Session,
    P(user_id): P<String>,
    Body(v): Body<View>,
) -> ApiResult {
    s.require_self(&user_id)?;
    let mut times = serde_json::Map::new();
    if !v.channel_id.is_empty() {
        let ch = load_channel(&st, &v.channel_id).await?;
        require_member(&st, &ch.id, &s.user_id)?;
        let now = now_ms();
        st.store.view_channel(&ch.id, &s.user_id, now).await?;
        times.insert(ch.id.clone(), now.into());
        let ev = Event::new(
            EventKind::ChannelViewed,
            serde_json::json!({"channel_id": ch.id}),
            Broadcast {
                user_id: &s.user_id,
                ..Broadcast::default()
            },
        );
        st.send_user(&s.user_id, &ev);
    }
    ok(&serde_json::json!({"status": "OK", "last_viewed_at_times": times}))
}

pub async fn unread(
    State(st): State<Shared>,
    s: Session,
    P((user_id, channel_id)): P<(String, String)>,
) -> ApiResult {
    s.require_self(&user_id)?;
    let ch = load_channel(&st, &channel_id).await?;
    let m = st
        .store
        .channel_member(&ch.id, &s.user_id)
        .await?
        .ok_or_else(ApiError::forbidden)?;
    let unread = (ch.total_msg_count - m.msg_count).max(0);
    ok(&serde_json::json!({
        "team_id": ch.team_id,
        "channel_id": ch.id,
        "msg_count": unread,
        "msg_count_root": unread,
        "mention_count": m.mention_count,
        "mention_count_root": m.mention_count,
        "urgent_mention_count": 0,
        "last_viewed_at": m.last_viewed_at,
        "notify_props": {"mark_unread": "all"},
    }))
}
