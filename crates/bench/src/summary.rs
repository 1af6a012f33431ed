//! The comparison's outcome: the table on standard output and the JSON result, with ratios
//! taken within each repetition (the machines are shared and noisy).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use super::chart::{chart, latency_chart};
use super::contender::{Contender, Plan};
use super::result::{fmt_opt, machine, sum_opt, ParquetResult, RunResult};
use super::runner::Bench;
use super::statistics::{spread, spread_json};

/// What the runs add up to.
pub(super) struct Summary {
    /// The table for standard output.
    pub(super) table: String,
    /// Per contender: medians and ranges, losses and duplicates (the result's `summary`).
    pub(super) contenders: Vec<serde_json::Value>,
    /// jobstream's rate over the Python bridge's, per repetition.
    pub(super) ratio_to_python: Vec<f64>,
    /// jobstream's rate over the `mosquitto_sub | producer` pipeline's, per repetition.
    pub(super) ratio_to_pipeline: Vec<f64>,
    /// Kafka → Parquet rows per second, per jobstream run.
    pub(super) parquet_rates: Vec<f64>,
    /// Average payload bytes of the backlog.
    pub(super) avg_payload: f64,
    /// The rate-over-time chart (SVG) of each contender's median run.
    pub(super) chart: String,
    /// The latency distribution (SVG) of each contender's run with the median p99.
    pub(super) latency_chart: String,
    /// Every run.
    pub(super) results: Vec<RunResult>,
}

