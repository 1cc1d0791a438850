//! Two servers on one PostgreSQL database, kept in step by the `LISTEN/NOTIFY` bus: membership
//! changed through one is enforced by the other, and events created through one reach WebSocket
//! clients of the other (contiguous `seq`, members only, no echo). Needs `CHAT_TEST_POSTGRES_URL`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection;
use support::{Harness, Ws};

const SHORT: Duration = Duration::from_millis(400);
/// Bound on waiting for a notification to be applied by the other instance.
const PROPAGATION: Duration = Duration::from_secs(5);

async fn pair(db_url: &str) -> (Harness, Harness) {
    let start = || Harness::start_postgres(db_url);
    // Both at once on an empty database: migrations are serialized by an advisory lock.
    let (a, b) = tokio::join!(start(), start());
    for h in [&a, &b] {
        let r = h
            .req(reqwest::Method::GET, "/system/ping", None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    (a, b)
}

/// Polls `GET path` on `h` until it answers `want` (bounded by [`PROPAGATION`]).
async fn eventually_status(h: &Harness, path: &str, token: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let r = h.get(path, token).await;
        if r.status.as_u16() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} still answers {} (want {want}): {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads events until one named `name`, asserting `seq` is contiguous from `*next`.
async fn expect_seq_event(ws: &mut Ws, next: &mut i64, name: &str) -> Value {
    for _ in 0..50 {
        let v = ws.event().await;
        assert_eq!(v["seq"], *next, "seq must be contiguous: {v}");
        *next += 1;
        if v["event"] == name {
            return v;
        }
    }
    panic!("no {name} event among the next 50");
}

async fn metric(h: &Harness, name: &str) -> f64 {
    support::metric_sum(&h.metrics().await, name)
}

#[tokio::test]
async fn membership_changed_through_a_is_enforced_by_b() {
    let Some(admin) = support_pg::admin_url() else {
        return;
    };
    let db = support_pg::fresh_database(&admin).await;
    let (a, b) = pair(&db.url).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let t = a.team(&alice, "team1").await;
    // The creator's membership travelled too: alice reads her team through B.
    eventually_status(&b, "/teams/name/team1", &alice.token, 200).await;
    assert_eq!(b.get("/teams/name/team1", &bob.token).await.status, 403);

    a.join_team(&alice, &t, &bob).await;
    eventually_status(&b, "/teams/name/team1", &bob.token, 200).await;
    eventually_status(&b, &format!("/teams/{t}/channels"), &bob.token, 200).await;

    let c = a.channel(&alice, &t, "secret", "P").await;
    let path = format!("/channels/{c}");
    assert_eq!(b.get(&path, &bob.token).await.status, 403);
    a.join_channel(&alice, &c, &bob).await;
    eventually_status(&b, &path, &bob.token, 200).await;
    // Bob may now post through B.
    b.create_post(&bob, &c, "from b").await;

    let r = a
        .delete(&format!("/channels/{c}/members/{}", bob.id), &alice.token)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually_status(&b, &path, &bob.token, 403).await;

    // A manually set status is the same on both instances.
    a.put(
        &format!("/users/{}/status", alice.id),
        &alice.token,
        json!({"user_id": alice.id, "status": "dnd"}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let s = b
            .get(&format!("/users/{}/status", alice.id), &alice.token)
            .await;
        if s.body["status"] == "dnd" {
            assert_eq!(s.body["manual"], true);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "status: {}", s.text);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    assert!(metric(&a, "chat_bus_published_total").await > 0.0);
    assert!(metric(&b, "chat_bus_received_total").await > 0.0);
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn events_created_through_a_reach_websockets_on_b() {
    let Some(admin) = support_pg::admin_url() else {
        return;
    };
    let db = support_pg::fresh_database(&admin).await;
    let (a, b) = pair(&db.url).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let xavier = a.user("xavier").await;
    let t = a.team(&alice, "team1").await;
    a.join_team(&alice, &t, &bob).await;
    a.join_team(&alice, &t, &xavier).await;
    let c = a.channel(&alice, &t, "chan", "P").await;
    a.join_channel(&alice, &c, &bob).await;
    eventually_status(&b, &format!("/channels/{c}"), &bob.token, 200).await;

    let mut wa = a.ws(&alice).await;
    let mut wb = b.ws(&bob).await;
    let mut wx = b.ws(&xavier).await;
    let (mut na, mut nb) = (0i64, 0i64);
    expect_seq_event(&mut wa, &mut na, "hello").await;
    expect_seq_event(&mut wb, &mut nb, "hello").await;
    wx.event_named("hello").await;

    // Small posts travel inline, the large one by reference; all arrive in order.
    let big = "x".repeat(12_000);
    let messages = ["one".to_string(), big.clone(), "three".to_string()];
    for m in &messages {
        let post = a.create_post(&alice, &c, m).await;
        for (ws, next) in [(&mut wb, &mut nb), (&mut wa, &mut na)] {
            let ev = expect_seq_event(ws, next, "posted").await;
            let inner: Value = serde_json::from_str(ev["data"]["post"].as_str().unwrap()).unwrap();
            assert_eq!(inner["id"], post["id"]);
            assert_eq!(inner["message"].as_str().unwrap(), m.as_str());
            assert_eq!(ev["broadcast"]["channel_id"], c.as_str());
            assert_eq!(ev["data"]["sender_name"], "@alice");
            assert_eq!(ev["data"]["channel_type"], "P");
        }
    }
    assert!(
        !wa.sees("posted", SHORT).await,
        "the sender's instance must deliver its own event exactly once"
    );

    a.post(
        &format!("/users/{}/typing", alice.id),
        &alice.token,
        json!({"channel_id": c}),
    )
    .await;
    let ty = expect_seq_event(&mut wb, &mut nb, "typing").await;
    assert_eq!(ty["data"]["user_id"], alice.id.as_str());

    let post = a.create_post(&alice, &c, "react to me").await;
    let pid = post["id"].as_str().unwrap();
    expect_seq_event(&mut wb, &mut nb, "posted").await;
    expect_seq_event(&mut wa, &mut na, "posted").await;
    let r = a
        .post(
            "/reactions",
            &alice.token,
            json!({"user_id": alice.id, "post_id": pid, "emoji_name": "tada"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let re = expect_seq_event(&mut wb, &mut nb, "reaction_added").await;
    let reaction: Value = serde_json::from_str(re["data"]["reaction"].as_str().unwrap()).unwrap();
    assert_eq!(reaction["post_id"], pid);
    assert_eq!(reaction["emoji_name"], "tada");

    // Bob's post through B reaches alice on A, and alice's typing never came back to her.
    b.create_post(&bob, &c, "reply from b").await;
    let ev = expect_seq_event(&mut wa, &mut na, "posted").await;
    assert_eq!(ev["data"]["sender_name"], "@bob");
    assert!(
        !wa.sees("typing", SHORT).await,
        "typing must omit the typist"
    );

    assert!(
        !wx.sees("posted", SHORT).await,
        "a non-member on B must receive nothing"
    );
    assert!(metric(&b, "chat_bus_received_total").await >= 6.0);
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn listener_reconnect_reloads_membership() {
    let Some(admin) = support_pg::admin_url() else {
        return;
    };
    let db = support_pg::fresh_database(&admin).await;
    let (a, b) = pair(&db.url).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let t = a.team(&alice, "team1").await;
    eventually_status(&b, "/teams/name/team1", &alice.token, 200).await;

    // A membership no instance announced (as if its notification had been lost).
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("INSERT INTO team_members (team_id, user_id, roles, create_at) VALUES ($1, $2, 'team_user', 0)")
        .bind(&t)
        .bind(&bob.id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.get("/teams/name/team1", &bob.token).await.status, 403);

    // Cut every bus listener of this database; each reconnects and reloads membership.
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        killed.len() >= 2,
        "expected both listeners, found {}",
        killed.len()
    );
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    while metric(&b, "chat_bus_reconnects_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually_status(&b, "/teams/name/team1", &bob.token, 200).await;

    // And the bus works again afterwards.
    let c = a.channel(&alice, &t, "after", "P").await;
    eventually_status(&b, &format!("/channels/{c}"), &alice.token, 200).await;
    conn.close().await.unwrap();
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[path = "support/pg.rs"]
mod support_pg;

#[tokio::test]
async fn logout_through_a_closes_the_sessions_websockets_on_b() {
    let Some(admin) = support_pg::admin_url() else {
        return;
    };
    let db = support_pg::fresh_database(&admin).await;
    let (a, b) = pair(&db.url).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let t = a.team(&alice, "team1").await;
    a.join_team(&alice, &t, &bob).await;
    let c = a.channel(&alice, &t, "chan", "O").await;
    a.join_channel(&alice, &c, &bob).await;
    eventually_status(&b, &format!("/channels/{c}"), &bob.token, 200).await;

    let mut wb = b.ws(&bob).await;
    let hello = wb.event_named("hello").await;
    let conn_id = hello["data"]["connection_id"].as_str().unwrap().to_string();
    a.create_post(&alice, &c, "before").await;
    assert!(wb.sees("posted", PROPAGATION).await);

    let r = a.post("/users/logout", &bob.token, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let closed = tokio::time::timeout(PROPAGATION, wb.close_code())
        .await
        .expect("B did not close the socket of a session revoked through A");
    assert_eq!(closed, Some(1008));

    // Resuming it on B with a fresh login starts a new connection instead.
    let again = a.login("bob").await;
    let mut w2 = b
        .ws_query(
            &again,
            &format!("?connection_id={conn_id}&sequence_number=1"),
        )
        .await;
    let hello = w2.event_named("hello").await;
    assert_ne!(hello["data"]["connection_id"], conn_id.as_str());
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}
