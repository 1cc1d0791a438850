//! A lean NATS client for the F1 benchmark's anchor (`bench/f1.py --nats`): the headline
//! workload's shape on `nats-server` — subjects of N subscribers each, one connection per
//! subscriber, one paced publisher — so chat-server's cost per delivery is measured beside the
//! peer's in the same run rather than remembered.
//!
//! One process holds `subscribers` connections (a few thousand to ~19,000: the open-file limit is
//! per process), spread round-robin over the given servers; global subscriber `g` subscribes to
//! `ch.{g / members}`. A process with `rate > 0` also publishes, round-robin over the subjects,
//! on an absolute schedule: evenly spaced, or (`Arrivals::Poisson`) with seeded exponential gaps,
//! as the F1 agents' open model posts, so the anchor's tail is measured under the same arrivals.
//! Each payload starts with its send time, so every subscriber records the delay from send to
//! receipt, over the run and per interval of wall-clock time (`interval`, aligned to the Unix
//! epoch so that processes' intervals line up and merge). Everything is bounded: connecting by
//! `connect_timeout`, listening by `listen`, publishing by `publish`.
//!
//! The client keeps per connection one task, one socket and one small read buffer: nothing a
//! lean NATS client could leave out.

pub mod proto;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use proto::Op;

/// What one process does.
#[derive(Debug, Clone)]
pub struct Options {
    pub servers: Vec<SocketAddr>,
    /// Subscriber connections this process holds.
    pub subscribers: usize,
    /// Global index of this process's first subscriber (processes share the subjects).
    pub first: usize,
    /// Subscribers per subject.
    pub members: usize,
    /// Subjects the publisher goes round.
    pub subjects: usize,
    /// Messages per second this process publishes (0: none).
    pub rate: f64,
    /// How the publisher spaces its messages.
    pub arrivals: Arrivals,
    /// Length of the intervals latency is also reported per (whole seconds, 1 to 3600).
    pub interval: Duration,
    /// Payload size in bytes (at least 20: the send time).
    pub payload: usize,
    /// How long to wait between the last subscription and the first message, so the servers of
    /// a cluster have told each other about every subscriber.
    pub settle: Duration,
    /// How long to publish.
    pub publish: Duration,
    /// How long the subscribers listen once all are subscribed.
    pub listen: Duration,
    /// Connections opened at once while connecting.
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
}

/// How a publisher spaces its messages at its mean rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Every `1 / rate` seconds.
    Periodic,
    /// A Poisson process: exponential gaps drawn from a generator seeded with `seed`, so two runs
    /// with one seed publish on one schedule.
    Poisson { seed: u64 },
}

impl Arrivals {
    /// The send times, as offsets from the start, of the messages due before `within`, made one
    /// at a time (an hour at the highest rate is 360 million of them).
    pub fn schedule(self, rate: f64, within: Duration) -> Schedule {
        Schedule {
            rng: match self {
                Arrivals::Periodic => None,
                Arrivals::Poisson { seed } => Some(ChaCha8Rng::seed_from_u64(seed)),
            },
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                0.0
            },
            within: within.as_secs_f64(),
            at: 0.0,
            n: 0,
        }
    }
}

/// The send times of [`Arrivals::schedule`], in order.
pub struct Schedule {
    rng: Option<ChaCha8Rng>,
    rate: f64,
    within: f64,
    /// The next Poisson send time, in seconds.
    at: f64,
    n: u64,
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.rate == 0.0 {
            return None;
        }
        let due = match self.rng.as_mut() {
            None => self.n as f64 / self.rate,
            Some(rng) => {
                let this = self.at;
                // Open on the left: ln(0) would be an infinite gap.
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                self.at += -u.ln() / self.rate;
                this
            }
        };
        // Compared in seconds first: a time past `within` may not fit a `Duration`.
        if due >= self.within {
            self.rate = 0.0;
            return None;
        }
        self.n += 1;
        Some(Duration::from_secs_f64(due))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Options(String),
    #[error(
        "connecting to {addr}: {source} (is nats-server listening there? \"Too many open files\": \
         spread --subscribers over more processes, each is one socket under the open-file limit)"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("only {ready} of {wanted} subscribers were subscribed after {secs:.0} s")]
    NotReady {
        ready: usize,
        wanted: usize,
        secs: f64,
    },
    #[error("publishing to {addr}: {source}")]
    Publish {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server {0} refused: {1}")]
    Server(SocketAddr, String),
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
}

