//! A Parquet writer that encodes a batch's columns on two threads.

use std::fs::File;
use std::sync::{Mutex, PoisonError};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::writer::SerializedFileWriter;

use super::writeback::WritebackHandle;

/// A Parquet file written as `ArrowWriter` writes it — same column writers, same row groups,
/// byte for byte — except that the columns of each batch, and the closing of each row group's
/// columns, are shared by two threads: the encoder thread and a helper scoped to the batch.
/// Encoding and compression are most of the work of a replay, more than parsing; shared this
/// way they use the second core whenever the parser does not. Each column writer is
/// independent until the row group is assembled in column order, so which thread encoded a
/// column does not change a byte of the file.
pub(super) struct ColumnarWriter {
    pub(super) file: SerializedFileWriter<File>,
    pub(super) factory: ArrowRowGroupWriterFactory,
    pub(super) schema: SchemaRef,
    /// Writers of the row group in progress, one per leaf column; empty between row groups.
    pub(super) columns: Vec<ArrowColumnWriter>,
    /// Where to ask for each flushed row group to be written back, and the file to sync.
    pub(super) writeback: Option<WritebackHandle>,
}

/// The leaves of one top-level column with their writers.
pub(super) type ColumnWork<'a> = Vec<(&'a mut ArrowColumnWriter, ArrowLeafColumn)>;

impl ColumnarWriter {
    pub(super) fn new(writer: ArrowWriter<File>, schema: SchemaRef) -> Result<Self, ParquetError> {
        let (file, factory) = writer.into_serialized_writer()?;
        Ok(ColumnarWriter {
            file,
            factory,
            schema,
            columns: Vec::new(),
            writeback: None,
        })
    }

    pub(super) fn with_writeback(mut self, writeback: Option<WritebackHandle>) -> Self {
        self.writeback = writeback;
        self
    }

    pub(super) fn write(
        &mut self,
        batch: &RecordBatch,
        row_group_bytes: usize,
    ) -> Result<(), ParquetError> {
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

    pub(super) fn in_progress_size(&self) -> usize {
        self.columns
            .iter()
            .map(ArrowColumnWriter::get_estimated_total_bytes)
            .sum()
    }

    /// What `ArrowWriter::bytes_written() + in_progress_size()` would say.
    pub(super) fn size(&self) -> u64 {
        (self.file.bytes_written() + self.in_progress_size()) as u64
    }

    /// Writes out the row group in progress and asks for it to be written back to disk.
    pub(super) fn flush(&mut self) -> Result<(), ParquetError> {
        if self.flush_row_group()? {
            if let Some((requests, file)) = &self.writeback {
                // A full queue already has a sync coming that will take this row group along.
                let _ = requests.try_send(file.clone());
            }
        }
        Ok(())
    }

    /// Writes out the row group in progress; whether there was one.
    pub(super) fn flush_row_group(&mut self) -> Result<bool, ParquetError> {
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

    pub(super) fn close(mut self, metadata: Vec<KeyValue>) -> Result<(), ParquetError> {
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
pub(super) fn on_two_threads<T: Send, R: Send>(
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
