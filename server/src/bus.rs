//! The cross-instance event bus, PostgreSQL only: several servers on one database keep their
//! in-memory membership index and their WebSocket fan-out in step through `LISTEN/NOTIFY` on one
//! channel, [`CHANNEL`]. SQLite runs a single instance and has no bus at all.
//!
//! After a commit, a handler applies a membership change to its own hub and hands the change (or a
//! WebSocket event it just fanned out locally) to the [`Publisher`]: one compact text line per
//! message, tagged with this instance's random id. A background task sends queued lines in
//! batches (one `pg_notify` round trip for up to [`BATCH`] messages) from a bounded queue, so a
//! request never waits for the bus and a stalled database drops bus messages (counted) instead of
//! growing memory. Every instance LISTENs on a dedicated connection, skips its own messages,
//! applies membership deltas to its hub and fans remote events out to its local connections
//! through the same [`Hub`](crate::hub::Hub) path as local ones, so `seq` stays contiguous.
//!
//! Events travel inline as the sender's already-serialized envelope, so receivers neither parse
//! nor re-encode them. NOTIFY payloads are capped near 8000 bytes: a post event that does not
//! fit (posts may have 16k characters) travels as a reference, and each receiver loads all the
//! references of a batch of notifications with one query, never one per recipient.
//!
//! Presence is per instance: a socket makes its user online on the instance that holds it, and
//! the automatic `online`/`offline` `status_change` events stay local. A status set explicitly
//! (`PUT /users/{id}/status`) is propagated, so it is the same everywhere.
//!
//! Notifications are not durable: while the listener is disconnected (PostgreSQL restart, network
//! cut) messages are lost. On reconnect the listener counts `chat_bus_reconnects_total` and
//! reloads the whole membership index from the database; events of the gap are not replayed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, EventKind};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{PostEventRow, Store};

/// The PostgreSQL notification channel every instance listens on.
pub const CHANNEL: &str = "chat_bus";
/// Largest payload we send; PostgreSQL refuses more than 8000 bytes.
pub const MAX_PAYLOAD: usize = 7900;
/// Messages waiting to be published; beyond this they are dropped and counted.
const QUEUE: usize = 8192;
/// Messages per `pg_notify` round trip, and notifications applied per receive batch.
pub const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot listen for bus notifications: {0}")]
    Listen(#[from] sqlx::Error),
}

/// Who a relayed event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connected member of a channel (except `omit`).
    Channel(String),
    /// Every connection of one user.
    User(String),
}

/// One bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An event as serialized by the sender ([`Event::body`]).
    Event {
        target: Target,
        omit: Option<String>,
        kind: EventKind,
        body: String,
    },
    /// A post event too large to inline; receivers rebuild it from the post.
    PostRef {
        kind: EventKind,
        post_id: String,
    },
    TeamMemberAdded {
        team_id: String,
        user_id: String,
    },
    ChannelCreated {
        channel_id: String,
        team_id: String,
        kind: String,
    },
    ChannelMemberAdded {
        channel_id: String,
        user_id: String,
    },
    ChannelMemberRemoved {
        channel_id: String,
        user_id: String,
    },
    /// A status set explicitly by the user.
    ManualStatus {
        user_id: String,
        status: String,
    },
    /// A session was revoked (logout): every instance closes its sockets.
    SessionRevoked {
        session: String,
    },
}

impl Message {
    /// Applies a membership or status change to `hub` (no-op for events).
    pub fn apply_to(&self, hub: &Hub) {
        match self {
            Message::TeamMemberAdded { team_id, user_id } => hub.add_team_member(team_id, user_id),
            Message::ChannelCreated {
                channel_id,
                team_id,
                kind,
            } => hub.upsert_channel(channel_id, team_id, kind),
            Message::ChannelMemberAdded {
                channel_id,
                user_id,
            } => hub.add_channel_member(channel_id, user_id),
            Message::ChannelMemberRemoved {
                channel_id,
                user_id,
            } => hub.remove_channel_member(channel_id, user_id),
            Message::ManualStatus { user_id, status } => hub.set_status(user_id, status),
            Message::SessionRevoked { session } => {
                hub.revoke_session(session);
            }
            Message::Event { .. } | Message::PostRef { .. } => {}
        }
    }
}

