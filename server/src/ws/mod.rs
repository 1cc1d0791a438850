//! The WebSocket gateway `/api/v4/websocket`: authentication (at upgrade or by
//! `authentication_challenge`), `hello`, resuming with `connection_id` + `sequence_number`, client
//! actions, and the per-socket task that writes queued events.
//!
//! One task per socket does both directions; it batches whatever is queued into one flush, so a
//! burst of events costs one syscall rather than one per event.

pub mod conn;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Shared;
use crate::auth::token_from_request;
use crate::error::ApiError;
use crate::event::{error_reply, reply, Broadcast, Event, EventKind};
use crate::ids::new_id;
use conn::{Attachment, Conn, Outbound};

/// Reported in `hello` as `server_version`.
pub const SERVER_VERSION: &str = concat!("9.11.0.chat-server.", env!("CARGO_PKG_VERSION"));

/// How long an unauthenticated socket may wait before sending `authentication_challenge`.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-initiated ping period; a socket silent for three periods is considered dead.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Longest a write to a socket may block (a client that stopped reading) before it is closed.
const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest the closing handshake may take before the socket is simply dropped.
const CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);
/// Close code for a connection whose session was revoked (logout): policy violation.
const CLOSE_REVOKED: u16 = 1008;
/// Close code for a connection dropped because it could not keep up (Mattermost closes too).
const CLOSE_SLOW: u16 = 4002;

#[derive(Deserialize, Default)]
pub struct WsParams {
    #[serde(default)]
    connection_id: String,
    sequence_number: Option<i64>,
}

pub async fn upgrade(
    State(st): State<Shared>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    crate::api::Q(params): crate::api::Q<WsParams>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // A token at upgrade must be valid; without one the client authenticates in-band.
    let user = match token_from_request(&headers, uri.query()) {
        Some(t) => Some((
            st.auth
                .user_for_token(&t)
                .await?
                .ok_or_else(ApiError::unauthorized)?,
            Arc::from(crate::auth::hash_token(&t)),
        )),
        None => None,
    };
    let l = &st.config.limits;
    let ws = ws
        .read_buffer_size(l.ws_read_buffer_bytes)
        .write_buffer_size(l.ws_write_buffer_bytes)
        .max_write_buffer_size(l.ws_write_buffer_bytes.max(l.max_ws_frame_bytes) * 64)
        .max_message_size(l.max_ws_frame_bytes)
        .max_frame_size(l.max_ws_frame_bytes);
    let admitted = Admitted::new(&st)?;
    let tracker = st.ws_tasks.clone();
    // Held from here until the socket's task is tracked: a shutdown waits for an upgrade still
    // under way too, so its socket also gets its close frame.
    let upgrading = st.ws_tasks.token();
    let sockets = st.sockets.clone();
    Ok(ws
        .on_upgrade(move |socket| {
            // On the sockets' runtime, so that the HTTP requests are not queued behind them.
            sockets.spawn(tracker.track_future(async move {
                serve(st, socket, user, params).await;
                drop(admitted);
            }));
            drop(upgrading);
            std::future::ready(())
        })
        .into_response())
}

/// One admitted WebSocket, counted against `limits.max_websockets` until it ends (or its
/// upgrade fails).
struct Admitted(Shared);

impl Admitted {
    fn new(st: &Shared) -> Result<Admitted, ApiError> {
        use std::sync::atomic::Ordering;
        let max = st.config.limits.max_websockets.unwrap_or(usize::MAX);
        st.ws_admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|n| {
                ApiError::Unavailable(
                    "api.web_socket.connect.limit.app_error",
                    format!(
                        "This server holds its limit of {n} WebSocket connections; retry later."
                    ),
                )
            })?;
        Ok(Admitted(st.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0
            .ws_admitted
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
struct Action {
    #[serde(default)]
    seq: i64,
    #[serde(default)]
    action: String,
    #[serde(default)]
    data: Value,
}

async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .is_ok()
}

/// Ends a socket whose kick fired: the server shutting down, or its connection revoked (logout),
/// too slow (counted here, once the close has happened) or taken over by a newer socket.
async fn ended_close(st: &Shared, socket: &mut WebSocket, conn: &Conn) {
    if st.shutdown.is_cancelled() {
        close(socket, 1001, "server shutting down").await;
    } else if conn.is_revoked() {
        close(socket, CLOSE_REVOKED, "session revoked").await;
    } else if conn.take_slow() {
        close(socket, CLOSE_SLOW, "too slow").await;
        st.metrics.slow_closed.inc();
    } else {
        close(socket, CLOSE_SLOW, "superseded").await;
    }
}

/// Sends a close frame, or, when the client closed first, flushes the echo of its close frame
/// that the protocol layer queued, so the closing handshake completes either way. Bounded by
/// [`CLOSE_DEADLINE`]: a client that does not read gets its socket dropped instead.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        let sent = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
        if sent.is_err() {
            let _ = socket.flush().await;
        }
    })
    .await;
}

