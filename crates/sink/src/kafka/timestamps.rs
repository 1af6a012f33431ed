//! The range of record timestamps a topic takes, read from its configuration so that an event
//! Kafka would refuse for its timestamp goes to the DLQ before it is ever batched.
//!
//! Why before, not after: the broker refuses a whole batch when one record in it is out of
//! range (librdkafka fails the others as `_INVALID_DIFFERENT_RECORD`). With out-of-range events
//! arriving steadily — a replay of old captures, a device or simulator whose clock runs ahead —
//! nearly every batch would hold one, and the valid events beside them would be failed again
//! and again. Kafka 4 refuses records more than an hour ahead of its clock by default
//! (`message.timestamp.after.max.ms`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use super::config::KafkaConfig;

/// How far from the broker's clock a topic lets a record's own timestamp be. A topic with
/// `message.timestamp.type=LogAppendTime` has no range: the broker stamps records itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampRange {
    /// `message.timestamp.before.max.ms`: how far behind.
    pub before_ms: i64,
    /// `message.timestamp.after.max.ms`: how far ahead.
    pub after_ms: i64,
}

/// Why a record's timestamp is out of its topic's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    /// The setting that refuses it.
    pub setting: &'static str,
    /// Its value, in milliseconds.
    pub limit_ms: i64,
    /// How far the timestamp is from this host's clock, in milliseconds (positive: ahead).
    pub offset_ms: i64,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its timestamp is {}, beyond the topic's {} of {} (raise it, or create the topic with message.timestamp.type=LogAppendTime)",
            offset_from_clock(self.offset_ms),
            self.setting,
            human(self.limit_ms.unsigned_abs()),
        )
    }
}

/// `"47 h 59 min ahead of the clock"`: how far a timestamp `offset_ms` from this host's clock is.
pub(super) fn offset_from_clock(offset_ms: i64) -> String {
    let direction = if offset_ms >= 0 { "ahead of" } else { "behind" };
    format!("{} {direction} the clock", human(offset_ms.unsigned_abs()))
}

/// `3600000` ms as `1 h 0 min`, `90061000` as `25 h 1 min`: enough to tell how far off.
fn human(ms: u64) -> String {
    let minutes = ms / 60_000;
    if minutes == 0 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    format!("{} h {} min", minutes / 60, minutes % 60)
}

impl TimestampRange {
    /// Whether a record stamped `timestamp_ms` would be taken when the clock reads `now_ms`.
    ///
    /// # Errors
    /// The timestamp is out of range, with the setting that refuses it.
    pub fn check(&self, timestamp_ms: i64, now_ms: i64) -> Result<(), OutOfRange> {
        let offset_ms = timestamp_ms.saturating_sub(now_ms);
        if offset_ms > self.after_ms {
            return Err(OutOfRange {
                setting: "message.timestamp.after.max.ms",
                limit_ms: self.after_ms,
                offset_ms,
            });
        }
        if offset_ms.saturating_neg() > self.before_ms {
            return Err(OutOfRange {
                setting: "message.timestamp.before.max.ms",
                limit_ms: self.before_ms,
                offset_ms,
            });
        }
        Ok(())
    }

    /// The range a topic's configuration entries give, `None` when the broker stamps records
    /// itself (`LogAppendTime`) or sets no limit. `entry` looks a setting up by name.
    pub fn from_topic_config<'a>(entry: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        if entry("message.timestamp.type") == Some("LogAppendTime") {
            return None;
        }
        let millis = |name: &str| entry(name).and_then(|v| v.parse::<i64>().ok());
        // Brokers before 3.6 have one limit both ways.
        let both = millis("message.timestamp.difference.max.ms");
        let range = TimestampRange {
            before_ms: millis("message.timestamp.before.max.ms")
                .or(both)
                .unwrap_or(i64::MAX),
            after_ms: millis("message.timestamp.after.max.ms")
                .or(both)
                .unwrap_or(i64::MAX),
        };
        (range.before_ms < i64::MAX || range.after_ms < i64::MAX).then_some(range)
    }
}

