//! Reading the tables: which files, which row groups, which columns, and what that cost.
//!
//! Pruned three ways, so a month of data answers in seconds: a `date=YYYY-MM-DD` partition
//! outside the window is never opened; a row group whose `event_time` statistics lie outside it
//! is skipped; only the columns the report needs are fetched and decoded.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use jobstream_parser::columns;
use jobstream_sink::parquet::store::{Location, ObjectRoot, RemoteFile, RemoteRead};
use jobstream_sink::time::parse_date;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;

use crate::error::{ColumnError, ReportError};

/// The half-open window `[since, until)` of event times, ms.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The first ms counted, if any.
    pub since: Option<i64>,
    /// The first ms no longer counted, if any.
    pub until: Option<i64>,
}

impl Window {
    pub(crate) fn contains(&self, t: i64) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Whether any time in `[lo, hi]` (inclusive) can fall in the window.
    pub(crate) fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.since.is_none_or(|s| hi >= s) && self.until.is_none_or(|u| lo < u)
    }
}

/// What reading cost: the evidence that pruning and projection did their work.
#[derive(Debug, Default)]
pub struct ScanStats {
    /// `date=` partitions opened (and other directories, read whole).
    pub partitions_read: u64,
    /// `date=` partitions outside the window, never opened.
    pub partitions_skipped: u64,
    /// Files whose footer was read.
    pub files_read: u64,
    /// Row groups decoded.
    pub row_groups_read: u64,
    /// Row groups skipped on their `event_time` statistics.
    pub row_groups_skipped: u64,
    /// Column chunks selected, summed over files.
    pub columns_read: u64,
    /// Column chunks in the files, summed over files.
    pub columns_total: u64,
    /// Rows decoded.
    pub rows_read: u64,
    /// Bytes the reader took from the files, shared with each file's reader.
    pub(crate) bytes_read: Arc<AtomicU64>,
    /// The files' sizes.
    pub bytes_in_files: u64,
}

impl ScanStats {
    /// Bytes read from the files so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
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

/// Whether the `date=` partition `name` can hold events of the window (any other name can).
fn partition_in_window(name: &str, window: Window) -> bool {
    match name.strip_prefix("date=").and_then(parse_date) {
        Some(day) => {
            let start = day * 86_400_000;
            window.overlaps(start, start + 86_400_000 - 1)
        }
        None => true,
    }
}

/// A table file, on disk or in an object store, counting what the reader takes.
enum Counting {
    Local(CountingFile),
    Remote(RemoteFile, Arc<AtomicU64>),
}

impl Length for Counting {
    fn len(&self) -> u64 {
        match self {
            Counting::Local(file) => file.len(),
            Counting::Remote(file, _) => file.len(),
        }
    }
}

/// A read of either kind.
enum CountingReader {
    Local(CountingRead),
    Remote(RemoteRead, Arc<AtomicU64>),
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            CountingReader::Local(read) => read.read(buf),
            CountingReader::Remote(read, counter) => {
                let n = read.read(buf)?;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
        }
    }
}

impl ChunkReader for Counting {
    type T = CountingReader;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            Counting::Local(file) => CountingReader::Local(file.get_read(start)?),
            Counting::Remote(file, counter) => {
                CountingReader::Remote(file.get_read(start)?, counter.clone())
            }
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Counting::Local(file) => file.get_bytes(start, length),
            Counting::Remote(file, counter) => {
                let bytes = file.get_bytes(start, length)?;
                counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            }
        }
    }
}

