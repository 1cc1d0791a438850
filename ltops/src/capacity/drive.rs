//! The search driving a running run: each probe sets a level on the [`Fleet`], holds it for
//! the warm-up and the window, reads the agents' interval records of the window and judges them
//! ([`super::judge`]); the answer becomes a [`CapacityReport`].

use std::time::Duration;

use loadtest_contract::capacity::{
    Bracket, CapacityOutcome, CapacityReport, ProbeRecord, CAPACITY_FORMAT, CAPACITY_VERSION,
};
use loadtest_contract::now_ms;
use ltparse::Threshold;

use super::judge::{judge, window_of, AgentWindow, Judgement};
use super::{Outcome, Search, SearchOptions, Step, Verdict};
use crate::coordinator::Fleet;

/// How each probe is held and judged.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Held before the window: users added log in and connect over its first half.
    pub warmup: Duration,
    /// Judged: every SLO must hold over it.
    pub window: Duration,
    /// The agents' interval length (`run.interval`).
    pub interval: Duration,
    /// The SLOs, as parsed thresholds, and as written.
    pub slos: Vec<Threshold>,
}

/// Extra time allowed after a window for its last interval record to be flushed.
const FLUSH_SLACK: Duration = Duration::from_secs(10);

/// Runs the search on `fleet` to its end (or until the run stops) and reports it.
pub async fn search(
    fleet: Fleet,
    run_id: String,
    opts: SearchOptions,
    probe: ProbeOptions,
) -> CapacityReport {
    let started_at_ms = now_ms();
    let mut s = Search::new(opts.clone());
    let mut records: Vec<ProbeRecord> = Vec::new();
    let mut after = vec![0u64; fleet.agents() as usize];
    let outcome = loop {
        let (users, confirmation) = match s.next_step() {
            Step::Done(o) => break Some(o),
            Step::Probe {
                users,
                confirmation,
            } => (users, confirmation),
        };
        let again = s.retrying();
        fleet.say(format!(
            "probe {}: {users} users{}{}, warm-up {} then window {}",
            records.len() + 1,
            if confirmation { " (confirming)" } else { "" },
            if again {
                " (again: the generator could not offer the last one)"
            } else {
                ""
            },
            humantime::format_duration(probe.warmup),
            humantime::format_duration(probe.window),
        ));
        let Some((record, judgement)) = hold(&fleet, &probe, &mut after, users, confirmation).await
        else {
            break None;
        };
        fleet.say(line(&record, &judgement));
        records.push(record);
        s.record(judgement.verdict);
    };
    let slos: Vec<String> = probe.slos.iter().map(|t| t.expr.clone()).collect();
    let (kind, bracket) = match &outcome {
        Some(Outcome::Supported { users, bad }) => (
            CapacityOutcome::Supported,
            Bracket {
                good: Some(*users),
                bad: *bad,
            },
        ),
        Some(Outcome::BelowStart { bad }) => (
            CapacityOutcome::BelowStart,
            Bracket {
                good: None,
                bad: Some(*bad),
            },
        ),
        Some(Outcome::AgentLimited { good, .. }) => (
            CapacityOutcome::AgentLimited,
            Bracket {
                good: *good,
                bad: None,
            },
        ),
        Some(Outcome::Unconverged { good, bad }) => (
            CapacityOutcome::Unconverged,
            Bracket {
                good: *good,
                bad: *bad,
            },
        ),
        None => (CapacityOutcome::Interrupted, s.bracket()),
    };
    let summary = match &outcome {
        Some(o) => o.describe(opts.tolerance, fleet.agents()),
        None => format!(
            "no answer: the run stopped after {} probe(s) (last good {}, first bad {})",
            records.len(),
            bracket.good.map_or("none".into(), |g| g.to_string()),
            bracket.bad.map_or("none".into(), |b| b.to_string()),
        ),
    };
    CapacityReport {
        format: CAPACITY_FORMAT.into(),
        version: CAPACITY_VERSION,
        run_id,
        started_at_ms,
        finished_at_ms: now_ms(),
        slos,
        start_users: opts.start_users,
        max_users: opts.max_users,
        tolerance: opts.tolerance,
        probe_warmup_ms: probe.warmup.as_millis() as u64,
        probe_window_ms: probe.window.as_millis() as u64,
        agents: fleet.agents(),
        outcome: kind,
        supported_users: outcome.as_ref().and_then(Outcome::supported_users),
        bracket,
        summary,
        probes: records,
    }
}

