//! Kafka → Parquet with exactly-once files: the sink stage.
//!
//! One consumer (a member of a Kafka consumer group) reads the two event topics. Every assigned
//! partition gets its own [`ParquetSink`] whose source name is `<topic>-<partition>`, so a file
//! holds rows of one partition only, and its name carries the first and last offset it holds.
//!
//! Exactly-once, step by step:
//! 1. a record is parsed by the same parser as the live pipeline (payload bytes, with the
//!    original MQTT topic and reception time from the headers) and appended to its partition's
//!    sink; a record that fails goes to the DLQ topic (delivery awaited) and never blocks;
//! 2. a file is published by fsync + atomic rename (see [`crate::parquet`]);
//! 3. only then is the partition's offset committed: the lowest offset still held in an
//!    unpublished file, or one past the last record when nothing is pending;
//! 4. on assignment (start, rebalance), the sink indexes the partition's published files; the
//!    stage resumes from the committed offset or from the resume point recorded in the newest
//!    files, whichever is further, and any record already in a published file is skipped. A
//!    crash between rename and commit therefore neither loses nor duplicates a row.
//! 5. on revocation, the partition's open files are published and its offset committed,
//!    synchronously, before the partition is released: it is never written by two members.
//!
//! Execution model: [`run`] blocks its thread. librdkafka runs the rebalance callback inside
//! `poll`, on that same thread, so the per-partition writers live behind a mutex that is
//! never contended. The stage stops when `stop` is set (only the source watches the signal):
//! it publishes what it holds, commits, and leaves the group.
//!
//! Error contract: a filesystem or encoder error stops the stage with a [`SinkError`]; what
//! was published stays published, what was not is re-read on the next start. Bad records are
//! not errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jobstream_parser::columnar::Provenance;
use jobstream_parser::{Anomalies, Anomaly, Family, Parser, ParserConfig};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::ClientContext;

use crate::kafka::{KafkaConfig, KafkaSink};
use crate::parquet::{Appended, ParquetConfig, ParquetSink, PublishedFile};
use crate::recent::RecentIds;
use crate::{CrashPoint, Refusal, SinkError};

/// DLQ kind for a record without the `mqtt_topic` header: the parser needs the topic.
pub const MISSING_TOPIC_HEADER: &str = "missing_mqtt_topic_header";

/// How long a rejected record's DLQ delivery may take before the stage gives up (and stops,
/// so that the offset past it is never committed).
const DLQ_DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of the Kafka → Parquet stage.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Brokers, topic names (the two event topics are read, rejects go to the DLQ topic) and
    /// pass-through librdkafka options.
    pub kafka: KafkaConfig,
    /// Where and how files are written; rolling on rows, bytes, age and inactivity; the
    /// consumer group (`parquet.group_id`) and the look-back for copies (`dedup_window`).
    pub parquet: ParquetConfig,
    /// Topic prefix and payload cap, as in the live pipeline.
    pub parser: ParserConfig,
    /// How often open files are checked for age and inactivity and offsets committed.
    pub tick: Duration,
    /// Stop once every assigned partition is read up to the end it had when it was assigned
    /// (backfills, benchmarks), instead of waiting for new records.
    pub stop_at_end: bool,
    /// Fault injection for the crash tests (only with the `fault-injection` feature): where
    /// the process aborts between publishing files and committing their offsets.
    #[doc(hidden)]
    pub crash: CrashPoint,
}

impl StageConfig {
    /// Defaults: one-second ticks, the default parser.
    pub fn new(kafka: KafkaConfig, parquet: ParquetConfig) -> Self {
        StageConfig {
            kafka,
            parquet,
            parser: ParserConfig::default(),
            tick: Duration::from_secs(1),
            stop_at_end: false,
            crash: CrashPoint::never(),
        }
    }

    /// Checks the whole configuration before anything connects: the files' settings, Kafka's,
    /// and the consumer options librdkafka is given.
    ///
    /// # Errors
    /// The first setting that is wrong, named as users write it.
    pub fn validate(&self) -> Result<(), SinkError> {
        self.parquet.validate()?;
        self.kafka.validate()?;
        self.kafka.consumer_config(&self.parquet.group_id)?;
        Ok(())
    }
}

