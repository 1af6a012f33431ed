//! The Kafka side of the contract (DESIGN.md): one topic per event family and a DLQ topic;
//! value = the MQTT payload byte for byte; key = `jobId`; message timestamp = the event time;
//! headers `mqtt_topic`, `event_type`, `operation`, `event_id`, `received_at` (DLQ records:
//! `mqtt_topic`, `error_kind`, `error`).
//!
//! Execution model: [`KafkaSink::produce_event`] and [`KafkaSink::produce_reject`] are called from
//! blocking worker threads. They hand the record to librdkafka and return; when librdkafka's
//! queue is full (Kafka slow or down) they wait for room — that wait is the pipeline's
//! backpressure, instead of unbounded buffering. The outcome of every record is reported once,
//! on librdkafka's polling thread, through the `on_delivery` callback with the caller's token.
//!
//! Durability: `acks=all` and `enable.idempotence=true` are always set; a user option that
//! tries to weaken them is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobstream_parser::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Deserialize;

use crate::{config_fields, Refusal, SinkError};

/// Where and how to produce. Its `Debug` output hides secret option values
/// ([`is_secret_option`]), so a configuration can be logged. It is the `[kafka]` section of a
/// configuration file, which deserializes into it (`connect_timeout_secs`, unknown keys
/// refused); a key left out keeps the default of [`KafkaConfig::new`].
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic for JOB events.
    pub job_topic: String,
    /// Topic for JOB_EXECUTION events.
    pub execution_topic: String,
    /// Topic for rejects.
    pub dlq_topic: String,
    /// `compression.type`: lz4 (default), zstd, snappy, gzip or none.
    pub compression: String,
    /// Create missing topics at start with this many partitions…
    pub partitions: i32,
    /// …and this replication factor; `None` takes the broker's `default.replication.factor`
    /// (a fixed 1 would leave a production cluster's topics on one broker).
    pub replication: Option<i32>,
    /// Whether to create missing topics at start (Admin API).
    pub create_topics: bool,
    /// Topic-level settings of the topics it creates (`min.insync.replicas`, `retention.ms`,
    /// …); existing topics are not changed.
    pub topic_config: BTreeMap<String, String>,
    /// How long the first connection may take before the command gives up (also the Admin
    /// API's timeout when creating topics).
    #[serde(
        rename = "connect_timeout_secs",
        deserialize_with = "config_fields::seconds"
    )]
    pub connect_timeout: Duration,
    /// Records librdkafka may hold before `produce` waits (`queue.buffering.max.messages`):
    /// the bound on memory while Kafka is slow or down.
    pub max_queued: usize,
    /// Any other librdkafka option, passed through (SASL/SSL for MSK or Confluent Cloud, …).
    pub options: BTreeMap<String, String>,
}

/// librdkafka options whose values are secrets (passwords, keys, SASL credentials, tokens):
/// never printed or logged. Also matches `producer.`/`consumer.` prefixed keys.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "credential"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with("sasl.username")
        || key.ends_with("sasl.oauthbearer.config")
        || key.ends_with("key.pem")
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_option(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("job_topic", &self.job_topic)
            .field("execution_topic", &self.execution_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("compression", &self.compression)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("create_topics", &self.create_topics)
            .field("topic_config", &self.topic_config)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_queued", &self.max_queued)
            .field("options", &options)
            .finish()
    }
}

impl Default for KafkaConfig {
    /// The defaults of [`KafkaConfig::new`] with no brokers yet (a configuration file may
    /// leave them to a flag).
    fn default() -> Self {
        KafkaConfig::new("")
    }
}

