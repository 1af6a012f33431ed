//! Round trip: generated events → Arrow batches → values equal to the input, for every column.
//! The oracle is serde_json's reading of each payload, independent of the parser under test.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_parser::columnar::{job_events_schema, job_execution_events_schema};
use jobstream_parser::{Parser, Provenance, TableBuilders};
use serde_json::{Map, Value};

fn str_at(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let array = batch
        .column_by_name(column)
        .expect(column)
        .as_string::<i32>();
    (!array.is_null(row)).then(|| array.value(row).to_owned())
}

fn ts_at(batch: &RecordBatch, column: &str, row: usize) -> Option<i64> {
    let array = batch
        .column_by_name(column)
        .expect(column)
        .as_primitive::<TimestampMillisecondType>();
    (!array.is_null(row)).then(|| array.value(row))
}

fn i64_at(batch: &RecordBatch, column: &str, row: usize) -> Option<i64> {
    let array = batch
        .column_by_name(column)
        .expect(column)
        .as_primitive::<Int64Type>();
    (!array.is_null(row)).then(|| array.value(row))
}

fn json_str(v: &Map<String, Value>, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn json_ms(v: &Map<String, Value>, key: &str) -> Option<i64> {
    let n = v.get(key)?.as_i64()?;
    Some(if n < 100_000_000_000 { n * 1000 } else { n })
}

const JOB_KEYS: &[&str] = &[
    "eventType",
    "eventId",
    "timestamp",
    "operation",
    "jobId",
    "status",
    "targetSelection",
    "targets",
    "description",
    "comment",
    "createdAt",
    "lastUpdatedAt",
    "completedAt",
    "jobProcessDetails",
];
const EXECUTION_KEYS: &[&str] = &[
    "eventType",
    "eventId",
    "timestamp",
    "operation",
    "jobId",
    "status",
    "thingArn",
    "statusDetails",
];

fn expected_extra(v: &Map<String, Value>, known: &[&str]) -> Option<Value> {
    let extra: Map<String, Value> = v
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!extra.is_empty()).then_some(Value::Object(extra))
}