/// Counters of the stage, shared with whoever reports them (stats lines, metrics).
#[derive(Debug, Default)]
pub struct StageStats {
    /// Records read from Kafka.
    pub records: AtomicU64,
    /// Rows appended to `job_events`.
    pub job_rows: AtomicU64,
    /// Rows appended to `job_execution_events`.
    pub execution_rows: AtomicU64,
    /// Records skipped because a published file already holds them (after a crash).
    pub already_published: AtomicU64,
    /// Records not written because an earlier copy of the event (same `eventId`) sits within
    /// the dedup window of their partition.
    pub duplicates: AtomicU64,
    /// Records sent to the DLQ.
    pub rejected: AtomicU64,
    /// Rows written with an anomaly, by code in [`Anomaly::ALL`] order.
    pub anomalies: [AtomicU64; Anomaly::ALL.len()],
    /// Parquet files published.
    pub files: AtomicU64,
    /// Bytes in published files.
    pub file_bytes: AtomicU64,
    /// Rows in published files.
    pub published_rows: AtomicU64,
    /// Offset commits sent.
    pub commits: AtomicU64,
    /// Partitions currently assigned to this member.
    pub assigned_partitions: AtomicU64,
    /// Records not yet read per `(topic, partition)`: the high watermark of the last fetch
    /// minus the stage's position (updated every tick). The committed offset trails by design
    /// (it moves when a file is published), so lag against it would not tell whether the stage
    /// keeps up.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// High watermark per partition from librdkafka's statistics (once a second).
    high_watermarks: Mutex<BTreeMap<(String, i32), i64>>,
}

impl StageStats {
    /// The one-line summary `run` logs every interval and prints at the end.
    pub fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "parquet: read {} | rows job {} execution {} | already published {} | duplicates {} | rejected {} | published {} rows in {} files ({} bytes) | commits {} | partitions {} | lag {}",
            get(&self.records),
            get(&self.job_rows),
            get(&self.execution_rows),
            get(&self.already_published),
            get(&self.duplicates),
            get(&self.rejected),
            get(&self.published_rows),
            get(&self.files),
            get(&self.file_bytes),
            get(&self.commits),
            get(&self.assigned_partitions),
            self.total_lag()
                .map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
        )
    }

    /// Records not yet read, summed over the assigned partitions; `None` until librdkafka has
    /// reported every assigned partition (a partition never fetched has no known end).
    pub fn total_lag(&self) -> Option<i64> {
        let lag = lock(&self.lag);
        let assigned = self.assigned_partitions.load(Ordering::Relaxed) as usize;
        (lag.len() >= assigned).then(|| lag.values().map(|l| (*l).max(0)).sum())
    }
}

struct PartitionWriter {
    sink: ParquetSink,
    /// One past the last offset dealt with.
    next: u64,
    /// The offset last committed by this member (or found committed on assignment).
    committed: Option<u64>,
    /// With `stop_at_end`: the partition's high watermark when it was assigned.
    end: Option<u64>,
    /// The event ids of the partition's last `dedup_window` offsets.
    recent: RecentIds,
}

impl PartitionWriter {
    /// The offset below which everything is durable: published, skipped, or in the DLQ.
    fn durable_up_to(&self) -> u64 {
        self.sink
            .lowest_pending_position()
            .map_or(self.next, |p| p.min(self.next))
    }
}

struct Writers {
    parquet: ParquetConfig,
    by_partition: HashMap<(String, i32), PartitionWriter>,
    /// An error raised inside a rebalance callback, which cannot return it.
    failed: Option<SinkError>,
    files_published: u64,
    crash: CrashPoint,
    stop_at_end: bool,
    /// What re-reading a partition's recent records needs (see [`crate::recent::prime`]).
    recent: RecentSettings,
}

struct RecentSettings {
    kafka: KafkaConfig,
    group_id: String,
    parser: ParserConfig,
    window: u64,
}