impl KafkaConfig {
    /// Defaults: the DESIGN.md topic names, lz4, 3 partitions, the broker's replication factor,
    /// a 30 s connect timeout, 100k queued.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            job_topic: "aws-iot-job-events".to_owned(),
            execution_topic: "aws-iot-job-execution-events".to_owned(),
            dlq_topic: "aws-iot-jobs-dlq".to_owned(),
            compression: "lz4".to_owned(),
            partitions: 3,
            replication: None,
            create_topics: true,
            topic_config: BTreeMap::new(),
            connect_timeout: Duration::from_secs(30),
            max_queued: 100_000,
            options: BTreeMap::new(),
        }
    }

    /// Checks every setting before anything connects: brokers named, topic names and numbers
    /// in range, and no pass-through option that would weaken durability or let librdkafka
    /// commit on its own.
    ///
    /// # Errors
    /// The first setting that is wrong, named as users write it.
    pub fn validate(&self) -> Result<(), SinkError> {
        let invalid = |setting: &'static str, value: String, reason: &str| SinkError::Config {
            setting,
            value,
            reason: reason.into(),
        };
        if self.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                format!("{:?}", self.brokers),
                "must name at least one host:port",
            ));
        }
        for (setting, topic) in [
            ("kafka.job_topic", &self.job_topic),
            ("kafka.execution_topic", &self.execution_topic),
            ("kafka.dlq_topic", &self.dlq_topic),
        ] {
            if topic.is_empty() {
                return Err(invalid(setting, "\"\"".into(), "must name a topic"));
            }
        }
        if self.partitions < 1 {
            return Err(invalid(
                "kafka.partitions",
                self.partitions.to_string(),
                "must be at least 1",
            ));
        }
        if let Some(replication) = self.replication.filter(|r| *r < 1) {
            return Err(invalid(
                "kafka.replication",
                replication.to_string(),
                "must be at least 1 (leave it out for the broker's default.replication.factor)",
            ));
        }
        config_fields::at_least_one(
            "kafka.connect_timeout_secs",
            u64::from(!self.connect_timeout.is_zero()),
        )?;
        config_fields::at_least_one("kafka.max_queued", self.max_queued as u64)?;
        self.producer_config()?;
        Ok(())
    }

    /// librdkafka settings for the producer (also usable for an admin client).
    ///
    /// # Errors
    /// A pass-through option that would weaken durability.
    pub fn producer_config(&self) -> Result<ClientConfig, SinkError> {
        for (key, value) in self.options_for(Role::Producer) {
            let weakens = match key {
                "acks" | "request.required.acks" => !matches!(value, "all" | "-1"),
                "enable.idempotence" => value != "true",
                _ => false,
            };
            if weakens {
                return Err(SinkError::Config {
                    setting: "kafka.options",
                    value: format!("{key}={value}"),
                    reason: "jobstream acknowledges MQTT only after acks=all with idempotence; this cannot be lowered".into(),
                });
            }
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", &self.compression)
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", self.max_queued.to_string())
            // A metadata request for a missing topic must not make the broker create it with
            // its own defaults (one partition): topics come from `ensure_topics`.
            .set("allow.auto.create.topics", "false")
            // Five minutes of retries before a record is reported failed: enough to ride out a
            // broker restart. A failed record is never acknowledged to MQTT.
            .set("message.timeout.ms", "300000");
        for (key, value) in self.options_for(Role::Producer) {
            config.set(key, value);
        }
        Ok(config)
    }

    /// librdkafka settings for the Parquet stage's consumer in group `group_id`: offsets are
    /// committed by the stage itself, only after files are published.
    ///
    /// # Errors
    /// A pass-through option that would let librdkafka commit on its own.
    pub fn consumer_config(&self, group_id: &str) -> Result<ClientConfig, SinkError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Partition high watermarks (for the lag) arrive with the statistics.
            .set("statistics.interval.ms", "1000");
        for (key, value) in self.options_for(Role::Consumer) {
            let refused = match key {
                "enable.auto.commit" => value != "false",
                // Incremental (cooperative) rebalancing hands partitions over one by one; the
                // stage releases and assigns whole assignments (eager protocol).
                "partition.assignment.strategy" => value.contains("cooperative"),
                "group.id" => true,
                _ => false,
            };
            if refused {
                return Err(SinkError::Config {
                    setting: "kafka.options",
                    value: format!("{key}={value}"),
                    reason: "the Parquet stage commits offsets itself, after each file is published, with eager rebalancing; set the group with --group-id".into(),
                });
            }
            config.set(key, value);
        }
        Ok(config)
    }

    /// The pass-through options that apply to one client: `producer.`/`consumer.` prefixed
    /// keys to that client only (prefix removed), unprefixed keys to both, except the ones
    /// that only make sense for a producer.
    fn options_for(&self, role: Role) -> impl Iterator<Item = (&str, &str)> {
        self.options.iter().filter_map(move |(key, value)| {
            let (own, other) = match role {
                Role::Producer => ("producer.", "consumer."),
                Role::Consumer => ("consumer.", "producer."),
            };
            if let Some(key) = key.strip_prefix(own) {
                return Some((key, value.as_str()));
            }
            if key.starts_with(other) {
                return None;
            }
            if role == Role::Consumer && PRODUCER_ONLY.contains(&key.as_str()) {
                return None;
            }
            Some((key.as_str(), value.as_str()))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
}

/// librdkafka properties a consumer would warn about; kept from the consumer's config.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.num.messages",
    "batch.size",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "retries",
    "message.send.max.retries",
    "transactional.id",
    "partitioner",
];

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

/// A client that only asks for metadata: a readiness probe for stages that hold no producer
/// of their own (the Parquet stage). One connection set for the life of the process.
pub struct KafkaProbe {
    client: rdkafka::producer::BaseProducer,
    brokers: String,
    topic: String,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaProbe {
    /// A probe with `config`'s brokers and security options.
    ///
    /// # Errors
    /// Invalid librdkafka options.
    pub fn new(config: &KafkaConfig) -> Result<Self, SinkError> {
        let client = config
            .producer_config()?
            .create()
            .map_err(|e| SinkError::Config {
                setting: "kafka",
                value: config.brokers.clone(),
                reason: e.to_string(),
            })?;
        Ok(KafkaProbe {
            client,
            brokers: config.brokers.clone(),
            topic: config.job_topic.clone(),
        })
    }

    /// Whether a broker answers a metadata request within `timeout`. Blocks up to `timeout`.
    ///
    /// # Errors
    /// No broker answered in time.
    pub fn reachable(&self, timeout: Duration) -> Result<(), SinkError> {
        self.client
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map(|_| ())
            .map_err(SinkError::kafka(format!(
                "no broker at {} answered within {timeout:?}",
                self.brokers
            )))
    }
}

/// Which client a connection check speaks for: the two may carry different options
/// (`producer.`/`consumer.` prefixed keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole<'a> {
    /// The bridge's producer (also the DLQ producer of the Parquet stage and replay).
    Producer,
    /// The Parquet stage's consumer, as a member of this group: librdkafka looks up the
    /// group's coordinator at once, so the check also learns whether ACLs allow the group.
    Consumer {
        /// The consumer group the stage joins.
        group_id: &'a str,
    },
}

/// Records the first error librdkafka reports that retrying cannot cure. librdkafka retries
/// every connection failure forever, so without this a wrong password or an untrusted CA
/// would look like a broker that is merely down.
#[derive(Default)]
struct RefusalRecorder {
    first: std::sync::Mutex<Option<(Refusal, String)>>,
}

impl RefusalRecorder {
    fn take(&self) -> Option<(Refusal, String)> {
        self.first.lock().map_or(None, |mut first| first.take())
    }
}

impl ClientContext for RefusalRecorder {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka connection check");
        if let Some(refusal) = classify_refusal(error.rdkafka_error_code(), reason) {
            if let Ok(mut first) = self.first.lock() {
                first.get_or_insert_with(|| (refusal, reason.to_owned()));
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RefusalRecorder {}

impl ProducerContext for RefusalRecorder {
    type DeliveryOpaque = ();

    // The check produces nothing.
    fn delivery(&self, _: &DeliveryResult<'_>, (): ()) {}
}

/// What an error librdkafka reports means for a connection, if it is one that retrying with
/// the same settings cannot cure. librdkafka gives the TLS failures one code (`_SSL`) and
/// says which in its text (OpenSSL's reason).
pub(crate) fn classify_refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<Refusal> {
    let code = code?;
    let reason = reason.to_ascii_lowercase();
    // The broker ended the handshake with an alert about the client's certificate:
    // "bad certificate" (42), "unknown ca" (48), TLS 1.3's "certificate required" (116).
    let tls_alert = [
        "alert bad certificate",
        "alert unknown ca",
        "alert certificate required",
    ]
    .iter()
    .any(|alert| reason.contains(alert));
    match code {
        RDKafkaErrorCode::Authentication => Some(Refusal::Authentication),
        RDKafkaErrorCode::SSL => Some(if reason.contains("certificate verify failed") {
            Refusal::UnknownCa
        } else if tls_alert || reason.contains("handshake failure") {
            Refusal::ClientCertificate
        } else {
            Refusal::Tls
        }),
        // The alert reaches librdkafka as a failed read after its side of the handshake, so
        // it is reported as a transport failure, unlike a connection that merely dropped.
        RDKafkaErrorCode::BrokerTransportFailure if tls_alert => Some(Refusal::ClientCertificate),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed => Some(Refusal::NotAuthorized),
        _ => None,
    }
}

/// Connects as `role` would and asks for the cluster's metadata, within the configured
/// `connect_timeout`. Blocks; call it from a blocking context.
///
/// # Errors
/// [`SinkError::KafkaRefused`] as soon as the broker turns the client away (TLS,
/// authentication), [`SinkError::KafkaUnreachable`] when no broker answered in time, and
/// [`SinkError::Config`] for options librdkafka does not accept.
pub fn check_connection(config: &KafkaConfig, role: ClientRole<'_>) -> Result<(), SinkError> {
    let client_config = match role {
        ClientRole::Producer => config.producer_config()?,
        ClientRole::Consumer { group_id } => config.consumer_config(group_id)?,
    };
    let invalid = |e: KafkaError| SinkError::Config {
        setting: "kafka",
        value: config.brokers.clone(),
        reason: e.to_string(),
    };
    // A consumer checks with a consumer's options; it joins no group (nothing subscribes).
    match role {
        ClientRole::Producer => {
            let client: rdkafka::producer::BaseProducer<RefusalRecorder> = client_config
                .create_with_context(RefusalRecorder::default())
                .map_err(invalid)?;
            await_metadata(client.client(), config, || {
                client.poll(Duration::ZERO);
            })
        }
        ClientRole::Consumer { .. } => {
            use rdkafka::consumer::Consumer as _;
            let client: rdkafka::consumer::BaseConsumer<RefusalRecorder> = client_config
                .create_with_context(RefusalRecorder::default())
                .map_err(invalid)?;
            await_metadata(client.client(), config, || {
                // Nothing is subscribed: a poll only serves the error callbacks.
                let _ = client.poll(Duration::ZERO);
            })
        }
    }
}

/// Short metadata requests until one succeeds, the recorder saw a refusal, or the deadline.
/// librdkafka queues its error events until the client is polled: `serve` polls it, so the
/// recorder hears of a refusal between two requests.
fn await_metadata(
    client: &rdkafka::client::Client<RefusalRecorder>,
    config: &KafkaConfig,
    serve: impl Fn(),
) -> Result<(), SinkError> {
    let deadline = std::time::Instant::now() + config.connect_timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Short requests: the error callback runs only in `serve`, between two of them.
        let attempt = client.fetch_metadata(None, left.min(Duration::from_millis(250)));
        serve();
        if let Some((refusal, detail)) = client.context().take() {
            return Err(SinkError::KafkaRefused {
                brokers: config.brokers.clone(),
                refusal,
                detail,
            });
        }
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if left.is_zero() => {
                return Err(SinkError::KafkaUnreachable {
                    brokers: config.brokers.clone(),
                    timeout: config.connect_timeout,
                    detail: e.to_string(),
                })
            }
            Err(_) => {}
        }
    }
}

/// Creates the configured topics that are missing, with `partitions` and `replication`
/// (the broker's default factor when unset). Topics that exist are left as they are, so a
/// principal without the right to create topics (ACLs) can run once they exist.
///
/// # Errors
/// The broker cannot be reached within `connect_timeout`, turns the client away, or refuses
/// to create a topic ([`SinkError::KafkaRefused`] with [`Refusal::NotAuthorized`] when ACLs
/// forbid it; the message says how to go on).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), SinkError> {
    if !config.create_topics {
        return Ok(());
    }
    let mut admin_config = ClientConfig::new();
    admin_config.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.options {
        if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") {
            admin_config.set(key, value);
        }
    }
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(admin_config.create().map_err(|e| SinkError::Config {
            setting: "kafka",
            value: config.brokers.clone(),
            reason: e.to_string(),
        })?);
    let wanted = [
        &config.job_topic,
        &config.execution_topic,
        &config.dlq_topic,
    ];
    let unreachable = |e: KafkaError| SinkError::KafkaUnreachable {
        brokers: config.brokers.clone(),
        timeout: config.connect_timeout,
        detail: e.to_string(),
    };
    // All topics' metadata, not the three by name: a request naming a missing topic may make
    // a broker with auto.create.topics.enable create it with its own defaults.
    // librdkafka's metadata call blocks: off the async threads.
    let metadata = {
        let (admin, timeout) = (Arc::clone(&admin), config.connect_timeout);
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|source| SinkError::TaskStopped {
                what: "the metadata request",
                source,
            })?
            .map_err(unreachable)?
    };
    let missing: Vec<&String> = wanted
        .into_iter()
        .filter(|name| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == name.as_str() && t.error().is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // -1: the broker's default.replication.factor (KIP-464).
    let factor = config.replication.unwrap_or(-1);
    let topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| {
            config.topic_config.iter().fold(
                NewTopic::new(name, config.partitions, TopicReplication::Fixed(factor)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(config.connect_timeout))
        .request_timeout(Some(config.connect_timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(unreachable)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((
                topic,
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed),
            )) => {
                return Err(SinkError::KafkaRefused {
                    brokers: config.brokers.clone(),
                    refusal: Refusal::NotAuthorized,
                    detail: format!(
                        "creating topic {topic} was refused ({code}): grant this principal CREATE on it, or have an administrator create {} and set kafka.create_topics = false",
                        missing.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            Err((topic, code)) => {
                let factor = config
                    .replication
                    .map_or("the broker's default".to_owned(), |r| r.to_string());
                return Err(SinkError::TopicNotCreated {
                    topic: topic.clone(),
                    partitions: config.partitions,
                    replication: factor,
                    code,
                });
            }
        }
    }
    Ok(())
}

/// A librdkafka option as given on a command line, `KEY=VALUE` (both trimmed; the key not
/// empty): the parser of every `--kafka-option` flag.
///
/// # Errors
/// The text has no `=` or an empty key; the message shows it.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_told_apart_by_openssl_s_reason() {
        // Messages as librdkafka 2.12 words them for each case (seen against Apache Kafka).
        let ssl = Some(RDKafkaErrorCode::SSL);
        assert_eq!(
            classify_refusal(ssl, "127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)"),
            Some(Refusal::UnknownCa)
        );
        assert_eq!(
            classify_refusal(ssl, "127.0.0.1:9093/bootstrap: SSL handshake failed: ssl/record/rec_layer_s3.c:1605: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116 (after 9ms in state SSL_HANDSHAKE)"),
            Some(Refusal::ClientCertificate)
        );
        assert_eq!(
            classify_refusal(ssl, "SSL handshake failed: wrong version number"),
            Some(Refusal::Tls)
        );
    }

    #[test]
    fn authentication_and_acl_errors_are_refusals_and_transport_errors_are_not() {
        assert_eq!(
            classify_refusal(Some(RDKafkaErrorCode::Authentication), "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"),
            Some(Refusal::Authentication)
        );
        assert_eq!(
            classify_refusal(Some(RDKafkaErrorCode::TopicAuthorizationFailed), ""),
            Some(Refusal::NotAuthorized)
        );
        assert_eq!(
            classify_refusal(Some(RDKafkaErrorCode::BrokerTransportFailure), "ssl://127.0.0.1:57719/bootstrap: Receive failed: ../ssl/record/rec_layer_s3.c:1601:ssl3_read_bytes error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)"),
            Some(Refusal::ClientCertificate)
        );
        for retried in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::Resolve,
        ] {
            assert_eq!(classify_refusal(Some(retried), "Connection refused"), None);
        }
        assert_eq!(classify_refusal(None, "anything"), None);
    }

    #[test]
    fn the_producer_never_asks_the_broker_to_create_topics_on_its_own() {
        let config = KafkaConfig::new("127.0.0.1:9092")
            .producer_config()
            .expect("valid");
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
    }
}
