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

use crate::SinkError;

/// Where and how to produce. Its `Debug` output hides secret option values
/// ([`is_secret_option`]), so a configuration can be logged.
#[derive(Clone)]
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
    /// …and this replication factor.
    pub replication: i32,
    /// Whether to create missing topics at start (Admin API).
    pub create_topics: bool,
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
            .field("max_queued", &self.max_queued)
            .field("options", &options)
            .finish()
    }
}

impl KafkaConfig {
    /// Defaults: the DESIGN.md topic names, lz4, 3 partitions, replication 1, 100k queued.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            job_topic: "aws-iot-job-events".to_owned(),
            execution_topic: "aws-iot-job-execution-events".to_owned(),
            dlq_topic: "aws-iot-jobs-dlq".to_owned(),
            compression: "lz4".to_owned(),
            partitions: 3,
            replication: 1,
            create_topics: true,
            max_queued: 100_000,
            options: BTreeMap::new(),
        }
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
        Ok(KafkaSink {
            producer,
            config,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Creates the three topics if they are missing (no-op when `create_topics` is off).
    ///
    /// # Errors
    /// The broker cannot be reached within `timeout`, or refuses to create a topic.
    pub async fn ensure_topics(&self, timeout: Duration) -> Result<(), SinkError> {
        ensure_topics(&self.config, timeout).await
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
                        return Err(SinkError::Kafka(
                            "producer queue full while stopping".into(),
                        ));
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => return Err(SinkError::Kafka(error.to_string())),
            }
        }
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

    /// Produces a rejected message to the DLQ topic, payload byte for byte.
    ///
    /// # Errors
    /// librdkafka refused the record for a reason other than a full queue.
    pub fn produce_reject(
        &self,
        mqtt_topic: &str,
        payload: &[u8],
        error_kind: &str,
        error: &str,
        token: T,
    ) -> Result<(), SinkError> {
        let headers = OwnedHeaders::new_with_capacity(3)
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
            .map_err(|e| SinkError::Kafka(format!("flushing the producer: {e}")))
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
            .map_err(|e| {
                SinkError::Kafka(format!(
                    "no broker at {} answered within {timeout:?}: {e}",
                    self.config.brokers
                ))
            })
    }
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
            .map_err(|e| {
                SinkError::Kafka(format!(
                    "no broker at {} answered within {timeout:?}: {e}",
                    self.brokers
                ))
            })
    }
}

/// Creates the configured topics when missing.
///
/// # Errors
/// The broker cannot be reached within `timeout`, or refuses to create a topic.
pub async fn ensure_topics(config: &KafkaConfig, timeout: Duration) -> Result<(), SinkError> {
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
    let admin: AdminClient<DefaultClientContext> =
        admin_config.create().map_err(|e| SinkError::Config {
            setting: "kafka",
            value: config.brokers.clone(),
            reason: e.to_string(),
        })?;
    let topics: Vec<NewTopic<'_>> = [
        &config.job_topic,
        &config.execution_topic,
        &config.dlq_topic,
    ]
    .into_iter()
    .map(|name| {
        NewTopic::new(
            name,
            config.partitions,
            TopicReplication::Fixed(config.replication),
        )
    })
    .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin.create_topics(&topics, &options).await.map_err(|e| {
        SinkError::Kafka(format!(
            "cannot reach Kafka at {} to create topics: {e}",
            config.brokers
        ))
    })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(SinkError::Kafka(format!("creating topic {topic}: {code}")));
            }
        }
    }
    Ok(())
}
