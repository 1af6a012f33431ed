//! `jobstream report`: per-job rollout outcomes from the Parquet tables, reconciled with the
//! counters AWS puts in each `completed` job event.
//!
//! Reading is pruned three ways, so a month of data answers in seconds:
//! * partitions: a `date=YYYY-MM-DD` directory outside `--since`/`--until` is never opened;
//! * row groups: within a file, a row group whose `event_time` statistics lie outside the
//!   window is skipped;
//! * columns: only the columns the report needs are fetched and decoded (job events: 14 of 24;
//!   executions: 6 of 12, leaving out the wide `thing_arn`, `extra`, `mqtt_topic`).
//!
//! Counting rules (the documented queries in `docs/queries.md` follow the same ones):
//! * AWS delivers at least once, so an event is counted once per distinct `event_id`, whichever
//!   file or partition its copies landed in;
//! * outcome counts are distinct execution events per operation; the success rate is
//!   succeeded ÷ (succeeded + failed + rejected + timed_out) — canceled, removed and deleted are
//!   operator decisions, not device outcomes;
//! * reconciliation compares each counter AWS sent (`number_of_<outcome>_things`) with the
//!   number of things whose latest execution event has that outcome: AWS counts things by their
//!   final status, so a retried execution that failed and then succeeded counts once, as
//!   succeeded. A counter AWS left out is not compared.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, Int64Array, MapArray, RecordBatch, StringArray};
use arrow_array::{PrimitiveArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;
use serde_json::{json, Value};

use crate::Failure;

/// Exit code of `--fail-on-mismatch` when some job's counters disagree with the events.
pub const EXIT_MISMATCH: u8 = 1;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The Parquet root written by `replay --parquet` or `run` (holds `job_events/` and
    /// `job_execution_events/`).
    #[arg(long)]
    parquet: PathBuf,
    /// Report only this job id (repeatable).
    #[arg(long = "job", value_name = "JOB_ID")]
    jobs: Vec<String>,
    /// Count only events at or after this UTC time: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]Z`.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    since: Option<i64>,
    /// Count only events before this UTC time (exclusive): `--since 2026-11-01 --until
    /// 2026-12-01` is November.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    until: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// How many of the most common failure reasons to show per job.
    #[arg(long, default_value_t = 3, value_name = "N")]
    reasons: usize,
    /// The `status_details` key that holds a failure's reason.
    #[arg(long, default_value = "reason", value_name = "KEY")]
    reason_key: String,
    /// List only jobs whose AWS counters disagree with the execution events received.
    #[arg(long)]
    mismatched_only: bool,
    /// Exit with status 1 when any job's counters disagree (for monitoring and cron).
    #[arg(long)]
    fail_on_mismatch: bool,
    /// Don't print what was read (files, pruning, bytes, time) on standard error.
    #[arg(long)]
    quiet: bool,
}

/// How the report is written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// An aligned table for a terminal, with a summary.
    Table,
    /// One row per job, RFC 4180.
    Csv,
    /// One document: jobs, summary and what was read.
    Json,
    /// A GitHub-flavoured Markdown table, with a summary.
    Markdown,
}

/// Parses a UTC time flag into ms since the epoch.
fn parse_time(text: &str) -> Result<i64, String> {
    const HELP: &str = "use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (UTC)";
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let days = jobstream_sink::time::parse_date(date)
        .ok_or_else(|| format!("{text:?} is not a date: {HELP}"))?;
    let mut ms = days * 86_400_000;
    if let Some(time) = time {
        let time = time
            .strip_suffix('Z')
            .or_else(|| time.strip_suffix("+00:00"))
            .unwrap_or(time);
        if time.contains(['+', '-']) {
            return Err(format!("{text:?}: only UTC times are accepted; {HELP}"));
        }
        let parts: Vec<&str> = time.split(':').collect();
        let field = |i: usize, max: i64| -> Result<i64, String> {
            match parts.get(i) {
                None => Ok(0),
                Some(p) => match p.parse::<i64>() {
                    Ok(v) if (0..=max).contains(&v) && p.len() == 2 => Ok(v),
                    _ => Err(format!("{text:?} has a bad time of day: {HELP}")),
                },
            }
        };
        if !(2..=3).contains(&parts.len()) {
            return Err(format!("{text:?} has a bad time of day: {HELP}"));
        }
        ms += field(0, 23)? * 3_600_000 + field(1, 59)? * 60_000 + field(2, 59)? * 1000;
    }
    Ok(ms)
}

/// Execution outcomes, in report order. The first six have an AWS counter.
const OUTCOMES: [&str; 7] = [
    "succeeded",
    "failed",
    "rejected",
    "timed_out",
    "canceled",
    "removed",
    "deleted",
];
/// The `job_events` counter column of each outcome that has one.
const COUNTER_COLUMNS: [&str; 6] = [
    "number_of_succeeded_things",
    "number_of_failed_things",
    "number_of_rejected_things",
    "number_of_timed_out_things",
    "number_of_canceled_things",
    "number_of_removed_things",
];
const SUCCEEDED: usize = 0;
/// Outcomes a failure reason is taken from, and that count against the success rate.
const UNSUCCESSFUL: [usize; 3] = [1, 2, 3];

fn outcome_index(operation: &str) -> Option<usize> {
    OUTCOMES.iter().position(|o| *o == operation)
}

const JOB_COLUMNS: [&str; 8] = [
    "event_id",
    "operation",
    "job_id",
    "event_time",
    "target_selection",
    "created_at",
    "last_updated_at",
    "completed_at",
];
/// Columns added after the first files were written: a file without one is read as if every
/// row had it empty.
const LATER_COLUMNS: [&str; 1] = ["anomalies"];
const EXECUTION_COLUMNS: [&str; 6] = [
    "event_id",
    "operation",
    "job_id",
    "thing_name",
    "event_time",
    "status_details",
];

/// The half-open window `[since, until)` of event times, ms.
#[derive(Debug, Clone, Copy)]
struct Window {
    since: Option<i64>,
    until: Option<i64>,
}

impl Window {
    fn contains(&self, t: i64) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Whether any time in `[lo, hi]` (inclusive) can fall in the window.
    fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.since.is_none_or(|s| hi >= s) && self.until.is_none_or(|u| lo < u)
    }
}

/// What reading cost: the evidence that pruning and projection did their work.
#[derive(Debug, Default)]
struct ScanStats {
    partitions_read: u64,
    partitions_skipped: u64,
    files_read: u64,
    row_groups_read: u64,
    row_groups_skipped: u64,
    columns_read: u64,
    columns_total: u64,
    rows_read: u64,
    bytes_read: Arc<AtomicU64>,
    bytes_in_files: u64,
}

