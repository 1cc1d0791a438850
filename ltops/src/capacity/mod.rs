//! Capacity search: the largest number of users a deployment holds within its SLOs.
//!
//! This module is the search alone, independent of how a probe is run. A *probe* holds one
//! user level for a warm-up and a window and is judged on the window only: *good* when every SLO
//! held, *bad* when one did not, *invalid* when the generator could not offer the load (it fell
//! behind, ran out of CPU or file descriptors) — then the agents, not the server, are the limit.
//! An invalid probe is held once more: a generator that stalled for a moment (another process
//! took the CPU) should not end a long search; a level invalid twice in a row ends it, saying so.
//!
//! The search grows geometrically from the start level to the first bad level, bisects between
//! the last good and the first bad level until `(bad − good) / good ≤ tolerance`, then holds the
//! last good level once more to confirm it. A confirmation that fails makes that level bad and
//! the bisection continues below it, so the answer is always a level that held every time it was
//! probed. A budget of probes bounds the search whatever the system under test does.
//!
//! [`judge`] turns a probe's window of interval records into a [`Verdict`]; [`drive`] runs the
//! search on a running run through the coordinator's [`crate::coordinator::Fleet`].

use std::future::Future;

pub mod drive;
pub mod judge;

/// Growth factor between levels before the first bad one.
pub const GROWTH: f64 = 2.0;
/// Probes after which the search gives up (it converges in far fewer for any sane tolerance).
pub const MAX_PROBES: u32 = 40;

/// What to search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOptions {
    /// First level probed.
    pub start_users: u64,
    /// Highest level probed: the answer is at most this.
    pub max_users: u64,
    /// Relative precision of the answer, e.g. 0.05 for 5 %.
    pub tolerance: f64,
}

impl SearchOptions {
    /// Checks the options; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.start_users == 0 {
            return Err("--start-users must be at least 1".into());
        }
        if self.max_users < self.start_users {
            return Err(format!(
                "--max-users ({}) is below --start-users ({})",
                self.max_users, self.start_users
            ));
        }
        if !(self.tolerance > 0.0 && self.tolerance < 1.0) {
            return Err(format!(
                "--tolerance must be between 0% and 100% (exclusive), got {}%",
                self.tolerance * 100.0
            ));
        }
        Ok(())
    }
}

/// How one probe went.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every SLO held over the whole window.
    Good,
    /// These SLOs did not hold (as the threshold expressions, with their values).
    Bad { failed: Vec<String> },
    /// The generator could not offer this load; why.
    Invalid { reason: String },
}

/// One probe, as the report lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub users: u64,
    /// Held again to confirm the answer.
    pub confirmation: bool,
    pub verdict: Verdict,
}

/// What the search found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// `users` held every time it was probed, the last time as a confirmation; `bad` is the
    /// lowest level that did not hold (`None`: `max_users` held).
    Supported { users: u64, bad: Option<u64> },
    /// Not even the lowest level probed held (`bad`): the capacity is below it.
    BelowStart { bad: u64 },
    /// The agents could not offer `users` (why); `good` is the highest level that held before.
    AgentLimited {
        users: u64,
        good: Option<u64>,
        reason: String,
    },
    /// The probe budget ran out between `good` and `bad`.
    Unconverged { good: Option<u64>, bad: Option<u64> },
}

impl Outcome {
    /// The confirmed answer, if there is one.
    pub fn supported_users(&self) -> Option<u64> {
        match self {
            Outcome::Supported { users, .. } => Some(*users),
            _ => None,
        }
    }

    /// The one line a report ends with.
    pub fn describe(&self, tolerance: f64, agents: u32) -> String {
        let tol = format!("tolerance {:.0}%", tolerance * 100.0);
        match self {
            Outcome::Supported {
                users,
                bad: Some(b),
            } => format!("supported users: {users} (between {users} and {b}, {tol})"),
            Outcome::Supported { users, bad: None } => format!(
                "supported users: at least {users} (the highest level searched held; raise --max-users to look further)"
            ),
            Outcome::BelowStart { bad } => format!(
                "supported users: fewer than {bad} (the first level already broke an SLO; lower --start-users)"
            ),
            Outcome::AgentLimited {
                users,
                good,
                reason,
            } => {
                // Each agent managed its share of the last valid level at most.
                let need = u64::from(agents.max(1)) * users.div_ceil(good.unwrap_or(*users).max(1));
                format!(
                    "no answer: the agents, not the server, are the limit at {users} users ({reason}); {} held so far. \
                     Run with about {} agents (now {agents}), or on bigger machines",
                    good.map_or("no level".to_string(), |g| format!("{g} users")),
                    need.max(u64::from(agents) + 1)
                )
            }
            Outcome::Unconverged { good, bad } => format!(
                "no answer within {MAX_PROBES} probes (last good {}, first bad {}); the system's capacity varies \
                 more than the {tol}: widen it or lengthen --probe-window",
                good.map_or("none".into(), |g| g.to_string()),
                bad.map_or("none".into(), |b| b.to_string()),
            ),
        }
    }
}

