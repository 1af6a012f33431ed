//! jobstream's sinks.
//!
//! * [`parquet`]: Arrow batches → Parquet files, one open file per table and event date, each
//!   written under a temporary name, fsynced and published by atomic rename, named after the
//!   input positions it holds so that a rerun rewrites the same names instead of adding copies.
//! * [`dlq`]: the dead-letter file of rejected inputs (JSON lines).
//! * [`kafka`]: events and rejects to Kafka topics, with a delivery outcome per record.
//! * [`replay`]: a capture file through the parser into these sinks.
//! * [`consumer`]: Kafka → Parquet with exactly-once files (the sink stage of `run`).
//! * [`seen`]: the event ids a source already published (duplicate suppression across runs).
//!
//! Execution model: everything here is synchronous and single-owner; the async pipeline calls
//! it from dedicated blocking tasks. Errors are [`SinkError`]s that name the path or setting.

pub mod config_fields;
pub mod consumer;
pub mod dlq;
mod error;
mod fault;
pub mod kafka;
pub mod parquet;
pub mod recent;
pub mod replay;
pub mod seen;
pub mod time;

pub use error::{Refusal, SinkError};
pub use fault::CrashPoint;
