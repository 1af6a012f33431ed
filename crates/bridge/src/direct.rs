//! Direct MQTT → Parquet, without Kafka (`jobstream run --mqtt URL --parquet DIR`).
//!
//! One writer thread takes the hand-off batches, parses each message, and appends it to a
//! [`ParquetSink`] whose source is `mqtt-<client id>`. Every message gets the next input
//! position; a QoS 1 message is acknowledged once every position up to its own is durable: in a
//! published file (atomic rename after fsync), in the fsynced DLQ file, or dropped as a
//! duplicate. Positions continue across runs (from the highest one published), so file names
//! never repeat.
//!
//! The trade-off: acknowledgements wait for files to be published, so the broker holds up to a
//! roll interval of messages unacknowledged. Files therefore roll often (`max_file_age`,
//! default 5 s here), and the broker must allow that many messages in flight (mosquitto's
//! `max_inflight_messages`; AWS IoT Core allows 100 per connection, which caps this mode at
//! about 100 messages per roll interval per connection — use Kafka in between for more).
//!
//! A crash between a file's rename and its PUBACKs makes the broker redeliver messages that
//! are already in a file. The next run reads the event ids of the newest published files into
//! the duplicate window first, so those redeliveries are dropped instead of written twice.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel as xchan;
use jobstream_metrics::Throttle;
use jobstream_parser::columnar::Provenance;
use jobstream_parser::{Family, Parser, ParserConfig, Reject};
use jobstream_sink::dlq::{DlqLog, DlqRecord};
use jobstream_sink::parquet::store::Location;
use jobstream_sink::parquet::{ParquetConfig, ParquetSink};
use jobstream_sink::{CrashPoint, SinkError};
use tokio::sync::mpsc;

use crate::dedup::DedupWindow;
use crate::handoff::{Completion, Inbound, Token};
use crate::rejects::{note_reject, oversized_reject};
use crate::stats::BridgeStats;
use crate::BridgeError;

/// How often the writer publishes due files and releases acknowledgements when no message
/// arrives: the latency floor of an acknowledgement in a quiet period.
const TICK: Duration = Duration::from_millis(200);

/// Roll interval in this mode unless configured: acknowledgements wait for it.
pub const DEFAULT_DIRECT_FILE_AGE: Duration = Duration::from_secs(5);

/// The writer's state, made before any connection so that a bad directory fails the start.
pub(crate) struct DirectWriter {
    sink: ParquetSink,
    dlq: DlqLog,
    next: u64,
    files_published: u64,
    crash: CrashPoint,
}

impl DirectWriter {
    /// Opens the sink for `client_id`'s source under `parquet.root` (removing temporaries a
    /// crash left), the DLQ file `<root>/dlq/mqtt-<client id>.jsonl`, and fills `dedup` with
    /// the event ids of the newest published files.
    pub(crate) fn open(
        parquet: ParquetConfig,
        client_id: &str,
        dedup: &DedupWindow,
        dedup_capacity: usize,
        crash: CrashPoint,
    ) -> Result<Self, BridgeError> {
        let source = format!("mqtt-{client_id}");
        let location =
            Location::parse(&parquet.root, &parquet.storage.0).map_err(BridgeError::Parquet)?;
        // Rejects are appended to a local file: beside the tables, or for an object store in
        // the staging directory (an object cannot be appended to).
        let dlq_root = parquet.local_dir();
        let sink = ParquetSink::new(parquet, &source).map_err(BridgeError::Parquet)?;
        let next = sink.published_up_to().map_or(0, |last| last + 1);
        let mut seen = jobstream_sink::seen::recent_event_ids(&location, &source, dedup_capacity)
            .map_err(BridgeError::Parquet)?;
        seen.truncate(dedup_capacity);
        // Oldest first, so that the window forgets those first.
        for id in seen.iter().rev() {
            dedup.first_time(id);
        }
        if !seen.is_empty() {
            tracing::info!(
                event_ids = seen.len(),
                resume_at = next,
                "remembered the newest published events: their redeliveries are duplicates"
            );
        }
        let dlq_path = dlq_root.join("dlq").join(format!(
            "{}.jsonl",
            jobstream_sink::parquet::sanitize_source(&source)
        ));
        Ok(DirectWriter {
            sink,
            dlq: DlqLog::open(&dlq_path).map_err(BridgeError::Parquet)?,
            next,
            files_published: 0,
            crash,
        })
    }

