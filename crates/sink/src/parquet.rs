//! Parquet files for the two tables, published atomically and named after what they hold.
//!
//! Layout: `<root>/<table>/date=YYYY-MM-DD/<source>+<first>+<last>.parquet`, where `source`
//! identifies the input (a Kafka topic and partition, or a capture file) and `first`/`last`
//! are the input positions (offsets, line numbers) of the first and last row in the file.
//!
//! Life of a file:
//! 1. rows gather in Arrow builders; every `batch_rows` rows they are encoded into the open
//!    writer, and the row group is flushed once `in_progress_size()` passes `row_group_bytes`,
//!    so memory per open file stays bounded whatever the file size;
//! 2. the file is written as `.<source>+<first>.<pid>.inprogress` in its partition directory —
//!    a dot-file that DuckDB, Spark and Hive all ignore;
//! 3. on roll (rows, bytes, age, inactivity, or finish) the writer is closed, the file fsynced,
//!    renamed to its final name and the directory fsynced: readers see whole files or nothing;
//! 4. a crash leaves only `.inprogress` files, which [`ParquetSink::new`] removes for its source.
//!
//! Exactly-once: on start the sink indexes the published files of its source; an input position
//! already covered by a published file of the same table and date is skipped. Rolling on rows
//! and bytes is deterministic, so a rerun over the same input writes the same names. Each file
//! also records (`jobstream.resume_from` in its footer) the position below which every input
//! was durable when it was published, so a restart can skip straight past published input
//! even when the position committed elsewhere (a Kafka consumer offset) lags behind.
//!
//! Background encoding ([`ParquetSink::encode_in_background`]): the caller's thread keeps the
//! Arrow builders and every decision (which file a row goes to, when a file rolls, its name and
//! resume point); a second thread owns the Parquet writers, makes each batch's worth of
//! filled builders a record batch, encodes and compresses it, and closes, fsyncs and renames
//! the files, in the order the caller asked. Parsing and encoding
//! then run on two cores. The two threads meet at a bounded queue ([`ENCODER_QUEUE`]) and at a
//! small shared state (encoded sizes, published files, the first error). The encoder thread
//! shares each batch's columns with a helper, and hands each row group it flushes to a
//! write-back thread that starts the file's disk writes, so that publishing a file waits for
//! its last row group only.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

use arrow_schema::SchemaRef;
use jobstream_parser::columnar::{JobEventsBuilder, JobExecutionEventsBuilder, Provenance};
use jobstream_parser::{columns, Event, Family};
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::time::{date_string, epoch_day, parse_date};
use crate::SinkError;

/// Compression codec for Parquet pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd at a level from 1 (fast) to 22 (small); 1 is the default: on job events level 3
    /// makes files no smaller (measured: 1.9 MiB either way for 50k events) and costs 11% more
    /// CPU.
    Zstd(i32),
    /// Snappy.
    Snappy,
    /// LZ4 (raw).
    Lz4,
    /// No compression.
    None,
}

impl FromStr for Codec {
    type Err = String;

    /// `zstd`, `zstd:LEVEL`, `snappy`, `lz4` or `none`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, level) = match text.split_once(':') {
            Some((name, level)) => (name, Some(level)),
            None => (text, None),
        };
        match (name.to_ascii_lowercase().as_str(), level) {
            ("zstd", None) => Ok(Codec::Zstd(1)),
            ("zstd", Some(level)) => match level.parse::<i32>() {
                Ok(n) if (1..=22).contains(&n) => Ok(Codec::Zstd(n)),
                _ => Err(format!("zstd level must be 1..=22, got {level:?}")),
            },
            ("snappy", None) => Ok(Codec::Snappy),
            ("lz4", None) => Ok(Codec::Lz4),
            ("none" | "uncompressed", None) => Ok(Codec::None),
            _ => Err(format!(
                "unknown codec {text:?}: use zstd, zstd:LEVEL (1-22), snappy, lz4 or none"
            )),
        }
    }
}

impl Codec {
    fn to_parquet(self) -> Result<Compression, SinkError> {
        Ok(match self {
            Codec::Zstd(level) => {
                Compression::ZSTD(ZstdLevel::try_new(level).map_err(|e| SinkError::Config {
                    setting: "parquet.compression",
                    value: format!("zstd:{level}"),
                    reason: e.to_string(),
                })?)
            }
            Codec::Snappy => Compression::SNAPPY,
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::None => Compression::UNCOMPRESSED,
        })
    }
}

/// How the high-cardinality string columns are encoded in the pages, before compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encodings {
    /// `DELTA_BYTE_ARRAY` for thing ARNs and names (each value stores only what differs from
    /// the one before: the ARN prefix is written once per run of the same account and
    /// region), `DELTA_LENGTH_BYTE_ARRAY` for event ids and `status_details` (the lengths go
    /// in a block of their own, so zstd sees the text alone). Smaller files, and on job
    /// events a quarter less encoding time than `Plain`: zstd has far fewer bytes to search.
    /// Read by every current reader (DuckDB, pyarrow/pandas, polars, Spark 3.3+, Trino and
    /// Athena engine 3).
    Delta,
    /// `PLAIN` for every column without a dictionary: for readers that predate the delta
    /// encodings (Spark's vectorized reader before 3.3, for one).
    Plain,
}

impl FromStr for Encodings {
    type Err = String;

    /// `delta` or `plain`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "delta" => Ok(Encodings::Delta),
            "plain" => Ok(Encodings::Plain),
            _ => Err(format!(
                "unknown encodings {text:?}: use delta (the default) or plain (for readers \
                 without the delta encodings, such as Spark before 3.3)"
            )),
        }
    }
}

/// How Parquet files are written and when they roll.
#[derive(Debug, Clone)]
pub struct ParquetConfig {
    /// Output root; tables go to `<root>/job_events/` and `<root>/job_execution_events/`.
    pub root: PathBuf,
    /// Page compression.
    pub codec: Codec,
    /// Page encoding of the high-cardinality string columns.
    pub encodings: Encodings,
    /// Rows buffered in Arrow builders before they are encoded (bounds builder memory).
    pub batch_rows: usize,
    /// Encoded-but-unflushed bytes (`in_progress_size()`) at which a row group is flushed.
    pub row_group_bytes: usize,
    /// A file is published once it holds this many rows.
    pub max_file_rows: u64,
    /// A file is published once its size reaches this many bytes.
    pub max_file_bytes: u64,
    /// A file is published once it has been open this long (`None`: never by age).
    pub max_file_age: Option<Duration>,
    /// A file is published once no row arrived for this long (`None`: never by inactivity).
    pub idle_timeout: Option<Duration>,
    /// Open files at most; the least recently written is published to make room. Each open
    /// file holds up to `batch_rows` rows and one row group in memory.
    pub max_open_files: usize,
}