impl Options {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Options(m.to_string()));
        if self.servers.is_empty() {
            return bad("--servers: give at least one HOST:PORT");
        }
        if self.members == 0 || self.subjects == 0 {
            return bad("--members and --subjects must be at least 1");
        }
        if self.first + self.subscribers > self.members * self.subjects {
            return bad("--first + --subscribers is more than --members × --subjects");
        }
        if !(self.rate == 0.0 || (0.001..=100_000.0).contains(&self.rate)) {
            return bad("--rate must be 0 (no publishing) or 0.001 to 100000 messages per second");
        }
        if self.payload < 20 || self.payload > 1 << 20 {
            return bad("--payload must be 20 bytes (the send time) to 1 MiB");
        }
        if self.publish > Duration::from_secs(3600)
            || self.listen > Duration::from_secs(3600)
            || self.settle > Duration::from_secs(600)
        {
            return bad("--publish and --listen are bounded to an hour, --settle to 10 minutes");
        }
        if self.connect_concurrency == 0 {
            return bad("--connect-concurrency must be at least 1");
        }
        if self.interval.subsec_nanos() != 0 || !(1..=3600).contains(&self.interval.as_secs()) {
            return bad("--interval must be whole seconds, 1s to 1h");
        }
        Ok(())
    }
}

/// What one process saw, printed as one JSON line.
#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub subscribers: usize,
    /// Subscribers whose connection ended before the listening time was over.
    pub closed: u64,
    pub received: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
    /// Messages published, per subject (empty when this process does not publish).
    pub published: Vec<u64>,
    /// Messages sent more than 10 ms after their scheduled time (the publisher was behind).
    pub published_late: u64,
    /// Seconds from the first to the last publish.
    pub publish_secs: f64,
    /// When the publisher started, in milliseconds since the Unix epoch (0 when it did not).
    pub publish_start_unix_ms: u64,
    /// Length of the intervals below, in seconds.
    pub interval_secs: u64,
    /// Latency per interval of receipt time, oldest first; only intervals with a receipt.
    pub intervals: Vec<IntervalReport>,
}

/// The latencies of the messages received in one interval.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct IntervalReport {
    /// The interval's start, in seconds since the Unix epoch (a multiple of its length).
    pub start_unix_s: u64,
    pub received: u64,
    pub p99_us: u64,
    /// `[microseconds, count]` for every recorded value, to two significant figures: a merge of
    /// several processes' intervals sums the counts of equal values.
    pub counts: Vec<[u64; 2]>,
}

/// Latency histograms per interval of receipt time (two significant figures: a value is one of a
/// few hundred, so a report of every count stays small and merges by value).
struct Intervals {
    len_ns: u128,
    /// An empty histogram of the intervals' layout, cloned for each new interval.
    blank: Histogram<u64>,
    by_start: BTreeMap<u64, Histogram<u64>>,
}

impl Intervals {
    fn new(len: Duration) -> Result<Intervals, Error> {
        Ok(Intervals {
            len_ns: len.as_nanos().max(1),
            blank: Histogram::new_with_bounds(1, 120_000_000, 2)
                .map_err(|e| Error::Options(format!("histogram: {e}")))?,
            by_start: BTreeMap::new(),
        })
    }

    fn record(&mut self, at_ns: u128, us: u64) {
        let start = u64::try_from(at_ns / self.len_ns * self.len_ns / 1_000_000_000).unwrap_or(0);
        let blank = &self.blank;
        self.by_start
            .entry(start)
            .or_insert_with(|| blank.clone())
            .saturating_record(us);
    }

