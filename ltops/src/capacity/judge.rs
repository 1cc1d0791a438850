//! Judging one probe's window: the agents' interval records inside it, merged exactly by
//! `ltparse` as if they were a results file of their own, then every SLO evaluated on that merge.
//!
//! A window is *invalid* when the merge says the generator, not the server, was the problem
//! (`ltparse`'s [`Lateness::Generator`]: the agents' runtimes stalled or their CPU was at its
//! limit) and either actions fell behind or a latency SLO failed: its latencies are overstated
//! and say nothing about the server. A stalled generator whose window met every latency SLO is
//! judged on its SLOs as usual.

use loadtest_contract::capacity::{ProbeVerdict, SloValue};
use loadtest_contract::control::IntervalsReply;
use loadtest_contract::results::{IntervalRecord, Record, RunHeader};
use loadtest_contract::ResultsWriter;
use ltparse::summary::Lateness;
use ltparse::{RunSummary, Threshold};

use super::Verdict;

/// One agent's records for a window.
#[derive(Clone, Debug)]
pub struct AgentWindow {
    pub header: RunHeader,
    pub intervals: Vec<IntervalRecord>,
}

/// What a window showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub slos: Vec<SloValue>,
    /// Users active at the window's end, over all agents.
    pub active_users: u64,
    pub requests_per_sec: f64,
    pub delivery_p99_ms: Option<f64>,
}

impl Judgement {
    pub fn probe_verdict(&self) -> ProbeVerdict {
        match self.verdict {
            Verdict::Good => ProbeVerdict::Good,
            Verdict::Bad { .. } => ProbeVerdict::Bad,
            Verdict::Invalid { .. } => ProbeVerdict::Invalid,
        }
    }
}

/// The records of `reply` whose interval lies wholly inside `[from_ms, to_ms]` of the agent's
/// clock.
pub fn window_of(reply: &IntervalsReply, from_ms: i64, to_ms: i64) -> Option<AgentWindow> {
    let header = reply.header.clone()?;
    let intervals = reply
        .intervals
        .iter()
        .filter(|i| i.start_ms >= from_ms && i.end_ms <= to_ms)
        .cloned()
        .collect();
    Some(AgentWindow { header, intervals })
}

/// Merges the windows and evaluates `slos` on them.
pub fn judge(windows: &[AgentWindow], slos: &[Threshold]) -> Judgement {
    let summary = match summarize(windows) {
        Ok(s) => s,
        Err(reason) => {
            return Judgement {
                verdict: Verdict::Invalid { reason },
                slos: Vec::new(),
                active_users: 0,
                requests_per_sec: 0.0,
                delivery_p99_ms: None,
            }
        }
    };
    let results = ltparse::evaluate(slos, &summary);
    let values: Vec<SloValue> = results
        .iter()
        .map(|r| SloValue {
            slo: if r.subject.is_empty() || r.expr.starts_with(&r.subject) {
                r.expr.clone()
            } else {
                format!("{} ({})", r.expr, r.subject)
            },
            value: r.actual,
            shown: r.actual_display.clone(),
            passed: r.passed,
        })
        .collect();
    // Each agent's own last interval: agents' intervals need not line up to the millisecond.
    let active_users = windows
        .iter()
        .filter_map(|w| w.intervals.last())
        .map(|i| i.gauges.active_users)
        .sum();
    let delivery_p99_ms =
        (summary.delivery.latency.count > 0).then(|| summary.delivery.latency.p99_us as f64 / 1e3);
    // A generator that stalled overstates latencies: a window whose SLOs held anyway is good
    // (the server did at least that well), and errors are the server's whatever the generator
    // did; one that fell behind, or whose latency SLOs failed while it stalled, says nothing
    // about the server.
    let failed_latency = results.iter().filter(|r| !r.passed).any(|r| {
        slos.iter()
            .any(|t| t.expr == r.expr && t.kind == ltparse::threshold::Kind::Latency)
    });
    let verdict = if summary.schedule.cause == Lateness::Generator
        && (summary.schedule.behind || failed_latency)
    {
        let s = &summary.schedule;
        Verdict::Invalid {
            reason: format!(
                "the load generator fell behind ({:.1}% of actions late, agent CPU {}, runtime stalled {:.1}% of the time)",
                s.late_ratio * 100.0,
                s.cpu_share
                    .map_or("unknown".to_string(), |c| format!("{:.0}% of its limit", c * 100.0)),
                s.probe_stalled * 100.0
            ),
        }
    } else {
        let failed: Vec<String> = values
            .iter()
            .filter(|v| !v.passed)
            .map(|v| format!("{}: {}", v.slo, v.shown))
            .collect();
        if failed.is_empty() {
            Verdict::Good
        } else {
            Verdict::Bad { failed }
        }
    };
    Judgement {
        verdict,
        slos: values,
        active_users,
        requests_per_sec: summary.totals.throughput_per_s,
        delivery_p99_ms,
    }
}