    /// Runs until `batches` closes (the drain), then publishes every open file and completes
    /// what is left. An I/O error ends it; what was not completed stays unacknowledged.
    pub(crate) fn run(
        mut self,
        parser_config: ParserConfig,
        batches: &xchan::Receiver<Vec<Inbound>>,
        dedup: &DedupWindow,
        stats: &BridgeStats,
        completions: &[mpsc::Sender<Completion>],
        throttle: &Throttle,
    ) -> Result<(), BridgeError> {
        let mut parser = Parser::new(parser_config);
        let mut pending: VecDeque<(u64, Token)> = VecDeque::new();
        let mut unsynced_rejects = 0u64;
        loop {
            match batches.recv_timeout(TICK) {
                Ok(batch) => {
                    stats.handoff_queue.set(batches.len() as i64);
                    for message in batch {
                        let position = self.next;
                        self.next += 1;
                        let (sink, dlq) = (&mut self.sink, &mut self.dlq);
                        let result = match message.oversized {
                            Some(size) => write_reject(
                                dlq,
                                stats,
                                throttle,
                                &message,
                                &oversized_reject(size, message.payload.len()),
                            )
                            .map(|()| {
                                unsynced_rejects += 1;
                                sink.mark_consumed(position + 1);
                            }),
                            None => parser.parse(&message.topic, &message.payload, |outcome| {
                                match outcome {
                                    Ok(event) => {
                                        stats.event(&event);
                                        if !dedup.first_time(event.common().event_id) {
                                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                                            sink.mark_consumed(position + 1);
                                            return Ok(());
                                        }
                                        let provenance = Provenance {
                                            mqtt_topic: Some(&message.topic),
                                            received_at_ms: Some(message.received_at_ms),
                                        };
                                        sink.append(&event, &provenance, position).map(|_| ())
                                    }
                                    Err(reject) => {
                                        write_reject(dlq, stats, throttle, &message, &reject)?;
                                        unsynced_rejects += 1;
                                        sink.mark_consumed(position + 1);
                                        Ok(())
                                    }
                                }
                            }),
                        };
                        result.map_err(BridgeError::Parquet)?;
                        if let Some(token) = message.token {
                            pending.push_back((position, token));
                        }
                    }
                }
                Err(xchan::RecvTimeoutError::Timeout) => {}
                Err(xchan::RecvTimeoutError::Disconnected) => break,
            }
            self.sink
                .tick(Instant::now())
                .map_err(BridgeError::Parquet)?;
            let durable = self.sink.lowest_pending_position().unwrap_or(self.next);
            self.files_published += count_published(&mut self.sink, stats);
            self.crash
                .published(self.files_published, "acknowledgement");
            release(
                durable,
                &mut pending,
                &mut self.dlq,
                &mut unsynced_rejects,
                stats,
                completions,
            )?;
        }
        let next = self.next;
        for file in self.sink.finish().map_err(BridgeError::Parquet)? {
            count_file(file.family, file.rows, stats);
        }
        release(
            next,
            &mut pending,
            &mut self.dlq,
            &mut unsynced_rejects,
            stats,
            completions,
        )
    }
}

/// Counts the rows of the files published since the last call; returns how many files.
fn count_published(sink: &mut ParquetSink, stats: &BridgeStats) -> u64 {
    let mut files = 0;
    if sink.has_published() {
        for file in sink.take_published() {
            count_file(file.family, file.rows, stats);
            files += 1;
        }
    }
    files
}

fn count_file(family: Family, rows: u64, stats: &BridgeStats) {
    let counter = match family {
        Family::Job => &stats.produced_jobs,
        Family::Execution => &stats.produced_executions,
    };
    counter.fetch_add(rows, Ordering::Relaxed);
    stats.files_published.inc();
}

/// Completes every pending message below `durable`, after making the DLQ durable (a reject
/// among them is acknowledged only once its record is on disk).
fn release(
    durable: u64,
    pending: &mut VecDeque<(u64, Token)>,
    dlq: &mut DlqLog,
    unsynced_rejects: &mut u64,
    stats: &BridgeStats,
    completions: &[mpsc::Sender<Completion>],
) -> Result<(), BridgeError> {
    if *unsynced_rejects > 0 {
        dlq.sync().map_err(BridgeError::Parquet)?;
        stats
            .rejected
            .fetch_add(*unsynced_rejects, Ordering::Relaxed);
        *unsynced_rejects = 0;
    }
    while let Some(&(position, token)) = pending.front() {
        if position >= durable {
            break;
        }
        pending.pop_front();
        // Never full: completions are bounded by the unacknowledged messages of a connection.
        let _ = completions[usize::from(token.conn)].blocking_send(Completion::Done(token));
    }
    Ok(())
}

/// Counts `reject`, logs it (throttled) and appends it to the DLQ file (fsynced later, before
/// its acknowledgement).
fn write_reject(
    dlq: &mut DlqLog,
    stats: &BridgeStats,
    throttle: &Throttle,
    message: &Inbound,
    reject: &Reject,
) -> Result<(), SinkError> {
    note_reject(stats, throttle, &message.topic, reject, "DLQ file");
    dlq.write(&DlqRecord::new(
        &message.topic,
        &message.payload,
        reject.kind.as_str(),
        &reject.message,
        None,
    ))
}
