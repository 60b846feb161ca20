//! The dashboard's last hour: every [`SAMPLE_EVERY`] one sample per service (the edge's
//! request, 5xx and latency-bucket counters, the instances' summed cpu time and memory) in a
//! ring of [`SAMPLES`]; rates and percentiles are differences of two neighbours. No TSDB: a
//! service costs `SAMPLES` small samples (about 60 KiB), whatever its traffic.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How often a sample is taken.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
pub(crate) const SAMPLES: usize = 360;

/// One service at one moment: counters as they were (not rates).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub at_ms: i64,
    pub requests: u64,
    pub errors: u64,
    /// Per-bucket (not cumulative) latency counts over `bow_edge::LATENCY_BUCKETS_SECONDS`.
    pub latency: Vec<u64>,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// What the sparklines draw: one point per pair of neighbouring samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Series {
    pub requests_per_second: Vec<f64>,
    pub error_percent: Vec<f64>,
    pub p50_seconds: Vec<f64>,
    pub p99_seconds: Vec<f64>,
    pub cpu_cores: Vec<f64>,
    pub memory_bytes: Vec<f64>,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    by_service: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Adds one sample per service; services not sampled this time are dropped (gone from
    /// the file).
    pub(crate) fn record(&mut self, samples: BTreeMap<String, Sample>) {
        self.by_service
            .retain(|service, _| samples.contains_key(service));
        for (service, sample) in samples {
            let ring = self.by_service.entry(service).or_default();
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(sample);
        }
    }

    pub(crate) fn series(&self, service: &str) -> Series {
        let mut series = Series::default();
        let Some(ring) = self.by_service.get(service) else {
            return series;
        };
        for (before, after) in ring.iter().zip(ring.iter().skip(1)) {
            let seconds = ((after.at_ms - before.at_ms) as f64 / 1000.0).max(0.001);
            let requests = after.requests.saturating_sub(before.requests);
            let errors = after.errors.saturating_sub(before.errors);
            series.requests_per_second.push(requests as f64 / seconds);
            series.error_percent.push(if requests == 0 {
                0.0
            } else {
                100.0 * errors as f64 / requests as f64
            });
            let buckets: Vec<u64> = after
                .latency
                .iter()
                .zip(before.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            series.p50_seconds.push(quantile(&buckets, 0.5));
            series.p99_seconds.push(quantile(&buckets, 0.99));
            series
                .cpu_cores
                .push(((after.cpu_seconds - before.cpu_seconds) / seconds).max(0.0));
            series.memory_bytes.push(after.memory_bytes as f64);
        }
        series
    }
}

/// The `q` quantile of the edge's per-bucket latency counts (see [`histogram_quantile`]).
pub(crate) fn quantile(buckets: &[u64], q: f64) -> f64 {
    histogram_quantile(&bow_edge::LATENCY_BUCKETS_SECONDS, buckets, q)
}

/// The `q` quantile of per-bucket counts under upper `bounds` (one more bucket for +Inf),
/// interpolated linearly inside its bucket (as Prometheus' `histogram_quantile`); 0 without
/// observations.
pub fn histogram_quantile(bounds: &[f64], buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (index, count) in buckets.iter().enumerate() {
        if (seen + count) as f64 >= rank && *count > 0 {
            let lower = if index == 0 { 0.0 } else { bounds[index - 1] };
            // The +Inf bucket has no upper bound: its lower one is the best answer.
            let Some(upper) = bounds.get(index) else {
                return lower;
            };
            let within = (rank - seen as f64) / *count as f64;
            return lower + (upper - lower) * within;
        }
        seen += count;
    }
    bounds[bounds.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: i64, requests: u64, errors: u64, fast: u64, slow: u64) -> Sample {
        let mut latency = vec![0; bow_edge::LATENCY_BUCKETS_SECONDS.len() + 1];
        latency[0] = fast; // ≤ 1 ms
        latency[5] = slow; // 50-100 ms
        Sample {
            at_ms: at_s * 1000,
            requests,
            errors,
            latency,
            cpu_seconds: at_s as f64 / 2.0,
            memory_bytes: 1 << 20,
        }
    }

    #[test]
    fn rates_and_percentiles_come_from_neighbours() {
        let mut history = History::default();
        for s in [sample(0, 0, 0, 0, 0), sample(10, 100, 5, 98, 2)] {
            history.record(BTreeMap::from([("web".to_string(), s)]));
        }
        let series = history.series("web");
        assert_eq!(series.requests_per_second, [10.0]);
        assert_eq!(series.error_percent, [5.0]);
        assert!(series.p50_seconds[0] <= 0.001);
        assert!(series.p99_seconds[0] > 0.05 && series.p99_seconds[0] <= 0.1);
        assert_eq!(series.cpu_cores, [0.5]);
    }

    #[test]
    fn the_ring_keeps_an_hour_and_forgets_removed_services() {
        let mut history = History::default();
        for at in 0..(SAMPLES as i64 + 20) {
            history.record(BTreeMap::from([(
                "web".to_string(),
                sample(at * 10, 0, 0, 0, 0),
            )]));
        }
        assert_eq!(history.series("web").memory_bytes.len(), SAMPLES - 1);
        history.record(BTreeMap::new());
        assert!(history.series("web").memory_bytes.is_empty());
    }
}