/// A file that counts the bytes the Parquet reader takes from it. Counted as handed over, not
/// as buffered: a page header is read through an 8 KiB buffer that mostly holds page data the
/// reader then fetches again, and counting the buffer would blur what projection saves.
struct CountingFile {
    file: File,
    len: u64,
    read: Arc<AtomicU64>,
}

struct CountingRead {
    inner: BufReader<File>,
    read: Arc<AtomicU64>,
}

impl Read for CountingRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Length for CountingFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for CountingFile {
    type T = CountingRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let mut inner = self.file.try_clone()?;
        inner.seek(SeekFrom::Start(start))?;
        Ok(CountingRead {
            inner: BufReader::new(inner),
            read: self.read.clone(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let bytes = self.file.get_bytes(start, length)?;
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }
}

/// The published files of one table, minus the partitions the window excludes.
fn table_files(
    root: &Path,
    table: &str,
    window: Window,
    stats: &mut ScanStats,
) -> io::Result<Vec<PathBuf>> {
    let dir = root.join(table);
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    let mut partitions = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            // A `date=` directory holds only events of that UTC day; any other directory is
            // read whole.
            if let Some(day) = name
                .strip_prefix("date=")
                .and_then(jobstream_sink::time::parse_date)
            {
                let start = day * 86_400_000;
                if !window.overlaps(start, start + 86_400_000 - 1) {
                    stats.partitions_skipped += 1;
                    continue;
                }
            }
            stats.partitions_read += 1;
            partitions.push(entry.path());
        } else if name.ends_with(".parquet") {
            files.push(entry.path());
        }
    }
    for partition in partitions {
        for entry in std::fs::read_dir(&partition)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Dot-files are the sink's unpublished temporaries.
            if !name.starts_with('.') && name.ends_with(".parquet") && entry.file_type()?.is_file()
            {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Columns read as Arrow dictionaries. The sink writes them with Parquet dictionaries, so the
/// reader hands over each distinct value once and a key per row: a job id is looked up once
/// per batch instead of once per event.
const DICTIONARY_COLUMNS: [&str; 2] = ["job_id", "operation"];

/// The file's Arrow schema with [`DICTIONARY_COLUMNS`] asked for as dictionaries and every
/// other top-level string as `Utf8`: files rewritten by other tools (polars writes
/// `LargeUtf8` and `Utf8View`) read the same way as the sink's own.
fn with_dictionaries(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let string = matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            );
            if string && DICTIONARY_COLUMNS.contains(&f.name().as_str()) {
                f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))
            } else if string {
                f.as_ref().clone().with_data_type(DataType::Utf8)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// True when every file sits in a `date=` partition. The sink partitions by event time, so
/// every copy of an event lands in the same partition and duplicates can be found one
/// partition at a time, in memory bounded by the busiest day rather than the whole range.
fn partitioned_by_date(files: &[PathBuf]) -> bool {
    files.iter().all(|f| {
        f.parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("date="))
            .and_then(jobstream_sink::time::parse_date)
            .is_some()
    })
}

/// Reads `columns` of every file, row groups outside the window skipped, calling `visit` per
/// batch with the file it came from.
fn read_table(
    files: &[PathBuf],
    columns: &[&str],
    window: Window,
    stats: &mut ScanStats,
    mut visit: impl FnMut(&Path, &RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for path in files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        let reader = CountingFile {
            file,
            len,
            read: stats.bytes_read.clone(),
        };
        let unreadable = || format!("{} is not a readable Parquet file", path.display());
        let metadata = ArrowReaderMetadata::load(&reader, ArrowReaderOptions::new())
            .with_context(unreadable)?;
        let hinted = with_dictionaries(metadata.schema());
        let metadata = ArrowReaderMetadata::try_new(
            metadata.metadata().clone(),
            ArrowReaderOptions::new().with_schema(Arc::new(hinted)),
        )
        .with_context(unreadable)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(reader, metadata);
        let schema = builder.parquet_schema();
        let mut leaves = Vec::new();
        for name in columns {
            let found: Vec<usize> = schema
                .columns()
                .iter()
                .enumerate()
                .filter(|(_, c)| c.path().parts().first().is_some_and(|p| p == name))
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() && !LATER_COLUMNS.contains(name) {
                bail!(
                    "{} has no column {name:?}: is it a jobstream table?",
                    path.display()
                );
            }
            leaves.extend(found);
        }
        let time_leaf = schema
            .columns()
            .iter()
            .position(|c| c.path().parts() == ["event_time"]);
        let mut row_groups = Vec::new();
        for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
            let range = time_leaf
                .and_then(|leaf| rg.column(leaf).statistics())
                .and_then(|s| match s {
                    Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
                    _ => None,
                });
            match range {
                Some((lo, hi)) if !window.overlaps(lo, hi) => stats.row_groups_skipped += 1,
                _ => row_groups.push(i),
            }
        }
        stats.files_read += 1;
        stats.bytes_in_files += len;
        stats.columns_read += leaves.len() as u64;
        stats.columns_total += schema.num_columns() as u64;
        stats.row_groups_read += row_groups.len() as u64;
        if row_groups.is_empty() {
            continue;
        }
        let mask = ProjectionMask::leaves(schema, leaves);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(row_groups)
            .with_batch_size(16 * 1024)
            .build()
            .with_context(|| format!("cannot read {}", path.display()))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("cannot decode {}", path.display()))?;
            stats.rows_read += batch.num_rows() as u64;
            visit(path, &batch).with_context(|| format!("in {}", path.display()))?;
        }
    }
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("no column {name:?}"))
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a StringArray> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| anyhow!("column {name:?} is not a string column"))
}

/// A string column as read: plain, or an Arrow dictionary (see [`DICTIONARY_COLUMNS`]). Rows
/// map to keys; equal keys within a batch are equal strings.
enum Keyed<'a> {
    Plain(&'a StringArray),
    Dictionary {
        keys: &'a PrimitiveArray<Int32Type>,
        values: &'a StringArray,
    },
}

impl<'a> Keyed<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> anyhow::Result<Self> {
        let array = column(batch, name)?;
        if let Some(plain) = array.as_string_opt::<i32>() {
            return Ok(Keyed::Plain(plain));
        }
        let dictionary = array
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| anyhow!("column {name:?} is not a string column"))?;
        let values = dictionary
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| anyhow!("column {name:?} is not a string column"))?;
        Ok(Keyed::Dictionary {
            keys: dictionary.keys(),
            values,
        })
    }

    /// How many distinct keys rows can have.
    fn keys(&self) -> usize {
        match self {
            Keyed::Plain(a) => a.len(),
            Keyed::Dictionary { values, .. } => values.len(),
        }
    }

    /// The key of row `i`; `None` for a null.
    fn key(&self, i: usize) -> Option<usize> {
        match self {
            Keyed::Plain(a) => a.is_valid(i).then_some(i),
            Keyed::Dictionary { keys, values } => {
                let k = usize::try_from(keys.value(i)).ok()?;
                (keys.is_valid(i) && k < values.len() && values.is_valid(k)).then_some(k)
            }
        }
    }

    fn text(&self, key: usize) -> &'a str {
        match self {
            Keyed::Plain(a) => a.value(key),
            Keyed::Dictionary { values, .. } => values.value(key),
        }
    }
}

