//! One logical WebSocket connection: its `seq` counter, bounded send queue and replay buffer.
//!
//! A [`Conn`] outlives the socket it is attached to: after a disconnect it stays registered for
//! `replay_keep` so a client that reconnects with `connection_id` + `sequence_number` gets the
//! events it missed. `seq` is assigned under the connection's own mutex at enqueue time, so it is
//! contiguous per connection no matter which task broadcasts, and the replay buffer holds exactly
//! the frames that were (or would have been) sent. Because the seqs are contiguous, the buffer
//! stores only the events (one pointer each) and the seq of its first one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Event;

/// What the socket writer sends.
#[derive(Debug)]
pub enum Outbound {
    Event {
        seq: u64,
        event: Event,
    },
    /// Boxed rather than a `String`: a queue slot is then 24 bytes, not 32.
    Reply(Box<str>),
}

/// Result of offering an event to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued behind `ahead` events already waiting to be written.
    Queued { ahead: usize },
    /// Dropped by policy: a droppable event while the queue is at least half full.
    Dropped,
    /// The queue was full: the connection is being closed.
    ClosedSlow,
    /// No socket attached right now; the event is kept for replay only.
    Detached,
    /// No socket attached and the event is not worth replaying (typing, status).
    Skipped,
}

/// What the queue policy decides for one event; pure so it can be unit tested.
pub fn queue_decision(droppable: bool, free_slots: usize, capacity: usize) -> Offer {
    if free_slots == 0 {
        Offer::ClosedSlow
    } else if droppable && free_slots <= capacity / 2 {
        Offer::Dropped
    } else {
        Offer::Queued {
            ahead: capacity.saturating_sub(free_slots),
        }
    }
}

/// A live socket's side of a connection.
pub struct Attachment {
    pub rx: mpsc::Receiver<Outbound>,
    /// Cancelled when the server gives up on this socket (queue full or taken over).
    pub kick: CancellationToken,
    pub generation: u64,
}

struct Inner {
    next_seq: u64,
    /// The last `ring_cap` events queued, oldest first; the first has seq `ring_first`.
    ring: VecDeque<Event>,
    ring_first: u64,
    tx: Option<mpsc::Sender<Outbound>>,
    kick: CancellationToken,
    generation: u64,
    detached_at: Option<Instant>,
}

pub struct Conn {
    pub id: String,
    pub user_id: Arc<str>,
    /// The session it authenticated with (`auth::hash_token` of its token): a logout of that
    /// session closes it, and only that session may resume it.
    pub session: Arc<str>,
    revoked: std::sync::atomic::AtomicBool,
    /// The queue overflowed: the socket is being closed as too slow.
    slow: std::sync::atomic::AtomicBool,
    queue_cap: usize,
    ring_cap: usize,
    inner: Mutex<Inner>,
}

impl Conn {
    pub fn new(
        id: String,
        user_id: Arc<str>,
        session: Arc<str>,
        queue_cap: usize,
        ring_cap: usize,
    ) -> Conn {
        Conn {
            id,
            user_id,
            session,
            revoked: std::sync::atomic::AtomicBool::new(false),
            slow: std::sync::atomic::AtomicBool::new(false),
            queue_cap,
            ring_cap,
            inner: Mutex::new(Inner {
                next_seq: 0,
                ring: VecDeque::new(),
                ring_first: 0,
                tx: None,
                kick: CancellationToken::new(),
                generation: 0,
                detached_at: Some(Instant::now()),
            }),
        }
    }