impl ParquetConfig {
    /// Defaults for `root`: zstd level 1, delta encodings, 8192-row batches, 8 MiB row groups,
    /// files of up to 64 MiB or 5 million rows, published after 10 minutes open or 60 seconds
    /// idle.
    ///
    /// 8 MiB of encoded job executions is about 180,000 rows (DuckDB writes 122,880 to a row
    /// group): a day's file gets several row groups, which readers such as DuckDB scan in
    /// parallel, and an encoder with background write-back puts each on disk while the next
    /// is encoded, so publishing a file waits for one row group, not the whole file.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ParquetConfig {
            root: root.into(),
            codec: Codec::Zstd(1),
            encodings: Encodings::Delta,
            batch_rows: 8192,
            row_group_bytes: 8 << 20,
            max_file_rows: 5_000_000,
            max_file_bytes: 64 << 20,
            max_file_age: Some(Duration::from_secs(600)),
            idle_timeout: Some(Duration::from_secs(60)),
            max_open_files: 32,
        }
    }

    /// Checks every setting is in range.
    ///
    /// # Errors
    /// The first setting out of range, named as users write it.
    pub fn validate(&self) -> Result<(), SinkError> {
        let positive = |setting: &'static str, value: u64| {
            if value == 0 {
                Err(SinkError::Config {
                    setting,
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("parquet.batch_rows", self.batch_rows as u64)?;
        positive("parquet.row_group_bytes", self.row_group_bytes as u64)?;
        positive("parquet.max_file_rows", self.max_file_rows)?;
        positive("parquet.max_file_bytes", self.max_file_bytes)?;
        positive("parquet.max_open_files", self.max_open_files as u64)?;
        self.codec.to_parquet().map(|_| ())
    }
}

/// A published Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFile {
    /// Which table.
    pub family: Family,
    /// Final path.
    pub path: PathBuf,
    /// Input position of the first row.
    pub first: u64,
    /// Input position of the last row.
    pub last: u64,
    /// Rows in the file.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// What [`ParquetSink::append`] did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Buffered into an open file.
    Written,
    /// Already in a published file from an earlier run; not written again.
    AlreadyPublished,
}

/// Makes a source name safe as a file-name component (`[A-Za-z0-9._-]`, others become `_`).
pub fn sanitize_source(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() {
        "input".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn final_name(source: &str, first: u64, last: u64) -> String {
    format!("{source}+{first:012}+{last:012}.parquet")
}

/// The temporary name carries the process id: should two processes ever write the same
/// source at once (a consumer-group member that lost its partitions without noticing), their
/// temporaries stay apart instead of interleaving into one corrupt file.
fn temp_name(source: &str, first: u64) -> String {
    format!(".{source}+{first:012}.{}.inprogress", std::process::id())
}

/// The key-value metadata entry naming the input position from which a rerun may resume.
pub const RESUME_FROM_KEY: &str = "jobstream.resume_from";

/// `(first, last)` of a published file name of `source`.
pub(crate) fn parse_final_name(source: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(source)?.strip_prefix('+')?;
    let rest = rest.strip_suffix(".parquet")?;
    let (first, last) = rest.split_once('+')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

// One per open file, and open files are few (max_open_files): size is not worth a Box.
#[allow(clippy::large_enum_variant)]
enum Rows {
    Jobs(JobEventsBuilder),
    Executions(JobExecutionEventsBuilder),
}

impl Rows {
    /// The buffered rows, leaving an empty builder in their place.
    fn take(&mut self) -> Rows {
        match self {
            Rows::Jobs(b) => Rows::Jobs(b.take()),
            Rows::Executions(b) => Rows::Executions(b.take()),
        }
    }

    fn into_batch(self) -> Result<RecordBatch, SinkError> {
        Ok(match self {
            Rows::Jobs(b) => b.into_batch()?,
            Rows::Executions(b) => b.into_batch()?,
        })
    }
}

struct OpenFile {
    temp_path: PathBuf,
    dir: PathBuf,
    file: File,
    /// The writer, when encoding runs on the caller's thread; `None` when the encoder thread
    /// owns it under `id`.
    writer: Option<ArrowWriter<File>>,
    id: u64,
    /// Batches handed to the encoder thread so far.
    sent: u64,
    rows: Rows,
    first: u64,
    last: u64,
    row_count: u64,
    opened: Instant,
    /// Only kept up to date when `idle_timeout` is set: reading the clock per row costs ~1%.
    last_append: Instant,
    /// Append sequence number of the last row, for least-recently-written eviction.
    last_seq: u64,
    /// Rows appended since the last idle flush.
    unflushed_rows: u64,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("temp_path", &self.temp_path)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("rows", &self.row_count)
            .finish()
    }
}

/// Writes the rows of one input source (a Kafka partition, a capture file) to Parquet.
///
/// Execution model: synchronous, single owner. Positions must be given in increasing order.
/// Error contract: an I/O or encoder error leaves already published files intact; the open
/// temporaries are removed by [`abandon`](Self::abandon) or by the next start.
#[derive(Debug)]
pub struct ParquetSink {
    config: ParquetConfig,
    properties: WriterProperties,
    source: String,
    open: PartitionMap<OpenFile>,
    published_index: PartitionMap<Vec<(u64, u64)>>,
    published: Vec<PublishedFile>,
    /// One past the highest input position the caller has finished with (written, skipped, or
    /// sent to a durable DLQ): the resume point recorded in each published file.
    consumed_up_to: u64,
    /// The encoder thread, once [`encode_in_background`](Self::encode_in_background) started it.
    encoder: Option<Encoder>,
    /// Counts appends (LRU order) and opened files (ids).
    seq: u64,
}

impl ParquetSink {
    /// A sink for `source` (sanitised with [`sanitize_source`]). Removes temporaries a crashed
    /// run of the same source left, and indexes its published files.
    ///
    /// # Errors
    /// Invalid settings, or the root cannot be created or read.
    pub fn new(config: ParquetConfig, source: &str) -> Result<Self, SinkError> {
        config.validate()?;
        let source = sanitize_source(source);
        let properties = writer_properties(&config)?;
        let mut published_index: PartitionMap<Vec<(u64, u64)>> = PartitionMap::default();
        for family in [Family::Job, Family::Execution] {
            let table_dir = config.root.join(family.table());
            fs::create_dir_all(&table_dir)
                .map_err(SinkError::io("create directory", &table_dir))?;
            let partitions = fs::read_dir(&table_dir).map_err(SinkError::io("list", &table_dir))?;
            for partition in partitions.flatten() {
                let name = partition.file_name();
                let Some(day) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("date="))
                    .and_then(parse_date)
                else {
                    continue;
                };
                let dir = partition.path();
                let files = fs::read_dir(&dir).map_err(SinkError::io("list", &dir))?;
                for file in files.flatten() {
                    let file_name = file.file_name();
                    let Some(file_name) = file_name.to_str() else {
                        continue;
                    };
                    if file_name.starts_with(&format!(".{source}+"))
                        && file_name.ends_with(".inprogress")
                    {
                        let path = file.path();
                        fs::remove_file(&path)
                            .map_err(SinkError::io("remove stale temporary", &path))?;
                        tracing::info!(path = %path.display(), "removed a temporary left by an interrupted run");
                    } else if let Some(range) = parse_final_name(&source, file_name) {
                        published_index
                            .entry((family, day))
                            .or_default()
                            .push(range);
                    }
                }
            }
        }
        for ranges in published_index.values_mut() {
            ranges.sort_unstable();
        }
        Ok(ParquetSink {
            config,
            properties,
            source,
            open: PartitionMap::default(),
            published_index,
            published: Vec::new(),
            consumed_up_to: 0,
            encoder: None,
            seq: 0,
        })
    }

    /// Moves Parquet encoding, compression and publishing to a thread of its own, so that the
    /// caller's thread only builds Arrow batches. Call it before the first append (a sink that
    /// already has open files keeps encoding inline). Everything the caller sees stays the same —
    /// which rows go to which file, file names, atomic publication, resume points — except:
    /// * a published file is reported by [`take_published`](Self::take_published) once the
    ///   encoder thread has renamed it, which may be a little after the call that rolled it;
    ///   [`finish`](Self::finish) waits for all of them;
    /// * a file rolls on `max_file_bytes` [`SIZE_LAG_BATCHES`] batches after the batch whose
    ///   encoded size reached the limit (the caller does not wait for each batch's size). The
    ///   rule depends on the input alone, so a rerun still writes the same names;
    /// * an encoder error is returned by the next call that hands the encoder work (append,
    ///   tick, finish), and the thread stops.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn encode_in_background(mut self) -> Result<Self, SinkError> {
        if self.encoder.is_none() && self.open.is_empty() {
            self.encoder = Some(Encoder::start(self.config.row_group_bytes)?);
        }
        Ok(self)
    }

    /// Tells the sink that every input position below `next` is dealt with (appended, skipped,
    /// or rejected into a durable DLQ). [`append`](Self::append) does this for the rows it
    /// takes; callers add it for positions that never reach the sink.
    pub fn mark_consumed(&mut self, next: u64) {
        self.consumed_up_to = self.consumed_up_to.max(next);
    }

    /// Where a rerun of this source should start reading so that nothing is lost: the highest
    /// resume point recorded in the files published since `committed` (or all of them when
    /// there is no committed position), never below `committed`. A crash between publishing a
    /// file and committing the input position therefore costs neither a duplicate nor a
    /// re-read of the published rows.
    ///
    /// # Errors
    /// A published file's footer cannot be read.
    pub fn resume_position(&self, committed: Option<u64>) -> Result<Option<u64>, SinkError> {
        let floor = committed.unwrap_or(0);
        let mut best = committed;
        for (&(family, day), ranges) in &self.published_index {
            let dir = self
                .config
                .root
                .join(family.table())
                .join(format!("date={}", date_string(day)));
            // A file published after the commit holds only positions at or past it.
            for &(first, last) in ranges.iter().filter(|r| r.1 >= floor) {
                let path = dir.join(final_name(&self.source, first, last));
                if let Some(resume) = read_resume_from(&path)? {
                    best = Some(best.map_or(resume, |b| b.max(resume)));
                }
            }
        }
        Ok(best)
    }

    /// The sanitised source name used in file names.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The highest input position already published by an earlier run, if any.
    pub fn published_up_to(&self) -> Option<u64> {
        self.published_index
            .values()
            .filter_map(|ranges| ranges.last().map(|r| r.1))
            .max()
    }

    fn already_published(&self, family: Family, day: i64, position: u64) -> bool {
        let Some(ranges) = self.published_index.get(&(family, day)) else {
            return false;
        };
        let i = ranges.partition_point(|&(first, _)| first <= position);
        i > 0 && ranges[i - 1].1 >= position
    }

    /// Adds one event at input `position`.
    ///
    /// # Errors
    /// I/O or encoding errors of the file the row went to.
    pub fn append(
        &mut self,
        event: &Event<'_, '_>,
        provenance: &Provenance<'_>,
        position: u64,
    ) -> Result<Appended, SinkError> {
        let family = event.family();
        let day = epoch_day(event.common().event_time_ms);
        if self.already_published(family, day, position) {
            self.consumed_up_to = self.consumed_up_to.max(position + 1);
            return Ok(Appended::AlreadyPublished);
        }
        if !self.open.contains_key(&(family, day)) {
            if self.open.len() >= self.config.max_open_files {
                self.publish_least_recent()?;
            }
            let file = self.open_file(family, day, position)?;
            self.open.insert((family, day), file);
        }
        self.seq += 1;
        let should_roll = {
            let Some(file) = self.open.get_mut(&(family, day)) else {
                return Ok(Appended::Written);
            };
            match (&mut file.rows, event) {
                (Rows::Jobs(rows), Event::Job(e)) => rows.append(e, provenance),
                (Rows::Executions(rows), Event::Execution(e)) => rows.append(e, provenance),
                // The key includes the family, so the builder always matches the event.
                _ => {}
            }
            file.last = position;
            file.row_count += 1;
            self.consumed_up_to = self.consumed_up_to.max(position + 1);
            file.last_seq = self.seq;
            file.unflushed_rows += 1;
            if self.config.idle_timeout.is_some() {
                file.last_append = Instant::now();
            }
            if pending_rows(&file.rows) >= self.config.batch_rows {
                let size = encode(
                    file,
                    self.encoder.as_ref(),
                    self.config.row_group_bytes,
                    true,
                )?;
                file.row_count >= self.config.max_file_rows
                    || size.is_some_and(|size| size >= self.config.max_file_bytes)
            } else {
                file.row_count >= self.config.max_file_rows
            }
        };
        if should_roll {
            self.publish(family, day)?;
        }
        if self.seq.is_multiple_of(IDLE_CHECK_ROWS) {
            self.flush_idle()?;
        }
        Ok(Appended::Written)
    }

    /// Writes out the buffered rows and row group of every open file that took none of the
    /// last [`IDLE_FLUSH_ROWS`] rows and at least [`IDLE_FLUSH_MIN_ROWS`] since its last such
    /// flush. A capture spans days, and a day's files stay open until
    /// the end (they roll on size alone, so that reruns write the same names); without this,
    /// each would keep its row group — up to `row_group_bytes` — in memory, and memory would
    /// grow with the number of days in the input. Counted in rows, not time, so a rerun cuts
    /// the same row groups.
    fn flush_idle(&mut self) -> Result<(), SinkError> {
        for file in self.open.values_mut() {
            // A file that takes a late event now and then should not get a row group for each.
            if file.unflushed_rows < IDLE_FLUSH_MIN_ROWS
                || file.last_seq + IDLE_FLUSH_ROWS > self.seq
            {
                continue;
            }
            encode(
                file,
                self.encoder.as_ref(),
                self.config.row_group_bytes,
                true,
            )?;
            match (&mut file.writer, &self.encoder) {
                (Some(writer), _) => writer.flush().map_err(|source| SinkError::Parquet {
                    path: file.temp_path.clone(),
                    source,
                })?,
                (None, Some(encoder)) => encoder.send(EncoderJob::Flush { id: file.id })?,
                (None, None) => return Err(no_writer()),
            }
            file.unflushed_rows = 0;
        }
        Ok(())
    }

    /// Publishes files that have been open longer than `max_file_age` or idle longer than
    /// `idle_timeout`. Call it periodically (the pipelines do, once a second).
    ///
    /// # Errors
    /// I/O or encoding errors while publishing.
    pub fn tick(&mut self, now: Instant) -> Result<(), SinkError> {
        let due: Vec<(Family, i64)> =
            self.open
                .iter()
                .filter(|(_, f)| {
                    self.config
                        .max_file_age
                        .is_some_and(|age| now.saturating_duration_since(f.opened) >= age)
                        || self.config.idle_timeout.is_some_and(|idle| {
                            now.saturating_duration_since(f.last_append) >= idle
                        })
                })
                .map(|(key, _)| *key)
                .collect();
        for key in due {
            self.publish(key.0, key.1)?;
        }
        Ok(())
    }

    /// Whether files were published since the last [`take_published`](Self::take_published).
    pub fn has_published(&self) -> bool {
        !self.published.is_empty()
            || self
                .encoder
                .as_ref()
                .is_some_and(|encoder| !encoder.shared.lock().published.is_empty())
    }

    /// Files published since the last call, in publication order.
    pub fn take_published(&mut self) -> Vec<PublishedFile> {
        let mut published = std::mem::take(&mut self.published);
        if let Some(encoder) = &self.encoder {
            published.append(&mut encoder.shared.lock().published);
        }
        published
    }

    /// The lowest input position held in a file not yet published: everything before it is
    /// durable. `None` when nothing is pending.
    ///
    /// Only for a sink that encodes inline, as the Kafka stage's and the direct MQTT writer's
    /// do: with [`encode_in_background`](Self::encode_in_background), a file handed to the
    /// encoder for publishing is no longer open here but may not be on disk yet.
    pub fn lowest_pending_position(&self) -> Option<u64> {
        self.open.values().map(|f| f.first).min()
    }

    /// Number of rows buffered or encoded but not yet published.
    pub fn pending_rows(&self) -> u64 {
        self.open.values().map(|f| f.row_count).sum()
    }

    /// Publishes every open file and returns all files published since the last
    /// [`take_published`](Self::take_published).
    ///
    /// # Errors
    /// I/O or encoding errors while publishing; the files not yet published stay temporaries.
    pub fn finish(mut self) -> Result<Vec<PublishedFile>, SinkError> {
        let mut keys: Vec<(Family, i64)> = self.open.keys().copied().collect();
        keys.sort_unstable();
        for (family, day) in keys {
            self.publish(family, day)?;
        }
        if let Some(mut encoder) = self.encoder.take() {
            encoder.finish()?;
            self.published.append(&mut encoder.shared.lock().published);
        }
        Ok(self.take_published())
    }

    /// Drops every open file without publishing (their rows will be re-read from the input).
    pub fn abandon(mut self) {
        if let Some(mut encoder) = self.encoder.take() {
            // Publications already queued complete (their rows were handed over); the writers
            // of open files are dropped when the thread ends, before their temporaries go.
            let _ = encoder.finish();
        }
        for (_, file) in self.open.drain() {
            drop(file.writer);
            let _ = fs::remove_file(&file.temp_path);
        }
    }

    fn open_file(&self, family: Family, day: i64, first: u64) -> Result<OpenFile, SinkError> {
        let dir = self
            .config
            .root
            .join(family.table())
            .join(format!("date={}", date_string(day)));
        fs::create_dir_all(&dir).map_err(SinkError::io("create directory", &dir))?;
        let temp_path = dir.join(temp_name(&self.source, first));
        let file = File::create(&temp_path).map_err(SinkError::io("create", &temp_path))?;
        let handle = file
            .try_clone()
            .map_err(SinkError::io("open", &temp_path))?;
        let schema = jobstream_parser::columnar::schema(family);
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(self.properties.clone()))
            .map_err(|source| SinkError::Parquet {
                path: temp_path.clone(),
                source,
            })?;
        let id = self.seq;
        let writer = match &self.encoder {
            Some(encoder) => {
                encoder.send(EncoderJob::Open {
                    id,
                    writer: Box::new(writer),
                    schema,
                    path: temp_path.clone(),
                })?;
                None
            }
            None => Some(writer),
        };
        let capacity = self.config.batch_rows;
        let rows = match family {
            Family::Job => Rows::Jobs(JobEventsBuilder::with_capacity(capacity.min(1024))),
            Family::Execution => {
                Rows::Executions(JobExecutionEventsBuilder::with_capacity(capacity))
            }
        };
        let now = Instant::now();
        Ok(OpenFile {
            temp_path,
            dir,
            file: handle,
            writer,
            id,
            sent: 0,
            rows,
            first,
            last: first,
            row_count: 0,
            opened: now,
            last_append: now,
            last_seq: self.seq,
            unflushed_rows: 0,
        })
    }

    fn publish_least_recent(&mut self) -> Result<(), SinkError> {
        if let Some(key) = self
            .open
            .iter()
            .min_by_key(|(_, f)| f.last_seq)
            .map(|(key, _)| *key)
        {
            self.publish(key.0, key.1)?;
        }
        Ok(())
    }

    fn publish(&mut self, family: Family, day: i64) -> Result<(), SinkError> {
        let Some(mut file) = self.open.remove(&(family, day)) else {
            return Ok(());
        };
        // Everything below this is durable once the file is: rows of still-open files are not.
        let resume_from = self
            .open
            .values()
            .map(|f| f.first)
            .fold(self.consumed_up_to.max(file.last + 1), u64::min);
        encode(
            &mut file,
            self.encoder.as_ref(),
            self.config.row_group_bytes,
            false,
        )?;
        let OpenFile {
            temp_path,
            dir,
            file: handle,
            writer,
            id,
            first,
            last,
            row_count,
            ..
        } = file;
        let closing = Closing {
            metadata: vec![
                KeyValue::new(
                    "jobstream.input".to_owned(),
                    format!("{}+{first}+{last}", self.source),
                ),
                KeyValue::new(RESUME_FROM_KEY.to_owned(), resume_from.to_string()),
            ],
            handle,
            final_path: dir.join(final_name(&self.source, first, last)),
            temp_path,
            dir,
            file: PublishedFile {
                family,
                path: PathBuf::new(),
                first,
                last,
                rows: row_count,
                bytes: 0,
            },
        };
        match (writer, &self.encoder) {
            (Some(mut writer), _) => self.published.push(closing.publish(|metadata| {
                for entry in metadata {
                    writer.append_key_value_metadata(entry);
                }
                writer.close().map(drop)
            })?),
            (None, Some(encoder)) => encoder.send(EncoderJob::Publish { id, closing })?,
            (None, None) => return Err(no_writer()),
        }
        self.published_index
            .entry((family, day))
            .or_default()
            .push((first, last));
        Ok(())
    }
}

