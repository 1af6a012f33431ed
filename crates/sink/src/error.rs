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
    /// An object store refused or failed a request.
    #[error("{action} {url}: {source}")]
    Store {
        /// What was being done ("list", "publish (create-only PUT)", "read").
        action: &'static str,
        /// The object or prefix, as `scheme://bucket/key` (never with credentials).
        url: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The Parquet encoder failed.
    #[error("writing Parquet file {path}: {source}")]
    Parquet {
        /// The temporary file being written.
        path: PathBuf,
        /// The encoder's error.
        source: parquet::errors::ParquetError,
    },
    /// The background Parquet encoder thread panicked: a bug. What it held is not published,
    /// so its input is neither committed nor acknowledged.
    #[error("the Parquet encoder thread panicked: {message}")]
    EncoderPanicked {
        /// The panic's message, when it had one.
        message: String,
    },
    /// The background Parquet encoder thread is gone after an error already returned.
    #[error("the Parquet encoder thread stopped after an earlier error")]
    EncoderStopped,
    /// The operating system would not start the encoder thread.
    #[error("cannot start the Parquet encoder thread: {source}")]
    EncoderSpawn {
        /// Why.
        source: std::io::Error,
    },
    /// A file had neither a writer nor an encoder thread: a bug in the sink.
    #[error("a Parquet file has neither a writer nor an encoder thread (a bug)")]
    NoWriter,
    /// Building an Arrow batch failed (a bug in the column builders).
    #[error(transparent)]
    Batch(#[from] jobstream_parser::columnar::BatchError),
    /// Kafka refused or failed an operation.
    #[error("kafka: {action}: {source}")]
    Kafka {
        /// What was being done, with the topic or partition where there is one.
        action: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A topic could not be created.
    #[error("kafka: creating topic {topic} ({partitions} partitions, replication factor {replication}): {code}")]
    TopicNotCreated {
        /// The topic.
        topic: String,
        /// The partitions asked for.
        partitions: i32,
        /// The replication factor asked for.
        replication: String,
        /// The broker's answer.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// Re-reading a partition's last records (to find copies of what is already in the files)
    /// did not reach the resume offset in time.
    #[error("kafka: re-reading the last records of {topic}/{partition} for duplicates: not read up to offset {resume} within {within:?}")]
    RereadTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset reading had to reach.
        resume: u64,
        /// How long it had.
        within: std::time::Duration,
    },
    /// Rejected records could not be written to the DLQ topic: the input stays uncommitted.
    #[error("kafka: {count} rejected record(s) could not be written to the DLQ topic")]
    DlqUndelivered {
        /// How many.
        count: u64,
    },
    /// A blocking Kafka call ran on a task that stopped (the runtime is shutting down).
    #[error("kafka: {what} stopped: {source}")]
    TaskStopped {
        /// The call.
        what: &'static str,
        /// Tokio's word on it.
        source: tokio::task::JoinError,
    },
    /// Kafka will never take this record as it is (too large, invalid); the reason says why.
    /// Retrying cannot help: the record belongs in the DLQ.
    #[error("Kafka refused the record for good: {reason} ({source})")]
    RecordRefused {
        /// What about the record Kafka refused, with the setting to check.
        reason: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// The topic would refuse the event for its timestamp (see `kafka::timestamps`): it
    /// belongs in the DLQ.
    #[error("Kafka refused the record for good: topic {topic} does not take it: {out_of_range}")]
    TimestampOutOfRange {
        /// The event's topic.
        topic: String,
        /// How far out of range, and the setting.
        out_of_range: crate::kafka::OutOfRange,
    },
    /// No broker answered within the connect timeout: retrying later may help.
    #[error("kafka: no broker at {brokers} answered within {timeout:?}: {detail}")]
    KafkaUnreachable {
        /// `bootstrap.servers`.
        brokers: String,
        /// How long the client tried.
        timeout: std::time::Duration,
        /// librdkafka's last word on it.
        detail: String,
    },
    /// Kafka turned the client away (TLS, authentication, authorization): retrying with the
    /// same settings cannot help, so the command stops instead of trying forever.
    #[error("kafka at {brokers}: {refusal}: {detail}")]
    KafkaRefused {
        /// `bootstrap.servers`.
        brokers: String,
        /// What was refused, with what to check.
        refusal: Refusal,
        /// librdkafka's or the broker's own message.
        detail: String,
    },
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
    /// Wraps a Kafka error with what was being done.
    /// Whether Kafka will never take the record as it is: it belongs in the DLQ.
    pub fn is_refused_for_good(&self) -> bool {
        matches!(
            self,
            SinkError::RecordRefused { .. } | SinkError::TimestampOutOfRange { .. }
        )
    }

    pub fn kafka(
        action: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> SinkError {
        let action = action.into();
        move |source| SinkError::Kafka { action, source }
    }

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

/// Why Kafka turned a client away; each says what to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed, and the broker's certificate was not trusted.
    UnknownCa,
    /// The TLS handshake failed, and the broker wanted a client certificate.
    ClientCertificate,
    /// The TLS handshake failed for another reason.
    Tls,
    /// SASL authentication failed.
    Authentication,
    /// The principal may not do what was asked (ACLs).
    NotAuthorized,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::UnknownCa => "the broker's TLS certificate is not signed by a trusted CA (check ssl.ca.location)",
            Refusal::ClientCertificate => "the broker requires a client certificate it accepts (check ssl.certificate.location and ssl.key.location)",
            Refusal::Tls => "the TLS handshake failed (check security.protocol and the ssl.* options, and that the port is the broker's TLS listener)",
            Refusal::Authentication => "SASL authentication failed (check sasl.username, sasl.password and sasl.mechanisms)",
            Refusal::NotAuthorized => "not authorized (ACLs)",
        })
    }
}
