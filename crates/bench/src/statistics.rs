//! Latency percentiles, and the median and spread of repeated runs.

use serde_json::json;

use super::result::RunResult;

/// The quantiles a run keeps of its latency distribution (the chart draws them).
const KEPT_QUANTILES: &[f64] = &[
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
    1.0,
];

/// Publish → Kafka latency of the paced stream, per record: Kafka's `LogAppendTime` of each
/// event's first copy minus the moment it was handed to the MQTT client, in milliseconds.
/// Both clocks are this machine's; the append time is whole milliseconds, truncated, so each
/// value is low by less than 1 ms. An event that never reached Kafka has no latency (it is
/// counted as lost instead).
pub(super) fn latency(mut latencies: Vec<f64>, result: &mut RunResult) {
    if latencies.is_empty() {
        return;
    }
    latencies.sort_by(f64::total_cmp);
    result.latency_measured = latencies.len() as u64;
    result.latency_p50_ms = Some(percentile(&latencies, 0.50));
    result.latency_p99_ms = Some(percentile(&latencies, 0.99));
    result.latency_p999_ms = Some(percentile(&latencies, 0.999));
    result.latency_max_ms = latencies.last().copied();
    result.latency_quantiles = KEPT_QUANTILES
        .iter()
        .map(|&q| (q, percentile(&latencies, q)))
        .collect();
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median, minimum and maximum.
pub(super) fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

pub(super) fn spread_json(values: &[f64]) -> serde_json::Value {
    match spread(values) {
        Some((median, min, max)) => json!({ "median": median, "min": min, "max": max }),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_the_spread_is_median_min_max() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
    }

    #[test]
    fn latency_percentiles_come_from_every_record() {
        let mut result = RunResult::default();
        let values: Vec<f64> = (0..1000).rev().map(f64::from).collect();
        latency(values, &mut result);
        assert_eq!(result.latency_measured, 1000);
        assert_eq!(result.latency_p50_ms, Some(500.0));
        assert_eq!(result.latency_p999_ms, Some(998.0));
        assert_eq!(result.latency_max_ms, Some(999.0));
        assert_eq!(result.latency_quantiles.first(), Some(&(0.0, 0.0)));
        assert_eq!(result.latency_quantiles.last(), Some(&(1.0, 999.0)));
    }
}