    /// Queues `event` with the next `seq`, applying the slow-consumer policy.
    pub fn offer(&self, event: &Event) -> Offer {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let decision = match &inner.tx {
            None => Offer::Detached,
            Some(tx) => queue_decision(event.kind().droppable(), tx.capacity(), self.queue_cap),
        };
        match decision {
            Offer::Dropped => return Offer::Dropped,
            Offer::ClosedSlow => {
                inner.tx = None;
                // Marked before the kick: the socket's task, woken by it on another thread,
                // reads the mark to choose its close code and count the close.
                self.slow.store(true, std::sync::atomic::Ordering::Release);
                inner.kick.cancel();
                inner.detached_at = Some(Instant::now());
                return Offer::ClosedSlow;
            }
            Offer::Detached if event.kind().droppable() => return Offer::Skipped,
            _ => {}
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.ring.len() == self.ring_cap {
            inner.ring.pop_front();
            inner.ring_first += 1;
        }
        if inner.ring.is_empty() {
            inner.ring_first = seq;
        }
        inner.ring.push_back(event.clone());
        if let Some(tx) = &inner.tx {
            if tx
                .try_send(Outbound::Event {
                    seq,
                    event: event.clone(),
                })
                .is_err()
            {
                // Capacity was checked under this lock, so only a vanished receiver gets here.
                inner.tx = None;
                inner.detached_at = Some(Instant::now());
                return Offer::Detached;
            }
        }
        decision
    }

    /// Queues an action reply; `false` if the socket is gone or hopelessly behind.
    pub fn reply(&self, text: String) -> bool {
        let g = self.inner.lock();
        match &g.tx {
            Some(tx) => tx.try_send(Outbound::Reply(text.into_boxed_str())).is_ok(),
            None => false,
        }
    }

    /// Attaches a new socket. `resume_from` is the client's `sequence_number` (the next seq it
    /// expects); the missed events are queued first. Returns `None` if they are no longer all in
    /// the replay buffer, in which case the caller starts a fresh connection. The attachment's
    /// kick is a child of `within` (the server's shutdown), so its writer waits on one token,
    /// its own, rather than also polling the one every socket shares at every wake-up.
    pub fn attach(
        &self,
        resume_from: Option<u64>,
        within: &CancellationToken,
    ) -> Option<Attachment> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let (tx, rx) = mpsc::channel(self.queue_cap);
        if let Some(from) = resume_from {
            if from > inner.next_seq {
                return None;
            }
            if from < inner.next_seq && (inner.ring.is_empty() || inner.ring_first > from) {
                return None;
            }
            let skip = usize::try_from(from.saturating_sub(inner.ring_first)).unwrap_or(usize::MAX);
            for (seq, ev) in (inner.ring_first..).zip(inner.ring.iter()).skip(skip) {
                if tx
                    .try_send(Outbound::Event {
                        seq,
                        event: ev.clone(),
                    })
                    .is_err()
                {
                    return None;
                }
            }
        }
        // A socket still attached (the client reconnected before we noticed) is superseded.
        inner.kick.cancel();
        inner.kick = within.child_token();
        inner.generation += 1;
        inner.tx = Some(tx);
        inner.detached_at = None;
        Some(Attachment {
            rx,
            kick: inner.kick.clone(),
            generation: inner.generation,
        })
    }

    /// Marks the socket of `generation` gone (no-op if a newer socket took over).
    pub fn detach(&self, generation: u64) {
        let mut g = self.inner.lock();
        if g.generation == generation && g.detached_at.is_none() {
            g.tx = None;
            g.detached_at = Some(Instant::now());
        }
    }

