//! The WebSocket gateway against a real server: hello/seq, fan-out, typing, ping, the
//! authentication challenge, resume/replay, slow consumers and shutdown.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{Harness, Ws};
use tokio_tungstenite::tungstenite::Message;

const SHORT: Duration = Duration::from_millis(300);

/// Reads events, asserting `seq` is contiguous from `*next`, until one named `name`.
async fn expect_seq_event(ws: &mut Ws, next: &mut i64, name: &str) -> Value {
    loop {
        let v = ws.event().await;
        assert_eq!(v["seq"], *next, "seq must be contiguous: {v}");
        *next += 1;
        if v["event"] == name {
            return v;
        }
    }
}

#[tokio::test]
async fn hello_then_posted_fans_out_to_members_only() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;
    let x = h.user("xavier").await;
    let t = h.team(&a, "team1").await;
    h.join_team(&a, &t, &b).await;
    h.join_team(&a, &t, &x).await;
    let c = h.channel(&a, &t, "chan", "P").await;
    h.join_channel(&a, &c, &b).await;

    let mut a1 = h.ws(&a).await;
    let mut a2 = h.ws(&a).await;
    let mut b1 = h.ws(&b).await;
    let mut x1 = h.ws(&x).await;
    let mut seqs = [0i64; 4];
    for (ws, next) in [&mut a1, &mut a2, &mut b1, &mut x1]
        .into_iter()
        .zip(seqs.iter_mut())
    {
        let hello = ws.event().await;
        assert_eq!(hello["event"], "hello");
        assert_eq!(hello["seq"], 0);
        assert_eq!(hello["data"]["connection_id"].as_str().unwrap().len(), 26);
        assert!(hello["data"]["server_version"].is_string());
        *next = 1;
    }

    for i in 0..3 {
        let post = h.create_post(&a, &c, &format!("message {i}")).await;
        for (ws, next) in [&mut a1, &mut a2, &mut b1].into_iter().zip(seqs.iter_mut()) {
            let ev = expect_seq_event(ws, next, "posted").await;
            let inner: Value =
                serde_json::from_str(ev["data"]["post"].as_str().expect("post is a JSON string"))
                    .unwrap();
            assert_eq!(inner["id"], post["id"]);
            assert_eq!(inner["message"], format!("message {i}"));
            assert_eq!(ev["broadcast"]["channel_id"], c.as_str());
            assert_eq!(ev["data"]["channel_type"], "P");
            assert_eq!(ev["data"]["sender_name"], "@alice");
        }
    }
    assert!(
        !x1.sees("posted", SHORT).await,
        "non-member must not receive posted"
    );
}

#[tokio::test]
async fn typing_omits_sender_and_other_events_arrive() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;
    let t = h.team(&a, "team1").await;
    h.join_team(&a, &t, &b).await;
    let c = h.channel(&a, &t, "chan", "O").await;
    h.join_channel(&a, &c, &b).await;
    let mut wa = h.ws(&a).await;
    let mut wb = h.ws(&b).await;
    wa.event_named("hello").await;
    wb.event_named("hello").await;

    let r = wb
        .action(7, "user_typing", json!({"channel_id": c, "parent_id": ""}))
        .await;
    assert_eq!(r["seq_reply"], 7);
    assert_eq!(r["status"], "OK");
    assert!(r.get("seq").is_none());
    let ty = wa.event_named("typing").await;
    assert_eq!(ty["data"]["user_id"], b.id.as_str());
    assert_eq!(ty["broadcast"]["omit_users"][&b.id], true);
    h.post(
        &format!("/users/{}/typing", a.id),
        &a.token,
        json!({"channel_id": c}),
    )
    .await;
    assert!(wb.sees("typing", Duration::from_secs(2)).await);
    assert!(
        !wb.sees("typing", SHORT).await,
        "bob must not see his own typing"
    );
    assert!(
        !wa.sees("typing", SHORT).await,
        "alice must not see her own typing"
    );

    let post = h.create_post(&a, &c, "hi").await;
    let pid = post["id"].as_str().unwrap();
    h.put(
        &format!("/posts/{pid}/patch"),
        &a.token,
        json!({"message": "edited"}),
    )
    .await;
    h.post(
        "/reactions",
        &b.token,
        json!({"user_id": b.id, "post_id": pid, "emoji_name": "tada"}),
    )
    .await;
    h.delete(
        &format!("/users/{}/posts/{pid}/reactions/tada", b.id),
        &b.token,
    )
    .await;
    h.delete(&format!("/posts/{pid}"), &a.token).await;
    for name in [
        "posted",
        "post_edited",
        "reaction_added",
        "reaction_removed",
        "post_deleted",
    ] {
        let ev = wb.event_named(name).await;
        assert_eq!(ev["broadcast"]["channel_id"], c.as_str(), "{name}");
    }
    h.post(
        "/channels/members/me/view",
        &b.token,
        json!({"channel_id": c}),
    )
    .await;
    let v = wb.event_named("channel_viewed").await;
    assert_eq!(v["data"]["channel_id"], c.as_str());
}

