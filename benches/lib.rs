//! The baseline the parser benchmark compares against: serde_json into plain structs, the same
//! validations, and the same Arrow columns (same schema, same builders, including the parser's
//! `RepeatedStr`, `EnumStr`, `NullRuns` columns and `thing_names`). A test below checks
//! that both paths produce equal batches, so the benchmark compares equal work.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    Int64Builder, ListBuilder, MapBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use jobstream_parser::columnar::{
    job_events_schema, job_execution_events_schema, status_details_builder, thing_names,
    time_builder, AnomalyLists, EnumStr, NullRuns, RepeatedStr,
};
use jobstream_parser::model::{
    ExecutionOperation, ExecutionStatus, Family, JobOperation, JobStatus,
};
use jobstream_parser::topic::{Operation, TopicParser};
use jobstream_parser::Anomalies;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// String → string pairs in payload order (serde_json's `Map` would sort them).
#[derive(Debug, Default)]
pub struct Pairs<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for PairsVisitor<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some((k, v)) = map.next_entry::<Cow<'a, str>, Cow<'a, str>>()? {
                    pairs.push((k, v));
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(PairsVisitor(std::marker::PhantomData))
    }
}

/// `jobProcessDetails` as serde sees it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SerdeDetails {
    number_of_canceled_things: Option<i64>,
    number_of_failed_things: Option<i64>,
    number_of_in_progress_things: Option<i64>,
    number_of_queued_things: Option<i64>,
    number_of_rejected_things: Option<i64>,
    number_of_removed_things: Option<i64>,
    number_of_succeeded_things: Option<i64>,
    number_of_timed_out_things: Option<i64>,
}

/// Either family's payload, as a serde user would model it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SerdeEvent<'a> {
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    timestamp: i64,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(borrow)]
    job_id: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    target_selection: Option<Cow<'a, str>>,
    #[serde(borrow)]
    targets: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    comment: Option<Cow<'a, str>>,
    created_at: Option<i64>,
    last_updated_at: Option<i64>,
    completed_at: Option<i64>,
    job_process_details: Option<SerdeDetails>,
    #[serde(borrow)]
    thing_arn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status_details: Option<Pairs<'a>>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

fn ms(n: i64) -> i64 {
    if n < jobstream_parser::SECONDS_BELOW {
        n * 1000
    } else {
        n
    }
}

/// serde_json + validation + Arrow building for both tables.
#[derive(Debug)]
pub struct SerdePath {
    topics: TopicParser,
    jobs: JobColumns,
    executions: ExecutionColumns,
    rows: usize,
}

impl Default for SerdePath {
    /// Sized for batches of 8,192 rows, the Parquet sink's default.
    fn default() -> Self {
        SerdePath::with_capacity(8192)
    }
}

impl SerdePath {
    /// Columns sized as `TableBuilders::with_capacity(rows)` sizes the parser's, so both paths
    /// pay the same for memory.
    pub fn with_capacity(rows: usize) -> Self {
        SerdePath {
            topics: TopicParser::default(),
            jobs: JobColumns::with_capacity(rows / 8),
            executions: ExecutionColumns::with_capacity(rows),
            rows,
        }
    }

    /// Parses, validates and appends one message; `false` if it was rejected.
    pub fn push(&mut self, topic: &str, payload: &[u8]) -> bool {
        let Ok(info) = self.topics.parse(topic) else {
            return false;
        };
        let Ok(e) = serde_json::from_slice::<SerdeEvent<'_>>(payload) else {
            return false;
        };
        if e.job_id != info.job_id || e.operation != info.operation.as_str() {
            return false;
        }
        let extra =
            (!e.extra.is_empty()).then(|| serde_json::to_string(&e.extra).unwrap_or_default());
        match info.operation {
            Operation::Job(op) => {
                let status = op.expected_status();
                if e.event_type != "JOB" || JobStatus::parse(&e.status) != Some(status) {
                    return false;
                }
                self.jobs.push(&e, (op, status), topic, extra.as_deref());
            }
            Operation::Execution(op) => {
                let status = ExecutionStatus::parse(&e.status).filter(|&s| op.allows_status(s));
                let (Some(status), "JOB_EXECUTION", true) =
                    (status, &*e.event_type, e.thing_arn.is_some())
                else {
                    return false;
                };
                self.executions
                    .push(&e, (op, status), topic, extra.as_deref());
            }
        }
        true
    }

    /// The batches built so far (jobs, executions).
    pub fn finish(&mut self) -> (RecordBatch, RecordBatch) {
        // Fresh sized columns for the next batch, as the parser's builders do.
        let mut jobs = std::mem::replace(&mut self.jobs, JobColumns::with_capacity(self.rows / 8));
        let mut executions = std::mem::replace(
            &mut self.executions,
            ExecutionColumns::with_capacity(self.rows),
        );
        (jobs.finish(), executions.finish())
    }
}

