//! The MQTT → Kafka pipeline and its acknowledgement loop.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam::channel as xchan;
use jobstream_metrics::{Counter, Gauge, Health, Histogram, Registry, Throttle};
use jobstream_parser::{Anomaly, Event, Family, Parser, ParserConfig, Reject, RejectKind};
use jobstream_sink::kafka::{ClientRole, KafkaConfig, KafkaSink, DLQ_PREFIX_BYTES};
use jobstream_sink::parquet::ParquetConfig;
use jobstream_sink::{CrashPoint, SinkError};
use rumqttc::QoS;
use tokio::sync::{mpsc, Notify};

use crate::acks::AckOrder;
use crate::config::{redact, MqttConfig};
use crate::dedup::{Claim, DedupWindow, Settled};
use crate::direct::DirectWriter;
use crate::mqtt::{self, Client, EventLoop, MqttError, NetEvent};
use crate::BridgeError;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The MQTT side.
    pub mqtt: MqttConfig,
    /// Where events go: Kafka, or Parquet files directly.
    pub output: Output,
    /// Fault injection for the crash tests (only with the `fault-injection` feature): with
    /// Parquet output, where the process aborts between publishing files and acknowledging
    /// their messages.
    #[doc(hidden)]
    pub crash: CrashPoint,
    /// Topic prefix and payload cap.
    pub parser: ParserConfig,
    /// Parser worker threads.
    pub workers: usize,
    /// Messages per hand-off batch from the network tasks to the workers.
    pub batch_size: usize,
    /// Batches queued between network tasks and workers. With `batch_size` this bounds the
    /// messages parked between MQTT and the parser.
    pub queue_batches: usize,
    /// Event ids remembered for duplicate detection (0 disables it).
    pub dedup_window: usize,
    /// How long a graceful shutdown may take before giving up.
    pub drain_timeout: Duration,
}

/// Where the bridge delivers events. A message is acknowledged to the MQTT broker once its
/// event (or its reject) is durable there, and never before.
#[derive(Debug, Clone)]
pub enum Output {
    /// Kafka topics: durable once Kafka confirmed the record (acks=all).
    Kafka(KafkaConfig),
    /// Parquet files without Kafka: durable once the file holding the event is published, or
    /// the reject is fsynced into the DLQ file under the output directory.
    Parquet(ParquetConfig),
}

impl Output {
    /// The Kafka brokers or the Parquet directory, for messages about the output.
    pub fn describe(&self) -> String {
        match self {
            Output::Kafka(kafka) => format!("Kafka at {}", kafka.brokers),
            Output::Parquet(parquet) => format!("Parquet files in {}", parquet.root.display()),
        }
    }
}

