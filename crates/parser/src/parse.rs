//! Topic + payload → validated [`Event`] or [`Reject`].

use simd_json::prelude::*;
use simd_json::tape::{Tape, Value};
use simd_json::Buffers;

use crate::anomaly::{Anomalies, Anomaly};
use crate::fast;
use crate::model::{
    Common, Event, ExecutionOperation, ExecutionStatus, Extra, Family, JobEvent, JobExecutionEvent,
    JobOperation, JobStatus, ProcessDetails, Repr, Status, StrList, StrMap, Text,
};
use crate::reject::{Reject, RejectKind};
use crate::span::Span;
use crate::topic::{Operation, TopicInfo, TopicParser, DEFAULT_PREFIX};

/// AWS IoT Core's MQTT payload limit; anything larger cannot have come from AWS.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// How the parser is set up.
#[derive(Debug, Clone)]
pub struct ParserConfig {
    /// Topic prefix before `job/` and `jobExecution/`.
    pub topic_prefix: String,
    /// Payloads larger than this are rejected with [`RejectKind::PayloadTooLarge`].
    pub max_payload_bytes: usize,
}

impl Default for ParserConfig {
    fn default() -> Self {
        ParserConfig {
            topic_prefix: DEFAULT_PREFIX.to_owned(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// A reusable parser: one per worker thread.
///
/// Execution model: synchronous and pure (no I/O, no locks). Two paths, one result: a fast
/// path (`fast.rs`) reads well-formed events of the known schema in one pass over the payload,
/// borrowing strings from it; everything else (unknown fields, rejects, anything unusual) goes
/// through simd-json, which decides every reject. The parser owns the scratch memory of both
/// (decoded strings and spans; simd-json's padded copy of the payload, structural index buffers
/// and tape), all reused across calls, so steady-state parsing allocates nothing. The payload
/// passed in is never modified: it is what goes to Kafka byte for byte.
///
/// Error contract: every input, however malformed, yields either an [`Event`] or a [`Reject`]
/// with a kind and a message; nothing panics.
pub struct Parser {
    topics: TopicParser,
    max_payload_bytes: usize,
    input: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
    fast: fast::Scratch,
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("topics", &self.topics)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new(ParserConfig::default())
    }
}

impl Parser {
    /// A parser with the given configuration.
    pub fn new(config: ParserConfig) -> Self {
        Parser {
            topics: TopicParser::new(&config.topic_prefix),
            max_payload_bytes: config.max_payload_bytes,
            input: Vec::with_capacity(4096),
            buffers: Buffers::new(4096),
            tape: Some(Tape::null()),
            fast: fast::Scratch::default(),
        }
    }

    /// The topic parser in use.
    pub fn topics(&self) -> &TopicParser {
        &self.topics
    }

    /// Parses and validates one message and hands the outcome to `on_outcome`.
    ///
    /// The event borrows the parser's scratch memory, so it lives only inside the callback:
    /// append it to a batch, produce it, or copy what you need.
    pub fn parse<R>(
        &mut self,
        topic: &str,
        payload: &[u8],
        on_outcome: impl for<'t, 'i> FnOnce(Result<Event<'t, 'i>, Reject>) -> R,
    ) -> R {
        self.parse_with(topic, payload, None, true, on_outcome)
    }

    /// [`parse`](Self::parse) for a payload the caller already holds as text, which then is
    /// not checked for UTF-8 again. A replay's reader checks whole blocks of input at a time,
    /// on its own thread, and the parsing thread is the one a replay waits for.
    pub fn parse_str<R>(
        &mut self,
        topic: &str,
        payload: &str,
        on_outcome: impl for<'t, 'i> FnOnce(Result<Event<'t, 'i>, Reject>) -> R,
    ) -> R {
        self.parse_with(topic, payload.as_bytes(), Some(payload), true, on_outcome)
    }

    /// [`parse`](Self::parse) without the fast path: simd-json for every message. The two
    /// give identical outcomes; this exists so that tests and benchmarks can compare them.
    #[doc(hidden)]
    pub fn parse_general<R>(
        &mut self,
        topic: &str,
        payload: &[u8],
        on_outcome: impl for<'t, 'i> FnOnce(Result<Event<'t, 'i>, Reject>) -> R,
    ) -> R {
        self.parse_with(topic, payload, None, false, on_outcome)
    }

    /// Whether [`parse`](Self::parse) takes the fast path for this message (for tests).
    #[doc(hidden)]
    pub fn fast_path_takes(&mut self, topic: &str, payload: &[u8]) -> bool {
        let Ok(info) = self.topics.parse(topic) else {
            return false;
        };
        payload.len() <= self.max_payload_bytes
            && fast::scan(payload, None, &info, &mut self.fast).is_some()
    }

    #[inline]
    fn parse_with<R>(
        &mut self,
        topic: &str,
        payload: &[u8],
        text: Option<&str>,
        try_fast: bool,
        on_outcome: impl for<'t, 'i> FnOnce(Result<Event<'t, 'i>, Reject>) -> R,
    ) -> R {
        let info = match self.topics.parse(topic) {
            Ok(info) => info,
            Err(reject) => return on_outcome(Err(reject)),
        };
        if payload.len() > self.max_payload_bytes {
            return on_outcome(Err(Reject::new(
                RejectKind::PayloadTooLarge,
                format!(
                    "payload is {} bytes, over the cap of {} bytes",
                    payload.len(),
                    self.max_payload_bytes
                ),
            )));
        }
        if try_fast {
            if let Some(text) = fast::scan(payload, text, &info, &mut self.fast) {
                return on_outcome(Ok(fast_event(text, &self.fast.found, &self.fast)));
            }
        }
        let len = payload.len();
        self.input.clear();
        self.input.extend_from_slice(payload);
        self.input.resize(len + simd_json::INPUT_PADDING, b' ');
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        let outcome =
            match simd_json::fill_tape_padded(&mut self.input, len, &mut self.buffers, &mut tape) {
                Ok(()) => validate(&tape, info),
                Err(error) => Err(Reject::new(
                    RejectKind::NotJson,
                    format!("payload is not valid JSON: {error}"),
                )),
            };
        let result = on_outcome(outcome);
        self.tape = Some(tape.reset());
        result
    }
}

/// The event the fast path found, its strings borrowed from the payload and the scratch.
#[inline]
fn fast_event<'t, 'i>(text: &'i str, f: &fast::Found, scratch: &'i fast::Scratch) -> Event<'t, 'i>
where
    'i: 't,
{
    let decoded = scratch.decoded.as_str();
    let get = |span: Span| span.get(text, decoded);
    let common = Common {
        event_id: get(f.event_id),
        event_time_ms: f.event_time_ms,
        job_id: get(f.job_id),
        extra: Extra::default(),
        anomalies: Anomalies::NONE,
    };
    match f.operation {
        Operation::Job(operation) => Event::Job(JobEvent {
            common,
            operation,
            status: Status::Known(f.job_status),
            target_selection: f.target_selection.map(|span| Text::str(get(span))),
            targets: f.targets.then_some(StrList(Repr::Spans {
                items: &scratch.targets,
                payload: text,
                decoded,
            })),
            description: f.description.map(|span| Text::str(get(span))),
            comment: f.comment.map(|span| Text::str(get(span))),
            created_at_ms: f.created_at_ms,
            last_updated_at_ms: f.last_updated_at_ms,
            completed_at_ms: f.completed_at_ms,
            process_details: f.process_details,
        }),
        Operation::Execution(operation) => Event::Execution(JobExecutionEvent {
            common,
            operation,
            status: Status::Known(f.execution_status),
            thing_arn: f.thing_arn.map(get).unwrap_or_default(),
            status_details: f.status_details.then_some(StrMap(Repr::Spans {
                items: &scratch.details,
                payload: text,
                decoded,
            })),
        }),
    }
}

/// Fields as found in one pass over the payload object, before cross-checks.
#[derive(Default)]
struct Fields<'t, 'i> {
    event_type: Option<&'i str>,
    event_id: Option<&'i str>,
    timestamp: Option<i64>,
    operation: Option<&'i str>,
    job_id: Option<&'i str>,
    status: Option<&'i str>,
    target_selection: Option<Text<'t, 'i>>,
    targets: Option<StrList<'t, 'i>>,
    description: Option<Text<'t, 'i>>,
    comment: Option<Text<'t, 'i>>,
    created_at: Option<i64>,
    last_updated_at: Option<i64>,
    completed_at: Option<i64>,
    process_details: Option<ProcessDetails>,
    process_details_object: Option<Value<'t, 'i>>,
    unknown_nested: u32,
    thing_arn: Option<&'i str>,
    status_details: Option<StrMap<'t, 'i>>,
    unknown_top: u32,
    anomalies: Anomalies,
}

// Out of line: the fast path takes nearly every event, and this path must not crowd it.
#[inline(never)]
fn validate<'t, 'i>(tape: &'t Tape<'i>, topic: TopicInfo<'_>) -> Result<Event<'t, 'i>, Reject> {
    let root = tape.as_value();
    let object = root.into_object().ok_or_else(|| {
        Reject::new(
            RejectKind::NotObject,
            format!("payload is a JSON {}, not an object", type_name(root)),
        )
    })?;
    let family = topic.family;
    let mut f = Fields::default();
    for (key, value) in object.iter() {
        if value.is_null() {
            // null is "absent": required fields then fail as missing, optional ones stay null.
            continue;
        }
        match (family, key) {
            (_, "eventType") => f.event_type = Some(string(key, value)?),
            (_, "eventId") => f.event_id = Some(string(key, value)?),
            (_, "timestamp") => f.timestamp = Some(epoch_ms(key, value)?),
            (_, "operation") => f.operation = Some(string(key, value)?),
            (_, "jobId") => f.job_id = Some(string(key, value)?),
            (_, "status") => f.status = Some(string(key, value)?),
            (Family::Job, "targetSelection") => {
                f.target_selection = Some(text(value, &mut f.anomalies))
            }
            (Family::Job, "targets") => f.targets = Some(string_list(value, &mut f.anomalies)?),
            (Family::Job, "description") => f.description = Some(text(value, &mut f.anomalies)),
            (Family::Job, "comment") => f.comment = Some(text(value, &mut f.anomalies)),
            (Family::Job, "createdAt") => f.created_at = Some(epoch_ms(key, value)?),
            (Family::Job, "lastUpdatedAt") => f.last_updated_at = Some(epoch_ms(key, value)?),
            (Family::Job, "completedAt") => f.completed_at = Some(epoch_ms(key, value)?),
            (Family::Job, "jobProcessDetails") => {
                let details = value
                    .into_object()
                    .ok_or_else(|| mistyped(key, "an object", value))?;
                let mut counters = ProcessDetails::default();
                for (name, count) in details.iter() {
                    match counters.slot(name) {
                        Some(slot) => {
                            if !count.is_null() {
                                *slot = Some(counter(name, count)?);
                            }
                        }
                        None => f.unknown_nested += 1,
                    }
                }
                f.process_details = Some(counters);
                f.process_details_object = Some(value);
            }
            (Family::Execution, "thingArn") => f.thing_arn = Some(string(key, value)?),
            (Family::Execution, "statusDetails") => {
                f.status_details = Some(string_map(value, &mut f.anomalies)?)
            }
            _ => f.unknown_top += 1,
        }
    }

    let event_type = f.event_type.ok_or_else(|| missing("eventType"))?;
    if event_type != family.event_type() {
        return Err(Reject::new(
            RejectKind::EventTypeMismatch,
            format!(
                "eventType is {event_type:?} but the topic is a {} topic",
                family.event_type()
            ),
        ));
    }
    let event_id = f.event_id.ok_or_else(|| missing("eventId"))?;
    let event_time_ms = f.timestamp.ok_or_else(|| missing("timestamp"))?;
    let job_id = f.job_id.ok_or_else(|| missing("jobId"))?;
    if job_id != topic.job_id {
        return Err(Reject::new(
            RejectKind::JobIdMismatch,
            format!(
                "jobId is {job_id:?} but the topic names job {:?}",
                topic.job_id
            ),
        ));
    }
    let operation = f.operation.ok_or_else(|| missing("operation"))?;
    if operation != topic.operation.as_str() {
        let known = match family {
            Family::Job => JobOperation::parse(operation).is_some(),
            Family::Execution => ExecutionOperation::parse(operation).is_some(),
        };
        let kind = if known {
            RejectKind::OperationMismatch
        } else {
            RejectKind::UnknownOperation
        };
        return Err(Reject::new(
            kind,
            format!(
                "operation is {operation:?} but the topic says {:?}",
                topic.operation.as_str()
            ),
        ));
    }
    let status = f.status.ok_or_else(|| missing("status"))?;
    let mut anomalies = f.anomalies;
    let extra = Extra {
        object: (f.unknown_top > 0).then_some(root),
        process_details: f.process_details_object.filter(|_| f.unknown_nested > 0),
        unknown_top: f.unknown_top,
        unknown_nested: f.unknown_nested,
    };
    match topic.operation {
        Operation::Job(operation) => {
            let status = classify(status, JobStatus::parse, &mut anomalies, |known| {
                known == operation.expected_status()
            });
            Ok(Event::Job(JobEvent {
                common: Common {
                    event_id,
                    event_time_ms,
                    job_id,
                    extra,
                    anomalies,
                },
                operation,
                status,
                target_selection: f.target_selection,
                targets: f.targets,
                description: f.description,
                comment: f.comment,
                created_at_ms: f.created_at,
                last_updated_at_ms: f.last_updated_at,
                completed_at_ms: f.completed_at,
                process_details: f.process_details,
            }))
        }
        Operation::Execution(operation) => {
            let thing_arn = f.thing_arn.ok_or_else(|| missing("thingArn"))?;
            let status = classify(status, ExecutionStatus::parse, &mut anomalies, |known| {
                operation.allows_status(known)
            });
            Ok(Event::Execution(JobExecutionEvent {
                common: Common {
                    event_id,
                    event_time_ms,
                    job_id,
                    extra,
                    anomalies,
                },
                operation,
                status,
                thing_arn,
                status_details: f.status_details,
            }))
        }
    }
}

/// A status is kept whatever it says: one AWS does not document as given, one that does not
/// fit the operation as it is. Either is flagged, never rejected: the row is still right about
/// which job, which thing and which operation.
fn classify<'i, T: Copy>(
    status: &'i str,
    parse: fn(&str) -> Option<T>,
    anomalies: &mut Anomalies,
    fits_operation: impl FnOnce(T) -> bool,
) -> Status<'i, T> {
    match parse(status) {
        Some(known) => {
            if !fits_operation(known) {
                anomalies.insert(Anomaly::StatusNotExpectedForOperation);
            }
            Status::Known(known)
        }
        None => {
            anomalies.insert(Anomaly::StatusUnknown);
            Status::Other(status)
        }
    }
}

fn missing(field: &str) -> Reject {
    Reject::new(
        RejectKind::MissingField,
        format!("required field {field:?} is missing or null"),
    )
}

fn mistyped(field: &str, expected: &str, got: Value<'_, '_>) -> Reject {
    Reject::new(
        RejectKind::MistypedField,
        format!(
            "field {field:?} must be {expected}, got a {}",
            type_name(got)
        ),
    )
}

fn type_name(value: Value<'_, '_>) -> &'static str {
    if value.is_str() {
        "string"
    } else if value.is_array() {
        "array"
    } else if value.is_object() {
        "object"
    } else if value.is_bool() {
        "boolean"
    } else if value.is_null() {
        "null"
    } else {
        "number"
    }
}

