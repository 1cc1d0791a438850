//! `/posts` and reactions. A post is answered 201 only after its transaction committed; then it
//! is fanned out once, as a single shared `posted` event, to every connected channel member.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_id, json as respond, load_channel, model, ok, require_member, require_read, status_ok,
    ApiResult, AppState, Body, Session, Shared, P, Q,
};
use crate::error::ApiError;
use crate::event::{post_event, Broadcast, Event, EventKind, PostChannel};
use crate::ids::{new_id, now_ms};
use crate::store::{ChannelRow, PostRow, PostWindow, ReactionRow};

#[derive(Deserialize)]
pub struct NewPost {
    channel_id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    root_id: String,
    #[serde(default)]
    props: Option<Value>,
    #[serde(default)]
    pending_post_id: String,
    #[serde(default)]
    file_ids: Vec<String>,
}

fn check_message(st: &AppState, msg: &str) -> Result<(), ApiError> {
    if msg.chars().count() > st.config.limits.max_post_chars {
        return Err(ApiError::PayloadTooLarge(
            "model.post.is_valid.message_length.app_error",
            format!(
                "Message is longer than the maximum of {} characters.",
                st.config.limits.max_post_chars
            ),
        ));
    }
    Ok(())
}

fn props_text(props: Option<Value>) -> Result<String, ApiError> {
    match props {
        None | Some(Value::Null) => Ok("{}".into()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(ApiError::invalid_param("props")),
    }
}

/// Sends a post event (`posted`, `post_edited`, `post_deleted`) to the channel.
fn publish_post(st: &AppState, kind: EventKind, ch: &ChannelRow, post: &PostRow, sender: &str) {
    let info = PostChannel {
        id: &ch.id,
        team_id: &ch.team_id,
        name: &ch.name,
        display_name: &ch.display_name,
        kind: &ch.kind,
    };
    let ev = post_event(kind, &info, post, sender);
    st.broadcast_channel(&ch.id, &ev, None, Some(&post.id));
}

pub async fn create_post(
    State(st): State<Shared>,
    s: Session,
    Body(np): Body<NewPost>,
) -> ApiResult {
    check_message(&st, &np.message)?;
    if np.message.trim().is_empty() && np.file_ids.is_empty() {
        return Err(ApiError::invalid_param("message"));
    }
    // The channel, a reply's root and the sender's name are independent reads: one round trip's
    // wait, not up to three, before the insert (the broadcast, and so every delivery, waits for them).
    // Their errors are reported in the order the checks below make.
    let root = async {
        if np.root_id.is_empty() {
            return Ok(None);
        }
        check_id("root_id", &np.root_id)?;
        Ok::<_, ApiError>(st.store.post_by_id(&np.root_id).await?)
    };
    let (ch, root, sender) = tokio::join!(
        load_channel(&st, &np.channel_id),
        root,
        st.store.user_by_id(&s.user_id)
    );
    let ch = ch?;
    require_member(&st, &ch.id, &s.user_id)?;
    if !np.root_id.is_empty() {
        match root? {
            Some(root) if root.channel_id == ch.id && root.delete_at == 0 => {}
            _ => return Err(ApiError::invalid_param("root_id")),
        }
    }
    if np.pending_post_id.len() > 64 {
        return Err(ApiError::invalid_param("pending_post_id"));
    }
    let now = now_ms();
    let row = PostRow {
        id: new_id(),
        channel_id: ch.id.clone(),
        user_id: s.user_id.to_string(),
        root_id: np.root_id,
        message: np.message,
        kind: String::new(),
        props: props_text(np.props)?,
        is_pinned: 0,
        create_at: now,
        update_at: now,
        edit_at: 0,
        delete_at: 0,
        reply_count: 0,
    };
    st.store.create_post(&row).await?;
    st.metrics.posts_created.inc();
    let sender = match sender {
        Ok(Some(u)) => format!("@{}", u.username),
        _ => String::new(),
    };
    publish_post(&st, EventKind::Posted, &ch, &row, &sender);
    respond(StatusCode::CREATED, &model::post(&row, &np.pending_post_id))
}

/// Loads a visible, not deleted post and its channel.
async fn readable_post(
    st: &AppState,
    id: &str,
    user: &str,
) -> Result<(PostRow, ChannelRow), ApiError> {
    check_id("post_id", id)?;
    let post = st
        .store
        .post_by_id(id)
        .await?
        .filter(|p| p.delete_at == 0)
        .ok_or_else(|| ApiError::not_found("Post"))?;
    let ch = load_channel(st, &post.channel_id).await?;
    require_read(st, &ch, user)?;
    Ok((post, ch))
}

pub async fn get_post(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let (post, _) = readable_post(&st, &id, &s.user_id).await?;
    ok(&model::post(&post, ""))
}

#[derive(Deserialize)]
pub struct PostPatch {
    message: Option<String>,
    props: Option<Value>,
    is_pinned: Option<bool>,
}

pub async fn patch_post(
    State(st): State<Shared>,
    s: Session,
    P(id): P<String>,
    Body(patch): Body<PostPatch>,
) -> ApiResult {
    let (mut post, ch) = readable_post(&st, &id, &s.user_id).await?;
    if post.user_id != *s.user_id {
        return Err(ApiError::forbidden());
    }
    let now = now_ms();
    if let Some(m) = patch.message {
        check_message(&st, &m)?;
        post.message = m;
        post.edit_at = now;
    }
    if patch.props.is_some() {
        post.props = props_text(patch.props)?;
    }
    if let Some(p) = patch.is_pinned {
        post.is_pinned = i64::from(p);
    }
    post.update_at = now;
    st.store.update_post(&post).await?;
    publish_post(&st, EventKind::PostEdited, &ch, &post, "");
    ok(&model::post(&post, ""))
}

pub async fn delete_post(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let (mut post, ch) = readable_post(&st, &id, &s.user_id).await?;
    if post.user_id != *s.user_id {
        return Err(ApiError::forbidden());
    }
    let now = now_ms();
    st.store.delete_post(&post.id, now).await?;
    post.delete_at = now;
    post.update_at = now;
    publish_post(&st, EventKind::PostDeleted, &ch, &post, "");
    status_ok()
}

#[derive(Deserialize)]
pub struct PostQuery {
    page: Option<i64>,
    per_page: Option<i64>,
    since: Option<i64>,
    #[serde(default)]
    before: String,
    #[serde(default)]
    after: String,
}

pub async fn channel_posts(
    State(st): State<Shared>,
    s: Session,
    P(channel_id): P<String>,
    Q(q): Q<PostQuery>,
) -> ApiResult {
    let ch = load_channel(&st, &channel_id).await?;
    require_read(&st, &ch, &s.user_id)?;
    let (page, per_page) = super::Paging {
        page: q.page,
        per_page: q.per_page,
    }
    .get();
    let anchor = |id: &str| {
        let st = st.clone();
        let id = id.to_string();
        let channel = ch.id.clone();
        async move {
            check_id("post_id", &id)?;
            match st.store.post_by_id(&id).await? {
                Some(p) if p.channel_id == channel => Ok::<_, ApiError>(p),
                _ => Err(ApiError::not_found("Post")),
            }
        }
    };
    let window = if let Some(since) = q.since {
        PostWindow::Since { since }
    } else if !q.before.is_empty() {
        let p = anchor(&q.before).await?;
        PostWindow::Before {
            create_at: p.create_at,
            id: p.id,
            page,
            per_page,
        }
    } else if !q.after.is_empty() {
        let p = anchor(&q.after).await?;
        PostWindow::After {
            create_at: p.create_at,
            id: p.id,
            page,
            per_page,
        }
    } else {
        PostWindow::Page { page, per_page }
    };
    let rows = st.store.channel_posts(&ch.id, &window).await?;
    ok(&model::post_list(&rows))
}

pub async fn thread(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let (post, _) = readable_post(&st, &id, &s.user_id).await?;
    let root = if post.root_id.is_empty() {
        post.id
    } else {
        post.root_id
    };
    let rows = st.store.thread(&root).await?;
    ok(&model::post_list(&rows))
}

// ---- reactions ----

#[derive(Deserialize)]
pub struct NewReaction {
    user_id: String,
    post_id: String,
    emoji_name: String,
}

fn valid_emoji(e: &str) -> bool {
    (1..=64).contains(&e.len())
        && e.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
}

fn publish_reaction(st: &AppState, kind: EventKind, channel_id: &str, r: &ReactionRow) {
    let ev = Event::new(
        kind,
        json!({"reaction": model::reaction(r).to_string()}),
        Broadcast {
            channel_id,
            ..Broadcast::default()
        },
    );
    st.broadcast_channel(channel_id, &ev, None, None);
}

pub async fn save_reaction(
    State(st): State<Shared>,
    s: Session,
    Body(r): Body<NewReaction>,
) -> ApiResult {
    s.require_self(&r.user_id)?;
    if !valid_emoji(&r.emoji_name) {
        return Err(ApiError::invalid_param("emoji_name"));
    }
    let (post, ch) = readable_post(&st, &r.post_id, &s.user_id).await?;
    require_member(&st, &ch.id, &s.user_id)?;
    let row = st
        .store
        .save_reaction(&ReactionRow {
            user_id: s.user_id.to_string(),
            post_id: post.id,
            emoji_name: r.emoji_name,
            create_at: now_ms(),
        })
        .await?;
    publish_reaction(&st, EventKind::ReactionAdded, &ch.id, &row);
    // Mattermost answers a saved reaction with 200, not 201.
    ok(&model::reaction(&row))
}

pub async fn reactions(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let (post, _) = readable_post(&st, &id, &s.user_id).await?;
    let rows = st.store.reactions(&post.id).await?;
    ok(&rows.iter().map(model::reaction).collect::<Vec<_>>())
}

pub async fn delete_reaction(
    State(st): State<Shared>,
    s: Session,
    P((user_id, post_id, emoji)): P<(String, String, String)>,
) -> ApiResult {
    s.require_self(&user_id)?;
    let (post, ch) = readable_post(&st, &post_id, &s.user_id).await?;
    require_member(&st, &ch.id, &s.user_id)?;
    if !st
        .store
        .delete_reaction(&post.id, &s.user_id, &emoji)
        .await?
    {
        return Err(ApiError::not_found("Reaction"));
    }
    let row = ReactionRow {
        user_id: s.user_id.to_string(),
        post_id: post.id,
        emoji_name: emoji,
        create_at: now_ms(),
    };
    publish_reaction(&st, EventKind::ReactionRemoved, &ch.id, &row);
    status_ok()
}
