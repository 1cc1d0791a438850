//! Ctrl-c (SIGINT) and SIGTERM handling.
//!
//! Once [`install`]ed, those signals no longer kill `ltops`: they set a flag that long waits
//! check ([`check`], [`count`]), so every command gets to clean up — stop the agents of a run and
//! keep its partial results, or stop the processes a half-done `deploy` started. A second ctrl-c
//! during that cleanup makes the waits give up sooner.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

static COUNT: AtomicU32 = AtomicU32::new(0);

/// Routes SIGINT and SIGTERM to the flag; call once, inside a tokio runtime.
pub fn install(rt: &tokio::runtime::Handle) {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        // Registering must happen now (not in the spawned task) so no signal slips through.
        let registered = rt.block_on(async { signal(kind) });
        if let Ok(mut s) = registered {
            rt.spawn(async move {
                while s.recv().await.is_some() {
                    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == 1 {
                        eprintln!("\nltops: interrupted; stopping cleanly (ctrl-c again to hurry)");
                    }
                }
            });
        }
    }
}

/// How many times the user interrupted.
pub fn count() -> u32 {
    COUNT.load(Ordering::SeqCst)
}

pub fn interrupted() -> bool {
    count() > 0
}

/// `Err(Interrupted)` once ctrl-c was pressed.
pub fn check() -> Result<()> {
    if interrupted() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps up to `d`, returning early (with an error) when interrupted.
pub fn sleep(d: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + d;
    loop {
        check()?;
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(50)));
    }
}

/// Resolves once ctrl-c was pressed: raced against a long call that is safe to cancel
/// (`tokio::select!`), so the command stops at once instead of at its next check.
pub async fn wait() {
    while !interrupted() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