/// A file to close and publish: the writer's last steps, on whichever thread owns the writer.
struct Closing {
    metadata: Vec<KeyValue>,
    /// A second handle on the temporary, to fsync it once the writer has closed it.
    handle: File,
    temp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    /// What to report; `path` and `bytes` are filled in once published.
    file: PublishedFile,
}

impl Closing {
    /// Footer (written by `close`, given the key-value metadata), fsync, rename, directory
    /// fsync: readers see the whole file or nothing.
    fn publish(
        self,
        close: impl FnOnce(Vec<KeyValue>) -> Result<(), ParquetError>,
    ) -> Result<PublishedFile, SinkError> {
        let Closing {
            metadata,
            handle,
            temp_path,
            final_path,
            dir,
            mut file,
        } = self;
        close(metadata).map_err(|source| SinkError::Parquet {
            path: temp_path.clone(),
            source,
        })?;
        handle
            .sync_all()
            .map_err(SinkError::io("fsync", &temp_path))?;
        file.bytes = handle.metadata().map(|m| m.len()).unwrap_or_default();
        drop(handle);
        fs::rename(&temp_path, &final_path)
            .map_err(SinkError::io("publish (rename)", &final_path))?;
        sync_dir(&dir)?;
        file.path = final_path;
        Ok(file)
    }
}

