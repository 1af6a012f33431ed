//! Events → Arrow record batches for the two tables, with exactly the column names and types
//! of the Parquet contract (DESIGN.md, "Contracts users rely on").

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    Int64Builder, ListBuilder, MapBuilder, MapFieldNames, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{Array as _, ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::anomaly::Anomalies;
use crate::columns;
use crate::model::{
    Event, ExecutionOperation, ExecutionStatus, Family, JobEvent, JobExecutionEvent, JobOperation,
    JobStatus, ProcessDetails, Status, Text,
};

/// Where and when a message was received; both columns are null when the source did not record
/// them (a capture file has no receive time).
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance<'a> {
    /// The MQTT topic the event arrived on.
    pub mqtt_topic: Option<&'a str>,
    /// When jobstream received it, ms since the epoch.
    pub received_at_ms: Option<i64>,
}

/// A batch could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Arrow refused the columns (a bug: builders and schema disagree).
    #[error("building an Arrow batch failed: {0}")]
    Arrow(#[from] ArrowError),
}

/// A string column holding one value in every row (a table's `event_type`): appending only
/// counts the row and [`finish`](Self::finish) writes the text in one pass, where an append per
/// row would cost as much as a varying value's.
#[derive(Debug, Clone)]
pub struct RepeatedStr {
    value: &'static str,
    rows: usize,
}

impl RepeatedStr {
    /// An empty column of `value`.
    pub fn new(value: &'static str) -> Self {
        RepeatedStr { value, rows: 0 }
    }

    /// Appends a row.
    #[inline]
    pub fn append(&mut self) {
        self.rows += 1;
    }

    /// The rows so far as an array; the column is empty afterwards.
    ///
    /// # Errors
    /// When the text of all rows would overflow Arrow's 32-bit offsets (Arrow would panic).
    pub fn finish(&mut self) -> Result<StringArray, BatchError> {
        let rows = std::mem::take(&mut self.rows);
        let bytes = self.value.len().saturating_mul(rows);
        if i32::try_from(bytes).is_err() {
            return Err(ArrowError::OffsetOverflowError(bytes).into());
        }
        Ok(StringArray::new_repeated(self.value, rows))
    }
}

/// A value with a fixed spelling: what an [`EnumStr`] column holds.
pub trait AsStr: Copy {
    /// The text the column stores for the value.
    fn as_str(self) -> &'static str;

    /// Any value, held by a row whose text is stored apart.
    fn placeholder() -> Self;
}

macro_rules! as_str {
    ($($t:ty),+) => {
        $(impl AsStr for $t {
            #[inline]
            fn as_str(self) -> &'static str {
                <$t>::as_str(self)
            }

            fn placeholder() -> Self {
                <$t>::ALL[0]
            }
        })+
    };
}

as_str!(JobOperation, JobStatus, ExecutionOperation, ExecutionStatus);

/// A string column of one of a few fixed spellings per row (`operation`, `status`): a byte per
/// row while appending, the text written in one pass by [`finish`](Self::finish).
///
/// Why: the row loop writes two buffers fewer (a byte instead of text and an offset), and the
/// text is appended once per batch in a loop of its own. Building a batch is bound as much by
/// writing its buffers as by instructions: the parser benchmark's Arrow part takes about 1.7×
/// as long with 8,192-row as with 512-row batches, the extra being cache misses. (What this
/// alone gains was within the benchmark's noise; see the README's Parser section.)
///
/// A `status` AWS does not document is kept as given: its row holds a placeholder and the text
/// sits in `others` with the row's index (rare, so a string each is fine), and a batch without
/// any takes the plain loop (an `Option` per row cost the benchmark about 4 %).
#[derive(Debug, Clone)]
pub struct EnumStr<T> {
    rows: Vec<T>,
    others: Vec<(usize, Box<str>)>,
}

