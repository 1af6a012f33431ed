//! Per-job rollout outcomes from jobstream's Parquet tables, reconciled with the counters AWS
//! puts in each `completed` job event: `jobstream report`.
//!
//! A report is one pass over the two tables, in layers that each hand the next a smaller thing:
//!
//! ```text
//!  files ─▶ scan ──────────▶ columns ─────▶ dedup ──▶ aggregate ──────▶ reconcile ──▶ render
//!          (partitions,     (typed access,  (once per  (per-job state,   (counters vs  (table, CSV,
//!           row groups and   by the parser's eventId)   each thing's     things, rates, JSON,
//!           columns pruned)  column names)              latest outcome)  totals)       Markdown)
//! ```
//!
//! * [`scan`] lists the published files, skips `date=` partitions and row groups outside the
//!   window, reads only the columns the report needs, and counts what that cost
//!   ([`ScanStats`]).
//! * `columns` names what is read by [`jobstream_parser::columns`], so the report reads what
//!   the parser writes; `dedup` counts an event once per distinct `event_id`, whichever file
//!   its copies landed in (AWS delivers at least once).
//! * `aggregate` folds rows into per-job state; `reconcile` compares AWS's counters with the
//!   things seen per latest outcome (see its docs for the counting rules, which
//!   `docs/queries.md` follows too); `render` writes the result in a [`Format`].
//!
//! Single-threaded and synchronous: the work is decoding, which the pruning keeps small, and
//! one job's state must see all of its events. Memory is one entry per job and per (job,
//! thing), plus the event ids of one date partition at a time.

mod aggregate;
mod columns;
mod dedup;
mod error;
mod hash;
mod reconcile;
mod render;
pub mod scan;
mod time;

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use jobstream_parser::Family;
use jobstream_sink::parquet::store::Location;

pub use error::{ColumnError, ReportError};
pub use render::Format;
pub use scan::{ScanStats, Window};
pub use time::{parse_time, TimeError};

use aggregate::{add_executions, add_job_events, Aggregate, Filter};
use columns::{COUNTER_COLUMNS, EXECUTION_COLUMNS, JOB_COLUMNS, LATER_COLUMNS};
use dedup::Dedup;
use reconcile::{finish, summarise, JobReport, Reconciliation, Summary};
use scan::{read_table, table_files};

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The Parquet root (holds `job_events/` and `job_execution_events/`): a directory or an
    /// object-store URL (`s3://bucket/prefix`, …; settings and credentials from the
    /// environment).
    pub root: PathBuf,
    /// Only these job ids; every job when empty.
    pub jobs: Vec<String>,
    /// Only events whose time falls in this window.
    pub window: Window,
    /// How many of the most common failure reasons to keep per job.
    pub top_reasons: usize,
    /// The `status_details` key that holds a failure's reason.
    pub reason_key: String,
    /// Keep only jobs whose counters disagree with the events (the summary still covers all).
    pub mismatched_only: bool,
}

/// A finished report, ready to be written.
#[derive(Debug)]
pub struct Report {
    jobs: Vec<JobReport>,
    summary: Summary,
    scan: ScanStats,
    seconds: f64,
}

impl Report {
    /// Reads the tables under `options.root` and reconciles every job.
    ///
    /// # Errors
    /// An empty window, a root without either table, and any file that cannot be listed,
    /// opened or decoded, or that is not a jobstream table; each names the file.
    pub fn build(options: &ReportOptions) -> Result<Report, ReportError> {
        let started = Instant::now();
        let window = options.window;
        if let (Some(since), Some(until)) = (window.since, window.until) {
            if since >= until {
                return Err(ReportError::EmptyWindow);
            }
        }
        let root = Location::parse(&options.root, &BTreeMap::new())?;
        let (job_table, execution_table) = (Family::Job.table(), Family::Execution.table());
        let has_table = |table: &str| match &root {
            Location::Local(dir) => Ok(dir.join(table).is_dir()),
            Location::Store(store) => store.list(table).map(|objects| !objects.is_empty()),
        };
        if !has_table(job_table)? && !has_table(execution_table)? {
            return Err(ReportError::NoTables {
                root: options.root.clone(),
            });
        }
        let jobs: HashSet<&str> = options.jobs.iter().map(String::as_str).collect();
        let filter = Filter {
            window,
            jobs: &jobs,
        };
        let mut scan = ScanStats::default();
        let job_files = table_files(&root, job_table, window, &mut scan)?;
        let execution_files = table_files(&root, execution_table, window, &mut scan)?;

        let mut agg = Aggregate::default();
        let mut dedup = Dedup::new(&job_files);
        read_table(
            &root,
            &job_files,
            &[&JOB_COLUMNS[..], &COUNTER_COLUMNS[..]].concat(),
            &LATER_COLUMNS,
            window,
            &mut scan,
            |path, batch| add_job_events(&mut agg, dedup.scope(path), &filter, batch),
        )?;
        // An event id belongs to one table: each table starts afresh.
        let mut dedup = Dedup::new(&execution_files);
        read_table(
            &root,
            &execution_files,
            &EXECUTION_COLUMNS,
            &LATER_COLUMNS,
            window,
            &mut scan,
            |path, batch| {
                add_executions(
                    &mut agg,
                    dedup.scope(path),
                    &filter,
                    &options.reason_key,
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
        let mut jobs = finish(agg, window, options.top_reasons);
        let summary = summarise(
            &jobs, job_events, executions, duplicates, unknown, anomalous,
        );
        if options.mismatched_only {
            jobs.retain(|j| matches!(j.reconciliation, Reconciliation::Mismatch(_)));
        }
        Ok(Report {
            jobs,
            summary,
            scan,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Writes the report in `format`.
    ///
    /// # Errors
    /// Those of `out`.
    pub fn write(&self, format: Format, out: &mut impl Write) -> io::Result<()> {
        match format {
            Format::Table => render::write_table(out, &self.jobs, &self.summary),
            Format::Markdown => render::write_markdown(out, &self.jobs, &self.summary),
            Format::Csv => render::write_csv(out, &self.jobs),
            Format::Json => {
                render::write_json(out, &self.jobs, &self.summary, &self.scan, self.seconds)
            }
        }
    }

    /// How many jobs' counters disagree with the execution events received.
    pub fn mismatched_jobs(&self) -> u64 {
        self.summary.mismatched
    }

    /// What reading cost.
    pub fn scan(&self) -> &ScanStats {
        &self.scan
    }

    /// One line on what reading cost and how long the report took, for standard error.
    pub fn scan_line(&self) -> String {
        render::scan_line(&self.scan, self.seconds)
    }
}
