//! [`KafkaSink`]: the producer of events and rejects, whose outcome per record comes back
//! through a callback with the caller's token; and which refusals no retry can overcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobstream_parser::Event;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::config::KafkaConfig;
use super::resend::{self, Resend, Resending};
use super::timestamps::{now_ms, TimestampRanges};
use crate::SinkError;

pub(super) type OnDelivery<T> = Arc<dyn Fn(T, Outcome) + Send + Sync>;

/// What became of a record, reported once per record through `on_delivery`.
#[derive(Debug)]
pub enum Outcome {
    /// In its topic.
    Delivered,
    /// Its topic refused it for good ([`refused_for_good`]); it is in the DLQ instead, with
    /// this reason.
    Rerouted(Arc<str>),
    /// Kafka does not have it: timed out, unreachable, purged at shutdown — or refused, and
    /// the DLQ could not take it. A later attempt may get it in.
    Failed(KafkaError),
}

impl Outcome {
    /// Whether Kafka has the record, in its topic or in the DLQ.
    pub fn is_durable(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }
}

/// What travels with a record through librdkafka: the caller's token and what the record is.
pub(super) struct Sent<T> {
    pub(super) token: T,
    pub(super) kind: RecordKind,
}

pub(super) enum RecordKind {
    /// An event for its family's topic, stamped `timestamp_ms` (a failed delivery report
    /// carries no timestamp, so it travels here), failed `batch_failures` times for sharing a
    /// batch with a record the broker refused.
    Event {
        timestamp_ms: i64,
        batch_failures: u8,
    },
    /// A reject the caller sent to the DLQ.
    Reject,
    /// An event its topic refused, on its way to the DLQ for this reason.
    Rerouted(Arc<str>),
}

/// What the delivery callback and the resend thread share.
pub(super) struct Shared<T> {
    pub(super) on_delivery: OnDelivery<T>,
    pub(super) dlq_topic: String,
    /// See [`KafkaSink::dlq_payload_limit`]; fixed by the options, so computed once.
    pub(super) dlq_payload_limit: usize,
    /// Set by [`KafkaSink::abort_waits`]: waits for room in librdkafka's queue give up.
    pub(super) stopping: AtomicBool,
    pub(super) resending: Resending,
}

pub(super) struct Context<T> {
    shared: Arc<Shared<T>>,
    /// Held here only, so the resend thread ends when the producer is dropped.
    resend: SyncSender<Resend<T>>,
}

impl<T: Send + Sync + 'static> ClientContext for Context<T> {}

impl<T: Send + Sync + 'static> ProducerContext for Context<T> {
    type DeliveryOpaque = Box<Sent<T>>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent<T>>) {
        let sent = *sent;
        let (error, message) = match result {
            Ok(_) => {
                let outcome = match sent.kind {
                    RecordKind::Rerouted(reason) => Outcome::Rerouted(reason),
                    RecordKind::Event { .. } | RecordKind::Reject => Outcome::Delivered,
                };
                (self.shared.on_delivery)(sent.token, outcome);
                return;
            }
            Err((error, message)) => (error, message),
        };
        let sent = match Resend::after_failure(sent, error, message) {
            Ok(resend) => {
                // Never blocks librdkafka's polling thread: when the resend queue is full the
                // record fails as before, and the caller's retry (a redelivery) takes it.
                self.shared.resending.begin();
                match self.resend.try_send(resend) {
                    Ok(()) => return,
                    Err(TrySendError::Full(resend) | TrySendError::Disconnected(resend)) => {
                        self.shared.resending.abandon();
                        resend.into_sent()
                    }
                }
            }
            Err(sent) => sent,
        };
        (self.shared.on_delivery)(sent.token, Outcome::Failed(error.clone()));
    }
}

/// Records waiting to be produced again, at most: refused events and their batch-mates,
/// which librdkafka's queue (`max_queued`) held a moment before. Beyond it they fail to the
/// caller, whose retry takes them (see [`Outcome::Failed`]).
const RESEND_QUEUE: usize = 16_384;

