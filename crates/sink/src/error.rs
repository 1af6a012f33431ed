use std::path::PathBuf;

/// What can go wrong in a sink. Every variant names the path or setting involved, so the
/// message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("create", "rename", "fsync", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Parquet encoder failed.
    #[error("writing Parquet file {path}: {source}")]
    Parquet {
        /// The temporary file being written.
        path: PathBuf,
        /// The encoder's error.
        source: parquet::errors::ParquetError,
    },
    /// The background Parquet encoder thread stopped without an error of its own to report
    /// (it panicked, or it stopped after an error already returned).
    #[error("the Parquet encoder thread stopped: {0}")]
    Encoder(String),
    /// Building an Arrow batch failed (a bug in the column builders).
    #[error(transparent)]
    Batch(#[from] jobstream_parser::columnar::BatchError),
    /// Kafka refused or failed an operation.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A setting is out of range.
    #[error("invalid setting {setting} = {value}: {reason}")]
    Config {
        /// The setting's name as users write it.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

impl SinkError {
    /// Wraps an I/O error with what was being done, and to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SinkError {
        let path = path.into();
        move |source| SinkError::Io {
            action,
            path,
            source,
        }
    }
}
