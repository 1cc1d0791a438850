//! WebSocket events, serialized once per broadcast and shared by every recipient.
//!
//! An [`Event`] holds the envelope `{"event":…,"data":…,"broadcast":…` as shared text *without*
//! its closing brace. Each connection needs its own contiguous `seq`, so a frame is that shared
//! prefix plus `,"seq":N}` appended at write time: one memcpy per recipient instead of one JSON
//! encode per recipient, and the replay buffer just keeps another reference to the same text.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::model;
use crate::store::{PostEventRow, PostRow};

/// Event types the server emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Hello,
    Posted,
    PostEdited,
    PostDeleted,
    ReactionAdded,
    ReactionRemoved,
    Typing,
    StatusChange,
    ChannelViewed,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Hello => "hello",
            EventKind::Posted => "posted",
            EventKind::PostEdited => "post_edited",
            EventKind::PostDeleted => "post_deleted",
            EventKind::ReactionAdded => "reaction_added",
            EventKind::ReactionRemoved => "reaction_removed",
            EventKind::Typing => "typing",
            EventKind::StatusChange => "status_change",
            EventKind::ChannelViewed => "channel_viewed",
        }
    }

    /// The inverse of [`EventKind::name`].
    pub fn from_name(name: &str) -> Option<EventKind> {
        [
            EventKind::Hello,
            EventKind::Posted,
            EventKind::PostEdited,
            EventKind::PostDeleted,
            EventKind::ReactionAdded,
            EventKind::ReactionRemoved,
            EventKind::Typing,
            EventKind::StatusChange,
            EventKind::ChannelViewed,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Events a congested connection may lose without the client's state going wrong
    /// (Mattermost drops the same two at half-full queues).
    pub fn droppable(self) -> bool {
        matches!(self, EventKind::Typing | EventKind::StatusChange)
    }
}

/// Who an event is addressed to, as the `broadcast` object of the envelope.
#[derive(Debug, Default, Serialize)]
pub struct Broadcast<'a> {
    #[serde(serialize_with = "omit_users")]
    pub omit_users: Option<&'a str>,
    pub user_id: &'a str,
    pub channel_id: &'a str,
    pub team_id: &'a str,
}

