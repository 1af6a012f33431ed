//! A capture file through the parser into the sinks: backfills, tests, and the offline path.
//!
//! Capture format: one message per line, `TOPIC<TAB>PAYLOAD`, exactly what
//! `mosquitto_sub -t '$aws/events/#' -F '%t\t%p'` writes. A payload cannot contain a raw
//! newline in this format (mosquitto_sub would split it); JSON from AWS never does.
//!
//! Three threads: a reader hands blocks of whole lines to the parsing loop over a bounded
//! channel (at most [`BLOCKS_IN_FLIGHT`] blocks of [`BLOCK_BYTES`]), so memory stays flat
//! whatever the input size, and reading overlaps parsing; the parsing loop fills the Arrow
//! builders and hands each batch's worth of rows to the Parquet sink's encoder thread
//! ([`ParquetSink::encode_in_background`], at most [`ENCODER_QUEUE`](crate::parquet::ENCODER_QUEUE)
//! queued), which assembles, compresses and publishes them with a helper of its own.
//! Reading and parsing take about half of the work and encoding the other half (since the
//! delta encodings gave zstd less to search), so on two cores they overlap for almost all of a
//! run (97% of two cores busy on a million events). The parsing loop is the thread
//! the others wait for when they wait, so work moves off it where the data allows: the reader
//! checks each block for UTF-8 in one pass (a block with a bad byte is checked line by line),
//! and the encoder assembles the batches.
//!
//! Measured and not kept, because each lost more to cache misses than it moved: Arrow
//! `Utf8View` columns pointing into the read blocks instead of copying ids, ARNs and topics
//! (the encoder then read every value from scattered block memory, for statistics, dictionaries
//! and pages: 1.84 vs 1.43 s, a third more CPU), and JSON scanning on the reader thread (the
//! parsing thread then copied strings that were in the other core's cache: 1.36 vs 1.30 s).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobstream_parser::{Event, Family, Parser, ParserConfig, Provenance, Reject};

use crate::dlq::{DlqFile, DlqRecord};
use crate::kafka::{KafkaConfig, KafkaSink};
use crate::parquet::{Appended, ParquetConfig, ParquetSink, PublishedFile};
use crate::SinkError;

/// Size of one block of input handed from the reader to the parser.
pub const BLOCK_BYTES: usize = 1 << 20;
/// Blocks queued between reader and parser; with [`BLOCK_BYTES`] this bounds buffered input
/// to 4 MiB, enough to keep the parser busy through a slow read.
pub const BLOCKS_IN_FLIGHT: usize = 4;

/// The DLQ label of a line that is not `TOPIC<TAB>PAYLOAD`.
pub const MALFORMED_LINE: &str = "malformed_line";

/// Where the capture comes from.
#[derive(Debug, Clone)]
pub enum ReplayInput {
    /// Standard input (`-`): files also roll on age and inactivity, since it may be live.
    Stdin,
    /// A capture file: files roll on rows and bytes only, so reruns write the same names.
    File(PathBuf),
}

/// What `replay` does.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The capture.
    pub input: ReplayInput,
    /// Parquet output, if any.
    pub parquet: Option<ParquetConfig>,
    /// DLQ file, if any (rejects are always counted).
    pub dlq: Option<PathBuf>,
    /// Kafka, if any: events to their topics, rejects to the DLQ topic.
    pub kafka: Option<KafkaConfig>,
    /// Topic prefix and payload cap.
    pub parser: ParserConfig,
    /// Lines looked back at for an earlier copy of an event (same `eventId`); a copy found
    /// there is neither written nor produced ([`crate::recent`]). 0 keeps every copy.
    pub dedup_window: u64,
}

/// Counters of a replay, reported as it goes and at the end.
#[derive(Debug, Clone, Default)]
pub struct ReplayStats {
    /// Lines read.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Rows written to `job_events`.
    pub job_rows: u64,
    /// Rows written to `job_execution_events`.
    pub execution_rows: u64,
    /// Valid events skipped because an earlier run already published them.
    pub already_published: u64,
    /// Valid events dropped because a copy (same `eventId`) came within the dedup window.
    pub duplicates: u64,
    /// Rejected lines by kind.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Published Parquet files.
    pub files: Vec<PublishedFile>,
    /// The DLQ file, when one was written.
    pub dlq_path: Option<PathBuf>,
    /// Records Kafka confirmed (events and rejects), with `--kafka`.
    pub kafka_delivered: u64,
    /// Records Kafka failed to take, with `--kafka`.
    pub kafka_failed: u64,
    /// Wall time so far.
    pub elapsed: Duration,
}

impl ReplayStats {
    /// All rejected lines.
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }

    /// Valid events (written now or earlier).
    pub fn accepted(&self) -> u64 {
        self.job_rows + self.execution_rows + self.already_published
    }
}

/// Whole lines of input.
enum Block {
    /// Lines that are all UTF-8, checked by the reader: the parsing thread, the one a replay
    /// waits for, then checks neither topics nor payloads again.
    Text(String),
    /// Lines with a byte that is not UTF-8 somewhere: each line is checked on its own, and
    /// the bad ones rejected.
    Bytes(Vec<u8>),
}