/// The average sizes the parser's builders assume (`columnar/table.rs`).
fn strings(rows: usize, avg: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * avg)
}

#[derive(Debug)]
struct JobColumns {
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
    times: [TimestampMillisecondBuilder; 3],
    counters: [Int64Builder; 8],
    // Always empty: the baseline keeps only events as AWS documents them (the benchmark's
    // generated fleets hold nothing else), so it never has an anomaly to record.
    anomalies: AnomalyLists,
    extra: NullRuns<StringBuilder>,
    mqtt_topic: StringBuilder,
    received_at: NullRuns<TimestampMillisecondBuilder>,
}

impl JobColumns {
    fn with_capacity(rows: usize) -> Self {
        JobColumns {
            event_id: strings(rows, 36),
            event_type: RepeatedStr::new(Family::Job.event_type()),
            operation: EnumStr::with_capacity(rows),
            job_id: strings(rows, 36),
            status: EnumStr::with_capacity(rows),
            event_time: time_builder(rows),
            target_selection: strings(rows, 8),
            targets: ListBuilder::new(strings(rows, 64)),
            description: strings(rows, 32),
            comment: strings(rows, 0),
            times: std::array::from_fn(|_| time_builder(rows)),
            counters: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
            anomalies: AnomalyLists::new(),
            extra: NullRuns::strings(rows, 0),
            mqtt_topic: strings(rows, 96),
            received_at: NullRuns::times(rows),
        }
    }

    fn push(
        &mut self,
        e: &SerdeEvent<'_>,
        (operation, status): (JobOperation, JobStatus),
        topic: &str,
        extra: Option<&str>,
    ) {
        // `SerdePath::push` checked `eventType`, `operation` and `status` against these.
        self.event_id.append_value(&e.event_id);
        self.event_type.append();
        self.operation.append(operation);
        self.job_id.append_value(&e.job_id);
        self.status.append(status);
        self.event_time.append_value(ms(e.timestamp));
        self.target_selection
            .append_option(e.target_selection.as_deref());
        match &e.targets {
            Some(targets) => {
                for t in targets {
                    self.targets.values().append_value(t);
                }
                self.targets.append(true);
            }
            None => self.targets.append(false),
        }
        self.description.append_option(e.description.as_deref());
        self.comment.append_option(e.comment.as_deref());
        for (b, v) in self
            .times
            .iter_mut()
            .zip([e.created_at, e.last_updated_at, e.completed_at])
        {
            b.append_option(v.map(ms));
        }
        let d = e.job_process_details.as_ref();
        let values = [
            d.and_then(|d| d.number_of_canceled_things),
            d.and_then(|d| d.number_of_failed_things),
            d.and_then(|d| d.number_of_in_progress_things),
            d.and_then(|d| d.number_of_queued_things),
            d.and_then(|d| d.number_of_rejected_things),
            d.and_then(|d| d.number_of_removed_things),
            d.and_then(|d| d.number_of_succeeded_things),
            d.and_then(|d| d.number_of_timed_out_things),
        ];
        for (b, v) in self.counters.iter_mut().zip(values) {
            b.append_option(v);
        }
        self.anomalies.append(Anomalies::NONE);
        self.extra.append_option(extra);
        self.mqtt_topic.append_value(topic);
        self.received_at.append_option(None);
    }

    fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = Vec::new();
        columns.push(Arc::new(self.event_id.finish()));
        columns.push(Arc::new(
            self.event_type.finish().unwrap_or_else(|e| panic!("{e}")),
        ));
        columns.push(Arc::new(self.operation.finish()));
        columns.push(Arc::new(self.job_id.finish()));
        columns.push(Arc::new(self.status.finish()));
        columns.push(Arc::new(self.event_time.finish()));
        columns.push(Arc::new(self.target_selection.finish()));
        columns.push(Arc::new(self.targets.finish()));
        columns.push(Arc::new(self.description.finish()));
        columns.push(Arc::new(self.comment.finish()));
        for b in &mut self.times {
            columns.push(Arc::new(b.finish()));
        }
        for b in &mut self.counters {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(self.anomalies.finish()));
        columns.push(Arc::new(self.extra.finish()));
        columns.push(Arc::new(self.mqtt_topic.finish()));
        columns.push(Arc::new(self.received_at.finish()));
        RecordBatch::try_new(job_events_schema(), columns).unwrap_or_else(|e| panic!("{e}"))
    }
}

