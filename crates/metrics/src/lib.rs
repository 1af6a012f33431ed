//! What an operator needs to run jobstream for months: metrics in the Prometheus text format,
//! readiness checks, a tiny HTTP endpoint serving `/metrics`, `/health` and `/ready`, and a
//! throttle for warnings about bad input.
//!
//! # How a pipeline stage reports
//!
//! The command creates one [`Registry`] and one [`Health`] and hands clones (cheap: both are
//! `Arc`s inside) to every stage. A stage registers what it counts once, at start, and keeps the
//! returned handles; updating a handle is one relaxed atomic operation, so it belongs on hot
//! paths.
//!
//! ```
//! use jobstream_metrics::{Health, Registry};
//!
//! let registry = Registry::new();
//! let rows = registry.counter_with(
//!     "jobstream_parquet_rows_written_total",
//!     "Rows written to published Parquet files.",
//!     &[("table", "job_events")],
//! );
//! rows.add(500);
//! let lag = registry.gauge_with(
//!     "jobstream_consumer_lag_records",
//!     "Records between the committed offset and the end of the partition.",
//!     &[("topic", "aws-iot-job-events"), ("partition", "0")],
//! );
//! lag.set(42);
//! let health = Health::new();
//! health.register("parquet", || Ok(()));
//! assert!(registry.render().contains("jobstream_consumer_lag_records{topic=\"aws-iot-job-events\",partition=\"0\"} 42"));
//! ```
//!
//! Registering the same name and labels again returns the same series, so a stage may look a
//! handle up lazily (a partition seen for the first time, say). A name registered with another
//! type, or an invalid name, is a bug: it is logged and the handle returned is detached (it
//! counts, but is not exported) — metrics never stop the pipeline.
//!
//! Conventions: names start with `jobstream_`, counters end in `_total`, durations are
//! histograms in seconds (`_seconds`), sizes in bytes (`_bytes`).

mod health;
mod registry;
mod server;
mod throttle;

pub use health::{Check, Health, Readiness};
pub use registry::{Counter, Gauge, Histogram, Registry, LATENCY_BUCKETS};
pub use server::{MetricsError, MetricsServer};
pub use throttle::Throttle;
