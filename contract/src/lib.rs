//! The contract between the load-testing binaries: everything that `loadtest-agent` writes or
//! accepts and that `ltops` and `ltparse` read or send is defined here, and only here.
//!
//! - [`histogram`]: latency histograms (HDR, microseconds, V2-deflate + base64 on the wire).
//! - [`results`]: the versioned JSON Lines results file — run header, interval and summary records —
//!   with a streaming reader that reports file and line for every malformed record.
//! - [`workload`]: the TOML workload configuration, its presets and its validation.
//! - [`control`]: request and response types of the agent's HTTP control API.
//! - [`capacity`]: `capacity.json`, what a capacity search found.
//!
//! This crate has no async runtime and no HTTP client on purpose: it is plain data plus the code
//! that encodes, decodes and validates it, so every binary can depend on it cheaply.

pub mod actions;
pub mod capacity;
pub mod control;
pub mod histogram;
pub mod results;
pub mod toml_span;
pub mod workload;

pub use actions::Action;
pub use histogram::LatencyHistogram;
pub use results::{Record, ResultsReader, ResultsWriter, SCHEMA_MAJOR, SCHEMA_MINOR};
pub use workload::WorkloadConfig;

/// Milliseconds since the Unix epoch, the one time unit used on the wire (as Mattermost does).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The sum of `values`, +0.0 when there are none. `Iterator::sum` of floats starts from -0.0, so
/// an empty sum printed as "-0.00" in reports (a rate over an interval without actions, say).
pub fn sum_f64(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |acc, x| acc + x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_float_sum_is_positive_zero() {
        let empty = super::sum_f64(std::iter::empty());
        assert!(empty == 0.0 && empty.is_sign_positive());
        assert_eq!(format!("{empty:.2}"), "0.00");
        assert_eq!(super::sum_f64([1.5, 2.0]), 3.5);
    }
}
