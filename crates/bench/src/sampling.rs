//! What is read while a contender runs: its processes' CPU and memory from /proc, and Kafka's
//! high watermarks from a thread of its own (progress, completion and latency).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext as _, KafkaContext as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// CPU seconds and peak RSS of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ProcUsage {
    pub(super) cpu_s: f64,
    pub(super) hwm_kb: u64,
    pub(super) zombie: bool,
}

/// Linux reports times in USER_HZ, which is 100 on every architecture Linux supports today.
pub(super) const USER_HZ: f64 = 100.0;

pub(super) fn proc_usage(pid: u32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z");
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let hwm_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    Some(ProcUsage {
        cpu_s: (utime + stime) / USER_HZ,
        hwm_kb,
        zombie,
    })
}

/// One watermark sample: when it came back, and the high watermark of each partition.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) at: Instant,
    /// One past the last record of each partition.
    pub(super) watermarks: Vec<i64>,
}

/// Polls the high watermarks of a contender's topics from a thread of its own.
#[derive(Debug)]
pub(super) struct Sampler {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) total: Arc<AtomicU64>,
    pub(super) samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    pub(super) handle: std::thread::JoinHandle<()>,
}

pub(super) fn consumer(
    brokers: &str,
    options: &[(String, String)],
) -> Result<BaseConsumer, BenchError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("jobstream-bench-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.wait.max.ms", "100");
    for (key, value) in options {
        if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") {
            config.set(key, value);
        }
    }
    config.create().kafka("creating a Kafka consumer")
}

pub(super) fn partitions_list(
    topics: &[String],
    partitions: i32,
) -> Result<TopicPartitionList, BenchError> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..partitions {
            // The offset field carries the timestamp for ListOffsets: -1 is "latest".
            list.add_partition_offset(topic, partition, Offset::End)
                .kafka("listing the partitions to sample")?;
        }
    }
    Ok(list)
}

pub(super) fn watermarks(
    consumer: &BaseConsumer,
    list: &TopicPartitionList,
) -> Result<Vec<i64>, BenchError> {
    let answer = consumer
        .offsets_for_times(list.clone(), Duration::from_secs(10))
        .kafka("reading Kafka watermarks")?;
    Ok(answer
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .collect())
}

impl Sampler {
    pub(super) fn start(
        brokers: &str,
        options: &[(String, String)],
        topics: &[String],
        partitions: i32,
        every: Duration,
    ) -> Result<Self, BenchError> {
        let consumer = consumer(brokers, options)?;
        let list = partitions_list(topics, partitions)?;
        // New topics: the broker may not have elected their leaders yet (NotLeaderForPartition,
        // UnknownTopicOrPartition) for a moment after CreateTopics answered. The contender is
        // not started before every partition answers, so the drain's clock starts on a
        // topic that is ready.
        let ready_by = Instant::now() + Duration::from_secs(30);
        while let Err(error) = watermarks(&consumer, &list) {
            if Instant::now() > ready_by {
                return Err(error);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
        let (thread_stop, thread_total, thread_samples) =
            (Arc::clone(&stop), Arc::clone(&total), Arc::clone(&samples));
        let handle = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    if let Ok(watermarks) = watermarks(&consumer, &list) {
                        let at = Instant::now();
                        let mut samples = thread_samples
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let sample = Sample { at, watermarks };
                        let sum: i64 = sample.watermarks.iter().sum();
                        thread_total.store(sum.max(0) as u64, Ordering::Relaxed);
                        samples.push(sample);
                    }
                    std::thread::sleep(every);
                }
            })
            .io("starting the sampler thread")?;
        Ok(Sampler {
            stop,
            total,
            samples,
            handle,
        })
    }

    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// When the first sample taken after `since` showed at least `n` records.
    pub(super) fn reached(&self, n: u64, since: Instant) -> Option<Instant> {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples
            .iter()
            .filter(|s| s.at >= since)
            .find(|s| s.watermarks.iter().sum::<i64>().max(0) as u64 >= n)
            .map(|s| s.at)
    }

    pub(super) fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        std::mem::take(
            &mut *self
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
