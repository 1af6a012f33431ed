//! The MQTT → Kafka bridge.
//!
//! ```text
//!  MQTT broker ──▶ connection task (one per connection; only polls rumqttc's event loop)
//!                     │ tokio mpsc (bounded: batch_size × 4)
//!                     ▼
//!                  batcher ──(crossbeam bounded queue of batches)──▶ parser workers (threads)
//!                                                                     │ parse, validate, dedup
//!                                                                     ▼
//!                                                    Kafka producer (librdkafka, acks=all)
//!                                                                     │ delivery reports
//!  MQTT broker ◀── PUBACK (contiguous runs, arrival order) ◀── acker ◀┘ (per connection)
//! ```
//!
//! * A QoS 1 message is acknowledged only after Kafka confirmed it (or its reject reached the
//!   DLQ topic, or it was a duplicate of an event already taken). Acknowledgements leave in
//!   the order the messages arrived on their connection ([`acks::AckOrder`]).
//! * Sessions are persistent (stable client id, clean session off), so whatever was not
//!   acknowledged when the process died is redelivered to the next run.
//! * Every queue is bounded; when Kafka slows down the producer queue fills, the workers wait,
//!   the batch queue fills, and the connection tasks stop reading: TCP pushes back on the broker.
//! * Without Kafka ([`Output::Parquet`]), one writer thread takes the workers'
//!   place and writes Parquet itself; a message is acknowledged once its file is published
//!   (see `direct.rs`).
//! * Shutdown: only the connection tasks and batchers watch the signal; each later stage ends
//!   when its input closes, and the ackers disconnect once their last confirmation is acked.

pub mod acks;
pub mod config;
pub mod dedup;
mod direct;
mod mqtt;
mod pipeline;

pub use config::{MqttConfig, MqttVersion, TlsFiles};
pub use direct::DEFAULT_DIRECT_FILE_AGE;
pub use pipeline::{run, BridgeConfig, BridgeStats, Output};

/// What can stop the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A setting is invalid; the message names it.
    #[error("configuration: {0}")]
    Config(String),
    /// The MQTT broker could not be reached or refused us.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// Kafka could not be reached, or a record could not be flushed.
    #[error(transparent)]
    Kafka(#[from] jobstream_sink::SinkError),
    /// Direct MQTT → Parquet: a file or the DLQ file could not be written.
    #[error("parquet: {0}")]
    Parquet(jobstream_sink::SinkError),
    /// The graceful drain did not finish in time; unconfirmed messages stay unacknowledged.
    #[error("drain did not finish within {after:?}: {stuck}; unconfirmed messages stay unacknowledged and will be redelivered")]
    DrainTimeout {
        /// The deadline.
        after: std::time::Duration,
        /// What it was still waiting for.
        stuck: String,
    },
}
