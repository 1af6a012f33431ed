//! The two tables' row builders. Ten columns are the same in both tables (ids, operation,
//! status, time, anomalies, extra, provenance): [`CommonColumns`] builds them. What only one
//! family has is a [`FamilyColumns`], which also says where the shared columns sit in its
//! schema. [`TableBuilder`] keeps the row count, the size estimate and the hand-off of a batch
//! to another thread, once for both.

use std::sync::Arc;

use arrow_array::builder::{
    Int64Builder, ListBuilder, MapBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};

use super::column::{
    status_details_builder, text, thing_names, time_builder, AnomalyLists, AsStr, EnumStr,
    NullRuns, RepeatedStr,
};
use super::{schema, BatchError, Provenance};
use crate::model::{
    Common, Event, ExecutionOperation, ExecutionStatus, Family, JobEvent, JobExecutionEvent,
    JobOperation, JobStatus, ProcessDetails, Status,
};

/// The columns every table has, with the family's own `operation` and `status` values.
#[derive(Debug)]
pub struct CommonColumns<Op, St> {
    family: Family,
    event_id: StringBuilder,
    event_type: RepeatedStr,
    operation: EnumStr<Op>,
    job_id: StringBuilder,
    status: EnumStr<St>,
    event_time: TimestampMillisecondBuilder,
    anomalies: AnomalyLists,
    extra: NullRuns<StringBuilder>,
    mqtt_topic: StringBuilder,
    received_at: NullRuns<TimestampMillisecondBuilder>,
    /// The `extra` JSON of the row being appended, reused so a row allocates nothing.
    scratch: Vec<u8>,
}

/// The shared columns of a finished batch, for a [`FamilyColumns`] to put in its schema's order.
#[derive(Debug)]
pub struct CommonArrays {
    /// `event_id`.
    pub event_id: ArrayRef,
    /// `event_type`.
    pub event_type: ArrayRef,
    /// `operation`.
    pub operation: ArrayRef,
    /// `job_id`.
    pub job_id: ArrayRef,
    /// `status`.
    pub status: ArrayRef,
    /// `event_time`.
    pub event_time: ArrayRef,
    /// `anomalies`.
    pub anomalies: ArrayRef,
    /// `extra`.
    pub extra: ArrayRef,
    /// `mqtt_topic`.
    pub mqtt_topic: ArrayRef,
    /// `received_at`.
    pub received_at: ArrayRef,
}

impl<Op: AsStr, St: AsStr> CommonColumns<Op, St> {
    /// Empty columns of `family`'s table sized for about `rows` rows.
    pub fn with_capacity(family: Family, rows: usize) -> Self {
        let s = |avg: usize| StringBuilder::with_capacity(rows, rows * avg);
        CommonColumns {
            family,
            event_id: s(36),
            event_type: RepeatedStr::new(family.event_type()),
            operation: EnumStr::with_capacity(rows),
            job_id: s(36),
            status: EnumStr::with_capacity(rows),
            event_time: time_builder(rows),
            anomalies: AnomalyLists::new(),
            extra: NullRuns::strings(rows, 0),
            // `$aws/events/jobExecution/` and a UUID job id alone are 62 bytes.
            mqtt_topic: s(96),
            received_at: NullRuns::times(rows),
            scratch: Vec::new(),
        }
    }

    /// Appends the shared part of one event; returns the bytes it adds beyond a fixed row cost.
    #[inline]
    pub fn append(
        &mut self,
        common: &Common<'_, '_>,
        operation: Op,
        status: Status<'_, St>,
        provenance: &Provenance<'_>,
    ) -> usize {
        self.event_id.append_value(common.event_id);
        self.event_type.append();
        self.operation.append(operation);
        self.job_id.append_value(common.job_id);
        self.status.append_status(status);
        self.event_time.append_value(common.event_time_ms);
        self.anomalies.append(common.anomalies);
        self.scratch.clear();
        if common.extra.write_json(self.family, &mut self.scratch) {
            self.extra
                .append_option(Some(&String::from_utf8_lossy(&self.scratch)));
        } else {
            self.extra.append_option(None);
        }
        self.mqtt_topic.append_option(provenance.mqtt_topic);
        self.received_at.append_option(provenance.received_at_ms);
        common.event_id.len()
            + common.job_id.len()
            + self.scratch.len()
            + provenance.mqtt_topic.map_or(0, str::len)
    }

    /// The rows so far as arrays; the columns are empty afterwards.
    ///
    /// # Errors
    /// When `event_type`'s text would overflow Arrow's 32-bit offsets.
    pub fn finish(&mut self) -> Result<CommonArrays, BatchError> {
        Ok(CommonArrays {
            event_id: Arc::new(self.event_id.finish()),
            event_type: Arc::new(self.event_type.finish()?),
            operation: Arc::new(self.operation.finish()),
            job_id: Arc::new(self.job_id.finish()),
            status: Arc::new(self.status.finish()),
            event_time: Arc::new(self.event_time.finish()),
            anomalies: Arc::new(self.anomalies.finish()),
            extra: Arc::new(self.extra.finish()),
            mqtt_topic: Arc::new(self.mqtt_topic.finish()),
            received_at: Arc::new(self.received_at.finish()),
        })
    }
}

