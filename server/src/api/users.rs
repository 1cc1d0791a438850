//! `/users`: sign-up, login/logout and user lookups.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use serde::Deserialize;

use super::{json, model, ok, status_ok, ApiResult, Body, Paging, Session, Shared, P, Q};
use crate::bus::Message;
use crate::error::ApiError;
use crate::ids::{new_id, now_ms};
use crate::store::UserRow;

#[derive(Deserialize)]
pub struct NewUser {
    username: String,
    email: String,
    password: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    nickname: String,
}

/// Mattermost's username rule: 3–22 of `a-z 0-9 . - _`, starting with a letter.
pub fn valid_username(u: &str) -> bool {
    (3..=22).contains(&u.len())
        && u.starts_with(|c: char| c.is_ascii_lowercase())
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
}

/// A plausible single address (Mattermost rejects what Go's `mail.ParseAddress` cannot read as
/// one bare address): at most 128 bytes, one `@` with text on both sides, and no whitespace,
/// control characters or address-list punctuation.
pub fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    e.len() <= 128
        && !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"<>(),;:[]\\".contains(c))
}

fn invalid(field: &'static str, msg: &str) -> ApiError {
    ApiError::bad_request(field, msg.to_string())
}

pub async fn create_user(State(st): State<Shared>, Body(nu): Body<NewUser>) -> ApiResult {
    let username = nu.username.trim().to_lowercase();
    let email = nu.email.trim().to_lowercase();
    if !valid_username(&username) {
        return Err(invalid(
            "model.user.is_valid.username.app_error",
            "Username must be 3-22 characters: lowercase letters, digits, '.', '-', '_', starting with a letter.",
        ));
    }
    if !valid_email(&email) {
        return Err(invalid(
            "model.user.is_valid.email.app_error",
            "Invalid email.",
        ));
    }
    if nu.password.chars().count() < 5 || nu.password.len() > 72 {
        return Err(invalid(
            "model.user.is_valid.pwd_length.app_error",
            "Password must be 5 to 72 characters.",
        ));
    }
    for (name, v) in [
        ("first_name", &nu.first_name),
        ("last_name", &nu.last_name),
        ("nickname", &nu.nickname),
    ] {
        if v.chars().count() > 64 {
            return Err(ApiError::invalid_param(name));
        }
    }
    let now = now_ms();
    let row = UserRow {
        id: new_id(),
        username,
        email,
        password_hash: st.auth.hash_password(nu.password).await?,
        first_name: nu.first_name,
        last_name: nu.last_name,
        nickname: nu.nickname,
        roles: "system_user".into(),
        create_at: now,
        update_at: now,
        delete_at: 0,
    };
    let row = st.store.create_user(&row).await?;
    json(StatusCode::CREATED, &model::user(&row))
}

#[derive(Deserialize)]
pub struct Login {
    #[serde(default)]
    login_id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub async fn login(State(st): State<Shared>, Body(l): Body<Login>) -> ApiResult {
    let login_id = [l.login_id, l.username, l.email]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let bad = || {
        ApiError::Unauthorized(
            "api.user.login.invalid_credentials_email_username",
            "Enter a valid email or username and/or password.".into(),
        )
    };
    if login_id.is_empty() || l.password.is_empty() {
        return Err(bad());
    }
    let user = st.store.user_by_login(&login_id).await?.ok_or_else(bad)?;
    if user.delete_at != 0
        || !st
            .auth
            .verify_password(l.password, user.password_hash.clone())
            .await
    {
        return Err(bad());
    }
    let token = st.auth.create_session(&user.id).await?;
    let mut resp = ok(&model::user(&user))?;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&token) {
        h.insert("Token", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "MMAUTHTOKEN={token}; Path=/; HttpOnly; SameSite=Lax"
    )) {
        h.append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("MMUSERID={}; Path=/; SameSite=Lax", user.id)) {
        h.append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

pub async fn logout(State(st): State<Shared>, s: Session) -> ApiResult {
    st.auth.revoke(&s.token).await?;
    // Its WebSockets end too, here and on every other instance.
    st.change(Message::SessionRevoked {
        session: crate::auth::hash_token(&s.token),
    });
    let mut resp = status_ok()?;
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("MMAUTHTOKEN=; Path=/; Max-Age=0; HttpOnly"),
    );
    Ok(resp)
}

pub async fn get_user(State(st): State<Shared>, s: Session, P(id): P<String>) -> ApiResult {
    let id = s.resolve(&id)?;
    let u = st
        .store
        .user_by_id(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("User"))?;
    ok(&model::user(&u))
}

pub async fn user_by_username(
    State(st): State<Shared>,
    _s: Session,
    P(name): P<String>,
) -> ApiResult {
    let u = st
        .store
        .user_by_username(&name.to_lowercase())
        .await?
        .ok_or_else(|| ApiError::not_found("User"))?;
    ok(&model::user(&u))
}

pub async fn users_by_ids(
    State(st): State<Shared>,
    _s: Session,
    Body(ids): Body<Vec<String>>,
) -> ApiResult {
    super::check_user_ids(&ids)?;
    let users = st.store.users_by_ids(&ids).await?;
    ok(&users.iter().map(model::user).collect::<Vec<_>>())
}

#[derive(Deserialize)]
pub struct ListUsers {
    page: Option<i64>,
    per_page: Option<i64>,
    in_channel: Option<String>,
    in_team: Option<String>,
}

pub async fn list_users(State(st): State<Shared>, s: Session, Q(q): Q<ListUsers>) -> ApiResult {
    let in_channel = q.in_channel.filter(|c| !c.is_empty());
    let in_team = q.in_team.filter(|t| !t.is_empty());
    if let Some(c) = &in_channel {
        let ch = super::load_channel(&st, c).await?;
        super::require_read(&st, &ch, &s.user_id)?;
    }
    if let Some(t) = &in_team {
        super::check_id("in_team", t)?;
        super::require_team_member(&st, t, &s.user_id)?;
    }
    let (page, per_page) = Paging {
        page: q.page,
        per_page: q.per_page,
    }
    .get();
    let users = st
        .store
        .list_users(in_channel.as_deref(), in_team.as_deref(), page, per_page)
        .await?;
    ok(&users.iter().map(model::user).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    #[test]
    fn username_rule() {
        assert!(super::valid_username("alice.b-c_1"));
        assert!(!super::valid_username("al"));
        assert!(!super::valid_username("1alice"));
        assert!(!super::valid_username("Alice"));
        assert!(!super::valid_username("a".repeat(23).as_str()));
    }

    #[test]
    fn email_rule() {
        assert!(super::valid_email("a.b+c@x.io"));
        assert!(super::valid_email("\u{e9}@x.io"));
        for bad in [
            "",
            "@",
            "a@",
            "@a",
            "no-at",
            "a b@c d",
            "a@b@c",
            "a\t@x.io",
            "\"a\"@x.io",
            "a@x.io, b@x.io",
            "<a@x.io>",
        ] {
            assert!(!super::valid_email(bad), "{bad:?}");
        }
        assert!(!super::valid_email(&format!("{}@x.io", "a".repeat(124))));
    }
}
