//! What a bridge is told: where from, where to, how many of each part.

use std::time::Duration;

use jobstream_parser::ParserConfig;
use jobstream_sink::kafka::KafkaConfig;
use jobstream_sink::parquet::ParquetConfig;
use jobstream_sink::{config_fields, CrashPoint};
use serde::Deserialize;

use crate::config::MqttConfig;
use crate::BridgeError;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The MQTT side.
    pub mqtt: MqttConfig,
    /// Where events go: Kafka, or Parquet files directly.
    pub output: Output,
    /// Parsing and the hand-off between the network and the parsers.
    pub pipeline: PipelineConfig,
    /// Fault injection for the crash tests (only with the `fault-injection` feature): with
    /// Parquet output, where the process aborts between publishing files and acknowledging
    /// their messages.
    #[doc(hidden)]
    pub crash: CrashPoint,
}

/// Parsing and hand-off: the `[pipeline]` section of a configuration file, which deserializes
/// into it (`drain_timeout_secs`, unknown keys refused); a key left out keeps the default of
/// [`PipelineConfig::default`]. The topic prefix and payload cap apply to the Kafka → Parquet
/// stage as well, which parses the same payloads again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Prefix before `job/` and `jobExecution/` in the MQTT topic.
    pub topic_prefix: String,
    /// Larger payloads go to the DLQ as `payload_too_large`.
    pub max_payload_bytes: usize,
    /// Parser worker threads (MQTT → Kafka; MQTT → Parquet has one writer thread).
    pub workers: usize,
    /// Messages per hand-off batch from the network tasks to the workers.
    pub batch_size: usize,
    /// Batches queued between network tasks and workers. With `batch_size` this bounds the
    /// messages parked between MQTT and the parser.
    pub queue_batches: usize,
    /// Event ids remembered for duplicate detection (0 disables it); about 50 bytes each.
    pub dedup_window: usize,
    /// How long a graceful shutdown may take before giving up.
    #[serde(
        rename = "drain_timeout_secs",
        deserialize_with = "config_fields::seconds"
    )]
    pub drain_timeout: Duration,
}

impl Default for PipelineConfig {
    /// One worker per core, batches of 512, 64 batches queued, a million ids remembered, 30 s
    /// to drain; AWS's topic prefix and payload cap.
    fn default() -> Self {
        let parser = ParserConfig::default();
        PipelineConfig {
            topic_prefix: parser.topic_prefix,
            max_payload_bytes: parser.max_payload_bytes,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 512,
            queue_batches: 64,
            dedup_window: 1_000_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl PipelineConfig {
    /// The parser's share of it.
    pub fn parser(&self) -> ParserConfig {
        ParserConfig {
            topic_prefix: self.topic_prefix.clone(),
            max_payload_bytes: self.max_payload_bytes,
        }
    }

    /// Checks every number is in range.
    ///
    /// # Errors
    /// [`BridgeError::InvalidSetting`] naming the first one that is not.
    pub fn validate(&self) -> Result<(), BridgeError> {
        for (setting, value) in [
            ("pipeline.max_payload_bytes", self.max_payload_bytes as u64),
            ("pipeline.workers", self.workers as u64),
            ("pipeline.batch_size", self.batch_size as u64),
            ("pipeline.queue_batches", self.queue_batches as u64),
            (
                "pipeline.drain_timeout_secs",
                u64::from(!self.drain_timeout.is_zero()),
            ),
        ] {
            if value == 0 {
                return Err(BridgeError::InvalidSetting {
                    setting,
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
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
    /// The default pipeline around the two endpoints.
    pub fn new(mqtt: MqttConfig, output: Output) -> Self {
        BridgeConfig {
            mqtt,
            output,
            pipeline: PipelineConfig::default(),
            crash: CrashPoint::never(),
        }
    }

    /// Checks the whole configuration before anything connects: MQTT, the pipeline, and the
    /// output (Kafka's settings and options, or the Parquet files').
    ///
    /// # Errors
    /// The first setting that is wrong, named as users write it.
    pub fn validate(&self) -> Result<(), BridgeError> {
        self.mqtt.validate()?;
        self.pipeline.validate()?;
        match &self.output {
            Output::Kafka(kafka) => kafka.validate()?,
            Output::Parquet(parquet) => parquet.validate()?,
        }
        Ok(())
    }
}