impl<T: AsStr> EnumStr<T> {
    /// An empty column sized for `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        EnumStr {
            rows: Vec::with_capacity(rows),
            others: Vec::new(),
        }
    }

    /// Appends a row.
    #[inline]
    pub fn append(&mut self, value: T) {
        self.rows.push(value);
    }

    /// Appends a row of a known value or of any other text.
    #[inline]
    pub fn append_status(&mut self, status: Status<'_, T>) {
        match status {
            Status::Known(value) => self.rows.push(value),
            Status::Other(text) => {
                self.others.push((self.rows.len(), text.into()));
                self.rows.push(T::placeholder());
            }
        }
    }

    /// The rows so far as an array; the column is empty afterwards.
    pub fn finish(&mut self) -> StringArray {
        let bytes: usize = self.rows.iter().map(|v| v.as_str().len()).sum();
        let others: usize = self.others.iter().map(|(_, t)| t.len()).sum();
        let mut builder = StringBuilder::with_capacity(self.rows.len(), bytes + others);
        if self.others.is_empty() {
            for v in self.rows.drain(..) {
                builder.append_value(v.as_str());
            }
        } else {
            let mut others = self.others.drain(..).peekable();
            for (row, v) in self.rows.drain(..).enumerate() {
                match others.next_if(|(at, _)| *at == row) {
                    Some((_, text)) => builder.append_value(text),
                    None => builder.append_value(v.as_str()),
                }
            }
        }
        builder.finish()
    }
}

/// The `anomalies` column: only the rows that have any are stored while appending (nearly every
/// row has none), and the lists of codes are written in one pass by [`finish`](Self::finish),
/// as [`EnumStr`] does.
#[derive(Debug, Clone, Default)]
pub struct AnomalyLists {
    rows: usize,
    flagged: Vec<(usize, Anomalies)>,
}

impl AnomalyLists {
    /// An empty column.
    pub fn new() -> Self {
        AnomalyLists::default()
    }

    /// Appends a row.
    #[inline]
    pub fn append(&mut self, anomalies: Anomalies) {
        if !anomalies.is_empty() {
            self.flagged.push((self.rows, anomalies));
        }
        self.rows += 1;
    }

    /// The rows so far as an array (an empty list for a row without anomalies); the column is
    /// empty afterwards.
    pub fn finish(&mut self) -> arrow_array::ListArray {
        let rows = std::mem::take(&mut self.rows);
        if self.flagged.is_empty() {
            // Nearly every batch: all lists empty, so all offsets zero and no values.
            return arrow_array::ListArray::new(
                anomaly_item(),
                arrow_buffer::OffsetBuffer::new_zeroed(rows),
                Arc::new(StringArray::new_null(0)),
                None,
            );
        }
        let codes: usize = self.flagged.iter().map(|(_, a)| a.iter().count()).sum();
        let mut builder =
            ListBuilder::with_capacity(StringBuilder::with_capacity(codes, codes * 32), rows)
                .with_field(anomaly_item());
        let mut flagged = self.flagged.drain(..).peekable();
        for row in 0..rows {
            if let Some((_, anomalies)) = flagged.next_if(|(at, _)| *at == row) {
                for anomaly in anomalies.iter() {
                    builder.values().append_value(anomaly.as_str());
                }
            }
            builder.append(true);
        }
        builder.finish()
    }
}

fn anomaly_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Utf8, false))
}

fn anomalies_col() -> Field {
    Field::new(columns::ANOMALIES, DataType::List(anomaly_item()), false)
}

/// A string column's value from a [`Text`]: the string, or the JSON text of another value.
#[inline]
fn text<'i>(value: Option<Text<'_, 'i>>) -> Option<std::borrow::Cow<'i, str>> {
    value.map(|t| t.to_text())
}

/// The `thing_name` column from the finished `thing_arn` column: the last `/` segment of each
/// ARN, written in one pass per batch rather than row by row (see [`EnumStr`] for why).
pub fn thing_names(arns: &StringArray) -> StringArray {
    // Names are suffixes of the ARNs: their bytes are an upper bound.
    let mut builder = StringBuilder::with_capacity(arns.len(), arns.value_data().len());
    for arn in arns {
        match arn {
            Some(arn) => builder.append_value(crate::model::thing_name(arn)),
            None => builder.append_null(),
        }
    }
    builder.finish()
}

/// A nullable column whose nulls come in runs (`extra` is null in nearly every row,
/// `received_at` in every row of a capture): nulls are counted and appended a run at a time,
/// where one at a time costs as much as a value.
#[derive(Debug)]
pub struct NullRuns<B> {
    builder: B,
    nulls: usize,
}

