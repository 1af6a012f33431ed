//! The two tables' Arrow schemas: exactly the column names and types of the Parquet contract.

use std::sync::{Arc, OnceLock};

use arrow_array::Array as _;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::column::{anomaly_item, status_details_builder};
use crate::columns;
use crate::model::{Family, ProcessDetails};

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn anomalies_col() -> Field {
    Field::new(columns::ANOMALIES, DataType::List(anomaly_item()), false)
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
