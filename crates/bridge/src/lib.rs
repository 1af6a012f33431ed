//! The MQTT → Kafka bridge.
//!
//! ```text
//!  MQTT broker ──▶ connection task (one per connection; polls rumqttc's event loop and never
//!                     │               waits with it: parks messages while the batcher is behind)
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
//! * A QoS 1 message is acknowledged only once an event with its `eventId` is confirmed in
//!   Kafka, by this copy or an earlier one, or its reject is confirmed in the DLQ topic
//!   ([`dedup`] holds ids in flight and the copies waiting on them). A failed delivery leaves
//!   the message unacknowledged and reopens the session, so the broker redelivers it; a record
//!   Kafka refuses for good goes to the DLQ on redelivery. Acknowledgements leave in the order
//!   the messages arrived on their connection ([`acks::AckOrder`]).
//! * The connection task keeps polling while Kafka is slow, so PUBACKs and keep-alives never
//!   wait behind the backlog; the broker's in-flight window bounds what it parks. Payloads
//!   above `max_packet_bytes` are cut on arrival and go to the DLQ (`payload_too_large`).
//! * Sessions are persistent (stable client id, clean session off), so whatever was not
//!   acknowledged when the process died is redelivered to the next run.
//! * Every queue is bounded; when Kafka slows down the producer queue fills, the workers wait,
//!   the batch queue fills, and the broker stops sending once its in-flight window of
//!   unacknowledged messages is full.
//! * Without Kafka ([`Output::Parquet`]), one writer thread takes the workers'
//!   place and writes Parquet itself; a message is acknowledged once its file is published
//!   (see `direct.rs`).
//! * Shutdown: only the connection tasks and batchers watch the signal; each later stage ends
//!   when its input closes, and the ackers disconnect once their last confirmation is acked.
//!
//! A file per part: `connection.rs` (the connection task), `handoff.rs` (what passes between
//! parts, and the batcher), `worker.rs` (parse, claim, produce), `direct.rs` (the Parquet writer
//! in the workers' place), `acker.rs` (PUBACKs), `rejects.rs`, `stats.rs`, `settings.rs`, and
//! `pipeline.rs`, which wires them and runs the drain. Messages flow down that list and
//! acknowledgements flow back by channels, never by imports back.

mod acker;
pub mod acks;
pub mod config;
mod connection;
pub mod dedup;
mod direct;
mod handoff;
mod mqtt;
mod pipeline;
mod rejects;
mod sessions;
mod settings;
mod stats;
mod worker;

pub use config::{MqttConfig, MqttUrlError, MqttVersion, TlsError, UrlProblem};
pub use direct::DEFAULT_DIRECT_FILE_AGE;
pub use mqtt::MqttError;
pub use pipeline::run;
pub use settings::{BridgeConfig, Output, PipelineConfig};
pub use stats::BridgeStats;

/// What can stop the bridge. Each variant is one cause, so the binary picks an exit code by
/// variant, never by message. A message is whole on its own (logs print it with `%`), and the
/// cause is also its [`source`](std::error::Error::source) for code that walks the chain.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The MQTT URL does not parse.
    #[error(transparent)]
    MqttUrl(#[from] config::MqttUrlError),
    /// The TLS material the URL needs is missing or unusable; the message names the file.
    #[error(transparent)]
    Tls(#[from] config::TlsError),
    /// SigV4 for MQTT over WebSockets lacks credentials or a region.
    #[error(transparent)]
    SigV4(#[from] config::SigV4Error),
    /// An MQTT protocol version other than 3.1.1 or 5.
    #[error("MQTT version must be 3.1.1 or 5, got {given:?}")]
    UnknownMqttVersion {
        /// What was given.
        given: String,
    },
    /// A setting is out of range.
    #[error("invalid setting {setting} = {value}: {reason}")]
    InvalidSetting {
        /// The setting's name as users write it in a configuration file.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// No connection to the MQTT broker came up within the connect timeout (each failed attempt
    /// is logged with its cause as it happens; the last one is here).
    #[error("mqtt: no connection to {url} within {within:?}: {last_failure}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    MqttUnreachable {
        /// The broker, credentials redacted.
        url: String,
        /// The connect timeout.
        within: std::time::Duration,
        /// The last attempt's failure, or that the broker did not answer.
        last_failure: String,
        /// What is likely missing, where the failure and the settings point at one thing.
        hint: Option<&'static str>,
    },
    /// Kafka could not be reached, or a record could not be flushed.
    #[error(transparent)]
    Kafka(#[from] jobstream_sink::SinkError),
    /// Direct MQTT → Parquet: a file or the DLQ file could not be written.
    #[error("parquet: {0}")]
    Parquet(#[source] jobstream_sink::SinkError),
    /// The operating system would not start one of the pipeline's threads.
    #[error("cannot start the {thread} thread: {source}")]
    Spawn {
        /// Which thread.
        thread: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A pipeline thread panicked: a bug in jobstream, not in the input or the settings.
    /// Unconfirmed messages stay unacknowledged and are redelivered.
    #[error("the {thread} thread panicked (a bug: please report it); unconfirmed messages stay unacknowledged and will be redelivered")]
    Panicked {
        /// The thread's name.
        thread: String,
    },
    /// The graceful drain did not finish in time; unconfirmed messages stay unacknowledged.
    #[error("drain did not finish within {after:?}: {stuck}; unconfirmed messages stay unacknowledged and will be redelivered")]
    DrainTimeout {
        /// The deadline.
        after: std::time::Duration,
        /// What it was still waiting for.
        stuck: String,
    },
}