fn no_writer() -> SinkError {
    SinkError::Encoder("a file has neither a writer nor an encoder thread (a bug)".to_owned())
}

fn read_resume_from(path: &Path) -> Result<Option<u64>, SinkError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(SinkError::io("open", path))?;
    let reader = SerializedFileReader::new(file).map_err(|source| SinkError::Parquet {
        path: path.to_owned(),
        source,
    })?;
    Ok(reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == RESUME_FROM_KEY))
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok()))
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SinkError::io("fsync directory", dir))
}

fn pending_rows(rows: &Rows) -> usize {
    match rows {
        Rows::Jobs(b) => b.len(),
        Rows::Executions(b) => b.len(),
    }
}

fn writer_size(writer: &ArrowWriter<File>) -> u64 {
    (writer.bytes_written() + writer.in_progress_size()) as u64
}

/// Encodes the buffered rows into the writer, flushing the row group once it is big enough.
/// Returns the file size the `max_file_bytes` rule compares: the size now when encoding inline;
/// with an encoder thread, the size after the batch sent [`SIZE_LAG_BATCHES`] batches earlier
/// (none for a file's first batches, or when `need_size` is false).
fn encode(
    file: &mut OpenFile,
    encoder: Option<&Encoder>,
    row_group_bytes: usize,
    need_size: bool,
) -> Result<Option<u64>, SinkError> {
    if pending_rows(&file.rows) > 0 {
        let rows = file.rows.take();
        match (&mut file.writer, encoder) {
            (Some(writer), _) => write_batch(
                writer,
                &rows.into_batch()?,
                &file.temp_path,
                row_group_bytes,
            )?,
            (None, Some(encoder)) => {
                file.sent += 1;
                let size = if need_size && file.sent > SIZE_LAG_BATCHES {
                    Some(encoder.pop_size(file.id)?)
                } else {
                    None
                };
                // The encoder makes the batch: assembling the columns (the enumerations'
                // text, thing names) is a few percent of the parsing thread's time, which
                // is the one that runs alone when a replay waits.
                encoder.send(EncoderJob::Write {
                    id: file.id,
                    rows: Box::new(rows),
                })?;
                return Ok(size);
            }
            (None, None) => return Err(no_writer()),
        }
    }
    Ok(file.writer.as_ref().map(writer_size))
}