/// The search's state: the levels known good and bad, and what was probed.
#[derive(Clone, Debug)]
pub struct Search {
    opts: SearchOptions,
    probes: Vec<Probe>,
    /// Highest level that held every time (and is below `bad`).
    good: Option<u64>,
    /// Lowest level that did not hold.
    bad: Option<u64>,
    pending: Option<(u64, bool)>,
    done: Option<Outcome>,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Hold this level (again, to confirm it, when `confirmation`).
    Probe {
        users: u64,
        confirmation: bool,
    },
    Done(Outcome),
}

impl Search {
    pub fn new(opts: SearchOptions) -> Self {
        Search {
            opts,
            probes: Vec::new(),
            good: None,
            bad: None,
            pending: None,
            done: None,
        }
    }

    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    pub fn options(&self) -> &SearchOptions {
        &self.opts
    }

    /// The highest level that held so far and the lowest that did not.
    pub fn bracket(&self) -> loadtest_contract::capacity::Bracket {
        loadtest_contract::capacity::Bracket {
            good: self.good,
            bad: self.bad,
        }
    }

    /// The next probe, or the outcome. Asking again before recording returns the same probe.
    pub fn next_step(&mut self) -> Step {
        if let Some(o) = &self.done {
            return Step::Done(o.clone());
        }
        if let Some((users, confirmation)) = self.pending {
            return Step::Probe {
                users,
                confirmation,
            };
        }
        let step = self.decide();
        match &step {
            Step::Probe {
                users,
                confirmation,
            } => self.pending = Some((*users, *confirmation)),
            Step::Done(o) => self.done = Some(o.clone()),
        }
        step
    }

    fn decide(&self) -> Step {
        if self.probes.len() as u32 >= MAX_PROBES {
            return Step::Done(Outcome::Unconverged {
                good: self.good,
                bad: self.bad,
            });
        }
        let probe = |users| Step::Probe {
            users,
            confirmation: false,
        };
        let confirm = |users| Step::Probe {
            users,
            confirmation: true,
        };
        match (self.good, self.bad) {
            (None, None) => probe(self.opts.start_users),
            (None, Some(bad)) => Step::Done(Outcome::BelowStart { bad }),
            (Some(g), None) if g >= self.opts.max_users => confirm(g),
            (Some(g), None) => {
                let next = ((g as f64 * GROWTH).ceil() as u64).clamp(g + 1, self.opts.max_users);
                probe(next)
            }
            (Some(g), Some(b)) => {
                let close = b <= g + 1 || (b - g) as f64 / g as f64 <= self.opts.tolerance;
                if close {
                    confirm(g)
                } else {
                    probe(g + (b - g) / 2)
                }
            }
        }
    }

    /// Records the verdict of the probe [`Search::next_step`] asked for.
    pub fn record(&mut self, verdict: Verdict) {
        let was_retry = self.retrying();
        let Some((users, confirmation)) = self.pending.take() else {
            return;
        };
        self.probes.push(Probe {
            users,
            confirmation,
            verdict: verdict.clone(),
        });
        match verdict {
            Verdict::Good if confirmation => {
                self.done = Some(Outcome::Supported {
                    users,
                    bad: self.bad,
                })
            }
            Verdict::Good => self.good = Some(self.good.map_or(users, |g| g.max(users))),
            Verdict::Bad { .. } => {
                self.bad = Some(self.bad.map_or(users, |b| b.min(users)));
                if self.good.is_some_and(|g| g >= users) {
                    // A level that held before failed now (a confirmation, typically): it is
                    // bad, and so is everything above it; continue below with the highest level
                    // that never failed.
                    self.good = self.highest_never_failed_below(users);
                }
            }
            Verdict::Invalid { .. } if !was_retry && (self.probes.len() as u32) < MAX_PROBES => {
                self.pending = Some((users, confirmation));
            }
            Verdict::Invalid { reason } => {
                self.done = Some(Outcome::AgentLimited {
                    users,
                    good: self.good,
                    reason,
                })
            }
        }
    }

    /// Whether the probe [`Search::next_step`] asked for holds again the level the generator
    /// could not offer last time.
    pub fn retrying(&self) -> bool {
        match (self.pending, self.probes.last()) {
            (Some((users, _)), Some(last)) => {
                last.users == users && matches!(last.verdict, Verdict::Invalid { .. })
            }
            _ => false,
        }
    }