/// Per-batch memo of a value computed once per key.
struct Memo<T: Copy> {
    slots: Vec<Option<T>>,
}

impl<T: Copy> Memo<T> {
    fn new(keys: usize) -> Self {
        Memo {
            slots: vec![None; keys],
        }
    }

    fn get(&mut self, key: usize, compute: impl FnOnce() -> T) -> T {
        *self.slots[key].get_or_insert_with(compute)
    }
}

fn times<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a TimestampMillisecondArray> {
    column(batch, name)?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| anyhow!("column {name:?} is not TIMESTAMP(MILLIS)"))
}

fn int64s<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a Int64Array> {
    column(batch, name)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| anyhow!("column {name:?} is not INT64"))
}

fn opt<T: arrow_array::ArrowPrimitiveType>(a: &PrimitiveArray<T>, i: usize) -> Option<T::Native> {
    a.is_valid(i).then(|| a.value(i))
}

/// A canonical lower-case UUID as 128 bits; other ids stay strings.
///
/// Eight hex digits at a time in a `u64` (SWAR): one id per event makes this a tenth of the
/// report's time when done a character at a time.
fn uuid_bits(id: &str) -> Option<u128> {
    let b: &[u8; 36] = id.as_bytes().try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let word = |at: usize| -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let halves = |first: usize, second: usize| -> u64 {
        let mut w = [0u8; 8];
        w[..4].copy_from_slice(&b[first..first + 4]);
        w[4..].copy_from_slice(&b[second..second + 4]);
        u64::from_le_bytes(w)
    };
    // The groups are 8-4-4-4-12 digits: 0..8, 9..13 + 14..18, 19..23 + 24..28, 28..36.
    let words = [word(0), halves(9, 14), halves(19, 24), word(28)];
    let mut v: u128 = 0;
    for w in words {
        v = (v << 32) | u128::from(hex_word(w)?);
    }
    Some(v)
}

/// Eight lower-case hex digits (the first in the lowest byte) as a number, or `None` if any
/// byte is not one of `0-9a-f`.
fn hex_word(w: u64) -> Option<u32> {
    const LOW: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9 for letters
    // (bit 6 set). Each byte stays below 25, so no byte carries into the next.
    let nibbles = (w & LOW) + ((w >> 6) & ONES) * 9;
    // A hex digit gives a nibble (below 16) that spells it back: anything else fails one.
    let over_15 = (nibbles + 0x7070_7070_7070_7070) & 0x8080_8080_8080_8080;
    let letters = ((nibbles + 0x7676_7676_7676_7676) >> 7) & ONES;
    if over_15 != 0 || nibbles + 0x3030_3030_3030_3030 + letters * 0x27 != w {
        return None;
    }
    // Pairs of nibbles into bytes (the first digit is the high nibble), then bytes in order.
    let bytes = ((nibbles & 0x000f_000f_000f_000f) << 4) | ((nibbles >> 8) & 0x000f_000f_000f_000f);
    let byte = |k: u32| ((bytes >> (16 * k)) & 0xff) as u32;
    Some((byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3))
}

/// A multiply-and-add word hash in the manner of rustc's FxHasher. The aggregation does four hash lookups per
/// event and SipHash made them most of the report's time (measured: 30% of a 1M-event run);
/// the keys come from the user's own files, so resistance to crafted collisions buys nothing.
#[derive(Debug, Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = self.0.wrapping_add(word).wrapping_mul(Self::K);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // A product's high bits are its best mixed; the table takes its bucket from the low
        // ones, so rotate them down.
        self.0.rotate_left(26)
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// The event ids that can still have copies ahead: those of the current date partition when
/// every file is in one (files come sorted, so a partition's files are read together), all of
/// them otherwise.
struct Dedup {
    by_partition: bool,
    partition: Option<PathBuf>,
    seen: Seen,
}

impl Dedup {
    fn new(files: &[PathBuf]) -> Self {
        Dedup {
            by_partition: partitioned_by_date(files),
            partition: None,
            seen: Seen::default(),
        }
    }

    /// The set for the file at `path`.
    fn scope(&mut self, path: &Path) -> &mut Seen {
        if self.by_partition && self.partition.as_deref() != path.parent() {
            self.partition = path.parent().map(Path::to_owned);
            self.seen = Seen::default();
        }
        &mut self.seen
    }
}

/// Event ids seen so far. AWS ids are UUIDs, kept as 16 bytes each.
#[derive(Debug, Default)]
struct Seen {
    uuids: FastSet<u128>,
    other: FastSet<Box<str>>,
}

impl Seen {
    /// True the first time `id` is offered.
    fn first(&mut self, id: &str) -> bool {
        match uuid_bits(id) {
            Some(bits) => self.uuids.insert(bits),
            None => !self.other.contains(id) && self.other.insert(id.into()),
        }
    }
}

/// The event that ended a job: `completed`, `canceled` or `deleted`.
#[derive(Debug, Clone)]
struct Ending {
    operation: String,
    event_time: i64,
    ended_at: i64,
    /// AWS's counters, per outcome with a counter; `None` where AWS sent none.
    counters: [Option<i64>; 6],
}

#[derive(Debug, Default)]
struct JobAgg {
    target_selection: Option<String>,
    created_at: Option<i64>,
    ending: Option<Ending>,
    /// The latest `cancellation_in_progress` / `deletion_in_progress`.
    in_progress: Option<(i64, String)>,
    first_event: Option<i64>,
    last_event: Option<i64>,
    outcomes: [u64; 7],
    reasons: FastMap<String, u64>,
    /// Things per latest outcome, filled after reading.
    things: [u64; 7],
}

impl JobAgg {
    fn saw(&mut self, t: i64) {
        self.first_event = Some(self.first_event.map_or(t, |f| f.min(t)));
        self.last_event = Some(self.last_event.map_or(t, |l| l.max(t)));
    }
}

