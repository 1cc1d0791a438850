//! The load runtime: simulated users run on a few single-threaded tokio runtimes ("shards"), one
//! thread each, by default one per core. A user and everything it does — its timers, its
//! WebSocket, its HTTP requests and their pooled connections — stays on its shard.
//!
//! Why not one work-stealing runtime: its threads wake each other to share work, so on a box
//! where the agent shares the cores with the server every burst of answers cost a futex wake and
//! a context switch on top of the socket's own, and a socket registered on one thread's driver
//! was often read from another. Side by side on one server (`bench/peers.py`, BENCHMARKS.md) the
//! same agent spent 20.2 µs of CPU per request on a two-thread work-stealing runtime and 12.4 µs
//! on one thread, where `wrk` spends 11.9. Shards keep one thread's economy and still use every
//! core: users are dealt round-robin, each shard's I/O driver and timer wheel serve only its own
//! users, and nothing a user does crosses threads except the recorder's short locks.
//!
//! The shards start on first use with [`configure`]'s count (the agent's `--threads`), else one
//! per available core, and live as long as the process: a `serve` agent runs many runs on them.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};

/// Most shards a process may ask for.
pub const MAX_THREADS: usize = 256;

static SHARDS: OnceLock<Shards> = OnceLock::new();
/// The count [`configure`] asked for (0: one per core).
static WANTED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The shard this thread drives, if it is a shard's thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The load runtimes of this process.
pub struct Shards {
    handles: Vec<Handle>,
}

/// Sets how many shards start (before the first [`get`]; a later call that asks for another
/// count is refused, since the shards already run).
pub fn configure(threads: usize) -> Result<(), String> {
    if !(1..=MAX_THREADS).contains(&threads) {
        return Err(format!(
            "{threads} load threads: use 1 to {MAX_THREADS} (default: one per core)"
        ));
    }
    WANTED.store(threads, Ordering::Relaxed);
    match SHARDS.get() {
        Some(s) if s.len() != threads => Err(format!(
            "the load runtimes already run with {} threads",
            s.len()
        )),
        _ => Ok(()),
    }
}

/// The shards, started on first use.
pub fn get() -> io::Result<&'static Shards> {
    if let Some(s) = SHARDS.get() {
        return Ok(s);
    }
    let wanted = match WANTED.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let started = Shards::start(wanted)?;
    // Two first uses at once: one set wins, the other's threads idle (never in practice: the
    // first run or setup of a process starts them).
    Ok(SHARDS.get_or_init(|| started))
}

/// The shard whose thread this is (`None` on any other thread).
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

impl Shards {
    fn start(n: usize) -> io::Result<Shards> {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || {
                    match Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => {
                            CURRENT.with(|c| c.set(Some(i)));
                            let _ = tx.send(Ok(rt.handle().clone()));
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    };
                })?;
            let handle = rx.recv().map_err(|_| {
                io::Error::other(format!("load thread {i} ended before its runtime started"))
            })??;
            handles.push(handle);
        }
        Ok(Shards { handles })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The shard of user `local` (users are dealt round-robin).
    pub fn of(&self, local: u64) -> &Handle {
        &self.handles[(local % self.handles.len() as u64) as usize]
    }

    pub fn all(&self) -> &[Handle] {
        &self.handles
    }

    /// Tasks alive over all shards.
    pub fn alive_tasks(&self) -> usize {
        self.handles
            .iter()
            .map(|h| h.metrics().num_alive_tasks())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_shard_of_their_user_and_know_it() {
        let shards = get().expect("shards");
        let (tx, rx) = std::sync::mpsc::channel();
        for local in 0..(2 * shards.len() as u64) {
            let tx = tx.clone();
            shards.of(local).spawn(async move {
                let _ = tx.send((local, current()));
            });
        }
        drop(tx);
        let mut seen: Vec<_> = rx.iter().collect();
        seen.sort_unstable();
        assert_eq!(seen.len(), 2 * shards.len());
        for (local, shard) in seen {
            assert_eq!(shard, Some(local as usize % shards.len()), "user {local}");
        }
        assert_eq!(current(), None, "the test's own thread is no shard");
        assert!(configure(0).is_err());
        assert!(configure(MAX_THREADS + 1).is_err());
        assert!(configure(shards.len()).is_ok());
    }
}