#[test]
fn generated_events_round_trip_through_arrow_for_every_column() {
    let messages = Fleet::generate(FleetConfig {
        jobs: 40,
        things_per_job: 60,
        unknown_fields: true,
        ..FleetConfig::default()
    });
    let mut parser = Parser::default();
    let mut tables = TableBuilders::with_capacity(messages.len());
    let received_at = 1_800_000_000_123;
    for m in &messages {
        let provenance = Provenance {
            mqtt_topic: Some(&m.topic),
            received_at_ms: Some(received_at),
        };
        parser.parse(&m.topic, &m.payload, |outcome| {
            tables.append(&outcome.expect("generated events are valid"), &provenance)
        });
    }
    let jobs = tables.jobs.finish().expect("job batch");
    let executions = tables.executions.finish().expect("execution batch");
    assert_eq!(jobs.schema(), job_events_schema());
    assert_eq!(executions.schema(), job_execution_events_schema());
    assert_eq!(jobs.num_rows() + executions.num_rows(), messages.len());

    let (mut job_row, mut exec_row) = (0, 0);
    let mut extras_seen = 0;
    for m in &messages {
        let v: Map<String, Value> = serde_json::from_slice(&m.payload).expect("valid JSON");
        let (batch, row) = if v["eventType"] == "JOB" {
            job_row += 1;
            (&jobs, job_row - 1)
        } else {
            exec_row += 1;
            (&executions, exec_row - 1)
        };
        assert_eq!(str_at(batch, "event_id", row), json_str(&v, "eventId"));
        assert_eq!(str_at(batch, "event_type", row), json_str(&v, "eventType"));
        assert_eq!(str_at(batch, "operation", row), json_str(&v, "operation"));
        assert_eq!(str_at(batch, "job_id", row), json_str(&v, "jobId"));
        assert_eq!(str_at(batch, "status", row), json_str(&v, "status"));
        assert_eq!(ts_at(batch, "event_time", row), json_ms(&v, "timestamp"));
        assert_eq!(
            str_at(batch, "mqtt_topic", row).as_deref(),
            Some(m.topic.as_str())
        );
        assert_eq!(ts_at(batch, "received_at", row), Some(received_at));
        let known = if v["eventType"] == "JOB" {
            JOB_KEYS
        } else {
            EXECUTION_KEYS
        };
        let extra = str_at(batch, "extra", row)
            .map(|s| serde_json::from_str::<Value>(&s).expect("extra is JSON"));
        let mut expected = expected_extra(&v, known);
        if let (Some(Value::Object(expected)), Some(Value::Object(details))) =
            (expected.as_mut(), v.get("jobProcessDetails"))
        {
            let unknown: Map<String, Value> = details
                .iter()
                .filter(|(k, _)| !k.starts_with("numberOf"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !unknown.is_empty() {
                expected.insert("jobProcessDetails".into(), Value::Object(unknown));
            }
        }
        extras_seen += usize::from(extra.is_some());
        assert_eq!(extra, expected, "extra of {}", m.topic);

        if v["eventType"] == "JOB" {
            assert_eq!(
                str_at(batch, "target_selection", row),
                json_str(&v, "targetSelection")
            );
            assert_eq!(
                str_at(batch, "description", row),
                json_str(&v, "description")
            );
            assert_eq!(str_at(batch, "comment", row), json_str(&v, "comment"));
            assert_eq!(ts_at(batch, "created_at", row), json_ms(&v, "createdAt"));
            assert_eq!(
                ts_at(batch, "last_updated_at", row),
                json_ms(&v, "lastUpdatedAt")
            );
            assert_eq!(
                ts_at(batch, "completed_at", row),
                json_ms(&v, "completedAt")
            );
            let targets = batch
                .column_by_name("targets")
                .expect("targets")
                .as_list::<i32>();
            let got: Vec<String> = targets
                .value(row)
                .as_string::<i32>()
                .iter()
                .map(|s| s.expect("no null targets").to_owned())
                .collect();
            let want: Vec<String> = v["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(|t| t.as_str().expect("string").to_owned())
                .collect();
            assert_eq!(got, want);
            let details = v.get("jobProcessDetails").and_then(Value::as_object);
            for (key, column) in [
                ("numberOfCanceledThings", "number_of_canceled_things"),
                ("numberOfFailedThings", "number_of_failed_things"),
                ("numberOfInProgressThings", "number_of_in_progress_things"),
                ("numberOfQueuedThings", "number_of_queued_things"),
                ("numberOfRejectedThings", "number_of_rejected_things"),
                ("numberOfRemovedThings", "number_of_removed_things"),
                ("numberOfSucceededThings", "number_of_succeeded_things"),
                ("numberOfTimedOutThings", "number_of_timed_out_things"),
            ] {
                let want = details.and_then(|d| d.get(key)).and_then(Value::as_i64);
                assert_eq!(i64_at(batch, column, row), want, "{column}");
            }
        } else {
            let arn = json_str(&v, "thingArn").expect("thingArn");
            assert_eq!(
                str_at(batch, "thing_arn", row).as_deref(),
                Some(arn.as_str())
            );
            assert_eq!(
                str_at(batch, "thing_name", row).as_deref(),
                arn.rsplit('/').next()
            );
            let map = batch
                .column_by_name("status_details")
                .expect("map")
                .as_map();
            match v.get("statusDetails").and_then(Value::as_object) {
                None => assert!(map.is_null(row)),
                Some(details) => {
                    let entries = map.value(row);
                    let keys = entries.column(0).as_string::<i32>();
                    let values = entries.column(1).as_string::<i32>();
                    let mut got: Vec<(String, String)> = (0..entries.len())
                        .map(|i| (keys.value(i).to_owned(), values.value(i).to_owned()))
                        .collect();
                    let mut want: Vec<(String, String)> = details
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
                        .collect();
                    got.sort();
                    want.sort();
                    assert_eq!(got, want);
                }
            }
        }
    }
    assert!(
        extras_seen > 10,
        "the generator should exercise `extra` ({extras_seen})"
    );
}

#[test]
fn builders_are_reusable_after_finish() {
    let messages = Fleet::generate(FleetConfig {
        jobs: 2,
        ..FleetConfig::default()
    });
    let mut parser = Parser::default();
    let mut tables = TableBuilders::with_capacity(16);
    for round in 0..2 {
        for m in &messages {
            parser.parse(&m.topic, &m.payload, |outcome| {
                tables.append(&outcome.expect("valid"), &Provenance::default())
            });
        }
        let total = tables.jobs.finish().expect("jobs").num_rows()
            + tables.executions.finish().expect("executions").num_rows();
        assert_eq!(total, messages.len(), "round {round}");
        assert!(tables.is_empty());
    }
}