/// Each (job, thing)'s latest execution outcome, in one hash table probed once per event and
/// without an allocation per thing: names go to one arena, the table maps a hash of (job,
/// name) to a slot, and the slot's stored job and name confirm the match. A key whose hash is
/// taken by another goes to `clashes`, searched in full: with 64-bit hashes that takes about
/// 10⁹ things, or crafted names in the user's own files.
#[derive(Debug, Default)]
struct Latest {
    arena: String,
    slots: Vec<Slot>,
    by_hash: FastMap<u64, u32>,
    clashes: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    job: u32,
    start: usize,
    len: usize,
    time: i64,
    outcome: u8,
}

impl Latest {
    fn name(&self, slot: &Slot) -> &str {
        &self.arena[slot.start..slot.start + slot.len]
    }

    fn push(
        arena: &mut String,
        slots: &mut Vec<Slot>,
        job: u32,
        name: &str,
        time: i64,
        outcome: u8,
    ) -> u32 {
        let id = slots.len() as u32;
        slots.push(Slot {
            job,
            start: arena.len(),
            len: name.len(),
            time,
            outcome,
        });
        arena.push_str(name);
        id
    }

    /// Records an execution event of `name` in `job`. The latest by event time wins; a tie
    /// (same second) goes to the later outcome in [`OUTCOMES`] order, so the result does not
    /// depend on the order files are read in.
    fn record(&mut self, job: u32, name: &str, time: i64, outcome: u8) {
        let mut hasher = FastHasher::default();
        hasher.write_u32(job);
        hasher.write(name.as_bytes());
        let id = match self.by_hash.entry(hasher.finish()) {
            Entry::Vacant(vacant) => {
                vacant.insert(Self::push(
                    &mut self.arena,
                    &mut self.slots,
                    job,
                    name,
                    time,
                    outcome,
                ));
                return;
            }
            Entry::Occupied(occupied) => *occupied.get(),
        };
        let slot = self.slots[id as usize];
        let id = if slot.job == job && self.name(&slot) == name {
            id
        } else if let Some(&id) = self.clashes.iter().find(|&&c| {
            let clash = &self.slots[c as usize];
            clash.job == job && self.name(clash) == name
        }) {
            id
        } else {
            let id = Self::push(&mut self.arena, &mut self.slots, job, name, time, outcome);
            self.clashes.push(id);
            return;
        };
        let slot = &mut self.slots[id as usize];
        if (time, outcome) > (slot.time, slot.outcome) {
            slot.time = time;
            slot.outcome = outcome;
        }
    }
}

#[derive(Debug, Default)]
struct Aggregate {
    index: FastMap<Box<str>, u32>,
    jobs: Vec<(String, JobAgg)>,
    /// Each (job, thing)'s latest execution outcome.
    latest: Latest,
    job_events: u64,
    executions: u64,
    duplicates: u64,
    unknown_operations: u64,
    /// Events kept with an anomaly (counted like any other event too).
    anomalous: u64,
}

impl Aggregate {
    fn job(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.jobs.len() as u32;
        self.index.insert(id.into(), i);
        self.jobs.push((id.to_owned(), JobAgg::default()));
        i
    }
}

/// Filters shared by both tables.
struct Filter<'a> {
    window: Window,
    jobs: &'a HashSet<&'a str>,
}

impl Filter<'_> {
    fn keeps_job(&self, job: &str) -> bool {
        self.jobs.is_empty() || self.jobs.contains(job)
    }
}

/// The job index of row `i`, interned on first sight; `None` when the job filter excludes it.
fn job_of(
    agg: &mut Aggregate,
    filter: &Filter<'_>,
    job_id: &Keyed<'_>,
    memo: &mut Memo<Option<u32>>,
    i: usize,
) -> Option<u32> {
    let key = job_id.key(i)?;
    memo.get(key, || {
        let job = job_id.text(key);
        filter.keeps_job(job).then(|| agg.job(job))
    })
}

/// The `anomalies` column, absent in files written before it existed.
fn anomaly_lists(batch: &RecordBatch) -> Option<&arrow_array::ListArray> {
    batch.column_by_name("anomalies")?.as_list_opt::<i32>()
}

fn has_anomalies(anomalies: Option<&arrow_array::ListArray>, row: usize) -> bool {
    anomalies.is_some_and(|lists| lists.is_valid(row) && lists.value_length(row) > 0)
}

fn add_job_events(
    agg: &mut Aggregate,
    seen: &mut Seen,
    filter: &Filter<'_>,
    batch: &RecordBatch,
) -> anyhow::Result<()> {
    let event_id = strings(batch, "event_id")?;
    let operation = Keyed::of(batch, "operation")?;
    let job_id = Keyed::of(batch, "job_id")?;
    let event_time = times(batch, "event_time")?;
    let selection = strings(batch, "target_selection")?;
    let created = times(batch, "created_at")?;
    let updated = times(batch, "last_updated_at")?;
    let completed = times(batch, "completed_at")?;
    let anomalies = anomaly_lists(batch);
    let counters = COUNTER_COLUMNS
        .iter()
        .map(|c| int64s(batch, c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut jobs = Memo::new(job_id.keys());
    for i in 0..batch.num_rows() {
        let t = event_time.value(i);
        if !filter.window.contains(t) {
            continue;
        }
        let Some(j) = job_of(agg, filter, &job_id, &mut jobs, i) else {
            continue;
        };
        if !seen.first(event_id.value(i)) {
            agg.duplicates += 1;
            continue;
        }
        agg.job_events += 1;
        agg.anomalous += u64::from(has_anomalies(anomalies, i));
        let state = &mut agg.jobs[j as usize].1;
        state.saw(t);
        if selection.is_valid(i) {
            state.target_selection = Some(selection.value(i).to_owned());
        }
        if let Some(c) = opt(created, i) {
            state.created_at = Some(c);
        }
        let op = operation.key(i).map_or("", |k| operation.text(k));
        match op {
            "completed" | "canceled" | "deleted" => {
                if state.ending.as_ref().is_some_and(|e| e.event_time > t) {
                    continue;
                }
                let ended_at = opt(completed, i).or(opt(updated, i)).unwrap_or(t);
                state.ending = Some(Ending {
                    operation: op.to_owned(),
                    event_time: t,
                    ended_at,
                    counters: std::array::from_fn(|k| opt(counters[k], i)),
                });
            }
            "cancellation_in_progress" | "deletion_in_progress" => {
                if state.in_progress.as_ref().is_none_or(|(at, _)| *at <= t) {
                    state.in_progress = Some((t, op.to_owned()));
                }
            }
            _ => agg.unknown_operations += 1,
        }
    }
    Ok(())
}

fn add_executions(
    agg: &mut Aggregate,
    seen: &mut Seen,
    filter: &Filter<'_>,
    reason_key: &str,
    batch: &RecordBatch,
) -> anyhow::Result<()> {
    let event_id = strings(batch, "event_id")?;
    let operation = Keyed::of(batch, "operation")?;
    let job_id = Keyed::of(batch, "job_id")?;
    let thing_name = strings(batch, "thing_name")?;
    let event_time = times(batch, "event_time")?;
    let anomalies = anomaly_lists(batch);
    let details: &MapArray = column(batch, "status_details")?
        .as_map_opt()
        .ok_or_else(|| anyhow!("column \"status_details\" is not a MAP"))?;
    let keys = details
        .keys()
        .as_string_opt::<i32>()
        .ok_or_else(|| anyhow!("status_details keys are not strings"))?;
    let values = details
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| anyhow!("status_details values are not strings"))?;
    let offsets = details.value_offsets();
    let mut jobs = Memo::new(job_id.keys());
    let mut outcomes = Memo::new(operation.keys());
    for i in 0..batch.num_rows() {
        let t = event_time.value(i);
        if !filter.window.contains(t) {
            continue;
        }
        let Some(j) = job_of(agg, filter, &job_id, &mut jobs, i) else {
            continue;
        };
        if !seen.first(event_id.value(i)) {
            agg.duplicates += 1;
            continue;
        }
        agg.executions += 1;
        agg.anomalous += u64::from(has_anomalies(anomalies, i));
        let outcome = operation
            .key(i)
            .and_then(|k| outcomes.get(k, || outcome_index(operation.text(k))));
        let Some(outcome) = outcome else {
            agg.unknown_operations += 1;
            continue;
        };
        let state = &mut agg.jobs[j as usize].1;
        state.saw(t);
        state.outcomes[outcome] += 1;
        if UNSUCCESSFUL.contains(&outcome) && details.is_valid(i) {
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            if let Some(k) = (start..end).find(|&k| keys.value(k) == reason_key) {
                if values.is_valid(k) {
                    let reason = values.value(k);
                    match state.reasons.get_mut(reason) {
                        Some(n) => *n += 1,
                        None => {
                            state.reasons.insert(reason.to_owned(), 1);
                        }
                    }
                }
            }
        }
        agg.latest.record(j, thing_name.value(i), t, outcome as u8);
    }
    Ok(())
}

/// How a job's counters compare with the events received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reconciliation {
    /// Every counter AWS sent equals the things seen with that outcome.
    Ok,
    /// Some differ: `(outcome, aws, seen)`.
    Mismatch(Vec<(usize, i64, u64)>),
    /// The job has not completed (or AWS sent no counters): nothing to compare.
    NoCounters,
    /// The job was created before `--since`: its earlier executions were not read.
    OutsideWindow,
}

