//! The typed model of AWS IoT Jobs events.
//!
//! Strings borrow from the payload (fast path) or the parser's scratch copy of it (simd-json
//! unescapes in place); lists and maps are views over spans or the parsed tape: building an
//! [`Event`] copies nothing.

use std::borrow::Cow;

use simd_json::prelude::*;
use simd_json::tape::Value;

use crate::anomaly::Anomalies;
use crate::span::Span;

/// The two event families, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `eventType: "JOB"`, topics `<prefix>job/...`, table `job_events`.
    Job,
    /// `eventType: "JOB_EXECUTION"`, topics `<prefix>jobExecution/...`, table
    /// `job_execution_events`.
    Execution,
}

impl Family {
    /// The payload's `eventType` value for this family.
    pub fn event_type(self) -> &'static str {
        match self {
            Family::Job => "JOB",
            Family::Execution => "JOB_EXECUTION",
        }
    }

    /// The Parquet table name.
    pub fn table(self) -> &'static str {
        match self {
            Family::Job => "job_events",
            Family::Execution => "job_execution_events",
        }
    }
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as AWS spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the AWS spelling; `None` for anything else.
            #[allow(clippy::should_implement_trait)]
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

string_enum!(
    /// Operations of JOB events (the last topic segment).
    JobOperation {
        /// The job completed.
        Completed => "completed",
        /// The job was canceled.
        Canceled => "canceled",
        /// The job was deleted.
        Deleted => "deleted",
        /// Cancellation started.
        CancellationInProgress => "cancellation_in_progress",
        /// Deletion started.
        DeletionInProgress => "deletion_in_progress",
    }
);

string_enum!(
    /// Job statuses as JOB events report them.
    JobStatus {
        /// Done.
        Completed => "COMPLETED",
        /// Canceled.
        Canceled => "CANCELED",
        /// Deleted.
        Deleted => "DELETED",
        /// Cancellation under way.
        CancellationInProgress => "CANCELLATION_IN_PROGRESS",
        /// Deletion under way.
        DeletionInProgress => "DELETION_IN_PROGRESS",
    }
);

string_enum!(
    /// Operations of JOB_EXECUTION events.
    ExecutionOperation {
        /// The device reported success.
        Succeeded => "succeeded",
        /// The device reported failure.
        Failed => "failed",
        /// The device rejected the job.
        Rejected => "rejected",
        /// The execution was canceled.
        Canceled => "canceled",
        /// The thing was removed from the job's targets.
        Removed => "removed",
        /// The execution timed out.
        TimedOut => "timed_out",
        /// The execution was deleted.
        Deleted => "deleted",
    }
);

string_enum!(
    /// Job execution statuses.
    ExecutionStatus {
        /// Waiting for the device.
        Queued => "QUEUED",
        /// The device is working on it.
        InProgress => "IN_PROGRESS",
        /// Succeeded.
        Succeeded => "SUCCEEDED",
        /// Failed.
        Failed => "FAILED",
        /// Rejected by the device.
        Rejected => "REJECTED",
        /// Canceled.
        Canceled => "CANCELED",
        /// Removed.
        Removed => "REMOVED",
        /// Timed out.
        TimedOut => "TIMED_OUT",
        /// Deleted.
        Deleted => "DELETED",
    }
);

/// A `status` as the payload gave it: one AWS documents, or another string kept as given (and
/// flagged [`crate::Anomaly::StatusUnknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<'i, T> {
    /// A documented status.
    Known(T),
    /// Any other string.
    Other(&'i str),
}

impl<'i, T: Copy> Status<'i, T> {
    /// The documented status, if it is one.
    pub fn known(self) -> Option<T> {
        match self {
            Status::Known(status) => Some(status),
            Status::Other(_) => None,
        }
    }
}

impl<'i> Status<'i, JobStatus> {
    /// The status as the payload spelled it.
    pub fn as_str(self) -> &'i str {
        match self {
            Status::Known(status) => status.as_str(),
            Status::Other(text) => text,
        }
    }
}

