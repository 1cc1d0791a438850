//! When each simulated user acts and what it does, reproducibly: every user draws from its own
//! ChaCha stream derived from the run seed and the user's data-set index, so the same seed gives
//! the same schedule whatever the number of agents or the order tasks run in.
//!
//! Waits are uniform in `mean ± jitter` at millisecond resolution (the tool we replace applied its
//! variance in nanoseconds), times the user's rate factor. In the open model, posts arrive as a
//! Poisson process at the agent's share of the global rate instead of from users' timers.

use std::time::Duration;

use tokio::time::Instant;

use loadtest_contract::workload::{BehaviourConfig, Mode};
use loadtest_contract::Action;
use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One user's schedule and the random choices of its actions.
pub struct UserSchedule {
    rng: ChaCha8Rng,
    factor: f64,
    mean_ms: u64,
    jitter_ms: u64,
    actions: Vec<Action>,
    weights: Option<WeightedIndex<u32>>,
}

/// The user's RNG: stream `user` of the run seed.
pub fn user_rng(seed: u64, user: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(user);
    rng
}

/// Actions a user's own timer chooses from. In the open model posts come from the arrival
/// process, so `create_post` is taken out of the users' mix.
pub fn user_mix(b: &BehaviourConfig) -> Vec<(Action, u32)> {
    b.action_weights()
        .into_iter()
        .filter(|(a, _)| !(b.mode == Mode::Open && *a == Action::CreatePost))
        .collect()
}

impl UserSchedule {
    pub fn new(b: &BehaviourConfig, seed: u64, user: u64) -> Self {
        let mut rng = user_rng(seed, user);
        let factor = if b.rate_factors.is_empty() {
            1.0
        } else {
            let w: Vec<u32> = b.rate_factors.iter().map(|f| f.weight).collect();
            // Validated configs have a positive weight; fall back to 1 rather than fail.
            WeightedIndex::new(&w)
                .map(|d| b.rate_factors[d.sample(&mut rng)].factor)
                .unwrap_or(1.0)
        };
        let mix = user_mix(b);
        let weights = WeightedIndex::new(mix.iter().map(|(_, w)| *w)).ok();
        Self {
            rng,
            factor,
            mean_ms: b.mean_interval.as_millis() as u64,
            jitter_ms: b.interval_jitter.as_millis() as u64,
            actions: mix.into_iter().map(|(a, _)| a).collect(),
            weights,
        }
    }

    pub fn rate_factor(&self) -> f64 {
        self.factor
    }

    /// The next wait: uniform milliseconds in `[mean − jitter, mean + jitter]`, times the factor.
    pub fn next_wait(&mut self) -> Duration {
        let lo = self.mean_ms.saturating_sub(self.jitter_ms);
        let hi = self.mean_ms + self.jitter_ms;
        let ms = self.rng.gen_range(lo..=hi);
        Duration::from_millis((ms as f64 * self.factor).round() as u64)
    }

    /// Delay of the first action after the user is connected: a uniform phase within one wait,
    /// so that users started together do not act in lockstep.
    pub fn first_wait(&mut self) -> Duration {
        let w = self.next_wait();
        let ms = w.as_millis() as u64;
        Duration::from_millis(self.rng.gen_range(0..=ms))
    }

    /// The next action from the mix; `None` when the mix is empty (open model, posts only).
    pub fn next_action(&mut self) -> Option<Action> {
        let d = self.weights.as_ref()?;
        Some(self.actions[d.sample(&mut self.rng)])
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    /// Uniform index below `n` (n > 0).
    pub fn pick(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.rng.gen_range(0..n)
        }
    }
}

/// The intended start times of one user's actions. The next action is due one wait after the
/// previous action's *intended* start, not after it finished: an action that starts late does
/// not push the schedule back, so every later action shows the lag (no coordinated omission).
pub struct Pacer {
    next: Instant,
}

impl Pacer {
    pub fn new(first: Instant) -> Self {
        Self { next: first }
    }

    /// When the next action is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Takes the due action's intended start and schedules the following one `wait` later.
    pub fn advance(&mut self, wait: Duration) -> Instant {
        let intended = self.next;
        self.next = intended + wait;
        intended
    }
}

/// When the `local`-th of `count` users starts: spread evenly over the ramp-up.
pub fn ramp_offset(local: u64, count: u64, ramp_up: Duration) -> Duration {
    if count <= 1 {
        return Duration::ZERO;
    }
    ramp_up.mul_f64(local as f64 / count as f64)
}

/// Open-model arrivals: exponential gaps at `rate` per second.
pub struct Arrivals {
    rng: ChaCha8Rng,
    rate: f64,
}

impl Arrivals {
    /// `seed` is the run seed; the arrival stream is separate from every user's stream.
    pub fn new(seed: u64, agent_stream: u64, rate: f64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6f70_656e_6d6f_6465);
        rng.set_stream(agent_stream);
        Self { rng, rate }
    }

    pub fn next_gap(&mut self) -> Duration {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Duration::from_secs(3600);
        }
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() / self.rate)
    }

    /// The draws of one post besides its gap: the poster (an index to start looking for a live
    /// user from) and whether it is a reply (`reply_fraction` of posts). Both are drawn for
    /// every post, whether or not a live user is found for it, so the schedule after a post
    /// does not depend on who was live: every run with one seed posts at the same moments
    /// (`examples/arrivals.rs` lists them).
    pub fn post(&mut self, reply_fraction: f64) -> (usize, bool) {
        let poster = self.pick(usize::MAX >> 1);
        let reply = self.pick(1000) < (reply_fraction * 1000.0) as usize;
        (poster, reply)
    }

    pub fn pick(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.rng.gen_range(0..n)
        }
    }
}