fn write_batch(
    writer: &mut ArrowWriter<File>,
    batch: &RecordBatch,
    path: &Path,
    row_group_bytes: usize,
) -> Result<(), SinkError> {
    let parquet_error = |source| SinkError::Parquet {
        path: path.to_owned(),
        source,
    };
    writer.write(batch).map_err(parquet_error)?;
    if writer.in_progress_size() >= row_group_bytes {
        writer.flush().map_err(parquet_error)?;
    }
    Ok(())
}

/// Jobs queued for the encoder thread at most. A queued batch holds up to `batch_rows` rows in
/// Arrow builders (about 4 MB at the defaults), so this bounds the memory between parsing and
/// encoding to a few batches whatever the input size; more would only help if the parser were
/// faster than the encoder for long stretches, and it is not.
pub const ENCODER_QUEUE: usize = 4;

/// With an encoder thread, batches of one file that may be in flight before the
/// `max_file_bytes` rule waits for the encoder's size report: a file rolls after the batch sent
/// this many batches after the one whose encoded size reached the limit. Two keep the encoder
/// busy while the caller builds the next batch; a file overshoots the limit by at most two
/// batches (≈ 1 MB compressed at the defaults).
pub const SIZE_LAG_BATCHES: u64 = 2;

/// An open file that took none of this many of the last rows appended has its buffered rows
/// and row group written out (see `ParquetSink::flush_idle`). 65,536 rows is well past the
/// interleaving of events around midnight (a day's files then take no more rows), and
/// long enough that a file taking a share of rows keeps whole row groups.
pub const IDLE_FLUSH_ROWS: u64 = 1 << 16;

