//! The bridge's wiring: [`run`] starts every part (connection tasks, batchers, workers or the
//! direct writer, ackers, the delivery loop), registers readiness, and drains them in order.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel as xchan;
use jobstream_metrics::Throttle;
use jobstream_parser::Family;
use jobstream_parser::RejectKind;
use jobstream_sink::kafka::{ClientRole, KafkaSink, Outcome, TimestampRanges};
use tokio::sync::{mpsc, Notify};

use crate::acker::acker;
use crate::config::redact;
use crate::config::SessionStart;
use crate::connection::{connection, ConnectionTask, Retirement};
use crate::dedup::{DedupWindow, Settled};
use crate::direct::DirectWriter;
use crate::handoff::{batcher, Completion, Delivery, Inbound, Token, COMPLETIONS_PER_CONNECTION};
use crate::mqtt;
use crate::settings::{BridgeConfig, Output};
use crate::stats::BridgeStats;
use crate::worker::worker;
use crate::BridgeError;

/// At most one warning per reject kind (and one delivery-failure error) in this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

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
    config.validate()?;
    let qos = config.mqtt.qos()?;
    let connections = config.mqtt.connections;
    let mut clients = Vec::with_capacity(connections);
    for index in 0..connections {
        clients.push(mqtt::connect(&config.mqtt, index)?);
    }
    // Direct Parquet acknowledges in input order, so its window confirms at once; Kafka
    // confirms out of order, so its window holds ids in flight and the copies waiting on them.
    let dedup: Arc<DedupWindow> = Arc::new(DedupWindow::new(config.pipeline.dedup_window));
    let claims: Arc<DedupWindow<Option<Token>>> =
        Arc::new(DedupWindow::new(config.pipeline.dedup_window));
    let (direct, kafka) = match &config.output {
        Output::Parquet(parquet) => {
            let writer = DirectWriter::open(
                parquet.clone(),
                &config.mqtt.client_id,
                &dedup,
                config.pipeline.dedup_window,
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
            let ranges = jobstream_sink::kafka::prepare_topics(kafka).await?;
            (None, Some((kafka, ranges)))
        }
    };

    // Sessions an earlier run with more connections left behind get a connection each, which
    // drains them and then ends them (see `sessions`).
    let retiring = if config.mqtt.retire_sessions {
        crate::sessions::left_behind(&config.mqtt).await
    } else {
        Vec::new()
    };
    for client_id in &retiring {
        clients.push(mqtt::connect_as(
            &config.mqtt,
            client_id,
            SessionStart::Resume,
        )?);
    }

    let (completion_tx, completion_rx): (Vec<_>, Vec<_>) = (0..clients.len())
        .map(|_| mpsc::channel::<Completion>(COMPLETIONS_PER_CONNECTION))
        .unzip();
    let completion_tx = Arc::new(completion_tx);
    let throttle = Arc::new(Throttle::new(WARNING_INTERVAL));
    let sink = kafka.map(|(kafka, ranges): (_, TimestampRanges)| {
        let completion_tx = Arc::clone(&completion_tx);
        let dedup_for_delivery = Arc::clone(&claims);
        let stats = Arc::clone(&stats);
        let throttle = Arc::clone(&throttle);
        KafkaSink::new(
            kafka.clone(),
            move |delivery: Delivery, outcome: Outcome| {
                stats.kafka_pending.dec();
                stats
                    .delivery_latency
                    .observe_duration(delivery.sent.elapsed());
                match (&outcome, delivery.family) {
                    (Outcome::Delivered, Some(Family::Job)) => {
                        stats.produced_jobs.fetch_add(1, Ordering::Relaxed);
                    }
                    (Outcome::Delivered, Some(Family::Execution)) => {
                        stats.produced_executions.fetch_add(1, Ordering::Relaxed);
                    }
                    (Outcome::Delivered, None) => {
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    (Outcome::Rerouted(reason), _) => {
                        stats.reject(RejectKind::KafkaRefused);
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = throttle.allow(RejectKind::KafkaRefused.as_str()) {
                            tracing::warn!(error = %reason, similar_since_last = suppressed, "Kafka refused an event for good; it is in the DLQ");
                        }
                    }
                    (Outcome::Failed(error), _) => {
                        if let Some(suppressed) = throttle.allow("kafka_delivery") {
                            tracing::error!(%error, similar_since_last = suppressed, "Kafka did not take a record; it stays unacknowledged and will be redelivered");
                        }
                        stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The copies that waited for this record share its outcome: an event in the
                // DLQ is as durable as one in its topic.
                let waiters = match &delivery.event_id {
                    Some(id) => {
                        let settled = match &outcome {
                            Outcome::Delivered | Outcome::Rerouted(_) => Settled::Confirmed,
                            Outcome::Failed(error) => {
                                match jobstream_sink::kafka::refused_for_good(error) {
                                    Some(refused) => Settled::Refused(refused.to_string().into()),
                                    None => Settled::Failed,
                                }
                            }
                        };
                        dedup_for_delivery.settle(id, settled)
                    }
                    None => Vec::new(),
                };
                let durable = outcome.is_durable();
                if !durable {
                    // Copies that waited on a failed record stay unacknowledged too (the broker
                    // redelivers them); counted so that received = acked + abandoned + failures.
                    stats
                        .abandoned
                        .fetch_add(waiters.iter().flatten().count() as u64, Ordering::Relaxed);
                }
                for token in delivery.token.into_iter().chain(waiters.into_iter().flatten()) {
                    let completion = if durable {
                        Completion::Done(token)
                    } else {
                        Completion::Failed(token)
                    };
                    let tx = &completion_tx[usize::from(token.conn)];
                    // The channel seldom fills (see COMPLETIONS_PER_CONNECTION). This runs on
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
        .map(|sink| Arc::new(sink.with_timestamp_ranges(ranges)))
    });
    let sink = sink.transpose()?;

    // Network tasks → batchers → (crossbeam, bounded) → parser workers → Kafka.
    let (batch_tx, batch_rx) = xchan::bounded::<Vec<Inbound>>(config.pipeline.queue_batches.max(1));
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
        let parser_config = config.pipeline.parser();
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
        config.pipeline.workers.max(1)
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
        let parser_config = config.pipeline.parser();
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
    let superseded = config.mqtt.superseded_subscriptions();
    let mut connection_tasks = Vec::new();
    let mut first_connects = Vec::new();
    let mut retiring = retiring.into_iter();
    let last_failure = Arc::new(std::sync::Mutex::new(None));
    for (index, ((client, eventloop), completions)) in
        clients.into_iter().zip(completion_rx).enumerate()
    {
        let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(config.pipeline.batch_size * 4);
        let epoch = Arc::new(AtomicU32::new(0));
        // The acker and the connection task share one gauge: a retiring connection (past
        // `connections`) has no metric of its own, but ends only once it reads zero.
        let inflight = stats.inflight.get(index).cloned().unwrap_or_default();
        let retirement = if index < connections {
            None
        } else {
            retiring
                .next()
                .map(|client_id| Retirement::new(client_id, config.mqtt.clone()))
        };
        let (subscribe, unsubscribe, connected) = match retirement {
            None => {
                let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
                first_connects.push(connected_rx);
                (
                    subscriptions.clone(),
                    superseded.clone(),
                    Some(connected_tx),
                )
            }
            Some(_) => (Vec::new(), config.mqtt.retired_subscriptions(), None),
        };
        tokio::spawn(batcher(
            inbound_rx,
            batch_tx.clone(),
            config.pipeline.batch_size,
            Arc::clone(&drain_notify),
            stats.handoff_queue.clone(),
        ));
        let acker = tokio::spawn(acker(
            completions,
            client.clone(),
            Arc::clone(&epoch),
            Arc::clone(&stats),
            inflight.clone(),
        ));
        connection_tasks.push(tokio::spawn(connection(ConnectionTask {
            index,
            client,
            eventloop,
            subscriptions: subscribe,
            unsubscriptions: unsubscribe,
            retirement,
            qos,
            inbound: inbound_tx,
            epoch,
            draining: Arc::clone(&draining),
            stats: Arc::clone(&stats),
            url: redact(&config.mqtt.url),
            connected,
            last_failure: Arc::clone(&last_failure),
            acker,
            inflight,
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
                let last_failure = last_failure
                    .lock()
                    .ok()
                    .and_then(|mut last| last.take())
                    .unwrap_or_else(|| "the broker did not answer".to_owned());
                return Err(BridgeError::MqttUnreachable {
                    url: redact(&config.mqtt.url),
                    within: config.mqtt.connect_timeout,
                    hint: config.mqtt.unreachable_hint(),
                    last_failure,
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
            let remaining = config
                .pipeline
                .drain_timeout
                .saturating_sub(started.elapsed());
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
    let stuck = match tokio::time::timeout(config.pipeline.drain_timeout, drain).await {
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
        after: config.pipeline.drain_timeout,
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
