//! Every `eventId` once in the files: the Parquet stage's duplicate rule.
//!
//! The bridge is at-least-once, so a partition can hold one event twice (a redelivery after a
//! crash, an AWS duplicate the bridge's window missed). Copies share a partition, since the
//! record key is the `jobId`. The rule: **a record is dropped when a valid event with the same
//! `eventId` sits at one of the `window` offsets before it in the same partition.** It is a
//! function of the partition's contents alone — not of when the stage started, crashed or was
//! rebalanced — so a rerun writes the same rows into files of the same names.
//!
//! To decide for the record at offset `o` after a restart at `o`, the stage needs the ids at
//! `[o - window, o)`: [`prime`] re-reads them from Kafka (what retention deleted cannot hold
//! a copy anyway, as long as retention keeps more than `window` records).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use jobstream_parser::{Parser, ParserConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::kafka::KafkaConfig;
use crate::SinkError;

/// The default `window`: offsets per partition looked back at. AWS redelivers within seconds,
/// and a bridge's redeliveries after a crash stay within its in-flight window; 100,000
/// records is minutes of a busy fleet per partition.
pub const DEFAULT_WINDOW: u64 = 100_000;

/// How long re-reading a partition's recent records may take at assignment.
const PRIME_TIMEOUT: Duration = Duration::from_secs(120);

/// The event ids at the last `window` offsets of one partition.
///
/// Bound: one entry per offset in the window (about 100 bytes each).
#[derive(Debug)]
pub struct RecentIds {
    window: u64,
    latest: HashMap<Box<str>, u64>,
    order: VecDeque<(u64, Box<str>)>,
}

impl RecentIds {
    /// Ids of the last `window` offsets; 0 keeps none (every copy is written).
    pub fn new(window: u64) -> Self {
        RecentIds {
            window,
            latest: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Notes `event_id` at `offset` (offsets only grow) and says whether a copy sits within
    /// the window before it: `true` means drop this record.
    pub fn seen_before(&mut self, event_id: &str, offset: u64) -> bool {
        if self.window == 0 {
            return false;
        }
        let floor = offset.saturating_sub(self.window);
        while let Some((oldest, _)) = self.order.front() {
            if *oldest >= floor {
                break;
            }
            if let Some((oldest, id)) = self.order.pop_front() {
                if self.latest.get(&id) == Some(&oldest) {
                    self.latest.remove(&id);
                }
            }
        }
        let duplicate = self
            .latest
            .get(event_id)
            .is_some_and(|&at| at >= floor && at < offset);
        let id: Box<str> = event_id.into();
        self.latest.insert(id.clone(), offset);
        self.order.push_back((offset, id));
        duplicate
    }
}

/// Re-reads `[resume - window, resume)` of `topic`/`partition` (from the earliest offset Kafka
/// still holds) and returns the ids found there, ready to judge the record at `resume`.
///
/// Blocks up to two minutes; uses a consumer of its own that assigns the partition and never
/// joins or commits for the group.
///
/// # Errors
/// The partition cannot be read within the deadline.
pub fn prime(
    kafka: &KafkaConfig,
    group_id: &str,
    parser_config: &ParserConfig,
    topic: &str,
    partition: i32,
    resume: u64,
    window: u64,
) -> Result<RecentIds, SinkError> {
    let mut recent = RecentIds::new(window);
    if window == 0 || resume == 0 {
        return Ok(recent);
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        SinkError::Kafka(format!(
            "re-reading the last {window} records of {topic}/{partition} for duplicates: {what}: {e}"
        ))
    };
    let mut config = kafka.consumer_config(group_id)?;
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().map_err(|e| failed("consumer", &e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(|e| failed("watermarks", &e))?;
    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
    let resume = resume.min(high);
    let start = resume.saturating_sub(window).max(low);
    if start >= resume {
        return Ok(recent);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start as i64))
        .map_err(|e| failed("assignment", &e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| failed("assignment", &e))?;
    let mut parser = Parser::new(parser_config.clone());
    let deadline = Instant::now() + PRIME_TIMEOUT;
    loop {
        if Instant::now() > deadline {
            return Err(failed(
                "deadline",
                &format!("not read up to offset {resume} within {PRIME_TIMEOUT:?}"),
            ));
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            // Read to the end: nothing more before `resume`.
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => return Ok(recent),
            Err(e) => return Err(failed("fetch", &e)),
        };
        let offset = message.offset().max(0) as u64;
        if offset >= resume {
            return Ok(recent);
        }
        let topic_header = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "mqtt_topic")
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        });
        let (Some(mqtt_topic), Some(payload)) = (topic_header, message.payload()) else {
            continue; // a reject: never written, never a copy
        };
        parser.parse(mqtt_topic, payload, |outcome| {
            if let Ok(event) = outcome {
                recent.seen_before(event.common().event_id, offset);
            }
        });
        if offset + 1 >= resume {
            return Ok(recent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_within_the_window_is_dropped_and_one_beyond_it_is_kept() {
        let mut recent = RecentIds::new(10);
        assert!(!recent.seen_before("a", 0));
        assert!(recent.seen_before("a", 10), "10 offsets later: within");
        assert!(
            recent.seen_before("a", 20),
            "the copy at 10 counts, though it was dropped"
        );
        assert!(!recent.seen_before("a", 31), "21 offsets later: beyond");
        assert!(!RecentIds::new(0).seen_before("x", 1));
    }

    #[test]
    fn the_decision_does_not_depend_on_where_reading_started() {
        // The same partition judged in one go, and after a restart at offset 6 with the
        // window re-read: the same records are dropped.
        let ids = ["a", "b", "a", "c", "b", "d", "a", "c", "e", "d"];
        let judge = |recent: &mut RecentIds, from: usize| -> Vec<bool> {
            (from..ids.len())
                .map(|o| recent.seen_before(ids[o], o as u64))
                .collect()
        };
        let whole = judge(&mut RecentIds::new(4), 0);
        let mut restarted = RecentIds::new(4);
        for (o, id) in ids.iter().enumerate().take(6).skip(2) {
            restarted.seen_before(id, o as u64);
        }
        assert_eq!(judge(&mut restarted, 6), whole[6..]);
    }
}
