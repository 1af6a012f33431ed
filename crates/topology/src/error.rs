//! What can stop a topology, by the part that failed.

use jobstream_bridge::BridgeError;
use jobstream_sink::SinkError;

/// Why a topology did not run to the end, or ended badly.
///
/// The bridge's and the Parquet stage's own errors are carried whole, so that a caller picks
/// an exit code by their type.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The async runtime (or a thread of it) could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The metrics endpoint could not be bound (the address is taken or not this host's).
    #[error("{origin}: {source}")]
    MetricsBind {
        /// Where the listen address came from, for the message (a flag or a file key).
        origin: String,
        /// Why binding failed.
        source: jobstream_metrics::MetricsError,
    },
    /// The Parquet stage's thread could not be started.
    #[error("starting the Parquet stage thread: {0}")]
    StageSpawn(#[source] std::io::Error),
    /// The bridge (MQTT → Kafka, or MQTT → Parquet) failed.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The Parquet stage (Kafka → Parquet) failed.
    #[error(transparent)]
    Stage(#[from] SinkError),
    /// The Parquet stage's thread panicked: a bug. What it had not committed is read again by
    /// the next run.
    #[error("the Parquet stage thread panicked (a bug: please report it); its uncommitted input is read again by the next run")]
    StagePanicked,
}