impl Writers {
    /// With `stop_at_end`, whether every assigned partition has been read to its end.
    fn all_at_end(&self) -> bool {
        self.stop_at_end
            && !self.by_partition.is_empty()
            && self
                .by_partition
                .values()
                .all(|w| w.end.is_some_and(|end| w.next >= end))
    }
}

struct StageContext {
    writers: Arc<Mutex<Writers>>,
    stats: Arc<StageStats>,
    /// What an ACL refusal names: the brokers, the group and the topics the stage needs.
    grants: Grants,
}

struct Grants {
    brokers: String,
    group_id: String,
    topics: [String; 3],
}

impl Grants {
    /// A refusal that ends the stage: the group and topics stay forbidden however long it
    /// retries, and a stage that reads nothing looks healthy from outside.
    fn refused(&self, reason: &str) -> SinkError {
        let [jobs, executions, dlq] = &self.topics;
        SinkError::KafkaRefused {
            brokers: self.brokers.clone(),
            refusal: Refusal::NotAuthorized,
            detail: format!(
                "{reason}; the Parquet stage needs Read on group {}, Read and Describe on topics \
                 {jobs} and {executions}, and Write and Describe on {dlq}",
                self.group_id
            ),
        }
    }
}

fn is_not_authorized(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        crate::kafka::classify_refusal(code, ""),
        Some(Refusal::NotAuthorized)
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the writers half-updated in a way that
    // matters: every file is either published or still a temporary.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClientContext for StageContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_not_authorized(error.rdkafka_error_code()) {
            lock(&self.writers)
                .failed
                .get_or_insert(self.grants.refused(reason));
        } else {
            tracing::error!(%error, reason, "kafka consumer");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut highs = lock(&self.stats.high_watermarks);
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // librdkafka reports -1001 until a fetch response told it the partition's end.
                if partition >= 0 && p.hi_offset >= 0 {
                    highs.insert((topic.clone(), partition), p.hi_offset);
                }
            }
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "{fac}: {log_message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {log_message}"),
        }
    }
}

impl ConsumerContext for StageContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut writers = lock(&self.writers);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = assign(consumer, &mut writers, tpl) {
                    tracing::error!(error = %e, "cannot take over the assigned partitions");
                    writers.failed.get_or_insert(e);
                    // Consume nothing rather than something without its published index.
                    let _ = consumer.assign(&TopicPartitionList::new());
                    return;
                }
                self.stats
                    .assigned_partitions
                    .store(writers.by_partition.len() as u64, Ordering::Relaxed);
                if let Err(e) = consumer.assign(tpl) {
                    writers.failed.get_or_insert(SinkError::Kafka {
                        action: "assigning partitions".into(),
                        source: e,
                    });
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                if let Err(e) = release(consumer, &mut writers, &self.stats, &revoked) {
                    tracing::error!(error = %e, "cannot publish the files of revoked partitions");
                    writers.failed.get_or_insert(e);
                }
                self.stats
                    .assigned_partitions
                    .store(writers.by_partition.len() as u64, Ordering::Relaxed);
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Sets up a writer per newly assigned partition and sets where each resumes.
fn assign(
    consumer: &BaseConsumer<StageContext>,
    writers: &mut Writers,
    tpl: &mut TopicPartitionList,
) -> Result<(), SinkError> {
    let committed = consumer
        .committed_offsets(tpl.clone(), Duration::from_secs(30))
        .map_err(SinkError::kafka("reading committed offsets"))?;
    for element in committed.elements() {
        let key = (element.topic().to_owned(), element.partition());
        let committed = match element.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        };
        // Encoded inline, not on an encoder thread as replay does: the commit rule takes the
        // lowest offset still held by an open file (`lowest_pending_position`), and a file
        // handed to an encoder thread is no longer open but may not be on disk yet.
        let sink = ParquetSink::new(writers.parquet.clone(), &source_name(&key.0, key.1))?;
        let resume = sink.resume_position(committed)?;
        let end = if writers.stop_at_end {
            let (_, high) = consumer
                .fetch_watermarks(&key.0, key.1, Duration::from_secs(30))
                .map_err(SinkError::kafka(format!(
                    "reading the end of {}/{}",
                    key.0, key.1
                )))?;
            Some(high.max(0) as u64)
        } else {
            None
        };
        let start = resume.or(committed).unwrap_or(0);
        let settings = &writers.recent;
        let recent = crate::recent::prime(
            &settings.kafka,
            &settings.group_id,
            &settings.parser,
            &key.0,
            key.1,
            start,
            settings.window,
        )?;
        if let Some(resume) = resume {
            tpl.set_partition_offset(&key.0, key.1, Offset::Offset(resume as i64))
                .map_err(SinkError::kafka("setting the start offset"))?;
        }
        tracing::info!(
            topic = %key.0,
            partition = key.1,
            committed = ?committed,
            resume = ?resume,
            "partition assigned"
        );
        writers.by_partition.insert(
            key,
            PartitionWriter {
                sink,
                // Before the first record arrives, where reading starts: the resume point,
                // else the committed offset (a partition with neither starts at its beginning).
                next: start,
                committed,
                end,
                recent,
            },
        );
    }
    Ok(())
}

