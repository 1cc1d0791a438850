//! REST API against a real server on 127.0.0.1:0: every endpoint, the error bodies, and the
//! authorization rules.
#![allow(clippy::unwrap_used)]

mod support;

use reqwest::Method;
use serde_json::json;
use support::Harness;

#[tokio::test]
async fn ping_and_content_type() {
    let h = Harness::start().await;
    let r = h.req(Method::GET, "/system/ping", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "OK"}));
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn users_signup_login_lookup_logout() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;
    assert_eq!(a.id.len(), 26);
    assert_eq!(a.token.len(), 26);

    let me = h.get("/users/me", &a.token).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["username"], "alice");
    assert_eq!(
        me.body["roles"], "system_admin system_user",
        "first user is admin"
    );
    assert!(me.body.get("password").is_none() && me.body.get("password_hash").is_none());
    let bob = h.get(&format!("/users/{}", b.id), &a.token).await;
    assert_eq!(bob.body["roles"], "system_user");
    assert_eq!(
        h.get("/users/username/bob", &a.token).await.body["id"],
        b.id.as_str()
    );
    let ids = h.post("/users/ids", &a.token, json!([a.id, b.id])).await;
    assert_eq!(ids.body.as_array().unwrap().len(), 2);
    let all = h.get("/users?page=0&per_page=1", &a.token).await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    let all = h.get("/users?page=0&per_page=10", &a.token).await;
    assert_eq!(all.body.as_array().unwrap().len(), 2);

    // Every token source works.
    let q = h
        .req(
            Method::GET,
            &format!("/users/me?access_token={}", a.token),
            None,
            None,
        )
        .await;
    assert_eq!(q.status, 200);
    let c = h
        .http
        .get(h.url("/users/me"))
        .header("Cookie", format!("MMAUTHTOKEN={}", a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    let t = h
        .http
        .get(h.url("/users/me"))
        .header("Authorization", format!("Token {}", a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(t.status(), 200);

    // Duplicate, bad input and bad credentials.
    let dup = h
        .req(
            Method::POST,
            "/users",
            None,
            Some(json!({"username": "alice", "email": "x@example.com", "password": "password1"})),
        )
        .await;
    dup.assert_error(400);
    h.req(
        Method::POST,
        "/users",
        None,
        Some(json!({"username": "A!", "email": "x", "password": "p"})),
    )
    .await
    .assert_error(400);
    h.req(
        Method::POST,
        "/users/login",
        None,
        Some(json!({"login_id": "alice", "password": "wrong"})),
    )
    .await
    .assert_error(401);
    // Login by email works too.
    let l = h
        .req(
            Method::POST,
            "/users/login",
            None,
            Some(json!({"login_id": "alice@example.com", "password": "password1"})),
        )
        .await;
    assert_eq!(l.status, 200);

    let out = h.post("/users/logout", &a.token, json!({})).await;
    assert_eq!(out.body, json!({"status": "OK"}));
    h.get("/users/me", &a.token).await.assert_error(401);
    h.get("/users/username/nobody", &b.token)
        .await
        .assert_error(404);
    h.get("/users/notanid", &b.token).await.assert_error(400);
    h.get(&format!("/users/{}", "y".repeat(26)), &b.token)
        .await
        .assert_error(404);
}

#[tokio::test]
async fn bad_input_is_always_a_mattermost_error() {
    let h = Harness::start_with(|c| {
        c.limits.max_body_bytes = 4096;
        c.limits.max_post_chars = 100;
    })
    .await;
    let a = h.user("alice").await;
    // Malformed JSON → 400.
    let r = h
        .http
        .post(h.url("/teams"))
        .bearer_auth(&a.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    support::into_resp(r).await.assert_error(400);
    // Wrong type in JSON → 400.
    h.post("/teams", &a.token, json!({"name": 5}))
        .await
        .assert_error(400);
    // Too-large body → 413.
    let big = "x".repeat(10_000);
    h.post(
        "/posts",
        &a.token,
        json!({"channel_id": "y".repeat(26), "message": big}),
    )
    .await
    .assert_error(413);
    // Wrong method → 405, unknown route → 404.
    h.delete("/system/ping", &a.token).await.assert_error(405);
    h.req(Method::PATCH, "/users/me", Some(&a.token), None)
        .await
        .assert_error(405);
    h.get("/no/such/route", &a.token).await.assert_error(404);
    let r = h
        .http
        .get(format!("{}/elsewhere", h.server.url))
        .send()
        .await
        .unwrap();
    support::into_resp(r).await.assert_error(404);
    // No token → 401 everywhere.
    h.req(Method::GET, "/users/me", None, None)
        .await
        .assert_error(401);
    h.req(Method::POST, "/posts", None, Some(json!({})))
        .await
        .assert_error(401);
    h.req(Method::GET, "/users/me", Some("bogus-token"), None)
        .await
        .assert_error(401);
    // Too-long post → 413; malformed ids → 400.
    let t = h.team(&a, "team1").await;
    let c = h.channel(&a, &t, "chan", "O").await;
    h.post(
        "/posts",
        &a.token,
        json!({"channel_id": c, "message": "m".repeat(101)}),
    )
    .await
    .assert_error(413);
    h.post(
        "/posts",
        &a.token,
        json!({"channel_id": "bad", "message": "hi"}),
    )
    .await
    .assert_error(400);
    h.get("/posts/bad-id", &a.token).await.assert_error(400);
    h.get(&format!("/posts/{}", "y".repeat(26)), &a.token)
        .await
        .assert_error(404);
    h.get(&format!("/channels/{}", "y".repeat(26)), &a.token)
        .await
        .assert_error(404);
    h.get("/channels/xyz/posts?page=abc", &a.token)
        .await
        .assert_error(400);
    // Absurd paging is clamped, not an overflow.
    let r = h
        .get(
            &format!("/channels/{c}/posts?page=9223372036854775807&per_page=9223372036854775807"),
            &a.token,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = h
        .get("/users?page=9223372036854775807&per_page=-5", &a.token)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn teams_and_channels() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;
    let t = h.team(&a, "team1").await;

    let team = h.get(&format!("/teams/{t}"), &a.token).await;
    assert_eq!(team.body["name"], "team1");
    assert_eq!(
        h.get("/teams/name/team1", &a.token).await.body["id"],
        t.as_str()
    );
    let mine = h.get("/users/me/teams", &a.token).await;
    assert_eq!(mine.body.as_array().unwrap().len(), 1);
    h.post("/teams", &a.token, json!({"name": "team1"}))
        .await
        .assert_error(400);

    h.join_team(&a, &t, &b).await;
    let members = h.get(&format!("/teams/{t}/members"), &b.token).await;
    assert_eq!(members.body.as_array().unwrap().len(), 2);

    // Default channels exist and new members join town-square.
    let by_name = h
        .get(&format!("/teams/{t}/channels/name/town-square"), &b.token)
        .await;
    assert_eq!(by_name.status, 200);
    let town = by_name.body["id"].as_str().unwrap().to_string();
    let tm = h.get(&format!("/channels/{town}/members"), &a.token).await;
    assert_eq!(tm.body.as_array().unwrap().len(), 2);

    let open = h.channel(&a, &t, "open", "O").await;
    let private = h.channel(&a, &t, "secret", "P").await;
    assert_eq!(
        h.get(&format!("/channels/{private}"), &a.token).await.body["type"],
        "P"
    );
    let public = h.get(&format!("/teams/{t}/channels"), &b.token).await;
    let names: Vec<&str> = public
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"open") && !names.contains(&"secret"),
        "{names:?}"
    );

    // Self-join a public channel; be added to a private one.
    let r = h
        .post(
            &format!("/channels/{open}/members"),
            &b.token,
            json!({"user_id": b.id}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["channel_id"], open.as_str());
    h.join_channel(&a, &private, &b).await;
    let mine = h
        .get(&format!("/users/me/teams/{t}/channels"), &b.token)
        .await;
    assert_eq!(mine.body.as_array().unwrap().len(), 3, "{}", mine.text); // town-square, open, secret
    let mm = h
        .get(
            &format!("/users/{}/teams/{t}/channels/members", b.id),
            &b.token,
        )
        .await;
    assert_eq!(mm.body.as_array().unwrap().len(), 3);
    let one = h
        .get(&format!("/channels/{private}/members/{}", b.id), &a.token)
        .await;
    assert_eq!(one.body["user_id"], b.id.as_str());
    assert_eq!(one.body["channel_id"], private.as_str());

    // Unread tracking.
    h.create_post(&a, &open, "one").await;
    h.create_post(&a, &open, "two").await;
    let u = h
        .get(&format!("/users/me/channels/{open}/unread"), &b.token)
        .await;
    assert_eq!(u.body["msg_count"], 2, "{}", u.text);
    let u = h
        .get(&format!("/users/me/channels/{open}/unread"), &a.token)
        .await;
    assert_eq!(u.body["msg_count"], 0, "own posts are read");
    let v = h
        .post(
            "/channels/members/me/view",
            &b.token,
            json!({"channel_id": open, "prev_channel_id": ""}),
        )
        .await;
    assert_eq!(v.body["status"], "OK");
    assert!(v.body["last_viewed_at_times"][&open].is_i64());
    let u = h
        .get(&format!("/users/{}/channels/{open}/unread", b.id), &b.token)
        .await;
    assert_eq!(u.body["msg_count"], 0);

    // Leave.
    let d = h
        .delete(&format!("/channels/{open}/members/{}", b.id), &b.token)
        .await;
    assert_eq!(d.body, json!({"status": "OK"}));
    h.post(
        "/posts",
        &b.token,
        json!({"channel_id": open, "message": "after leaving"}),
    )
    .await
    .assert_error(403);
}

#[tokio::test]
async fn posts_threads_reactions_status_typing() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;
    let t = h.team(&a, "team1").await;
    h.join_team(&a, &t, &b).await;
    let c = h.channel(&a, &t, "chan", "O").await;
    h.join_channel(&a, &c, &b).await;

    let root = h
        .post("/posts", &a.token, json!({"channel_id": c, "message": "root", "props": {"k": [1, 2]}, "pending_post_id": "p1"}))
        .await;
    assert_eq!(root.status, 201);
    assert_eq!(root.body["props"], json!({"k": [1, 2]}));
    assert_eq!(root.body["pending_post_id"], "p1");
    let root_id = root.body["id"].as_str().unwrap().to_string();
    let reply = h
        .post(
            "/posts",
            &b.token,
            json!({"channel_id": c, "message": "reply", "root_id": root_id}),
        )
        .await;
    assert_eq!(reply.status, 201);
    h.post(
        "/posts",
        &b.token,
        json!({"channel_id": c, "message": "x", "root_id": "y".repeat(26)}),
    )
    .await
    .assert_error(400);

    let got = h.get(&format!("/posts/{root_id}"), &b.token).await;
    assert_eq!(got.body["message"], "root");
    assert_eq!(got.body["reply_count"], 1);

    let list = h
        .get(&format!("/channels/{c}/posts?page=0&per_page=60"), &b.token)
        .await;
    let order = list.body["order"].as_array().unwrap();
    assert_eq!(order.len(), 2);
    assert_eq!(order[0], reply.body["id"], "newest first");
    assert_eq!(list.body["posts"][&root_id]["message"], "root");
    for k in ["next_post_id", "prev_post_id"] {
        assert!(list.body[k].is_string());
    }
    let page = h
        .get(&format!("/channels/{c}/posts?per_page=1&page=1"), &b.token)
        .await;
    assert_eq!(page.body["order"][0], root_id.as_str());
    let before = h
        .get(
            &format!(
                "/channels/{c}/posts?before={}",
                reply.body["id"].as_str().unwrap()
            ),
            &b.token,
        )
        .await;
    assert_eq!(before.body["order"], json!([root_id]));
    let after = h
        .get(&format!("/channels/{c}/posts?after={root_id}"), &b.token)
        .await;
    assert_eq!(after.body["order"], json!([reply.body["id"]]));
    let since = h
        .get(
            &format!(
                "/channels/{c}/posts?since={}",
                root.body["create_at"].as_i64().unwrap() - 1
            ),
            &b.token,
        )
        .await;
    assert_eq!(since.body["order"].as_array().unwrap().len(), 2);

    let thread = h.get(&format!("/posts/{root_id}/thread"), &b.token).await;
    assert_eq!(thread.body["order"].as_array().unwrap().len(), 2);

    // Only the author edits or deletes.
    h.put(
        &format!("/posts/{root_id}/patch"),
        &b.token,
        json!({"message": "hijack"}),
    )
    .await
    .assert_error(403);
    let p = h
        .put(
            &format!("/posts/{root_id}/patch"),
            &a.token,
            json!({"message": "edited"}),
        )
        .await;
    assert_eq!(p.body["message"], "edited");
    assert!(p.body["edit_at"].as_i64().unwrap() > 0);

    // Reactions.
    let r = h
        .post(
            "/reactions",
            &b.token,
            json!({"user_id": b.id, "post_id": root_id, "emoji_name": "smile"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["emoji_name"], "smile");
    h.post(
        "/reactions",
        &b.token,
        json!({"user_id": a.id, "post_id": root_id, "emoji_name": "smile"}),
    )
    .await
    .assert_error(403);
    let rs = h
        .get(&format!("/posts/{root_id}/reactions"), &a.token)
        .await;
    assert_eq!(rs.body.as_array().unwrap().len(), 1);
    let d = h
        .delete(
            &format!("/users/{}/posts/{root_id}/reactions/smile", b.id),
            &b.token,
        )
        .await;
    assert_eq!(d.body, json!({"status": "OK"}));
    h.delete(
        &format!("/users/{}/posts/{root_id}/reactions/smile", b.id),
        &b.token,
    )
    .await
    .assert_error(404);

    // Status and typing.
    let s = h.get(&format!("/users/{}/status", b.id), &a.token).await;
    assert_eq!(s.body["status"], "offline");
    let s = h
        .put(
            "/users/me/status",
            &b.token,
            json!({"user_id": b.id, "status": "dnd"}),
        )
        .await;
    assert_eq!(s.body["status"], "dnd");
    h.put(
        &format!("/users/{}/status", a.id),
        &b.token,
        json!({"user_id": a.id, "status": "away"}),
    )
    .await
    .assert_error(403);
    let ss = h
        .post("/users/status/ids", &a.token, json!([a.id, b.id]))
        .await;
    assert_eq!(ss.body.as_array().unwrap().len(), 2);
    assert_eq!(ss.body[1]["status"], "dnd");
    let ty = h
        .post(
            &format!("/users/{}/typing", b.id),
            &b.token,
            json!({"channel_id": c, "parent_id": ""}),
        )
        .await;
    assert_eq!(ty.body, json!({"status": "OK"}));

    let del = h.delete(&format!("/posts/{root_id}"), &a.token).await;
    assert_eq!(del.body, json!({"status": "OK"}));
    h.get(&format!("/posts/{root_id}"), &a.token)
        .await
        .assert_error(404);
}

#[tokio::test]
async fn non_members_are_denied_everything() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let m = h.user("mallory").await;
    let t = h.team(&a, "team1").await;
    let c = h.channel(&a, &t, "secret", "P").await;
    let open = h.channel(&a, &t, "open", "O").await;
    let post = h.create_post(&a, &c, "hidden").await;
    let pid = post["id"].as_str().unwrap();
    let tok = &m.token;

    // Not in the team at all.
    h.get(&format!("/teams/{t}"), tok).await.assert_error(403);
    h.get("/teams/name/team1", tok).await.assert_error(403);
    h.get(&format!("/teams/{t}/members"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/teams/{t}/channels"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/teams/{t}/channels/name/open"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/channels/{open}"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/channels/{open}/posts"), tok)
        .await
        .assert_error(403);
    h.post(
        "/channels",
        tok,
        json!({"team_id": t, "name": "mine", "display_name": "x", "type": "O"}),
    )
    .await
    .assert_error(403);
    h.post(
        &format!("/channels/{open}/members"),
        tok,
        json!({"user_id": m.id}),
    )
    .await
    .assert_error(403);
    h.get(&format!("/users/me/teams/{t}/channels"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/users?in_team={t}"), tok)
        .await
        .assert_error(403);

    // In the team (open team self-join) but not in the private channel.
    let j = h
        .post(
            &format!("/teams/{t}/members"),
            tok,
            json!({"team_id": t, "user_id": m.id}),
        )
        .await;
    assert_eq!(j.status, 201, "{}", j.text);
    h.get(&format!("/channels/{c}"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/teams/{t}/channels/name/secret"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/channels/{c}/posts"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/channels/{c}/members"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/users?in_channel={c}"), tok)
        .await
        .assert_error(403);
    h.post(
        &format!("/channels/{c}/members"),
        tok,
        json!({"user_id": m.id}),
    )
    .await
    .assert_error(403);
    h.post(
        "/posts",
        tok,
        json!({"channel_id": c, "message": "let me in"}),
    )
    .await
    .assert_error(403);
    h.post(
        "/posts",
        tok,
        json!({"channel_id": open, "message": "not joined"}),
    )
    .await
    .assert_error(403);
    h.get(&format!("/posts/{pid}"), tok).await.assert_error(403);
    h.get(&format!("/posts/{pid}/thread"), tok)
        .await
        .assert_error(403);
    h.get(&format!("/posts/{pid}/reactions"), tok)
        .await
        .assert_error(403);
    h.put(&format!("/posts/{pid}/patch"), tok, json!({"message": "x"}))
        .await
        .assert_error(403);
    h.delete(&format!("/posts/{pid}"), tok)
        .await
        .assert_error(403);
    h.post(
        "/reactions",
        tok,
        json!({"user_id": m.id, "post_id": pid, "emoji_name": "smile"}),
    )
    .await
    .assert_error(403);
    h.delete(&format!("/users/{}/posts/{pid}/reactions/smile", m.id), tok)
        .await
        .assert_error(403);
    h.post(
        &format!("/users/{}/typing", m.id),
        tok,
        json!({"channel_id": c}),
    )
    .await
    .assert_error(403);
    h.post("/channels/members/me/view", tok, json!({"channel_id": c}))
        .await
        .assert_error(403);
    h.get(&format!("/users/me/channels/{c}/unread"), tok)
        .await
        .assert_error(403);
    h.delete(&format!("/channels/{c}/members/{}", a.id), tok)
        .await
        .assert_error(403);

    // Acting as someone else.
    h.get(&format!("/users/{}/teams", a.id), tok)
        .await
        .assert_error(403);
    h.get(&format!("/users/{}/teams/{t}/channels", a.id), tok)
        .await
        .assert_error(403);
    h.get(&format!("/users/{}/teams/{t}/channels/members", a.id), tok)
        .await
        .assert_error(403);
    h.post(
        &format!("/channels/members/{}/view", a.id),
        tok,
        json!({"channel_id": open}),
    )
    .await
    .assert_error(403);
    h.get(&format!("/users/{}/channels/{c}/unread", a.id), tok)
        .await
        .assert_error(403);
    h.post(
        &format!("/users/{}/typing", a.id),
        tok,
        json!({"channel_id": open}),
    )
    .await
    .assert_error(403);
}

#[tokio::test]
async fn metrics_endpoint_reports_requests_posts_and_db() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let t = h.team(&a, "team1").await;
    let c = h.channel(&a, &t, "chan", "O").await;
    h.create_post(&a, &c, "counted").await;
    h.get(&format!("/posts/{}", "y".repeat(26)), &a.token).await;
    let m = h.metrics().await;
    for name in [
        "chat_http_requests_total",
        "chat_http_errors_total",
        "chat_http_request_duration_seconds_bucket",
        "chat_websocket_connections",
        "chat_posts_created_total",
        "chat_events_delivered_total",
        "chat_events_dropped_total",
        "chat_websocket_slow_closed_total",
        "chat_db_query_duration_seconds_bucket",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    assert!(
        m.contains(r#"handler="/api/v4/posts/{post_id}""#),
        "route template label:\n{m}"
    );
    assert_eq!(support::metric_sum(&m, "chat_posts_created_total"), 1.0);
    assert!(
        support::metric_sum(
            &m,
            r#"chat_http_errors_total{handler="/api/v4/posts/{post_id}",status="404"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn works_on_postgres_too() {
    let Some(url) = support_pg::admin_url() else {
        return;
    };
    let db = support_pg::fresh_database(&url).await;
    let h = Harness::start_postgres(&db.url).await;
    let a = h.user("alice").await;
    let t = h.team(&a, "team1").await;
    let c = h.channel(&a, &t, "chan", "O").await;
    let p = h.create_post(&a, &c, "on postgres").await;
    let list = h.get(&format!("/channels/{c}/posts"), &a.token).await;
    assert_eq!(list.body["order"][0], p["id"]);
    h.stop().await;
    db.drop_db().await;
}

/// PostgreSQL cannot store NUL in `text`; a client sending one gets a 400, not a 500.
#[tokio::test]
async fn nul_characters_are_a_client_error_on_postgres() {
    let Some(url) = support_pg::admin_url() else {
        return;
    };
    let db = support_pg::fresh_database(&url).await;
    let h = Harness::start_postgres(&db.url).await;
    let a = h.user("alice").await;
    let t = h.team(&a, "team1").await;
    let c = h.channel(&a, &t, "chan", "O").await;
    let r = h
        .post(
            "/posts",
            &a.token,
            json!({"channel_id": c, "message": "a\u{0}b"}),
        )
        .await;
    r.assert_error(400);
    assert_eq!(r.body["id"], "api.context.invalid_param.app_error");
    h.req(
        Method::POST,
        "/users",
        None,
        Some(json!({"username": "bob", "email": "b@x.io", "password": "secret1", "nickname": "\u{0}"})),
    )
    .await
    .assert_error(400);
    h.get("/users/username/a%00b", &a.token)
        .await
        .assert_error(400);
    // Nothing was stored by the refused post.
    let list = h.get(&format!("/channels/{c}/posts"), &a.token).await;
    assert_eq!(list.body["order"].as_array().map(Vec::len), Some(0));
    h.stop().await;
    db.drop_db().await;
}

#[path = "support/pg.rs"]
mod support_pg;

/// Paths with doubled slashes (a widely used client library builds some) or `.`/`..` segments
/// are redirected to the cleaned path, query kept, as Mattermost's router does; a client that
/// follows redirects gets the answer of the clean path.
#[tokio::test]
async fn doubled_slashes_redirect_to_the_clean_path() {
    let h = Harness::start().await;
    let a = h.user("dslash").await;
    let team = h.team(&a, "dslash").await;
    let ch = h.channel(&a, &team, "dslash", "O").await;
    let post = h.create_post(&a, &ch, "hello").await;
    let id = post["id"].as_str().unwrap();
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = raw
        .get(format!("{}/api/v4/posts/{id}//reactions?x=1", h.server.url))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/api/v4/posts/{id}/reactions?x=1")
    );
    let r = raw
        .get(format!("{}//api/v4/./users/../system/ping", h.server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/api/v4/system/ping");
    // Followed, as clients do.
    let r = h.get(&format!("/posts/{id}//reactions"), &a.token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.is_array(), "{}", r.text);
    h.stop().await;
}

/// Errors produced before any handler: an over-long URI is 414 and oversized or too many
/// headers are 431, each with the Mattermost error body and `Content-Type: application/json`.
/// Beyond the HTTP layer's own hard limits (hyper: 100 headers) it answers by itself with an
/// empty body, as documented; the status is still right.
#[tokio::test]
async fn limits_below_the_handlers_answer_with_mattermost_errors() {
    let h = Harness::start().await;
    let long = format!("/system/ping?pad={}", "a".repeat(9 * 1024));
    let r = h.req(Method::GET, &long, None, None).await;
    r.assert_error(414);
    assert_eq!(r.body["id"], "api.context.uri_too_long.app_error");

    let mut rb = h.http.get(h.url("/system/ping"));
    for i in 0..70 {
        rb = rb.header(format!("x-pad-{i}"), "v");
    }
    let r = support::into_resp(rb.send().await.unwrap()).await;
    r.assert_error(431);
    assert_eq!(r.body["id"], "api.context.headers_too_large.app_error");

    let r = h
        .http
        .get(h.url("/system/ping"))
        .header("x-big", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    support::into_resp(r).await.assert_error(431);

    // Past hyper's own limit of 100 headers: its bare 431 (documented in api/edge.rs).
    let mut rb = h.http.get(h.url("/system/ping"));
    for i in 0..120 {
        rb = rb.header(format!("x-pad-{i}"), "v");
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 431);
    // A normal request is unaffected.
    let r = h.req(Method::GET, "/system/ping", None, None).await;
    assert_eq!(r.status, 200);
    h.stop().await;
}
