//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, open and maximum file descriptors, threads, start time) for a
//! Prometheus registry, as `chat-server` and `loadtest-agent` export them.
//!
//! The `prometheus` crate's own `ProcessCollector` reports CPU time as an integer counter
//! (tikv/rust-prometheus#451): a process using 5 % of a core reads 0 for 20 s and then 1 s at
//! once, which makes per-interval CPU figures (the server samples `ltops` stores with a run) and
//! short `rate()`s wrong. [`ProcessCollector`] delegates every family to it and replaces that one
//! value with the process's user plus system time from `getrusage(RUSAGE_SELF)`, which the kernel
//! keeps in microseconds.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

const CPU: &str = "process_cpu_seconds_total";

/// The process metrics of this process; register it once per registry.
pub struct ProcessCollector {
    inner: prometheus::process_collector::ProcessCollector,
}

impl ProcessCollector {
    pub fn for_self() -> Self {
        ProcessCollector {
            inner: prometheus::process_collector::ProcessCollector::for_self(),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::for_self()
    }
}

/// User plus system CPU time of this process so far, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        if let Some(cpu) = cpu_seconds() {
            for f in families.iter_mut().filter(|f| f.get_name() == CPU) {
                for m in f.mut_metric().iter_mut() {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(cpu);
                    m.set_counter(c);
                }
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cpu_of(families: &[MetricFamily]) -> f64 {
        families
            .iter()
            .find(|f| f.get_name() == CPU)
            .map(|f| f.get_metric()[0].get_counter().get_value())
            .unwrap()
    }

    #[test]
    fn cpu_time_has_sub_second_precision_and_the_other_families_stay() {
        let c = ProcessCollector::for_self();
        let before = cpu_of(&c.collect());
        // Burn a little CPU: well under the second the integer counter would need to move.
        let start = cpu_seconds().unwrap();
        let mut x = 0u64;
        while cpu_seconds().unwrap() - start < 0.05 {
            for i in 0..10_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let families = c.collect();
        let after = cpu_of(&families);
        assert!(after - before >= 0.05, "{before} -> {after}");
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(
                families.iter().any(|f| f.get_name() == name),
                "{name} missing"
            );
        }
        // What a registry renders is a valid exposition with the precise value.
        let r = prometheus::Registry::new();
        r.register(Box::new(ProcessCollector::for_self())).unwrap();
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("process_cpu_seconds_total "))
            .unwrap();
        let v: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(v >= after, "{line}");
    }
}