impl<'i> Status<'i, ExecutionStatus> {
    /// The status as the payload spelled it.
    pub fn as_str(self) -> &'i str {
        match self {
            Status::Known(status) => status.as_str(),
            Status::Other(text) => text,
        }
    }
}

impl JobOperation {
    /// The status a JOB event with this operation carries.
    pub fn expected_status(self) -> JobStatus {
        match self {
            JobOperation::Completed => JobStatus::Completed,
            JobOperation::Canceled => JobStatus::Canceled,
            JobOperation::Deleted => JobStatus::Deleted,
            JobOperation::CancellationInProgress => JobStatus::CancellationInProgress,
            JobOperation::DeletionInProgress => JobStatus::DeletionInProgress,
        }
    }
}

impl ExecutionOperation {
    /// Whether an execution event with this operation carries `status` as AWS documents it.
    ///
    /// Terminal operations name their status exactly. `deleted` can hit an execution in any
    /// state (AWS deletes queued and in-progress executions too), so it accepts every status.
    pub fn allows_status(self, status: ExecutionStatus) -> bool {
        use ExecutionOperation as Op;
        use ExecutionStatus as St;
        matches!(
            (self, status),
            (Op::Succeeded, St::Succeeded)
                | (Op::Failed, St::Failed)
                | (Op::Rejected, St::Rejected)
                | (Op::Canceled, St::Canceled)
                | (Op::Removed, St::Removed)
                | (Op::TimedOut, St::TimedOut)
                | (Op::Deleted, _)
        )
    }
}

/// A validated event of either family.
///
/// The variants differ in size, but an event lives on the stack for one callback; boxing the
/// larger one would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum Event<'t, 'i> {
    /// A JOB event.
    Job(JobEvent<'t, 'i>),
    /// A JOB_EXECUTION event.
    Execution(JobExecutionEvent<'t, 'i>),
}

impl<'t, 'i> Event<'t, 'i> {
    /// The family (and so the table) of the event.
    pub fn family(&self) -> Family {
        match self {
            Event::Job(_) => Family::Job,
            Event::Execution(_) => Family::Execution,
        }
    }

    /// The fields both families share.
    pub fn common(&self) -> &Common<'t, 'i> {
        match self {
            Event::Job(e) => &e.common,
            Event::Execution(e) => &e.common,
        }
    }

    /// The operation as AWS spells it.
    pub fn operation_str(&self) -> &'static str {
        match self {
            Event::Job(e) => e.operation.as_str(),
            Event::Execution(e) => e.operation.as_str(),
        }
    }

    /// The status as the payload spelled it.
    pub fn status_str(&self) -> &'i str {
        match self {
            Event::Job(e) => e.status.as_str(),
            Event::Execution(e) => e.status.as_str(),
        }
    }
}

/// Fields every event has.
#[derive(Debug, Clone, Copy)]
pub struct Common<'t, 'i> {
    /// `eventId`: AWS's id of the event; duplicates of it are redeliveries.
    pub event_id: &'i str,
    /// `timestamp`, normalised to milliseconds since the epoch (AWS sends seconds).
    pub event_time_ms: i64,
    /// `jobId`.
    pub job_id: &'i str,
    /// Payload fields the model does not know, to be kept as JSON (`extra` column).
    pub extra: Extra<'t, 'i>,
    /// What was unusual about the event (`anomalies` column); empty for one as AWS documents.
    pub anomalies: Anomalies,
}

/// A JOB event (`$aws/events/job/<jobId>/<operation>`).
#[derive(Debug, Clone, Copy)]
pub struct JobEvent<'t, 'i> {
    /// Shared fields.
    pub common: Common<'t, 'i>,
    /// `operation`.
    pub operation: JobOperation,
    /// `status`, as given (see [`Common::anomalies`] for whether it fits the operation).
    pub status: Status<'i, JobStatus>,
    /// `targetSelection` (`SNAPSHOT` or `CONTINUOUS`), kept as sent.
    pub target_selection: Option<Text<'t, 'i>>,
    /// `targets`: thing and thing-group ARNs.
    pub targets: Option<StrList<'t, 'i>>,
    /// `description`.
    pub description: Option<Text<'t, 'i>>,
    /// `comment` (cancel and delete operations).
    pub comment: Option<Text<'t, 'i>>,
    /// `createdAt`, ms since the epoch.
    pub created_at_ms: Option<i64>,
    /// `lastUpdatedAt`, ms since the epoch.
    pub last_updated_at_ms: Option<i64>,
    /// `completedAt`, ms since the epoch (completed jobs).
    pub completed_at_ms: Option<i64>,
    /// `jobProcessDetails` counters (completed jobs).
    pub process_details: Option<ProcessDetails>,
}

