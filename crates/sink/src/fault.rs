//! Fault injection for the crash tests: a process that dies at the worst moment, right after
//! files were published and before their input is committed or acknowledged, so a test can
//! check that the next run neither loses nor duplicates what those files hold.
//!
//! Compiled in only with the `fault-injection` feature (the test suite builds with it; a
//! release build does not): without it a [`CrashPoint`] holds nothing and never fires.

/// Where a writer aborts the process, if anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashPoint {
    #[cfg(feature = "fault-injection")]
    after_files: Option<u64>,
}

impl CrashPoint {
    /// A crash point that never fires.
    pub fn never() -> Self {
        CrashPoint::default()
    }

    /// Aborts once `files` files were published (counted by the writer), before what they
    /// hold is committed or acknowledged.
    #[cfg(feature = "fault-injection")]
    pub fn after_publishing(files: Option<u64>) -> Self {
        CrashPoint { after_files: files }
    }

    /// Called by a writer after publishing, with its running count and what the abort skips.
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
    #[inline]
    pub fn published(&self, files_published: u64, skipped: &'static str) {
        #[cfg(feature = "fault-injection")]
        if self
            .after_files
            .is_some_and(|limit| files_published >= limit)
        {
            tracing::error!(
                files = files_published,
                "fault injection: aborting between publish and {skipped}"
            );
            std::process::abort();
        }
    }
}