    /// How long the connection has been without a socket, if it has none.
    /// Ends the connection for good because its session was revoked: the socket is kicked
    /// (its writer closes it) and nothing more is queued or kept for a resume.
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
        let mut g = self.inner.lock();
        g.kick.cancel();
        g.tx = None;
        g.ring.clear();
        g.detached_at.get_or_insert_with(Instant::now);
    }

    /// Whether the socket was kicked for being too slow (once: the flag is cleared).
    pub fn take_slow(&self) -> bool {
        self.slow.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn detached_since(&self) -> Option<Instant> {
        self.inner.lock().detached_at
    }

    pub fn is_attached(&self) -> bool {
        self.inner.lock().tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Broadcast, EventKind};

    fn ev(kind: EventKind) -> Event {
        Event::new(kind, serde_json::json!({}), Broadcast::default())
    }

    #[test]
    fn policy_drops_typing_at_half_and_closes_when_full() {
        assert_eq!(queue_decision(true, 200, 256), Offer::Queued { ahead: 56 });
        assert_eq!(queue_decision(true, 128, 256), Offer::Dropped);
        assert_eq!(
            queue_decision(false, 128, 256),
            Offer::Queued { ahead: 128 }
        );
        assert_eq!(queue_decision(false, 0, 256), Offer::ClosedSlow);
        assert_eq!(queue_decision(true, 0, 256), Offer::ClosedSlow);
    }

    #[test]
    fn seq_contiguous_and_full_queue_kicks() {
        let c = Conn::new("c".into(), Arc::from("u"), Arc::from("s"), 4, 4);
        let mut a = c.attach(None, &CancellationToken::new()).expect("attach");
        for ahead in 0..4 {
            assert_eq!(c.offer(&ev(EventKind::Posted)), Offer::Queued { ahead });
        }
        assert_eq!(c.offer(&ev(EventKind::Posted)), Offer::ClosedSlow);
        assert!(a.kick.is_cancelled());
        let mut seqs = vec![];
        while let Ok(Outbound::Event { seq, .. }) = a.rx.try_recv() {
            seqs.push(seq);
        }
        assert_eq!(seqs, vec![0, 1, 2, 3]);
    }

    /// A socket's task that sees the kick of a full queue also sees why: the mark is set before
    /// the kick, so the task (on another thread) closes with 4002 and counts the close. Watched
    /// from a spinning thread, 200 times, as the task would.
    #[test]
    fn a_kick_for_a_full_queue_is_seen_with_its_reason() {
        for _ in 0..200 {
            let c = Arc::new(Conn::new("c".into(), Arc::from("u"), Arc::from("s"), 4, 4));
            let a = c.attach(None, &CancellationToken::new()).expect("attach");
            let watcher = {
                let (c, kick) = (c.clone(), a.kick.clone());
                std::thread::spawn(move || {
                    while !kick.is_cancelled() {
                        std::hint::spin_loop();
                    }
                    c.take_slow()
                })
            };
            for _ in 0..4 {
                c.offer(&ev(EventKind::Posted));
            }
            assert_eq!(c.offer(&ev(EventKind::Posted)), Offer::ClosedSlow);
            assert!(
                watcher.join().expect("watcher"),
                "kicked without the slow mark"
            );
        }
    }

    /// The server's shutdown ends every attached socket through its own kick; a kick (a newer
    /// socket, a slow one) touches neither the server's token nor the other connections.
    #[test]
    fn a_kick_is_the_shutdowns_child() {
        let shutdown = CancellationToken::new();
        let (c, d) = (
            Conn::new("c".into(), Arc::from("u"), Arc::from("s"), 4, 4),
            Conn::new("d".into(), Arc::from("v"), Arc::from("s"), 4, 4),
        );
        let first = c.attach(None, &shutdown).expect("attach");
        let second = c.attach(None, &shutdown).expect("a newer socket");
        let other = d.attach(None, &shutdown).expect("attach");
        assert!(first.kick.is_cancelled(), "superseded");
        assert!(
            !shutdown.is_cancelled() && !second.kick.is_cancelled() && !other.kick.is_cancelled()
        );
        shutdown.cancel();
        assert!(second.kick.is_cancelled() && other.kick.is_cancelled());
    }

    #[test]
    fn typing_dropped_at_half_full_without_consuming_seq() {
        let c = Conn::new("c".into(), Arc::from("u"), Arc::from("s"), 4, 4);
        let mut a = c.attach(None, &CancellationToken::new()).expect("attach");
        c.offer(&ev(EventKind::Posted));
        c.offer(&ev(EventKind::Posted));
        assert_eq!(c.offer(&ev(EventKind::Typing)), Offer::Dropped);
        assert_eq!(c.offer(&ev(EventKind::Posted)), Offer::Queued { ahead: 2 });
        let mut seqs = vec![];
        while let Ok(Outbound::Event { seq, .. }) = a.rx.try_recv() {
            seqs.push(seq);
        }
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn resume_replays_missed_or_refuses_gap() {
        let c = Conn::new("c".into(), Arc::from("u"), Arc::from("s"), 8, 3);
        let a = c.attach(None, &CancellationToken::new()).expect("attach");
        c.detach(a.generation);
        for _ in 0..5 {
            assert_eq!(c.offer(&ev(EventKind::Posted)), Offer::Detached);
        }
        // Ring holds seq 2,3,4.
        assert!(c.attach(Some(1), &CancellationToken::new()).is_none());
        assert!(c.attach(Some(6), &CancellationToken::new()).is_none());
        let mut a = c
            .attach(Some(3), &CancellationToken::new())
            .expect("resume");
        let mut seqs = vec![];
        while let Ok(Outbound::Event { seq, .. }) = a.rx.try_recv() {
            seqs.push(seq);
        }
        assert_eq!(seqs, vec![3, 4]);
        c.offer(&ev(EventKind::Posted));
        assert!(matches!(
            a.rx.try_recv(),
            Ok(Outbound::Event { seq: 5, .. })
        ));
    }

    #[test]
    fn replay_larger_than_queue_starts_over() {
        let c = Conn::new("c".into(), Arc::from("u"), Arc::from("s"), 2, 4);
        let a = c.attach(None, &CancellationToken::new()).expect("attach");
        c.detach(a.generation);
        for _ in 0..4 {
            c.offer(&ev(EventKind::Posted));
        }
        assert!(c.attach(Some(0), &CancellationToken::new()).is_none());
        assert!(c.attach(Some(2), &CancellationToken::new()).is_some());
    }
}