/// Encodes `instance|n|TAG|fields…`. Ids, kinds and statuses never contain `|`; an event body
/// (arbitrary JSON) is always the last field, so it needs no escaping.
pub fn encode(instance: &str, n: u64, m: &Message) -> String {
    let mut s = String::with_capacity(64);
    // Writing into a String cannot fail.
    let _ = write!(s, "{instance}|{n}|");
    match m {
        Message::Event {
            target,
            omit,
            kind,
            body,
        } => {
            let (t, id) = match target {
                Target::Channel(c) => ("c", c),
                Target::User(u) => ("u", u),
            };
            let omit = omit.as_deref().unwrap_or("");
            s.reserve(body.len() + 64);
            let _ = write!(s, "E|{t}|{id}|{omit}|{}|{body}", kind.name());
        }
        Message::PostRef { kind, post_id } => {
            let _ = write!(s, "P|{}|{post_id}", kind.name());
        }
        Message::TeamMemberAdded { team_id, user_id } => {
            let _ = write!(s, "T|{team_id}|{user_id}");
        }
        Message::ChannelCreated {
            channel_id,
            team_id,
            kind,
        } => {
            let _ = write!(s, "C|{channel_id}|{team_id}|{kind}");
        }
        Message::ChannelMemberAdded {
            channel_id,
            user_id,
        } => {
            let _ = write!(s, "M|{channel_id}|{user_id}");
        }
        Message::ChannelMemberRemoved {
            channel_id,
            user_id,
        } => {
            let _ = write!(s, "R|{channel_id}|{user_id}");
        }
        Message::ManualStatus { user_id, status } => {
            let _ = write!(s, "S|{user_id}|{status}");
        }
        Message::SessionRevoked { session } => {
            let _ = write!(s, "X|{session}");
        }
    }
    s
}

/// Parses [`encode`]'s output into `(instance, message)`; `None` if malformed.
pub fn decode(payload: &str) -> Option<(&str, Message)> {
    let mut head = payload.splitn(4, '|');
    let instance = head.next()?;
    let _n: u64 = head.next()?.parse().ok()?;
    let tag = head.next()?;
    let rest = head.next()?;
    let two = || {
        let (a, b) = rest.split_once('|')?;
        (!a.is_empty() && !b.is_empty() && !b.contains('|')).then(|| (a.to_string(), b.to_string()))
    };
    let m = match tag {
        "E" => {
            let mut f = rest.splitn(5, '|');
            let target = match (f.next()?, f.next()?) {
                ("c", id) if !id.is_empty() => Target::Channel(id.to_string()),
                ("u", id) if !id.is_empty() => Target::User(id.to_string()),
                _ => return None,
            };
            let omit = Some(f.next()?)
                .filter(|o| !o.is_empty())
                .map(str::to_string);
            let kind = EventKind::from_name(f.next()?)?;
            let body = f.next()?.to_string();
            Message::Event {
                target,
                omit,
                kind,
                body,
            }
        }
        "P" => {
            let (kind, post_id) = two()?;
            Message::PostRef {
                kind: EventKind::from_name(&kind)?,
                post_id,
            }
        }
        "T" => {
            let (team_id, user_id) = two()?;
            Message::TeamMemberAdded { team_id, user_id }
        }
        "C" => {
            let mut f = rest.split('|');
            let (c, t, k) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || c.is_empty() || t.is_empty() || k.is_empty() {
                return None;
            }
            Message::ChannelCreated {
                channel_id: c.into(),
                team_id: t.into(),
                kind: k.into(),
            }
        }
        "M" => {
            let (channel_id, user_id) = two()?;
            Message::ChannelMemberAdded {
                channel_id,
                user_id,
            }
        }
        "R" => {
            let (channel_id, user_id) = two()?;
            Message::ChannelMemberRemoved {
                channel_id,
                user_id,
            }
        }
        "S" => {
            let (user_id, status) = two()?;
            Message::ManualStatus { user_id, status }
        }
        "X" if !rest.is_empty() && !rest.contains('|') => Message::SessionRevoked {
            session: rest.to_string(),
        },
        _ => return None,
    };
    Some((instance, m))
}