impl Block {
    fn bytes(&self) -> &[u8] {
        match self {
            Block::Text(text) => text.as_bytes(),
            Block::Bytes(bytes) => bytes,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Block::Text(text) => Some(text),
            Block::Bytes(_) => None,
        }
    }

    /// The memory, for the reader to reuse.
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Block::Text(text) => text.into_bytes(),
            Block::Bytes(bytes) => bytes,
        }
    }
}

/// Reads blocks of whole lines, checks that they are UTF-8 ([`checked`]) and sends them to
/// the parsing thread.
fn spawn_reader(
    mut input: Box<dyn Read + Send>,
    blocks: SyncSender<io::Result<Block>>,
    recycled: Receiver<Vec<u8>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut carry: Vec<u8> = Vec::new();
        loop {
            // A recycled block comes back cut to its lines: growing it again zeroes only the
            // partial line that was cut off.
            let mut data = recycled.try_recv().unwrap_or_default();
            // A line longer than a block grows the block; otherwise the size stays put.
            let needed = BLOCK_BYTES.max(carry.len() * 2);
            if data.len() < needed {
                data.resize(needed, 0);
            }
            data[..carry.len()].copy_from_slice(&carry);
            let start = carry.len();
            carry.clear();
            let read = loop {
                match input.read(&mut data[start..]) {
                    Ok(n) => break Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
            match read {
                Err(e) => {
                    let _ = blocks.send(Err(e));
                    return;
                }
                Ok(0) => {
                    if start > 0 {
                        data.truncate(start);
                        let _ = blocks.send(Ok(checked(data)));
                    }
                    return;
                }
                Ok(n) => {
                    let filled = start + n;
                    // Hand over whole lines only; the partial tail starts the next block.
                    match memchr::memrchr(b'\n', &data[..filled]) {
                        Some(end) => {
                            carry.extend_from_slice(&data[end + 1..filled]);
                            data.truncate(end + 1);
                            if blocks.send(Ok(checked(data))).is_err() {
                                return;
                            }
                        }
                        None => carry.extend_from_slice(&data[..filled]),
                    }
                }
            }
        }
    })
}

/// Whole lines as text when they are all UTF-8.
fn checked(lines: Vec<u8>) -> Block {
    match String::from_utf8(lines) {
        Ok(text) => Block::Text(text),
        Err(e) => Block::Bytes(e.into_bytes()),
    }
}

/// The lines of a block (without their `\n`) and where each starts, found with memchr.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
    at: usize,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [u8]) -> Self {
        Lines {
            rest: Some(data),
            at: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        let rest = self.rest?;
        let at = self.at;
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                self.at += i + 1;
                Some((at, &rest[..i]))
            }
            None => {
                self.rest = None;
                Some((at, rest))
            }
        }
    }
}