fn string<'i>(field: &str, value: Value<'_, 'i>) -> Result<&'i str, Reject> {
    value
        .into_string()
        .ok_or_else(|| mistyped(field, "a string", value))
}

fn integer(value: Value<'_, '_>) -> Option<i64> {
    if value.is_i64() {
        value.as_i64()
    } else if value.is_u64() {
        value.as_u64().and_then(|n| i64::try_from(n).ok())
    } else {
        None
    }
}

fn counter(field: &str, value: Value<'_, '_>) -> Result<i64, Reject> {
    match integer(value) {
        Some(n) if n >= 0 => Ok(n),
        Some(n) => Err(Reject::new(
            RejectKind::MistypedField,
            format!("jobProcessDetails.{field} must not be negative, got {n}"),
        )),
        None => Err(mistyped(
            &format!("jobProcessDetails.{field}"),
            "an integer",
            value,
        )),
    }
}

/// An epoch time in seconds or milliseconds (see [`SECONDS_BELOW`]) as milliseconds.
fn epoch_ms(field: &str, value: Value<'_, '_>) -> Result<i64, Reject> {
    let n = integer(value).ok_or_else(|| mistyped(field, "an integer epoch time", value))?;
    match crate::time::epoch_ms(n) {
        Some(ms) => Ok(ms),
        None => Err(Reject::new(
            RejectKind::MistypedField,
            format!("field {field:?} is {n}, not an epoch time between 1970 and 9999"),
        )),
    }
}

/// An optional string field: a non-string is kept as its JSON text, flagged.
fn text<'t, 'i>(value: Value<'t, 'i>, anomalies: &mut Anomalies) -> Text<'t, 'i> {
    if !value.is_str() {
        anomalies.insert(Anomaly::FieldNotString);
    }
    Text::of(value)
}

fn string_list<'t, 'i>(
    value: Value<'t, 'i>,
    anomalies: &mut Anomalies,
) -> Result<StrList<'t, 'i>, Reject> {
    let array = value
        .into_array()
        .ok_or_else(|| mistyped("targets", "an array", value))?;
    if !array.iter().all(|item| item.is_str()) {
        anomalies.insert(Anomaly::TargetNotString);
    }
    Ok(StrList(Repr::Tape(value)))
}

fn string_map<'t, 'i>(
    value: Value<'t, 'i>,
    anomalies: &mut Anomalies,
) -> Result<StrMap<'t, 'i>, Reject> {
    let object = value
        .into_object()
        .ok_or_else(|| mistyped("statusDetails", "an object", value))?;
    if !object.iter().all(|(_, v)| v.is_str()) {
        anomalies.insert(Anomaly::StatusDetailsValueNotString);
    }
    Ok(StrMap(Repr::Tape(value)))
}