/// Rows an idle file must have taken since its last idle flush to be flushed again. Even a day's
/// `job_events` file (a few thousand rows) holds megabytes of column-writer buffers until its
/// row group is written.
pub const IDLE_FLUSH_MIN_ROWS: u64 = 1024;

/// How often, in rows appended, open files are checked for [`IDLE_FLUSH_ROWS`].
const IDLE_CHECK_ROWS: u64 = 1 << 13;

enum EncoderJob {
    Open {
        id: u64,
        writer: Box<ArrowWriter<File>>,
        schema: SchemaRef,
        path: PathBuf,
    },
    /// Encode rows (built into a batch there).
    Write {
        id: u64,
        rows: Box<Rows>,
    },
    /// Write out the row group in progress (the file went idle).
    Flush {
        id: u64,
    },
    Publish {
        id: u64,
        closing: Closing,
    },
}

/// What the encoder thread tells the sink.
#[derive(Default)]
struct EncoderState {
    /// File size after each batch encoded, per file id, oldest first; the sink takes them in
    /// order, so each queue holds at most `SIZE_LAG_BATCHES + 1` sizes.
    sizes: HashMap<u64, VecDeque<u64>>,
    /// Files published and not yet taken by the sink.
    published: Vec<PublishedFile>,
    /// The error that stopped the thread, until the sink returns it.
    error: Option<SinkError>,
    /// The thread has ended (normally, on error, or by panicking).
    stopped: bool,
}

struct Shared {
    state: Mutex<EncoderState>,
    changed: Condvar,
    /// Set when the sink is dropped without finishing: skip the queued work.
    abort: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, EncoderState> {
        // A panic on the encoder thread never leaves the state half-updated (every update is
        // one push or assignment), so a poisoned lock is still good to read.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the thread stopped however it ends, panics included, so no one waits for it forever.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if std::thread::panicking() && state.error.is_none() {
            state.error = Some(SinkError::Encoder(
                "it panicked (the message is above)".to_owned(),
            ));
        }
        state.stopped = true;
        drop(state);
        self.0.changed.notify_all();
    }
}

