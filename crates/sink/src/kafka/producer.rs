//! [`KafkaSink`]: the producer of events and rejects, whose outcome per record comes back
//! through a callback with the caller's token; and which refusals no retry can overcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobstream_parser::Event;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::config::KafkaConfig;
use crate::SinkError;

type OnDelivery<T> = Arc<dyn Fn(T, Result<(), KafkaError>) + Send + Sync>;

struct Context<T> {
    on_delivery: OnDelivery<T>,
}

impl<T> ClientContext for Context<T> {}

impl<T: Send + Sync + 'static> ProducerContext for Context<T> {
    type DeliveryOpaque = Box<T>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<T>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.clone()),
        };
        (self.on_delivery)(*token, outcome);
    }
}

/// A Kafka producer for events and rejects, reporting each record's fate with a token `T`.
pub struct KafkaSink<T: Send + Sync + 'static> {
    producer: ThreadedProducer<Context<T>>,
    config: KafkaConfig,
    /// See [`KafkaSink::dlq_payload_limit`]; fixed by the options, so computed once.
    dlq_payload_limit: usize,
    stopping: Arc<AtomicBool>,
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
    /// Creates the producer. `on_delivery` runs on librdkafka's polling thread: keep it short.
    ///
    /// # Errors
    /// Invalid librdkafka options.
    pub fn new(
        config: KafkaConfig,
        on_delivery: impl Fn(T, Result<(), KafkaError>) + Send + Sync + 'static,
    ) -> Result<Self, SinkError> {
        let context = Context {
            on_delivery: Arc::new(on_delivery),
        };
        let producer = config
            .producer_config()?
            .create_with_context(context)
            .map_err(|e| SinkError::Config {
                setting: "kafka",
                value: config.brokers.clone(),
                reason: e.to_string(),
            })?;
        let max = config
            .options
            .get("message.max.bytes")
            .or_else(|| config.options.get("producer.message.max.bytes"))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Ok(KafkaSink {
            producer,
            dlq_payload_limit: max
                .saturating_sub(RECORD_OVERHEAD_BYTES)
                .max(DLQ_PREFIX_BYTES),
            config,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Makes waiting `produce` calls give up (shutdown after a second signal).
    pub fn abort_waits(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], Box<T>>) -> Result<(), SinkError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if self.stopping.load(Ordering::SeqCst) {
                        return Err(SinkError::Kafka {
                            action: "producing while stopping".into(),
                            source: KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        });
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => {
                    return Err(match refused_for_good(&error) {
                        Some(refused) => refused,
                        None => SinkError::Kafka {
                            action: "producing".into(),
                            source: error,
                        },
                    })
                }
            }
        }
    }

    /// The largest payload a DLQ record carries whole: the producer's `message.max.bytes`
    /// less room for the key and headers. Larger payloads keep their first
    /// [`DLQ_PREFIX_BYTES`] and say their size in the `payload_bytes` header.
    pub fn dlq_payload_limit(&self) -> usize {
        self.dlq_payload_limit
    }

    /// Produces a valid event to its family's topic; waits while librdkafka's queue is full.
    ///
    /// # Errors
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
        let topic = match event.family() {
            jobstream_parser::Family::Job => &self.config.job_topic,
            jobstream_parser::Family::Execution => &self.config.execution_topic,
        };
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
        let record = BaseRecord::with_opaque_to(topic, Box::new(token))
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
        let (payload, original_bytes) = if payload.len() > self.dlq_payload_limit {
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
        let record = BaseRecord::with_opaque_to(&self.config.dlq_topic, Box::new(token))
            .key(mqtt_topic.as_bytes())
            .payload(payload)
            .headers(headers);
        self.send(record)
    }

    /// Waits until every queued record has a delivery outcome, at most `timeout`.
    ///
    /// # Errors
    /// Records were still undelivered at the deadline.
    pub fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer
            .flush(timeout)
            .map_err(SinkError::kafka("flushing the producer"))
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