/// `jobProcessDetails`: how many things ended in each state. The spec shows five counters;
/// AWS also reports queued, in-progress and timed-out things, and all are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// `numberOfCanceledThings`.
    pub canceled: Option<i64>,
    /// `numberOfFailedThings`.
    pub failed: Option<i64>,
    /// `numberOfInProgressThings`.
    pub in_progress: Option<i64>,
    /// `numberOfQueuedThings`.
    pub queued: Option<i64>,
    /// `numberOfRejectedThings`.
    pub rejected: Option<i64>,
    /// `numberOfRemovedThings`.
    pub removed: Option<i64>,
    /// `numberOfSucceededThings`.
    pub succeeded: Option<i64>,
    /// `numberOfTimedOutThings`.
    pub timed_out: Option<i64>,
}

/// A `jobProcessDetails` counter: payload key, column name, accessor.
pub type Counter = (
    &'static str,
    &'static str,
    fn(&ProcessDetails) -> Option<i64>,
);

impl ProcessDetails {
    /// Payload key, column name and accessor of every counter, in column order.
    pub const COUNTERS: [Counter; 8] = [
        ("numberOfCanceledThings", "number_of_canceled_things", |p| {
            p.canceled
        }),
        ("numberOfFailedThings", "number_of_failed_things", |p| {
            p.failed
        }),
        (
            "numberOfInProgressThings",
            "number_of_in_progress_things",
            |p| p.in_progress,
        ),
        ("numberOfQueuedThings", "number_of_queued_things", |p| {
            p.queued
        }),
        ("numberOfRejectedThings", "number_of_rejected_things", |p| {
            p.rejected
        }),
        ("numberOfRemovedThings", "number_of_removed_things", |p| {
            p.removed
        }),
        (
            "numberOfSucceededThings",
            "number_of_succeeded_things",
            |p| p.succeeded,
        ),
        (
            "numberOfTimedOutThings",
            "number_of_timed_out_things",
            |p| p.timed_out,
        ),
    ];

    pub(crate) fn slot(&mut self, key: &str) -> Option<&mut Option<i64>> {
        Some(match key {
            "numberOfCanceledThings" => &mut self.canceled,
            "numberOfFailedThings" => &mut self.failed,
            "numberOfInProgressThings" => &mut self.in_progress,
            "numberOfQueuedThings" => &mut self.queued,
            "numberOfRejectedThings" => &mut self.rejected,
            "numberOfRemovedThings" => &mut self.removed,
            "numberOfSucceededThings" => &mut self.succeeded,
            "numberOfTimedOutThings" => &mut self.timed_out,
            _ => return None,
        })
    }
}

/// A JOB_EXECUTION event (`$aws/events/jobExecution/<jobId>/<operation>`).
#[derive(Debug, Clone, Copy)]
pub struct JobExecutionEvent<'t, 'i> {
    /// Shared fields.
    pub common: Common<'t, 'i>,
    /// `operation`.
    pub operation: ExecutionOperation,
    /// `status`, as given (see [`Common::anomalies`] for whether it fits the operation).
    pub status: Status<'i, ExecutionStatus>,
    /// `thingArn`.
    pub thing_arn: &'i str,
    /// `statusDetails`: string → text, as the device reported it.
    pub status_details: Option<StrMap<'t, 'i>>,
}

impl JobExecutionEvent<'_, '_> {
    /// The thing's name: the last `/` segment of `thingArn`.
    pub fn thing_name(&self) -> &str {
        thing_name(self.thing_arn)
    }
}

