//! The MQTT → Kafka pipeline and its acknowledgement loop.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam::channel as xchan;
use jobstream_parser::{Family, Parser, ParserConfig};
use jobstream_sink::kafka::{KafkaConfig, KafkaSink};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, Notify};

use crate::acks::AckOrder;
use crate::config::{redact, MqttConfig};
use crate::dedup::DedupWindow;
use crate::BridgeError;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The MQTT side.
    pub mqtt: MqttConfig,
    /// The Kafka side.
    pub kafka: KafkaConfig,
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

impl BridgeConfig {
    /// Defaults around the two endpoints.
    pub fn new(mqtt: MqttConfig, kafka: KafkaConfig) -> Self {
        BridgeConfig {
            mqtt,
            kafka,
            parser: ParserConfig::default(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 512,
            queue_batches: 64,
            dedup_window: 1_000_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a run, readable while it goes.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// PUBLISH packets received.
    pub received: AtomicU64,
    /// JOB events Kafka confirmed.
    pub produced_jobs: AtomicU64,
    /// JOB_EXECUTION events Kafka confirmed.
    pub produced_executions: AtomicU64,
    /// Rejects Kafka confirmed in the DLQ topic.
    pub rejected: AtomicU64,
    /// Duplicates (same `eventId` within the window) dropped before Kafka.
    pub duplicates: AtomicU64,
    /// PUBACKs sent.
    pub acknowledged: AtomicU64,
    /// Records Kafka failed to take (never acknowledged; redelivered by the broker).
    pub delivery_failures: AtomicU64,
    /// MQTT connection errors (each followed by a reconnect).
    pub reconnects: AtomicU64,
    /// Connections currently up.
    pub connected: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    conn: u16,
    epoch: u32,
    seq: u64,
    pkid: u16,
}

#[derive(Debug)]
struct Delivery {
    token: Option<Token>,
    family: Option<Family>,
}

#[derive(Debug)]
enum Completion {
    Done(Token),
    Failed(Token),
}

struct Inbound {
    token: Option<Token>,
    topic: String,
    payload: Bytes,
    received_at_ms: i64,
}

/// Completions can never exceed the unacknowledged messages of a connection, which MQTT's
/// 16-bit packet ids cap at 65,535, so senders never wait on this bound.
const COMPLETIONS_PER_CONNECTION: usize = 65_536;

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
    let mut options = Vec::with_capacity(connections);
    for index in 0..connections {
        options.push(config.mqtt.options(index)?);
    }
    jobstream_sink::kafka::ensure_topics(&config.kafka, Duration::from_secs(30)).await?;

    let (completion_tx, completion_rx): (Vec<_>, Vec<_>) = (0..connections)
        .map(|_| mpsc::channel::<Completion>(COMPLETIONS_PER_CONNECTION))
        .unzip();
    let completion_tx = Arc::new(completion_tx);
    let sink = {
        let completion_tx = Arc::clone(&completion_tx);
        let stats = Arc::clone(&stats);
        Arc::new(KafkaSink::new(
            config.kafka.clone(),
            move |delivery: Delivery, result| {
                match (&result, delivery.family) {
                    (Ok(()), Some(Family::Job)) => {
                        stats.produced_jobs.fetch_add(1, Ordering::Relaxed)
                    }
                    (Ok(()), Some(Family::Execution)) => {
                        stats.produced_executions.fetch_add(1, Ordering::Relaxed)
                    }
                    (Ok(()), None) => stats.rejected.fetch_add(1, Ordering::Relaxed),
                    (Err(error), _) => {
                        tracing::error!(%error, "Kafka did not take a record; it stays unacknowledged and will be redelivered");
                        stats.delivery_failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                if let Some(token) = delivery.token {
                    let completion = match result {
                        Ok(()) => Completion::Done(token),
                        Err(_) => Completion::Failed(token),
                    };
                    let _ = completion_tx[usize::from(token.conn)].blocking_send(completion);
                }
            },
        )?)
    };

    // Network tasks → batchers → (crossbeam, bounded) → parser workers → Kafka.
    let (batch_tx, batch_rx) = xchan::bounded::<Vec<Inbound>>(config.queue_batches.max(1));
    let dedup = Arc::new(DedupWindow::new(config.dedup_window));
    let mut workers = Vec::new();
    for index in 0..config.workers.max(1) {
        let batch_rx = batch_rx.clone();
        let sink = Arc::clone(&sink);
        let dedup = Arc::clone(&dedup);
        let stats = Arc::clone(&stats);
        let completion_tx = Arc::clone(&completion_tx);
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
                )
            })
            .map_err(|e| BridgeError::Config(format!("cannot start a parser thread: {e}")))?;
        workers.push(handle);
    }
    drop(batch_rx);

    let draining = Arc::new(AtomicBool::new(false));
    let drain_notify = Arc::new(Notify::new());
    let subscriptions = config.mqtt.subscriptions();
    let mut connection_tasks = Vec::new();
    let mut first_connects = Vec::new();
    for (index, (mqtt_options, completions)) in options.into_iter().zip(completion_rx).enumerate() {
        let (client, eventloop) = AsyncClient::new(mqtt_options, config.mqtt.request_capacity);
        let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>(config.batch_size * 4);
        let epoch = Arc::new(AtomicU32::new(0));
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        first_connects.push(connected_rx);
        tokio::spawn(batcher(
            inbound_rx,
            batch_tx.clone(),
            config.batch_size,
            Arc::clone(&drain_notify),
        ));
        let acker = tokio::spawn(acker(
            completions,
            client.clone(),
            Arc::clone(&epoch),
            Arc::clone(&stats),
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
        })));
    }
    drop(batch_tx);

    // Fail fast on a broker that is not there at all; after the first connection, reconnect
    // forever with backoff.
    let deadline = tokio::time::sleep(config.mqtt.connect_timeout);
    tokio::pin!(deadline);
    tokio::pin!(shutdown);
    for connected in first_connects {
        tokio::select! {
            result = connected => {
                if let Ok(Err(error)) = result {
                    return Err(BridgeError::Mqtt(error));
                }
            }
            () = &mut deadline => {
                return Err(BridgeError::Mqtt(format!(
                    "no connection to {} within {:?}",
                    redact(&config.mqtt.url),
                    config.mqtt.connect_timeout
                )));
            }
            () = &mut shutdown => break,
        }
    }
    shutdown.await;

    tracing::info!("draining: no new messages; finishing what is in flight");
    let started = Instant::now();
    draining.store(true, Ordering::SeqCst);
    drain_notify.notify_waiters();
    let drain = async {
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        });
        let _ = joined.await;
        let remaining = config.drain_timeout.saturating_sub(started.elapsed());
        let flush_sink = Arc::clone(&sink);
        let flushed = tokio::task::spawn_blocking(move || flush_sink.flush(remaining)).await;
        // Dropping the sink drops the delivery callback and its completion senders; each
        // acker then sends its last acknowledgements and disconnects its connection.
        drop(sink);
        drop(completion_tx);
        for task in connection_tasks {
            let _ = task.await;
        }
        match flushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BridgeError::Kafka(e)),
            Err(e) => Err(BridgeError::Mqtt(format!("flush task failed: {e}"))),
        }
    };
    match tokio::time::timeout(config.drain_timeout, drain).await {
        Ok(result) => result,
        Err(_) => Err(BridgeError::DrainTimeout(config.drain_timeout)),
    }
}