/// How often an event may fail for sharing a batch with a refused record before it is failed
/// to the caller: each failure removes the refused records from the partition's queue, so a
/// valid event gets in at the next attempt unless refused records keep arriving.
pub(super) const BATCH_FAILURES_RETRIED: u8 = 8;

/// A Kafka producer for events and rejects, reporting each record's fate with a token `T`.
///
/// An event its topic refuses for good after batching (a timestamp out of range, too large for
/// the topic) is produced to the DLQ by a thread of the sink's own, and reported as
/// [`Outcome::Rerouted`]; the valid events the broker failed only because they shared its
/// batch are produced again. Either way no redelivery is needed.
pub struct KafkaSink<T: Send + Sync + 'static> {
    /// Shared with the resend thread, which holds it weakly.
    producer: Arc<ThreadedProducer<Context<T>>>,
    shared: Arc<Shared<T>>,
    config: KafkaConfig,
    /// The event topics' timestamp ranges: an event out of range is refused before it is
    /// batched (see `timestamps`).
    timestamp_ranges: TimestampRanges,
}

impl<T: Send + Sync + 'static> std::fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

/// `received_at` and friends as the decimal strings the header contract promises.
fn decimal(n: i64) -> String {
    n.to_string()
}

impl<T: Send + Sync + 'static> KafkaSink<T> {
    /// Creates the producer and its resend thread. `on_delivery` runs on librdkafka's polling
    /// thread or the resend thread: keep it short.
    ///
    /// # Errors
    /// Invalid librdkafka options, or the thread could not be started.
    pub fn new(
        config: KafkaConfig,
        on_delivery: impl Fn(T, Outcome) + Send + Sync + 'static,
    ) -> Result<Self, SinkError> {
        let max = config
            .options
            .get("message.max.bytes")
            .or_else(|| config.options.get("producer.message.max.bytes"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let shared = Arc::new(Shared {
            on_delivery: Arc::new(on_delivery),
            dlq_topic: config.dlq_topic.clone(),
            dlq_payload_limit: max
                .saturating_sub(RECORD_OVERHEAD_BYTES)
                .max(DLQ_PREFIX_BYTES),
            stopping: AtomicBool::new(false),
            resending: Resending::default(),
        });
        let (resend_tx, resend_rx) = sync_channel(RESEND_QUEUE);
        let context = Context {
            shared: Arc::clone(&shared),
            resend: resend_tx,
        };
        let producer = Arc::new(
            config
                .producer_config()?
                .create_with_context(context)
                .map_err(|e| SinkError::Config {
                    setting: "kafka",
                    value: config.brokers.clone(),
                    reason: e.to_string(),
                })?,
        );
        resend::spawn(resend_rx, Arc::downgrade(&producer), Arc::clone(&shared))?;
        Ok(KafkaSink {
            producer,
            shared,
            config,
            timestamp_ranges: TimestampRanges::default(),
        })
    }

    /// Refuses events whose timestamps their topic would refuse, before they are batched
    /// ([`crate::kafka::prepare_topics`] reads them from the cluster).
    #[must_use]
    pub fn with_timestamp_ranges(mut self, ranges: TimestampRanges) -> Self {
        self.timestamp_ranges = ranges;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Makes waiting `produce` calls give up (shutdown after a second signal).
    pub fn abort_waits(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], Box<Sent<T>>>) -> Result<(), SinkError> {
        send_waiting(&self.producer, &self.shared.stopping, record).map_err(|(error, _)| {
            match refused_for_good(&error) {
                Some(refused) => refused,
                None => SinkError::Kafka {
                    action: "producing".into(),
                    source: error,
                },
            }
        })
    }

    /// The largest payload a DLQ record carries whole: the producer's `message.max.bytes`
    /// less room for the key and headers. Larger payloads keep their first
    /// [`DLQ_PREFIX_BYTES`] and say their size in the `payload_bytes` header.
    pub fn dlq_payload_limit(&self) -> usize {
        self.shared.dlq_payload_limit
    }

    /// Produces a valid event to its family's topic; waits while librdkafka's queue is full.
    ///
    /// # Errors
    /// The topic would refuse the event's timestamp ([`SinkError::TimestampOutOfRange`]), or
    /// librdkafka refused the record for a reason other than a full queue.
    pub fn produce_event(
        &self,
        event: &Event<'_, '_>,
        mqtt_topic: &str,
        payload: &[u8],
        received_at_ms: Option<i64>,
        token: T,
    ) -> Result<(), SinkError> {
        let common = event.common();
        let (topic, range) = match event.family() {
            jobstream_parser::Family::Job => (&self.config.job_topic, self.timestamp_ranges.jobs),
            jobstream_parser::Family::Execution => (
                &self.config.execution_topic,
                self.timestamp_ranges.executions,
            ),
        };
        if let Some(range) = range {
            range
                .check(common.event_time_ms, now_ms())
                .map_err(|out_of_range| SinkError::TimestampOutOfRange {
                    topic: topic.clone(),
                    out_of_range,
                })?;
        }
        let received = received_at_ms.map(decimal);
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "mqtt_topic",
                value: Some(mqtt_topic),
            })
            .insert(Header {
                key: "event_type",
                value: Some(event.family().event_type()),
            })
            .insert(Header {
                key: "operation",
                value: Some(event.operation_str()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(common.event_id),
            });
        // A capture has no receive time: the header is left out rather than invented.
        if let Some(received) = &received {
            headers = headers.insert(Header {
                key: "received_at",
                value: Some(received.as_str()),
            });
        }
        let sent = Sent {
            token,
            kind: RecordKind::Event {
                timestamp_ms: common.event_time_ms,
                batch_failures: 0,
            },
        };
        let record = BaseRecord::with_opaque_to(topic.as_str(), Box::new(sent))
            .key(common.job_id.as_bytes())
            .payload(payload)
            .timestamp(common.event_time_ms)
            .headers(headers);
        self.send(record)
    }

    /// Produces a rejected message to the DLQ topic, payload byte for byte — or, when the
    /// payload is larger than a record can carry ([`KafkaSink::dlq_payload_limit`]), or
    /// `payload` is already only the first bytes of a larger one (`original_bytes`), its first
    /// [`DLQ_PREFIX_BYTES`] with the headers `payload_bytes` (the full size) and
    /// `payload_truncated: true`.
    ///
    /// # Errors
    /// librdkafka refused the record for a reason other than a full queue.
    pub fn produce_reject(
        &self,
        mqtt_topic: &str,
        payload: &[u8],
        original_bytes: Option<usize>,
        error_kind: &str,
        error: &str,
        token: T,
    ) -> Result<(), SinkError> {
        let sent = Sent {
            token,
            kind: RecordKind::Reject,
        };
        let record = dlq_record(
            &self.shared,
            mqtt_topic,
            payload,
            original_bytes,
            error_kind,
            error,
            sent,
        );
        self.send(record)
    }

    /// Waits until every queued record has a delivery outcome, at most `timeout`: the records
    /// produced again by the resend thread included.
    ///
    /// # Errors
    /// Records were still undelivered at the deadline.
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let resent_before = self.shared.resending.completed();
            self.producer
                .flush(deadline.saturating_duration_since(Instant::now()))
                .map_err(SinkError::kafka("flushing the producer"))?;
            // A record failed during that flush may be on its way back into the queue.
            if !self.shared.resending.wait_idle(deadline) {
                return Err(SinkError::kafka("flushing the producer")(
                    KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                ));
            }
            if self.shared.resending.completed() == resent_before {
                return Ok(());
            }
        }
    }

    /// Records handed to librdkafka and not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Whether a broker answers a metadata request within `timeout` (readiness probes).
    /// Blocks up to `timeout`.
    ///
    /// # Errors
    /// No broker answered in time.
    pub fn reachable(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer
            .client()
            .fetch_metadata(Some(&self.config.job_topic), timeout)
            .map(|_| ())
            .map_err(SinkError::kafka(format!(
                "no broker at {} answered within {timeout:?}",
                self.config.brokers
            )))
    }
}

