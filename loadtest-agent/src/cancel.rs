//! A user's cancellation, cheap to poll while it has not happened.
//!
//! `CancellationToken::cancelled()` takes two locks each time it is polled (the token's state,
//! then its `Notify`'s list of waiters). A user's task polls it first at every wake-up, and a
//! user wakes up for every event its socket brings: in the headline workload the two locks were
//! 5 % of the agent's CPU (`perf` under `bench/f1.py --perf`). [`Cancelled`] asks the token only
//! when the token itself has woken the task (or on the first poll, or when the task's waker
//! changed): it registers a waker of its own that raises a flag before it wakes the task, and at
//! any other wake-up it only reads the flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Completes when the token is cancelled, like `token.cancelled_owned()`.
pub struct Cancelled {
    inner: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The flag the token's wake raises, and the waker that raises it.
    flag: Option<(Arc<Flag>, Waker)>,
}

/// Raised when the token wakes the task it was registered for.
struct Flag {
    woken: AtomicBool,
    task: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Cancelled {
    pub fn new(token: CancellationToken) -> Self {
        Self {
            inner: Box::pin(token.cancelled_owned()),
            flag: None,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &this.flag {
            // Registered for this task, and the token has not woken it since: nothing to ask.
            Some((flag, _)) if flag.task.will_wake(cx.waker()) => {
                // A plain load first: it is what almost every wake-up finds, and cheaper than
                // the swap (a locked instruction) that takes a raised flag down.
                if !flag.woken.load(Ordering::Acquire) || !flag.woken.swap(false, Ordering::Acquire)
                {
                    return Poll::Pending;
                }
            }
            _ => {
                let flag = Arc::new(Flag {
                    woken: AtomicBool::new(false),
                    task: cx.waker().clone(),
                });
                let waker = Waker::from(flag.clone());
                this.flag = Some((flag, waker));
            }
        }
        let Some((_, waker)) = &this.flag else {
            return Poll::Pending;
        };
        this.inner.as_mut().poll(&mut Context::from_waker(waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Cancelled, w: &Waker) -> Poll<()> {
        Pin::new(f).poll(&mut Context::from_waker(w))
    }

    #[test]
    fn completes_once_cancelled_and_wakes_the_task_that_waits() {
        let token = CancellationToken::new();
        let mut f = Cancelled::new(token.child_token());
        let count = Arc::new(Count::default());
        let w = Waker::from(count.clone());
        assert!(poll(&mut f, &w).is_pending());
        // Wake-ups from elsewhere (the socket) are answered by the flag alone.
        for _ in 0..3 {
            assert!(poll(&mut f, &w).is_pending());
        }
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(poll(&mut f, &w).is_ready());
    }

    #[test]
    fn a_token_cancelled_before_the_first_poll_or_between_polls_is_seen() {
        let token = CancellationToken::new();
        token.cancel();
        let w = Waker::from(Arc::new(Count::default()));
        assert!(poll(&mut Cancelled::new(token), &w).is_ready());

        let token = CancellationToken::new();
        let mut f = Cancelled::new(token.clone());
        assert!(poll(&mut f, &w).is_pending());
        token.cancel();
        assert!(poll(&mut f, &w).is_ready());
    }

    #[test]
    fn a_future_polled_by_another_task_wakes_that_one() {
        let token = CancellationToken::new();
        let mut f = Cancelled::new(token.clone());
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        assert!(poll(&mut f, &Waker::from(first.clone())).is_pending());
        assert!(poll(&mut f, &Waker::from(second.clone())).is_pending());
        token.cancel();
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut f, &Waker::from(second)).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_select_beside_a_busy_branch() {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            cancel.cancel();
        });
        let mut f = Cancelled::new(token);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = &mut f => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => ticks += 1,
            }
        }
        assert!((499..=500).contains(&ticks), "{ticks}");
    }

    /// In a task woken again and again by something else (a socket's events), the waker is
    /// registered with the token once, not at every wake-up.
    #[tokio::test]
    async fn a_task_registers_once_however_often_it_wakes() {
        let token = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let mut f = Cancelled::new(token.clone());
        let task = tokio::spawn(async move {
            let mut flags = std::collections::HashSet::new();
            loop {
                tokio::select! {
                    biased;
                    _ = &mut f => break,
                    Some(_) = rx.recv() => {}
                }
                if let Some((flag, _)) = &f.flag {
                    flags.insert(Arc::as_ptr(flag) as usize);
                }
            }
            flags.len()
        });
        for i in 0..1000 {
            tx.send(i).await.expect("send");
        }
        token.cancel();
        assert_eq!(task.await.expect("task"), 1, "one registration");
    }
}