impl Reconciliation {
    fn status(&self) -> &'static str {
        match self {
            Reconciliation::Ok => "ok",
            Reconciliation::Mismatch(_) => "mismatch",
            Reconciliation::NoCounters => "no_counters",
            Reconciliation::OutsideWindow => "outside_window",
        }
    }

    fn detail(&self) -> String {
        match self {
            Reconciliation::Mismatch(diffs) => diffs
                .iter()
                .map(|(o, aws, seen)| format!("{} aws {aws} seen {seen}", OUTCOMES[*o]))
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::new(),
        }
    }
}

/// One job's line of the report.
#[derive(Debug)]
struct JobReport {
    job_id: String,
    target_selection: Option<String>,
    state: String,
    created_at: Option<i64>,
    ended_at: Option<i64>,
    first_event: Option<i64>,
    last_event: Option<i64>,
    outcomes: [u64; 7],
    things: [u64; 7],
    success_rate: Option<f64>,
    reasons: Vec<(String, u64)>,
    counters: Option<[Option<i64>; 6]>,
    reconciliation: Reconciliation,
}

impl JobReport {
    fn duration_ms(&self) -> Option<i64> {
        Some(self.ended_at? - self.created_at?)
    }
}

fn finish(mut agg: Aggregate, window: Window, top_reasons: usize) -> Vec<JobReport> {
    for slot in &agg.latest.slots {
        let (job, outcome) = (slot.job, slot.outcome);
        agg.jobs[job as usize].1.things[outcome as usize] += 1;
    }
    let mut reports: Vec<JobReport> =
        agg.jobs
            .into_iter()
            .map(|(job_id, job)| {
                let state = match (&job.ending, &job.in_progress) {
                    (Some(e), _) => e.operation.clone(),
                    (None, Some((_, op))) => op.clone(),
                    (None, None) => "in_progress".to_owned(),
                };
                let counters = job
                    .ending
                    .as_ref()
                    .map(|e| e.counters)
                    .filter(|c| c.iter().any(Option::is_some));
                let reconciliation =
                    match counters {
                        None => Reconciliation::NoCounters,
                        // A job created before the window may have executions before it too, which
                        // were not read. Executions come after creation; `timestamp` has whole
                        // seconds, so creation is compared at that resolution.
                        Some(_)
                            if window.since.is_some_and(|s| {
                                job.created_at.is_none_or(|c| c - c.rem_euclid(1000) < s)
                            }) =>
                        {
                            Reconciliation::OutsideWindow
                        }
                        Some(counters) => {
                            let diffs: Vec<(usize, i64, u64)> =
                                counters
                                    .iter()
                                    .enumerate()
                                    .filter_map(|(o, aws)| {
                                        let aws = (*aws)?;
                                        (u64::try_from(aws).ok() != Some(job.things[o]))
                                            .then_some((o, aws, job.things[o]))
                                    })
                                    .collect();
                            if diffs.is_empty() {
                                Reconciliation::Ok
                            } else {
                                Reconciliation::Mismatch(diffs)
                            }
                        }
                    };
                let decided = job.outcomes[SUCCEEDED]
                    + UNSUCCESSFUL.iter().map(|&o| job.outcomes[o]).sum::<u64>();
                let mut reasons: Vec<(String, u64)> = job.reasons.into_iter().collect();
                reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                reasons.truncate(top_reasons);
                JobReport {
                    job_id,
                    target_selection: job.target_selection,
                    state,
                    created_at: job.created_at,
                    ended_at: job.ending.as_ref().map(|e| e.ended_at),
                    first_event: job.first_event,
                    last_event: job.last_event,
                    outcomes: job.outcomes,
                    things: job.things,
                    success_rate: (decided > 0)
                        .then(|| job.outcomes[SUCCEEDED] as f64 / decided as f64),
                    reasons,
                    counters,
                    reconciliation,
                }
            })
            .collect();
    reports.sort_by(|a, b| {
        a.created_at
            .or(a.first_event)
            .cmp(&b.created_at.or(b.first_event))
            .then_with(|| a.job_id.cmp(&b.job_id))
    });
    reports
}