/// This agent's share of the global post rate.
pub fn agent_rate(posts_per_second: f64, local_users: u64, total_users: u64) -> f64 {
    if total_users == 0 {
        return 0.0;
    }
    posts_per_second * local_users as f64 / total_users as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadtest_contract::WorkloadConfig;

    fn behaviour(extra: &str) -> BehaviourConfig {
        WorkloadConfig::from_toml_str(&format!("preset = \"quick\"\n{extra}"), "t.toml")
            .expect("valid")
            .behaviour
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let b = behaviour("");
        let run = |seed, user| {
            let mut s = UserSchedule::new(&b, seed, user);
            (0..50)
                .map(|_| (s.next_wait(), s.next_action()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7, 3), run(7, 3));
        assert_ne!(run(7, 3), run(8, 3));
        assert_ne!(run(7, 3), run(7, 4));
    }

    #[test]
    fn jitter_is_milliseconds_not_nanoseconds() {
        let b = behaviour("[behaviour]\nmean_interval = \"1s\"\ninterval_jitter = \"250ms\"\n");
        let mut s = UserSchedule::new(&b, 1, 0);
        let waits: Vec<u128> = (0..2000).map(|_| s.next_wait().as_millis()).collect();
        let min = *waits.iter().min().expect("min");
        let max = *waits.iter().max().expect("max");
        assert!((750..=770).contains(&min), "min {min}");
        assert!((1230..=1250).contains(&max), "max {max}");
        // Spread over the whole range, not clustered at the mean.
        let below_900 = waits.iter().filter(|w| **w < 900).count();
        assert!(below_900 > 400, "{below_900} of 2000 below 900ms");
    }

    #[test]
    fn rate_factors_scale_waits() {
        let b = behaviour(
            "[behaviour]\nmean_interval = \"1s\"\ninterval_jitter = \"0ms\"\nrate_factors = [{ weight = 1, factor = 30.0 }]\n",
        );
        let mut s = UserSchedule::new(&b, 1, 0);
        assert_eq!(s.rate_factor(), 30.0);
        assert_eq!(s.next_wait(), Duration::from_secs(30));
    }

    #[test]
    fn mix_weights_are_followed() {
        let b = behaviour("");
        let mut s = UserSchedule::new(&b, 1, 0);
        let n = 20_000;
        let switches = (0..n)
            .filter(|_| s.next_action() == Some(Action::SwitchChannel))
            .count();
        // quick preset: switch_channel 56 of 104.
        let share = switches as f64 / n as f64;
        assert!((0.50..0.58).contains(&share), "{share}");
    }

    #[test]
    fn open_model_takes_posts_out_of_the_user_mix() {
        let b = behaviour("[behaviour]\nmode = \"open\"\nposts_per_second = 5.0\n");
        assert!(user_mix(&b).iter().all(|(a, _)| *a != Action::CreatePost));
        assert!((agent_rate(21.0, 500, 2000) - 5.25).abs() < 1e-9);
        let mut a = Arrivals::new(1, 0, 100.0);
        let total: Duration = (0..10_000).map(|_| a.next_gap()).sum();
        let mean = total.as_secs_f64() / 10_000.0;
        assert!((0.009..0.011).contains(&mean), "{mean}");
    }

    #[test]
    fn a_posts_draws_do_not_depend_on_what_the_caller_does_with_them() {
        // The dispatcher takes a post's draws whether or not it finds a live user; the gaps
        // after it are then one seed's whatever the reply fraction or who was live.
        let gaps = |fraction: f64| {
            let mut a = Arrivals::new(7, 15_000, 10.5);
            (0..1_000)
                .map(|_| {
                    let g = a.next_gap();
                    a.post(fraction);
                    g
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(gaps(0.0), gaps(1.0));
        let mut a = Arrivals::new(7, 15_000, 10.5);
        let replies = (0..10_000).filter(|_| a.post(0.1).1).count();
        assert!((800..1_200).contains(&replies), "{replies}");
        assert!((0..100).all(|_| !a.post(0.0).1) && (0..100).all(|_| a.post(1.0).1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_action_shows_as_lag_on_the_following_ones() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start + Duration::from_secs(1));
        let mut lags = Vec::new();
        for _ in 0..4 {
            tokio::time::sleep_until(pacer.due()).await;
            let intended = pacer.advance(Duration::from_secs(1));
            lags.push((Instant::now() - intended).as_millis());
            // Every action takes 2.5 s against a 1 s schedule.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        assert_eq!(lags, vec![0, 1500, 3000, 4500]);
        // On time again once the actions are fast.
        let mut pacer = Pacer::new(Instant::now());
        for _ in 0..3 {
            tokio::time::sleep_until(pacer.due()).await;
            let intended = pacer.advance(Duration::from_millis(250));
            assert_eq!(Instant::now(), intended);
        }
    }

    #[test]
    fn ramp_spreads_starts() {
        let r = Duration::from_secs(10);
        assert_eq!(ramp_offset(0, 10, r), Duration::ZERO);
        assert_eq!(ramp_offset(5, 10, r), Duration::from_secs(5));
        assert_eq!(ramp_offset(0, 1, r), Duration::ZERO);
    }
}