/// The sink's handle on its encoder thread.
struct Encoder {
    jobs: Option<SyncSender<EncoderJob>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    fn start(row_group_bytes: usize) -> Result<Self, SinkError> {
        let (jobs, queue) = mpsc::sync_channel(ENCODER_QUEUE);
        let shared = Arc::new(Shared {
            state: Mutex::new(EncoderState::default()),
            changed: Condvar::new(),
            abort: AtomicBool::new(false),
        });
        let guard = StopGuard(shared.clone());
        let thread = std::thread::Builder::new()
            .name("parquet-encoder".to_owned())
            .spawn(move || encoder_thread(queue, guard, row_group_bytes))
            .map_err(|e| SinkError::Encoder(format!("cannot start the thread: {e}")))?;
        Ok(Encoder {
            jobs: Some(jobs),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a job, waiting while the queue is full; the thread's error if it has stopped.
    fn send(&self, job: EncoderJob) -> Result<(), SinkError> {
        if let Some(error) = self.shared.lock().error.take() {
            return Err(error);
        }
        match &self.jobs {
            Some(jobs) if jobs.send(job).is_ok() => Ok(()),
            _ => Err(self.stopped_error()),
        }
    }

    /// The size after the oldest batch of file `id` whose size the sink has not taken yet,
    /// waiting for the encoder to get there.
    fn pop_size(&self, id: u64) -> Result<u64, SinkError> {
        let mut state = self.shared.lock();
        loop {
            if let Some(error) = state.error.take() {
                return Err(error);
            }
            if let Some(size) = state.sizes.get_mut(&id).and_then(VecDeque::pop_front) {
                return Ok(size);
            }
            if state.stopped {
                drop(state);
                return Err(self.stopped_error());
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Why the thread is gone: its error or panic, unless that was already returned.
    fn stopped_error(&self) -> SinkError {
        self.shared
            .lock()
            .error
            .take()
            .unwrap_or_else(|| SinkError::Encoder("it ended after an earlier error".to_owned()))
    }

    /// Lets the thread finish its queue and waits for it; its error, if it had one.
    fn finish(&mut self) -> Result<(), SinkError> {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(SinkError::Encoder(format!("it panicked: {message}")));
            }
        }
        match self.shared.lock().error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for Encoder {
    /// Dropped without [`finish`](Encoder::finish) (the caller failed): skip the queued work,
    /// leave the temporaries for the next start to remove, and wait for the thread so that it
    /// never writes after the sink is gone.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shared.abort.store(true, Ordering::Relaxed);
            drop(self.jobs.take());
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn encoder_thread(queue: Receiver<EncoderJob>, guard: StopGuard, row_group_bytes: usize) {
    let shared = &guard.0;
    let writeback = Writeback::start();
    let mut writers: HashMap<u64, (ColumnarWriter, PathBuf)> = HashMap::new();
    while let Ok(job) = queue.recv() {
        if shared.abort.load(Ordering::Relaxed) {
            break;
        }
        let result = match job {
            EncoderJob::Open {
                id,
                writer,
                schema,
                path,
            } => ColumnarWriter::new(*writer, schema)
                .map(|writer| writer.with_writeback(writeback.handle(&path)))
                .map(|writer| {
                    writers.insert(id, (writer, path.clone()));
                })
                .map_err(|source| SinkError::Parquet { path, source }),
            EncoderJob::Write { id, rows } => match writers.get_mut(&id) {
                Some((writer, path)) => rows
                    .into_batch()
                    .and_then(|batch| {
                        writer
                            .write(&batch, row_group_bytes)
                            .map_err(|source| SinkError::Parquet {
                                path: path.clone(),
                                source,
                            })
                    })
                    .map(|()| {
                        let size = writer.size();
                        shared.lock().sizes.entry(id).or_default().push_back(size);
                        shared.changed.notify_all();
                    }),
                None => Err(no_writer()),
            },
            EncoderJob::Flush { id } => match writers.get_mut(&id) {
                Some((writer, path)) => writer.flush().map_err(|source| SinkError::Parquet {
                    path: path.clone(),
                    source,
                }),
                None => Err(no_writer()),
            },
            EncoderJob::Publish { id, closing } => match writers.remove(&id) {
                Some((writer, _)) => {
                    closing
                        .publish(|metadata| writer.close(metadata))
                        .map(|file| {
                            let mut state = shared.lock();
                            state.sizes.remove(&id);
                            state.published.push(file);
                        })
                }
                None => Err(no_writer()),
            },
        };
        if let Err(error) = result {
            shared.lock().error = Some(error);
            break;
        }
    }
    // Unpublished writers and the queue (with it the sink's ability to send) go before the
    // guard says the thread stopped.
    drop(writers);
    drop(queue);
    writeback.finish();
    drop(guard);
}

/// Starts the disk writes of each row group a file flushes while encoding goes on, so that
/// the fsync that publishes the file waits only for its last row group and footer. Without it
/// a replay ends with every file's fsync in a row (measured: 50 ms for a 22 MB day file, with
/// nothing else left to do).
///
/// A hint, never the durability: the thread fsyncs through a read-only handle of its own, so a
/// failed write-back is still reported to the publishing fsync on the writer's handle (Linux
/// reports a write-back error once to every open file description), and its own errors are
/// only logged.
struct Writeback {
    requests: Option<SyncSender<Arc<File>>>,
    thread: Option<JoinHandle<()>>,
}

/// What a writer holds to ask for its file's write-back: the thread's queue and the file.
type WritebackHandle = (SyncSender<Arc<File>>, Arc<File>);

/// Row groups waiting for the write-back thread at most; more are dropped (the publishing fsync
/// covers them). A row group takes a file's fsync tens of milliseconds, and a replay flushes one
/// every few hundred: a few are plenty.
const WRITEBACK_QUEUE: usize = 4;

impl Writeback {
    /// The thread; without one (the OS refused it), files are only fsynced when published.
    fn start() -> Self {
        let (requests, queue) = mpsc::sync_channel::<Arc<File>>(WRITEBACK_QUEUE);
        let thread = std::thread::Builder::new()
            .name("parquet-writeback".to_owned())
            .spawn(move || {
                while let Ok(file) = queue.recv() {
                    if let Err(error) = file.sync_data() {
                        tracing::debug!(%error, "early write-back failed; the publishing fsync will tell");
                    }
                }
            });
        match thread {
            Ok(thread) => Writeback {
                requests: Some(requests),
                thread: Some(thread),
            },
            Err(error) => {
                tracing::warn!(%error, "no write-back thread; files are synced when published");
                Writeback {
                    requests: None,
                    thread: None,
                }
            }
        }
    }

    /// What a writer needs to ask for the write-back of `path`: none when the thread or a
    /// handle cannot be had.
    fn handle(&self, path: &Path) -> Option<WritebackHandle> {
        let requests = self.requests.clone()?;
        let file = File::open(path).ok()?;
        Some((requests, Arc::new(file)))
    }

    /// Waits for the thread once every writer is gone (they hold the other senders).
    fn finish(mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Maps keyed by a partition, (table, epoch day). Every appended row looks its partition up
/// two or three times; SipHash, the std default, made those lookups 2% of a replay's CPU. The
/// keys come from our own enum and a day number, so nobody can choose them to collide.
type PartitionMap<V> = HashMap<(Family, i64), V, BuildHasherDefault<PartitionHasher>>;

/// Multiplicative hashing of the few integers a partition key is made of.
#[derive(Default)]
struct PartitionHasher(u64);

impl Hasher for PartitionHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        // The odd constant is 2^64 / golden ratio: it spreads consecutive days over the high
        // bits, which hashbrown uses for its control bytes.
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Target size of a data page before compression.
const PAGE_BYTES: usize = 256 << 10;

/// The writer settings every file of `config` gets: the codec, page statistics, dictionaries
/// on the low-cardinality columns. Public so that benchmarks of other settings start from
/// exactly these (`benches/examples/encode_settings.rs`).
///
/// # Errors
/// An invalid codec level.
pub fn writer_properties(config: &ParquetConfig) -> Result<WriterProperties, SinkError> {
    let mut builder = WriterProperties::builder()
        .set_compression(config.codec.to_parquet()?)
        .set_created_by(format!("jobstream {}", env!("CARGO_PKG_VERSION")))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Row groups are cut by bytes (in_progress_size), not by a row count.
        .set_max_row_group_row_count(None)
        // Column writers take a batch in slices of this many values and do per-slice work
        // (page-size checks, level and statistics bookkeeping): one slice per batch instead
        // of the default 1,024 values. A small gain (callgrind: 0.5% fewer instructions in
        // benches/examples/encode_settings.rs; within noise in time); same pages and files.
        .set_write_batch_size(8192)
        // Pages of 256 KiB instead of parquet's 1 MiB, so that a page's buffers stay in the
        // core's L2 cache while parquet encodes, copies and compresses them (it copies a page
        // twice, and reserves twice its size for the compressed copy). A small gain at best:
        // encode_settings (300k events, 7 rounds) gave 0.91x and, on a busier machine, 0.99x
        // the encoding time; replays of 1M events 1.29 vs 1.35 s (7 interleaved runs). Same
        // file size, finer page statistics. (Large string columns still make pages of one
        // 8192-value write slice, up to 540 KB of thing ARNs.)
        .set_data_page_size_limit(PAGE_BYTES)
        // High-cardinality columns (ids, ARNs, JSON) gain nothing from a dictionary and cost
        // a fallback; the enumerations and per-job columns compress to almost nothing with one.
        .set_dictionary_enabled(false);
    for column in [
        "event_type",
        "operation",
        "status",
        "target_selection",
        "job_id",
        "description",
        "comment",
        "mqtt_topic",
    ] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), true);
    }
    if config.encodings == Encodings::Delta {
        // Prefix sharing only where values share prefixes: ARNs and names of the same fleet
        // do, random event ids do not, and DELTA_BYTE_ARRAY on them costs more than PLAIN
        // (encode_settings: 1.12x against 0.89x for DELTA_LENGTH_BYTE_ARRAY).
        for (column, encoding) in [
            (columns::THING_ARN, Encoding::DELTA_BYTE_ARRAY),
            (columns::THING_NAME, Encoding::DELTA_BYTE_ARRAY),
            (columns::EVENT_ID, Encoding::DELTA_LENGTH_BYTE_ARRAY),
            (
                "status_details.key_value.key",
                Encoding::DELTA_LENGTH_BYTE_ARRAY,
            ),
            (
                "status_details.key_value.value",
                Encoding::DELTA_LENGTH_BYTE_ARRAY,
            ),
        ] {
            let path = ColumnPath::new(column.split('.').map(str::to_owned).collect());
            builder = builder.set_column_encoding(path, encoding);
        }
    }
    Ok(builder.build())
}

/// A Parquet file written as `ArrowWriter` writes it — same column writers, same row groups,
/// byte for byte — except that the columns of each batch, and the closing of each row group's
/// columns, are shared by two threads: the encoder thread and a helper scoped to the batch.
/// Encoding and compression are most of the work of a replay, more than parsing; shared this
/// way they use the second core whenever the parser does not. Each column writer is
/// independent until the row group is assembled in column order, so which thread encoded a
/// column does not change a byte of the file.
struct ColumnarWriter {
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Writers of the row group in progress, one per leaf column; empty between row groups.
    columns: Vec<ArrowColumnWriter>,
    /// Where to ask for each flushed row group to be written back, and the file to sync.
    writeback: Option<WritebackHandle>,
}

/// The leaves of one top-level column with their writers.
type ColumnWork<'a> = Vec<(&'a mut ArrowColumnWriter, ArrowLeafColumn)>;

impl ColumnarWriter {
    fn new(writer: ArrowWriter<File>, schema: SchemaRef) -> Result<Self, ParquetError> {
        let (file, factory) = writer.into_serialized_writer()?;
        Ok(ColumnarWriter {
            file,
            factory,
            schema,
            columns: Vec::new(),
            writeback: None,
        })
    }

    fn with_writeback(mut self, writeback: Option<WritebackHandle>) -> Self {
        self.writeback = writeback;
        self
    }

    fn write(&mut self, batch: &RecordBatch, row_group_bytes: usize) -> Result<(), ParquetError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.columns.is_empty() {
            self.columns = self
                .factory
                .create_column_writers(self.file.flushed_row_groups().len())?;
        }
        let mut writers = self.columns.iter_mut();
        let mut work: Vec<(usize, ColumnWork<'_>)> = Vec::with_capacity(batch.num_columns());
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            let mut leaves = Vec::new();
            for leaf in compute_leaves(field, column)? {
                let writer = writers.next().ok_or_else(|| {
                    ParquetError::General("more leaf columns than writers".to_owned())
                })?;
                leaves.push((writer, leaf));
            }
            work.push((column.get_buffer_memory_size(), leaves));
        }
        // Heaviest first, so that the last columns taken are small and both threads finish
        // close together.
        work.sort_by_key(|w| std::cmp::Reverse(w.0));
        on_two_threads(work.into_iter().map(|(_, leaves)| leaves), |leaves| {
            for (writer, leaf) in leaves {
                writer.write(&leaf)?;
            }
            Ok(())
        })?;
        if self.in_progress_size() >= row_group_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn in_progress_size(&self) -> usize {
        self.columns
            .iter()
            .map(ArrowColumnWriter::get_estimated_total_bytes)
            .sum()
    }

    /// What `ArrowWriter::bytes_written() + in_progress_size()` would say.
    fn size(&self) -> u64 {
        (self.file.bytes_written() + self.in_progress_size()) as u64
    }

    /// Writes out the row group in progress and asks for it to be written back to disk.
    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.flush_row_group()? {
            if let Some((requests, file)) = &self.writeback {
                // A full queue already has a sync coming that will take this row group along.
                let _ = requests.try_send(file.clone());
            }
        }
        Ok(())
    }

    /// Writes out the row group in progress; whether there was one.
    fn flush_row_group(&mut self) -> Result<bool, ParquetError> {
        if self.columns.is_empty() {
            return Ok(false);
        }
        // Closing a column compresses its last page and its dictionary: a batch's worth of
        // work per row group, shared like the batches; the chunks then go in in column order.
        let chunks = on_two_threads(self.columns.drain(..), ArrowColumnWriter::close)?;
        let mut row_group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        Ok(true)
    }

    fn close(mut self, metadata: Vec<KeyValue>) -> Result<(), ParquetError> {
        // No write-back for the last row group: the publishing fsync follows at once.
        self.flush_row_group()?;
        for entry in metadata {
            self.file.append_key_value_metadata(entry);
        }
        self.file.close().map(drop)
    }
}

/// `task` applied to every item by this thread and a helper thread, each taking the next item
/// when done with its last, so neither waits while the other has a queue of its own left (a
/// split made in advance cannot know that a column of random ids compresses slower than one
/// of repeated names). Results come back in the items' order; the first error wins.
fn on_two_threads<T: Send, R: Send>(
    items: impl Iterator<Item = T> + Send,
    task: impl Fn(T) -> Result<R, ParquetError> + Sync,
) -> Result<Vec<R>, ParquetError> {
    let queue = Mutex::new(items.enumerate());
    let work = || -> Result<Vec<(usize, R)>, ParquetError> {
        let mut done = Vec::new();
        loop {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((index, item)) = next else {
                return Ok(done);
            };
            done.push((index, task(item)?));
        }
    };
    let (mine, theirs) = std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("parquet-encoder-2".to_owned())
            .spawn_scoped(scope, work);
        let mine = work();
        let theirs = match helper {
            Ok(helper) => helper.join().unwrap_or_else(|_| {
                Err(ParquetError::General(
                    "the column encoding thread panicked".to_owned(),
                ))
            }),
            // No thread to be had: this one took every item.
            Err(_) => Ok(Vec::new()),
        };
        (mine, theirs)
    });
    let mut done = mine?;
    done.extend(theirs?);
    done.sort_unstable_by_key(|(index, _)| *index);
    Ok(done.into_iter().map(|(_, result)| result).collect())
}
