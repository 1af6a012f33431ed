//! Where and how to produce and consume: [`KafkaConfig`], the `[kafka]` section of a
//! configuration file, and the librdkafka settings it becomes (durability settings enforced,
//! secrets hidden from `Debug`).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::Deserialize;

use crate::{config_fields, SinkError};

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
    /// Whether to read the event topics' timestamp limits at start
    /// (`message.timestamp.before.max.ms`/`after.max.ms`, needs DescribeConfigs), so that an
    /// event Kafka would refuse for its timestamp goes to the DLQ before it is batched; off,
    /// such events still reach the DLQ, by the broker's verdict, one batch at a time.
    pub read_timestamp_limits: bool,
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
            read_timestamp_limits: true,
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
            .set("statistics.interval.ms", "1000")
            // Once the records fetched ahead pass `queued.min.messages` (100,000), librdkafka
            // stops fetching a partition for this long (its default: 1 s). Parsing and encoding
            // drain that queue in well under a second, so with the default the stage sat idle
            // for most of it: 8 of 12 runs of a 147k-record backlog took 1.76 s instead of
            // 1.1 s. 50 ms keeps the queue filled for a few more fetch requests a second.
            .set("fetch.queue.backoff.ms", "50");
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
    fn consumers_fetch_ahead_again_after_50_ms_unless_told_otherwise() {
        let config = KafkaConfig::new("localhost:9092");
        let consumer = config.consumer_config("g").expect("a valid config");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("50"));
        let mut told = KafkaConfig::new("localhost:9092");
        told.options
            .insert("fetch.queue.backoff.ms".into(), "1000".into());
        let consumer = told.consumer_config("g").expect("a valid config");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("1000"));
    }

    #[test]
    fn the_producer_never_asks_the_broker_to_create_topics_on_its_own() {
        let config = KafkaConfig::new("127.0.0.1:9092")
            .producer_config()
            .expect("valid");
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
    }
}
