//! The baseline the parser benchmark compares against: serde_json into plain structs, the same
//! validations, and the same Arrow columns (same schema, same builders). A test below checks
//! that both paths produce equal batches, so the benchmark compares equal work.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    Int64Builder, ListBuilder, MapBuilder, MapFieldNames, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use jobstream_parser::columnar::{job_events_schema, job_execution_events_schema};
use jobstream_parser::model::{ExecutionStatus, JobStatus};
use jobstream_parser::topic::{Operation, TopicParser};
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
#[derive(Debug, Default)]
pub struct SerdePath {
    topics: TopicParser,
    jobs: JobColumns,
    executions: ExecutionColumns,
}

impl SerdePath {
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
                if e.event_type != "JOB"
                    || JobStatus::parse(&e.status) != Some(op.expected_status())
                {
                    return false;
                }
                self.jobs.push(&e, topic, extra.as_deref());
            }
            Operation::Execution(op) => {
                let ok = e.event_type == "JOB_EXECUTION"
                    && ExecutionStatus::parse(&e.status).is_some_and(|s| op.allows_status(s))
                    && e.thing_arn.is_some();
                if !ok {
                    return false;
                }
                self.executions.push(&e, topic, extra.as_deref());
            }
        }
        true
    }

    /// The batches built so far (jobs, executions).
    pub fn finish(&mut self) -> (RecordBatch, RecordBatch) {
        (self.jobs.finish(), self.executions.finish())
    }
}

fn time() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

#[derive(Debug)]
struct JobColumns {
    s: [StringBuilder; 5],
    event_time: TimestampMillisecondBuilder,
    target_selection: StringBuilder,
    targets: ListBuilder<StringBuilder>,
    description: StringBuilder,
    comment: StringBuilder,
    times: [TimestampMillisecondBuilder; 3],
    counters: [Int64Builder; 8],
    extra: StringBuilder,
    mqtt_topic: StringBuilder,
    received_at: TimestampMillisecondBuilder,
}

impl Default for JobColumns {
    fn default() -> Self {
        JobColumns {
            s: std::array::from_fn(|_| StringBuilder::new()),
            event_time: time(),
            target_selection: StringBuilder::new(),
            targets: ListBuilder::new(StringBuilder::new()),
            description: StringBuilder::new(),
            comment: StringBuilder::new(),
            times: std::array::from_fn(|_| time()),
            counters: std::array::from_fn(|_| Int64Builder::new()),
            extra: StringBuilder::new(),
            mqtt_topic: StringBuilder::new(),
            received_at: time(),
        }
    }
}

impl JobColumns {
    fn push(&mut self, e: &SerdeEvent<'_>, topic: &str, extra: Option<&str>) {
        for (b, v) in self.s.iter_mut().zip([
            &e.event_id,
            &e.event_type,
            &e.operation,
            &e.job_id,
            &e.status,
        ]) {
            b.append_value(v);
        }
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
        self.extra.append_option(extra);
        self.mqtt_topic.append_value(topic);
        self.received_at.append_null();
    }

    fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = Vec::new();
        for b in &mut self.s {
            columns.push(Arc::new(b.finish()));
        }
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
        columns.push(Arc::new(self.extra.finish()));
        columns.push(Arc::new(self.mqtt_topic.finish()));
        columns.push(Arc::new(self.received_at.finish()));
        RecordBatch::try_new(job_events_schema(), columns).unwrap_or_else(|e| panic!("{e}"))
    }
}

#[derive(Debug)]
struct ExecutionColumns {
    s: [StringBuilder; 7],
    event_time: TimestampMillisecondBuilder,
    status_details: MapBuilder<StringBuilder, StringBuilder>,
    extra: StringBuilder,
    mqtt_topic: StringBuilder,
    received_at: TimestampMillisecondBuilder,
}

impl Default for ExecutionColumns {
    fn default() -> Self {
        let names = MapFieldNames {
            entry: "key_value".into(),
            key: "key".into(),
            value: "value".into(),
        };
        ExecutionColumns {
            s: std::array::from_fn(|_| StringBuilder::new()),
            event_time: time(),
            status_details: MapBuilder::new(
                Some(names),
                StringBuilder::new(),
                StringBuilder::new(),
            )
            .with_values_field(Field::new("value", DataType::Utf8, false)),
            extra: StringBuilder::new(),
            mqtt_topic: StringBuilder::new(),
            received_at: time(),
        }
    }
}

impl ExecutionColumns {
    fn push(&mut self, e: &SerdeEvent<'_>, topic: &str, extra: Option<&str>) {
        let arn = e.thing_arn.as_deref().unwrap_or_default();
        let name = arn.rsplit('/').next().unwrap_or(arn);
        for (b, v) in self.s.iter_mut().zip([
            &*e.event_id,
            &*e.event_type,
            &*e.operation,
            &*e.job_id,
            arn,
            name,
            &*e.status,
        ]) {
            b.append_value(v);
        }
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
        self.extra.append_option(extra);
        self.mqtt_topic.append_value(topic);
        self.received_at.append_null();
    }

    fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = Vec::new();
        for b in &mut self.s {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(self.event_time.finish()));
        columns.push(Arc::new(self.status_details.finish()));
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
