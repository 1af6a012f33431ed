//! Per-job results: AWS's counters compared with the things seen, and the totals.
//!
//! AWS counts things by their final status, so each counter (`number_of_<outcome>_things`) is
//! compared with the number of things whose latest execution event has that outcome: a retried
//! execution that failed and then succeeded counts once, as succeeded. A counter AWS left out is
//! not compared. The success rate is succeeded ÷ (succeeded + failed + rejected + timed_out):
//! canceled, removed and deleted are operator decisions, not device outcomes.

use std::collections::HashMap;

use crate::aggregate::{Aggregate, OUTCOMES, SUCCEEDED, UNSUCCESSFUL};
use crate::scan::Window;

/// How a job's counters compare with the events received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reconciliation {
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
    pub(crate) fn status(&self) -> &'static str {
        match self {
            Reconciliation::Ok => "ok",
            Reconciliation::Mismatch(_) => "mismatch",
            Reconciliation::NoCounters => "no_counters",
            Reconciliation::OutsideWindow => "outside_window",
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            Reconciliation::Mismatch(diffs) => diffs
                .iter()
                .map(|(o, aws, seen)| format!("{} aws {aws} seen {seen}", OUTCOMES[*o].as_str()))
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::new(),
        }
    }
}

/// One job's line of the report.
#[derive(Debug)]
pub(crate) struct JobReport {
    pub(crate) job_id: String,
    pub(crate) target_selection: Option<String>,
    pub(crate) state: String,
    pub(crate) created_at: Option<i64>,
    pub(crate) ended_at: Option<i64>,
    pub(crate) first_event: Option<i64>,
    pub(crate) last_event: Option<i64>,
    pub(crate) outcomes: [u64; 7],
    pub(crate) things: [u64; 7],
    pub(crate) success_rate: Option<f64>,
    pub(crate) reasons: Vec<(String, u64)>,
    pub(crate) counters: Option<[Option<i64>; 6]>,
    pub(crate) reconciliation: Reconciliation,
}

impl JobReport {
    pub(crate) fn duration_ms(&self) -> Option<i64> {
        Some(self.ended_at? - self.created_at?)
    }
}

pub(crate) fn finish(mut agg: Aggregate, window: Window, top_reasons: usize) -> Vec<JobReport> {
    for slot in &agg.latest.slots {
        let (job, outcome) = (slot.job, slot.outcome);
        agg.jobs[job as usize].1.things[outcome as usize] += 1;
    }
    let mut reports: Vec<JobReport> =
        agg.jobs
            .into_iter()
            .map(|(job_id, job)| {
                let state = match (&job.ending, &job.in_progress) {
                    (Some(e), _) => e.operation.as_str().to_owned(),
                    (None, Some((_, op))) => op.as_str().to_owned(),
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

/// Totals over the reported jobs.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) jobs: u64,
    pub(crate) by_state: Vec<(String, u64)>,
    pub(crate) job_events: u64,
    pub(crate) executions: u64,
    pub(crate) duplicates: u64,
    pub(crate) unknown_operations: u64,
    /// Events kept with an anomaly; they count in every other number as well.
    pub(crate) anomalous: u64,
    pub(crate) mismatched: u64,
    /// Executions AWS counted that never arrived, over the mismatched jobs.
    pub(crate) missing: u64,
}

pub(crate) fn summarise(
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
