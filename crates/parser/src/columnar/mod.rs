//! Events → Arrow record batches for the two tables, with exactly the column names and types
//! of the Parquet contract (DESIGN.md, "Contracts users rely on").
//!
//! - [`schema`](mod@schema): the two tables' schemas, the contract in code;
//! - [`column`]: the column builders both tables use (a batch's text written in one pass where
//!   rows hold few distinct values, nulls appended a run at a time);
//! - [`table`]: one [`TableBuilder`] for both tables — the columns every event has built once by
//!   [`CommonColumns`], each family's own by its [`FamilyColumns`] — and [`TableBuilders`],
//!   which routes an event to its table.

pub mod column;
pub mod schema;
pub mod table;

use arrow_schema::ArrowError;

pub use column::{
    status_details_builder, thing_names, time_builder, AnomalyLists, AsStr, EnumStr, NullRuns,
    RepeatedStr,
};
pub use schema::{job_events_schema, job_execution_events_schema, schema};
pub use table::{
    CommonArrays, CommonColumns, ExecutionColumns, FamilyColumns, JobColumns, JobEventsBuilder,
    JobExecutionEventsBuilder, TableBuilder, TableBuilders,
};

/// Where and when a message was received; both columns are null when the source did not record
/// them (a capture file has no receive time).
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance<'a> {
    /// The MQTT topic the event arrived on.
    pub mqtt_topic: Option<&'a str>,
    /// When jobstream received it, ms since the epoch.
    pub received_at_ms: Option<i64>,
}

/// A batch could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Arrow refused the columns (a bug: builders and schema disagree).
    #[error("building an Arrow batch failed: {0}")]
    Arrow(#[from] ArrowError),
}