async fn batcher(
    mut inbound: mpsc::Receiver<Inbound>,
    batches: xchan::Sender<Vec<Inbound>>,
    batch_size: usize,
    drain: Arc<Notify>,
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
                Ok(()) => break,
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
    dedup: &DedupWindow,
    stats: &BridgeStats,
    completions: &[mpsc::Sender<Completion>],
) {
    let mut parser = Parser::new(parser_config);
    let complete = |completion: Completion| {
        let conn = match &completion {
            Completion::Done(t) | Completion::Failed(t) => usize::from(t.conn),
        };
        let _ = completions[conn].blocking_send(completion);
    };
    for batch in batches.iter() {
        for message in batch {
            let token = message.token;
            let result = parser.parse(&message.topic, &message.payload, |outcome| match outcome {
                Ok(event) => {
                    if !dedup.first_time(event.common().event_id) {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        if let Some(token) = token {
                            complete(Completion::Done(token));
                        }
                        return Ok(());
                    }
                    let family = Some(event.family());
                    sink.produce_event(
                        &event,
                        &message.topic,
                        &message.payload,
                        Some(message.received_at_ms),
                        Delivery { token, family },
                    )
                }
                Err(reject) => sink.produce_reject(
                    &message.topic,
                    &message.payload,
                    reject.kind.as_str(),
                    &reject.message,
                    Delivery {
                        token,
                        family: None,
                    },
                ),
            });
            if let Err(error) = result {
                tracing::error!(%error, topic = %message.topic, "could not hand a record to Kafka; it stays unacknowledged");
                stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(token) = token {
                    complete(Completion::Failed(token));
                }
            }
        }
    }
}

