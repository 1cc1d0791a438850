//! Clock-offset estimation between `ltops` and an agent, NTP-style.
//!
//! For each round trip we know when we sent (`t0`) and received (`t1`) on our clock and what the
//! agent's clock said in between (`a`). Assuming the request and the reply took equally long, the
//! agent read its clock at our `(t0 + t1) / 2`, so its offset is `a − (t0 + t1) / 2`, with an
//! error of at most half the round trip. We keep the sample with the smallest round trip: it has
//! the tightest bound.

/// One round trip: coordinator send and receive times and the agent's reading, Unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    pub sent_ms: i64,
    pub received_ms: i64,
    pub agent_ms: i64,
}

impl ClockSample {
    pub fn rtt_ms(&self) -> i64 {
        (self.received_ms - self.sent_ms).max(0)
    }

    /// Agent clock minus coordinator clock.
    pub fn offset_ms(&self) -> i64 {
        // (t0 + t1) / 2 without overflow, rounded to nearest.
        let mid = self.sent_ms + (self.received_ms - self.sent_ms + 1).div_euclid(2);
        self.agent_ms - mid
    }
}

/// The estimate from several samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// Agent clock minus coordinator clock, ms.
    pub offset_ms: i64,
    /// Round trip of the sample used; the error is at most half of it.
    pub rtt_ms: i64,
}

/// Picks the minimum-RTT sample; `None` without samples.
pub fn estimate(samples: &[ClockSample]) -> Option<ClockOffset> {
    samples
        .iter()
        .min_by_key(|s| s.rtt_ms())
        .map(|s| ClockOffset {
            offset_ms: s.offset_ms(),
            rtt_ms: s.rtt_ms(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midpoint_and_min_rtt() {
        let s = |sent, received, agent| ClockSample {
            sent_ms: sent,
            received_ms: received,
            agent_ms: agent,
        };
        // Agent 500 ms ahead, symmetric 10 ms round trip.
        assert_eq!(s(1000, 1010, 1505).offset_ms(), 500);
        // Agent behind.
        assert_eq!(s(1000, 1004, 902).offset_ms(), -100);
        // The slow, asymmetric sample is ignored in favour of the tight one.
        let est =
            estimate(&[s(0, 400, 350), s(1000, 1002, 1301), s(2000, 2050, 2330)]).expect("samples");
        assert_eq!(
            est,
            ClockOffset {
                offset_ms: 300,
                rtt_ms: 2
            }
        );
        assert_eq!(estimate(&[]), None);
        // A clock that went backwards does not give a negative round trip.
        assert_eq!(s(10, 5, 10).rtt_ms(), 0);
    }
}
