//! What one run measured, and the machine it ran on, as the JSON result records them.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::brokers::KafkaBroker;
use super::BenchArgs;

/// Everything measured in one run of one contender.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(super) struct RunResult {
    pub(super) contender: String,
    pub(super) repetition: usize,
    pub(super) connections: usize,
    pub(super) processes: usize,
    pub(super) topic_prefix: String,
    pub(super) events: u64,
    pub(super) payload_bytes: u64,
    pub(super) seconds: f64,
    pub(super) events_per_sec: f64,
    pub(super) mb_per_sec: f64,
    pub(super) ratio_to_ceiling: Option<f64>,
    pub(super) cpu_seconds: f64,
    pub(super) cpu_percent: f64,
    pub(super) peak_rss_mb: f64,
    pub(super) latency_events: u64,
    /// Events of the latency stream whose append time was read back (per-record latency).
    pub(super) latency_measured: u64,
    pub(super) latency_p50_ms: Option<f64>,
    pub(super) latency_p99_ms: Option<f64>,
    pub(super) latency_p999_ms: Option<f64>,
    pub(super) latency_max_ms: Option<f64>,
    /// (quantile, milliseconds) of the run's latency distribution.
    pub(super) latency_quantiles: Vec<(f64, f64)>,
    pub(super) kafka_records: Option<u64>,
    pub(super) lost: Option<u64>,
    pub(super) duplicated: Option<u64>,
    pub(super) unexpected: Option<u64>,
    /// "event ids" (read back and matched) or "counts" (records in Kafka vs published).
    pub(super) verified_by: String,
    pub(super) left_at_broker: Option<u64>,
    pub(super) exit_code: Option<i32>,
    pub(super) error: Option<String>,
    /// Kafka → Parquet over this run's topics (the main jobstream run only).
    pub(super) parquet: Option<ParquetResult>,
    pub(super) parquet_error: Option<String>,
    /// (seconds since start, events in Kafka) for the chart.
    pub(super) series: Vec<(f64, u64)>,
}

/// The Kafka → Parquet stage over a jobstream run's topics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(super) struct ParquetResult {
    pub(super) rows: u64,
    pub(super) seconds: f64,
    pub(super) rows_per_sec: f64,
    pub(super) cpu_percent: f64,
    pub(super) peak_rss_mb: f64,
}

pub(super) fn first_line(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

pub(super) fn machine(args: &BenchArgs, broker: &KafkaBroker) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gb": (memory_gb * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "mosquitto": first_line(&args.mosquitto, "-h"),
        "kafka": broker.version.clone(),
        "jobstream": env!("CARGO_PKG_VERSION"),
        "jobstream_build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

pub(super) fn fmt_opt(value: Option<(f64, f64, f64)>, unit: &str, digits: usize) -> String {
    match value {
        Some((m, lo, hi)) => format!("{m:.digits$}{unit} ({lo:.digits$}–{hi:.digits$})"),
        None => "—".to_owned(),
    }
}

pub(super) fn sum_opt(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let mut any = false;
    let mut total = 0;
    for v in values.flatten() {
        any = true;
        total += v;
    }
    any.then_some(total)
}
