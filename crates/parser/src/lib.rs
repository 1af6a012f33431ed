//! AWS IoT Jobs events: MQTT topic + payload → typed, validated events → Arrow batches.
//!
//! This crate is the pure core of jobstream: no I/O, no threads, no async. The bridge calls it
//! from its parser workers, `replay` from its reader loop, and the Kafka → Parquet stage on what
//! it consumes, so every path validates and types events identically.
//!
//! ```text
//!  topic ──▶ TopicParser ──┐
//!                          ├──▶ Parser::parse ──▶ Ok(Event)  ──▶ TableBuilders ──▶ RecordBatch
//!  payload ─▶ simd-json ───┘     (validation)  └─▶ Err(Reject{kind, message})  (to the DLQ)
//!             tape (reused)
//! ```
//!
//! * [`Parser`] owns all scratch memory (padded input copy, simd-json buffers, the tape) and
//!   reuses it, so the steady state allocates nothing per message beyond the output columns.
//!   The caller's payload is never modified: it is what goes to Kafka byte for byte.
//! * Two paths, one result: well-formed events of the known schema take a fast path (`fast.rs`:
//!   one pass over the payload, schema-directed field dispatch, strings borrowed from the
//!   payload itself); anything else — unknown fields for `extra`, every reject, anything
//!   unusual — goes through simd-json, which decides every reject. A differential test
//!   (`tests/differential.rs`) checks both give the same outcome on generated, mutated and
//!   garbage inputs.
//! * [`Event`] borrows strings from the scratch input and lists/maps from the tape; it lives
//!   inside the callback given to [`Parser::parse`].
//! * [`Reject`] carries a stable [`RejectKind`] label (the DLQ's `error_kind`) and a message.
//!   Only what cannot make a correct row is rejected (see [`RejectKind`] for the rule); an
//!   accepted event carries its [`Anomalies`] (a status that does not fit the operation, a
//!   number where AWS documents a string, ...), written to the `anomalies` column.
//! * [`columnar`] holds the two table schemas of the Parquet contract and their builders;
//!   [`columns`] names their columns for everyone who reads the tables back.
//!
//! Times: AWS sends `timestamp` in epoch seconds and `createdAt`/`lastUpdatedAt`/`completedAt`
//! in epoch milliseconds. Every time is normalised to milliseconds (see [`SECONDS_BELOW`]).

pub mod anomaly;
mod bytes;
pub mod columnar;
pub mod columns;
mod fast;
mod json;
pub mod model;
mod parse;
pub mod reject;
mod span;
mod time;
pub mod topic;

pub use anomaly::{Anomalies, Anomaly};
pub use columnar::{Provenance, TableBuilders};
pub use model::{Event, Family, Status, Text};
pub use parse::{Parser, ParserConfig, DEFAULT_MAX_PAYLOAD_BYTES};
pub use reject::{Reject, RejectKind};
pub use time::SECONDS_BELOW;
pub use topic::{TopicParser, DEFAULT_PREFIX};