    fn report(&self) -> Vec<IntervalReport> {
        self.by_start
            .iter()
            .map(|(&start_unix_s, h)| IntervalReport {
                start_unix_s,
                received: h.len(),
                p99_us: h.value_at_quantile(0.99),
                counts: h
                    .iter_recorded()
                    .map(|v| {
                        [
                            h.highest_equivalent(v.value_iterated_to()),
                            v.count_at_value(),
                        ]
                    })
                    .collect(),
            })
            .collect()
    }
}

struct Stats {
    received: AtomicU64,
    closed: AtomicU64,
    latency: Mutex<(Histogram<u64>, Intervals)>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Opens every subscriber, then `ready` is called with the count, then publishes (if asked) and
/// listens; returns when the listening time is over.
pub async fn run(opts: Options, ready: impl FnOnce(usize)) -> Result<Report, Error> {
    opts.validate()?;
    let hist = Histogram::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| Error::Options(format!("histogram: {e}")))?;
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        latency: Mutex::new((hist, Intervals::new(opts.interval)?)),
    });
    let subscribed = subscribe_all(&opts, &stats).await?;
    ready(subscribed);
    let listen_until = Instant::now() + opts.listen;
    let mut report = Report {
        subscribers: subscribed,
        interval_secs: opts.interval.as_secs(),
        ..Report::default()
    };
    if opts.rate > 0.0 {
        tokio::time::sleep(opts.settle).await;
        publish(&opts, &mut report).await?;
    }
    tokio::time::sleep_until(listen_until).await;
    report.received = stats.received.load(Ordering::Relaxed);
    report.closed = stats.closed.load(Ordering::Relaxed);
    let g = stats
        .latency
        .lock()
        .map_err(|_| Error::Options("poisoned".into()))?;
    let (h, intervals) = &*g;
    report.intervals = intervals.report();
    report.latency_p50_us = h.value_at_quantile(0.5);
    report.latency_p99_us = h.value_at_quantile(0.99);
    report.latency_p999_us = h.value_at_quantile(0.999);
    report.latency_max_us = h.max();
    Ok(report)
}