/// Sleeps, unless the run stops first (then `false`).
async fn pause(fleet: &Fleet, d: Duration) -> bool {
    tokio::select! {
        _ = fleet.stopping().cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Holds one level and judges its window; `None` when the run stopped meanwhile or an agent
/// could not be steered or read.
async fn hold(
    fleet: &Fleet,
    probe: &ProbeOptions,
    after: &mut [u64],
    users: u64,
    confirmation: bool,
) -> Option<(ProbeRecord, Judgement)> {
    let started_at_ms = now_ms();
    // An agent that cannot be steered is a broken run, not a verdict on the level.
    if let Err(e) = fleet.set_users(users, probe.warmup / 2).await {
        fleet.say(format!("the search stops: {e}"));
        return None;
    }
    if !pause(fleet, probe.warmup).await {
        return None;
    }
    let from = started_at_ms + probe.warmup.as_millis() as i64;
    let to = from + probe.window.as_millis() as i64;
    // The SLO values so far, a few times per window.
    let step = (probe.window / 3).max(probe.interval * 2);
    let window_end = tokio::time::Instant::now() + probe.window;
    loop {
        let now = tokio::time::Instant::now();
        if now + step >= window_end {
            if !pause(fleet, window_end.saturating_duration_since(now)).await {
                return None;
            }
            break;
        }
        if !pause(fleet, step).await {
            return None;
        }
        if let Ok(replies) = fleet.intervals(after).await {
            let so_far = now_ms();
            let windows: Vec<AgentWindow> = replies
                .iter()
                .filter_map(|(r, offset)| window_of(r, from + offset, so_far + offset))
                .collect();
            if windows.iter().any(|w| !w.intervals.is_empty()) {
                let j = judge(&windows, &probe.slos);
                fleet.say(format!("    so far: {}", slo_line(&j)));
            }
        }
    }
    // Wait until every agent flushed the interval that covers the window's end.
    let give_up = tokio::time::Instant::now() + probe.interval + FLUSH_SLACK;
    let replies = loop {
        let replies = match fleet.intervals(after).await {
            Ok(r) => r,
            Err(e) => {
                fleet.say(format!("the search stops: {e}"));
                return None;
            }
        };
        let flushed = replies.iter().all(|(r, offset)| {
            r.intervals
                .last()
                .is_some_and(|i| i.end_ms >= to + offset - 1)
        });
        if flushed || tokio::time::Instant::now() >= give_up {
            break replies;
        }
        if !pause(fleet, Duration::from_millis(250)).await {
            return None;
        }
    };
    let windows: Vec<AgentWindow> = replies
        .iter()
        .filter_map(|(r, offset)| window_of(r, from + offset, to + offset))
        .collect();
    for (slot, (r, _)) in after.iter_mut().zip(&replies) {
        if let Some(last) = r.intervals.last() {
            *slot = last.index + 1;
        }
    }
    let judgement = if windows.len() < replies.len() {
        invalid("an agent sent interval records without its run header; upgrade the agents".into())
    } else {
        judge(&windows, &probe.slos)
    };
    Some((
        record(users, confirmation, started_at_ms, (from, to), &judgement),
        judgement,
    ))
}

fn invalid(reason: String) -> Judgement {
    Judgement {
        verdict: Verdict::Invalid { reason },
        slos: Vec::new(),
        active_users: 0,
        requests_per_sec: 0.0,
        delivery_p99_ms: None,
    }
}

fn record(
    users: u64,
    confirmation: bool,
    started_at_ms: i64,
    (from, to): (i64, i64),
    j: &Judgement,
) -> ProbeRecord {
    ProbeRecord {
        users,
        active_users: j.active_users,
        confirmation,
        started_at_ms,
        window_start_ms: from,
        window_end_ms: to,
        verdict: j.probe_verdict(),
        slos: j.slos.clone(),
        reason: match &j.verdict {
            Verdict::Good => None,
            Verdict::Bad { failed } => Some(format!("failed: {}", failed.join("; "))),
            Verdict::Invalid { reason } => Some(reason.clone()),
        },
        requests_per_sec: j.requests_per_sec,
        delivery_p99_ms: j.delivery_p99_ms,
    }
}

/// The live line for a judged probe, e.g.
/// `  400 users: good — delivery.p99<50ms 12.30 ms ✓, *.error_rate<1% 0.00% ✓ (81.2 req/s)`.
fn line(r: &ProbeRecord, j: &Judgement) -> String {
    let verdict = match &j.verdict {
        Verdict::Good => "good".to_string(),
        Verdict::Bad { .. } => "bad".to_string(),
        Verdict::Invalid { reason } => format!("invalid ({reason})"),
    };
    format!(
        "  {} users ({} active): {verdict} — {}",
        r.users,
        r.active_users,
        slo_line(j)
    )
}

/// The failed SLO values, the ones that held only counted (a `*` SLO gives one per action),
/// and the request rate.
fn slo_line(j: &Judgement) -> String {
    let mut values: Vec<String> = j
        .slos
        .iter()
        .filter(|v| !v.passed)
        .map(|v| format!("{} {} FAILED", v.slo, v.shown))
        .collect();
    let held = j.slos.iter().filter(|v| v.passed).count();
    if held > 0 {
        values.push(format!("{held} SLO value(s) held"));
    }
    if let Some(d) = j.delivery_p99_ms {
        values.push(format!("delivery p99 {d:.1} ms"));
    }
    values.push(format!("{:.1} req/s", j.requests_per_sec));
    values.join(", ")
}