/// Hands `record` to librdkafka, waiting while its queue is full unless `stopping`.
///
/// # Errors
/// librdkafka's refusal, with the record's token back.
pub(super) fn send_waiting<T: Send + Sync + 'static>(
    producer: &ThreadedProducer<Context<T>>,
    stopping: &AtomicBool,
    mut record: BaseRecord<'_, [u8], [u8], Box<Sent<T>>>,
) -> Result<(), (KafkaError, Box<Sent<T>>)> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if !stopping.load(Ordering::SeqCst) =>
            {
                record = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((error, back)) => return Err((error, back.delivery_opaque)),
        }
    }
}

/// A DLQ record: the payload byte for byte — or, when it is larger than a record can carry
/// (`dlq_payload_limit`), or is already only the first bytes of a larger one
/// (`original_bytes`), its first [`DLQ_PREFIX_BYTES`] with the headers `payload_bytes` (the
/// full size) and `payload_truncated: true`.
pub(super) fn dlq_record<'a, T: Send + Sync + 'static>(
    shared: &'a Shared<T>,
    mqtt_topic: &'a str,
    payload: &'a [u8],
    original_bytes: Option<usize>,
    error_kind: &str,
    error: &str,
    sent: Sent<T>,
) -> BaseRecord<'a, [u8], [u8], Box<Sent<T>>> {
    let (payload, original_bytes) = if payload.len() > shared.dlq_payload_limit {
        (&payload[..DLQ_PREFIX_BYTES], Some(payload.len()))
    } else {
        (payload, original_bytes)
    };
    let size = original_bytes.map(|n| n.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "mqtt_topic",
            value: Some(mqtt_topic),
        })
        .insert(Header {
            key: "error_kind",
            value: Some(error_kind),
        })
        .insert(Header {
            key: "error",
            value: Some(error),
        });
    if let Some(size) = &size {
        headers = headers
            .insert(Header {
                key: "payload_bytes",
                value: Some(size.as_str()),
            })
            .insert(Header {
                key: "payload_truncated",
                value: Some("true"),
            });
    }
    BaseRecord::with_opaque_to(shared.dlq_topic.as_str(), Box::new(sent))
        .key(mqtt_topic.as_bytes())
        .payload(payload)
        .headers(headers)
}