fn omit_users<S: serde::Serializer>(v: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match v {
        None => s.serialize_none(),
        Some(u) => {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(u, &true)?;
            m.end()
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    event: &'static str,
    data: D,
    broadcast: Broadcast<'a>,
}

/// A serialized event shared by all its recipients. One thin pointer: every connection's replay
/// buffer and send queue hold a clone of it per event, so at 30,000 connections with a
/// 128-event replay buffer each, 8 bytes instead of 24 per entry is megabytes.
#[derive(Clone, Debug)]
pub struct Event(Arc<Shared>);

/// What [`Event::frame`] adds to the envelope besides the digits: `,"seq":` and `}`.
const FRAME_SEQ_FIXED: usize = 8;

#[derive(Debug)]
struct Shared {
    kind: EventKind,
    /// The envelope without its closing `}`.
    body: Box<str>,
}

impl Event {
    pub fn new<D: Serialize>(kind: EventKind, data: D, broadcast: Broadcast<'_>) -> Event {
        let env = Envelope {
            event: kind.name(),
            data,
            broadcast,
        };
        let mut text = serde_json::to_string(&env).unwrap_or_else(|e| {
            // Our data types always serialize; keep the stream well-formed regardless.
            tracing::error!("serializing {} event: {e}", kind.name());
            format!(r#"{{"event":"{}","data":{{}}}}"#, kind.name())
        });
        text.pop(); // the closing brace; `frame` puts it back after `seq`
        Event::from_body(kind, text)
    }

    pub fn kind(&self) -> EventKind {
        self.0.kind
    }

    /// The shared envelope without its closing brace, as relayed to other instances by the bus.
    pub fn body(&self) -> &str {
        &self.0.body
    }

    /// An event from another instance's [`Event::body`], used as is (no re-encoding).
    pub fn from_body(kind: EventKind, body: String) -> Event {
        Event(Arc::new(Shared {
            kind,
            body: body.into_boxed_str(),
        }))
    }

    /// The frame for one connection: the shared envelope with this connection's `seq` spliced in.
    ///
    /// Allocated at exactly its length: the socket writer hands it to the WebSocket layer as
    /// `Bytes`, which takes a full buffer over as it is, while a buffer with spare capacity costs
    /// it a second allocation and an atomic reference count (`bytes::shared_drop` was 3 % of the
    /// server's CPU at 42,000 deliveries a second).
    pub fn frame(&self, seq: u64) -> String {
        let body = self.body();
        let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
        let mut s = String::with_capacity(body.len() + FRAME_SEQ_FIXED + digits);
        s.push_str(body);
        // Writing into a String cannot fail.
        let _ = write!(s, ",\"seq\":{seq}}}");
        debug_assert_eq!(s.len(), s.capacity());
        s
    }

    /// Size of the shared part, for tests and capacity planning.
    pub fn shared_len(&self) -> usize {
        self.0.body.len()
    }
}

/// A reply to a client action: `{"status":…,"seq_reply":N[,"data":…][,"error":…]}`; no `seq`.
pub fn reply<D: Serialize>(seq_reply: i64, status: &str, data: Option<D>) -> String {
    #[derive(Serialize)]
    struct Reply<'a, D: Serialize> {
        status: &'a str,
        seq_reply: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<D>,
    }
    serde_json::to_string(&Reply {
        status,
        seq_reply,
        data,
    })
    .unwrap_or_else(|_| format!(r#"{{"status":"FAIL","seq_reply":{seq_reply}}}"#))
}

/// A failed action's reply, with Mattermost's `error` object.
pub fn error_reply(seq_reply: i64, id: &str, message: &str) -> String {
    serde_json::json!({
        "status": "FAIL",
        "seq_reply": seq_reply,
        "error": {"id": id, "message": message},
    })
    .to_string()
}

/// The channel fields a post event carries.
pub struct PostChannel<'a> {
    pub id: &'a str,
    pub team_id: &'a str,
    pub name: &'a str,
    pub display_name: &'a str,
    pub kind: &'a str,
}

/// Builds a post event (`posted`, `post_edited`, `post_deleted`); `sender` is `@username` or "".
pub fn post_event(kind: EventKind, ch: &PostChannel<'_>, post: &PostRow, sender: &str) -> Event {
    let post_json = serde_json::to_string(&model::post(post, "")).unwrap_or_default();
    let data = match kind {
        EventKind::Posted => json!({
            "channel_display_name": ch.display_name,
            "channel_name": ch.name,
            "channel_type": ch.kind,
            "post": post_json,
            "sender_name": sender,
            "set_online": true,
            "team_id": ch.team_id,
        }),
        _ => json!({"post": post_json}),
    };
    Event::new(
        kind,
        data,
        Broadcast {
            channel_id: ch.id,
            ..Broadcast::default()
        },
    )
}

/// Rebuilds a post event from a post loaded by another instance (the bus relays large post
/// events by reference); identical to the sender's for an unchanged post.
pub fn relayed_post_event(kind: EventKind, row: &PostEventRow) -> Event {
    let ch = PostChannel {
        id: &row.post.channel_id,
        team_id: &row.ch_team_id,
        name: &row.ch_name,
        display_name: &row.ch_display_name,
        kind: &row.ch_kind,
    };
    let sender = match kind {
        EventKind::Posted if !row.sender_username.is_empty() => format!("@{}", row.sender_username),
        _ => String::new(),
    };
    post_event(kind, &ch, &row.post, &sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_spliced_into_shared_body() {
        let ev = Event::new(
            EventKind::Typing,
            serde_json::json!({"parent_id": "", "user_id": "u1"}),
            Broadcast {
                omit_users: Some("u1"),
                channel_id: "c1",
                ..Broadcast::default()
            },
        );
        for seq in [0u64, 7, 9, 10, 99, 100, 123_456, u64::MAX] {
            let frame = ev.frame(seq);
            // Exactly as long as its buffer, so `Bytes` takes it over without a second allocation.
            assert_eq!(frame.len(), frame.capacity(), "seq {seq}");
            let v: serde_json::Value = serde_json::from_str(&frame).expect("valid json");
            assert_eq!(v["seq"], seq);
            assert_eq!(v["event"], "typing");
            assert_eq!(v["broadcast"]["omit_users"]["u1"], true);
            assert_eq!(v["broadcast"]["channel_id"], "c1");
            assert_eq!(v["data"]["user_id"], "u1");
        }
        assert!(ev.frame(1).len() > ev.shared_len());
    }

    #[test]
    fn omit_users_null_when_unset_and_replies_have_no_seq() {
        let ev = Event::new(
            EventKind::Posted,
            serde_json::json!({}),
            Broadcast::default(),
        );
        let v: serde_json::Value = serde_json::from_str(&ev.frame(3)).expect("json");
        assert!(v["broadcast"]["omit_users"].is_null());
        let r: serde_json::Value =
            serde_json::from_str(&reply(4, "OK", Some(serde_json::json!({"text": "pong"}))))
                .expect("json");
        assert_eq!(r["seq_reply"], 4);
        assert_eq!(r["data"]["text"], "pong");
        assert!(r.get("seq").is_none());
    }

    #[test]
    fn only_typing_and_status_are_droppable() {
        assert!(EventKind::Typing.droppable());
        assert!(EventKind::StatusChange.droppable());
        assert!(!EventKind::Posted.droppable());
        assert!(!EventKind::Hello.droppable());
    }
}
