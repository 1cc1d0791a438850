//! Fan-out: who is in which channel, which connections each user has, and delivering an event to
//! all of them.
//!
//! Channel and team membership live here in memory (loaded from the store at startup and updated
//! by the API after each committed change), so a broadcast never queries the database. A
//! broadcast walks the channel's member set and, per member, the user's connections in a sharded
//! registry; each connection gets a reference to the one serialized [`Event`]. Locks are
//! `parking_lot` read locks held only for that walk; queueing is a non-blocking `try_send`.
//! The hub also owns presence: a user is online while at least one socket is attached.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::event::{Broadcast, Event, EventKind};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::ws::conn::{Conn, Offer};

const SHARDS: usize = 64;

/// One shard of the user → connections registry.
/// Keyed with foldhash rather than the standard SipHash: the map is read at every delivery (two
/// hashes of a 26-character id each, the shard's and the map's), and its keys are ids the server
/// made, not input a client chooses.
type UserShard = RwLock<HashMap<Arc<str>, Vec<Arc<Conn>>, foldhash::fast::RandomState>>;

/// What the hub knows about a channel.
pub struct ChannelEntry {
    pub team_id: String,
    pub kind: String,
    members: RwLock<HashSet<Arc<str>>>,
}

pub struct Hub {
    channels: RwLock<HashMap<String, Arc<ChannelEntry>>>,
    teams: RwLock<HashMap<String, HashSet<Arc<str>>>>,
    users: Vec<UserShard>,
    by_conn_id: RwLock<HashMap<String, Arc<Conn>>>,
    online: Mutex<HashMap<Arc<str>, usize>>,
    manual_status: RwLock<HashMap<Arc<str>, String>>,
    hasher: foldhash::fast::RandomState,
    metrics: Arc<Metrics>,
}

/// What one broadcast queued: the count, and the queue depth each delivery found, gathered
/// locally and added to the shared metrics once per broadcast rather than once per delivery.
struct Delivered {
    count: u64,
    depth: prometheus::local::LocalHistogram,
}

impl Delivered {
    fn new(metrics: &Metrics) -> Self {
        Delivered {
            count: 0,
            depth: metrics.ws_queue_depth.local(),
        }
    }