/// The timestamp ranges of the two event topics (DLQ records carry no timestamp of their own,
/// so the broker's clock is always in range for them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimestampRanges {
    /// The JOB topic's.
    pub jobs: Option<TimestampRange>,
    /// The JOB_EXECUTION topic's.
    pub executions: Option<TimestampRange>,
}

/// Milliseconds since the Unix epoch on this host's clock.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the event topics' timestamp ranges over `admin` (none when `read_timestamp_limits` is
/// off); [`prepare_topics`](super::prepare_topics) calls it.
///
/// A principal that may not describe topic configurations gets no ranges, and a warning:
/// records out of range then still reach the DLQ, by the broker's verdict, but each refusal
/// fails the valid records batched with it once more.
pub(super) async fn read_timestamp_ranges(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
) -> TimestampRanges {
    if !config.read_timestamp_limits {
        return TimestampRanges::default();
    }
    let topics = [
        ResourceSpecifier::Topic(&config.job_topic),
        ResourceSpecifier::Topic(&config.execution_topic),
    ];
    let timeout = config.connect_timeout.min(Duration::from_secs(10));
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = match admin.describe_configs(&topics, &options).await {
        Ok(described) => described,
        Err(error) => {
            tracing::warn!(%error, "could not read the topics' timestamp limits; records Kafka refuses for their timestamp are found one batch at a time");
            return TimestampRanges::default();
        }
    };
    let mut ranges = TimestampRanges::default();
    for result in described {
        match result {
            Ok(resource) => {
                let range = TimestampRange::from_topic_config(|name| {
                    resource.get(name).and_then(|e| e.value.as_deref())
                });
                match &resource.specifier {
                    rdkafka::admin::OwnedResourceSpecifier::Topic(name)
                        if *name == config.job_topic =>
                    {
                        ranges.jobs = range;
                    }
                    rdkafka::admin::OwnedResourceSpecifier::Topic(name)
                        if *name == config.execution_topic =>
                    {
                        ranges.executions = range;
                    }
                    _ => {}
                }
            }
            Err(code) => {
                tracing::warn!(%code, "could not read a topic's timestamp limits; records Kafka refuses for their timestamp are found one batch at a time");
            }
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn range_of(entries: &[(&'static str, &'static str)]) -> Option<TimestampRange> {
        TimestampRange::from_topic_config(|name| {
            entries.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        })
    }

    #[test]
    fn kafka_4_defaults_refuse_only_records_over_an_hour_ahead() {
        let range = range_of(&[
            ("message.timestamp.type", "CreateTime"),
            ("message.timestamp.before.max.ms", "9223372036854775807"),
            ("message.timestamp.after.max.ms", "3600000"),
        ])
        .expect("a limit ahead");
        let now = 1_800_000_000_000;
        assert_eq!(range.check(now - 400 * 24 * HOUR, now), Ok(()));
        assert_eq!(range.check(now + HOUR, now), Ok(()));
        let refused = range
            .check(now + 2 * HOUR, now)
            .expect_err("two hours ahead");
        assert_eq!(refused.setting, "message.timestamp.after.max.ms");
        assert_eq!(
            refused.to_string(),
            "its timestamp is 2 h 0 min ahead of the clock, beyond the topic's message.timestamp.after.max.ms of 1 h 0 min (raise it, or create the topic with message.timestamp.type=LogAppendTime)"
        );
    }

    #[test]
    fn a_limit_behind_refuses_old_records_and_older_brokers_limit_both_ways() {
        let range = range_of(&[("message.timestamp.difference.max.ms", "86400000")])
            .expect("limits both ways");
        let now = 1_800_000_000_000;
        let refused = range.check(now - 25 * HOUR, now).expect_err("a day old");
        assert_eq!(refused.setting, "message.timestamp.before.max.ms");
        assert!(
            refused.to_string().contains("25 h 0 min behind"),
            "{refused}"
        );
        assert!(range.check(now + 25 * HOUR, now).is_err());
    }

    #[test]
    fn log_append_time_and_unlimited_topics_have_no_range() {
        let stamped_by_broker = [
            ("message.timestamp.type", "LogAppendTime"),
            ("message.timestamp.after.max.ms", "3600000"),
        ];
        assert_eq!(range_of(&stamped_by_broker), None);
        assert_eq!(range_of(&[]), None);
    }
}