macro_rules! null_runs {
    ($builder:ty, $value:ty, $array:ty) => {
        impl NullRuns<$builder> {
            /// Appends `value`, or a null.
            #[inline]
            pub fn append_option(&mut self, value: Option<$value>) {
                match value {
                    None => self.nulls += 1,
                    Some(value) => {
                        self.flush_nulls();
                        self.builder.append_value(value);
                    }
                }
            }

            #[inline]
            fn flush_nulls(&mut self) {
                if self.nulls > 0 {
                    self.builder.append_nulls(self.nulls);
                    self.nulls = 0;
                }
            }

            /// The rows so far as an array; the column is empty afterwards.
            pub fn finish(&mut self) -> $array {
                self.flush_nulls();
                self.builder.finish()
            }
        }
    };
}

null_runs!(StringBuilder, &str, StringArray);
null_runs!(TimestampMillisecondBuilder, i64, TimestampMillisecondArray);

impl NullRuns<StringBuilder> {
    /// An empty string column sized for `rows` rows of `avg` bytes.
    pub fn strings(rows: usize, avg: usize) -> Self {
        NullRuns {
            builder: StringBuilder::with_capacity(rows, rows * avg),
            nulls: 0,
        }
    }
}

impl NullRuns<TimestampMillisecondBuilder> {
    /// An empty UTC millisecond timestamp column sized for `rows` rows.
    pub fn times(rows: usize) -> Self {
        NullRuns {
            builder: time_builder(rows),
            nulls: 0,
        }
    }
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// An empty UTC millisecond timestamp column sized for `capacity` rows (the contract's time
/// type). Public so that benchmark baselines build exactly the same columns.
pub fn time_builder(capacity: usize) -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

/// The `status_details` column, sized for `rows` maps of about two entries: a builder that
/// starts too small regrows, copying its buffers, in every batch. Public so that benchmark
/// baselines build exactly the same column.
pub fn status_details_builder(rows: usize) -> MapBuilder<StringBuilder, StringBuilder> {
    // Parquet's own names for map parts, so every reader sees a standard MAP.
    let names = MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    };
    MapBuilder::with_capacity(
        Some(names),
        StringBuilder::with_capacity(rows * 2, rows * 16),
        StringBuilder::with_capacity(rows * 2, rows * 32),
        rows,
    )
    .with_values_field(Field::new("value", DataType::Utf8, false))
}

fn string_col(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn time_col(name: &str, nullable: bool) -> Field {
    Field::new(name, timestamp_type(), nullable)
}

/// The schema of `job_events`.
pub fn job_events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                string_col(columns::EVENT_ID, false),
                string_col(columns::EVENT_TYPE, false),
                string_col(columns::OPERATION, false),
                string_col(columns::JOB_ID, false),
                string_col(columns::STATUS, false),
                time_col(columns::EVENT_TIME, false),
                string_col(columns::TARGET_SELECTION, true),
                Field::new_list(
                    columns::TARGETS,
                    Field::new_list_field(DataType::Utf8, true),
                    true,
                ),
                string_col(columns::DESCRIPTION, true),
                string_col(columns::COMMENT, true),
                time_col(columns::CREATED_AT, true),
                time_col(columns::LAST_UPDATED_AT, true),
                time_col(columns::COMPLETED_AT, true),
            ];
            for (_, column, _) in ProcessDetails::COUNTERS {
                fields.push(Field::new(column, DataType::Int64, true));
            }
            fields.extend([
                anomalies_col(),
                string_col(columns::EXTRA, true),
                string_col(columns::MQTT_TOPIC, true),
                time_col(columns::RECEIVED_AT, true),
            ]);
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The schema of `job_execution_events`.
pub fn job_execution_events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let map_type = status_details_builder(0).finish().data_type().clone();
            Arc::new(Schema::new(vec![
                string_col(columns::EVENT_ID, false),
                string_col(columns::EVENT_TYPE, false),
                string_col(columns::OPERATION, false),
                string_col(columns::JOB_ID, false),
                string_col(columns::THING_ARN, false),
                string_col(columns::THING_NAME, false),
                string_col(columns::STATUS, false),
                time_col(columns::EVENT_TIME, false),
                Field::new(columns::STATUS_DETAILS, map_type, true),
                anomalies_col(),
                string_col(columns::EXTRA, true),
                string_col(columns::MQTT_TOPIC, true),
                time_col(columns::RECEIVED_AT, true),
            ]))
        })
        .clone()
}

