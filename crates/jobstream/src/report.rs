//! `jobstream report`: the flags, and the exit codes of what `jobstream_report` returns. The
//! report itself (scan, aggregation, reconciliation, rendering) is the `jobstream-report` crate.

use std::io::{self, Write as _};
use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use jobstream_report::{Report, ReportError, ReportOptions, Window};

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
    #[arg(long, value_parser = jobstream_report::parse_time, value_name = "TIME")]
    since: Option<i64>,
    /// Count only events before this UTC time (exclusive): `--since 2026-11-01 --until
    /// 2026-12-01` is November.
    #[arg(long, value_parser = jobstream_report::parse_time, value_name = "TIME")]
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

impl From<Format> for jobstream_report::Format {
    fn from(format: Format) -> Self {
        match format {
            Format::Table => jobstream_report::Format::Table,
            Format::Csv => jobstream_report::Format::Csv,
            Format::Json => jobstream_report::Format::Json,
            Format::Markdown => jobstream_report::Format::Markdown,
        }
    }
}

fn exit_code(error: &ReportError) -> u8 {
    match error {
        ReportError::EmptyWindow => crate::EXIT_CONFIG,
        ReportError::NoTables { .. } => crate::EXIT_NO_INPUT,
        ReportError::Store(error) => crate::sink_exit_code(error),
        _ => crate::EXIT_IO,
    }
}

pub fn run(args: ReportArgs) -> Result<(), Failure> {
    let options = ReportOptions {
        root: args.parquet,
        jobs: args.jobs,
        window: Window {
            since: args.since,
            until: args.until,
        },
        top_reasons: args.reasons,
        reason_key: args.reason_key,
        mismatched_only: args.mismatched_only,
    };
    let report = Report::build(&options).map_err(|e| Failure::new(exit_code(&e), e))?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    report
        .write(args.format.into(), &mut out)
        .and_then(|()| out.flush())
        .context("writing the report")?;
    if !args.quiet {
        eprintln!("{}", report.scan_line());
    }
    if args.fail_on_mismatch && report.mismatched_jobs() > 0 {
        return Err(Failure::new(
            EXIT_MISMATCH,
            anyhow!(
                "{} jobs disagree with AWS's counters",
                report.mismatched_jobs()
            ),
        ));
    }
    Ok(())
}