#[tokio::test]
async fn status_change_goes_to_the_user_and_ping_pongs() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let mut w = h.ws(&a).await;
    w.event_named("hello").await;
    let s = w.event_named("status_change").await;
    assert_eq!(s["data"]["status"], "online");
    assert_eq!(s["data"]["user_id"], a.id.as_str());
    let st = h.get(&format!("/users/{}/status", a.id), &a.token).await;
    assert_eq!(st.body["status"], "online");

    let pong = w.action(3, "ping", Value::Null).await;
    assert_eq!(pong["seq_reply"], 3);
    assert_eq!(pong["data"]["text"], "pong");
    let statuses = w.action(4, "get_statuses", Value::Null).await;
    assert_eq!(statuses["data"][&a.id], "online");

    // Protocol-level ping and unsolicited pong.
    w.s.send(Message::Pong(Vec::new().into())).await.unwrap();
    w.s.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let got_pong = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = w.s.next().await {
            if let Message::Pong(p) = m {
                return p.to_vec() == b"hi";
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(got_pong);

    drop(w);
    let mut offline = false;
    for _ in 0..50 {
        if h.get(&format!("/users/{}/status", a.id), &a.token)
            .await
            .body["status"]
            == "offline"
        {
            offline = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(offline, "offline after the last socket closed");
}

#[tokio::test]
async fn authentication_challenge_flow() {
    let h = Harness::start().await;
    let a = h.user("alice").await;

    let mut w = h.ws_anonymous("").await;
    let bad = w
        .action(1, "authentication_challenge", json!({"token": "nope"}))
        .await;
    assert_eq!(bad["status"], "FAIL");
    let ok = w
        .action(2, "authentication_challenge", json!({"token": a.token}))
        .await;
    assert_eq!(ok, json!({"status": "OK", "seq_reply": 2}));
    let hello = w.event().await;
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["seq"], 0);

    // An invalid token at upgrade is refused with 401.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        h.server.ws_url(),
    )
    .unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer invalid".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn reconnect_replays_missed_events_or_starts_over() {
    let h = Harness::start_with(|c| c.limits.replay_buffer = 6).await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;
    let t = h.team(&a, "team1").await;
    h.join_team(&a, &t, &b).await;
    let c = h.channel(&a, &t, "chan", "O").await;
    h.join_channel(&a, &c, &b).await;

    let mut w = h.ws(&b).await;
    let hello = w.event().await;
    let conn_id = hello["data"]["connection_id"].as_str().unwrap().to_string();
    let mut next = 1;
    h.create_post(&a, &c, "seen").await;
    expect_seq_event(&mut w, &mut next, "posted").await;
    w.s.close(None).await.unwrap();
    drop(w);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut missed = vec![];
    for i in 0..3 {
        missed.push(h.create_post(&a, &c, &format!("missed {i}")).await["id"].clone());
    }
    let mut w = h
        .ws_query(
            &b,
            &format!("?connection_id={conn_id}&sequence_number={next}"),
        )
        .await;
    let mut got = vec![];
    while got.len() < 3 {
        let ev = w.event().await;
        assert_ne!(
            ev["event"], "hello",
            "a resumed connection gets no new hello"
        );
        assert_eq!(ev["seq"], next, "replay continues the sequence: {ev}");
        next += 1;
        if ev["event"] == "posted" {
            let p: Value = serde_json::from_str(ev["data"]["post"].as_str().unwrap()).unwrap();
            got.push(p["id"].clone());
        }
    }
    assert_eq!(got, missed);
    // Live events continue on the resumed connection.
    h.create_post(&a, &c, "live").await;
    expect_seq_event(&mut w, &mut next, "posted").await;
    w.s.close(None).await.unwrap();
    drop(w);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // More missed events than the buffer holds: a fresh hello with a new connection id.
    for i in 0..10 {
        h.create_post(&a, &c, &format!("overflow {i}")).await;
    }
    let mut w = h
        .ws_query(
            &b,
            &format!("?connection_id={conn_id}&sequence_number={next}"),
        )
        .await;
    let hello = w.event().await;
    assert_eq!(hello["event"], "hello");
    assert_eq!(hello["seq"], 0);
    assert_ne!(hello["data"]["connection_id"], conn_id.as_str());

    // Someone else's connection id is not resumable either.
    let mut wa = h
        .ws_query(&a, &format!("?connection_id={conn_id}&sequence_number=0"))
        .await;
    let hello = wa.event().await;
    assert_eq!(hello["event"], "hello");
    assert_ne!(hello["data"]["connection_id"], conn_id.as_str());
}

/// Clients that authenticate and then never read, while big posts flow into their channel:
/// each is closed within a bounded time whatever state its socket is in (the write blocked on
/// full kernel buffers included), `chat_websocket_connections` drops to the one reader, the
/// slow-close counter counts closes that happened, and the reader in the same channel gets
/// every post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_closed_and_a_reader_is_unaffected() {
    let h = Harness::start_with(|c| {
        c.limits.send_queue = 8;
        c.limits.replay_buffer = 8;
        c.limits.max_post_chars = 65_000;
    })
    .await;
    let a = h.user("alice").await;
    let t = h.team(&a, "team1").await;
    let c = h.channel(&a, &t, "chan", "O").await;
    let mut slow = Vec::new();
    for i in 0..3 {
        let u = h.user(&format!("slow{i}")).await;
        h.join_team(&a, &t, &u).await;
        h.join_channel(&a, &c, &u).await;
        slow.push(h.ws(&u).await);
    }
    let r = h.user("reader").await;
    h.join_team(&a, &t, &r).await;
    h.join_channel(&a, &c, &r).await;
    let mut reader = h.ws(&r).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        let mut posted = 0u32;
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                m = reader.next_json(Duration::from_secs(30)) => match m {
                    Some(v) if v["event"] == "posted" => posted += 1,
                    Some(_) => {}
                    None => break,
                },
            }
        }
        posted
    });

    // Never read the slow sockets: kernel buffers fill, then their queues of 8.
    let big = "z".repeat(60_000);
    let mut posts = 0u32;
    let mut closed = false;
    for _ in 0..2000 {
        h.create_post(&a, &c, &big).await;
        posts += 1;
        let m = h.metrics().await;
        if support::metric_sum(&m, r#"chat_events_dropped_total{reason="queue_full"}"#) >= 3.0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow connections never overflowed their queues");
    // Every delivery recorded the depth it found, and the slow queues were seen filling up.
    let m = h.metrics().await;
    let observed = support::metric_sum(&m, "chat_websocket_queue_depth_count");
    let delivered = support::metric_sum(&m, "chat_events_delivered_total");
    assert_eq!(observed, delivered, "{m}");
    let shallow = support::metric_sum(&m, r#"chat_websocket_queue_depth_bucket{le="4"}"#);
    assert!(
        observed - shallow >= 3.0,
        "no delivery found more than 4 events waiting: {m}"
    );
    // Within a bounded time the server has closed them, although they still read nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = h.metrics().await;
        let open = support::metric_sum(&m, "chat_websocket_connections");
        let counted = support::metric_sum(&m, "chat_websocket_slow_closed_total");
        if open == 1.0 && counted == 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} connections open, {counted} slow closes counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reader got every post, and still gets new ones.
    h.create_post(&a, &c, "after").await;
    posts += 1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    assert_eq!(reading.await.unwrap(), posts);
    // What a slow client finds when it reads again: its buffered events, then the end.
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = slow[0].s.next().await {
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the slow socket was closed");
    assert!(matches!(end, None | Some(4002)), "{end:?}");
}

#[tokio::test]
async fn shutdown_sends_close_frames() {
    let h = Harness::start().await;
    let a = h.user("alice").await;
    let mut w = h.ws(&a).await;
    w.event_named("hello").await;
    let stopping = tokio::spawn(h.stop());
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = w.s.next().await {
            if let Ok(Message::Close(f)) = msg {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1001));
    stopping.await.unwrap();
}

/// The close code the server sends next, skipping other frames (`None` if it sends none).
async fn close_code(w: &mut Ws) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = w.s.next().await {
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn bad_frames_get_a_close_code_and_client_close_is_echoed() {
    let h = Harness::start_with(|c| c.limits.max_ws_frame_bytes = 4096).await;
    let a = h.user("alice").await;

    // Too large a message: 1009, not a silent drop.
    let mut w = h.ws(&a).await;
    w.event_named("hello").await;
    w.s.send(Message::text("x".repeat(10_000))).await.unwrap();
    assert_eq!(close_code(&mut w).await, Some(1009));

    // A text frame that is not UTF-8: 1007.
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let mut w = h.ws(&a).await;
    w.event_named("hello").await;
    let bad = Frame::message(vec![0xff, 0xfe, b'x'], OpCode::Data(Data::Text), true);
    w.s.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(close_code(&mut w).await, Some(1007));

    // Also before authenticating.
    let mut w = h.ws_anonymous("").await;
    w.s.send(Message::text("y".repeat(10_000))).await.unwrap();
    assert_eq!(close_code(&mut w).await, Some(1009));

    // The client closes: the server completes the handshake by echoing the close frame, so the
    // client ends cleanly instead of with "reset without closing handshake".
    for anonymous in [false, true] {
        let mut w = if anonymous {
            h.ws_anonymous("").await
        } else {
            let mut w = h.ws(&a).await;
            w.event_named("hello").await;
            w
        };
        w.s.close(None).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match w.s.next().await {
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(end, Ok(()), "anonymous: {anonymous}");
    }
}

/// Logging out ends the session's WebSockets: the socket is closed (1008, within a bounded
/// time), it gets no more `posted` events, and a resume with its `connection_id` is refused
/// even after logging in again. Another session of the same user is unaffected.
#[tokio::test]
async fn logout_closes_the_sessions_websockets_and_refuses_their_resume() {
    let h = Harness::start().await;
    let a = h.user("author").await;
    let b = h.user("reader").await;
    let t = h.team(&a, "team1").await;
    h.join_team(&a, &t, &b).await;
    let c = h.channel(&a, &t, "chan", "O").await;
    h.join_channel(&a, &c, &b).await;
    let other = h.login("reader").await;

    let mut w = h.ws(&b).await;
    let hello = w.event().await;
    let conn_id = hello["data"]["connection_id"].as_str().unwrap().to_string();
    let mut w2 = h.ws(&other).await;
    assert_eq!(w2.event().await["event"], "hello");
    h.create_post(&a, &c, "before").await;
    assert!(w.sees("posted", Duration::from_secs(5)).await);
    assert!(w2.sees("posted", Duration::from_secs(5)).await);

    let r = h.post("/users/logout", &b.token, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The server closes the socket: a close frame with 1008, then the end of the stream.
    let closed = tokio::time::timeout(Duration::from_secs(5), w.close_code())
        .await
        .expect("the socket of the revoked session was not closed");
    assert_eq!(closed, Some(1008));
    h.create_post(&a, &c, "after").await;
    assert!(
        w2.sees("posted", Duration::from_secs(5)).await,
        "the other session still receives"
    );

    // Resuming the revoked connection is refused, whatever token is used now.
    let again = h.login("reader").await;
    let mut w3 = h
        .ws_query(
            &again,
            &format!("?connection_id={conn_id}&sequence_number=1"),
        )
        .await;
    let hello = w3.event().await;
    assert_eq!(hello["event"], "hello", "{hello}");
    assert_ne!(hello["data"]["connection_id"], conn_id.as_str());
    let m = h.metrics().await;
    assert_eq!(
        support::metric_sum(&m, "chat_websocket_connections"),
        2.0,
        "{m}"
    );
}

/// `limits.max_websockets`: the connection beyond the limit gets 503 with a Mattermost error
/// body; once one closes, a new one is admitted again.
#[tokio::test]
async fn websockets_beyond_the_limit_are_refused_until_one_closes() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let h = Harness::start_with(|c| c.limits.max_websockets = Some(2)).await;
    let a = h.user("limit-a").await;
    let mut first = h.ws(&a).await;
    let _second = h.ws(&a).await;
    let attempt = || async {
        let mut req = h.server.ws_url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", a.token).parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req).await
    };
    match attempt().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(
                body["id"], "api.web_socket.connect.limit.app_error",
                "{body}"
            );
            assert!(
                body["message"].as_str().unwrap().contains("limit of 2"),
                "{body}"
            );
        }
        other => panic!("a third WebSocket was not refused: {:?}", other.map(|_| ())),
    }
    first.s.close(None).await.unwrap();
    // The closed socket's slot is free once its task has ended.
    let mut admitted = false;
    for _ in 0..100 {
        if attempt().await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "no WebSocket admitted after one closed");
    h.stop().await;
}