/// Publishes and commits the revoked partitions, then forgets them.
fn release(
    consumer: &BaseConsumer<StageContext>,
    writers: &mut Writers,
    stats: &StageStats,
    revoked: &[(String, i32)],
) -> Result<(), SinkError> {
    let mut offsets = TopicPartitionList::new();
    for key in revoked {
        let Some(writer) = writers.by_partition.remove(key) else {
            continue;
        };
        let next = writer.next;
        let files = writer.sink.finish()?;
        record_published(stats, &files);
        if next > writer.committed.unwrap_or(0) {
            offsets
                .add_partition_offset(&key.0, key.1, Offset::Offset(next as i64))
                .map_err(SinkError::kafka("building offsets"))?;
        }
        tracing::info!(topic = %key.0, partition = key.1, offset = next, "partition released");
    }
    if offsets.count() > 0 {
        // During a rebalance the coordinator may refuse the commit (RebalanceInProgress). The
        // files are published either way, and the next owner resumes past them from their
        // footers, so a refused commit costs nothing but this line.
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "offsets of released partitions not committed; the next owner resumes from the published files");
            }
        }
    }
    Ok(())
}

fn record_published(stats: &StageStats, files: &[PublishedFile]) {
    for file in files {
        stats.files.fetch_add(1, Ordering::Relaxed);
        stats.file_bytes.fetch_add(file.bytes, Ordering::Relaxed);
        stats.published_rows.fetch_add(file.rows, Ordering::Relaxed);
    }
}

