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
//! In an object store ([`store`]: `dir` is an `s3://`, `gs://` or `az://` URL) steps 1–2 run in
//! a local staging directory, and step 3 is one create-only PUT of the closed file under its
//! final name, after which the temporary goes; the index of step "exactly-once" below comes
//! from listing the bucket, and resume points from footers read with ranged GETs.
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

use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use jobstream_parser::columnar::{JobEventsBuilder, JobExecutionEventsBuilder, Provenance};
use jobstream_parser::{Event, Family};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::time::{date_string, epoch_day, parse_date};
use crate::SinkError;

mod columnar_writer;
mod config;
pub mod ddl;
mod encoder;
mod naming;
pub mod store;
mod temporary;
mod writeback;

pub use config::{
    writer_properties, Codec, Encodings, ParquetConfig, StorageOptions, DEFAULT_GROUP_ID,
};
pub use encoder::{ENCODER_QUEUE, IDLE_FLUSH_MIN_ROWS, IDLE_FLUSH_ROWS, SIZE_LAG_BATCHES};
pub(crate) use naming::parse_final_name;
pub use naming::{sanitize_source, RESUME_FROM_KEY};

use encoder::{encode, Encoder, EncoderJob, IDLE_CHECK_ROWS};
use naming::{final_name, read_resume_from, resume_from_metadata, temp_name};
use store::{Location, ObjectRoot, Put};
use temporary::{create_locked, remove_if_abandoned, Leftover};

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
    /// Where temporaries are written: the output root itself, or for an object store its
    /// staging directory.
    local_root: PathBuf,
    /// The object store files are published to, if not the local root.
    store: Option<Arc<ObjectRoot>>,
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
    /// run of the same source left (never those a live writer holds, in this process or
    /// another), and indexes its published files.
    ///
    /// # Errors
    /// Invalid settings, or the root cannot be created or read.
    pub fn new(config: ParquetConfig, source: &str) -> Result<Self, SinkError> {
        config.validate()?;
        let source = sanitize_source(source);
        let properties = writer_properties(&config)?;
        let (local_root, store) = match Location::parse(&config.root, &config.storage.0)? {
            Location::Local(dir) => (dir, None),
            Location::Store(root) => {
                if config.max_file_bytes > store::MAX_OBJECT_BYTES {
                    return Err(SinkError::Config {
                        setting: "parquet.max_file_bytes",
                        value: config.max_file_bytes.to_string(),
                        reason: format!(
                            "a file in an object store is published by one PUT held in memory: at most {} bytes",
                            store::MAX_OBJECT_BYTES
                        ),
                    });
                }
                (config.local_dir(), Some(root))
            }
        };
        let mut published_index: PartitionMap<Vec<(u64, u64)>> = PartitionMap::default();
        for family in [Family::Job, Family::Execution] {
            let table_dir = local_root.join(family.table());
            fs::create_dir_all(&table_dir)
                .map_err(SinkError::io("create directory", &table_dir))?;
            let partitions = fs::read_dir(&table_dir).map_err(SinkError::io("list", &table_dir))?;
            for partition in partitions.flatten() {
                let name = partition.file_name();
                let Some(day) = name.to_str().and_then(partition_day) else {
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
                        match remove_if_abandoned(&path) {
                            Ok(Leftover::Removed) => tracing::info!(
                                path = %path.display(),
                                "removed a temporary left by an interrupted run"
                            ),
                            Ok(Leftover::InUse | Leftover::Gone) => {}
                            // Removing what may be a live writer's file loses its rows; an
                            // abandoned one only takes space.
                            Err(error) => tracing::warn!(
                                %error,
                                "kept a temporary that may be another writer's; remove it once no run writes here"
                            ),
                        }
                    } else if let (None, Some(range)) =
                        (&store, parse_final_name(&source, file_name))
                    {
                        published_index
                            .entry((family, day))
                            .or_default()
                            .push(range);
                    }
                }
            }
            if let Some(store) = &store {
                for (relative, _) in store.list(family.table())? {
                    let mut parts = relative.split('/').skip(1);
                    let (Some(day), Some(name), None) = (
                        parts.next().and_then(partition_day),
                        parts.next(),
                        parts.next(),
                    ) else {
                        continue;
                    };
                    if let Some(range) = parse_final_name(&source, name) {
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
            local_root,
            store,
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
            let partition = partition_dir(family, day);
            // A file published after the commit holds only positions at or past it.
            for &(first, last) in ranges.iter().filter(|r| r.1 >= floor) {
                let name = final_name(&self.source, first, last);
                let resume = match &self.store {
                    Some(store) => {
                        let relative = format!("{partition}/{name}");
                        let size = store.size(&relative)?;
                        resume_from_metadata(store.footer(&relative, size)?.file_metadata())
                    }
                    None => read_resume_from(&self.local_root.join(&partition).join(&name))?,
                };
                if let Some(resume) = resume {
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
        let dir = self.local_root.join(partition_dir(family, day));
        fs::create_dir_all(&dir).map_err(SinkError::io("create directory", &dir))?;
        let temp_path = dir.join(temp_name(&self.source, first));
        let file = create_locked(&temp_path)?;
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
            store: self.store.clone().map(|store| {
                let name = final_name(&self.source, first, last);
                (store, format!("{}/{name}", partition_dir(family, day)))
            }),
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
    /// For an object store: the store and the object's path under its root, which replace
    /// `final_path`.
    store: Option<(Arc<ObjectRoot>, String)>,
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
            store,
            dir,
            mut file,
        } = self;
        close(metadata).map_err(|source| SinkError::Parquet {
            path: temp_path.clone(),
            source,
        })?;
        if let Some((store, relative)) = store {
            // The PUT is the publication and the durability: no local fsync is needed.
            file.bytes = handle.metadata().map(|m| m.len()).unwrap_or_default();
            let put = store.put_create(&temp_path, &relative)?;
            if put == Put::AlreadyExists {
                // Same name, same input positions: an earlier run published these rows and
                // stopped before committing them. The object stays as it is.
                tracing::info!(
                    url = store.url_of(&relative),
                    "already published by an earlier run; kept"
                );
            }
            fs::remove_file(&temp_path)
                .map_err(SinkError::io("remove uploaded temporary", &temp_path))?;
            // The lock goes with the last handle, only once the temporary is gone.
            drop(handle);
            file.path = PathBuf::from(store.url_of(&relative));
            return Ok(file);
        }
        handle
            .sync_all()
            .map_err(SinkError::io("fsync", &temp_path))?;
        file.bytes = handle.metadata().map(|m| m.len()).unwrap_or_default();
        fs::rename(&temp_path, &final_path)
            .map_err(SinkError::io("publish (rename)", &final_path))?;
        // Released only after the rename: unlocked, the temporary looks abandoned to a sink
        // starting on the same root.
        drop(handle);
        sync_dir(&dir)?;
        file.path = final_path;
        Ok(file)
    }
}

/// `<table>/date=YYYY-MM-DD`, a partition's place under the root.
fn partition_dir(family: Family, day: i64) -> String {
    format!("{}/date={}", family.table(), date_string(day))
}

/// The epoch day of a `date=YYYY-MM-DD` directory name.
fn partition_day(name: &str) -> Option<i64> {
    name.strip_prefix("date=").and_then(parse_date)
}

fn no_writer() -> SinkError {
    SinkError::NoWriter
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