/// The windows as one run summary: each agent's header (starting at its first interval in the
/// window) and its intervals, renumbered from the window's first, loaded like a results file.
fn summarize(windows: &[AgentWindow]) -> Result<RunSummary, String> {
    let first = windows
        .iter()
        .flat_map(|w| w.intervals.iter().map(|i| i.index))
        .min()
        .ok_or("no interval record fell inside the window; lengthen --probe-window to at least two of run.interval")?;
    let mut bytes = Vec::new();
    {
        let mut w = ResultsWriter::new(&mut bytes);
        for win in windows.iter().filter(|w| !w.intervals.is_empty()) {
            let mut header = win.header.clone();
            header.started_at_ms = win.intervals.iter().map(|i| i.start_ms).min().unwrap_or(0);
            let mut put = |r: &Record| {
                w.write(r)
                    .map_err(|e| format!("cannot encode the window: {e}"))
            };
            put(&Record::Header(header))?;
            for i in &win.intervals {
                let mut i = i.clone();
                i.index -= first;
                put(&Record::Interval(i))?;
            }
        }
    }
    let input = ltparse::Input::from_reader("probe window", &bytes[..]);
    let loaded = ltparse::load([input]).map_err(|e| format!("the window's records: {e}"))?;
    let run = loaded
        .aggregate()
        .map_err(|e| format!("the window's records: {e}"))?;
    Ok(ltparse::summarize(&run))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use loadtest_contract::results::{ActionStats, DeliveryStats, RunSettings, ScheduleStats};
    use loadtest_contract::LatencyHistogram;

    fn header(agent: &str) -> RunHeader {
        RunHeader {
            schema_version: loadtest_contract::results::schema_version(),
            run_id: "cap".into(),
            agent_id: agent.into(),
            tool: "test".into(),
            tool_version: "0".into(),
            started_at_ms: 0,
            interval_ms: 1000,
            clock_offset_ms: 0,
            settings: RunSettings {
                target: "http://x".into(),
                users: 10,
                user_offset: 0,
                total_users: 20,
                agents: 2,
                duration_ms: 60_000,
                ramp_up_ms: 0,
                mode: "closed".into(),
                mean_interval_ms: 1000,
                interval_jitter_ms: 0,
                posts_per_second: None,
                action_mix: Default::default(),
                preset: None,
                seed: 1,
                load_runtimes: None,
            },
        }
    }

    /// An interval of `hits` create_post calls taking `ms` each, `errors` of them failed.
    fn interval(agent: &str, index: u64, hits: u64, errors: u64, ms: u64) -> IntervalRecord {
        let mut h = LatencyHistogram::new();
        for _ in 0..hits - errors {
            h.record_us(ms * 1000);
        }
        let mut a = ActionStats {
            ok: hits - errors,
            response_time: h.clone(),
            service_time: h,
            ..Default::default()
        };
        a.errors.http_5xx = errors;
        IntervalRecord {
            run_id: "cap".into(),
            agent_id: agent.into(),
            index,
            start_ms: index as i64 * 1000,
            end_ms: index as i64 * 1000 + 1000,
            actions: [("create_post".to_string(), a)].into_iter().collect(),
            delivery: DeliveryStats::default(),
            schedule: ScheduleStats::default(),
            gauges: loadtest_contract::results::Gauges {
                active_users: 10,
                ..Default::default()
            },
        }
    }

    fn slos(e: &[&str]) -> Vec<Threshold> {
        e.iter()
            .map(|s| ltparse::parse_threshold(s).unwrap())
            .collect()
    }

    #[test]
    fn the_window_alone_is_merged_exactly_over_agents_and_judged() {
        // Agent a is slow before the window and fast inside it; b has 1 error in 40 inside.
        let reply = |agent: &str, slow: u64, errors: u64| IntervalsReply {
            header: Some(header(agent)),
            intervals: (0..6)
                .map(|i| {
                    if i < 3 {
                        interval(agent, i, 20, 0, slow)
                    } else {
                        interval(agent, i, 20, errors * u64::from(i == 4), 10)
                    }
                })
                .collect(),
        };
        let a = window_of(&reply("a", 900, 0), 3000, 5000).unwrap();
        let b = window_of(&reply("b", 5, 1), 3000, 5000).unwrap();
        assert_eq!(a.intervals.len(), 2);
        let j = judge(
            &[a.clone(), b.clone()],
            &slos(&["create_post.p99<100ms", "*.error_rate<1%"]),
        );
        // 1 error of 80 calls = 1.25 %: bad, on the error rate only; p99 is the window's 10 ms.
        let Verdict::Bad { failed } = &j.verdict else {
            panic!("{j:?}")
        };
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].contains("error_rate"), "{failed:?}");
        assert!(failed[0].contains("1.25%"), "{failed:?}");
        let p99 = j.slos.iter().find(|s| s.slo.contains("p99")).unwrap();
        assert!(p99.passed);
        assert!((p99.value.unwrap() - 10_000.0).abs() < 100.0, "{p99:?}");
        assert_eq!(j.active_users, 20);
        // 80 calls over 2 s.
        assert!(
            (j.requests_per_sec - 40.0).abs() < 0.01,
            "{}",
            j.requests_per_sec
        );
        let j = judge(
            &[a, b],
            &slos(&["create_post.p99<100ms", "*.error_rate<2%"]),
        );
        assert_eq!(j.verdict, Verdict::Good);
    }

    #[test]
    fn an_empty_window_or_a_generator_that_fell_behind_is_invalid() {
        let reply = IntervalsReply {
            header: Some(header("a")),
            intervals: (0..3).map(|i| interval("a", i, 10, 0, 5)).collect(),
        };
        let w = window_of(&reply, 10_000, 12_000).unwrap();
        let j = judge(&[w], &slos(&["*.error_rate<1%"]));
        let Verdict::Invalid { reason } = j.verdict else {
            panic!()
        };
        assert!(reason.contains("--probe-window"), "{reason}");
        // A generator whose idle probe found the runtime stalled for most of the window.
        let mut stalled = reply.clone();
        for i in &mut stalled.intervals {
            let mut lag = LatencyHistogram::new();
            lag.record_n_us(500_000, 20);
            i.schedule.actions = 10;
            i.schedule.late = 10;
            i.schedule.lag = lag.clone();
            i.schedule.generator_lag = lag.clone();
            i.schedule.probe_lag = lag;
        }
        let w = window_of(&stalled, 0, 3000).unwrap();
        let j = judge(&[w], &slos(&["*.error_rate<1%"]));
        let Verdict::Invalid { reason } = &j.verdict else {
            panic!("{j:?}")
        };
        assert!(reason.contains("generator fell behind"), "{reason}");
        // Stalled without falling behind, every SLO met anyway: the server did at least that well.
        let mut stalled_only = stalled.clone();
        for i in &mut stalled_only.intervals {
            i.schedule.late = 0;
            i.schedule.lag = LatencyHistogram::new();
            i.schedule.lag.record_n_us(1_000, 10);
        }
        let w = window_of(&stalled_only, 0, 3000).unwrap();
        let j = judge(std::slice::from_ref(&w), &slos(&["*.error_rate<1%"]));
        assert_eq!(j.verdict, Verdict::Good, "{j:?}");
        // ...but a failed latency SLO while it stalled is not the server's.
        let j = judge(std::slice::from_ref(&w), &slos(&["create_post.p99<1ms"]));
        assert!(matches!(j.verdict, Verdict::Invalid { .. }), "{j:?}");
        // Counts and errors are the server's, whatever the generator did: bad, not invalid.
        let j = judge(&[w], &slos(&["create_post.count<1"]));
        assert!(matches!(j.verdict, Verdict::Bad { .. }), "{j:?}");
    }
}