/// The Parquet source name of a partition: `<topic>-<partition>`. Kafka topic names use only
/// `[A-Za-z0-9._-]`, and the partition is the part after the last `-`, so two partitions never
/// share a name.
pub fn source_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// Runs the stage until `stop` is set, then publishes, commits and leaves the group.
///
/// # Errors
/// Invalid settings, Kafka unreachable at start, or a filesystem/encoder error while writing.
pub fn run(
    config: StageConfig,
    stats: Arc<StageStats>,
    stop: &AtomicBool,
) -> Result<(), SinkError> {
    config.validate()?;
    // Before joining the group: a refused connection stops the stage with what to fix.
    let grants = Grants {
        brokers: config.kafka.brokers.clone(),
        group_id: config.parquet.group_id.clone(),
        topics: [
            config.kafka.job_topic.clone(),
            config.kafka.execution_topic.clone(),
            config.kafka.dlq_topic.clone(),
        ],
    };
    let role = crate::kafka::ClientRole::Consumer {
        group_id: &config.parquet.group_id,
    };
    crate::kafka::check_connection(&config.kafka, role).map_err(|e| match e {
        SinkError::KafkaRefused {
            refusal: Refusal::NotAuthorized,
            detail,
            ..
        } => grants.refused(&detail),
        other => other,
    })?;
    let writers = Arc::new(Mutex::new(Writers {
        parquet: config.parquet.clone(),
        by_partition: HashMap::new(),
        failed: None,
        files_published: 0,
        crash: config.crash,
        stop_at_end: config.stop_at_end,
        recent: RecentSettings {
            kafka: config.kafka.clone(),
            group_id: config.parquet.group_id.clone(),
            parser: config.parser.clone(),
            window: config.parquet.dedup_window,
        },
    }));
    let context = StageContext {
        writers: writers.clone(),
        stats: stats.clone(),
        grants,
    };
    let consumer: BaseConsumer<StageContext> = config
        .kafka
        .consumer_config(&config.parquet.group_id)?
        .create_with_context(context)
        .map_err(|e| SinkError::Config {
            setting: "kafka",
            value: config.kafka.brokers.clone(),
            reason: e.to_string(),
        })?;
    consumer
        .subscribe(&[&config.kafka.job_topic, &config.kafka.execution_topic])
        .map_err(SinkError::kafka("subscribing"))?;
    let rejected_in_dlq = Arc::new(AtomicU64::new(0));
    let dlq_failed = Arc::new(AtomicU64::new(0));
    let dlq = {
        let (ok, failed) = (rejected_in_dlq.clone(), dlq_failed.clone());
        KafkaSink::new(config.kafka.clone(), move |(): (), result| {
            let counter = if result.is_durable() { &ok } else { &failed };
            counter.fetch_add(1, Ordering::Relaxed);
        })?
    };
    let mut parser = Parser::new(config.parser.clone());
    let mut next_tick = Instant::now() + config.tick;

    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let polled = consumer.poll(Duration::from_millis(100));
        let mut guard = lock(&writers);
        if let Some(e) = guard.failed.take() {
            break Err(e);
        }
        match polled {
            None => {}
            Some(Err(e)) if is_not_authorized(e.rdkafka_error_code()) => {
                break Err(consumer.context().grants.refused(&e.to_string()));
            }
            Some(Err(e)) => {
                // Transport errors are retried inside librdkafka; they are worth a line only.
                tracing::warn!(error = %e, "kafka consumer");
            }
            Some(Ok(message)) => {
                stats.records.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = handle(&mut guard, &mut parser, &dlq, &stats, &message) {
                    break Err(e);
                }
                let count = dlq_failed.load(Ordering::Relaxed);
                if count > 0 {
                    break Err(SinkError::DlqUndelivered { count });
                }
            }
        }
        if guard.all_at_end() {
            break Ok(());
        }
        let now = Instant::now();
        if now >= next_tick || guard.by_partition.values().any(|w| w.sink.has_published()) {
            if now >= next_tick {
                next_tick = now + config.tick;
            }
            if let Err(e) = tick_and_commit(&consumer, &mut guard, &stats, now) {
                break Err(e);
            }
        }
    };

    let mut guard = lock(&writers);
    match outcome {
        Ok(()) => {
            let assigned: Vec<(String, i32)> = guard.by_partition.keys().cloned().collect();
            let released = release(&consumer, &mut guard, &stats, &assigned);
            drop(guard);
            dlq.flush(DLQ_DELIVERY_TIMEOUT)?;
            released?;
            consumer.unsubscribe();
            Ok(())
        }
        Err(e) => {
            for (_, writer) in guard.by_partition.drain() {
                writer.sink.abandon();
            }
            Err(e)
        }
    }
}

