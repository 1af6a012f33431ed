//! What can stop a report, each with the file it concerns.

use std::io;
use std::path::PathBuf;

/// A report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `since` is not before `until`: the window holds no time at all.
    #[error("--since must be before --until")]
    EmptyWindow,
    /// The root holds neither table: most likely the wrong directory.
    #[error(
        "{} holds neither job_events/ nor job_execution_events/: give the directory passed to `replay --parquet`",
        root.display()
    )]
    NoTables {
        /// The directory given.
        root: PathBuf,
    },
    /// The root is a URL that cannot be used, or an object store failed.
    #[error(transparent)]
    Store(#[from] jobstream_sink::SinkError),
    /// A table's directory or partition could not be listed.
    #[error("cannot list {}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file could not be opened or its size read.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file's footer or metadata is not Parquet.
    #[error("{} is not a readable Parquet file", path.display())]
    NotParquet {
        /// The file.
        path: PathBuf,
        /// What the Parquet reader said.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A Parquet file without a column every jobstream table has.
    #[error("{} has no column {column:?}: is it a jobstream table?", path.display())]
    NotJobstreamTable {
        /// The file.
        path: PathBuf,
        /// The column it lacks.
        column: String,
    },
    /// The file's pages could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the Parquet reader said.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A batch could not be decoded.
    #[error("cannot decode {}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What Arrow said.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// A column is not of the type the contract gives it.
    #[error("in {}", path.display())]
    Column {
        /// The file.
        path: PathBuf,
        /// Which column, and what it holds instead.
        #[source]
        source: ColumnError,
    },
}

/// A column of a batch is missing or of another type than the contract's.
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    /// The batch has no such column.
    #[error("no column {0:?}")]
    Missing(String),
    /// The column holds another type.
    #[error("column {column:?} is not {expected}")]
    WrongType {
        /// The column.
        column: String,
        /// The type the contract gives it.
        expected: &'static str,
    },
}
