//! Latency percentiles, and the median and spread of repeated runs.

use std::time::Instant;

use serde_json::json;

use super::result::RunResult;
use super::sampling::Sample;

/// Publish → Kafka latency of the paced stream: the k-th event published after the backlog is
/// matched with the first watermark sample showing `backlog + k` records. Exact when Kafka
/// confirms in publish order; otherwise it pairs the k-th publish with the k-th confirmation,
/// which keeps the mean exact and moves percentiles only by the reordering (milliseconds at a
/// pace far below capacity). Each value is an upper bound, late by at most one sample interval
/// plus a ListOffsets round trip.
pub(super) fn latency(backlog: u64, sent: &[Instant], samples: &[Sample], result: &mut RunResult) {
    let mut latencies = Vec::with_capacity(sent.len());
    let mut next = 0;
    for (k, sent_at) in sent.iter().enumerate() {
        let target = backlog + k as u64 + 1;
        while next < samples.len()
            && (samples[next].watermarks.iter().sum::<i64>().max(0) as u64) < target
        {
            next += 1;
        }
        let Some(sample) = samples.get(next) else {
            break;
        };
        latencies.push(sample.at.saturating_duration_since(*sent_at).as_secs_f64() * 1e3);
    }
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        result.latency_p50_ms = Some(percentile(&latencies, 0.50));
        result.latency_p99_ms = Some(percentile(&latencies, 0.99));
        result.latency_max_ms = latencies.last().copied();
    }
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
}
