//! Telling a temporary that a live writer holds from one an interrupted run left behind.
//!
//! A writer holds an exclusive advisory lock (`flock`) on its temporary for as long as the file is
//! open, and the kernel drops it when the process dies, however it dies. A sink that starts
//! removes only the temporaries it can lock. Without this, a second process writing the same
//! source into the same root (two `replay`s into one bucket prefix, a consumer-group member
//! taking over partitions) removed the first one's open file, and the first one failed at
//! publication. The process id in the name does not answer the question: a pid is reused, and
//! two sinks in one process share it.

use std::fs::{self, File, TryLockError};
use std::path::Path;

use crate::SinkError;

/// How many times a new temporary is created again when a starting sink removed it between
/// its creation and its lock (each retry needs another sink to start in that microsecond).
const CREATE_ATTEMPTS: usize = 8;

/// Creates `path` and locks it for as long as the returned file (or a clone of it) is open.
pub(super) fn create_locked(path: &Path) -> Result<File, SinkError> {
    for _ in 0..CREATE_ATTEMPTS {
        let file = File::create(path).map_err(SinkError::io("create", path))?;
        file.lock().map_err(SinkError::io("lock", path))?;
        // Until the lock above, a starting sink could take the file for abandoned and remove it.
        if still_names(path, &file)? {
            return Ok(file);
        }
    }
    Err(SinkError::Io {
        action: "create",
        path: path.to_owned(),
        source: std::io::Error::other(format!(
            "removed by another process {CREATE_ATTEMPTS} times right after creation"
        )),
    })
}

/// What [`remove_if_abandoned`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Leftover {
    /// No process held it: removed.
    Removed,
    /// A live writer holds it: kept.
    InUse,
    /// Already gone (its writer published or abandoned it meanwhile).
    Gone,
}

/// Removes the temporary at `path` unless a live writer holds its lock.
///
/// # Errors
/// The file cannot be opened, locked (a file system without `flock`: the caller keeps it) or
/// removed.
pub(super) fn remove_if_abandoned(path: &Path) -> Result<Leftover, SinkError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Leftover::Gone),
        Err(e) => return Err(SinkError::io("open", path)(e)),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(Leftover::InUse),
        Err(TryLockError::Error(e)) => return Err(SinkError::io("lock", path)(e)),
    }
    // Holding the lock, the file is ours to remove: its writer either died or published it, and
    // a writer that created it a moment ago checks, once locked, that the name is still its file.
    match fs::remove_file(path) {
        Ok(()) => Ok(Leftover::Removed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leftover::Gone),
        Err(e) => Err(SinkError::io("remove stale temporary", path)(e)),
    }
}

#[cfg(unix)]
fn still_names(path: &Path, file: &File) -> Result<bool, SinkError> {
    use std::os::unix::fs::MetadataExt;
    let opened = file.metadata().map_err(SinkError::io("stat", path))?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.dev() == opened.dev() && named.ino() == opened.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SinkError::io("stat", path)(e)),
    }
}

#[cfg(not(unix))]
fn still_names(path: &Path, _file: &File) -> Result<bool, SinkError> {
    Ok(path.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_temporary_is_kept_and_a_released_one_removed() -> Result<(), SinkError> {
        let dir = tempfile::tempdir().map_err(SinkError::io("tempdir", Path::new("")))?;
        let path = dir.path().join(".source+000000000001.1.inprogress");
        let held = create_locked(&path)?;
        assert_eq!(remove_if_abandoned(&path)?, Leftover::InUse);
        assert!(path.exists());
        drop(held);
        assert_eq!(remove_if_abandoned(&path)?, Leftover::Removed);
        assert!(!path.exists());
        assert_eq!(remove_if_abandoned(&path)?, Leftover::Gone);
        Ok(())
    }

    #[test]
    fn a_clone_of_the_temporary_keeps_it_held() -> Result<(), SinkError> {
        let dir = tempfile::tempdir().map_err(SinkError::io("tempdir", Path::new("")))?;
        let path = dir.path().join(".source+000000000001.1.inprogress");
        let clone = create_locked(&path)?
            .try_clone()
            .map_err(SinkError::io("clone", &path))?;
        assert_eq!(remove_if_abandoned(&path)?, Leftover::InUse);
        drop(clone);
        assert_eq!(remove_if_abandoned(&path)?, Leftover::Removed);
        Ok(())
    }
}