/// Connects and subscribes every subscriber, a bounded number at a time; each is subscribed
/// once its server has answered the `PING` sent after its `SUB`.
async fn subscribe_all(opts: &Options, stats: &Arc<Stats>) -> Result<usize, Error> {
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let deadline = Instant::now() + opts.connect_timeout;
    for i in 0..opts.subscribers {
        let g = opts.first + i;
        let addr = opts.servers[g % opts.servers.len()];
        let subject = format!("ch.{}", g / opts.members);
        let (gate, tx, stats) = (gate.clone(), tx.clone(), stats.clone());
        let stop = deadline + opts.listen + opts.settle + opts.publish + Duration::from_secs(30);
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let conn = subscriber_connect(addr, &subject).await;
            drop(permit);
            match conn {
                Ok((stream, buf)) => {
                    let _ = tx.send(Ok(()));
                    let _ = tokio::time::timeout_at(stop, listen(stream, buf, &stats)).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    }
    drop(tx);
    let mut ok = 0;
    while ok < opts.subscribers {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => {
                return Err(Error::NotReady {
                    ready: ok,
                    wanted: opts.subscribers,
                    secs: opts.connect_timeout.as_secs_f64(),
                })
            }
        }
    }
    Ok(ok)
}

const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"lang\":\"rust\",\"version\":\"0.1\",\"protocol\":1}\r\n";

async fn subscriber_connect(
    addr: SocketAddr,
    subject: &str,
) -> Result<(TcpStream, BytesMut), Error> {
    let conn_err = |source| Error::Connect { addr, source };
    let mut s = TcpStream::connect(addr).await.map_err(conn_err)?;
    s.set_nodelay(true).map_err(conn_err)?;
    let mut hello = CONNECT.to_vec();
    hello.extend_from_slice(format!("SUB {subject} 1\r\nPING\r\n").as_bytes());
    s.write_all(&hello).await.map_err(conn_err)?;
    let mut buf = BytesMut::with_capacity(READ_BUF);
    loop {
        while let Some(op) = proto::parse(&mut buf)? {
            match op {
                Op::Pong => return Ok((s, buf)),
                Op::Err(e) => return Err(Error::Server(addr, e)),
                _ => {}
            }
        }
        reserve(&mut buf);
        let n = s.read_buf(&mut buf).await.map_err(conn_err)?;
        if n == 0 {
            return Err(conn_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// A subscriber's read buffer: one message of the benchmark's size with its header fits.
const READ_BUF: usize = 2048;

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_BUF / 2 {
        buf.reserve(READ_BUF);
    }
}

async fn listen(mut s: TcpStream, mut buf: BytesMut, stats: &Stats) {
    loop {
        match proto::parse(&mut buf) {
            Ok(Some(Op::Msg { payload })) => {
                let now = now_ns();
                stats.received.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = proto::sent_ns(&payload) {
                    let us = (now.saturating_sub(sent) / 1000).max(1) as u64;
                    if let Ok(mut g) = stats.latency.lock() {
                        g.0.saturating_record(us);
                        g.1.record(now, us);
                    }
                }
            }
            Ok(Some(Op::Ping)) => {
                if s.write_all(b"PONG\r\n").await.is_err() {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                reserve(&mut buf);
                match s.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            Err(_) => break,
        }
    }
    // Only an early end counts: the listening time running out cancels this future instead.
    stats.closed.fetch_add(1, Ordering::Relaxed);
}

/// A message sent this long after its scheduled time counts as late (timers fire at millisecond
/// granularity, so a smaller bound would count the timer, not the publisher).
const LATE: Duration = Duration::from_millis(10);

/// Publishes on an absolute schedule (`opts.arrivals`) for `opts.publish`, then waits for the server to answer a
/// `PING`, so every message has reached it before the count is reported.
async fn publish(opts: &Options, report: &mut Report) -> Result<(), Error> {
    let addr = opts.servers[0];
    let pub_err = |source| Error::Publish { addr, source };
    let mut s = TcpStream::connect(addr).await.map_err(pub_err)?;
    s.set_nodelay(true).map_err(pub_err)?;
    s.write_all(CONNECT).await.map_err(pub_err)?;
    let subjects: Vec<String> = (0..opts.subjects).map(|k| format!("ch.{k}")).collect();
    report.published = vec![0; opts.subjects];
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut msg = Vec::with_capacity(opts.payload + 64);
    let mut schedule = opts.arrivals.schedule(opts.rate, opts.publish).peekable();
    let start = Instant::now();
    report.publish_start_unix_ms = u64::try_from(now_ns() / 1_000_000).unwrap_or(0);
    let mut n = 0usize;
    while let Some(&offset) = schedule.peek() {
        let due = start + offset;
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {
                if Instant::now() > due + LATE {
                    report.published_late += 1;
                }
                let k = n % opts.subjects;
                msg.clear();
                msg.extend_from_slice(format!("PUB {} {}\r\n", subjects[k], opts.payload).as_bytes());
                msg.extend_from_slice(&proto::timed_payload(now_ns(), opts.payload));
                msg.extend_from_slice(b"\r\n");
                s.write_all(&msg).await.map_err(pub_err)?;
                report.published[k] += 1;
                n += 1;
                schedule.next();
            }
            r = s.read_buf(&mut buf) => {
                if r.map_err(pub_err)? == 0 {
                    return Err(pub_err(std::io::ErrorKind::UnexpectedEof.into()));
                }
                while let Some(op) = proto::parse(&mut buf)? {
                    match op {
                        Op::Ping => s.write_all(b"PONG\r\n").await.map_err(pub_err)?,
                        Op::Err(e) => return Err(Error::Server(addr, e)),
                        _ => {}
                    }
                }
                reserve(&mut buf);
            }
        }
    }
    report.publish_secs = start.elapsed().as_secs_f64();
    s.write_all(b"PING\r\n").await.map_err(pub_err)?;
    let flushed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            while let Some(op) = proto::parse(&mut buf)? {
                match op {
                    Op::Pong => return Ok(()),
                    Op::Ping => s.write_all(b"PONG\r\n").await.map_err(pub_err)?,
                    Op::Err(e) => return Err(Error::Server(addr, e)),
                    _ => {}
                }
            }
            reserve(&mut buf);
            if s.read_buf(&mut buf).await.map_err(pub_err)? == 0 {
                return Err(pub_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    })
    .await;
    match flushed {
        Ok(r) => r,
        Err(_) => Err(pub_err(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Raises this process's open-file limit to its hard limit (each subscriber is a socket).
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_arrivals_are_evenly_spaced() {
        let ms: Vec<u128> = Arrivals::Periodic
            .schedule(4.0, Duration::from_secs(2))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, vec![0, 250, 500, 750, 1000, 1250, 1500, 1750]);
        assert_eq!(
            Arrivals::Periodic
                .schedule(0.0, Duration::from_secs(2))
                .count(),
            0
        );
        // A rate so low that its first gap would not fit a `Duration` ends the schedule.
        let slow: Vec<Duration> = Arrivals::Poisson { seed: 1 }
            .schedule(1e-300, Duration::from_secs(2))
            .collect();
        assert_eq!(slow, vec![Duration::ZERO]);
    }

    /// 21 messages/s for an hour: the count is within 2 % of 75,600, the gaps' coefficient of
    /// variation is that of exponential gaps (1, not 0 as evenly spaced), one seed gives one
    /// schedule and another seed another.
    #[test]
    fn poisson_arrivals_have_the_rate_and_exponential_gaps() {
        let hour = Duration::from_secs(3600);
        let s: Vec<Duration> = Arrivals::Poisson { seed: 7 }.schedule(21.0, hour).collect();
        let n = s.len() as f64;
        assert!((n / 75_600.0 - 1.0).abs() < 0.02, "{n} messages");
        assert!(s.windows(2).all(|w| w[0] <= w[1]) && s.iter().all(|d| *d < hour));
        let gaps: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.03, "coefficient of variation {cv}");
        assert!(s
            .iter()
            .copied()
            .eq(Arrivals::Poisson { seed: 7 }.schedule(21.0, hour)));
        assert!(!s
            .iter()
            .copied()
            .eq(Arrivals::Poisson { seed: 8 }.schedule(21.0, hour)));
    }

    /// Receipts land in the epoch-aligned interval of their time; each interval reports its p99
    /// and counts that add up to what it received.
    #[test]
    fn latencies_are_kept_per_epoch_aligned_interval() {
        let mut iv = Intervals::new(Duration::from_secs(10)).expect("layout");
        let s = 1_000_000_000u128;
        for k in 0..100u64 {
            iv.record(1_800_000_003 * s, 1_000 + k); // 1,800,000,000 – 1,800,000,010
        }
        iv.record(1_800_000_009 * s + s - 1, 90_000);
        iv.record(1_800_000_010 * s, 5_000); // the next interval
        let r = iv.report();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].start_unix_s, 1_800_000_000);
        assert_eq!(r[1].start_unix_s, 1_800_000_010);
        assert_eq!(r[0].received, 101);
        assert_eq!(r[0].counts.iter().map(|c| c[1]).sum::<u64>(), 101);
        assert!(
            (1_090..=1_110).contains(&r[0].p99_us),
            "p99 {}",
            r[0].p99_us
        );
        assert_eq!(r[1].counts.len(), 1);
        assert!((4_950..=5_050).contains(&r[1].counts[0][0]));
    }

    #[test]
    fn an_interval_of_a_fraction_of_a_second_or_a_vanishing_rate_is_refused() {
        let mut o = Options {
            servers: vec!["127.0.0.1:4222".parse().unwrap_or_else(|_| unreachable!())],
            subscribers: 1,
            first: 0,
            members: 1,
            subjects: 1,
            rate: 1.0,
            arrivals: Arrivals::Periodic,
            interval: Duration::from_millis(1500),
            payload: 100,
            settle: Duration::ZERO,
            publish: Duration::from_secs(1),
            listen: Duration::from_secs(1),
            connect_concurrency: 1,
            connect_timeout: Duration::from_secs(1),
        };
        assert!(matches!(o.validate(), Err(Error::Options(m)) if m.contains("--interval")));
        o.interval = Duration::from_secs(10);
        assert!(o.validate().is_ok());
        o.rate = 1e-20;
        assert!(matches!(o.validate(), Err(Error::Options(m)) if m.contains("--rate")));
    }
}