/// The schema of a family's table.
pub fn schema(family: Family) -> SchemaRef {
    match family {
        Family::Job => job_events_schema(),
        Family::Execution => job_execution_events_schema(),
    }
}

/// Builds `job_events` batches.
#[derive(Debug)]
pub struct JobEventsBuilder {
    event_id: StringBuilder,
    event_type: RepeatedStr,
    operation: EnumStr<JobOperation>,
    job_id: StringBuilder,
    status: EnumStr<JobStatus>,
    event_time: TimestampMillisecondBuilder,
    target_selection: StringBuilder,
    targets: ListBuilder<StringBuilder>,
    description: StringBuilder,
    comment: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    last_updated_at: TimestampMillisecondBuilder,
    completed_at: TimestampMillisecondBuilder,
    counters: [Int64Builder; 8],
    anomalies: AnomalyLists,
    extra: NullRuns<StringBuilder>,
    mqtt_topic: StringBuilder,
    received_at: NullRuns<TimestampMillisecondBuilder>,
    scratch: Vec<u8>,
    rows: usize,
    bytes: usize,
    capacity: usize,
}

impl JobEventsBuilder {
    /// An empty builder sized for about `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        let s = |avg: usize| StringBuilder::with_capacity(rows, rows * avg);
        JobEventsBuilder {
            event_id: s(36),
            event_type: RepeatedStr::new(Family::Job.event_type()),
            operation: EnumStr::with_capacity(rows),
            job_id: s(36),
            status: EnumStr::with_capacity(rows),
            event_time: time_builder(rows),
            target_selection: s(8),
            targets: ListBuilder::new(s(64)),
            description: s(32),
            comment: s(0),
            created_at: time_builder(rows),
            last_updated_at: time_builder(rows),
            completed_at: time_builder(rows),
            counters: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
            anomalies: AnomalyLists::new(),
            extra: NullRuns::strings(rows, 0),
            // `$aws/events/jobExecution/` and a UUID job id alone are 62 bytes.
            mqtt_topic: s(96),
            received_at: NullRuns::times(rows),
            scratch: Vec::new(),
            rows: 0,
            bytes: 0,
            capacity: rows,
        }
    }

    /// Appends one event as a row.
    pub fn append(&mut self, event: &JobEvent<'_, '_>, provenance: &Provenance<'_>) {
        let c = &event.common;
        self.event_id.append_value(c.event_id);
        self.event_type.append();
        self.operation.append(event.operation);
        self.job_id.append_value(c.job_id);
        self.status.append_status(event.status);
        self.event_time.append_value(c.event_time_ms);
        self.target_selection
            .append_option(text(event.target_selection));
        match &event.targets {
            Some(targets) => {
                for target in targets.iter() {
                    let target = target.to_text();
                    self.bytes += target.len();
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
        self.anomalies.append(c.anomalies);
        self.scratch.clear();
        if c.extra.write_json(Family::Job, &mut self.scratch) {
            self.extra
                .append_option(Some(&String::from_utf8_lossy(&self.scratch)));
        } else {
            self.extra.append_option(None);
        }
        self.mqtt_topic.append_option(provenance.mqtt_topic);
        self.received_at.append_option(provenance.received_at_ms);
        self.rows += 1;
        self.bytes += 200
            + c.event_id.len()
            + c.job_id.len()
            + event.description.map_or(0, |t| t.approx_len())
            + event.comment.map_or(0, |t| t.approx_len())
            + self.scratch.len()
            + provenance.mqtt_topic.map_or(0, str::len);
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
        std::mem::replace(self, JobEventsBuilder::with_capacity(rows))
    }

    /// The rows as a batch.
    ///
    /// # Errors
    /// Only if Arrow refuses the columns, which would be a bug in this module.
    pub fn into_batch(mut self) -> Result<RecordBatch, BatchError> {
        self.finish_columns()
    }

    fn finish_columns(&mut self) -> Result<RecordBatch, BatchError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()?),
            Arc::new(self.operation.finish()),
            Arc::new(self.job_id.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.event_time.finish()),
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
        columns.push(Arc::new(self.anomalies.finish()));
        columns.push(Arc::new(self.extra.finish()));
        columns.push(Arc::new(self.mqtt_topic.finish()));
        columns.push(Arc::new(self.received_at.finish()));
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(job_events_schema(), columns)?)
    }
}

