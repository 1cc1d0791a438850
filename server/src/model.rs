//! Wire shapes: store rows rendered with Mattermost's field names and the constant fields real
//! clients expect to find (even when this server has nothing to put in them).

use serde::Serialize;
use serde_json::{json, Value};

use crate::store::{
    ChannelMemberRow, ChannelRow, PostRow, ReactionRow, TeamMemberRow, TeamRow, UserRow,
};

pub fn user(u: &UserRow) -> Value {
    json!({
        "id": u.id,
        "create_at": u.create_at,
        "update_at": u.update_at,
        "delete_at": u.delete_at,
        "username": u.username,
        "auth_data": "",
        "auth_service": "",
        "email": u.email,
        "email_verified": true,
        "nickname": u.nickname,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "position": "",
        "roles": u.roles,
        "locale": "en",
        "timezone": {"automaticTimezone": "", "manualTimezone": "", "useAutomaticTimezone": "true"},
        "props": {},
        "notify_props": {},
        "last_password_update": u.create_at,
        "is_bot": false,
        "mfa_active": false,
    })
}

pub fn team(t: &TeamRow) -> Value {
    json!({
        "id": t.id,
        "create_at": t.create_at,
        "update_at": t.update_at,
        "delete_at": t.delete_at,
        "display_name": t.display_name,
        "name": t.name,
        "description": t.description,
        "email": "",
        "type": t.kind,
        "company_name": "",
        "allowed_domains": "",
        "invite_id": "",
        "allow_open_invite": t.kind == "O",
        "scheme_id": null,
        "group_constrained": null,
        "policy_id": null,
    })
}

pub fn team_member(m: &TeamMemberRow) -> Value {
    json!({
        "team_id": m.team_id,
        "user_id": m.user_id,
        "roles": m.roles,
        "delete_at": 0,
        "scheme_guest": false,
        "scheme_user": true,
        "scheme_admin": m.roles.contains("team_admin"),
        "explicit_roles": "",
        "create_at": m.create_at,
    })
}

pub fn channel(c: &ChannelRow) -> Value {
    json!({
        "id": c.id,
        "create_at": c.create_at,
        "update_at": c.update_at,
        "delete_at": c.delete_at,
        "team_id": c.team_id,
        "type": c.kind,
        "display_name": c.display_name,
        "name": c.name,
        "header": c.header,
        "purpose": c.purpose,
        "last_post_at": c.last_post_at,
        "last_root_post_at": c.last_post_at,
        "total_msg_count": c.total_msg_count,
        "total_msg_count_root": c.total_msg_count,
        "extra_update_at": 0,
        "creator_id": c.creator_id,
        "scheme_id": null,
        "group_constrained": null,
        "shared": null,
        "policy_id": null,
    })
}

pub fn channel_member(m: &ChannelMemberRow) -> Value {
    json!({
        "channel_id": m.channel_id,
        "user_id": m.user_id,
        "roles": m.roles,
        "last_viewed_at": m.last_viewed_at,
        "msg_count": m.msg_count,
        "msg_count_root": m.msg_count,
        "mention_count": m.mention_count,
        "mention_count_root": m.mention_count,
        "urgent_mention_count": 0,
        "notify_props": {"desktop": "default", "email": "default", "mark_unread": "all", "push": "default", "ignore_channel_mentions": "default"},
        "last_update_at": m.last_update_at,
        "scheme_guest": false,
        "scheme_user": true,
        "scheme_admin": m.roles.contains("channel_admin"),
        "explicit_roles": "",
    })
}

/// A post. A struct rather than `json!` because it is built for every `posted` event and page.
#[derive(Serialize)]
pub struct Post<'a> {
    pub id: &'a str,
    pub create_at: i64,
    pub update_at: i64,
    pub edit_at: i64,
    pub delete_at: i64,
    pub is_pinned: bool,
    pub user_id: &'a str,
    pub channel_id: &'a str,
    pub root_id: &'a str,
    pub original_id: &'a str,
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub props: Value,
    pub hashtags: &'a str,
    pub pending_post_id: &'a str,
    pub reply_count: i64,
    pub last_reply_at: i64,
    pub participants: Option<()>,
    pub metadata: Value,
}

pub fn post<'a>(p: &'a PostRow, pending_post_id: &'a str) -> Post<'a> {
    Post {
        id: &p.id,
        create_at: p.create_at,
        update_at: p.update_at,
        edit_at: p.edit_at,
        delete_at: p.delete_at,
        is_pinned: p.is_pinned != 0,
        user_id: &p.user_id,
        channel_id: &p.channel_id,
        root_id: &p.root_id,
        original_id: "",
        message: if p.delete_at != 0 { "" } else { &p.message },
        kind: &p.kind,
        props: serde_json::from_str(&p.props).unwrap_or_else(|_| json!({})),
        hashtags: "",
        pending_post_id,
        reply_count: p.reply_count,
        last_reply_at: 0,
        participants: None,
        metadata: json!({}),
    }
}

/// A `PostList`: `order` newest first and `posts` keyed by id.
pub fn post_list(rows: &[PostRow]) -> Value {
    let order: Vec<&str> = rows.iter().map(|p| p.id.as_str()).collect();
    let mut posts = serde_json::Map::with_capacity(rows.len());
    for r in rows {
        posts.insert(
            r.id.clone(),
            serde_json::to_value(post(r, "")).unwrap_or(Value::Null),
        );
    }
    json!({
        "order": order,
        "posts": posts,
        "next_post_id": "",
        "prev_post_id": "",
        "has_next": false,
        "first_inaccessible_post_time": 0,
    })
}

pub fn reaction(r: &ReactionRow) -> Value {
    json!({
        "user_id": r.user_id,
        "post_id": r.post_id,
        "emoji_name": r.emoji_name,
        "create_at": r.create_at,
        "update_at": r.create_at,
        "delete_at": 0,
        "remote_id": "",
        "channel_id": "",
    })
}
