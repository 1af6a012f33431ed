//! Folding rows into per-job state: each event counted once, each thing's latest outcome kept.

use std::collections::hash_map::Entry;
use std::collections::HashSet;
use std::hash::Hasher;

use arrow_array::{Array, RecordBatch};
use jobstream_parser::columns::*;
use jobstream_parser::model::{ExecutionOperation, JobOperation};

use crate::columns::{
    anomaly_lists, has_anomalies, int64s, opt, string_map, strings, times, Keyed, Memo,
    COUNTER_COLUMNS,
};
use crate::dedup::Seen;
use crate::error::ColumnError;
use crate::hash::{FastHasher, FastMap};
use crate::scan::Window;

/// Execution outcomes, in report order. The first six have an AWS counter.
pub(crate) const OUTCOMES: [ExecutionOperation; 7] = [
    ExecutionOperation::Succeeded,
    ExecutionOperation::Failed,
    ExecutionOperation::Rejected,
    ExecutionOperation::TimedOut,
    ExecutionOperation::Canceled,
    ExecutionOperation::Removed,
    ExecutionOperation::Deleted,
];
pub(crate) const SUCCEEDED: usize = 0;
/// Outcomes a failure reason is taken from, and that count against the success rate.
pub(crate) const UNSUCCESSFUL: [usize; 3] = [1, 2, 3];

fn outcome_index(operation: &str) -> Option<usize> {
    let operation = ExecutionOperation::parse(operation)?;
    OUTCOMES.iter().position(|o| *o == operation)
}

/// The event that ended a job: `completed`, `canceled` or `deleted`.
#[derive(Debug, Clone)]
pub(crate) struct Ending {
    pub(crate) operation: JobOperation,
    pub(crate) event_time: i64,
    pub(crate) ended_at: i64,
    /// AWS's counters, per outcome with a counter; `None` where AWS sent none.
    pub(crate) counters: [Option<i64>; 6],
}

#[derive(Debug, Default)]
pub(crate) struct JobAgg {
    pub(crate) target_selection: Option<String>,
    pub(crate) created_at: Option<i64>,
    pub(crate) ending: Option<Ending>,
    /// The latest `cancellation_in_progress` / `deletion_in_progress`.
    pub(crate) in_progress: Option<(i64, JobOperation)>,
    pub(crate) first_event: Option<i64>,
    pub(crate) last_event: Option<i64>,
    pub(crate) outcomes: [u64; 7],
    pub(crate) reasons: FastMap<String, u64>,
    /// Things per latest outcome, filled after reading.
    pub(crate) things: [u64; 7],
}

impl JobAgg {
    fn saw(&mut self, t: i64) {
        self.first_event = Some(self.first_event.map_or(t, |f| f.min(t)));
        self.last_event = Some(self.last_event.map_or(t, |l| l.max(t)));
    }
}

/// Each (job, thing)'s latest execution outcome, in one hash table probed once per event and
/// without an allocation per thing: names go to one arena, the table maps a hash of (job,
/// name) to a slot, and the slot's stored job and name confirm the match. A key whose hash is
/// taken by another goes to `clashes`, searched in full: with 64-bit hashes that takes about
/// 10⁹ things, or crafted names in the user's own files.
#[derive(Debug, Default)]
pub(crate) struct Latest {
    arena: String,
    pub(crate) slots: Vec<Slot>,
    by_hash: FastMap<u64, u32>,
    clashes: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) job: u32,
    start: usize,
    len: usize,
    time: i64,
    pub(crate) outcome: u8,
}

impl Latest {
    fn name(&self, slot: &Slot) -> &str {
        &self.arena[slot.start..slot.start + slot.len]
    }

    fn push(
        arena: &mut String,
        slots: &mut Vec<Slot>,
        job: u32,
        name: &str,
        time: i64,
        outcome: u8,
    ) -> u32 {
        let id = slots.len() as u32;
        slots.push(Slot {
            job,
            start: arena.len(),
            len: name.len(),
            time,
            outcome,
        });
        arena.push_str(name);
        id
    }

