//! Latency and throughput summaries of one phase.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// What one worker observed; merged into a [`PhaseReport`] at the end.
#[derive(Debug, Default)]
pub struct Observations {
    /// Latency of each successful request.
    pub latencies: Vec<Duration>,
    /// Requests issued, successful or not.
    pub requests: u64,
    /// Instances (or result sets) handled by successful requests.
    pub items: u64,
    /// Payload bytes sent (STOW) or received (the others) by successful requests.
    pub bytes: u64,
    /// Failed requests by kind, for example `HTTP 500`.
    pub errors: BTreeMap<String, u64>,
}

impl Observations {
    /// Adds another worker's observations to these.
    pub fn merge(&mut self, other: Observations) {
        self.latencies.extend(other.latencies);
        self.requests += other.requests;
        self.items += other.items;
        self.bytes += other.bytes;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_insert(0) += count;
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
}

/// The nearest-rank percentile of sorted samples: the smallest sample that
/// at least `fraction` of all samples do not exceed.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl LatencySummary {
    /// Summarises samples in any order.
    pub fn from_samples(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        LatencySummary {
            p50_ms: milliseconds(percentile(samples, 0.50)),
            p90_ms: milliseconds(percentile(samples, 0.90)),
            p99_ms: milliseconds(percentile(samples, 0.99)),
            mean_ms: milliseconds(total) / samples.len() as f64,
            max_ms: milliseconds(samples[samples.len() - 1]),
        }
    }
}

/// The result of one phase, as printed and serialised.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// Phase name, for example `stow` or `qido-patient`.
    pub phase: String,
    /// Requests issued.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Instances (STOW/WADO/metadata) or searches (QIDO) that succeeded.
    pub items: u64,
    /// Wall time from the first request to the last response.
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Successful items per second (instances/s for STOW and WADO).
    pub items_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub megabytes_per_s: f64,
    /// Payload bytes moved by successful requests.
    pub bytes: u64,
    /// Latency of successful requests.
    pub latency: LatencySummary,
}

impl PhaseReport {
    /// Builds the report of a phase from everything its workers observed.
    pub fn new(phase: &str, mut observations: Observations, elapsed: Duration) -> Self {
        let errors: u64 = observations.errors.values().sum();
        let successes = observations.latencies.len() as u64;
        let seconds = elapsed.as_secs_f64();
        let per_second = |value: f64| if seconds > 0.0 { value / seconds } else { 0.0 };
        PhaseReport {
            phase: phase.to_string(),
            requests: observations.requests,
            errors,
            error_kinds: std::mem::take(&mut observations.errors),
            items: observations.items,
            elapsed_s: seconds,
            requests_per_s: per_second(successes as f64),
            items_per_s: per_second(observations.items as f64),
            megabytes_per_s: per_second(observations.bytes as f64 / 1e6),
            bytes: observations.bytes,
            latency: LatencySummary::from_samples(&mut observations.latencies),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 0.50), ms(50));
        assert_eq!(percentile(&samples, 0.90), ms(90));
        assert_eq!(percentile(&samples, 0.99), ms(99));
        assert_eq!(percentile(&samples, 1.0), ms(100));
        assert_eq!(percentile(&[ms(7)], 0.5), ms(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        let few = [ms(1), ms(2), ms(3)];
        assert_eq!(percentile(&few, 0.50), ms(2));
        assert_eq!(percentile(&few, 0.99), ms(3));
    }

    #[test]
    fn report_counts_rates_and_sorts_unsorted_samples() {
        let mut first = Observations {
            latencies: vec![ms(30), ms(10)],
            requests: 3,
            items: 2,
            bytes: 2_000_000,
            errors: BTreeMap::from([("HTTP 500".to_string(), 1)]),
        };
        first.merge(Observations {
            latencies: vec![ms(20), ms(40)],
            requests: 2,
            items: 2,
            bytes: 2_000_000,
            errors: BTreeMap::new(),
        });
        let report = PhaseReport::new("wado", first, Duration::from_secs(2));
        assert_eq!(report.requests, 5);
        assert_eq!(report.errors, 1);
        assert_eq!(report.items, 4);
        assert_eq!(report.requests_per_s, 2.0);
        assert_eq!(report.items_per_s, 2.0);
        assert_eq!(report.megabytes_per_s, 2.0);
        assert_eq!(report.latency.p50_ms, 20.0);
        assert_eq!(report.latency.max_ms, 40.0);
        assert_eq!(report.latency.mean_ms, 25.0);
    }
}