    fn finish(self, metrics: &Metrics) -> u64 {
        metrics.events_delivered.inc_by(self.count);
        self.depth.flush();
        self.count
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: RwLock::new(HashMap::new()),
            teams: RwLock::new(HashMap::new()),
            users: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            by_conn_id: RwLock::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            manual_status: RwLock::new(HashMap::new()),
            hasher: foldhash::fast::RandomState::default(),
            metrics,
        }
    }

    fn shard(&self, user_id: &str) -> &UserShard {
        &self.users[(self.hasher.hash_one(user_id) as usize) % SHARDS]
    }

    // ---- membership index ----

    pub fn upsert_channel(&self, channel_id: &str, team_id: &str, kind: &str) {
        let mut chans = self.channels.write();
        chans.entry(channel_id.to_string()).or_insert_with(|| {
            Arc::new(ChannelEntry {
                team_id: team_id.to_string(),
                kind: kind.to_string(),
                members: RwLock::new(HashSet::new()),
            })
        });
    }

    /// Fills (or refills) the membership index from the database.
    pub async fn load_membership(&self, store: &Store) -> Result<(), StoreError> {
        let channels = store.all_channels().await?;
        let channel_members = store.all_channel_members().await?;
        let team_members = store.all_team_members().await?;
        self.replace_membership(channels, channel_members, team_members);
        Ok(())
    }

    /// Replaces the whole membership index (startup, and after the cross-instance bus lost
    /// messages). Built aside and swapped in, so lookups never see a half-filled index.
    pub fn replace_membership(
        &self,
        channels: Vec<(String, String, String)>,
        channel_members: Vec<(String, String)>,
        team_members: Vec<(String, String)>,
    ) {
        let mut chans: HashMap<String, Arc<ChannelEntry>> = channels
            .into_iter()
            .map(|(id, team_id, kind)| {
                let entry = ChannelEntry {
                    team_id,
                    kind,
                    members: RwLock::new(HashSet::new()),
                };
                (id, Arc::new(entry))
            })
            .collect();
        for (channel, user) in channel_members {
            if let Some(c) = chans.get_mut(&channel) {
                c.members.write().insert(Arc::from(user.as_str()));
            }
        }
        let mut teams: HashMap<String, HashSet<Arc<str>>> = HashMap::new();
        for (team, user) in team_members {
            teams
                .entry(team)
                .or_default()
                .insert(Arc::from(user.as_str()));
        }
        *self.channels.write() = chans;
        *self.teams.write() = teams;
    }

    pub fn channel(&self, channel_id: &str) -> Option<Arc<ChannelEntry>> {
        self.channels.read().get(channel_id).cloned()
    }

    pub fn add_channel_member(&self, channel_id: &str, user_id: &str) {
        if let Some(c) = self.channel(channel_id) {
            c.members.write().insert(Arc::from(user_id));
        }
    }

    pub fn remove_channel_member(&self, channel_id: &str, user_id: &str) {
        if let Some(c) = self.channel(channel_id) {
            c.members.write().remove(user_id);
        }
    }

    pub fn is_channel_member(&self, channel_id: &str, user_id: &str) -> bool {
        self.channel(channel_id)
            .map(|c| c.members.read().contains(user_id))
            .unwrap_or(false)
    }

    pub fn add_team_member(&self, team_id: &str, user_id: &str) {
        self.teams
            .write()
            .entry(team_id.to_string())
            .or_default()
            .insert(Arc::from(user_id));
    }

    pub fn is_team_member(&self, team_id: &str, user_id: &str) -> bool {
        self.teams
            .read()
            .get(team_id)
            .map(|m| m.contains(user_id))
            .unwrap_or(false)
    }

    // ---- connections ----

    pub fn register(&self, conn: Arc<Conn>) {
        self.shard(&conn.user_id)
            .write()
            .entry(conn.user_id.clone())
            .or_default()
            .push(conn.clone());
        self.by_conn_id.write().insert(conn.id.clone(), conn);
    }

    pub fn find_conn(&self, conn_id: &str) -> Option<Arc<Conn>> {
        self.by_conn_id.read().get(conn_id).cloned()
    }

    /// Closes and forgets every connection of `session` (a logout): their sockets are closed by
    /// their writers, and a resume with their `connection_id` finds nothing. Returns how many.
    pub fn revoke_session(&self, session: &str) -> usize {
        let gone: Vec<Arc<Conn>> = self
            .by_conn_id
            .read()
            .values()
            .filter(|c| &*c.session == session)
            .cloned()
            .collect();
        for c in &gone {
            c.revoke();
            self.by_conn_id.write().remove(&c.id);
            let mut shard = self.shard(&c.user_id).write();
            if let Some(conns) = shard.get_mut(&c.user_id) {
                conns.retain(|x| x.id != c.id);
                if conns.is_empty() {
                    shard.remove(&c.user_id);
                }
            }
        }
        gone.len()
    }

    /// Drops connections that have had no socket for longer than `keep`.
    pub fn reap(&self, keep: Duration) {
        let mut gone = Vec::new();
        for shard in &self.users {
            let mut s = shard.write();
            s.retain(|_, conns| {
                conns.retain(|c| match c.detached_since() {
                    Some(t) if t.elapsed() > keep => {
                        gone.push(c.id.clone());
                        false
                    }
                    _ => true,
                });
                !conns.is_empty()
            });
        }
        if !gone.is_empty() {
            let mut ids = self.by_conn_id.write();
            for id in gone {
                ids.remove(&id);
            }
        }
    }

    fn account(&self, offer: Offer, delivered: &mut Delivered) {
        match offer {
            Offer::Queued { ahead } => {
                delivered.count += 1;
                delivered.depth.observe(ahead as f64);
            }
            Offer::Dropped => self
                .metrics
                .events_dropped
                .with_label_values(&["queue_half_full"])
                .inc(),
            // `slow_closed` is counted by the socket's task once the close has happened.
            Offer::ClosedSlow => self
                .metrics
                .events_dropped
                .with_label_values(&["queue_full"])
                .inc(),
            Offer::Detached | Offer::Skipped => {}
        }
    }

    fn offer_user(&self, user_id: &str, event: &Event, delivered: &mut Delivered) {
        let shard = self.shard(user_id).read();
        if let Some(conns) = shard.get(user_id) {
            for c in conns {
                let o = c.offer(event);
                self.account(o, delivered);
            }
        }
    }

    /// Delivers `event` to every connection of every member of `channel_id` except `omit`.
    /// Returns the number of connections it was queued to.
    pub fn broadcast_channel(&self, channel_id: &str, event: &Event, omit: Option<&str>) -> u64 {
        self.metrics
            .events_broadcast
            .with_label_values(&[event.kind().name()])
            .inc();
        let Some(chan) = self.channel(channel_id) else {
            return 0;
        };
        let mut delivered = Delivered::new(&self.metrics);
        let members = chan.members.read();
        for m in members.iter() {
            if Some(&**m) == omit {
                continue;
            }
            self.offer_user(m, event, &mut delivered);
        }
        drop(members);
        delivered.finish(&self.metrics)
    }

    /// Delivers `event` to every connection of one user.
    pub fn send_user(&self, user_id: &str, event: &Event) -> u64 {
        self.metrics
            .events_broadcast
            .with_label_values(&[event.kind().name()])
            .inc();
        let mut delivered = Delivered::new(&self.metrics);
        self.offer_user(user_id, event, &mut delivered);
        delivered.finish(&self.metrics)
    }

    /// Offers an event to one connection (hello), with the same accounting.
    pub fn send_conn(&self, conn: &Conn, event: &Event) {
        let mut delivered = Delivered::new(&self.metrics);
        let o = conn.offer(event);
        self.account(o, &mut delivered);
        delivered.finish(&self.metrics);
    }

    // ---- presence ----

    /// A socket of `user_id` attached; announces `online` on the first one.
    pub fn socket_attached(&self, user_id: &Arc<str>) {
        self.metrics.ws_connections.inc();
        let first = {
            let mut on = self.online.lock();
            let n = on.entry(user_id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first && !self.manual_status.read().contains_key(user_id) {
            self.announce_status(user_id, "online");
        }
    }

    /// A socket of `user_id` went away; announces `offline` when it was the last one.
    pub fn socket_detached(&self, user_id: &Arc<str>) {
        self.metrics.ws_connections.dec();
        let last = {
            let mut on = self.online.lock();
            match on.get_mut(user_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    on.remove(user_id);
                    true
                }
                None => false,
            }
        };
        if last && !self.manual_status.read().contains_key(user_id) {
            self.announce_status(user_id, "offline");
        }
    }

    fn announce_status(&self, user_id: &str, status: &str) {
        let ev = Event::new(
            EventKind::StatusChange,
            serde_json::json!({"user_id": user_id, "status": status}),
            Broadcast {
                user_id,
                ..Broadcast::default()
            },
        );
        self.send_user(user_id, &ev);
    }

    /// `(status, manual)` of a user: a manually set status wins, else online iff connected.
    pub fn status(&self, user_id: &str) -> (String, bool) {
        if let Some(s) = self.manual_status.read().get(user_id) {
            return (s.clone(), true);
        }
        if self.online.lock().contains_key(user_id) {
            ("online".into(), false)
        } else {
            ("offline".into(), false)
        }
    }

    /// Sets a manual status (`online` clears it back to automatic) and tells the user.
    pub fn set_status(&self, user_id: &str, status: &str) {
        {
            let mut m = self.manual_status.write();
            if status == "online" {
                m.remove(user_id);
            } else {
                m.insert(Arc::from(user_id), status.to_string());
            }
        }
        let (effective, _) = self.status(user_id);
        self.announce_status(user_id, &effective);
    }

    /// Users with at least one socket attached.
    pub fn online_users(&self) -> Vec<Arc<str>> {
        self.online.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::conn::Outbound;

    #[test]
    fn broadcast_reaches_members_only_and_honours_omit() {
        let hub = Hub::new(Metrics::new());
        hub.upsert_channel("c", "t", "O");
        let mut rxs = vec![];
        for u in ["a", "b", "x"] {
            let conn = Arc::new(Conn::new(
                format!("conn-{u}"),
                Arc::from(u),
                Arc::from("s"),
                16,
                16,
            ));
            rxs.push(
                conn.attach(None, &tokio_util::sync::CancellationToken::new())
                    .expect("attach"),
            );
            hub.register(conn);
        }
        hub.add_channel_member("c", "a");
        hub.add_channel_member("c", "b");
        let ev = Event::new(
            EventKind::Typing,
            serde_json::json!({}),
            Broadcast::default(),
        );
        assert_eq!(hub.broadcast_channel("c", &ev, Some("a")), 1);
        assert!(rxs[0].rx.try_recv().is_err());
        assert!(matches!(
            rxs[1].rx.try_recv(),
            Ok(Outbound::Event { seq: 0, .. })
        ));
        assert!(rxs[2].rx.try_recv().is_err());
    }
}
