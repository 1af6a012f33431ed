//! The bridge's counters and gauges, shared by every task and thread and registered as metrics.

use jobstream_metrics::{Counter, Gauge, Health, Histogram, Registry};
use jobstream_parser::{Anomaly, Event, Family, RejectKind};

use crate::settings::{BridgeConfig, Output};

/// Counters of a run, readable while it goes, and exported as Prometheus metrics when built
/// with [`BridgeStats::registered`] (names in the README's "Operating" section).
///
/// Counters dereference to their atomics: `stats.received.load(Ordering::Relaxed)` works.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// PUBLISH packets received.
    pub received: Counter,
    /// JOB events durable at the output: confirmed by Kafka, or in a published Parquet file.
    pub produced_jobs: Counter,
    /// JOB_EXECUTION events durable at the output, likewise.
    pub produced_executions: Counter,
    /// Rejects durable in the DLQ: confirmed in the DLQ topic, or fsynced into the DLQ file.
    pub rejected: Counter,
    /// Parquet files published (Parquet output only).
    pub files_published: Counter,
    /// Duplicates (same `eventId` within the window) dropped before Kafka.
    pub duplicates: Counter,
    /// PUBACKs sent.
    pub acknowledged: Counter,
    /// QoS 1 messages never acknowledged because their session ended first (the broker
    /// redelivers them, so they are received again): at rest, `received` equals `acknowledged
    /// + abandoned + delivery_failures`.
    pub abandoned: Counter,
    /// Records Kafka failed to take (never acknowledged; redelivered by the broker).
    pub delivery_failures: Counter,
    /// MQTT connection errors (each followed by a reconnect).
    pub reconnects: Counter,
    /// Connections currently up.
    pub connected: Gauge,
    /// Valid events parsed, by family (job, execution), duplicates included.
    pub events: [Counter; 2],
    /// Rejects by kind, in [`RejectKind::ALL`] order.
    pub rejects: [Counter; RejectKind::ALL.len()],
    /// Valid events with an anomaly, by code, in [`Anomaly::ALL`] order (duplicates included).
    pub anomalies: [Counter; Anomaly::ALL.len()],
    /// Time from handing a record to librdkafka to its delivery report, seconds.
    pub delivery_latency: Histogram,
    /// Per connection: QoS 1 messages received and not yet acknowledged in the current session.
    pub inflight: Vec<Gauge>,
    /// Per connection: messages queued between the network task and its batcher.
    pub inbound_queue: Vec<Gauge>,
    /// Batches queued between the batchers and the parser workers.
    pub handoff_queue: Gauge,
    /// Records handed to the producer and not yet confirmed or failed.
    pub kafka_pending: Gauge,
    /// Where `/metrics` reads from, and `/ready` asks (detached ones by default).
    pub registry: Registry,
    /// Readiness checks the bridge registers (`mqtt`, `kafka`).
    pub health: Health,
}