    fn highest_never_failed_below(&self, limit: u64) -> Option<u64> {
        self.probes
            .iter()
            .filter(|p| p.users < limit && p.verdict == Verdict::Good)
            .map(|p| p.users)
            .filter(|u| {
                !self
                    .probes
                    .iter()
                    .any(|q| q.users == *u && q.verdict != Verdict::Good)
            })
            .max()
    }

    /// Runs the search to its end with `probe` holding each level; `progress` hears about each
    /// probe as it is decided and judged.
    pub async fn run<F, Fut>(
        mut self,
        mut probe: F,
        mut progress: impl FnMut(&Probe),
    ) -> (Outcome, Vec<Probe>)
    where
        F: FnMut(u64, bool) -> Fut,
        Fut: Future<Output = Verdict>,
    {
        loop {
            match self.next_step() {
                Step::Done(o) => return (o, self.probes),
                Step::Probe {
                    users,
                    confirmation,
                } => {
                    let v = probe(users, confirmation).await;
                    self.record(v);
                    if let Some(p) = self.probes.last() {
                        progress(p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    use rand::{Rng, SeedableRng};

    /// A deterministic system under test: p99 latency grows steeply with the offered load around
    /// its knee, with a few percent of seeded noise per probe; the SLO is p99 < 100 ms. Its true
    /// capacity (without noise) is `knee`. The generator can offer up to `generator_limit` users.
    struct Model {
        knee: f64,
        noise: f64,
        generator_limit: u64,
        rng: rand::rngs::StdRng,
    }

    impl Model {
        fn new(knee: u64, noise: f64, seed: u64) -> Model {
            Model {
                knee: knee as f64,
                noise,
                generator_limit: u64::MAX,
                rng: rand::rngs::StdRng::seed_from_u64(seed),
            }
        }

        /// p99 in ms: 100 ms exactly at the knee.
        fn p99_ms(&mut self, users: u64) -> f64 {
            let base = 100.0 * (users as f64 / self.knee).powi(8);
            let jitter = 1.0 + self.rng.gen_range(-self.noise..=self.noise);
            base * jitter
        }

        fn verdict(&mut self, users: u64) -> Verdict {
            if users > self.generator_limit {
                return Verdict::Invalid {
                    reason: "the load generator fell behind".into(),
                };
            }
            let p99 = self.p99_ms(users);
            if p99 < 100.0 {
                Verdict::Good
            } else {
                Verdict::Bad {
                    failed: vec![format!("delivery.p99<100ms: {p99:.1} ms")],
                }
            }
        }
    }

    const WARMUP: Duration = Duration::from_secs(30);
    const WINDOW: Duration = Duration::from_secs(60);

    /// Runs the search against the model, each probe holding its level for warm-up + window
    /// of (paused) tokio time.
    async fn search(model: &mut Model, opts: SearchOptions) -> (Outcome, Vec<Probe>, Duration) {
        let t0 = tokio::time::Instant::now();
        let cell = std::cell::RefCell::new(model);
        let model = &cell;
        let (o, probes) = Search::new(opts)
            .run(
                move |users, _| async move {
                    tokio::time::sleep(WARMUP + WINDOW).await;
                    model.borrow_mut().verdict(users)
                },
                |_| {},
            )
            .await;
        (o, probes, t0.elapsed())
    }

    fn opts(start: u64, max: u64, tolerance: f64) -> SearchOptions {
        SearchOptions {
            start_users: start,
            max_users: max,
            tolerance,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn converges_to_the_knee_within_the_tolerance_in_few_probes() {
        for seed in 0..20 {
            for knee in [700, 3_000, 30_000, 123_456] {
                let mut m = Model::new(knee, 0.03, seed);
                let (o, probes, took) = search(&mut m, opts(100, 1_000_000, 0.05)).await;
                let Outcome::Supported {
                    users,
                    bad: Some(bad),
                } = o
                else {
                    panic!("knee {knee} seed {seed}: {o:?}");
                };
                // 3 % noise on a p99 ∝ load⁸ moves the observed knee by about ±0.4 %.
                let k = knee as f64;
                assert!(
                    users as f64 >= k * 0.95 * 0.99 && users as f64 <= k * 1.01,
                    "knee {knee} seed {seed}: answered {users} ({probes:?})"
                );
                assert!((bad - users) as f64 / users as f64 <= 0.05);
                // Geometric growth, bisection, one confirmation (and rarely a failed one).
                let bound = (k / 100.0).log2().ceil() as usize + 6 + 3;
                assert!(
                    probes.len() <= bound,
                    "knee {knee}: {} probes",
                    probes.len()
                );
                assert_eq!(took, (WARMUP + WINDOW) * probes.len() as u32);
                assert!(probes.last().unwrap().confirmation);
                // The answer never failed.
                assert!(!probes
                    .iter()
                    .any(|p| p.users == users && p.verdict != Verdict::Good));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_confirmation_continues_below_and_the_answer_never_failed() {
        // Heavy noise: levels near the knee flip between good and bad.
        for seed in 0..50 {
            let mut m = Model::new(10_000, 0.4, seed);
            let (o, probes, _) = search(&mut m, opts(500, 100_000, 0.02)).await;
            match o {
                Outcome::Supported { users, .. } => {
                    let failed_there = probes
                        .iter()
                        .any(|p| p.users == users && p.verdict != Verdict::Good);
                    assert!(
                        !failed_there,
                        "seed {seed}: {users} failed once: {probes:?}"
                    );
                    assert!(probes.last().unwrap().confirmation);
                }
                Outcome::Unconverged { .. } | Outcome::BelowStart { .. } => {}
                other => panic!("seed {seed}: {other:?}"),
            }
            assert!(probes.len() as u32 <= MAX_PROBES);
        }
    }

    /// A generator that stalls once, on the confirmation (another process took the CPU for a
    /// moment): the level is held again and the search answers.
    #[test]
    fn a_level_invalid_once_is_held_again() {
        let mut s = Search::new(opts(8, 80, 0.10));
        let stalled = || Verdict::Invalid {
            reason: "the load generator fell behind".into(),
        };
        let mut seen = Vec::new();
        let mut stalls = 0;
        let outcome = loop {
            match s.next_step() {
                Step::Done(o) => break o,
                Step::Probe {
                    users,
                    confirmation,
                } => {
                    seen.push((users, confirmation, s.retrying()));
                    let v = if users > 30 {
                        Verdict::Bad {
                            failed: vec!["ws_connect.error_rate<1%".into()],
                        }
                    } else if confirmation && stalls == 0 {
                        stalls += 1;
                        stalled()
                    } else {
                        Verdict::Good
                    };
                    s.record(v);
                }
            }
        };
        assert_eq!(
            outcome,
            Outcome::Supported {
                users: 30,
                bad: Some(32)
            }
        );
        assert_eq!(
            &seen[seen.len() - 2..],
            [(30, true, false), (30, true, true)],
            "{seen:?}"
        );
        assert!(matches!(
            s.probes()[s.probes().len() - 2].verdict,
            Verdict::Invalid { .. }
        ));
        assert!(!s.retrying());
    }

    #[tokio::test(start_paused = true)]
    async fn a_level_invalid_twice_ends_the_search_blaming_the_agents() {
        let mut m = Model::new(50_000, 0.0, 1);
        m.generator_limit = 6_000;
        let (o, probes, _) = search(&mut m, opts(1_000, 100_000, 0.05)).await;
        assert_eq!(
            o,
            Outcome::AgentLimited {
                users: 8_000,
                good: Some(4_000),
                reason: "the load generator fell behind".into()
            }
        );
        assert_eq!(
            probes.iter().map(|p| p.users).collect::<Vec<_>>(),
            [1_000, 2_000, 4_000, 8_000, 8_000]
        );
        let line = o.describe(0.05, 2);
        assert!(
            line.contains("the agents, not the server, are the limit"),
            "{line}"
        );
        assert!(line.contains("about 4 agents (now 2)"), "{line}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_edges_say_what_to_change() {
        // Everything holds: the answer is the maximum, said as "at least".
        let mut m = Model::new(1_000_000, 0.0, 1);
        let (o, probes, _) = search(&mut m, opts(100, 1_000, 0.05)).await;
        assert_eq!(
            o,
            Outcome::Supported {
                users: 1_000,
                bad: None
            }
        );
        assert_eq!(probes.len(), 6, "{probes:?}"); // 100 200 400 800 1000 + confirmation
        assert!(o.describe(0.05, 1).contains("raise --max-users"));
        // Nothing holds.
        let mut m = Model::new(50, 0.0, 1);
        let (o, probes, _) = search(&mut m, opts(100, 1_000, 0.05)).await;
        assert_eq!(o, Outcome::BelowStart { bad: 100 });
        assert_eq!(probes.len(), 1);
        assert!(o.describe(0.05, 1).contains("lower --start-users"));
    }

    #[test]
    fn options_are_checked_naming_the_flag() {
        assert!(opts(100, 1_000, 0.05).validate().is_ok());
        assert!(opts(0, 1_000, 0.05)
            .validate()
            .unwrap_err()
            .contains("--start-users"));
        assert!(opts(100, 10, 0.05)
            .validate()
            .unwrap_err()
            .contains("--max-users"));
        assert!(opts(100, 1_000, 0.0)
            .validate()
            .unwrap_err()
            .contains("--tolerance"));
        assert!(opts(100, 1_000, 1.5)
            .validate()
            .unwrap_err()
            .contains("--tolerance"));
    }
}