impl Summary {
    pub(super) fn of(bench: &Bench, plans: &[Plan], mut results: Vec<RunResult>) -> Summary {
        // Ratios within each repetition.
        let ceilings: BTreeMap<usize, f64> = results
            .iter()
            .filter(|r| r.contender == "ceiling" && r.error.is_none())
            .map(|r| (r.repetition, r.events_per_sec))
            .collect();
        let rates_of = |label: &str| -> BTreeMap<usize, f64> {
            results
                .iter()
                .filter(|r| r.contender == label && r.error.is_none())
                .map(|r| (r.repetition, r.events_per_sec))
                .collect()
        };
        let pythons = rates_of(Contender::Python.label());
        let pipelines = rates_of(Contender::Pipeline.label());
        for result in &mut results {
            if result.error.is_none() {
                result.ratio_to_ceiling = ceilings
                    .get(&result.repetition)
                    .map(|c| result.events_per_sec / c);
            }
        }
        let jobstream_over = |baseline: &BTreeMap<usize, f64>| -> Vec<f64> {
            results
                .iter()
                .filter(|r| r.contender == Contender::Jobstream.label() && r.error.is_none())
                .filter_map(|r| baseline.get(&r.repetition).map(|b| r.events_per_sec / b))
                .collect()
        };
        let ratio_to_python = jobstream_over(&pythons);
        let ratio_to_pipeline = jobstream_over(&pipelines);

        let mut labels: Vec<String> = Vec::new();
        for plan in plans
            .iter()
            .take(plans.len() / bench.args.repetitions.max(1))
        {
            if !labels.contains(&plan.label) {
                labels.push(plan.label.clone());
            }
        }
        // Table order: the contenders as given, then scaling.
        labels.sort_by_key(|l| {
            bench
                .args
                .contenders
                .iter()
                .position(|c| c.label() == l)
                .unwrap_or(usize::MAX)
        });

        let mut summary = Vec::new();
        let mut table = String::new();
        let _ = writeln!(
            table,
            "{:<24} {:>26} {:>8} {:>20} {:>9} {:>9} {:>9} {:>7} {:>8} {:>6} {:>6} {:>5}",
            "contender",
            "events/s median (range)",
            "MB/s",
            "× ceiling (range)",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "CPU %",
            "RSS MB",
            "lost",
            "dup",
            "fail"
        );
        let mut chart_runs = Vec::new();
        let mut latency_runs = Vec::new();
        for label in &labels {
            let ok: Vec<&RunResult> = results
                .iter()
                .filter(|r| &r.contender == label && r.error.is_none())
                .collect();
            let failed = results
                .iter()
                .filter(|r| &r.contender == label && r.error.is_some())
                .count();
            let col = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
                ok.iter().filter_map(|r| f(r)).collect()
            };
            let rate = col(&|r| Some(r.events_per_sec));
            let mb = col(&|r| Some(r.mb_per_sec));
            let ratio = col(&|r| r.ratio_to_ceiling);
            let p50 = col(&|r| r.latency_p50_ms);
            let p99 = col(&|r| r.latency_p99_ms);
            let p999 = col(&|r| r.latency_p999_ms);
            let cpu = col(&|r| Some(r.cpu_percent));
            let rss = col(&|r| Some(r.peak_rss_mb));
            let lost = sum_opt(ok.iter().map(|r| r.lost));
            let dup = sum_opt(ok.iter().map(|r| r.duplicated));
            let median = |v: &[f64], digits: usize| {
                spread(v).map_or("—".to_owned(), |(m, _, _)| format!("{m:.digits$}"))
            };
            let _ = writeln!(
                table,
                "{:<24} {:>26} {:>8} {:>20} {:>9} {:>9} {:>9} {:>7} {:>8} {:>6} {:>6} {:>5}",
                label,
                fmt_opt(spread(&rate), "", 0),
                median(&mb, 1),
                fmt_opt(spread(&ratio), "", 2),
                median(&p50, 1),
                median(&p99, 1),
                median(&p999, 1),
                median(&cpu, 0),
                median(&rss, 0),
                lost.map_or("—".into(), |v| v.to_string()),
                dup.map_or("—".into(), |v| v.to_string()),
                failed
            );
            summary.push(json!({
                "contender": label,
                "runs": ok.len(),
                "failed": failed,
                "events_per_sec": spread_json(&rate),
                "mb_per_sec": spread_json(&mb),
                "ratio_to_ceiling": spread_json(&ratio),
                "latency_p50_ms": spread_json(&p50),
                "latency_p99_ms": spread_json(&p99),
                "latency_p999_ms": spread_json(&p999),
                "cpu_percent": spread_json(&cpu),
                "peak_rss_mb": spread_json(&rss),
                "lost": lost,
                "duplicated": dup,
            }));
            // The chart shows the repetition with the median rate.
            if let Some((m, _, _)) = spread(&rate) {
                if let Some(run) = ok.iter().min_by(|a, b| {
                    (a.events_per_sec - m)
                        .abs()
                        .total_cmp(&(b.events_per_sec - m).abs())
                }) {
                    chart_runs.push(*run);
                }
            }
            // The latency chart shows the repetition with the median p99.
            if let Some((m, _, _)) = spread(&p99) {
                if let Some(run) =
                    ok.iter()
                        .filter(|r| r.latency_p99_ms.is_some())
                        .min_by(|a, b| {
                            (a.latency_p99_ms.unwrap_or(f64::NAN) - m)
                                .abs()
                                .total_cmp(&(b.latency_p99_ms.unwrap_or(f64::NAN) - m).abs())
                        })
                {
                    latency_runs.push(*run);
                }
            }
        }
        let parquet: Vec<&ParquetResult> =
            results.iter().filter_map(|r| r.parquet.as_ref()).collect();
        let parquet_rates: Vec<f64> = parquet.iter().map(|p| p.rows_per_sec).collect();
        if let Some((m, lo, hi)) = spread(&parquet_rates) {
            let cpu: Vec<f64> = parquet.iter().map(|p| p.cpu_percent).collect();
            let rss: Vec<f64> = parquet.iter().map(|p| p.peak_rss_mb).collect();
            let _ = writeln!(
                table,
                "\nKafka → Parquet (jobstream run --parquet --stop-at-end, from spawn to exit): {m:.0} rows/s ({lo:.0}–{hi:.0}), CPU {:.0}%, RSS {:.0} MB, {} runs",
                spread(&cpu).map_or(f64::NAN, |s| s.0),
                spread(&rss).map_or(f64::NAN, |s| s.0),
                parquet.len()
            );
        }
        for error in results.iter().filter_map(|r| r.parquet_error.as_ref()) {
            let _ = writeln!(table, "Kafka → Parquet failed: {error}");
        }
        for (baseline, ratios) in [
            ("python bridge", &ratio_to_python),
            ("mosquitto_sub | producer pipeline", &ratio_to_pipeline),
        ] {
            if let Some((m, lo, hi)) = spread(ratios) {
                let _ = writeln!(
                    table,
                    "jobstream / {baseline}: {m:.2}× (range {lo:.2}–{hi:.2}) over {} repetitions",
                    ratios.len()
                );
            }
        }
        let avg_payload = results
            .iter()
            .find(|r| r.events > 0)
            .map_or(0.0, |r| r.payload_bytes as f64 / r.events as f64);
        let _ = writeln!(
            table,
            "{} events per backlog, {:.0} B average payload, QoS 1, {} repetitions; Kafka ({}): acks=all, idempotent, lz4, linger.ms=5{}",
            bench.args.events,
            avg_payload,
            bench.args.repetitions,
            bench.broker.describe(),
            bench
                .kafka_options
                .iter()
                .map(|(k, v)| format!(", {k}={v}"))
                .collect::<String>()
        );
        Summary {
            table,
            contenders: summary,
            ratio_to_python,
            ratio_to_pipeline,
            parquet_rates,
            avg_payload,
            chart: chart(&chart_runs),
            latency_chart: latency_chart(&latency_runs),
            results,
        }
    }

    /// The JSON result: machine, settings, the summary and every run.
    pub(super) fn json(&self, bench: &Bench) -> serde_json::Value {
        json!({
            "machine": machine(&bench.args, &bench.broker),
            "settings": {
                "events": bench.args.events,
                "average_payload_bytes": self.avg_payload,
                "qos": 1,
                "repetitions": bench.args.repetitions,
                "latency_events": bench.args.latency_events,
                "latency_rate": bench.args.latency_rate,
                "sample_ms": bench.args.sample_ms,
                "warmup_run": !bench.args.no_warmup,
                "mqtt_broker": {
                    "started_by_bench": bench.args.mqtt.is_none(),
                    "settings": bench.args.mqtt.is_none().then_some(super::brokers::MOSQUITTO_SETTINGS),
                    "set_tcp_nodelay": bench.args.mosquitto_nodelay,
                },
                "partitions": bench.args.partitions,
                "mqtt": jobstream_bridge::config::redact(&bench.mqtt_url),
                "kafka": bench.kafka,
                "kafka_broker": {
                    "started_by_bench": bench.broker.started,
                    "version": bench.broker.version,
                },
                "kafka_producer": {
                    "acks": "all", "enable.idempotence": true, "compression.type": "lz4", "linger.ms": 5,
                    "options": bench.kafka_options.iter().cloned().collect::<BTreeMap<_, _>>(),
                },
                "contenders": bench.args.contenders.iter().map(|c| (c.label(), c.description())).collect::<BTreeMap<_, _>>(),
            },
            "summary": self.contenders,
            "jobstream_vs_python": spread_json(&self.ratio_to_python),
            "jobstream_vs_pipeline": spread_json(&self.ratio_to_pipeline),
            "kafka_to_parquet_rows_per_sec": spread_json(&self.parquet_rates),
            "runs": self.results,
        })
    }
}