/// Builds `job_execution_events` batches.
#[derive(Debug)]
pub struct JobExecutionEventsBuilder {
    event_id: StringBuilder,
    event_type: RepeatedStr,
    operation: EnumStr<ExecutionOperation>,
    job_id: StringBuilder,
    thing_arn: StringBuilder,
    status: EnumStr<ExecutionStatus>,
    event_time: TimestampMillisecondBuilder,
    status_details: MapBuilder<StringBuilder, StringBuilder>,
    anomalies: AnomalyLists,
    extra: NullRuns<StringBuilder>,
    mqtt_topic: StringBuilder,
    received_at: NullRuns<TimestampMillisecondBuilder>,
    scratch: Vec<u8>,
    rows: usize,
    bytes: usize,
    capacity: usize,
}

impl JobExecutionEventsBuilder {
    /// An empty builder sized for about `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        let s = |avg: usize| StringBuilder::with_capacity(rows, rows * avg);
        JobExecutionEventsBuilder {
            event_id: s(36),
            event_type: RepeatedStr::new(Family::Execution.event_type()),
            operation: EnumStr::with_capacity(rows),
            job_id: s(36),
            thing_arn: s(80),
            status: EnumStr::with_capacity(rows),
            event_time: time_builder(rows),
            status_details: status_details_builder(rows),
            anomalies: AnomalyLists::new(),
            extra: NullRuns::strings(rows, 0),
            // `$aws/events/jobExecution/` and a UUID job id alone are 62 bytes.
            mqtt_topic: s(96),
            received_at: NullRuns::times(rows),
            scratch: Vec::new(),
            rows: 0,
            bytes: 0,
            capacity: rows,
        }
    }

    /// Appends one event as a row.
    pub fn append(&mut self, event: &JobExecutionEvent<'_, '_>, provenance: &Provenance<'_>) {
        let c = &event.common;
        self.event_id.append_value(c.event_id);
        self.event_type.append();
        self.operation.append(event.operation);
        self.job_id.append_value(c.job_id);
        self.thing_arn.append_value(event.thing_arn);
        self.status.append_status(event.status);
        self.event_time.append_value(c.event_time_ms);
        match &event.status_details {
            Some(details) => {
                for (key, value) in details.iter() {
                    let value = value.to_text();
                    self.bytes += key.len() + value.len() + 8;
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
        self.anomalies.append(c.anomalies);
        self.scratch.clear();
        if c.extra.write_json(Family::Execution, &mut self.scratch) {
            self.extra
                .append_option(Some(&String::from_utf8_lossy(&self.scratch)));
        } else {
            self.extra.append_option(None);
        }
        self.mqtt_topic.append_option(provenance.mqtt_topic);
        self.received_at.append_option(provenance.received_at_ms);
        self.rows += 1;
        self.bytes += 120
            + c.event_id.len()
            + c.job_id.len()
            + 2 * event.thing_arn.len()
            + self.scratch.len()
            + provenance.mqtt_topic.map_or(0, str::len);
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
    /// capacity).
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
        std::mem::replace(self, JobExecutionEventsBuilder::with_capacity(rows))
    }

    /// The rows as a batch.
    ///
    /// # Errors
    /// Only if Arrow refuses the columns, which would be a bug in this module.
    pub fn into_batch(mut self) -> Result<RecordBatch, BatchError> {
        self.finish_columns()
    }

    fn finish_columns(&mut self) -> Result<RecordBatch, BatchError> {
        let thing_arn = self.thing_arn.finish();
        let thing_name = thing_names(&thing_arn);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()?),
            Arc::new(self.operation.finish()),
            Arc::new(self.job_id.finish()),
            Arc::new(thing_arn),
            Arc::new(thing_name),
            Arc::new(self.status.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.status_details.finish()),
            Arc::new(self.anomalies.finish()),
            Arc::new(self.extra.finish()),
            Arc::new(self.mqtt_topic.finish()),
            Arc::new(self.received_at.finish()),
        ];
        self.rows = 0;
        self.bytes = 0;
        Ok(RecordBatch::try_new(
            job_execution_events_schema(),
            columns,
        )?)
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
