//! What stops a bench before or between its runs. A contender's failed run is not one of them:
//! it is recorded in that run's result (with this error's text) and the next run goes on.

use std::io;
use std::path::PathBuf;

use jobstream_bridge::BridgeError;
use jobstream_publisher::PublishError;
use jobstream_sink::SinkError;
use rdkafka::error::KafkaError;

/// A bench could not start, run, or write its result.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag bench cannot work with; the message says what to pass instead.
    #[error("{0}")]
    InvalidFlag(String),
    /// An output file (`--output`, `--chart`) cannot be written; checked before measuring.
    #[error("{flag} {}: cannot be written ({source}); name a file in a writable folder", path.display())]
    Output {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be written.
        #[source]
        source: io::Error,
    },
    /// A file or process operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, with the path or program.
        action: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A broker bench starts itself (mosquitto, Apache Kafka) did not come up.
    #[error("{0}")]
    BrokerStart(String),
    /// A Kafka client operation failed.
    #[error("{action}: {source}")]
    Kafka {
        /// What was being done.
        action: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// Creating a run's topics failed.
    #[error(transparent)]
    Topics(Box<SinkError>),
    /// Publishing a backlog or the latency stream failed.
    #[error(transparent)]
    Publish(Box<PublishError>),
    /// The MQTT settings of a session were refused.
    #[error(transparent)]
    Mqtt(Box<BridgeError>),
    /// A run went wrong: a session that would not set up, a drain past its deadline, a
    /// contender that exited early, a read-back that did not finish.
    #[error("{0}")]
    Run(String),
    /// The JSON result could not be encoded.
    #[error("encoding the result: {0}")]
    Encode(#[from] serde_json::Error),
}

// Boxed: these are large, and a bench error is rare, where every `Result` pays for the size.
impl From<SinkError> for BenchError {
    fn from(error: SinkError) -> Self {
        BenchError::Topics(Box::new(error))
    }
}

impl From<PublishError> for BenchError {
    fn from(error: PublishError) -> Self {
        BenchError::Publish(Box::new(error))
    }
}

impl From<BridgeError> for BenchError {
    fn from(error: BridgeError) -> Self {
        BenchError::Mqtt(Box::new(error))
    }
}

/// `.io("what")` on an I/O result: the action named in the error.
pub(crate) trait IoContext<T> {
    fn io(self, action: impl Into<String>) -> Result<T, BenchError>;
    fn io_with(self, action: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn io(self, action: impl Into<String>) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Io {
            action: action.into(),
            source,
        })
    }

    fn io_with(self, action: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Io {
            action: action(),
            source,
        })
    }
}

/// `.kafka("what")` on a Kafka client result.
pub(crate) trait KafkaContext<T> {
    fn kafka(self, action: impl Into<String>) -> Result<T, BenchError>;
}

impl<T> KafkaContext<T> for Result<T, KafkaError> {
    fn kafka(self, action: impl Into<String>) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Kafka {
            action: action.into(),
            source,
        })
    }
}

/// A [`BenchError::InvalidFlag`] from any text.
pub(crate) fn invalid_flag(message: impl Into<String>) -> BenchError {
    BenchError::InvalidFlag(message.into())
}
