//! Why an input was refused. Every reject names one [`RejectKind`] (a stable, machine-readable
//! label used in DLQ records and metrics) and a message a human can act on.

use std::fmt;

/// The class of a rejected input. The `as_str` labels are part of the DLQ contract
/// (`error_kind` header / field) and must not change.
///
/// The rule: only what cannot make a correct row is rejected — not JSON, not an object, the
/// topic's family, job id or operation contradicted, a required field absent or of an unusable
/// type, a time out of range. Everything else is kept, and what was unusual is recorded as an
/// [`Anomaly`](crate::Anomaly). (`status_mismatch`, `targets_not_strings` and
/// `status_details_not_strings` were kinds until AWS-sent events were found in them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    /// The topic is not `<prefix>job/<jobId>/<op>` or `<prefix>jobExecution/<jobId>/<op>`.
    UnknownTopic,
    /// The topic (or payload) names an operation the event family does not have.
    UnknownOperation,
    /// The payload is larger than the configured cap.
    PayloadTooLarge,
    /// The payload is not valid JSON (or not UTF-8).
    NotJson,
    /// The payload is JSON but not an object.
    NotObject,
    /// A required field is absent or null.
    MissingField,
    /// A field no column can hold faithfully: a required string that is not a string, a time
    /// or counter that is not an integer in range, an object or list field of another type.
    MistypedField,
    /// `eventType` does not match the topic family.
    EventTypeMismatch,
    /// `jobId` differs from the job id in the topic.
    JobIdMismatch,
    /// `operation` differs from the operation in the topic.
    OperationMismatch,
    /// Kafka refused the valid event for good (larger than the topic's `max.message.bytes`,
    /// invalid): never raised by the parser; the bridge sends such an event to the DLQ.
    KafkaRefused,
}

impl RejectKind {
    /// Every kind, in declaration order (for metrics and summaries).
    pub const ALL: [RejectKind; 11] = [
        RejectKind::UnknownTopic,
        RejectKind::UnknownOperation,
        RejectKind::PayloadTooLarge,
        RejectKind::NotJson,
        RejectKind::NotObject,
        RejectKind::MissingField,
        RejectKind::MistypedField,
        RejectKind::EventTypeMismatch,
        RejectKind::JobIdMismatch,
        RejectKind::OperationMismatch,
        RejectKind::KafkaRefused,
    ];

    /// The stable snake_case label written to DLQ records.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::UnknownTopic => "unknown_topic",
            RejectKind::UnknownOperation => "unknown_operation",
            RejectKind::PayloadTooLarge => "payload_too_large",
            RejectKind::NotJson => "not_json",
            RejectKind::NotObject => "not_object",
            RejectKind::MissingField => "missing_field",
            RejectKind::MistypedField => "mistyped_field",
            RejectKind::EventTypeMismatch => "event_type_mismatch",
            RejectKind::JobIdMismatch => "job_id_mismatch",
            RejectKind::OperationMismatch => "operation_mismatch",
            RejectKind::KafkaRefused => "kafka_refused",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused input: its kind and a human-readable explanation.
///
/// Rejects are the exception, so the message is an owned `String`; the accept path never
/// allocates one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Reject {
    /// The class of the failure.
    pub kind: RejectKind,
    /// What was wrong, naming the field and value where there is one.
    pub message: String,
}

impl Reject {
    pub fn new(kind: RejectKind, message: impl Into<String>) -> Self {
        Reject {
            kind,
            message: message.into(),
        }
    }
}