/// One record: parse, append (or skip, or reject), and note it dealt with.
fn handle(
    writers: &mut Writers,
    parser: &mut Parser,
    dlq: &KafkaSink<()>,
    stats: &StageStats,
    message: &BorrowedMessage<'_>,
) -> Result<(), SinkError> {
    let key = (message.topic().to_owned(), message.partition());
    let Some(writer) = writers.by_partition.get_mut(&key) else {
        // Fetched before a revocation; the partition's new owner reads it.
        return Ok(());
    };
    let position = message.offset() as u64;
    let payload = message.payload().unwrap_or_default();
    let mut mqtt_topic = None;
    let mut received_at_ms = None;
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            match (header.key, header.value) {
                ("mqtt_topic", Some(v)) => mqtt_topic = std::str::from_utf8(v).ok(),
                ("received_at", Some(v)) => {
                    received_at_ms = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
                }
                _ => {}
            }
        }
    }
    let Some(topic) = mqtt_topic else {
        reject(
            dlq,
            stats,
            "",
            payload,
            MISSING_TOPIC_HEADER,
            "the record has no UTF-8 mqtt_topic header",
        )?;
        writer.sink.mark_consumed(position + 1);
        writer.next = position + 1;
        return Ok(());
    };
    let provenance = Provenance {
        mqtt_topic: Some(topic),
        received_at_ms,
    };
    let (sink, recent) = (&mut writer.sink, &mut writer.recent);
    let outcome = parser.parse(topic, payload, |outcome| match outcome {
        Ok(event) if recent.seen_before(event.common().event_id, position) => Ok(Ok(None)),
        Ok(event) => sink
            .append(&event, &provenance, position)
            .map(|appended| Ok(Some((event.family(), event.common().anomalies, appended)))),
        Err(reject) => Ok(Err(reject)),
    })?;
    match outcome {
        Ok(None) => {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            writer.sink.mark_consumed(position + 1);
        }
        Ok(Some((_, _, Appended::AlreadyPublished))) => {
            stats.already_published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some((family, anomalies, Appended::Written))) => {
            match family {
                Family::Job => &stats.job_rows,
                Family::Execution => &stats.execution_rows,
            }
            .fetch_add(1, Ordering::Relaxed);
            count_anomalies(stats, anomalies);
        }
        Err(r) => {
            reject(dlq, stats, topic, payload, r.kind.as_str(), &r.message)?;
            writer.sink.mark_consumed(position + 1);
        }
    }
    writer.next = position + 1;
    Ok(())
}

fn count_anomalies(stats: &StageStats, anomalies: Anomalies) {
    if anomalies.is_empty() {
        return;
    }
    for (counter, anomaly) in stats.anomalies.iter().zip(Anomaly::ALL) {
        if anomalies.contains(anomaly) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn reject(
    dlq: &KafkaSink<()>,
    stats: &StageStats,
    topic: &str,
    payload: &[u8],
    kind: &str,
    error: &str,
) -> Result<(), SinkError> {
    stats.rejected.fetch_add(1, Ordering::Relaxed);
    dlq.produce_reject(topic, payload, None, kind, error, ())?;
    // Rejects are rare here (the bridge validated the same bytes), so waiting for each one
    // keeps the rule simple: nothing past an undelivered reject is ever committed.
    dlq.flush(DLQ_DELIVERY_TIMEOUT)
}

/// Rolls files due by age or inactivity, then commits every partition whose durable offset
/// moved.
fn tick_and_commit(
    consumer: &BaseConsumer<StageContext>,
    writers: &mut Writers,
    stats: &StageStats,
    now: Instant,
) -> Result<(), SinkError> {
    let mut offsets = TopicPartitionList::new();
    let mut published_now = 0u64;
    let mut lag = lock(&stats.lag);
    lag.clear();
    for ((topic, partition), writer) in writers.by_partition.iter_mut() {
        // The high watermark of the last fetch response, from librdkafka's statistics.
        if let Some(high) = lock(&stats.high_watermarks).get(&(topic.clone(), *partition)) {
            lag.insert((topic.clone(), *partition), high - writer.next as i64);
        }
        writer.sink.tick(now)?;
        let files = writer.sink.take_published();
        published_now += files.len() as u64;
        record_published(stats, &files);
        let durable = writer.durable_up_to();
        // Committing 0 for a partition nothing was read from would only cost a request.
        if durable > writer.committed.unwrap_or(0) {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(durable as i64))
                .map_err(SinkError::kafka("building offsets"))?;
            writer.committed = Some(durable);
        }
    }
    drop(lag);
    writers.files_published += published_now;
    writers.crash.published(writers.files_published, "commit");
    if offsets.count() > 0 {
        // Asynchronous: the files are durable already, so a lost commit costs a re-read that
        // the published index turns into skips, never a duplicate.
        consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(SinkError::kafka("committing offsets"))?;
        stats.commits.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
