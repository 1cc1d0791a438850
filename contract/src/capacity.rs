//! `capacity.json`: what a capacity search (`ltops loadtest --find-capacity`) found, written
//! next to the agents' results in `results/<run-id>/`, and read by `ltparse` to render and
//! compare capacity runs.
//!
//! The file is one JSON object, [`CapacityReport`], with `format = "ltops-capacity"` and a
//! `version` bumped when a field changes meaning or disappears (fields are only ever added
//! otherwise).

use serde::{Deserialize, Serialize};

/// File name inside a run's results directory.
pub const CAPACITY_FILE: &str = "capacity.json";
/// The value of [`CapacityReport::format`].
pub const CAPACITY_FORMAT: &str = "ltops-capacity";
/// The current [`CapacityReport::version`].
pub const CAPACITY_VERSION: u32 = 1;

/// A whole capacity search: its settings, every probe, and the answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// Always [`CAPACITY_FORMAT`].
    pub format: String,
    pub version: u32,
    pub run_id: String,
    /// Coordinator wall clock, Unix milliseconds.
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The SLOs every probe was judged on (threshold expressions).
    pub slos: Vec<String>,
    pub start_users: u64,
    pub max_users: u64,
    /// Relative precision asked for, e.g. 0.05.
    pub tolerance: f64,
    pub probe_warmup_ms: u64,
    pub probe_window_ms: u64,
    pub agents: u32,
    pub outcome: CapacityOutcome,
    /// The confirmed answer, when there is one.
    pub supported_users: Option<u64>,
    pub bracket: Bracket,
    /// The sentence the report ends with, e.g. `supported users: 480 (between 480 and 500, tolerance 5%)`.
    pub summary: String,
    pub probes: Vec<ProbeRecord>,
}

/// How the search ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityOutcome {
    /// A level held every time it was probed, the last time as a confirmation.
    Supported,
    /// Even the first level broke an SLO.
    BelowStart,
    /// The agents could not offer the load: the limit is the generator, not the server.
    AgentLimited,
    /// The probe budget ran out before the bracket was within the tolerance.
    Unconverged,
    /// Stopped early (ctrl-c, a lost agent); the probes so far are kept.
    Interrupted,
}

/// The highest level that held and the lowest that did not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bracket {
    pub good: Option<u64>,
    pub bad: Option<u64>,
}

/// A probe's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeVerdict {
    /// Every SLO held over the whole window.
    Good,
    /// At least one SLO did not hold.
    Bad,
    /// The generator could not offer the load; the probe says nothing about the server.
    Invalid,
}

/// One level held for a warm-up and judged over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Users asked for, across all agents.
    pub users: u64,
    /// Users active at the end of the window, as the agents counted them.
    pub active_users: u64,
    /// Held again to confirm the answer.
    pub confirmation: bool,
    /// Coordinator wall clock, Unix ms: when the level was set, and the window judged.
    pub started_at_ms: i64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub verdict: ProbeVerdict,
    /// Each SLO's value over the window.
    pub slos: Vec<SloValue>,
    /// Why the probe was invalid, or which SLOs failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Requests per second and delivery p99 over the window, for the report.
    pub requests_per_sec: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_p99_ms: Option<f64>,
}

/// One SLO evaluated over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloValue {
    pub slo: String,
    /// `None` when the window had nothing to measure it on (no such action, no deliveries).
    pub value: Option<f64>,
    /// The value as a report shows it, e.g. `12.3 ms` or `0.40%`.
    pub shown: String,
    pub passed: bool,
}

/// Why a `capacity.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl CapacityReport {
    /// Reads and checks a `capacity.json`; the error names the file and what is wrong.
    pub fn from_json(text: &str, path: &str) -> Result<Self, CapacityError> {
        let invalid = |message: String| CapacityError::Invalid {
            path: path.to_string(),
            message,
        };
        let de = &mut serde_json::Deserializer::from_str(text);
        let r: CapacityReport = serde_path_to_error::deserialize(de).map_err(|e| {
            invalid(format!(
                "{} at line {}: not a capacity report ({})",
                e.path(),
                e.inner().line(),
                e.inner()
            ))
        })?;
        if r.format != CAPACITY_FORMAT {
            return Err(invalid(format!(
                "format is {:?}, expected {CAPACITY_FORMAT:?}",
                r.format
            )));
        }
        if r.version > CAPACITY_VERSION {
            return Err(invalid(format!(
                "version {} is newer than this tool reads ({CAPACITY_VERSION}); upgrade it",
                r.version
            )));
        }
        if let Some(u) = r.supported_users {
            if r.probes
                .iter()
                .any(|p| p.users == u && p.verdict != ProbeVerdict::Good)
            {
                return Err(invalid(format!(
                    "supported_users {u} failed a probe in the same file; the file was edited"
                )));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> CapacityReport {
        CapacityReport {
            format: CAPACITY_FORMAT.into(),
            version: CAPACITY_VERSION,
            run_id: "r".into(),
            started_at_ms: 1,
            finished_at_ms: 2,
            slos: vec!["*.error_rate<1%".into()],
            start_users: 10,
            max_users: 100,
            tolerance: 0.05,
            probe_warmup_ms: 1000,
            probe_window_ms: 2000,
            agents: 2,
            outcome: CapacityOutcome::Supported,
            supported_users: Some(20),
            bracket: Bracket {
                good: Some(20),
                bad: Some(21),
            },
            summary: "supported users: 20".into(),
            probes: vec![ProbeRecord {
                users: 20,
                active_users: 20,
                confirmation: true,
                started_at_ms: 1,
                window_start_ms: 1,
                window_end_ms: 2,
                verdict: ProbeVerdict::Good,
                slos: vec![],
                reason: None,
                requests_per_sec: 1.0,
                delivery_p99_ms: None,
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_trust() {
        let r = sample();
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(CapacityReport::from_json(&text, "c.json").unwrap(), r);
        let e = CapacityReport::from_json("{\"format\": 1}", "c.json").unwrap_err();
        assert!(e.to_string().starts_with("c.json: format at line 1"), "{e}");
        let mut edited = r.clone();
        edited.probes[0].verdict = ProbeVerdict::Bad;
        let text = serde_json::to_string(&edited).unwrap();
        let e = CapacityReport::from_json(&text, "c.json").unwrap_err();
        assert!(e.to_string().contains("edited"), "{e}");
        let mut newer = r;
        newer.version = 99;
        let text = serde_json::to_string(&newer).unwrap();
        let e = CapacityReport::from_json(&text, "c.json").unwrap_err();
        assert!(e.to_string().contains("upgrade"), "{e}");
    }
}