/// The last `/` segment of an ARN (the whole string when there is no `/`).
pub fn thing_name(arn: &str) -> &str {
    // Eight bytes a step from the end: the name is a few dozen bytes, where `rsplit`'s
    // `memrchr` costs several times more and a byte loop takes a step per byte.
    match crate::bytes::rfind_byte(arn.as_bytes(), b'/') {
        Some(slash) => arn.get(slash + 1..).unwrap_or(arn),
        None => arn,
    }
}

/// Where the strings of a list or map are: on simd-json's tape (general path), or as spans
/// into the payload and the decoded-strings buffer (fast path, see `fast.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Repr<'t, 'i, S: 'static> {
    Tape(Value<'t, 'i>),
    Spans {
        items: &'t [S],
        payload: &'i str,
        decoded: &'i str,
    },
}

/// A value a string column holds: a JSON string as the payload gave it, or any other JSON value
/// (a number a device sent in `statusDetails`, say) kept as its compact JSON text.
#[derive(Debug, Clone, Copy)]
pub struct Text<'t, 'i>(pub(crate) TextRepr<'t, 'i>);

#[derive(Debug, Clone, Copy)]
pub(crate) enum TextRepr<'t, 'i> {
    Str(&'i str),
    Json(Value<'t, 'i>),
}

impl<'t, 'i> Text<'t, 'i> {
    pub(crate) fn of(value: Value<'t, 'i>) -> Self {
        match value.into_string() {
            Some(text) => Text(TextRepr::Str(text)),
            None => Text(TextRepr::Json(value)),
        }
    }

    pub(crate) fn str(text: &'i str) -> Self {
        Text(TextRepr::Str(text))
    }

    /// The string, when the payload gave a string.
    #[inline]
    pub fn as_str(&self) -> Option<&'i str> {
        match self.0 {
            TextRepr::Str(text) => Some(text),
            TextRepr::Json(_) => None,
        }
    }

    /// The text: the string itself, or the value's compact JSON (`120`, `true`, `{"a":1}`).
    #[inline]
    pub fn to_text(&self) -> Cow<'i, str> {
        match self.0 {
            TextRepr::Str(text) => Cow::Borrowed(text),
            TextRepr::Json(value) => Cow::Owned(json_text(value)),
        }
    }

    /// Length of the text in bytes (of the JSON text only an estimate: for flush decisions).
    #[inline]
    pub fn approx_len(&self) -> usize {
        match self.0 {
            TextRepr::Str(text) => text.len(),
            TextRepr::Json(_) => 16,
        }
    }
}

/// Out of line: the column builders call [`Text::to_text`] for every value, nearly always a
/// string, and this branch should not weigh on them.
#[cold]
fn json_text(value: Value<'_, '_>) -> String {
    let mut out = Vec::new();
    crate::json::write_value(&mut out, value);
    // The tape's strings are UTF-8 and the JSON writer adds only ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON array of strings (and, flagged as anomalies, other values kept as JSON text).
#[derive(Debug, Clone, Copy)]
pub struct StrList<'t, 'i>(pub(crate) Repr<'t, 'i, Span>);

enum ListIter<'t, 'i> {
    Tape(Option<simd_json::tape::array::Iter<'t, 'i>>),
    Spans(std::slice::Iter<'t, Span>, &'i str, &'i str),
}

impl<'t, 'i> Iterator for ListIter<'t, 'i> {
    type Item = Text<'t, 'i>;

    #[inline]
    fn next(&mut self) -> Option<Text<'t, 'i>> {
        match self {
            ListIter::Tape(items) => items.as_mut()?.next().map(Text::of),
            ListIter::Spans(items, payload, decoded) => {
                items.next().map(|s| Text::str(s.get(payload, decoded)))
            }
        }
    }
}

impl<'t, 'i> StrList<'t, 'i> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Tape(v) => v.into_array().map_or(0, |a| a.len()),
            Repr::Spans { items, .. } => items.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = Text<'t, 'i>> + 't {
        match self.0 {
            Repr::Tape(v) => ListIter::Tape(v.into_array().map(|a| a.iter())),
            Repr::Spans {
                items,
                payload,
                decoded,
            } => ListIter::Spans(items.iter(), payload, decoded),
        }
    }
}