/// The text of a refusal a failed delivery of a record stamped `timestamp_ms` reports, for the
/// DLQ's `error` header: what Kafka refused, and for an invalid record, how far its timestamp
/// was from this host's clock (the usual cause).
pub(super) fn refusal_reason(error: &KafkaError, timestamp_ms: i64) -> Option<Arc<str>> {
    let refused = refused_for_good(error)?;
    let timestamp_may_be_why = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::InvalidTimestamp | RDKafkaErrorCode::InvalidRecord)
    );
    Some(if timestamp_may_be_why {
        let offset = super::timestamps::offset_from_clock(timestamp_ms - now_ms());
        format!("{refused}; its timestamp is {offset}, which the topic's message.timestamp.before.max.ms / after.max.ms may not allow").into()
    } else {
        refused.to_string().into()
    })
}

/// librdkafka's default `message.max.bytes`: the largest record the producer sends.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room left in a DLQ record for its key, headers and framing.
const RECORD_OVERHEAD_BYTES: usize = 16 * 1024;

/// What a DLQ record keeps of a payload too large to carry whole: enough to see what it was.
pub const DLQ_PREFIX_BYTES: usize = 64 * 1024;

/// Kafka's verdict when it will never take a record as it is — larger than the topic's
/// `max.message.bytes` or the producer's `message.max.bytes`, or invalid — as the error whose
/// message is the DLQ reason; `None` for failures that retrying (a redelivery) can overcome.
pub fn refused_for_good(error: &KafkaError) -> Option<SinkError> {
    let code = error.rdkafka_error_code()?;
    let what = match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => {
            "the record is larger than the topic's max.message.bytes (or the producer's message.max.bytes)"
        }
        RDKafkaErrorCode::InvalidTimestamp => {
            "the record's timestamp is out of the range the topic takes"
        }
        RDKafkaErrorCode::InvalidMessageSize | RDKafkaErrorCode::InvalidRecord => {
            "the broker refused the record as invalid"
        }
        _ => return None,
    };
    Some(SinkError::RecordRefused {
        reason: what,
        source: error.clone(),
    })
}