/// Queues messages for the other instances; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    instance: String,
    /// Makes every payload unique: PostgreSQL folds identical payloads sent in one transaction,
    /// and a batch is one transaction (two identical `typing` events would become one).
    next: AtomicU64,
    tx: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn drop_counted(&self, reason: &str) {
        self.inner
            .metrics
            .bus_dropped
            .with_label_values(&[reason])
            .inc();
    }

    fn enqueue(&self, payload: String) {
        match self.inner.tx.try_send(payload) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.drop_counted("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.drop_counted("stopped"),
        }
    }

    fn encode(&self, m: &Message) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        encode(&self.inner.instance, n, m)
    }

    /// Publishes a membership or status change.
    pub fn publish(&self, m: &Message) {
        let payload = self.encode(m);
        if payload.len() > MAX_PAYLOAD {
            self.drop_counted("too_large");
            return;
        }
        self.enqueue(payload);
    }

    /// Publishes an event this instance just fanned out. A post event (`post_id` set) that is
    /// too large to inline goes as a reference; any other oversized event (only a `typing`
    /// with an absurd `parent_id` can be) is not relayed.
    pub fn publish_event(
        &self,
        target: Target,
        omit: Option<&str>,
        ev: &Event,
        post_id: Option<&str>,
    ) {
        let payload = self.encode(&Message::Event {
            target,
            omit: omit.map(str::to_string),
            kind: ev.kind(),
            body: ev.body().to_string(),
        });
        if payload.len() <= MAX_PAYLOAD {
            return self.enqueue(payload);
        }
        match post_id {
            Some(id) => self.publish(&Message::PostRef {
                kind: ev.kind(),
                post_id: id.to_string(),
            }),
            None => self.drop_counted("too_large"),
        }
    }
}

/// A bus that is listening but whose tasks have not started yet (see [`Bus::connect`]).
pub struct Bus {
    pub publisher: Publisher,
    rx: mpsc::Receiver<String>,
    listener: PgListener,
    pool: PgPool,
    url: String,
}

impl Bus {
    /// Opens the dedicated listener connection and LISTENs, *before* the caller loads membership
    /// from the database, so no change committed in between can be missed.
    pub async fn connect(url: &str, pool: PgPool, metrics: Arc<Metrics>) -> Result<Bus, BusError> {
        let listener = listen(url).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let publisher = Publisher {
            inner: Arc::new(PublisherInner {
                instance: crate::ids::new_id(),
                next: AtomicU64::new(0),
                tx,
                metrics,
            }),
        };
        Ok(Bus {
            publisher,
            rx,
            listener,
            pool,
            url: url.to_string(),
        })
    }

    /// Starts the publishing and receiving tasks; both end when `shutdown` is cancelled.
    pub fn spawn(
        self,
        relay: Relay,
        shutdown: CancellationToken,
    ) -> [tokio::task::JoinHandle<()>; 2] {
        let metrics = relay.metrics.clone();
        let instance = self.publisher.instance().to_string();
        [
            tokio::spawn(publish_loop(self.pool, self.rx, metrics, shutdown.clone())),
            tokio::spawn(listen_loop(
                self.listener,
                self.url,
                instance,
                Arc::new(relay),
                shutdown,
            )),
        ]
    }
}

/// What received messages are applied to: the instance's hub, its store (to load posts relayed
/// by reference and to rebuild membership after a gap) and its metrics.
pub struct Relay {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
}

async fn publish_loop(
    pool: PgPool,
    mut rx: mpsc::Receiver<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    loop {
        // Messages already queued go out before we stop, so a post's event is not lost to a
        // shutdown that raced it.
        let first = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        // One statement, one transaction: notifications are delivered in this order.
        let r = sqlx::query("SELECT pg_notify($1, m) FROM unnest($2::text[]) AS t(m)")
            .bind(CHANNEL)
            .bind(&batch)
            .execute(&pool)
            .await;
        match r {
            Ok(_) => metrics.bus_published.inc_by(n),
            Err(e) => {
                tracing::warn!("publishing {n} bus message(s) failed, dropping them: {e}");
                metrics
                    .bus_dropped
                    .with_label_values(&["publish_failed"])
                    .inc_by(n);
            }
        }
        batch.clear();
    }
}

/// A dedicated connection (not one of the pool's, which it would hold forever) listening on
/// [`CHANNEL`].
async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// After a gap in notifications: count it and rebuild membership from the database.
async fn resync(st: &Relay) {
    st.metrics.bus_reconnects.inc();
    tracing::warn!("bus listener reconnected; reloading membership (events of the gap are lost)");
    if let Err(e) = st.hub.load_membership(&st.store).await {
        tracing::error!("reloading membership after a bus reconnect: {e}");
    }
}

