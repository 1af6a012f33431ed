//! The process's metrics registry and readiness checks, the endpoint serving them, and the
//! Parquet stage's counters in the registry. The bridge registers its own
//! (`BridgeStats::registered`); the names are listed in the README ("Operating").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jobstream_metrics::{Health, MetricsServer, Registry};
use jobstream_parser::Anomaly;
use jobstream_sink::consumer::{StageConfig, StageStats};
use jobstream_sink::kafka::KafkaProbe;

use crate::{MetricsEndpoint, TopologyError};

/// The process's metrics registry and readiness checks, and the endpoint serving them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Telemetry {
    /// Every stage registers its counters here.
    pub(crate) registry: Registry,
    /// Every stage registers its readiness checks here.
    pub(crate) health: Health,
}

impl Telemetry {
    /// Binds the endpoint (before anything connects, so a taken port fails fast) and serves
    /// it on `runtime` for the rest of the process; without an endpoint the registry and
    /// checks still exist, unserved.
    ///
    /// # Errors
    /// The address cannot be bound, naming where the address came from.
    pub(crate) fn start(
        runtime: &tokio::runtime::Runtime,
        endpoint: Option<&MetricsEndpoint>,
    ) -> Result<Self, TopologyError> {
        let telemetry = Telemetry::default();
        if let Some(endpoint) = endpoint {
            let server = runtime
                .block_on(MetricsServer::bind(&endpoint.listen))
                .map_err(|source| TopologyError::MetricsBind {
                    origin: endpoint.origin.clone(),
                    source,
                })?;
            let address = server
                .local_addr()
                .map_or_else(|| endpoint.listen.clone(), |a| a.to_string());
            tracing::info!(%address, "serving /metrics, /health and /ready");
            runtime.spawn(server.serve(telemetry.registry.clone(), telemetry.health.clone()));
        }
        Ok(telemetry)
    }

    /// `/ready` for MQTT written straight to Parquet: the output directory takes a new file.
    /// (The bridge registers `mqtt` itself; its counters are registered with its stats.)
    pub(crate) fn watch_direct_parquet(&self, root: &Path) {
        let root = root.to_path_buf();
        self.health.register("parquet", move || writable(&root));
    }

    /// Exports the Parquet stage's counters and registers its readiness checks (the output
    /// directory writable and the stage running; Kafka answering). Reads `stats` when scraped; holds it weakly.
    pub(crate) fn watch_stage(
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
        let root: PathBuf = config.parquet.local_dir();
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