/// What one family's table has beyond the shared columns.
///
/// Execution model: called by [`TableBuilder`] on the thread that owns it, one event at a
/// time; nothing here blocks or allocates per row beyond the columns' own growth.
pub trait FamilyColumns: Sized {
    /// The event a row is made from.
    type Event<'t, 'i: 't>;
    /// The family's `operation` values.
    type Operation: AsStr;
    /// The family's documented `status` values.
    type Status: AsStr;
    /// The family whose table this is.
    const FAMILY: Family;

    /// Empty columns sized for about `rows` rows.
    fn with_capacity(rows: usize) -> Self;

    /// Appends one event: its shared part to `common`, the rest to `self`. Returns an estimate
    /// of the bytes the row takes, for flush decisions.
    fn append(
        &mut self,
        common: &mut CommonColumns<Self::Operation, Self::Status>,
        event: &Self::Event<'_, '_>,
        provenance: &Provenance<'_>,
    ) -> usize;

    /// The family's columns and `common` in the order of the family's schema; the columns are
    /// empty afterwards.
    fn finish(&mut self, common: CommonArrays) -> Vec<ArrayRef>;
}

/// Builds one table's batches.
#[derive(Debug)]
pub struct TableBuilder<F: FamilyColumns> {
    common: CommonColumns<F::Operation, F::Status>,
    family: F,
    rows: usize,
    bytes: usize,
    capacity: usize,
}

/// Builds `job_events` batches.
pub type JobEventsBuilder = TableBuilder<JobColumns>;

/// Builds `job_execution_events` batches.
pub type JobExecutionEventsBuilder = TableBuilder<ExecutionColumns>;

impl<F: FamilyColumns> TableBuilder<F> {
    /// An empty builder sized for about `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        TableBuilder {
            common: CommonColumns::with_capacity(F::FAMILY, rows),
            family: F::with_capacity(rows),
            rows: 0,
            bytes: 0,
            capacity: rows,
        }
    }

    /// Appends one event as a row.
    #[inline]
    pub fn append(&mut self, event: &F::Event<'_, '_>, provenance: &Provenance<'_>) {
        self.bytes += self.family.append(&mut self.common, event, provenance);
        self.rows += 1;
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// An estimate of the memory the pending rows take, for flush decisions.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the pending rows as a batch and leaves the builder empty (and reusable, with its
    /// capacity, so the next batch does not pay for regrowing every column).
    ///
    /// # Errors
    /// Only if Arrow refuses the columns, which would be a bug in this module.
    pub fn finish(&mut self) -> Result<RecordBatch, BatchError> {
        self.take().into_batch()
    }

    /// Takes the pending rows as a builder and leaves this one empty, sized as it was: the
    /// rows can then be made a batch with [`into_batch`](Self::into_batch) on another thread.
    pub fn take(&mut self) -> Self {
        let rows = self.capacity.max(self.rows);
        std::mem::replace(self, TableBuilder::with_capacity(rows))
    }

    /// The rows as a batch.
    ///
    /// # Errors
    /// Only if Arrow refuses the columns, which would be a bug in this module.
    pub fn into_batch(mut self) -> Result<RecordBatch, BatchError> {
        let common = self.common.finish()?;
        let columns = self.family.finish(common);
        Ok(RecordBatch::try_new(schema(F::FAMILY), columns)?)
    }
}

/// `job_events`' own columns: targets, texts, the job's times and its process counters.
#[derive(Debug)]
pub struct JobColumns {
    target_selection: StringBuilder,
    targets: ListBuilder<StringBuilder>,
    description: StringBuilder,
    comment: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    last_updated_at: TimestampMillisecondBuilder,
    completed_at: TimestampMillisecondBuilder,
    counters: [Int64Builder; 8],
}

impl FamilyColumns for JobColumns {
    type Event<'t, 'i: 't> = JobEvent<'t, 'i>;
    type Operation = JobOperation;
    type Status = JobStatus;
    const FAMILY: Family = Family::Job;

    fn with_capacity(rows: usize) -> Self {
        let s = |avg: usize| StringBuilder::with_capacity(rows, rows * avg);
        JobColumns {
            target_selection: s(8),
            targets: ListBuilder::new(s(64)),
            description: s(32),
            comment: s(0),
            created_at: time_builder(rows),
            last_updated_at: time_builder(rows),
            completed_at: time_builder(rows),
            counters: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
        }
    }

