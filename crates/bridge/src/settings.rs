//! What a bridge is told: where from, where to, how many of each part.

use std::time::Duration;

use jobstream_parser::ParserConfig;
use jobstream_sink::kafka::KafkaConfig;
use jobstream_sink::parquet::ParquetConfig;
use jobstream_sink::CrashPoint;

use crate::config::MqttConfig;

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
