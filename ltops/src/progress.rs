//! Live progress of a run: one line per agent (users, req/s, errors) and an overall line with
//! p99 response time and delivery p99, redrawn every second on a terminal (indicatif), or a
//! plain line every few seconds otherwise (CI logs, pipes).
//!
//! The overall p99 is the highest of the agents' p99s: the exact merged percentile needs the
//! histograms, which only the results files have (the final summary uses them).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use loadtest_contract::control::RunStatus;

/// What the coordinator reports while a run goes on.
pub trait Progress {
    /// A line of text (kept above any live display).
    fn message(&mut self, text: &str);
    /// The run starts: agent indexes with their user counts, and the run's duration.
    fn begin(&mut self, agents: &[(u32, u64)], duration: Duration);
    /// Latest status of each agent (`None`: no answer this time).
    fn update(&mut self, statuses: &[(u32, Option<RunStatus>)]);
    /// The run is over; clear the live display.
    fn end(&mut self);
}

/// The display that suits stderr: live bars on a terminal, plain lines otherwise.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Live::default())
    } else {
        Box::new(Plain::new(Duration::from_secs(5)))
    }
}

/// Aggregated figures over agents.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Overall {
    pub active_users: u64,
    pub target_users: u64,
    pub requests_per_sec: f64,
    pub errors_total: u64,
    pub requests_total: u64,
    pub p99_ms: f64,
    pub delivery_p99_ms: f64,
    pub elapsed_ms: u64,
    pub answering: usize,
}

pub fn overall(statuses: &[(u32, Option<RunStatus>)]) -> Overall {
    let mut o = Overall::default();
    for s in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
        o.answering += 1;
        o.active_users += s.active_users;
        o.target_users += s.target_users;
        o.requests_per_sec += s.requests_per_sec;
        o.errors_total += s.errors_total;
        o.requests_total += s.requests_total;
        o.p99_ms = o.p99_ms.max(s.response_p99_ms);
        o.delivery_p99_ms = o.delivery_p99_ms.max(s.delivery_p99_ms);
        o.elapsed_ms = o.elapsed_ms.max(s.elapsed_ms);
    }
    o
}

fn agent_line(s: &RunStatus) -> String {
    format!(
        "users {}/{}  {:.0} req/s  errors {}  p99 {:.0} ms  lag p99 {:.0} ms  [{}]",
        s.active_users,
        s.target_users,
        s.requests_per_sec,
        s.errors_total,
        s.response_p99_ms,
        s.schedule_lag_p99_ms,
        serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    )
}

fn overall_line(o: &Overall) -> String {
    format!(
        "users {}/{}  {:.0} req/s  requests {}  errors {}  p99 {:.0} ms  delivery p99 {:.0} ms",
        o.active_users,
        o.target_users,
        o.requests_per_sec,
        o.requests_total,
        o.errors_total,
        o.p99_ms,
        o.delivery_p99_ms
    )
}

/// indicatif multi-progress: a bar per agent plus an overall bar, all sized to the duration.
#[derive(Default)]
pub struct Live {
    multi: Option<MultiProgress>,
    bars: Vec<(u32, ProgressBar)>,
    total: Option<ProgressBar>,
}

impl Progress for Live {
    fn message(&mut self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn begin(&mut self, agents: &[(u32, u64)], duration: Duration) {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let len = duration.as_millis().max(1) as u64;
        let style = ProgressStyle::with_template("{prefix:>9} [{bar:20}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        for (i, users) in agents {
            let b = multi.add(ProgressBar::new(len));
            b.set_style(style.clone());
            b.set_prefix(format!("agent-{i}"));
            b.set_message(format!("{users} users, starting"));
            self.bars.push((*i, b));
        }
        let t = multi.add(ProgressBar::new(len));
        t.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:20}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        t.set_prefix("overall");
        self.total = Some(t);
        self.multi = Some(multi);
    }

    fn update(&mut self, statuses: &[(u32, Option<RunStatus>)]) {
        for (i, s) in statuses {
            if let Some((_, bar)) = self.bars.iter().find(|(j, _)| j == i) {
                match s {
                    Some(s) => {
                        bar.set_position(s.elapsed_ms.min(bar.length().unwrap_or(u64::MAX)));
                        bar.set_message(agent_line(s));
                    }
                    None => bar.set_message("no answer"),
                }
            }
        }
        if let Some(t) = &self.total {
            let o = overall(statuses);
            t.set_position(o.elapsed_ms.min(t.length().unwrap_or(u64::MAX)));
            t.set_message(overall_line(&o));
        }
    }

    fn end(&mut self) {
        for (_, b) in self.bars.drain(..) {
            b.finish_and_clear();
        }
        if let Some(t) = self.total.take() {
            t.finish_and_clear();
        }
        if let Some(m) = self.multi.take() {
            let _ = m.clear();
        }
    }
}

/// Plain lines on stderr every `every`.
pub struct Plain {
    every: Duration,
    last: Option<Instant>,
    duration: Duration,
}

impl Plain {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            duration: Duration::ZERO,
        }
    }
}

impl Progress for Plain {
    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn begin(&mut self, agents: &[(u32, u64)], duration: Duration) {
        self.duration = duration;
        let parts: Vec<String> = agents
            .iter()
            .map(|(i, u)| format!("agent-{i}: {u} users"))
            .collect();
        eprintln!(
            "run: {} for {}",
            parts.join(", "),
            humantime::format_duration(duration)
        );
    }

    fn update(&mut self, statuses: &[(u32, Option<RunStatus>)]) {
        if self.last.is_some_and(|l| l.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let o = overall(statuses);
        eprintln!(
            "[{:>4}s/{}s] {}",
            o.elapsed_ms / 1000,
            self.duration.as_secs(),
            overall_line(&o)
        );
        for (i, s) in statuses {
            match s {
                Some(s) => eprintln!("    agent-{i}: {}", agent_line(s)),
                None => eprintln!("    agent-{i}: no answer"),
            }
        }
    }

    fn end(&mut self) {}
}

/// Shows nothing (tests, `--quiet`).
pub struct Silent;

impl Progress for Silent {
    fn message(&mut self, _text: &str) {}
    fn begin(&mut self, _agents: &[(u32, u64)], _duration: Duration) {}
    fn update(&mut self, _statuses: &[(u32, Option<RunStatus>)]) {}
    fn end(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadtest_contract::control::RunState;

    #[test]
    fn overall_sums_rates_and_takes_the_worst_p99() {
        let mut a = RunStatus::idle("a");
        a.state = RunState::Running;
        a.active_users = 10;
        a.requests_per_sec = 5.0;
        a.response_p99_ms = 30.0;
        a.delivery_p99_ms = 4.0;
        let mut b = a.clone();
        b.active_users = 7;
        b.response_p99_ms = 50.0;
        let o = overall(&[(0, Some(a)), (1, Some(b)), (2, None)]);
        assert_eq!(o.active_users, 17);
        assert_eq!(o.requests_per_sec, 10.0);
        assert_eq!(o.p99_ms, 50.0);
        assert_eq!(o.answering, 2);
    }
}