async fn listen_loop(
    mut listener: PgListener,
    url: String,
    instance: String,
    st: Arc<Relay>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.try_recv() => r,
        };
        match r {
            Ok(Some(first)) => {
                backoff = Duration::from_millis(100);
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match listener.next_buffered() {
                        Some(n) => batch.push(n),
                        None => break,
                    }
                }
                apply_batch(&st, &instance, &batch).await;
            }
            // The connection was lost and PgListener is listening again (eager reconnect):
            // whatever was published in between is gone.
            Ok(None) => resync(&st).await,
            Err(e) => {
                // A terminated backend can surface as an error PgListener does not recover
                // from by itself, so start over with a new listener (LISTEN first, then reload).
                tracing::warn!("bus listener: {e}; reconnecting in {backoff:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                match listen(&url).await {
                    Ok(l) => {
                        listener = l;
                        resync(&st).await;
                    }
                    Err(e) => tracing::warn!("bus listener reconnect failed: {e}"),
                }
            }
        }
    }
}

/// Applies one batch of notifications in order, loading every referenced post with one query.
async fn apply_batch(st: &Relay, me: &str, batch: &[PgNotification]) {
    let mut msgs = Vec::with_capacity(batch.len());
    for n in batch {
        match decode(n.payload()) {
            Some((from, _)) if from == me => {}
            Some((_, m)) => msgs.push(m),
            None => {
                st.metrics
                    .bus_dropped
                    .with_label_values(&["malformed"])
                    .inc();
                tracing::warn!("ignoring a malformed bus message");
            }
        }
    }
    if msgs.is_empty() {
        return;
    }
    st.metrics.bus_received.inc_by(msgs.len() as u64);
    let mut ids: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::PostRef { post_id, .. } => Some(post_id.clone()),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let posts: HashMap<String, PostEventRow> = if ids.is_empty() {
        HashMap::new()
    } else {
        match st.store.post_events(&ids).await {
            Ok(rows) => rows.into_iter().map(|r| (r.post.id.clone(), r)).collect(),
            Err(e) => {
                tracing::warn!("loading {} relayed post(s): {e}", ids.len());
                HashMap::new()
            }
        }
    };
    for m in msgs {
        match m {
            Message::Event {
                target,
                omit,
                kind,
                body,
            } => {
                let ev = Event::from_body(kind, body);
                match target {
                    Target::Channel(c) => {
                        st.hub.broadcast_channel(&c, &ev, omit.as_deref());
                    }
                    Target::User(u) => {
                        st.hub.send_user(&u, &ev);
                    }
                }
            }
            Message::PostRef { kind, post_id } => match posts.get(&post_id) {
                Some(row) => {
                    let ev = crate::event::relayed_post_event(kind, row);
                    st.hub.broadcast_channel(&row.post.channel_id, &ev, None);
                }
                None => st
                    .metrics
                    .bus_dropped
                    .with_label_values(&["post_missing"])
                    .inc(),
            },
            other => other.apply_to(&st.hub),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            Message::Event {
                target: Target::Channel("c1".into()),
                omit: Some("u1".into()),
                kind: EventKind::Typing,
                body: r#"{"event":"typing","data":{"a":"x|y"}"#.into(),
            },
            Message::Event {
                target: Target::User("u2".into()),
                omit: None,
                kind: EventKind::ChannelViewed,
                body: "{}".into(),
            },
            Message::PostRef {
                kind: EventKind::Posted,
                post_id: "p1".into(),
            },
            Message::TeamMemberAdded {
                team_id: "t".into(),
                user_id: "u".into(),
            },
            Message::ChannelCreated {
                channel_id: "c".into(),
                team_id: "t".into(),
                kind: "O".into(),
            },
            Message::ChannelMemberAdded {
                channel_id: "c".into(),
                user_id: "u".into(),
            },
            Message::ChannelMemberRemoved {
                channel_id: "c".into(),
                user_id: "u".into(),
            },
            Message::ManualStatus {
                user_id: "u".into(),
                status: "dnd".into(),
            },
            Message::SessionRevoked {
                session: "ab12".into(),
            },
        ];
        for (i, m) in msgs.iter().enumerate() {
            let text = encode("inst", i as u64, m);
            assert_eq!(decode(&text), Some(("inst", m.clone())), "{text}");
        }
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        for p in [
            "",
            "inst",
            "inst|x|T|a|b",
            "inst|1|Z|a|b",
            "inst|1|T|a",
            "inst|1|T|a|b|c",
            "inst|1|E|c|ch|u|nope|{}",
            "inst|1|E|x|ch||posted|{}",
            "inst|1|P|posted|",
        ] {
            assert_eq!(decode(p), None, "{p}");
        }
    }
}