impl BridgeConfig {
    /// Defaults around the two endpoints.
    pub fn new(mqtt: MqttConfig, output: Output) -> Self {
        BridgeConfig {
            mqtt,
            output,
            crash: CrashPoint::never(),
            parser: ParserConfig::default(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 512,
            queue_batches: 64,
            dedup_window: 1_000_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

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

const QUEUE_DEPTH: &str = "jobstream_queue_depth";
const QUEUE_DEPTH_HELP: &str =
    "Items waiting in a bounded queue (mqtt_inbound: messages; handoff_batches: batches; kafka_producer: records not yet confirmed).";

#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub(crate) conn: u16,
    epoch: u32,
    seq: u64,
    pkid: u16,
}

#[derive(Debug)]
struct Delivery {
    token: Option<Token>,
    family: Option<Family>,
    /// The event id whose claim in the dedup window this record settles.
    event_id: Option<Box<str>>,
    /// When the record was handed to the producer, for the delivery latency histogram.
    sent: Instant,
}

#[derive(Debug)]
pub(crate) enum Completion {
    Done(Token),
    Failed(Token),
}

pub(crate) struct Inbound {
    pub(crate) token: Option<Token>,
    pub(crate) topic: String,
    /// The payload, or only its first bytes when `oversized`.
    pub(crate) payload: Bytes,
    /// The payload was larger than `max_packet_bytes`: its full size. It goes to the DLQ.
    pub(crate) oversized: Option<usize>,
    pub(crate) received_at_ms: i64,
}

/// Completions can never exceed the unacknowledged messages of a connection, which MQTT's
/// 16-bit packet ids cap at 65,535, so senders never wait on this bound.
const COMPLETIONS_PER_CONNECTION: usize = 65_536;

/// At most one warning per reject kind (and one delivery-failure error) in this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the bridge until `shutdown` resolves, then drains: stops taking messages, lets the
/// workers finish what was handed to them, waits for Kafka's confirmations, acknowledges them,
/// and disconnects. Messages not confirmed by then stay unacknowledged and the broker
/// redelivers them to the next run.
///
/// # Errors
/// Invalid configuration, Kafka unreachable at start, or MQTT never reachable within
/// `connect_timeout`.
pub async fn run(
    config: BridgeConfig,
    stats: Arc<BridgeStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BridgeError> {
    let qos = config.mqtt.qos()?;
    let connections = config.mqtt.connections.max(1);
    let mut clients = Vec::with_capacity(connections);
    for index in 0..connections {
        clients.push(mqtt::connect(&config.mqtt, index)?);
    }
    // Direct Parquet acknowledges in input order, so its window confirms at once; Kafka
    // confirms out of order, so its window holds ids in flight and the copies waiting on them.
    let dedup: Arc<DedupWindow> = Arc::new(DedupWindow::new(config.dedup_window));
    let claims: Arc<DedupWindow<Option<Token>>> = Arc::new(DedupWindow::new(config.dedup_window));
    let (direct, kafka) = match &config.output {
        Output::Parquet(parquet) => {
            let writer = DirectWriter::open(
                parquet.clone(),
                &config.mqtt.client_id,
                &dedup,
                config.dedup_window,
                config.crash,
            )?;
            (Some(writer), None)
        }
        Output::Kafka(kafka) => {
            // A wrong password or an untrusted certificate stops the start here, with what to
            // fix, instead of a producer that retries forever.
            let check = kafka.clone();
            tokio::task::spawn_blocking(move || {
                jobstream_sink::kafka::check_connection(&check, ClientRole::Producer)
            })
            .await
            .map_err(|source| jobstream_sink::SinkError::TaskStopped {
                what: "the connection check",
                source,
            })??;
            jobstream_sink::kafka::ensure_topics(kafka).await?;
            (None, Some(kafka))
        }
    };

    let (completion_tx, completion_rx): (Vec<_>, Vec<_>) = (0..connections)
        .map(|_| mpsc::channel::<Completion>(COMPLETIONS_PER_CONNECTION))
        .unzip();
    let completion_tx = Arc::new(completion_tx);
    let throttle = Arc::new(Throttle::new(WARNING_INTERVAL));
    let sink = kafka.map(|kafka| {
        let completion_tx = Arc::clone(&completion_tx);
        let dedup_for_delivery = Arc::clone(&claims);
        let stats = Arc::clone(&stats);
        let throttle = Arc::clone(&throttle);
        KafkaSink::new(
            kafka.clone(),
            move |delivery: Delivery, result| {
                stats.kafka_pending.dec();
                stats
                    .delivery_latency
                    .observe_duration(delivery.sent.elapsed());
                match (&result, delivery.family) {
                    (Ok(()), Some(Family::Job)) => {
                        stats.produced_jobs.fetch_add(1, Ordering::Relaxed)
                    }
                    (Ok(()), Some(Family::Execution)) => {
                        stats.produced_executions.fetch_add(1, Ordering::Relaxed)
                    }
                    (Ok(()), None) => stats.rejected.fetch_add(1, Ordering::Relaxed),
                    (Err(error), _) => {
                        if let Some(suppressed) = throttle.allow("kafka_delivery") {
                            tracing::error!(%error, similar_since_last = suppressed, "Kafka did not take a record; it stays unacknowledged and will be redelivered");
                        }
                        stats.delivery_failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                // The copies that waited for this record share its outcome.
                let waiters = match &delivery.event_id {
                    Some(id) => {
                        let outcome = match &result {
                            Ok(()) => Settled::Confirmed,
                            Err(error) => match jobstream_sink::kafka::refused_for_good(error) {
                                Some(reason) => Settled::Refused(reason.into()),
                                None => Settled::Failed,
                            },
                        };
                        dedup_for_delivery.settle(id, outcome)
                    }
                    None => Vec::new(),
                };
                if result.is_err() {
                    // Copies that waited on a failed record stay unacknowledged too (the broker
                    // redelivers them); counted so that received = acked + abandoned + failures.
                    stats
                        .abandoned
                        .fetch_add(waiters.iter().flatten().count() as u64, Ordering::Relaxed);
                }
                for token in delivery.token.into_iter().chain(waiters.into_iter().flatten()) {
                    let completion = match result {
                        Ok(()) => Completion::Done(token),
                        Err(_) => Completion::Failed(token),
                    };
                    let tx = &completion_tx[usize::from(token.conn)];
                    // The channel never fills (see COMPLETIONS_PER_CONNECTION). This runs on
                    // librdkafka's thread, except when dropping the producer purges records:
                    // then it may run on an async thread, which must not block.
                    if let Err(mpsc::error::TrySendError::Full(completion)) =
                        tx.try_send(completion)
                    {
                        if tokio::runtime::Handle::try_current().is_err() {
                            let _ = tx.blocking_send(completion);
                        }
                    }
                }
            },
        )
        .map(Arc::new)
    });
    let sink = sink.transpose()?;

    // Network tasks → batchers → (crossbeam, bounded) → parser workers → Kafka.
    let (batch_tx, batch_rx) = xchan::bounded::<Vec<Inbound>>(config.queue_batches.max(1));
    let mut workers = Vec::new();
    // The writer failing (a full disk) stops the run like a signal would; what it had not
    // completed stays unacknowledged.
    let writer_failed = Arc::new(Notify::new());
    if let Some(direct) = direct {
        let batch_rx = batch_rx.clone();
        let dedup = Arc::clone(&dedup);
        let stats = Arc::clone(&stats);
        let completion_tx = Arc::clone(&completion_tx);
        let throttle = Arc::clone(&throttle);
        let parser_config = config.parser.clone();
        let failed = Arc::clone(&writer_failed);
        let handle = std::thread::Builder::new()
            .name("jobstream-parquet-writer".to_owned())
            .spawn(move || {
                let result = direct.run(
                    parser_config,
                    &batch_rx,
                    &dedup,
                    &stats,
                    &completion_tx,
                    &throttle,
                );
                if let Err(error) = &result {
                    tracing::error!(%error, "the Parquet writer stopped; draining");
                    failed.notify_one();
                }
                result
            })
            .map_err(|source| BridgeError::Spawn {
                thread: "Parquet writer",
                source,
            })?;
        workers.push(handle);
    }
    let kafka_workers = if sink.is_some() {
        config.workers.max(1)
    } else {
        0
    };
    for (index, sink) in std::iter::repeat_n(&sink, kafka_workers)
        .flatten()
        .enumerate()
    {
        let batch_rx = batch_rx.clone();
        let sink = Arc::clone(sink);
        let dedup = Arc::clone(&claims);
        let stats = Arc::clone(&stats);
        let completion_tx = Arc::clone(&completion_tx);
        let throttle = Arc::clone(&throttle);
        let parser_config = config.parser.clone();
        let handle = std::thread::Builder::new()
            .name(format!("jobstream-parser-{index}"))
            .spawn(move || {
                worker(
                    parser_config,
                    &batch_rx,
                    &sink,
                    &dedup,
                    &stats,
                    &completion_tx,
                    &throttle,
                );
                Ok(())
            })
            .map_err(|source| BridgeError::Spawn {
                thread: "parser",
                source,
            })?;
        workers.push(handle);
    }
    drop(batch_rx);

    let draining = Arc::new(AtomicBool::new(false));
    register_checks(
        &stats,
        &config,
        &draining,
        sink.as_ref().map(Arc::downgrade),
    );
    let drain_notify = Arc::new(Notify::new());
    let subscriptions = config.mqtt.subscriptions();
    let mut connection_tasks = Vec::new();
    let mut first_connects = Vec::new();
    for (index, ((client, eventloop), completions)) in
        clients.into_iter().zip(completion_rx).enumerate()
    {
        let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(config.batch_size * 4);
        let epoch = Arc::new(AtomicU32::new(0));
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        first_connects.push(connected_rx);
        tokio::spawn(batcher(
            inbound_rx,
            batch_tx.clone(),
            config.batch_size,
            Arc::clone(&drain_notify),
            stats.handoff_queue.clone(),
        ));
        let acker = tokio::spawn(acker(
            completions,
            client.clone(),
            Arc::clone(&epoch),
            Arc::clone(&stats),
            stats.inflight.get(index).cloned().unwrap_or_default(),
        ));
        connection_tasks.push(tokio::spawn(connection(ConnectionTask {
            index,
            client,
            eventloop,
            subscriptions: subscriptions.clone(),
            qos,
            inbound: inbound_tx,
            epoch,
            draining: Arc::clone(&draining),
            stats: Arc::clone(&stats),
            url: redact(&config.mqtt.url),
            connected: Some(connected_tx),
            acker,
            inflight: stats.inflight.get(index).cloned().unwrap_or_default(),
            inbound_depth: stats.inbound_queue.get(index).cloned().unwrap_or_default(),
            max_packet_bytes: config.mqtt.max_packet_bytes,
        })));
    }
    drop(batch_tx);

    // Fail fast on a broker that is not there at all; after the first connection, reconnect
    // forever with backoff.
    let deadline = tokio::time::sleep(config.mqtt.connect_timeout);
    tokio::pin!(deadline);
    let shutdown = {
        let failed = Arc::clone(&writer_failed);
        async move {
            tokio::select! {
                () = shutdown => {}
                () = failed.notified() => {}
            }
        }
    };
    tokio::pin!(shutdown);
    for connected in first_connects {
        tokio::select! {
            // Answered once the first session is up; a task that ends first drops it.
            _ = connected => {}
            () = &mut deadline => {
                return Err(BridgeError::MqttUnreachable {
                    url: redact(&config.mqtt.url),
                    within: config.mqtt.connect_timeout,
                });
            }
            () = &mut shutdown => break,
        }
    }
    shutdown.await;

    tracing::info!("draining: no new messages; finishing what is in flight");
    let started = Instant::now();
    draining.store(true, Ordering::SeqCst);
    drain_notify.notify_waiters();
    // What the drain waits on, for the message if the deadline passes.
    let phase = Arc::new(AtomicU8::new(PHASE_WORKERS));
    let stats_for_drain = Arc::clone(&stats);
    let connection_handles: Vec<_> = connection_tasks
        .iter()
        .map(tokio::task::JoinHandle::abort_handle)
        .collect();
    let drain = {
        let phase = Arc::clone(&phase);
        async move {
            let joined = tokio::task::spawn_blocking(move || {
                let mut first_error = None;
                for worker in workers {
                    let thread = worker.thread().name().unwrap_or("pipeline").to_owned();
                    let result = worker
                        .join()
                        .unwrap_or_else(|_| Err(BridgeError::Panicked { thread }));
                    if let Err(error) = result {
                        first_error.get_or_insert(error);
                    }
                }
                first_error
            });
            let writer_error = joined.await.ok().flatten();
            phase.store(PHASE_KAFKA, Ordering::SeqCst);
            let remaining = config.drain_timeout.saturating_sub(started.elapsed());
            let flush_sink = sink.clone();
            let flushed = tokio::task::spawn_blocking(move || match flush_sink {
                Some(sink) => sink.flush(remaining),
                None => Ok(()),
            })
            .await;
            // Dropping the sink drops the delivery callback and its completion senders; each
            // acker then sends its last acknowledgements and disconnects its connection.
            let unconfirmed = stats_for_drain.kafka_pending.get();
            // Off the async threads: dropping the producer purges what Kafka never confirmed,
            // and librdkafka reports those failures through the delivery callback, which
            // blocks on the completion channels (and may wait on a broker that hangs).
            let _ = tokio::task::spawn_blocking(move || drop(sink)).await;
            drop(completion_tx);
            phase.store(PHASE_MQTT, Ordering::SeqCst);
            for task in connection_tasks {
                let _ = task.await;
            }
            if let Some(error) = writer_error {
                return Err(DrainStuck::Failed(error));
            }
            match flushed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(DrainStuck::Kafka(unconfirmed)),
                Err(e) => Err(DrainStuck::Other(format!("flush task failed: {e}"))),
            }
        }
    };
    let stuck = match tokio::time::timeout(config.drain_timeout, drain).await {
        Ok(Ok(())) => {
            tracing::info!(took = ?started.elapsed(), "drained");
            return Ok(());
        }
        Ok(Err(DrainStuck::Failed(error))) => return Err(error),
        Ok(Err(stuck)) => stuck,
        Err(_) => match phase.load(Ordering::SeqCst) {
            PHASE_WORKERS => {
                DrainStuck::Workers(stats.handoff_queue.get(), stats.kafka_pending.get())
            }
            PHASE_KAFKA => DrainStuck::Kafka(stats.kafka_pending.get()),
            _ => DrainStuck::Mqtt(
                connection_handles
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| !h.is_finished())
                    .map(|(i, _)| i)
                    .collect(),
            ),
        },
    };
    let stuck = match stuck {
        DrainStuck::Workers(batches, queued) => format!(
            "parser workers were still handing records to {} ({batches} batch(es) waiting, {queued} record(s) queued)",
            config.output.describe()
        ),
        DrainStuck::Kafka(records) => format!(
            "{} had not confirmed {records} record(s)",
            config.output.describe()
        ),
        DrainStuck::Mqtt(open) => format!(
            "MQTT connection(s) {open:?} to {} were still sending acknowledgements or disconnecting",
            redact(&config.mqtt.url)
        ),
        DrainStuck::Other(text) => text,
        DrainStuck::Failed(error) => return Err(error),
    };
    Err(BridgeError::DrainTimeout {
        after: config.drain_timeout,
        stuck,
    })
}

const PHASE_WORKERS: u8 = 0;
const PHASE_KAFKA: u8 = 1;
const PHASE_MQTT: u8 = 2;

/// What a drain was waiting on when it gave up.
enum DrainStuck {
    /// Batches still queued, records Kafka had not confirmed.
    Workers(i64, i64),
    /// Records Kafka had not confirmed.
    Kafka(i64),
    /// Connections not yet closed.
    Mqtt(Vec<usize>),
    /// Not stuck: the Parquet writer failed, which started the drain.
    Failed(BridgeError),
    Other(String),
}

/// Readiness: every MQTT connection up and not draining; Kafka answering metadata requests.
/// The checks hold no `Arc` of the stats or the sink, so they keep neither alive.
fn register_checks(
    stats: &BridgeStats,
    config: &BridgeConfig,
    draining: &Arc<AtomicBool>,
    sink: Option<std::sync::Weak<KafkaSink<Delivery>>>,
) {
    let connected = stats.connected.clone();
    let draining = Arc::clone(draining);
    let wanted = config.mqtt.connections.max(1);
    let url = redact(&config.mqtt.url);
    stats.health.register("mqtt", move || {
        if draining.load(Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        let up = usize::try_from(connected.get()).unwrap_or(0);
        if up >= wanted {
            Ok(())
        } else {
            Err(format!("{up} of {wanted} connection(s) to {url} up"))
        }
    });
    let Some(sink) = sink else {
        return; // direct to Parquet: no Kafka to ask
    };
    stats
        .health
        .register("kafka", move || match sink.upgrade() {
            Some(sink) => sink
                .reachable(KAFKA_PROBE_TIMEOUT)
                .map_err(|e| e.to_string()),
            None => Err("producer stopped".to_owned()),
        });
}

/// How long a readiness probe waits for a Kafka broker to answer; probes usually time out
/// after a few seconds themselves.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn batcher(
    mut inbound: mpsc::Receiver<Inbound>,
    batches: xchan::Sender<Vec<Inbound>>,
    batch_size: usize,
    drain: Arc<Notify>,
    depth: Gauge,
) {
    let drained = drain.notified();
    tokio::pin!(drained);
    loop {
        let mut batch = Vec::with_capacity(batch_size);
        tokio::select! {
            received = inbound.recv_many(&mut batch, batch_size) => {
                if received == 0 {
                    return;
                }
            }
            () = &mut drained => return,
        }
        // The workers are behind: wait without blocking the runtime, and without unbounded
        // buffering (this task stops reading, the connection task stops polling).
        let mut pending = batch;
        loop {
            match batches.try_send(pending) {
                Ok(()) => {
                    depth.set(batches.len() as i64);
                    break;
                }
                Err(xchan::TrySendError::Full(back)) => {
                    pending = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(xchan::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

fn worker(
    parser_config: ParserConfig,
    batches: &xchan::Receiver<Vec<Inbound>>,
    sink: &KafkaSink<Delivery>,
    dedup: &DedupWindow<Option<Token>>,
    stats: &BridgeStats,
    completions: &[mpsc::Sender<Completion>],
    throttle: &Throttle,
) {
    let mut parser = Parser::new(parser_config);
    let complete = |completion: Completion| {
        let conn = match &completion {
            Completion::Done(t) | Completion::Failed(t) => usize::from(t.conn),
        };
        let _ = completions[conn].blocking_send(completion);
    };
    let reject_to_dlq = |message: &Inbound, reject: &Reject, event_id: Option<&str>, token| {
        note_reject(stats, throttle, &message.topic, reject, "DLQ");
        stats.kafka_pending.inc();
        sink.produce_reject(
            &message.topic,
            &message.payload,
            message.oversized,
            reject.kind.as_str(),
            &reject.message,
            Delivery {
                token,
                family: None,
                event_id: event_id.map(Into::into),
                sent: Instant::now(),
            },
        )
        .inspect_err(|_| stats.kafka_pending.dec())
    };
    for batch in batches.iter() {
        stats.handoff_queue.set(batches.len() as i64);
        for message in batch {
            let token = message.token;
            // The id whose claim this record holds, when it could not be produced: its claim
            // is released below (kept only on failure, so the hot path copies the id once).
            let mut claimed: Option<Box<str>> = None;
            let result = match message.oversized {
                Some(size) => reject_to_dlq(
                    &message,
                    &oversized_reject(size, message.payload.len()),
                    None,
                    token,
                ),
                None => parser.parse(&message.topic, &message.payload, |outcome| match outcome {
                    Ok(event) => {
                        stats.event(&event);
                        let event_id = event.common().event_id;
                        let reroute = match dedup.claim(event_id, token) {
                            Claim::Produce => None,
                            Claim::Reroute(reason) => Some(reason),
                            Claim::Duplicate(token) => {
                                stats.duplicates.inc();
                                if let Some(token) = token {
                                    complete(Completion::Done(token));
                                }
                                return Ok(());
                            }
                            // Acknowledged when the copy in flight is confirmed.
                            Claim::Waiting => {
                                stats.duplicates.inc();
                                return Ok(());
                            }
                        };
                        let refused = match reroute {
                            Some(reason) => reason.to_string(),
                            None => {
                                stats.kafka_pending.inc();
                                let produced = sink.produce_event(
                                    &event,
                                    &message.topic,
                                    &message.payload,
                                    Some(message.received_at_ms),
                                    Delivery {
                                        token,
                                        family: Some(event.family()),
                                        event_id: Some(event_id.into()),
                                        sent: Instant::now(),
                                    },
                                );
                                match produced {
                                    Ok(()) => return Ok(()),
                                    Err(SinkError::RecordRefused(reason)) => {
                                        stats.kafka_pending.dec();
                                        reason
                                    }
                                    Err(error) => {
                                        stats.kafka_pending.dec();
                                        claimed = Some(event_id.into());
                                        return Err(error);
                                    }
                                }
                            }
                        };
                        reject_to_dlq(
                            &message,
                            &Reject::new(RejectKind::KafkaRefused, refused),
                            Some(event_id),
                            token,
                        )
                        .inspect_err(|_| claimed = Some(event_id.into()))
                    }
                    Err(reject) => reject_to_dlq(&message, &reject, None, token),
                }),
            };
            if let Err(error) = result {
                if let Some(suppressed) = throttle.allow("kafka_produce") {
                    tracing::error!(%error, topic = %message.topic, similar_since_last = suppressed, "could not hand a record to Kafka; it stays unacknowledged");
                }
                stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                let mut failed: Vec<Token> = token.into_iter().collect();
                if let Some(id) = claimed {
                    let waiters: Vec<Token> = dedup
                        .settle(&id, Settled::Failed)
                        .into_iter()
                        .flatten()
                        .collect();
                    stats
                        .abandoned
                        .fetch_add(waiters.len() as u64, Ordering::Relaxed);
                    failed.extend(waiters);
                }
                for token in failed {
                    complete(Completion::Failed(token));
                }
            }
        }
    }
}

/// The reject of a message larger than `max_packet_bytes`, of which the connection task kept
/// the first `kept` bytes.
pub(crate) fn oversized_reject(size: usize, kept: usize) -> Reject {
    Reject::new(
        RejectKind::PayloadTooLarge,
        format!("the payload of {size} bytes is larger than mqtt.max_packet_bytes; its first {kept} bytes are kept"),
    )
}

/// Counts a reject and logs it, at most one line per kind per interval: a flood of bad input
/// must not flood the log (every reject is in `destination` and the counters anyway). The
/// payload is not logged: it may carry device data.
pub(crate) fn note_reject(
    stats: &BridgeStats,
    throttle: &Throttle,
    topic: &str,
    reject: &Reject,
    destination: &str,
) {
    stats.reject(reject.kind);
    if let Some(suppressed) = throttle.allow(reject.kind.as_str()) {
        tracing::warn!(
            kind = reject.kind.as_str(),
            topic = %topic,
            error = %reject.message,
            similar_since_last = suppressed,
            "rejected input sent to the {destination}"
        );
    }
}

/// Sends PUBACKs in arrival order as completions come in; on a failed record, reconnects the
/// session so the broker redelivers everything not yet acknowledged.
async fn acker(
    mut completions: mpsc::Receiver<Completion>,
    client: Client,
    epoch: Arc<AtomicU32>,
    stats: Arc<BridgeStats>,
    inflight: Gauge,
) {
    let mut order = AckOrder::new();
    let mut order_epoch = 0u32;
    let mut disconnected_epoch = None;
    let mut ready = Vec::new();
    while let Some(completion) = completions.recv().await {
        let (token, failed) = match completion {
            Completion::Done(t) => (t, false),
            Completion::Failed(t) => (t, true),
        };
        if token.epoch != order_epoch {
            if token.epoch < order_epoch || token.epoch != epoch.load(Ordering::SeqCst) {
                // From a session that is gone: the broker redelivers its messages.
                if !failed {
                    stats.abandoned.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // Completions still waiting for an earlier message of the old session will never
            // be acknowledged in it.
            stats
                .abandoned
                .fetch_add(order.waiting() as u64, Ordering::Relaxed);
            order = AckOrder::new();
            order_epoch = token.epoch;
        }
        if failed {
            // The gap would hold back every later PUBACK; a new session makes the broker
            // redeliver all unacknowledged messages instead. Once per session: a second
            // DISCONNECT would wait in the client's queue and end the *next* session too.
            if disconnected_epoch != Some(order_epoch) {
                disconnected_epoch = Some(order_epoch);
                let _ = client.disconnect().await;
            }
            continue;
        }
        order.complete(token.seq, token.pkid, &mut ready);
        let mut released = ready.drain(..);
        while let Some(pkid) = released.next() {
            if client.ack(pkid).await.is_err() {
                // The client is gone (shutdown): the broker redelivers these to the next run.
                let left = 1 + released.len() as u64;
                stats.abandoned.fetch_add(left, Ordering::Relaxed);
                break;
            }
            stats.acknowledged.fetch_add(1, Ordering::Relaxed);
            // Only the current session's messages count as in flight (the connection task
            // resets the gauge when a new session starts).
            if order_epoch == epoch.load(Ordering::Relaxed) {
                inflight.dec();
            }
        }
    }
    let _ = client.disconnect().await;
}

struct ConnectionTask {
    index: usize,
    client: Client,
    eventloop: EventLoop,
    subscriptions: Vec<String>,
    qos: QoS,
    inbound: mpsc::Sender<Inbound>,
    epoch: Arc<AtomicU32>,
    draining: Arc<AtomicBool>,
    stats: Arc<BridgeStats>,
    url: String,
    connected: Option<tokio::sync::oneshot::Sender<()>>,
    acker: tokio::task::JoinHandle<()>,
    inflight: Gauge,
    inbound_depth: Gauge,
    /// Payloads above this are cut to their first bytes here and go to the DLQ.
    max_packet_bytes: usize,
}

/// Messages a connection task parks while its batcher is behind, so that it keeps polling the
/// event loop — PUBACKs, pings and the broker's pings go out and in — instead of waiting with
/// them. The broker's in-flight window (mosquitto's `max_inflight_messages`, AWS IoT Core's
/// 100, MQTT 5's receive maximum) bounds QoS 1 messages well below this; past either bound
/// (a QoS 0 flood) the task stops polling until the batcher catches up, and TCP pushes back.
const PARKED_MESSAGES: usize = 65_536;

/// …and the bytes of their payloads.
const PARKED_BYTES: usize = 64 * 1024 * 1024;

/// Messages waiting in a connection task for room in its inbound queue.
#[derive(Default)]
struct Parked {
    messages: std::collections::VecDeque<Inbound>,
    bytes: usize,
}

impl Parked {
    fn push(&mut self, message: Inbound) {
        self.bytes += message.payload.len();
        self.messages.push_back(message);
    }

    fn pop(&mut self) -> Option<Inbound> {
        let message = self.messages.pop_front()?;
        self.bytes -= message.payload.len();
        Some(message)
    }

    fn full(&self) -> bool {
        self.messages.len() >= PARKED_MESSAGES || self.bytes >= PARKED_BYTES
    }
}

/// The next event of `eventloop`, handing parked messages to `inbound` while waiting for it.
/// The poll future lives across hand-offs (it is never dropped half-way).
async fn poll_and_hand_on(
    eventloop: &mut EventLoop,
    parked: &mut Parked,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<NetEvent, MqttError> {
    let poll = eventloop.poll();
    tokio::pin!(poll);
    loop {
        // Handing on first: parked messages leave as soon as there is room, so the parking
        // lot stays as small as the batcher allows; the poll only waits for the network.
        tokio::select! {
            biased;
            permit = inbound.reserve(), if !parked.messages.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(message) = parked.pop() {
                        permit.send(message);
                    }
                }
                // The batcher is gone (drain): parked messages stay unacknowledged.
                Err(_) => *parked = Parked::default(),
            },
            event = &mut poll => return event,
        }
    }
}

async fn connection(mut task: ConnectionTask) {
    let conn = u16::try_from(task.index).unwrap_or(u16::MAX);
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut up = false;
    let mut parked = Parked::default();
    loop {
        while parked.full() {
            // Past the bound: stop polling until the batcher takes some (see PARKED_MESSAGES).
            match parked.pop() {
                Some(message) => {
                    if task.inbound.send(message).await.is_err() {
                        parked = Parked::default();
                    }
                }
                None => break,
            }
        }
        let event = if parked.messages.is_empty() {
            task.eventloop.poll().await
        } else {
            poll_and_hand_on(&mut task.eventloop, &mut parked, &task.inbound).await
        };
        task.inbound_depth.set(
            (task.inbound.max_capacity() - task.inbound.capacity() + parked.messages.len()) as i64,
        );
        match event {
            Ok(NetEvent::Connected { session_present }) => {
                let epoch = task.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                seq = 0;
                task.inflight.set(0);
                backoff = Duration::from_millis(100);
                up = true;
                task.stats.connected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = task.index, session_present, epoch, url = %task.url, "connected");
                if let Some(connected) = task.connected.take() {
                    let _ = connected.send(());
                }
                // Subscribing goes through the client's request queue, which this loop drains:
                // do it from another task so the event loop never waits on itself.
                let client = task.client.clone();
                let filters = task.subscriptions.clone();
                let qos = task.qos;
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe(&filters, qos).await {
                        tracing::error!(%error, "subscribe failed");
                    }
                });
            }
            Ok(NetEvent::Message {
                topic,
                payload,
                needs_ack,
                pkid,
            }) => {
                task.stats.received.fetch_add(1, Ordering::Relaxed);
                if task.draining.load(Ordering::Relaxed) {
                    continue; // not acknowledged: the broker redelivers it to the next run
                }
                let token = needs_ack.then(|| {
                    let token = Token {
                        conn,
                        epoch: task.epoch.load(Ordering::SeqCst),
                        seq,
                        pkid,
                    };
                    seq += 1;
                    task.inflight.inc();
                    token
                });
                // Cut here, so that no queue holds more than max_packet_bytes of it.
                let (payload, oversized) = if payload.len() > task.max_packet_bytes {
                    let kept = DLQ_PREFIX_BYTES.min(task.max_packet_bytes);
                    (
                        Bytes::copy_from_slice(&payload[..kept]),
                        Some(payload.len()),
                    )
                } else {
                    (payload, None)
                };
                let message = Inbound {
                    token,
                    topic,
                    payload,
                    oversized,
                    received_at_ms: now_ms(),
                };
                // Never wait here with the event loop: park the message (in order) while the
                // batcher is behind; the in-flight window bounds the parked messages.
                if parked.messages.is_empty() {
                    match task.inbound.try_send(message) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(message)) => parked.push(message),
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                } else {
                    parked.push(message);
                }
            }
            Ok(NetEvent::Subscribed { refused }) => {
                if refused > 0 {
                    tracing::error!(connection = task.index, refused, filters = ?task.subscriptions, "the broker refused subscriptions");
                } else {
                    tracing::info!(connection = task.index, filters = ?task.subscriptions, "subscribed");
                }
            }
            Ok(NetEvent::DisconnectedByBroker { reason }) => {
                tracing::warn!(connection = task.index, %reason, url = %task.url, "the broker closed the connection");
            }
            Ok(NetEvent::Disconnecting) => {
                if task.draining.load(Ordering::SeqCst) {
                    break;
                }
            }
            Ok(NetEvent::Other) => {}
            Err(error) => {
                if up {
                    task.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    up = false;
                }
                if task.draining.load(Ordering::SeqCst) && task.acker.is_finished() {
                    break;
                }
                task.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(connection = task.index, %error, url = %task.url, retry_in = ?backoff, "MQTT connection lost");
                if let Some(connected) = task.connected.as_ref() {
                    if connected.is_closed() {
                        break;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    if up {
        task.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
}
