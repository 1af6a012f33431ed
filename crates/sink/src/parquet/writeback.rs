//! The write-back thread: starts a file's disk writes as each row group is flushed.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Starts the disk writes of each row group a file flushes while encoding goes on, so that
/// the fsync that publishes the file waits only for its last row group and footer. Without it
/// a replay ends with every file's fsync in a row (measured: 50 ms for a 22 MB day file, with
/// nothing else left to do).
///
/// A hint, never the durability: the thread fsyncs through a read-only handle of its own, so a
/// failed write-back is still reported to the publishing fsync on the writer's handle (Linux
/// reports a write-back error once to every open file description), and its own errors are
/// only logged.
pub(super) struct Writeback {
    pub(super) requests: Option<SyncSender<Arc<File>>>,
    pub(super) thread: Option<JoinHandle<()>>,
}

/// What a writer holds to ask for its file's write-back: the thread's queue and the file.
pub(super) type WritebackHandle = (SyncSender<Arc<File>>, Arc<File>);

/// Row groups waiting for the write-back thread at most; more are dropped (the publishing fsync
/// covers them). A row group takes a file's fsync tens of milliseconds, and a replay flushes one
/// every few hundred: a few are plenty.
pub(super) const WRITEBACK_QUEUE: usize = 4;

impl Writeback {
    /// The thread; without one (the OS refused it), files are only fsynced when published.
    pub(super) fn start() -> Self {
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
    pub(super) fn handle(&self, path: &Path) -> Option<WritebackHandle> {
        let requests = self.requests.clone()?;
        let file = File::open(path).ok()?;
        Some((requests, Arc::new(file)))
    }

    /// Waits for the thread once every writer is gone (they hold the other senders).
    pub(super) fn finish(mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
