//! Column builders the two tables share, each shaped by how its values arrive: text written a
//! batch at a time where rows hold few distinct values, nulls appended a run at a time.

use std::sync::Arc;

use arrow_array::builder::{
    ListBuilder, MapBuilder, MapFieldNames, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{Array as _, StringArray, TimestampMillisecondArray};
use arrow_schema::{ArrowError, DataType, Field};

use super::BatchError;
use crate::anomaly::Anomalies;
use crate::model::{ExecutionOperation, ExecutionStatus, JobOperation, JobStatus, Status, Text};

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

pub(super) fn anomaly_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Utf8, false))
}

/// A string column's value from a [`Text`]: the string, or the JSON text of another value.
#[inline]
pub(super) fn text<'i>(value: Option<Text<'_, 'i>>) -> Option<std::borrow::Cow<'i, str>> {
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
