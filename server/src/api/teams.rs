//! `/teams`: creating teams, looking them up and managing members. Only members see a team.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{
    check_id, json, model, ok, require_team_member, ApiResult, AppState, Body, NewMember, Paging,
    Session, Shared, P, Q,
};
use crate::bus::Message;
use crate::error::ApiError;
use crate::ids::{new_id, now_ms};
use crate::store::{ChannelRow, TeamRow};

/// Team and channel names: lowercase letters, digits, `-` and `_`, 1–64 characters.
pub fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[derive(Deserialize)]
pub struct NewTeam {
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
}

pub async fn create_team(
    State(st): State<Shared>,
    s: Session,
    Body(t): Body<NewTeam>,
) -> ApiResult {
    if !valid_name(&t.name) || t.name.len() < 2 {
        return Err(ApiError::bad_request(
            "model.team.is_valid.name.app_error",
            "Team name must be 2-64 lowercase letters, digits, '-' or '_'.",
        ));
    }
    let kind = match t.kind.as_str() {
        "" | "O" => "O",
        "I" => "I",
        _ => return Err(ApiError::invalid_param("type")),
    };
    let display = if t.display_name.is_empty() {
        t.name.clone()
    } else {
        t.display_name
    };
    if display.chars().count() > 64 || t.description.chars().count() > 255 {
        return Err(ApiError::invalid_param("display_name"));
    }
    let now = now_ms();
    let team = TeamRow {
        id: new_id(),
        name: t.name,
        display_name: display,
        description: t.description,
        kind: kind.into(),
        creator_id: s.user_id.to_string(),
        create_at: now,
        update_at: now,
        delete_at: 0,
    };
    let defaults: Vec<ChannelRow> = [("town-square", "Town Square"), ("off-topic", "Off-Topic")]
        .into_iter()
        .map(|(name, display)| ChannelRow {
            id: new_id(),
            team_id: team.id.clone(),
            name: name.into(),
            display_name: display.into(),
            kind: "O".into(),
            purpose: String::new(),
            header: String::new(),
            creator_id: team.creator_id.clone(),
            create_at: now,
            update_at: now,
            delete_at: 0,
            last_post_at: now,
            total_msg_count: 0,
        })
        .collect();
    st.store.create_team(&team, &defaults).await?;
    st.change(Message::TeamMemberAdded {
        team_id: team.id.clone(),
        user_id: s.user_id.to_string(),
    });
    for c in &defaults {
        st.change(Message::ChannelCreated {
            channel_id: c.id.clone(),
            team_id: c.team_id.clone(),
            kind: c.kind.clone(),
        });
        st.change(Message::ChannelMemberAdded {
            channel_id: c.id.clone(),
            user_id: s.user_id.to_string(),
        });
    }
    json(StatusCode::CREATED, &model::team(&team))
}

fn visible(st: &AppState, team: Option<TeamRow>, user_id: &str) -> Result<TeamRow, ApiError> {
    let team = team.ok_or_else(|| ApiError::not_found("Team"))?;
    require_team_member(st, &team.id, user_id)?;
    Ok(team)
}

pub async fn get_team(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    check_id("team_id", &id)?;
    let team = visible(&st, st.store.team_by_id(&id).await?, &s.user_id)?;
    ok(&model::team(&team))
}

pub async fn team_by_name(State(st): State<Shared>, s: Session, P(name): P<String>) -> ApiResult {
    let team = visible(&st, st.store.team_by_name(&name).await?, &s.user_id)?;
    ok(&model::team(&team))
}

pub async fn teams_for_user(State(st): State<Shared>, s: Session, P(uid): P<String>) -> ApiResult {
    s.require_self(&uid)?;
    let teams = st.store.teams_for_user(&s.user_id).await?;
    ok(&teams.iter().map(model::team).collect::<Vec<_>>())
}

/// Members add anyone; anyone may join an open (`O`) team themselves.
pub async fn add_member(
    State(st): State<Shared>,
    s: Session,
    P(team_id): P<String>,
    Body(m): Body<NewMember>,
) -> ApiResult {
    check_id("team_id", &team_id)?;
    let target = s.resolve(&m.user_id)?;
    let team = st
        .store
        .team_by_id(&team_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Team"))?;
    let is_member = st.hub.is_team_member(&team.id, &s.user_id);
    let self_join = target == *s.user_id && team.kind == "O";
    if !is_member && !self_join {
        return Err(ApiError::forbidden());
    }
    if st.store.user_by_id(&target).await?.is_none() {
        return Err(ApiError::not_found("User"));
    }
    let (member, town) = st
        .store
        .add_team_member(&team.id, &target, now_ms())
        .await?;
    st.change(Message::TeamMemberAdded {
        team_id: team.id.clone(),
        user_id: target.clone(),
    });
    if let Some(town) = town {
        st.change(Message::ChannelMemberAdded {
            channel_id: town,
            user_id: target,
        });
    }
    json(StatusCode::CREATED, &model::team_member(&member))
}

pub async fn members(
    State(st): State<Shared>,
    s: Session,
    P(team_id): P<String>,
    Q(paging): Q<Paging>,
) -> ApiResult {
    check_id("team_id", &team_id)?;
    visible(&st, st.store.team_by_id(&team_id).await?, &s.user_id)?;
    let (page, per_page) = paging.get();
    let rows = st.store.team_members(&team_id, page, per_page).await?;
    ok(&rows.iter().map(model::team_member).collect::<Vec<_>>())
}