/// The close code and reason for a frame the client should not have sent (RFC 6455 §7.4.1);
/// `None` when the connection itself failed and nothing can be sent.
fn close_for(e: axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>()? {
        WsError::Capacity(_) => Some((1009, "message too big")),
        WsError::Utf8(_) => Some((1007, "invalid UTF-8 in a text message")),
        WsError::Protocol(_) => Some((1002, "protocol error")),
        _ => None,
    }
}

/// Waits for a valid `authentication_challenge`; answers it and returns the user.
/// The user and session (`auth::hash_token`) of a socket that authenticated in-band.
async fn challenge(st: &Shared, socket: &mut WebSocket) -> Option<(Arc<str>, Arc<str>)> {
    let deadline = tokio::time::sleep(AUTH_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            _ = &mut deadline => return None,
            _ = st.shutdown.cancelled() => return None,
            m = socket.recv() => m?,
        };
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) => return None,
            Err(e) => {
                if let Some((code, reason)) = close_for(e) {
                    close(socket, code, reason).await;
                }
                return None;
            }
            Ok(_) => continue,
        };
        let Ok(a) = serde_json::from_str::<Action>(&text) else {
            continue;
        };
        if a.action != "authentication_challenge" {
            send_text(
                socket,
                error_reply(
                    a.seq,
                    "api.web_socket_router.not_authenticated.app_error",
                    "authenticate first",
                ),
            )
            .await;
            continue;
        }
        let token = a.data.get("token").and_then(Value::as_str).unwrap_or("");
        // On the HTTP runtime: a connection the store opens belongs to the runtime it opened on.
        let lookup = {
            let (st, token) = (st.clone(), token.to_string());
            st.api
                .clone()
                .spawn(async move { st.auth.user_for_token(&token).await })
        };
        match lookup.await {
            Ok(Ok(Some(uid))) => {
                send_text(socket, reply::<Value>(a.seq, "OK", None)).await;
                return Some((uid, Arc::from(crate::auth::hash_token(token))));
            }
            _ => {
                send_text(
                    socket,
                    error_reply(
                        a.seq,
                        "api.web_socket_router.bad_token.app_error",
                        "invalid token",
                    ),
                )
                .await;
            }
        }
    }
}

async fn serve(
    st: Shared,
    mut socket: WebSocket,
    user: Option<(Arc<str>, Arc<str>)>,
    params: WsParams,
) {
    let (user, session) = match user {
        Some(u) => u,
        None => match Box::pin(challenge(&st, &mut socket)).await {
            Some(u) => u,
            None => {
                Box::pin(close(&mut socket, 1008, "authentication required")).await;
                return;
            }
        },
    };
    let limits = &st.config.limits;
    // Resume when the client names a connection of its own whose missed events we still hold.
    let resumed = if params.connection_id.is_empty() {
        None
    } else {
        st.hub
            .find_conn(&params.connection_id)
            .filter(|c| c.user_id == user && c.session == session && !c.is_revoked())
            .and_then(|c| {
                let from = u64::try_from(params.sequence_number.unwrap_or(0)).ok()?;
                c.attach(Some(from), &st.shutdown).map(|a| (c, a))
            })
    };
    let (conn, attachment) = match resumed {
        Some(pair) => pair,
        None => {
            let conn = Arc::new(Conn::new(
                new_id(),
                user.clone(),
                session.clone(),
                limits.send_queue,
                limits.replay_buffer,
            ));
            let Some(a) = conn.attach(None, &st.shutdown) else {
                return;
            };
            st.hub.register(conn.clone());
            let hello = Event::new(
                EventKind::Hello,
                json!({
                    "connection_id": conn.id,
                    "server_version": SERVER_VERSION,
                    "server_hostname": "",
                }),
                Broadcast {
                    user_id: &user,
                    ..Broadcast::default()
                },
            );
            st.hub.send_conn(&conn, &hello);
            (conn, a)
        }
    };
    st.hub.socket_attached(&user);
    pump(&st, &mut socket, &conn, attachment).await;
    st.hub.socket_detached(&user);
}

