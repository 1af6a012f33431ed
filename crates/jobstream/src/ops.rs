//! Operating `jobstream run`: log output, the `/metrics` `/health` `/ready` endpoint, and the
//! Parquet stage's counters in the metrics registry. The bridge registers its own
//! (`BridgeStats::registered`); the names are listed in the README ("Operating").

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jobstream_metrics::{Health, MetricsServer, Registry};
use jobstream_parser::Anomaly;
use jobstream_sink::consumer::{StageConfig, StageStats};
use jobstream_sink::kafka::KafkaProbe;
use serde::Deserialize;

use crate::{Failure, EXIT_CONFIG};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`; `--log-format` and `JOBSTREAM_LOG_FORMAT` win.
    pub format: Option<LogFormat>,
    /// A filter such as `info` or `info,rumqttc=warn`; `JOBSTREAM_LOG` wins.
    pub level: Option<String>,
}

/// `[metrics]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address serving `/metrics`, `/health` and `/ready`, e.g. `127.0.0.1:9464`
    /// (`0.0.0.0:9464` in a container); unset: no endpoint. `--metrics-listen` wins.
    pub listen: Option<String>,
}

/// Only the `[log]` table of a configuration file; every other key is `run`'s to check.
#[derive(Debug, Default, Deserialize)]
struct LogOnly {
    #[serde(default)]
    log: LogSettings,
}

/// `[log]` from the configuration file, read before logging starts. A file that does not load
/// yields the defaults here: `run` reports the error itself, with the file, key and line.
pub fn peek_log_settings(config: Option<&Path>) -> LogSettings {
    config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| toml::from_str::<LogOnly>(&text).ok())
        .map(|only| only.log)
        .unwrap_or_default()
}