impl BridgeStats {
    /// Counters registered in `registry` (with Kafka output, labelled with `config`'s topic
    /// names), and readiness checks to be registered in `health` when the run starts.
    pub fn registered(registry: &Registry, health: &Health, config: &BridgeConfig) -> Self {
        let produced = |topic: &str| {
            registry.counter_with(
                "jobstream_kafka_produced_total",
                "Records Kafka confirmed (acks=all), by topic.",
                &[("topic", topic)],
            )
        };
        let published = |table: &str| {
            registry.counter_with(
                "jobstream_parquet_rows_published_total",
                "Rows in Parquet files published (renamed to their final name).",
                &[("table", table)],
            )
        };
        // What reached the output, and how delivery went, in the output's own terms; counters
        // that mean nothing for it stay detached (not exported).
        let (
            produced_jobs,
            produced_executions,
            rejected,
            files_published,
            delivery_failures,
            delivery_latency,
        ) = match &config.output {
            Output::Kafka(kafka) => (
                produced(&kafka.job_topic),
                produced(&kafka.execution_topic),
                produced(&kafka.dlq_topic),
                Counter::detached(),
                registry.counter(
                    "jobstream_kafka_delivery_failures_total",
                    "Records Kafka did not take (left unacknowledged; the broker redelivers them).",
                ),
                registry.histogram_with(
                    "jobstream_kafka_delivery_seconds",
                    "Time from handing a record to the producer to Kafka's confirmation.",
                    &[],
                    &jobstream_metrics::LATENCY_BUCKETS,
                ),
            ),
            Output::Parquet(_) => (
                published("job_events"),
                published("job_execution_events"),
                registry.counter(
                    "jobstream_dlq_file_records_total",
                    "Rejects fsynced into the DLQ file.",
                ),
                registry.counter(
                    "jobstream_parquet_files_published_total",
                    "Parquet files published.",
                ),
                Counter::detached(),
                Histogram::default(),
            ),
        };
        let family = |family: &str| {
            registry.counter_with(
                "jobstream_events_received_total",
                "Valid events parsed from MQTT, by family (duplicates included).",
                &[("family", family)],
            )
        };
        let per_connection = |name: &str, help: &str, extra: Option<(&str, &str)>| {
            (0..config.mqtt.connections.max(1))
                .map(|i| {
                    let index = i.to_string();
                    let mut labels = vec![("connection", index.as_str())];
                    labels.extend(extra);
                    registry.gauge_with(name, help, &labels)
                })
                .collect::<Vec<_>>()
        };
        BridgeStats {
            received: registry.counter(
                "jobstream_mqtt_messages_received_total",
                "PUBLISH packets received from the MQTT broker (redeliveries included).",
            ),
            produced_jobs,
            produced_executions,
            rejected,
            files_published,
            duplicates: registry.counter(
                "jobstream_duplicates_dropped_total",
                "Copies not produced: their eventId was confirmed within the dedup window, or is in flight (they wait for its outcome).",
            ),
            acknowledged: registry.counter(
                "jobstream_mqtt_acknowledged_total",
                "PUBACKs sent to the MQTT broker (only after Kafka confirmed).",
            ),
            abandoned: registry.counter(
                "jobstream_mqtt_abandoned_total",
                "QoS 1 messages left unacknowledged because their session ended first (redelivered by the broker).",
            ),
            delivery_failures,
            reconnects: registry.counter(
                "jobstream_mqtt_reconnects_total",
                "MQTT connection errors, each followed by a reconnect.",
            ),
            connected: registry.gauge(
                "jobstream_mqtt_connections_up",
                "MQTT connections currently established.",
            ),
            events: [family("job"), family("execution")],
            rejects: RejectKind::ALL.map(|kind| {
                registry.counter_with(
                    "jobstream_rejects_total",
                    "Inputs refused by the parser and sent to the DLQ, by kind.",
                    &[("kind", kind.as_str())],
                )
            }),
            anomalies: Anomaly::ALL.map(|anomaly| {
                registry.counter_with(
                    "jobstream_anomalies_total",
                    "Valid events kept with an anomaly (a status that does not fit the operation, a non-string where AWS documents a string), by code; duplicates included.",
                    &[("code", anomaly.as_str())],
                )
            }),
            delivery_latency,
            inflight: per_connection(
                "jobstream_mqtt_inflight_messages",
                "QoS 1 messages received and not yet acknowledged, per connection.",
                None,
            ),
            inbound_queue: per_connection(
                QUEUE_DEPTH,
                QUEUE_DEPTH_HELP,
                Some(("queue", "mqtt_inbound")),
            ),
            handoff_queue: registry.gauge_with(
                QUEUE_DEPTH,
                QUEUE_DEPTH_HELP,
                &[("queue", "handoff_batches")],
            ),
            kafka_pending: registry.gauge_with(
                QUEUE_DEPTH,
                QUEUE_DEPTH_HELP,
                &[("queue", "kafka_producer")],
            ),
            registry: registry.clone(),
            health: health.clone(),
        }
    }

    /// Counts a valid event, by family and by each of its anomalies.
    pub(crate) fn event(&self, event: &Event<'_, '_>) {
        let index = match event.family() {
            Family::Job => 0,
            Family::Execution => 1,
        };
        self.events[index].inc();
        let anomalies = event.common().anomalies;
        if !anomalies.is_empty() {
            for (counter, anomaly) in self.anomalies.iter().zip(Anomaly::ALL) {
                if anomalies.contains(anomaly) {
                    counter.inc();
                }
            }
        }
    }

    /// Counts a reject of `kind`.
    pub(crate) fn reject(&self, kind: RejectKind) {
        if let Some(index) = RejectKind::ALL.iter().position(|k| *k == kind) {
            self.rejects[index].inc();
        }
    }
}

pub(crate) const QUEUE_DEPTH: &str = "jobstream_queue_depth";
pub(crate) const QUEUE_DEPTH_HELP: &str =
    "Items waiting in a bounded queue (mqtt_inbound: messages; handoff_batches: batches; kafka_producer: records not yet confirmed).";

impl BridgeStats {
    /// The one-line summary `run` logs every interval and prints at the end: what arrived, where
    /// it went (produced to Kafka, or published in files for `output`), and what did not.
    pub fn line(&self, output: &Output) -> String {
        let delivered = match output {
            Output::Kafka(_) => format!(
                "produced job {} execution {}",
                self.produced_jobs.get(),
                self.produced_executions.get()
            ),
            Output::Parquet(_) => format!(
                "published job {} execution {} in {} files",
                self.produced_jobs.get(),
                self.produced_executions.get(),
                self.files_published.get()
            ),
        };
        format!(
            "received {} | {delivered} | rejected {} | duplicates {} | acked {} | abandoned {} | delivery failures {} | reconnects {}",
            self.received.get(),
            self.rejected.get(),
            self.duplicates.get(),
            self.acknowledged.get(),
            self.abandoned.get(),
            self.delivery_failures.get(),
            self.reconnects.get(),
        )
    }
}