/// A JSON object of string values (and, flagged as anomalies, others kept as JSON text).
#[derive(Debug, Clone, Copy)]
pub struct StrMap<'t, 'i>(pub(crate) Repr<'t, 'i, (Span, Span)>);

enum MapIter<'t, 'i> {
    Tape(Option<simd_json::tape::object::Iter<'t, 'i>>),
    Spans(std::slice::Iter<'t, (Span, Span)>, &'i str, &'i str),
}

impl<'t, 'i> Iterator for MapIter<'t, 'i> {
    type Item = (&'i str, Text<'t, 'i>);

    #[inline]
    fn next(&mut self) -> Option<(&'i str, Text<'t, 'i>)> {
        match self {
            MapIter::Tape(entries) => entries.as_mut()?.next().map(|(k, v)| (k, Text::of(v))),
            MapIter::Spans(entries, payload, decoded) => entries
                .next()
                .map(|(k, v)| (k.get(payload, decoded), Text::str(v.get(payload, decoded)))),
        }
    }
}

impl<'t, 'i> StrMap<'t, 'i> {
    /// Number of entries (duplicate keys count each time they appear).
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Tape(v) => v.into_object().map_or(0, |o| o.len()),
            Repr::Spans { items, .. } => items.len(),
        }
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in payload order.
    pub fn iter(&self) -> impl Iterator<Item = (&'i str, Text<'t, 'i>)> + 't {
        match self.0 {
            Repr::Tape(v) => MapIter::Tape(v.into_object().map(|o| o.iter())),
            Repr::Spans {
                items,
                payload,
                decoded,
            } => MapIter::Spans(items.iter(), payload, decoded),
        }
    }
}

/// Unknown fields of an event, still on the tape; serialised to JSON only when written.
///
/// `fields` are unknown top-level members; `process_details` are unknown members inside
/// `jobProcessDetails`, kept under that key so nothing AWS sends is lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'t, 'i> {
    pub(crate) object: Option<Value<'t, 'i>>,
    pub(crate) process_details: Option<Value<'t, 'i>>,
    pub(crate) unknown_top: u32,
    pub(crate) unknown_nested: u32,
}

impl Extra<'_, '_> {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.unknown_top == 0 && self.unknown_nested == 0
    }

    /// Appends the unknown fields as one JSON object to `out`; writes nothing and returns
    /// `false` when there are none.
    pub fn write_json(&self, family: Family, out: &mut Vec<u8>) -> bool {
        if self.is_empty() {
            return false;
        }
        let mut first = true;
        out.push(b'{');
        if let Some(object) = self.object.and_then(|v| v.into_object()) {
            for (key, value) in object.iter() {
                if is_known_top_level(family, key) {
                    continue;
                }
                member(out, &mut first, key);
                crate::json::write_value(out, value);
            }
        }
        if let Some(details) = self.process_details.and_then(|v| v.into_object()) {
            if self.unknown_nested > 0 {
                member(out, &mut first, "jobProcessDetails");
                let mut first_nested = true;
                out.push(b'{');
                for (key, value) in details.iter() {
                    if ProcessDetails::default().slot(key).is_some() {
                        continue;
                    }
                    member(out, &mut first_nested, key);
                    crate::json::write_value(out, value);
                }
                out.push(b'}');
            }
        }
        out.push(b'}');
        true
    }
}

fn member(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    crate::json::write_str(out, key);
    out.push(b':');
}

/// Whether `key` is a top-level payload field the model maps to a column.
pub(crate) fn is_known_top_level(family: Family, key: &str) -> bool {
    matches!(
        key,
        "eventType" | "eventId" | "timestamp" | "operation" | "jobId" | "status"
    ) || match family {
        Family::Job => matches!(
            key,
            "targetSelection"
                | "targets"
                | "description"
                | "comment"
                | "createdAt"
                | "lastUpdatedAt"
                | "completedAt"
                | "jobProcessDetails"
        ),
        Family::Execution => matches!(key, "thingArn" | "statusDetails"),
    }
}