/// Starts the `tracing` subscriber on standard error. `JOBSTREAM_LOG` (an env-filter such as
/// `debug` or `info,rumqttc=warn`) wins over `level`, which wins over `default_level`.
pub fn init_logging(format: LogFormat, level: Option<&str>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("JOBSTREAM_LOG").unwrap_or_else(|_| {
        level
            .and_then(|l| EnvFilter::try_new(l).ok())
            .unwrap_or_else(|| EnvFilter::new(default_level))
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// Says where a configuration error comes from: a value checked after loading (a QoS of 2,
/// zero connections) is named by its key, and this adds the file, unless the message already
/// names it (syntax and unknown-key errors do, with the line).
pub fn locate(failure: Failure, config: Option<&Path>) -> Failure {
    match config {
        Some(path) if failure.code == EXIT_CONFIG => {
            let message = format!("{:#}", failure.error);
            if message.contains(&path.display().to_string()) {
                failure
            } else {
                Failure::new(
                    EXIT_CONFIG,
                    anyhow::anyhow!(
                        "config file {} (JOBSTREAM_* variables and flags override it): {message}",
                        path.display()
                    ),
                )
            }
        }
        _ => failure,
    }
}

/// `key=value, …` with secret values replaced by `***`.
pub fn redacted_options(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| {
            if jobstream_sink::kafka::is_secret_option(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the metrics endpoint listens, and where that came from (for error messages).
#[derive(Debug, Clone, Default)]
pub struct OpsPlan {
    /// The checked listen address, if any.
    pub metrics_listen: Option<String>,
    /// `--metrics-listen / JOBSTREAM_METRICS_LISTEN` or `<file>: [metrics] listen`.
    origin: String,
}

impl OpsPlan {
    /// Resolves `[metrics] listen` from the flag (or environment) and the file, and checks
    /// the address without binding it.
    ///
    /// # Errors
    /// A listen address that is not `ip:port`, naming where it came from (exit 78).
    pub fn resolve(flag: Option<String>, config: Option<&Path>) -> Result<Self, Failure> {
        let (listen, origin) = match flag {
            Some(listen) => (
                Some(listen),
                "--metrics-listen / JOBSTREAM_METRICS_LISTEN".to_owned(),
            ),
            None => {
                let from_file = config.and_then(metrics_settings).and_then(|m| m.listen);
                let origin = config.map_or_else(String::new, |p| {
                    format!("config file {}: [metrics] listen", p.display())
                });
                (from_file, origin)
            }
        };
        if let Some(address) = &listen {
            MetricsServer::parse_address(address)
                .map_err(|e| Failure::new(EXIT_CONFIG, anyhow::anyhow!("{origin}: {e}")))?;
        }
        Ok(OpsPlan {
            metrics_listen: listen,
            origin,
        })
    }

    /// The `--check` lines for the endpoint and the pass-through Kafka options.
    pub fn print_check(&self, kafka_options: Option<&BTreeMap<String, String>>) {
        match &self.metrics_listen {
            Some(listen) => outln!("  metrics     http://{listen}/metrics, /health, /ready"),
            None => outln!("  metrics     off (set [metrics] listen or --metrics-listen)"),
        }
        if let Some(options) = kafka_options.filter(|o| !o.is_empty()) {
            outln!("  kafka opts  {}", redacted_options(options));
        }
    }
}

fn metrics_settings(path: &Path) -> Option<MetricsSettings> {
    #[derive(Deserialize)]
    struct MetricsOnly {
        #[serde(default)]
        metrics: MetricsSettings,
    }
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<MetricsOnly>(&text).ok().map(|m| m.metrics)
}

/// The process's metrics registry and readiness checks, and the endpoint serving them.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// Every stage registers its counters here.
    pub registry: Registry,
    /// Every stage registers its readiness checks here.
    pub health: Health,
}

impl Telemetry {
    /// Binds the endpoint (before anything connects, so a taken port fails fast) and serves
    /// it on `runtime` for the rest of the process.
    ///
    /// # Errors
    /// The address cannot be bound (exit 78, naming where the address came from).
    pub fn start(runtime: &tokio::runtime::Runtime, plan: &OpsPlan) -> Result<Self, Failure> {
        let telemetry = Telemetry::default();
        if let Some(listen) = &plan.metrics_listen {
            let server = runtime
                .block_on(MetricsServer::bind(listen))
                .map_err(|e| Failure::new(EXIT_CONFIG, anyhow::anyhow!("{}: {e}", plan.origin)))?;
            let address = server
                .local_addr()
                .map_or_else(|| listen.clone(), |a| a.to_string());
            tracing::info!(%address, "serving /metrics, /health and /ready");
            runtime.spawn(server.serve(telemetry.registry.clone(), telemetry.health.clone()));
        }
        Ok(telemetry)
    }

    /// `/ready` for MQTT written straight to Parquet: the output directory takes a new file.
    /// (The bridge registers `mqtt` itself; its counters are registered with its stats.)
    pub fn watch_direct_parquet(&self, root: &Path) {
        let root = root.to_path_buf();
        self.health.register("parquet", move || writable(&root));
    }

    /// Exports the Parquet stage's counters and registers its readiness checks (the output
    /// directory writable and the stage running; Kafka answering). Reads `stats` when scraped; holds it weakly.
    pub fn watch_stage(
        &self,
        stats: &Arc<StageStats>,
        config: &StageConfig,
        stopped: &Arc<AtomicBool>,
    ) {
        let registry = &self.registry;
        let counter = |name: &str,
                       help: &str,
                       labels: &[(&str, &str)],
                       pick: fn(&StageStats) -> &AtomicU64| {
            let weak: Weak<StageStats> = Arc::downgrade(stats);
            registry.counter_fn(name, help, labels, move || {
                weak.upgrade().map(|s| pick(&s).load(Ordering::Relaxed))
            });
        };
        counter(
            "jobstream_consumer_records_total",
            "Records the Parquet stage read from Kafka.",
            &[],
            |s| &s.records,
        );
        let rows = "jobstream_parquet_rows_written_total";
        let rows_help = "Rows appended to Parquet files, by table.";
        counter(rows, rows_help, &[("table", "job_events")], |s| &s.job_rows);
        counter(rows, rows_help, &[("table", "job_execution_events")], |s| {
            &s.execution_rows
        });
        counter(
            "jobstream_parquet_rows_published_total",
            "Rows in Parquet files published (renamed to their final name).",
            &[],
            |s| &s.published_rows,
        );
        counter(
            "jobstream_parquet_files_published_total",
            "Parquet files published.",
            &[],
            |s| &s.files,
        );
        counter(
            "jobstream_parquet_bytes_published_total",
            "Bytes in published Parquet files.",
            &[],
            |s| &s.file_bytes,
        );
        counter(
            "jobstream_consumer_already_published_total",
            "Records skipped because a published file already holds them (after a restart).",
            &[],
            |s| &s.already_published,
        );
        counter(
            "jobstream_consumer_duplicates_dropped_total",
            "Records not written because an earlier copy of the event (same eventId) sits within the dedup window of their partition.",
            &[],
            |s| &s.duplicates,
        );
        counter(
            "jobstream_consumer_rejects_total",
            "Records the Parquet stage sent to the DLQ.",
            &[],
            |s| &s.rejected,
        );
        for (index, anomaly) in Anomaly::ALL.into_iter().enumerate() {
            let weak: Weak<StageStats> = Arc::downgrade(stats);
            registry.counter_fn(
                "jobstream_consumer_anomalies_total",
                "Rows written with an anomaly (kept, not rejected), by code.",
                &[("code", anomaly.as_str())],
                move || {
                    weak.upgrade()
                        .and_then(|s| s.anomalies.get(index).map(|c| c.load(Ordering::Relaxed)))
                },
            );
        }
        counter(
            "jobstream_consumer_commits_total",
            "Offset commits, each after the files holding the offsets were published.",
            &[],
            |s| &s.commits,
        );
        let weak = Arc::downgrade(stats);
        registry.gauge_fn(
            "jobstream_consumer_assigned_partitions",
            "Partitions assigned to this consumer group member.",
            &[],
            move || {
                weak.upgrade().map(|s| {
                    i64::try_from(s.assigned_partitions.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
                })
            },
        );
        let weak = Arc::downgrade(stats);
        registry.gauges_fn(
            "jobstream_consumer_lag_records",
            "Records between this member's position and the end of each assigned partition (librdkafka's last report).",
            move || {
                let Some(stats) = weak.upgrade() else {
                    return Vec::new();
                };
                let lag = match stats.lag.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                lag.iter()
                    .map(|((topic, partition), lag)| {
                        (
                            vec![
                                ("topic".to_owned(), topic.clone()),
                                ("partition".to_owned(), partition.to_string()),
                            ],
                            *lag,
                        )
                    })
                    .collect()
            },
        );
        let root: PathBuf = config.parquet.root.clone();
        let stopped = Arc::clone(stopped);
        self.health.register("parquet", move || {
            if stopped.load(Ordering::Relaxed) {
                return Err("shutting down".to_owned());
            }
            writable(&root)
        });
        // The stage's consumer has no probe of its own: a metadata-only client, created at the
        // first /ready. When the bridge runs too, its own `kafka` check replaces this one.
        let kafka = config.kafka.clone();
        let probe: Mutex<Option<KafkaProbe>> = Mutex::new(None);
        self.health.register("kafka", move || {
            let mut probe = match probe.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if probe.is_none() {
                *probe = Some(KafkaProbe::new(&kafka).map_err(|e| e.to_string())?);
            }
            match probe.as_ref() {
                Some(probe) => probe
                    .reachable(KAFKA_PROBE_TIMEOUT)
                    .map_err(|e| e.to_string()),
                None => Err("no Kafka client".to_owned()),
            }
        });
    }
}

/// How long a readiness probe waits for a Kafka broker (probes usually give up after a few
/// seconds themselves).
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `dir` accepts a new file (created and removed at once; a dot-file, which readers
/// and the sink's own clean-up ignore).
fn writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".jobstream-ready-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("{} is not writable: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_options_are_recognised() {
        for key in [
            "sasl.password",
            "sasl.username",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "producer.sasl.password",
        ] {
            assert!(jobstream_sink::kafka::is_secret_option(key), "{key}");
        }
        for key in [
            "security.protocol",
            "sasl.mechanisms",
            "ssl.ca.location",
            "linger.ms",
        ] {
            assert!(!jobstream_sink::kafka::is_secret_option(key), "{key}");
        }
        let options = BTreeMap::from([
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ]);
        assert_eq!(
            redacted_options(&options),
            "sasl.password=***, security.protocol=SASL_SSL"
        );
        let mut kafka = jobstream_sink::kafka::KafkaConfig::new("k:9092");
        kafka.options = options;
        let shown = format!("{kafka:?}");
        assert!(
            shown.contains("SASL_SSL") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
