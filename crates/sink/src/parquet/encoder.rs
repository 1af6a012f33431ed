//! Encoding batches into the open writers, inline or on the encoder thread.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;

use super::columnar_writer::ColumnarWriter;
use super::writeback::Writeback;
use super::{no_writer, pending_rows, writer_size, Closing, OpenFile, PublishedFile, Rows};
use crate::SinkError;

/// Encodes the buffered rows into the writer, flushing the row group once it is big enough.
/// Returns the file size the `max_file_bytes` rule compares: the size now when encoding inline;
/// with an encoder thread, the size after the batch sent [`SIZE_LAG_BATCHES`] batches earlier
/// (none for a file's first batches, or when `need_size` is false).
pub(super) fn encode(
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

pub(super) fn write_batch(
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
pub(super) const IDLE_CHECK_ROWS: u64 = 1 << 13;

pub(super) enum EncoderJob {
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
pub(super) struct EncoderState {
    /// File size after each batch encoded, per file id, oldest first; the sink takes them in
    /// order, so each queue holds at most `SIZE_LAG_BATCHES + 1` sizes.
    pub(super) sizes: HashMap<u64, VecDeque<u64>>,
    /// Files published and not yet taken by the sink.
    pub(super) published: Vec<PublishedFile>,
    /// The error that stopped the thread, until the sink returns it.
    pub(super) error: Option<SinkError>,
    /// The thread has ended (normally, on error, or by panicking).
    pub(super) stopped: bool,
}

pub(super) struct Shared {
    pub(super) state: Mutex<EncoderState>,
    pub(super) changed: Condvar,
    /// Set when the sink is dropped without finishing: skip the queued work.
    pub(super) abort: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, EncoderState> {
        // A panic on the encoder thread never leaves the state half-updated (every update is
        // one push or assignment), so a poisoned lock is still good to read.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the thread stopped however it ends, panics included, so no one waits for it forever.
pub(super) struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        if std::thread::panicking() && state.error.is_none() {
            state.error = Some(SinkError::EncoderPanicked {
                message: "(logged above)".to_owned(),
            });
        }
        state.stopped = true;
        drop(state);
        self.0.changed.notify_all();
    }
}

/// The sink's handle on its encoder thread.
pub(super) struct Encoder {
    pub(super) jobs: Option<SyncSender<EncoderJob>>,
    pub(super) shared: Arc<Shared>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub(super) fn start(row_group_bytes: usize) -> Result<Self, SinkError> {
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
            .map_err(|source| SinkError::EncoderSpawn { source })?;
        Ok(Encoder {
            jobs: Some(jobs),
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a job, waiting while the queue is full; the thread's error if it has stopped.
    pub(super) fn send(&self, job: EncoderJob) -> Result<(), SinkError> {
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
    pub(super) fn pop_size(&self, id: u64) -> Result<u64, SinkError> {
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
    pub(super) fn stopped_error(&self) -> SinkError {
        self.shared
            .lock()
            .error
            .take()
            .unwrap_or(SinkError::EncoderStopped)
    }

    /// Lets the thread finish its queue and waits for it; its error, if it had one.
    pub(super) fn finish(&mut self) -> Result<(), SinkError> {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(SinkError::EncoderPanicked { message });
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

pub(super) fn encoder_thread(
    queue: Receiver<EncoderJob>,
    guard: StopGuard,
    row_group_bytes: usize,
) {
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