/// `2026-11-20T00:00:00.000Z` of ms since the epoch.
fn iso(ms: i64) -> String {
    let (y, mo, d) = jobstream_sink::time::civil_from_days(ms.div_euclid(86_400_000));
    let rest = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// `2026-11-20 00:00:00Z`, for tables read by people.
fn short_time(ms: i64) -> String {
    let full = iso(ms);
    format!("{} {}Z", &full[..10], &full[11..19])
}

fn human_duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{sign}{d}d {h:02}h {m:02}m")
    } else if h > 0 {
        format!("{sign}{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{sign}{m}m {s:02}s")
    } else {
        format!("{sign}{s}.{}s", ms % 1000 / 100)
    }
}

/// Control characters (reasons carry newlines) shown as escapes, so one job is one line.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn reasons_text(job: &JobReport) -> String {
    job.reasons
        .iter()
        .map(|(r, n)| format!("{} ×{n}", one_line(r)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn percent(rate: Option<f64>) -> String {
    rate.map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_default()
}

fn counters_cell(job: &JobReport) -> String {
    match &job.reconciliation {
        Reconciliation::Ok => "ok".to_owned(),
        Reconciliation::Mismatch(diffs) => format!(
            "MISMATCH {}",
            diffs
                .iter()
                .map(|(o, aws, seen)| format!("{} {aws}≠{seen}", OUTCOMES[*o]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Reconciliation::NoCounters => "-".to_owned(),
        Reconciliation::OutsideWindow => "created before --since".to_owned(),
    }
}

/// Totals over the reported jobs.
#[derive(Debug, Default)]
struct Summary {
    jobs: u64,
    by_state: Vec<(String, u64)>,
    job_events: u64,
    executions: u64,
    duplicates: u64,
    unknown_operations: u64,
    /// Events kept with an anomaly; they count in every other number as well.
    anomalous: u64,
    mismatched: u64,
    /// Executions AWS counted that never arrived, over the mismatched jobs.
    missing: u64,
}

fn summarise(
    jobs: &[JobReport],
    job_events: u64,
    executions: u64,
    duplicates: u64,
    unknown: u64,
    anomalous: u64,
) -> Summary {
    let mut by_state: HashMap<&str, u64> = HashMap::new();
    let mut summary = Summary {
        jobs: jobs.len() as u64,
        job_events,
        executions,
        duplicates,
        unknown_operations: unknown,
        anomalous,
        ..Summary::default()
    };
    for job in jobs {
        *by_state.entry(job.state.as_str()).or_default() += 1;
        if let Reconciliation::Mismatch(diffs) = &job.reconciliation {
            summary.mismatched += 1;
            summary.missing += diffs
                .iter()
                .map(|(_, aws, seen)| u64::try_from(*aws).unwrap_or(0).saturating_sub(*seen))
                .sum::<u64>();
        }
    }
    let mut by_state: Vec<(String, u64)> = by_state
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    by_state.sort();
    summary.by_state = by_state;
    summary
}

const HEADERS: [&str; 14] = [
    "JOB",
    "SELECTION",
    "STATE",
    "CREATED",
    "DURATION",
    "SUCCEEDED",
    "FAILED",
    "REJECTED",
    "TIMED OUT",
    "CANCELED",
    "REMOVED",
    "SUCCESS",
    "TOP FAILURE REASONS",
    "AWS COUNTERS",
];
/// Columns aligned right (numbers).
const NUMERIC: [bool; 14] = [
    false, false, false, false, true, true, true, true, true, true, true, true, false, false,
];

/// Cells of the people-facing formats; reasons cut to `reason_chars` when given.
fn display_rows(jobs: &[JobReport], reason_chars: Option<usize>) -> Vec<[String; 14]> {
    jobs.iter()
        .map(|job| {
            [
                job.job_id.clone(),
                job.target_selection.clone().unwrap_or_default(),
                job.state.clone(),
                job.created_at.map(short_time).unwrap_or_default(),
                job.duration_ms().map(human_duration).unwrap_or_default(),
                job.outcomes[0].to_string(),
                job.outcomes[1].to_string(),
                job.outcomes[2].to_string(),
                job.outcomes[3].to_string(),
                job.outcomes[4].to_string(),
                job.outcomes[5].to_string(),
                percent(job.success_rate),
                match reason_chars {
                    Some(max) => truncate(&reasons_text(job), max),
                    None => reasons_text(job),
                },
                counters_cell(job),
            ]
        })
        .collect()
}

fn summary_lines(summary: &Summary) -> Vec<String> {
    let states = summary
        .by_state
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut lines = vec![
        format!("{} jobs ({states})", summary.jobs),
        format!(
            "{} job events, {} execution events ({} duplicate copies by event_id ignored)",
            summary.job_events, summary.executions, summary.duplicates
        ),
    ];
    if summary.anomalous > 0 {
        lines.push(format!(
            "{} of them kept with an anomaly (counted by their operation like any other; see the anomalies column)",
            summary.anomalous
        ));
    }
    if summary.unknown_operations > 0 {
        lines.push(format!(
            "{} events with an operation the report does not know were ignored",
            summary.unknown_operations
        ));
    }
    lines.push(if summary.mismatched == 0 {
        "AWS's counters agree with the execution events received for every completed job"
            .to_owned()
    } else {
        format!(
            "{} completed jobs disagree with AWS's counters ({} executions AWS counted never arrived): events were lost upstream",
            summary.mismatched, summary.missing
        )
    });
    lines
}

fn write_table(out: &mut impl Write, jobs: &[JobReport], summary: &Summary) -> io::Result<()> {
    // A terminal line should stay readable; the full reasons are in the other formats.
    let rows = display_rows(jobs, Some(60));
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
        let mut text = String::new();
        for (k, cell) in cells.iter().enumerate() {
            let pad = widths[k].saturating_sub(cell.chars().count());
            if k > 0 {
                text.push_str("  ");
            }
            if NUMERIC[k] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if k + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &HEADERS.map(str::to_owned))?;
    for row in &rows {
        line(out, row)?;
    }
    writeln!(out)?;
    for l in summary_lines(summary) {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

fn write_markdown(out: &mut impl Write, jobs: &[JobReport], summary: &Summary) -> io::Result<()> {
    let cell = |s: &str| s.replace('|', "\\|");
    writeln!(out, "| {} |", HEADERS.join(" | "))?;
    let rule: Vec<&str> = NUMERIC
        .iter()
        .map(|&n| if n { "---:" } else { "---" })
        .collect();
    writeln!(out, "| {} |", rule.join(" | "))?;
    for row in display_rows(jobs, None) {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        writeln!(out, "| {} |", cells.join(" | "))?;
    }
    writeln!(out)?;
    for l in summary_lines(summary) {
        writeln!(out, "* {l}")?;
    }
    Ok(())
}

const CSV_HEADERS: [&str; 19] = [
    "job_id",
    "target_selection",
    "state",
    "created_at",
    "ended_at",
    "duration_s",
    "first_event_at",
    "last_event_at",
    "succeeded",
    "failed",
    "rejected",
    "timed_out",
    "canceled",
    "removed",
    "deleted",
    "success_rate",
    "top_failure_reasons",
    "reconciliation",
    "reconciliation_detail",
];

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn write_csv(out: &mut impl Write, jobs: &[JobReport]) -> io::Result<()> {
    writeln!(out, "{}", CSV_HEADERS.join(","))?;
    for job in jobs {
        let reasons = job
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} ×{n}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut cells = vec![
            job.job_id.clone(),
            job.target_selection.clone().unwrap_or_default(),
            job.state.clone(),
            job.created_at.map(iso).unwrap_or_default(),
            job.ended_at.map(iso).unwrap_or_default(),
            job.duration_ms()
                .map(|d| format!("{:.3}", d as f64 / 1000.0))
                .unwrap_or_default(),
            job.first_event.map(iso).unwrap_or_default(),
            job.last_event.map(iso).unwrap_or_default(),
        ];
        cells.extend(job.outcomes.iter().map(u64::to_string));
        cells.push(
            job.success_rate
                .map(|r| format!("{r:.4}"))
                .unwrap_or_default(),
        );
        cells.push(reasons);
        cells.push(job.reconciliation.status().to_owned());
        cells.push(job.reconciliation.detail());
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

fn outcome_object(values: impl Iterator<Item = Value>) -> Value {
    Value::Object(
        OUTCOMES
            .iter()
            .zip(values)
            .map(|(o, v)| ((*o).to_owned(), v))
            .collect(),
    )
}

fn job_json(job: &JobReport) -> Value {
    let differences: Vec<Value> = match &job.reconciliation {
        Reconciliation::Mismatch(diffs) => diffs
            .iter()
            .map(|(o, aws, seen)| json!({"outcome": OUTCOMES[*o], "aws": aws, "seen": seen}))
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "job_id": job.job_id,
        "target_selection": job.target_selection,
        "state": job.state,
        "created_at": job.created_at.map(iso),
        "ended_at": job.ended_at.map(iso),
        "duration_ms": job.duration_ms(),
        "first_event_at": job.first_event.map(iso),
        "last_event_at": job.last_event.map(iso),
        "executions": outcome_object(job.outcomes.iter().map(|&n| json!(n))),
        "success_rate": job.success_rate,
        "failure_reasons": job.reasons.iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        "reconciliation": {
            "status": job.reconciliation.status(),
            "aws": job.counters.map(|c| Value::Object(
                OUTCOMES.iter().zip(c).map(|(o, v)| ((*o).to_owned(), json!(v))).collect()
            )),
            "things_by_latest_outcome": outcome_object(job.things.iter().map(|&n| json!(n))),
            "differences": differences,
        },
    })
}

fn write_json(
    out: &mut impl Write,
    jobs: &[JobReport],
    summary: &Summary,
    stats: &ScanStats,
    seconds: f64,
) -> io::Result<()> {
    let document = json!({
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        "summary": {
            "jobs": summary.jobs,
            "by_state": summary.by_state.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "job_events": summary.job_events,
            "execution_events": summary.executions,
            "duplicates_ignored": summary.duplicates,
            "unknown_operations": summary.unknown_operations,
            "events_with_anomalies": summary.anomalous,
            "mismatched_jobs": summary.mismatched,
            "missing_executions": summary.missing,
        },
        "scan": scan_json(stats, seconds),
    });
    serde_json::to_writer_pretty(&mut *out, &document)?;
    writeln!(out)
}

fn scan_json(stats: &ScanStats, seconds: f64) -> Value {
    json!({
        "partitions_read": stats.partitions_read,
        "partitions_skipped": stats.partitions_skipped,
        "files_read": stats.files_read,
        "row_groups_read": stats.row_groups_read,
        "row_groups_skipped": stats.row_groups_skipped,
        "columns_read": stats.columns_read,
        "columns_in_files": stats.columns_total,
        "rows_read": stats.rows_read,
        "bytes_read": stats.bytes_read.load(Ordering::Relaxed),
        "bytes_in_files": stats.bytes_in_files,
        "seconds": seconds,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

pub fn run(args: ReportArgs) -> Result<(), Failure> {
    let started = Instant::now();
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            return Err(Failure::new(
                crate::EXIT_CONFIG,
                anyhow!("--since must be before --until"),
            ));
        }
    }
    let root = &args.parquet;
    if !root.join("job_events").is_dir() && !root.join("job_execution_events").is_dir() {
        return Err(Failure::new(
            crate::EXIT_NO_INPUT,
            anyhow!(
                "{} holds neither job_events/ nor job_execution_events/: give the directory passed to `replay --parquet`",
                root.display()
            ),
        ));
    }
    let window = Window {
        since: args.since,
        until: args.until,
    };
    let jobs: HashSet<&str> = args.jobs.iter().map(String::as_str).collect();
    let filter = Filter {
        window,
        jobs: &jobs,
    };
    let mut stats = ScanStats::default();
    let job_files = table_files(root, "job_events", window, &mut stats)
        .with_context(|| format!("cannot list {}", root.display()))?;
    let execution_files = table_files(root, "job_execution_events", window, &mut stats)
        .with_context(|| format!("cannot list {}", root.display()))?;

    let mut agg = Aggregate::default();
    let mut dedup = Dedup::new(&job_files);
    read_table(
        &job_files,
        &[&JOB_COLUMNS[..], &COUNTER_COLUMNS[..], &LATER_COLUMNS[..]].concat(),
        window,
        &mut stats,
        |path, batch| add_job_events(&mut agg, dedup.scope(path), &filter, batch),
    )?;
    // An event id belongs to one table: each table starts afresh.
    let mut dedup = Dedup::new(&execution_files);
    read_table(
        &execution_files,
        &[&EXECUTION_COLUMNS[..], &LATER_COLUMNS[..]].concat(),
        window,
        &mut stats,
        |path, batch| {
            add_executions(
                &mut agg,
                dedup.scope(path),
                &filter,
                &args.reason_key,
                batch,
            )
        },
    )?;
    drop(dedup);

    let (job_events, executions, duplicates, unknown, anomalous) = (
        agg.job_events,
        agg.executions,
        agg.duplicates,
        agg.unknown_operations,
        agg.anomalous,
    );
    let mut reports = finish(agg, window, args.reasons);
    let summary = summarise(
        &reports, job_events, executions, duplicates, unknown, anomalous,
    );
    if args.mismatched_only {
        reports.retain(|j| matches!(j.reconciliation, Reconciliation::Mismatch(_)));
    }
    let seconds = started.elapsed().as_secs_f64();

    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::new(stdout);
    match args.format {
        Format::Table => write_table(&mut out, &reports, &summary),
        Format::Markdown => write_markdown(&mut out, &reports, &summary),
        Format::Csv => write_csv(&mut out, &reports),
        Format::Json => write_json(&mut out, &reports, &summary, &stats, seconds),
    }
    .and_then(|()| out.flush())
    .context("writing the report")?;

    if !args.quiet {
        let read = stats.bytes_read.load(Ordering::Relaxed);
        eprintln!(
            "report: {} files in {} partitions read ({} partitions, {} row groups skipped by time); {} of {} columns, {:.1} of {:.1} MiB, {} rows in {:.2} s",
            stats.files_read,
            stats.partitions_read,
            stats.partitions_skipped,
            stats.row_groups_skipped,
            stats.columns_read,
            stats.columns_total,
            mib(read),
            mib(stats.bytes_in_files),
            stats.rows_read,
            seconds
        );
    }
    if args.fail_on_mismatch && summary.mismatched > 0 {
        return Err(Failure::new(
            EXIT_MISMATCH,
            anyhow!("{} jobs disagree with AWS's counters", summary.mismatched),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc_and_refuse_offsets() {
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_time("1970-01-01T01:02:03Z"), Ok(3_723_000));
        assert_eq!(parse_time("1970-01-01 01:02"), Ok(3_720_000));
        assert_eq!(parse_time("1970-01-01T00:00:01+00:00"), Ok(1000));
        assert!(parse_time("1970-01-01T01:00+02:00").is_err());
        assert!(parse_time("1970-01-01T25:00").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    /// The character-at-a-time reading `uuid_bits` replaced, as the reference.
    fn uuid_bits_by_characters(id: &str) -> Option<u128> {
        let b = id.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = (v << 4) | u128::from(d);
        }
        Some(v)
    }

    #[test]
    fn uuids_read_eight_digits_at_a_time_agree_with_reading_one_at_a_time() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let hex = b"0123456789abcdef";
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut id: Vec<u8> = (0..36)
                .map(|i| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        b'-'
                    } else {
                        hex[rng.random_range(0..16)]
                    }
                })
                .collect();
            // Most ids get one byte replaced by any value: every position, every byte.
            if rng.random_bool(0.7) {
                let at = rng.random_range(0..36);
                id[at] = rng.random();
            }
            if let Ok(id) = std::str::from_utf8(&id) {
                assert_eq!(uuid_bits(id), uuid_bits_by_characters(id), "{id}");
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
        for id in [
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "00000000-0000-0000-0000-000000000000",
            "0123456789abcdef0123456789abcdef0123",
            "01234567-89ab-cdef-0123-456789abcde",
            "01234567-89ab-cdef-0123-456789abcdefg",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "01234567-89ab-cdef-0123-456789abcde/",
            "01234567-89ab-cdef-0123-456789abcde:",
            "01234567-89ab-cdef-0123-456789abcde`",
            "01234567-89ab-cdef-0123-456789abcdeG",
            "01234567-89ab-cdef-0123-456789abcdeF",
        ] {
            assert_eq!(uuid_bits(id), uuid_bits_by_characters(id), "{id}");
        }
        assert_eq!(
            uuid_bits("01234567-89ab-cdef-0123-456789abcdef"),
            Some(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
        );
    }

    #[test]
    fn uuids_pack_and_other_ids_do_not() {
        assert_eq!(uuid_bits("00000000-0000-0000-0000-0000000000ff"), Some(255));
        assert_eq!(uuid_bits("00000000-0000-0000-0000-0000000000FF"), None);
        assert_eq!(uuid_bits("not-a-uuid"), None);
        let mut seen = Seen::default();
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        assert!(seen.first("00000000-0000-0000-0000-0000000000ff"));
        assert!(!seen.first("00000000-0000-0000-0000-0000000000ff"));
    }

    #[test]
    fn the_latest_outcome_per_job_and_thing_survives_hash_clashes() {
        let mut latest = Latest::default();
        latest.record(0, "sensor-a", 10, 1);
        latest.record(0, "sensor-a", 5, 0); // older: ignored
        latest.record(1, "sensor-a", 5, 0); // another job: another slot
                                            // Force (0, "sensor-b") onto (0, "sensor-a")'s hash.
        let mut hasher = FastHasher::default();
        hasher.write_u32(0);
        hasher.write(b"sensor-b");
        latest.by_hash.insert(hasher.finish(), 0);
        latest.record(0, "sensor-b", 7, 2);
        latest.record(0, "sensor-b", 9, 0); // newer: wins
        latest.record(0, "sensor-a", 10, 3); // same second: the later outcome wins
        let slots: Vec<(u32, &str, i64, u8)> = latest
            .slots
            .iter()
            .map(|s| (s.job, latest.name(s), s.time, s.outcome))
            .collect();
        assert_eq!(
            slots,
            [
                (0, "sensor-a", 10, 3),
                (1, "sensor-a", 5, 0),
                (0, "sensor-b", 9, 0)
            ]
        );
        assert_eq!(latest.clashes, [2]);
    }

    #[test]
    fn duplicates_are_tracked_per_date_partition_only_when_every_file_has_one() {
        let day = |d: &str| PathBuf::from(format!("t/date={d}/f.parquet"));
        let files = [day("2026-11-01"), day("2026-11-02")];
        let mut dedup = Dedup::new(&files);
        assert!(dedup.scope(&files[0]).first("x"));
        assert!(!dedup.scope(&files[0]).first("x"));
        assert!(
            dedup.scope(&files[1]).first("x"),
            "a new partition starts afresh"
        );
        let mixed = [day("2026-11-01"), PathBuf::from("t/other/f.parquet")];
        let mut dedup = Dedup::new(&mixed);
        assert!(dedup.scope(&mixed[0]).first("x"));
        assert!(
            !dedup.scope(&mixed[1]).first("x"),
            "one set when not all are partitioned"
        );
    }

    #[test]
    fn times_and_durations_read_as_people_write_them() {
        assert_eq!(iso(1_795_132_800_123), "2026-11-20T00:00:00.123Z");
        assert_eq!(short_time(1_795_132_800_123), "2026-11-20 00:00:00Z");
        assert_eq!(human_duration(3_723_000), "1h 02m 03s");
        assert_eq!(human_duration(90_061_000), "1d 01h 01m");
        assert_eq!(human_duration(1_500), "1.5s");
        assert_eq!(one_line("a\nb\u{1}"), "a\\nb\\u{1}");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
