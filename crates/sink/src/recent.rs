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

use std::collections::HashMap;
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

/// An event id as a key: AWS's ids are UUIDs, kept as their 128 bits (no allocation, and
/// exact: the canonical text and the number map one to one); anything else as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Uuid(u128),
    Text(Box<str>),
}

impl Key {
    fn of(event_id: &str) -> Key {
        parse_uuid(event_id).map_or_else(|| Key::Text(event_id.into()), Key::Uuid)
    }
}

/// The 128 bits of a UUID in canonical lowercase form (`8-4-4-4-12` hex digits); `None` for
/// any other text, including uppercase, so that two different texts never share a key.
fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    if bytes[8] != b'-' || bytes[13] != b'-' || bytes[18] != b'-' || bytes[23] != b'-' {
        return None;
    }
    let mut value = 0u128;
    let mut bad = 0u8;
    for &b in bytes[..8]
        .iter()
        .chain(&bytes[9..13])
        .chain(&bytes[14..18])
        .chain(&bytes[19..23])
        .chain(&bytes[24..])
    {
        let digit = HEX[usize::from(b)];
        bad |= digit;
        value = (value << 4) | u128::from(digit & 0x0f);
    }
    // One test for all 32 digits: a byte that is not a lowercase hex digit maps to 0x10.
    (bad & 0x10 == 0).then_some(value)
}

/// Hex digit values by byte; 0x10 marks a byte that is not a lowercase hex digit.
const HEX: [u8; 256] = {
    let mut table = [0x10u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// A hasher for [`Key`]s: UUIDs are random already, so their bits are the hash; text gets
/// FNV-1a. No protection against chosen collisions is needed: AWS picks the ids.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
}

type KeyMap = HashMap<Key, u64, std::hash::BuildHasherDefault<KeyHasher>>;

/// The event ids at the last `window` offsets of one partition.
///
/// Two generations of `window` offsets each: the current one, `[g·window, (g+1)·window)`,
/// and the one before it, which together always cover `[o - window, o)`. Moving to the next
/// generation drops the oldest whole, so no id is ever removed one by one (hash tables pay
/// for single removals with tombstones and rehashing).
///
/// Bound: at most two generations of `window` ids (about 50 bytes each for UUIDs).
#[derive(Debug)]
pub struct RecentIds {
    window: u64,
    generation: u64,
    current: KeyMap,
    previous: KeyMap,
}

impl RecentIds {
    /// Ids of the last `window` offsets; 0 keeps none (every copy is written).
    pub fn new(window: u64) -> Self {
        RecentIds {
            window,
            generation: 0,
            current: KeyMap::default(),
            previous: KeyMap::default(),
        }
    }

    /// Notes `event_id` at `offset` (offsets only grow) and says whether a copy sits within
    /// the window before it: `true` means drop this record.
    pub fn seen_before(&mut self, event_id: &str, offset: u64) -> bool {
        if self.window == 0 {
            return false;
        }
        let generation = offset / self.window;
        if generation != self.generation {
            if generation == self.generation + 1 {
                std::mem::swap(&mut self.previous, &mut self.current);
            } else {
                self.previous.clear();
            }
            self.current.clear();
            self.generation = generation;
        }
        let floor = offset.saturating_sub(self.window);
        let key = Key::of(event_id);
        let in_previous = self.previous.get(&key).copied();
        let earlier = self.current.insert(key, offset).or(in_previous);
        earlier.is_some_and(|at| at >= floor && at < offset)
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
    let failed = |what: &str| {
        SinkError::kafka(format!(
            "re-reading the last {window} records of {topic}/{partition} for duplicates: {what}"
        ))
    };
    let mut config = kafka.consumer_config(group_id)?;
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().map_err(failed("consumer"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .map_err(failed("watermarks"))?;
    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
    let resume = resume.min(high);
    let start = resume.saturating_sub(window).max(low);
    if start >= resume {
        return Ok(recent);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start as i64))
        .map_err(failed("assignment"))?;
    consumer.assign(&assignment).map_err(failed("assignment"))?;
    let mut parser = Parser::new(parser_config.clone());
    let deadline = Instant::now() + PRIME_TIMEOUT;
    loop {
        if Instant::now() > deadline {
            return Err(SinkError::RereadTimeout {
                topic: topic.to_owned(),
                partition,
                resume,
                within: PRIME_TIMEOUT,
            });
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            // Read to the end: nothing more before `resume`.
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => return Ok(recent),
            Err(e) => return Err(failed("fetch")(e)),
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
    fn uuids_become_their_bits_and_other_text_stays_text() {
        assert_eq!(
            parse_uuid("568d2ade-2e9c-46e6-a115-18afa1286b06"),
            Some(0x568d2ade_2e9c_46e6_a115_18afa1286b06)
        );
        for other in [
            "568D2ADE-2E9C-46E6-A115-18AFA1286B06",
            "568d2ade2e9c46e6a11518afa1286b06",
            "568d2ade-2e9c-46e6-a115-18afa1286b0g",
            "event-1",
        ] {
            assert_eq!(parse_uuid(other), None, "{other}");
        }
        let mut recent = RecentIds::new(10);
        assert!(!recent.seen_before("568d2ade-2e9c-46e6-a115-18afa1286b06", 0));
        assert!(
            !recent.seen_before("568D2ADE-2E9C-46E6-A115-18AFA1286B06", 1),
            "another text is another id"
        );
        assert!(recent.seen_before("568d2ade-2e9c-46e6-a115-18afa1286b06", 2));
    }

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
