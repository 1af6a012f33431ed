//! Writing a report: an aligned table and Markdown for people, CSV and JSON for programs.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::aggregate::OUTCOMES;
use crate::reconcile::{JobReport, Reconciliation, Summary};
use crate::scan::ScanStats;
use crate::time::{human_duration, iso, short_time};

/// How a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned table for a terminal, with a summary.
    Table,
    /// One row per job, RFC 4180.
    Csv,
    /// One document: jobs, summary and what was read.
    Json,
    /// A GitHub-flavoured Markdown table, with a summary.
    Markdown,
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
                .map(|(o, aws, seen)| format!("{} {aws}≠{seen}", OUTCOMES[*o].as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Reconciliation::NoCounters => "-".to_owned(),
        Reconciliation::OutsideWindow => "created before --since".to_owned(),
    }
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

pub(crate) fn write_table(
    out: &mut impl Write,
    jobs: &[JobReport],
    summary: &Summary,
) -> io::Result<()> {
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

pub(crate) fn write_markdown(
    out: &mut impl Write,
    jobs: &[JobReport],
    summary: &Summary,
) -> io::Result<()> {
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

pub(crate) fn write_csv(out: &mut impl Write, jobs: &[JobReport]) -> io::Result<()> {
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
            .map(|(o, v)| (o.as_str().to_owned(), v))
            .collect(),
    )
}

fn job_json(job: &JobReport) -> Value {
    let differences: Vec<Value> = match &job.reconciliation {
        Reconciliation::Mismatch(diffs) => diffs
            .iter()
            .map(|(o, aws, seen)| json!({"outcome": OUTCOMES[*o].as_str(), "aws": aws, "seen": seen}))
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
                OUTCOMES.iter().zip(c).map(|(o, v)| (o.as_str().to_owned(), json!(v))).collect()
            )),
            "things_by_latest_outcome": outcome_object(job.things.iter().map(|&n| json!(n))),
            "differences": differences,
        },
    })
}

pub(crate) fn write_json(
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
        "bytes_read": stats.bytes_read(),
        "bytes_in_files": stats.bytes_in_files,
        "seconds": seconds,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// One line on what reading cost, for standard error.
pub(crate) fn scan_line(stats: &ScanStats, seconds: f64) -> String {
    format!(
        "report: {} files in {} partitions read ({} partitions, {} row groups skipped by time); {} of {} columns, {:.1} of {:.1} MiB, {} rows in {:.2} s",
        stats.files_read,
        stats.partitions_read,
        stats.partitions_skipped,
        stats.row_groups_skipped,
        stats.columns_read,
        stats.columns_total,
        mib(stats.bytes_read()),
        mib(stats.bytes_in_files),
        stats.rows_read,
        seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_one_job_on_one_line_and_csv_quotes_what_it_must() {
        assert_eq!(one_line("a\nb\u{1}"), "a\\nb\\u{1}");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
