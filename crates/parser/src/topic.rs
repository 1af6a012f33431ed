//! MQTT topic → (family, job id, operation).

use crate::model::{ExecutionOperation, Family, JobOperation};
use crate::reject::{Reject, RejectKind};

/// The prefix AWS IoT publishes job events under.
pub const DEFAULT_PREFIX: &str = "$aws/events/";

/// What a topic says about the event it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo<'a> {
    /// Which table the event belongs to.
    pub family: Family,
    /// The job id segment.
    pub job_id: &'a str,
    /// The operation segment, already known to be valid for the family.
    pub operation: Operation,
}

/// An operation of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// An operation of a JOB event.
    Job(JobOperation),
    /// An operation of a JOB_EXECUTION event.
    Execution(ExecutionOperation),
}

impl Operation {
    /// The operation as it is spelled in topics and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Job(op) => op.as_str(),
            Operation::Execution(op) => op.as_str(),
        }
    }
}

/// Splits topics of the form `<prefix>job/<jobId>/<operation>` and
/// `<prefix>jobExecution/<jobId>/<operation>`.
#[derive(Debug, Clone)]
pub struct TopicParser {
    prefix: String,
}

impl Default for TopicParser {
    fn default() -> Self {
        TopicParser::new(DEFAULT_PREFIX)
    }
}

impl TopicParser {
    /// A parser for topics under `prefix` (for example `$aws/events/`, or `fleet/events/` for
    /// events relayed through a local broker). A missing trailing `/` is added.
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        TopicParser { prefix }
    }

    /// The prefix, always ending in `/` (or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Parses a topic.
    ///
    /// # Errors
    /// [`RejectKind::UnknownTopic`] when the topic is not under the prefix or not of one of the
    /// two shapes; [`RejectKind::UnknownOperation`] when the operation segment is not one the
    /// family has.
    pub fn parse<'a>(&self, topic: &'a str) -> Result<TopicInfo<'a>, Reject> {
        match self.parse_common(topic) {
            Some(info) => Ok(info),
            None => self.parse_any(topic),
        }
    }

    /// The well-formed case, with fewer passes over the bytes than [`Self::parse_any`] (which
    /// decides every reject): the prefix compared in words, the kind segment matched as a
    /// whole, the operation found from the end, the job id checked for `/` eight bytes at a
    /// time. `None` sends the topic to the general code.
    #[inline]
    fn parse_common<'a>(&self, topic: &'a str) -> Option<TopicInfo<'a>> {
        let bytes = topic.as_bytes();
        let prefix = self.prefix.as_bytes();
        if !crate::bytes::same(bytes.get(..prefix.len())?, prefix) {
            return None;
        }
        let rest = topic.get(prefix.len()..)?;
        let (family, rest) = if crate::bytes::is(rest.as_bytes(), 0, b"job/") {
            (Family::Job, rest.get(4..)?)
        } else if crate::bytes::is(rest.as_bytes(), 0, b"jobExecution/") {
            (Family::Execution, rest.get(13..)?)
        } else {
            return None;
        };
        // The first slash ends the job id. A second one would be inside the operation, which
        // then matches none of the known ones: exactly one slash, as the general path requires.
        let slash = crate::bytes::find_byte(rest.as_bytes(), b'/')?;
        let job_id = rest.get(..slash)?;
        let op = rest.get(slash + 1..)?;
        if job_id.is_empty() {
            return None;
        }
        let operation = match family {
            Family::Job => Operation::Job(JobOperation::parse(op)?),
            Family::Execution => Operation::Execution(ExecutionOperation::parse(op)?),
        };
        Some(TopicInfo {
            family,
            job_id,
            operation,
        })
    }

    fn parse_any<'a>(&self, topic: &'a str) -> Result<TopicInfo<'a>, Reject> {
        let rest = topic.strip_prefix(self.prefix.as_str()).ok_or_else(|| {
            Reject::new(
                RejectKind::UnknownTopic,
                format!("topic {topic:?} is not under the prefix {:?}", self.prefix),
            )
        })?;
        // One pass over the bytes: topics are short, and a memchr call per segment costs more
        // than it saves at this length.
        let mut slashes = [0usize; 2];
        let mut found = 0;
        for (i, &b) in rest.as_bytes().iter().enumerate() {
            if b == b'/' {
                if found == 2 {
                    return Err(unknown_shape(topic, &self.prefix));
                }
                slashes[found] = i;
                found += 1;
            }
        }
        if found != 2 {
            return Err(unknown_shape(topic, &self.prefix));
        }
        let kind = &rest[..slashes[0]];
        let job_id = &rest[slashes[0] + 1..slashes[1]];
        let op = &rest[slashes[1] + 1..];
        if job_id.is_empty() {
            return Err(Reject::new(
                RejectKind::UnknownTopic,
                format!("topic {topic:?} has an empty job id"),
            ));
        }
        let (family, operation) = match kind {
            "job" => (
                Family::Job,
                JobOperation::parse(op).map(Operation::Job).ok_or_else(|| {
                    Reject::new(
                        RejectKind::UnknownOperation,
                        format!("{op:?} is not a job operation (topic {topic:?})"),
                    )
                })?,
            ),
            "jobExecution" => (
                Family::Execution,
                ExecutionOperation::parse(op)
                    .map(Operation::Execution)
                    .ok_or_else(|| {
                        Reject::new(
                            RejectKind::UnknownOperation,
                            format!("{op:?} is not a job execution operation (topic {topic:?})"),
                        )
                    })?,
            ),
            _ => return Err(unknown_shape(topic, &self.prefix)),
        };
        Ok(TopicInfo {
            family,
            job_id,
            operation,
        })
    }
}

fn unknown_shape(topic: &str, prefix: &str) -> Reject {
    Reject::new(
        RejectKind::UnknownTopic,
        format!(
            "topic {topic:?} is neither {prefix}job/<jobId>/<operation> nor {prefix}jobExecution/<jobId>/<operation>"
        ),
    )
}
