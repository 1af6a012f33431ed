//! The Kafka side of the contract (DESIGN.md): one topic per event family and a DLQ topic;
//! value = the MQTT payload byte for byte; key = `jobId`; message timestamp = the event time;
//! headers `mqtt_topic`, `event_type`, `operation`, `event_id`, `received_at` (DLQ records:
//! `mqtt_topic`, `error_kind`, `error`).
//!
//! Execution model: [`KafkaSink::produce_event`] and [`KafkaSink::produce_reject`] are called from
//! blocking worker threads. They hand the record to librdkafka and return; when librdkafka's
//! queue is full (Kafka slow or down) they wait for room — that wait is the pipeline's
//! backpressure, instead of unbounded buffering. The outcome of every record is reported once,
//! on librdkafka's polling thread (or the resend thread, for a record produced again), through
//! the `on_delivery` callback with the caller's token, as an [`Outcome`].
//!
//! Durability: `acks=all` and `enable.idempotence=true` are always set; a user option that
//! tries to weaken them is refused.
//!
//! - `config`: [`KafkaConfig`] and the librdkafka settings it becomes;
//! - `producer`: [`KafkaSink`], and [`refused_for_good`] for records no retry will get in;
//! - `probe`: [`check_connection`] at start-up and [`KafkaProbe`] for readiness, which tell a
//!   refusal (TLS, authentication, ACLs) from a broker that is down;
//! - `resend`: the thread that produces a refused event to the DLQ and its batch-mates again;
//! - `timestamps`: [`TimestampRanges`], the record timestamps a topic takes;
//! - `topics`: [`ensure_topics`], and [`prepare_topics`], which also reads those ranges.

mod config;
mod probe;
mod producer;
mod resend;
mod timestamps;
mod topics;

pub use config::{is_secret_option, parse_option, KafkaConfig};
pub(crate) use probe::classify_refusal;
pub use probe::{check_connection, ClientRole, KafkaProbe};
pub use producer::{refused_for_good, KafkaSink, Outcome, DLQ_PREFIX_BYTES};
pub use timestamps::{OutOfRange, TimestampRange, TimestampRanges};
pub use topics::{ensure_topics, prepare_topics};
