//! The column names of the two tables, the Parquet contract's vocabulary. The schemas in
//! [`columnar`](crate::columnar) are built from these, and readers of the tables (the report,
//! the Parquet stage's dedup) name columns by them, so a rename is one edit that the compiler
//! carries everywhere.
//!
//! Counter columns of `job_events` (`number_of_<outcome>_things`) are named in
//! [`ProcessDetails::COUNTERS`](crate::model::ProcessDetails::COUNTERS), with the payload key
//! each comes from.

/// AWS's `eventId`: what deduplication keys on.
pub const EVENT_ID: &str = "event_id";
/// `job` or `job_execution`, one per table.
pub const EVENT_TYPE: &str = "event_type";
/// What happened: `completed`, `succeeded`, ...
pub const OPERATION: &str = "operation";
/// The job the event belongs to.
pub const JOB_ID: &str = "job_id";
/// The job's or the execution's status as AWS sent it.
pub const STATUS: &str = "status";
/// AWS's `timestamp`, in milliseconds.
pub const EVENT_TIME: &str = "event_time";
/// `SNAPSHOT` or `CONTINUOUS` (job events).
pub const TARGET_SELECTION: &str = "target_selection";
/// The job's targets (job events).
pub const TARGETS: &str = "targets";
/// The job's description (job events).
pub const DESCRIPTION: &str = "description";
/// The comment of a cancellation or deletion (job events).
pub const COMMENT: &str = "comment";
/// When the job was created (job events).
pub const CREATED_AT: &str = "created_at";
/// When the job last changed (job events).
pub const LAST_UPDATED_AT: &str = "last_updated_at";
/// When the job ended (job events).
pub const COMPLETED_AT: &str = "completed_at";
/// The thing's ARN (execution events).
pub const THING_ARN: &str = "thing_arn";
/// The thing's name, the ARN's last part (execution events).
pub const THING_NAME: &str = "thing_name";
/// The execution's `statusDetails` as a map of strings (execution events).
pub const STATUS_DETAILS: &str = "status_details";
/// The codes of the anomalies an event was kept with (empty for nearly every row).
pub const ANOMALIES: &str = "anomalies";
/// Fields the contract does not name, as a JSON object.
pub const EXTRA: &str = "extra";
/// The MQTT topic the event arrived on.
pub const MQTT_TOPIC: &str = "mqtt_topic";
/// When jobstream received the event.
pub const RECEIVED_AT: &str = "received_at";