#[derive(Debug)]
struct ExecutionColumns {
    event_id: StringBuilder,
    event_type: RepeatedStr,
    operation: EnumStr<ExecutionOperation>,
    job_id: StringBuilder,
    thing_arn: StringBuilder,
    status: EnumStr<ExecutionStatus>,
    event_time: TimestampMillisecondBuilder,
    status_details: MapBuilder<StringBuilder, StringBuilder>,
    // Always empty: the baseline keeps only events as AWS documents them (the benchmark's
    // generated fleets hold nothing else), so it never has an anomaly to record.
    anomalies: AnomalyLists,
    extra: NullRuns<StringBuilder>,
    mqtt_topic: StringBuilder,
    received_at: NullRuns<TimestampMillisecondBuilder>,
}

impl ExecutionColumns {
    fn with_capacity(rows: usize) -> Self {
        ExecutionColumns {
            event_id: strings(rows, 36),
            event_type: RepeatedStr::new(Family::Execution.event_type()),
            operation: EnumStr::with_capacity(rows),
            job_id: strings(rows, 36),
            thing_arn: strings(rows, 80),
            status: EnumStr::with_capacity(rows),
            event_time: time_builder(rows),
            status_details: status_details_builder(rows),
            anomalies: AnomalyLists::new(),
            extra: NullRuns::strings(rows, 0),
            mqtt_topic: strings(rows, 96),
            received_at: NullRuns::times(rows),
        }
    }

    fn push(
        &mut self,
        e: &SerdeEvent<'_>,
        (operation, status): (ExecutionOperation, ExecutionStatus),
        topic: &str,
        extra: Option<&str>,
    ) {
        // `SerdePath::push` checked `eventType`, `operation` and `status` against these; the
        // thing name is derived from the ARNs at `finish`.
        self.event_id.append_value(&e.event_id);
        self.event_type.append();
        self.operation.append(operation);
        self.job_id.append_value(&e.job_id);
        self.thing_arn
            .append_value(e.thing_arn.as_deref().unwrap_or_default());
        self.status.append(status);
        self.event_time.append_value(ms(e.timestamp));
        match &e.status_details {
            Some(pairs) => {
                for (k, v) in &pairs.0 {
                    self.status_details.keys().append_value(k);
                    self.status_details.values().append_value(v);
                }
                let _ = self.status_details.append(true);
            }
            None => {
                let _ = self.status_details.append(false);
            }
        }
        self.anomalies.append(Anomalies::NONE);
        self.extra.append_option(extra);
        self.mqtt_topic.append_value(topic);
        self.received_at.append_option(None);
    }

    fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = Vec::new();
        columns.push(Arc::new(self.event_id.finish()));
        columns.push(Arc::new(
            self.event_type.finish().unwrap_or_else(|e| panic!("{e}")),
        ));
        columns.push(Arc::new(self.operation.finish()));
        columns.push(Arc::new(self.job_id.finish()));
        let thing_arn = self.thing_arn.finish();
        let thing_name = thing_names(&thing_arn);
        columns.push(Arc::new(thing_arn));
        columns.push(Arc::new(thing_name));
        columns.push(Arc::new(self.status.finish()));
        columns.push(Arc::new(self.event_time.finish()));
        columns.push(Arc::new(self.status_details.finish()));
        columns.push(Arc::new(self.anomalies.finish()));
        columns.push(Arc::new(self.extra.finish()));
        columns.push(Arc::new(self.mqtt_topic.finish()));
        columns.push(Arc::new(self.received_at.finish()));
        RecordBatch::try_new(job_execution_events_schema(), columns)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobstream_fleet::{Fleet, FleetConfig};
    use jobstream_parser::{Parser, Provenance, TableBuilders};

    #[test]
    fn serde_baseline_builds_the_same_batches_as_the_simd_parser() {
        let messages = Fleet::generate(FleetConfig::default());
        let mut serde_path = SerdePath::default();
        let mut parser = Parser::default();
        let mut tables = TableBuilders::with_capacity(1024);
        for m in &messages {
            assert!(serde_path.push(&m.topic, &m.payload));
            let provenance = Provenance {
                mqtt_topic: Some(&m.topic),
                received_at_ms: None,
            };
            parser.parse(&m.topic, &m.payload, |o| {
                tables.append(&o.expect("valid"), &provenance)
            });
        }
        let (jobs, executions) = serde_path.finish();
        assert_eq!(jobs, tables.jobs.finish().expect("jobs"));
        assert_eq!(executions, tables.executions.finish().expect("executions"));
    }
}