/// The published files of one table, minus the partitions the window excludes. In an object
/// store a file is named by its URL (`s3://bucket/prefix/<table>/date=…/<name>`), whose
/// parent is its partition as for a local file.
pub(crate) fn table_files(
    root: &Location,
    table: &str,
    window: Window,
    stats: &mut ScanStats,
) -> Result<Vec<PathBuf>, ReportError> {
    let root = match root {
        Location::Local(dir) => dir,
        Location::Store(store) => return store_files(store, table, window, stats),
    };
    let dir = root.join(table);
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(source) => return Err(ReportError::List { dir, source }),
    };
    let mut partitions = Vec::new();
    let list = |dir: &Path| {
        let dir = dir.to_owned();
        move |source| ReportError::List { dir, source }
    };
    for entry in entries {
        let entry = entry.map_err(list(&dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(list(&dir))?.is_dir() {
            // A `date=` directory holds only events of that UTC day; any other directory is
            // read whole.
            if !partition_in_window(&name, window) {
                stats.partitions_skipped += 1;
                continue;
            }
            stats.partitions_read += 1;
            partitions.push(entry.path());
        } else if name.ends_with(".parquet") {
            files.push(entry.path());
        }
    }
    for partition in partitions {
        for entry in std::fs::read_dir(&partition).map_err(list(&partition))? {
            let entry = entry.map_err(list(&partition))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Dot-files are the sink's unpublished temporaries.
            if !name.starts_with('.')
                && name.ends_with(".parquet")
                && entry.file_type().map_err(list(&partition))?.is_file()
            {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// [`table_files`] for an object store: one listing of the table's prefix; partitions outside
/// the window are counted and their objects never touched.
fn store_files(
    store: &ObjectRoot,
    table: &str,
    window: Window,
    stats: &mut ScanStats,
) -> Result<Vec<PathBuf>, ReportError> {
    let mut files = Vec::new();
    let mut partitions = std::collections::BTreeMap::new();
    for (relative, _) in store.list(table)? {
        let parts: Vec<&str> = relative.split('/').collect();
        let name = parts.last().copied().unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let keep = match parts.as_slice() {
            [_, partition, _] => *partitions
                .entry(partition.to_string())
                .or_insert_with(|| partition_in_window(partition, window)),
            _ => true,
        };
        if keep {
            files.push(PathBuf::from(store.url_of(&relative)));
        }
    }
    for keep in partitions.values() {
        if *keep {
            stats.partitions_read += 1;
        } else {
            stats.partitions_skipped += 1;
        }
    }
    files.sort();
    Ok(files)
}

/// Columns read as Arrow dictionaries. The sink writes them with Parquet dictionaries, so the
/// reader hands over each distinct value once and a key per row: a job id is looked up once
/// per batch instead of once per event.
const DICTIONARY_COLUMNS: [&str; 2] = [columns::JOB_ID, columns::OPERATION];

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
pub(crate) fn partitioned_by_date(files: &[PathBuf]) -> bool {
    files.iter().all(|f| {
        f.parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("date="))
            .and_then(parse_date)
            .is_some()
    })
}

/// Reads `columns` of every file, row groups outside the window skipped, calling `visit` per
/// batch with the file it came from. A column in `optional` may be absent (added to the
/// contract after the first files were written): the batch then lacks it too.
pub(crate) fn read_table(
    root: &Location,
    files: &[PathBuf],
    wanted: &[&str],
    optional: &[&str],
    window: Window,
    stats: &mut ScanStats,
    mut visit: impl FnMut(&Path, &RecordBatch) -> Result<(), ColumnError>,
) -> Result<(), ReportError> {
    for path in files {
        let open = |source| ReportError::Open {
            path: path.clone(),
            source,
        };
        let reader = match root {
            Location::Local(_) => {
                let file = File::open(path).map_err(open)?;
                let len = file.metadata().map_err(open)?.len();
                Counting::Local(CountingFile {
                    file,
                    len,
                    read: stats.bytes_read.clone(),
                })
            }
            Location::Store(store) => {
                let url = path.to_string_lossy();
                let relative = url
                    .strip_prefix(store.url())
                    .unwrap_or(&url)
                    .trim_start_matches('/')
                    .to_owned();
                let size = store.size(&relative)?;
                Counting::Remote(
                    RemoteFile::new(store.clone(), relative, size),
                    stats.bytes_read.clone(),
                )
            }
        };
        let len = reader.len();
        let unreadable = |source| ReportError::NotParquet {
            path: path.clone(),
            source,
        };
        let metadata =
            ArrowReaderMetadata::load(&reader, ArrowReaderOptions::new()).map_err(unreadable)?;
        let hinted = with_dictionaries(metadata.schema());
        let metadata = ArrowReaderMetadata::try_new(
            metadata.metadata().clone(),
            ArrowReaderOptions::new().with_schema(Arc::new(hinted)),
        )
        .map_err(unreadable)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(reader, metadata);
        let schema = builder.parquet_schema();
        let mut leaves = Vec::new();
        for name in wanted.iter().chain(optional) {
            let found: Vec<usize> = schema
                .columns()
                .iter()
                .enumerate()
                .filter(|(_, c)| c.path().parts().first().is_some_and(|p| p == name))
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() && !optional.contains(name) {
                return Err(ReportError::NotJobstreamTable {
                    path: path.clone(),
                    column: (*name).to_owned(),
                });
            }
            leaves.extend(found);
        }
        let time_leaf = schema
            .columns()
            .iter()
            .position(|c| c.path().parts() == [columns::EVENT_TIME]);
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
            .map_err(|source| ReportError::Read {
                path: path.clone(),
                source,
            })?;
        for batch in reader {
            let batch = batch.map_err(|source| ReportError::Decode {
                path: path.clone(),
                source,
            })?;
            stats.rows_read += batch.num_rows() as u64;
            visit(path, &batch).map_err(|source| ReportError::Column {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}
