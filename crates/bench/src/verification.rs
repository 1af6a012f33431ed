//! Loss and duplicates: what was published against what Kafka holds, by event id.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::error::{BenchError, KafkaContext as _};
use rdkafka::consumer::Consumer;
use rdkafka::{Message as _, Offset, Timestamp, TopicPartitionList};

use super::result::RunResult;
use super::runner::Bench;
use super::sampling::{consumer, partitions_list, watermarks};
use super::statistics::latency;

/// What was published for one run: event ids, payload bytes, and the latency stream's
/// publish times.
#[derive(Debug, Default)]
pub(super) struct Published {
    pub(super) backlog: HashSet<String>,
    pub(super) bytes: u64,
    /// Each event of the latency stream, with when it was handed to the MQTT client in
    /// milliseconds since the Unix epoch (the clock Kafka stamps `LogAppendTime` with).
    pub(super) latency_sent: HashMap<String, f64>,
}

pub(super) fn event_id(payload: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"eventId\":\"";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[start..start + len]).ok()
}

impl Bench {
    pub(super) fn check_kafka(
        &self,
        topics: &[String],
        published: &Published,
        result: &mut RunResult,
    ) -> Result<(), BenchError> {
        let consumer = consumer(&self.kafka, &self.kafka_options)?;
        let list = partitions_list(&topics[..2], self.args.partitions)?;
        let ends = watermarks(&consumer, &list)?;
        let total = ends.iter().sum::<i64>().max(0) as u64;
        let expected = (published.backlog.len() + published.latency_sent.len()) as u64;
        result.kafka_records = Some(total);
        if total > self.args.verify_ids_up_to {
            // Past the limit the ids would not fit the memory we allow ourselves: count instead.
            // Counts cannot tell one loss plus one duplicate from neither; the event-id check
            // below can.
            result.verified_by = "counts".to_owned();
            result.lost = Some(expected.saturating_sub(total));
            result.duplicated = Some(total.saturating_sub(expected));
            return Ok(());
        }
        result.verified_by = "event ids".to_owned();
        let mut assignment = TopicPartitionList::new();
        for element in list.elements() {
            assignment
                .add_partition_offset(element.topic(), element.partition(), Offset::Beginning)
                .kafka("listing the run's partitions")?;
        }
        consumer
            .assign(&assignment)
            .kafka("assigning the run's partitions")?;
        let index_of = |topic: &str, partition: i32| -> Option<usize> {
            let t = topics.iter().position(|t| t == topic)?;
            Some(t * self.args.partitions as usize + usize::try_from(partition).ok()?)
        };
        let mut next = vec![0i64; ends.len()];
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut records = 0u64;
        let mut latencies: Vec<f64> = Vec::with_capacity(published.latency_sent.len());
        let deadline = Instant::now() + Duration::from_secs(600);
        while next.iter().zip(&ends).any(|(n, e)| n < e) {
            if Instant::now() > deadline {
                return Err(BenchError::Run(
                    "reading the run's topics back took over 10 minutes".into(),
                ));
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.kafka("reading the run's topics back")?;
            let Some(slot) = index_of(message.topic(), message.partition()) else {
                continue;
            };
            next[slot] = next[slot].max(message.offset() + 1);
            records += 1;
            let Some(id) = message.payload().and_then(event_id) else {
                continue;
            };
            let count = seen.entry(id.to_owned()).or_default();
            *count += 1;
            // The first copy's append time: a duplicate's would say when it was resent.
            if let (1, Some(sent), Timestamp::LogAppendTime(appended)) =
                (*count, published.latency_sent.get(id), message.timestamp())
            {
                latencies.push(appended as f64 - sent);
            }
        }
        let mut lost = 0u64;
        let mut duplicated = 0u64;
        for id in published
            .backlog
            .iter()
            .chain(published.latency_sent.keys())
        {
            match seen.get(id) {
                None | Some(0) => lost += 1,
                Some(&c) => duplicated += c - 1,
            }
        }
        let known: u64 = published
            .backlog
            .iter()
            .chain(published.latency_sent.keys())
            .filter_map(|id| seen.get(id))
            .sum();
        result.kafka_records = Some(records);
        latency(latencies, result);
        result.lost = Some(lost);
        result.duplicated = Some(duplicated);
        result.unexpected = Some(records - known);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_read_from_the_payload_and_none_without_one() {
        assert_eq!(
            event_id(br#"{"eventType":"JOB","eventId":"abc-1","x":1}"#),
            Some("abc-1")
        );
        assert_eq!(event_id(b"{}"), None);
    }
}
