//! Latency histograms as they travel between the agent, `ltops` and `ltparse`.
//!
//! Values are microseconds, trackable from 1 µs to one hour at 3 significant digits, so that any
//! request or delivery a test can observe fits and merging several agents' histograms is exact
//! (the same bucket layout everywhere). On the wire a histogram is the standard HdrHistogram V2
//! deflate encoding, base64 (standard alphabet, padded), which other HdrHistogram tools can read.

use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize, Serializer};

/// Smallest value tracked, in microseconds.
pub const LOWEST_US: u64 = 1;
/// Largest value tracked, in microseconds (one hour); larger samples are clamped and counted.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept for every value.
pub const SIGFIG: u8 = 3;

/// Why a histogram could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram is not a valid HdrHistogram V2 encoding: {0}")]
    Decode(String),
    #[error("histograms cannot be merged: {0}")]
    Merge(String),
}

/// A latency histogram in microseconds with the contract's fixed range and precision.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for LatencyHistogram {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // The bounds are constants that satisfy hdrhistogram's preconditions, so this cannot fail.
        let inner = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Self { inner }
    }

    /// Records one sample; samples above [`HIGHEST_US`] are clamped to it rather than dropped, so
    /// a count never goes missing and the max still shows that something was very slow.
    pub fn record_us(&mut self, us: u64) {
        let v = us.clamp(LOWEST_US, HIGHEST_US);
        // In range by construction.
        let _ = self.inner.record(v);
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records `count` samples of the same value (used by tests and by coordinated-omission fills).
    pub fn record_n_us(&mut self, us: u64, count: u64) {
        let v = us.clamp(LOWEST_US, HIGHEST_US);
        let _ = self.inner.record_n(v, count);
    }

    /// Adds every sample of `other`. Exact: both sides share the contract's bucket layout.
    pub fn merge(&mut self, other: &LatencyHistogram) -> Result<(), HistogramError> {
        self.inner
            .add(&other.inner)
            .map_err(|e| HistogramError::Merge(format!("{e:?}")))
    }

    /// The sum over samples of how far each exceeds `floor_us`, microseconds: for lateness,
    /// the time spent beyond a tolerated delay.
    pub fn sum_above_us(&self, floor_us: u64) -> f64 {
        crate::sum_f64(
            self.inner
                .iter_recorded()
                .filter(|v| v.value_iterated_to() > floor_us)
                .map(|v| (v.value_iterated_to() - floor_us) as f64 * v.count_at_value() as f64),
        )
    }

    pub fn count(&self) -> u64 {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Value at quantile `q` in 0.0..=1.0, microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.inner.is_empty() {
            return 0;
        }
        self.inner.value_at_quantile(q)
    }

    pub fn mean_us(&self) -> f64 {
        if self.inner.is_empty() {
            return 0.0;
        }
        self.inner.mean()
    }

    pub fn max_us(&self) -> u64 {
        if self.inner.is_empty() {
            return 0;
        }
        self.inner.max()
    }

    pub fn min_us(&self) -> u64 {
        if self.inner.is_empty() {
            return 0;
        }
        self.inner.min()
    }

    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// The underlying histogram, for callers that need iteration or other statistics.
    pub fn as_hdr(&self) -> &Histogram<u64> {
        &self.inner
    }

    /// V2 deflate encoding, base64.
    pub fn to_base64(&self) -> String {
        let mut buf = Vec::new();
        // Serializing into a Vec only fails on internal invariants of hdrhistogram.
        if V2DeflateSerializer::new()
            .serialize(&self.inner, &mut buf)
            .is_err()
        {
            buf.clear();
        }
        base64::engine::general_purpose::STANDARD.encode(buf)
    }

    pub fn from_base64(s: &str) -> Result<Self, HistogramError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s.trim())?;
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| HistogramError::Decode(format!("{e:?}")))?;
        // Encoded with the contract's own layout (every producer of ours): use it as is, which
        // saves a ~190 KB allocation and a pass over every bucket per histogram read.
        if decoded.low() == LOWEST_US && decoded.high() == HIGHEST_US && decoded.sigfig() == SIGFIG
        {
            return Ok(Self { inner: decoded });
        }
        // Re-home the samples into the contract's layout so merges stay exact even if a producer
        // used other bounds.
        let mut h = Self::new();
        for v in decoded.iter_recorded() {
            h.record_n_us(v.value_iterated_to(), v.count_at_value());
        }
        Ok(h)
    }
}

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        LatencyHistogram::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_above_the_floor_sums_to_positive_zero() {
        let mut h = LatencyHistogram::new();
        h.record_us(10);
        for empty in [LatencyHistogram::new(), h] {
            let sum = empty.sum_above_us(1_000);
            assert!(sum == 0.0 && sum.is_sign_positive(), "{sum}");
        }
    }

    #[test]
    fn roundtrip_keeps_every_sample() {
        let mut h = LatencyHistogram::new();
        for v in [1u64, 15, 250, 1_000, 45_000, 1_200_000, 59_000_000] {
            h.record_n_us(v, v % 7 + 1);
        }
        let back = LatencyHistogram::from_base64(&h.to_base64()).expect("decodes");
        assert_eq!(back, h);
        assert_eq!(back.count(), h.count());
        assert_eq!(back.quantile_us(0.99), h.quantile_us(0.99));
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let mut h = LatencyHistogram::new();
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(h.max_us() >= HIGHEST_US);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        let mut all = LatencyHistogram::new();
        for i in 0..10_000u64 {
            let v = (i * 7919) % 250_000 + 1;
            if i % 3 == 0 {
                a.record_us(v)
            } else {
                b.record_us(v)
            }
            all.record_us(v);
        }
        a.merge(&b).expect("same layout");
        assert_eq!(a, all);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(LatencyHistogram::from_base64("not base64!").is_err());
        assert!(LatencyHistogram::from_base64("AAAA").is_err());
        assert!(LatencyHistogram::from_base64("").is_err());
    }

    #[test]
    fn serde_is_a_base64_string() {
        let mut h = LatencyHistogram::new();
        h.record_us(1234);
        let json = serde_json::to_string(&h).expect("serializes");
        assert!(json.starts_with('"'));
        let back: LatencyHistogram = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, h);
    }
}
