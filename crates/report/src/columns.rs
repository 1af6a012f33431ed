//! The columns the report reads, by the parser's names, and typed access to them in a batch.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, Int64Array, ListArray, MapArray, RecordBatch, StringArray};
use arrow_array::{PrimitiveArray, TimestampMillisecondArray};
use jobstream_parser::columns::*;
use jobstream_parser::model::ProcessDetails;

use crate::error::ColumnError;

/// What the report reads of `job_events` (14 of its 24 columns with the counters).
pub(crate) const JOB_COLUMNS: [&str; 8] = [
    EVENT_ID,
    OPERATION,
    JOB_ID,
    EVENT_TIME,
    TARGET_SELECTION,
    CREATED_AT,
    LAST_UPDATED_AT,
    COMPLETED_AT,
];

/// What the report reads of `job_execution_events` (6 of 12, leaving out the wide
/// `thing_arn`, `extra` and `mqtt_topic`).
pub(crate) const EXECUTION_COLUMNS: [&str; 6] = [
    EVENT_ID,
    OPERATION,
    JOB_ID,
    THING_NAME,
    EVENT_TIME,
    STATUS_DETAILS,
];

/// Columns added after the first files were written: a file without one is read as if every
/// row had it empty.
pub(crate) const LATER_COLUMNS: [&str; 1] = [ANOMALIES];

const fn counter(at: usize) -> &'static str {
    ProcessDetails::COUNTERS[at].1
}

/// The `job_events` counter column of each outcome that has one, in
/// [`OUTCOMES`](crate::aggregate::OUTCOMES) order (the parser keeps them alphabetical).
pub(crate) const COUNTER_COLUMNS: [&str; 6] = [
    counter(6),
    counter(1),
    counter(4),
    counter(7),
    counter(0),
    counter(5),
];

pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ColumnError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ColumnError::Missing(name.to_owned()))
}

pub(crate) fn strings<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a StringArray, ColumnError> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong(name, "a string column"))
}

/// A string column as read: plain, or an Arrow dictionary (see [`crate::scan`]). Rows
/// map to keys; equal keys within a batch are equal strings.
pub(crate) enum Keyed<'a> {
    Plain(&'a StringArray),
    Dictionary {
        keys: &'a PrimitiveArray<Int32Type>,
        values: &'a StringArray,
    },
}

impl<'a> Keyed<'a> {
    pub(crate) fn of(batch: &'a RecordBatch, name: &str) -> Result<Self, ColumnError> {
        let array = column(batch, name)?;
        if let Some(plain) = array.as_string_opt::<i32>() {
            return Ok(Keyed::Plain(plain));
        }
        let dictionary = array
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| wrong(name, "a string column"))?;
        let values = dictionary
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| wrong(name, "a string column"))?;
        Ok(Keyed::Dictionary {
            keys: dictionary.keys(),
            values,
        })
    }

    /// How many distinct keys rows can have.
    pub(crate) fn keys(&self) -> usize {
        match self {
            Keyed::Plain(a) => a.len(),
            Keyed::Dictionary { values, .. } => values.len(),
        }
    }

    /// The key of row `i`; `None` for a null.
    pub(crate) fn key(&self, i: usize) -> Option<usize> {
        match self {
            Keyed::Plain(a) => a.is_valid(i).then_some(i),
            Keyed::Dictionary { keys, values } => {
                let k = usize::try_from(keys.value(i)).ok()?;
                (keys.is_valid(i) && k < values.len() && values.is_valid(k)).then_some(k)
            }
        }
    }

    pub(crate) fn text(&self, key: usize) -> &'a str {
        match self {
            Keyed::Plain(a) => a.value(key),
            Keyed::Dictionary { values, .. } => values.value(key),
        }
    }
}

/// Per-batch memo of a value computed once per key.
pub(crate) struct Memo<T: Copy> {
    slots: Vec<Option<T>>,
}

impl<T: Copy> Memo<T> {
    pub(crate) fn new(keys: usize) -> Self {
        Memo {
            slots: vec![None; keys],
        }
    }

    pub(crate) fn get(&mut self, key: usize, compute: impl FnOnce() -> T) -> T {
        *self.slots[key].get_or_insert_with(compute)
    }
}

pub(crate) fn times<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a TimestampMillisecondArray, ColumnError> {
    column(batch, name)?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| wrong(name, "TIMESTAMP(MILLIS)"))
}

pub(crate) fn int64s<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a Int64Array, ColumnError> {
    column(batch, name)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| wrong(name, "INT64"))
}

pub(crate) fn opt<T: arrow_array::ArrowPrimitiveType>(
    a: &PrimitiveArray<T>,
    i: usize,
) -> Option<T::Native> {
    a.is_valid(i).then(|| a.value(i))
}

fn wrong(column: &str, expected: &'static str) -> ColumnError {
    ColumnError::WrongType {
        column: column.to_owned(),
        expected,
    }
}

/// `status_details` as its map, keys and values.
pub(crate) fn string_map<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<(&'a MapArray, &'a StringArray, &'a StringArray), ColumnError> {
    let map: &MapArray = column(batch, name)?
        .as_map_opt()
        .ok_or_else(|| wrong(name, "a MAP"))?;
    let keys = map
        .keys()
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong(name, "a MAP of strings"))?;
    let values = map
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong(name, "a MAP of strings"))?;
    Ok((map, keys, values))
}

/// The `anomalies` column, absent in files written before it existed.
pub(crate) fn anomaly_lists(batch: &RecordBatch) -> Option<&ListArray> {
    batch.column_by_name(ANOMALIES)?.as_list_opt::<i32>()
}

/// Whether row `row` was kept with an anomaly.
pub(crate) fn has_anomalies(anomalies: Option<&ListArray>, row: usize) -> bool {
    anomalies.is_some_and(|lists| lists.is_valid(row) && lists.value_length(row) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_column_is_the_one_of_its_outcome() {
        for (outcome, column) in crate::aggregate::OUTCOMES.iter().zip(COUNTER_COLUMNS) {
            assert_eq!(column, format!("number_of_{}_things", outcome.as_str()));
        }
    }
}