    /// Records an execution event of `name` in `job`. The latest by event time wins; a tie
    /// (same second) goes to the later outcome in [`OUTCOMES`] order, so the result does not
    /// depend on the order files are read in.
    pub(crate) fn record(&mut self, job: u32, name: &str, time: i64, outcome: u8) {
        let mut hasher = FastHasher::default();
        hasher.write_u32(job);
        hasher.write(name.as_bytes());
        let id = match self.by_hash.entry(hasher.finish()) {
            Entry::Vacant(vacant) => {
                vacant.insert(Self::push(
                    &mut self.arena,
                    &mut self.slots,
                    job,
                    name,
                    time,
                    outcome,
                ));
                return;
            }
            Entry::Occupied(occupied) => *occupied.get(),
        };
        let slot = self.slots[id as usize];
        let id = if slot.job == job && self.name(&slot) == name {
            id
        } else if let Some(&id) = self.clashes.iter().find(|&&c| {
            let clash = &self.slots[c as usize];
            clash.job == job && self.name(clash) == name
        }) {
            id
        } else {
            let id = Self::push(&mut self.arena, &mut self.slots, job, name, time, outcome);
            self.clashes.push(id);
            return;
        };
        let slot = &mut self.slots[id as usize];
        if (time, outcome) > (slot.time, slot.outcome) {
            slot.time = time;
            slot.outcome = outcome;
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Aggregate {
    index: FastMap<Box<str>, u32>,
    pub(crate) jobs: Vec<(String, JobAgg)>,
    /// Each (job, thing)'s latest execution outcome.
    pub(crate) latest: Latest,
    pub(crate) job_events: u64,
    pub(crate) executions: u64,
    pub(crate) duplicates: u64,
    pub(crate) unknown_operations: u64,
    /// Events kept with an anomaly (counted like any other event too).
    pub(crate) anomalous: u64,
}

impl Aggregate {
    fn job(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.jobs.len() as u32;
        self.index.insert(id.into(), i);
        self.jobs.push((id.to_owned(), JobAgg::default()));
        i
    }
}

/// Filters shared by both tables.
pub(crate) struct Filter<'a> {
    /// Event times counted.
    pub(crate) window: Window,
    /// Jobs counted; all when empty.
    pub(crate) jobs: &'a HashSet<&'a str>,
}

impl Filter<'_> {
    fn keeps_job(&self, job: &str) -> bool {
        self.jobs.is_empty() || self.jobs.contains(job)
    }
}

/// The job index of row `i`, interned on first sight; `None` when the job filter excludes it.
fn job_of(
    agg: &mut Aggregate,
    filter: &Filter<'_>,
    job_id: &Keyed<'_>,
    memo: &mut Memo<Option<u32>>,
    i: usize,
) -> Option<u32> {
    let key = job_id.key(i)?;
    memo.get(key, || {
        let job = job_id.text(key);
        filter.keeps_job(job).then(|| agg.job(job))
    })
}

pub(crate) fn add_job_events(
    agg: &mut Aggregate,
    seen: &mut Seen,
    filter: &Filter<'_>,
    batch: &RecordBatch,
) -> Result<(), ColumnError> {
    let event_id = strings(batch, EVENT_ID)?;
    let operation = Keyed::of(batch, OPERATION)?;
    let job_id = Keyed::of(batch, JOB_ID)?;
    let event_time = times(batch, EVENT_TIME)?;
    let selection = strings(batch, TARGET_SELECTION)?;
    let created = times(batch, CREATED_AT)?;
    let updated = times(batch, LAST_UPDATED_AT)?;
    let completed = times(batch, COMPLETED_AT)?;
    let anomalies = anomaly_lists(batch);
    let counters = COUNTER_COLUMNS
        .iter()
        .map(|c| int64s(batch, c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut jobs = Memo::new(job_id.keys());
    for i in 0..batch.num_rows() {
        let t = event_time.value(i);
        if !filter.window.contains(t) {
            continue;
        }
        let Some(j) = job_of(agg, filter, &job_id, &mut jobs, i) else {
            continue;
        };
        if !seen.first(event_id.value(i)) {
            agg.duplicates += 1;
            continue;
        }
        agg.job_events += 1;
        agg.anomalous += u64::from(has_anomalies(anomalies, i));
        let state = &mut agg.jobs[j as usize].1;
        state.saw(t);
        if selection.is_valid(i) {
            state.target_selection = Some(selection.value(i).to_owned());
        }
        if let Some(c) = opt(created, i) {
            state.created_at = Some(c);
        }
        let op = operation
            .key(i)
            .and_then(|k| JobOperation::parse(operation.text(k)));
        match op {
            Some(
                op @ (JobOperation::Completed | JobOperation::Canceled | JobOperation::Deleted),
            ) => {
                if state.ending.as_ref().is_some_and(|e| e.event_time > t) {
                    continue;
                }
                let ended_at = opt(completed, i).or(opt(updated, i)).unwrap_or(t);
                state.ending = Some(Ending {
                    operation: op,
                    event_time: t,
                    ended_at,
                    counters: std::array::from_fn(|k| opt(counters[k], i)),
                });
            }
            Some(
                op @ (JobOperation::CancellationInProgress | JobOperation::DeletionInProgress),
            ) => {
                if state.in_progress.as_ref().is_none_or(|(at, _)| *at <= t) {
                    state.in_progress = Some((t, op));
                }
            }
            None => agg.unknown_operations += 1,
        }
    }
    Ok(())
}

pub(crate) fn add_executions(
    agg: &mut Aggregate,
    seen: &mut Seen,
    filter: &Filter<'_>,
    reason_key: &str,
    batch: &RecordBatch,
) -> Result<(), ColumnError> {
    let event_id = strings(batch, EVENT_ID)?;
    let operation = Keyed::of(batch, OPERATION)?;
    let job_id = Keyed::of(batch, JOB_ID)?;
    let thing_name = strings(batch, THING_NAME)?;
    let event_time = times(batch, EVENT_TIME)?;
    let anomalies = anomaly_lists(batch);
    let (details, keys, values) = string_map(batch, STATUS_DETAILS)?;
    let offsets = details.value_offsets();
    let mut jobs = Memo::new(job_id.keys());
    let mut outcomes = Memo::new(operation.keys());
    for i in 0..batch.num_rows() {
        let t = event_time.value(i);
        if !filter.window.contains(t) {
            continue;
        }
        let Some(j) = job_of(agg, filter, &job_id, &mut jobs, i) else {
            continue;
        };
        if !seen.first(event_id.value(i)) {
            agg.duplicates += 1;
            continue;
        }
        agg.executions += 1;
        agg.anomalous += u64::from(has_anomalies(anomalies, i));
        let outcome = operation
            .key(i)
            .and_then(|k| outcomes.get(k, || outcome_index(operation.text(k))));
        let Some(outcome) = outcome else {
            agg.unknown_operations += 1;
            continue;
        };
        let state = &mut agg.jobs[j as usize].1;
        state.saw(t);
        state.outcomes[outcome] += 1;
        if UNSUCCESSFUL.contains(&outcome) && details.is_valid(i) {
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            if let Some(k) = (start..end).find(|&k| keys.value(k) == reason_key) {
                if values.is_valid(k) {
                    let reason = values.value(k);
                    match state.reasons.get_mut(reason) {
                        Some(n) => *n += 1,
                        None => {
                            state.reasons.insert(reason.to_owned(), 1);
                        }
                    }
                }
            }
        }
        agg.latest.record(j, thing_name.value(i), t, outcome as u8);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_outcome_per_job_and_thing_survives_hash_clashes() {
        let mut latest = Latest::default();
        latest.record(0, "sensor-a", 10, 1);
        latest.record(0, "sensor-a", 5, 0); // older: ignored
        latest.record(1, "sensor-a", 5, 0); // another job: another slot
                                            // Force (0, "sensor-b") onto (0, "sensor-a")'s hash.
        let mut hasher = FastHasher::default();
        hasher.write_u32(0);
        hasher.write(b"sensor-b");
        latest.by_hash.insert(hasher.finish(), 0);
        latest.record(0, "sensor-b", 7, 2);
        latest.record(0, "sensor-b", 9, 0); // newer: wins
        latest.record(0, "sensor-a", 10, 3); // same second: the later outcome wins
        let slots: Vec<(u32, &str, i64, u8)> = latest
            .slots
            .iter()
            .map(|s| (s.job, latest.name(s), s.time, s.outcome))
            .collect();
        assert_eq!(
            slots,
            [
                (0, "sensor-a", 10, 3),
                (1, "sensor-a", 5, 0),
                (0, "sensor-b", 9, 0)
            ]
        );
        assert_eq!(latest.clashes, [2]);
    }
}