/// Moves queued frames to the socket and client actions to the server until either side ends.
async fn pump(st: &Shared, socket: &mut WebSocket, conn: &Arc<Conn>, a: Attachment) {
    let Attachment {
        mut rx,
        kick,
        generation,
    } = a;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut silent_ticks = 0u32;
    // Created once: re-creating it on every wake-up showed up in profiles. The kick is a child
    // of the server's shutdown (`Conn::attach`), so this one future ends the pump for both.
    let kicked = kick.cancelled();
    tokio::pin!(kicked);
    loop {
        tokio::select! {
            biased;
            _ = &mut kicked => {
                Box::pin(ended_close(st, socket, conn)).await;
                break;
            }
            out = rx.recv() => {
                let Some(first) = out else { break };
                // A client that stops reading blocks this write once the kernel's buffers are
                // full: a kick (queue full, logout) or the write deadline ends the wait.
                tokio::select! {
                    biased;
                    _ = &mut kicked => {
                        Box::pin(ended_close(st, socket, conn)).await;
                        break;
                    }
                    // Boxed, like every path here that is not waiting: the task of each of
                    // 30,000 idle sockets is then only as big as its waiting state.
                    wrote = Box::pin(tokio::time::timeout(WRITE_DEADLINE, write_batch(socket, first, &mut rx))) => {
                        if !matches!(wrote, Ok(true)) {
                            break;
                        }
                    }
                }
            }
            msg = socket.recv() => {
                silent_ticks = 0;
                match msg {
                    Some(Ok(Message::Text(t))) => handle_action(st, conn, &t),
                    Some(Ok(Message::Close(_))) => {
                        Box::pin(close(socket, 1000, "")).await;
                        break;
                    }
                    Some(Err(e)) => {
                        if let Some((code, reason)) = close_for(e) {
                            Box::pin(close(socket, code, reason)).await;
                        }
                        break;
                    }
                    None => break,
                    // Pings are answered by the protocol layer; pongs just prove liveness.
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                silent_ticks += 1;
                let pinged = Box::pin(tokio::time::timeout(WRITE_DEADLINE, socket.send(Message::Ping(bytes::Bytes::new())))).await;
                if silent_ticks > 3 || !matches!(pinged, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    conn.detach(generation);
}

/// Writes `first` and whatever else is already queued (bounded), then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    first: Outbound,
    rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
) -> bool {
    fn text(o: Outbound) -> String {
        match o {
            Outbound::Event { seq, event } => event.frame(seq),
            Outbound::Reply(r) => r.into_string(),
        }
    }
    if socket
        .feed(Message::Text(Utf8Bytes::from(text(first))))
        .await
        .is_err()
    {
        return false;
    }
    for _ in 0..64 {
        match rx.try_recv() {
            Ok(o) => {
                if socket
                    .feed(Message::Text(Utf8Bytes::from(text(o))))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Err(_) => break,
        }
    }
    socket.flush().await.is_ok()
}

fn handle_action(st: &Shared, conn: &Arc<Conn>, text: &str) {
    let Ok(a) = serde_json::from_str::<Action>(text) else {
        conn.reply(error_reply(
            0,
            "api.web_socket_router.bad_json.app_error",
            "invalid JSON",
        ));
        return;
    };
    let r = match a.action.as_str() {
        "ping" => reply(
            a.seq,
            "OK",
            Some(json!({
                "text": "pong",
                "version": SERVER_VERSION,
                "server_time": crate::ids::now_ms(),
                "node_id": "",
            })),
        ),
        "authentication_challenge" => reply::<Value>(a.seq, "OK", None),
        "user_typing" => {
            let channel = a
                .data
                .get("channel_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            let parent = a
                .data
                .get("parent_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if st.hub.is_channel_member(channel, &conn.user_id) {
                crate::api::status::publish_typing(st, &conn.user_id, channel, parent);
                reply::<Value>(a.seq, "OK", None)
            } else {
                error_reply(
                    a.seq,
                    "api.context.permissions.app_error",
                    "not a channel member",
                )
            }
        }
        "get_statuses" => {
            let map: serde_json::Map<String, Value> = st
                .hub
                .online_users()
                .into_iter()
                .map(|u| {
                    let s = st.hub.status(&u).0;
                    (u.to_string(), Value::String(s))
                })
                .collect();
            reply(a.seq, "OK", Some(Value::Object(map)))
        }
        "get_statuses_by_ids" => {
            let ids = a
                .data
                .get("user_ids")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let map: serde_json::Map<String, Value> = ids
                .iter()
                .filter_map(Value::as_str)
                .take(1000)
                .map(|u| (u.to_string(), Value::String(st.hub.status(u).0)))
                .collect();
            reply(a.seq, "OK", Some(Value::Object(map)))
        }
        _ => error_reply(
            a.seq,
            "api.web_socket_router.bad_action.app_error",
            "unknown action",
        ),
    };
    conn.reply(r);
}