    #[inline]
    fn append(
        &mut self,
        common: &mut CommonColumns<JobOperation, JobStatus>,
        event: &JobEvent<'_, '_>,
        provenance: &Provenance<'_>,
    ) -> usize {
        let mut bytes =
            200 + common.append(&event.common, event.operation, event.status, provenance);
        self.target_selection
            .append_option(text(event.target_selection));
        match &event.targets {
            Some(targets) => {
                for target in targets.iter() {
                    let target = target.to_text();
                    bytes += target.len();
                    self.targets.values().append_value(target);
                }
                self.targets.append(true);
            }
            None => self.targets.append(false),
        }
        self.description.append_option(text(event.description));
        self.comment.append_option(text(event.comment));
        self.created_at.append_option(event.created_at_ms);
        self.last_updated_at.append_option(event.last_updated_at_ms);
        self.completed_at.append_option(event.completed_at_ms);
        let details = event.process_details.unwrap_or_default();
        for (builder, (_, _, get)) in self.counters.iter_mut().zip(ProcessDetails::COUNTERS) {
            builder.append_option(get(&details));
        }
        bytes
            + event.description.map_or(0, |t| t.approx_len())
            + event.comment.map_or(0, |t| t.approx_len())
    }

    fn finish(&mut self, c: CommonArrays) -> Vec<ArrayRef> {
        let mut columns: Vec<ArrayRef> = vec![
            c.event_id,
            c.event_type,
            c.operation,
            c.job_id,
            c.status,
            c.event_time,
            Arc::new(self.target_selection.finish()),
            Arc::new(self.targets.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.comment.finish()),
            Arc::new(self.created_at.finish()),
            Arc::new(self.last_updated_at.finish()),
            Arc::new(self.completed_at.finish()),
        ];
        for counter in &mut self.counters {
            columns.push(Arc::new(counter.finish()));
        }
        columns.extend([c.anomalies, c.extra, c.mqtt_topic, c.received_at]);
        columns
    }
}

/// `job_execution_events`' own columns: the thing and the device's status details.
#[derive(Debug)]
pub struct ExecutionColumns {
    thing_arn: StringBuilder,
    status_details: MapBuilder<StringBuilder, StringBuilder>,
}

impl FamilyColumns for ExecutionColumns {
    type Event<'t, 'i: 't> = JobExecutionEvent<'t, 'i>;
    type Operation = ExecutionOperation;
    type Status = ExecutionStatus;
    const FAMILY: Family = Family::Execution;

    fn with_capacity(rows: usize) -> Self {
        ExecutionColumns {
            thing_arn: StringBuilder::with_capacity(rows, rows * 80),
            status_details: status_details_builder(rows),
        }
    }

    #[inline]
    fn append(
        &mut self,
        common: &mut CommonColumns<ExecutionOperation, ExecutionStatus>,
        event: &JobExecutionEvent<'_, '_>,
        provenance: &Provenance<'_>,
    ) -> usize {
        let mut bytes =
            120 + common.append(&event.common, event.operation, event.status, provenance);
        self.thing_arn.append_value(event.thing_arn);
        match &event.status_details {
            Some(details) => {
                for (key, value) in details.iter() {
                    let value = value.to_text();
                    bytes += key.len() + value.len() + 8;
                    self.status_details.keys().append_value(key);
                    self.status_details.values().append_value(value);
                }
                // Cannot fail: keys and values were appended in pairs just above.
                let _ = self.status_details.append(true);
            }
            None => {
                let _ = self.status_details.append(false);
            }
        }
        bytes + 2 * event.thing_arn.len()
    }

    fn finish(&mut self, c: CommonArrays) -> Vec<ArrayRef> {
        let thing_arn = self.thing_arn.finish();
        let thing_name = thing_names(&thing_arn);
        vec![
            c.event_id,
            c.event_type,
            c.operation,
            c.job_id,
            Arc::new(thing_arn),
            Arc::new(thing_name),
            c.status,
            c.event_time,
            Arc::new(self.status_details.finish()),
            c.anomalies,
            c.extra,
            c.mqtt_topic,
            c.received_at,
        ]
    }
}

/// One builder per table; routes each event to its family's builder.
#[derive(Debug)]
pub struct TableBuilders {
    /// `job_events` rows.
    pub jobs: JobEventsBuilder,
    /// `job_execution_events` rows.
    pub executions: JobExecutionEventsBuilder,
}

impl TableBuilders {
    /// Builders sized for about `rows` rows each.
    pub fn with_capacity(rows: usize) -> Self {
        TableBuilders {
            jobs: JobEventsBuilder::with_capacity(rows / 8),
            executions: JobExecutionEventsBuilder::with_capacity(rows),
        }
    }

    /// Appends the event to its table's builder.
    pub fn append(&mut self, event: &Event<'_, '_>, provenance: &Provenance<'_>) {
        match event {
            Event::Job(e) => self.jobs.append(e, provenance),
            Event::Execution(e) => self.executions.append(e, provenance),
        }
    }

    /// Pending rows in both tables.
    pub fn len(&self) -> usize {
        self.jobs.len() + self.executions.len()
    }

    /// Whether no row is pending in either table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