/// Runs a replay; `progress` is called every 65,536 lines and once at the end.
///
/// # Errors
/// Reading the input, or writing Parquet or the DLQ, failed. Rejected lines are not errors.
pub fn replay(
    config: ReplayConfig,
    progress: &mut dyn FnMut(&ReplayStats),
) -> Result<ReplayStats, SinkError> {
    let started = Instant::now();
    let (input, source, live): (Box<dyn Read + Send>, String, bool) = match &config.input {
        ReplayInput::Stdin => {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            (Box::new(io::stdin()), format!("stdin-{ms}"), true)
        }
        ReplayInput::File(path) => {
            let file = File::open(path).map_err(SinkError::io("open capture", path))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "capture".to_owned());
            (Box::new(file), name, false)
        }
    };
    let mut sink = match config.parquet {
        Some(mut parquet) => {
            if !live {
                parquet.max_file_age = None;
                parquet.idle_timeout = None;
            }
            Some(ParquetSink::new(parquet, &source)?.encode_in_background()?)
        }
        None => None,
    };
    let mut dlq = config.dlq.as_deref().map(DlqFile::create).transpose()?;
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let kafka = match config.kafka {
        Some(kafka_config) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(SinkError::io(
                    "start a runtime for",
                    "the Kafka admin client",
                ))?;
            crate::kafka::check_connection(&kafka_config, crate::kafka::ClientRole::Producer)?;
            runtime.block_on(crate::kafka::ensure_topics(&kafka_config))?;
            let (delivered, failed) = (delivered.clone(), failed.clone());
            Some(KafkaSink::new(kafka_config, move |(): (), result| {
                let counter = if result.is_durable() {
                    &delivered
                } else {
                    &failed
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })?)
        }
        None => None,
    };
    let mut parser = Parser::new(config.parser);
    let mut stats = ReplayStats::default();
    let mut recent = crate::recent::RecentIds::new(config.dedup_window);

    let (block_tx, block_rx) = mpsc::sync_channel(BLOCKS_IN_FLIGHT);
    let (recycle_tx, recycle_rx) = mpsc::sync_channel(BLOCKS_IN_FLIGHT);
    let reader = spawn_reader(input, block_tx, recycle_rx);
    let input_error = SinkError::io(
        "read capture",
        match &config.input {
            ReplayInput::Stdin => PathBuf::from("-"),
            ReplayInput::File(path) => path.clone(),
        },
    );
    let mut next_report = 1u64 << 16;

    loop {
        let block = match block_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(block)) => block,
            Ok(Err(e)) => {
                return Err(input_error(e));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(sink) = sink.as_mut() {
                    sink.tick(Instant::now())?;
                    stats.files.extend(sink.take_published());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let data = block.bytes();
        stats.bytes += data.len() as u64;
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        let text = block.text();
        for (at, line) in Lines::new(data) {
            stats.lines += 1;
            let line_no = stats.lines;
            let Some(tab) = memchr::memchr(b'\t', line) else {
                reject_line(
                    &mut stats,
                    dlq.as_mut(),
                    "",
                    line,
                    MALFORMED_LINE,
                    "line has no TAB between topic and payload",
                    line_no,
                )?;
                continue;
            };
            let (topic, payload) = (&line[..tab], &line[tab + 1..]);
            // Slicing text at a TAB or newline (ASCII) always lands on a character boundary.
            let line_text = text.and_then(|text| text.get(at..at + line.len()));
            let topic_text = line_text.and_then(|line| line.get(..tab));
            let Some(topic) = topic_text.or_else(|| std::str::from_utf8(topic).ok()) else {
                let lossy = String::from_utf8_lossy(topic).into_owned();
                reject_line(
                    &mut stats,
                    dlq.as_mut(),
                    &lossy,
                    payload,
                    MALFORMED_LINE,
                    "topic is not UTF-8",
                    line_no,
                )?;
                continue;
            };
            let provenance = Provenance {
                mqtt_topic: Some(topic),
                received_at_ms: None,
            };
            let on_outcome = |outcome: Result<Event<'_, '_>, Reject>| match outcome {
                Ok(event) if recent.seen_before(event.common().event_id, line_no) => Ok(Ok(None)),
                Ok(event) => {
                    let family = event.family();
                    if let Some(kafka) = kafka.as_ref() {
                        kafka.produce_event(&event, topic, payload, None, ())?;
                    }
                    let appended = match sink.as_mut() {
                        Some(sink) => sink.append(&event, &provenance, line_no)?,
                        None => Appended::Written,
                    };
                    Ok(Ok(Some((family, appended))))
                }
                Err(reject) => Ok::<_, SinkError>(Err(reject)),
            };
            let outcome = match line_text.and_then(|line| line.get(tab + 1..)) {
                Some(payload) => parser.parse_str(topic, payload, on_outcome),
                None => parser.parse(topic, payload, on_outcome),
            }?;
            match outcome {
                Ok(None) => stats.duplicates += 1,
                Ok(Some((_, Appended::AlreadyPublished))) => stats.already_published += 1,
                Ok(Some((Family::Job, Appended::Written))) => stats.job_rows += 1,
                Ok(Some((Family::Execution, Appended::Written))) => stats.execution_rows += 1,
                Err(reject) => {
                    if let Some(kafka) = kafka.as_ref() {
                        kafka.produce_reject(
                            topic,
                            payload,
                            None,
                            reject.kind.as_str(),
                            &reject.message,
                            (),
                        )?;
                    }
                    reject_line(
                        &mut stats,
                        dlq.as_mut(),
                        topic,
                        payload,
                        reject.kind.as_str(),
                        &reject.message,
                        line_no,
                    )?
                }
            }
        }
        let _ = recycle_tx.try_send(block.into_bytes());
        if let Some(sink) = sink.as_mut() {
            if live {
                sink.tick(Instant::now())?;
            }
            stats.files.extend(sink.take_published());
        }
        if stats.lines >= next_report {
            next_report = stats.lines + (1 << 16);
            stats.elapsed = started.elapsed();
            progress(&stats);
        }
    }
    let _ = reader.join();
    if let Some(sink) = sink {
        stats.files.extend(sink.finish()?);
    }
    if let Some(dlq) = dlq {
        stats.dlq_path = Some(dlq.finish()?);
    }
    if let Some(kafka) = kafka {
        kafka.flush(Duration::from_secs(300))?;
        stats.kafka_delivered = delivered.load(std::sync::atomic::Ordering::Relaxed);
        stats.kafka_failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    }
    stats.elapsed = started.elapsed();
    progress(&stats);
    Ok(stats)
}

fn reject_line(
    stats: &mut ReplayStats,
    dlq: Option<&mut DlqFile>,
    topic: &str,
    payload: &[u8],
    kind: &'static str,
    error: &str,
    line: u64,
) -> Result<(), SinkError> {
    *stats.rejects.entry(kind).or_default() += 1;
    if let Some(dlq) = dlq {
        dlq.write(&DlqRecord::new(topic, payload, kind, error, Some(line)))?;
    }
    Ok(())
}