/// Sends PUBACKs in arrival order as completions come in; on a failed record, reconnects the
/// session so the broker redelivers everything not yet acknowledged.
async fn acker(
    mut completions: mpsc::Receiver<Completion>,
    client: AsyncClient,
    epoch: Arc<AtomicU32>,
    stats: Arc<BridgeStats>,
) {
    let mut order = AckOrder::new();
    let mut order_epoch = 0u32;
    let mut ready = Vec::new();
    let mut ack = Publish::new("", QoS::AtLeastOnce, Vec::new());
    while let Some(completion) = completions.recv().await {
        let (token, failed) = match completion {
            Completion::Done(t) => (t, false),
            Completion::Failed(t) => (t, true),
        };
        if token.epoch != order_epoch {
            if token.epoch < order_epoch || token.epoch != epoch.load(Ordering::SeqCst) {
                continue; // from a session that is gone: the broker redelivers its messages
            }
            order = AckOrder::new();
            order_epoch = token.epoch;
        }
        if failed {
            // The gap would hold back every later PUBACK; a new session makes the broker
            // redeliver all unacknowledged messages instead.
            let _ = client.disconnect().await;
            continue;
        }
        order.complete(token.seq, token.pkid, &mut ready);
        for pkid in ready.drain(..) {
            ack.pkid = pkid;
            if client.ack(&ack).await.is_err() {
                break;
            }
            stats.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = client.disconnect().await;
}

struct ConnectionTask {
    index: usize,
    client: AsyncClient,
    eventloop: EventLoop,
    subscriptions: Vec<String>,
    qos: QoS,
    inbound: mpsc::Sender<Inbound>,
    epoch: Arc<AtomicU32>,
    draining: Arc<AtomicBool>,
    stats: Arc<BridgeStats>,
    url: String,
    connected: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    acker: tokio::task::JoinHandle<()>,
}

async fn connection(mut task: ConnectionTask) {
    let conn = u16::try_from(task.index).unwrap_or(u16::MAX);
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut up = false;
    loop {
        match task.eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let epoch = task.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                seq = 0;
                backoff = Duration::from_millis(100);
                up = true;
                task.stats.connected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = task.index, session_present = ack.session_present, epoch, url = %task.url, "connected");
                if let Some(connected) = task.connected.take() {
                    let _ = connected.send(Ok(()));
                }
                // Subscribing goes through the client's request queue, which this loop drains:
                // do it from another task so the event loop never waits on itself.
                let client = task.client.clone();
                let filters: Vec<_> = task
                    .subscriptions
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), task.qos))
                    .collect();
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe_many(filters).await {
                        tracing::error!(%error, "subscribe failed");
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                task.stats.received.fetch_add(1, Ordering::Relaxed);
                if task.draining.load(Ordering::Relaxed) {
                    continue; // not acknowledged: the broker redelivers it to the next run
                }
                let token = (publish.qos != QoS::AtMostOnce).then(|| {
                    let token = Token {
                        conn,
                        epoch: task.epoch.load(Ordering::SeqCst),
                        seq,
                        pkid: publish.pkid,
                    };
                    seq += 1;
                    token
                });
                let message = Inbound {
                    token,
                    topic: publish.topic,
                    payload: publish.payload,
                    received_at_ms: now_ms(),
                };
                // Awaiting here is the backpressure: while the workers are behind, this
                // connection stops reading and TCP slows the broker down.
                let _ = task.inbound.send(message).await;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    tracing::error!(connection = task.index, refused, filters = ?task.subscriptions, "the broker refused subscriptions");
                } else {
                    tracing::info!(connection = task.index, filters = ?task.subscriptions, "subscribed");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                if task.draining.load(Ordering::SeqCst) {
                    break;
                }
            }
            Ok(_) => {}
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
