//! Golden tests on the spec's examples, and one test per reject kind.

use jobstream_parser::model::{ExecutionOperation, ExecutionStatus, JobOperation, JobStatus};
use jobstream_parser::{Event, Family, Parser, ParserConfig, RejectKind, Status};

use crate::support::{reject_of, spec_examples, with_event};

const COMPLETED_TOPIC: &str = "$aws/events/job/27450507-bf6f-4012-92af-bb8a1c8c4484/completed";

fn completed_payload() -> String {
    spec_examples()
        .into_iter()
        .find(|(topic, _)| topic == COMPLETED_TOPIC)
        .expect("the spec has a completed example")
        .1
}

#[test]
fn every_spec_example_is_accepted() {
    let mut parser = Parser::default();
    let examples = spec_examples();
    assert_eq!(
        examples.len(),
        11,
        "5 job examples and 6 execution operations"
    );
    for (topic, payload) in &examples {
        with_event(&mut parser, topic, payload, |event| {
            assert_eq!(event.common().event_time_ms, 1_234_567_890_000, "{topic}");
        });
    }
}

#[test]
fn spec_completed_job_example_has_expected_typed_values() {
    let mut parser = Parser::default();
    with_event(
        &mut parser,
        COMPLETED_TOPIC,
        &completed_payload(),
        |event| {
            let Event::Job(job) = event else {
                panic!("not a job event")
            };
            assert_eq!(job.common.event_id, "7364ffd1-8b65-4824-85d5-6c14686c97c6");
            assert_eq!(job.common.job_id, "27450507-bf6f-4012-92af-bb8a1c8c4484");
            assert_eq!(job.common.event_time_ms, 1_234_567_890_000);
            assert_eq!(job.operation, JobOperation::Completed);
            assert_eq!(job.status, Status::Known(JobStatus::Completed));
            assert!(job.common.anomalies.is_empty());
            assert_eq!(
                job.target_selection.and_then(|t| t.as_str()),
                Some("SNAPSHOT|CONTINUOUS")
            );
            let targets: Vec<&str> = job
                .targets
                .expect("targets")
                .iter()
                .filter_map(|t| t.as_str())
                .collect();
            assert_eq!(
            targets,
            [
                "arn:aws:iot:us-east-1:123456789012:thing/a39f6f91-70cf-4bd2-a381-9c66df1a80d0",
                "arn:aws:iot:us-east-1:123456789012:thinggroup/2fc4c0a4-6e45-4525-a238-0fe8d3dd21bb"
            ]
        );
            assert_eq!(
                job.description.and_then(|t| t.as_str()),
                Some("My Job Description")
            );
            assert!(job.comment.is_none());
            assert_eq!(job.completed_at_ms, Some(1_234_567_890_123));
            assert_eq!(job.created_at_ms, Some(1_234_567_890_123));
            assert_eq!(job.last_updated_at_ms, Some(1_234_567_890_123));
            let details = job.process_details.expect("jobProcessDetails");
            assert_eq!(details.succeeded, Some(3));
            assert_eq!(details.canceled, Some(0));
            assert_eq!(details.rejected, Some(0));
            assert_eq!(details.failed, Some(0));
            assert_eq!(details.removed, Some(0));
            assert_eq!(details.queued, None, "not in the spec's example");
            assert!(job.common.extra.is_empty());
        },
    );
}

#[test]
fn spec_cancel_and_delete_examples_carry_comment_and_no_completion() {
    let mut parser = Parser::default();
    let mut seen = Vec::new();
    for (topic, payload) in spec_examples() {
        if !topic.contains("/job/") || topic.ends_with("/completed") {
            continue;
        }
        with_event(&mut parser, &topic, &payload, |event| {
            let Event::Job(job) = event else {
                panic!("not a job event")
            };
            assert_eq!(job.status, Status::Known(job.operation.expected_status()));
            assert_eq!(job.completed_at_ms, None);
            assert!(job.process_details.is_none());
            let has_comment =
                job.comment.and_then(|t| t.as_str()) == Some("Comment for this operation");
            // The spec's `canceled` example is the one without a comment.
            assert_eq!(
                has_comment,
                job.operation != JobOperation::Canceled,
                "{topic}"
            );
            seen.push(job.operation);
        });
    }
    assert_eq!(seen.len(), 4);
}

#[test]
fn spec_execution_example_parses_for_every_terminal_operation() {
    let mut parser = Parser::default();
    let mut operations = Vec::new();
    for (topic, payload) in spec_examples() {
        if !topic.contains("/jobExecution/") {
            continue;
        }
        with_event(&mut parser, &topic, &payload, |event| {
            let Event::Execution(execution) = event else {
                panic!("not an execution event")
            };
            assert_eq!(
                execution.thing_arn,
                "arn:aws:iot:us-east-1:123456789012:myThing/6d639fbc-8f85-4a90-924d-a2867f8366a7"
            );
            assert_eq!(
                execution.thing_name(),
                "6d639fbc-8f85-4a90-924d-a2867f8366a7"
            );
            assert_eq!(
                execution.common.job_id,
                "154b39e5-60b0-48a4-9b73-f6f8dd032d27"
            );
            let details: Vec<_> = execution
                .status_details
                .expect("statusDetails")
                .iter()
                .map(|(k, v)| (k, v.as_str()))
                .collect();
            assert_eq!(details, [("key", Some("value"))]);
            let status = execution.status.known().expect("a documented status");
            assert!(execution.operation.allows_status(status));
            assert!(execution.common.anomalies.is_empty());
            operations.push(execution.operation);
        });
    }
    assert_eq!(
        operations,
        [
            ExecutionOperation::Succeeded,
            ExecutionOperation::Failed,
            ExecutionOperation::Rejected,
            ExecutionOperation::Canceled,
            ExecutionOperation::Removed,
            ExecutionOperation::TimedOut
        ]
    );
}

#[test]
fn execution_deleted_accepts_any_status_and_status_details_may_be_absent() {
    let mut parser = Parser::default();
    let payload = r#"{"eventType":"JOB_EXECUTION","eventId":"e1","timestamp":1700000000,"operation":"deleted","jobId":"j1","thingArn":"arn:aws:iot:eu-west-1:1:thing/t1","status":"IN_PROGRESS"}"#;
    with_event(
        &mut parser,
        "$aws/events/jobExecution/j1/deleted",
        payload,
        |event| {
            let Event::Execution(e) = event else { panic!() };
            assert_eq!(e.status, Status::Known(ExecutionStatus::InProgress));
            assert!(e.common.anomalies.is_empty());
            assert!(e.status_details.is_none());
            assert_eq!(e.thing_name(), "t1");
        },
    );
}

#[test]
fn unknown_fields_are_kept_as_json_extra() {
    let mut parser = Parser::default();
    let payload = completed_payload().replacen(
        "\"numberOfSucceededThings\": 3",
        "\"numberOfSucceededThings\": 3, \"numberOfQueuedThings\": 2, \"numberOfFutureThings\": 9",
        1,
    );
    let payload = payload.replacen(
        "{ \"eventType\"",
        "{ \"jobTemplateArn\": \"arn:x\\\"y\", \"nested\": {\"a\": [1, 2.5, true, null]}, \"eventType\"",
        1,
    );
    with_event(&mut parser, COMPLETED_TOPIC, &payload, |event| {
        let Event::Job(job) = event else { panic!() };
        assert_eq!(job.process_details.expect("details").queued, Some(2));
        let mut json = Vec::new();
        assert!(job.common.extra.write_json(Family::Job, &mut json));
        let extra: serde_json::Value = serde_json::from_slice(&json).expect("extra is JSON");
        assert_eq!(
            extra,
            serde_json::json!({
                "jobTemplateArn": "arn:x\"y",
                "nested": {"a": [1, 2.5, true, null]},
                "jobProcessDetails": {"numberOfFutureThings": 9}
            })
        );
    });
}

#[test]
fn custom_prefix_is_honoured() {
    let mut parser = Parser::new(ParserConfig {
        topic_prefix: "fleet/relay".to_owned(),
        ..ParserConfig::default()
    });
    let payload = completed_payload();
    let topic = COMPLETED_TOPIC.replace("$aws/events/", "fleet/relay/");
    with_event(&mut parser, &topic, &payload, |event| {
        assert_eq!(event.family(), Family::Job)
    });
    let reject = reject_of(&mut parser, COMPLETED_TOPIC, &payload);
    assert_eq!(reject.kind, RejectKind::UnknownTopic);
}

/// One input per reject kind, each with a check that the message names the problem.
#[test]
fn every_reject_kind_has_a_triggering_input() {
    let mut parser = Parser::new(ParserConfig {
        max_payload_bytes: 4096,
        ..ParserConfig::default()
    });
    let good = completed_payload();
    let exec_topic = "$aws/events/jobExecution/j1/failed";
    let exec = |status_details: &str| {
        format!(
            r#"{{"eventType":"JOB_EXECUTION","eventId":"e","timestamp":1700000000,"operation":"failed","jobId":"j1","thingArn":"arn:aws:iot:us-east-1:1:thing/t","status":"FAILED","statusDetails":{status_details}}}"#
        )
    };
    let cases: Vec<(RejectKind, String, String, &str)> = vec![
        (
            RejectKind::UnknownTopic,
            "$aws/events/thing/x/created".into(),
            good.clone(),
            "neither",
        ),
        (
            RejectKind::UnknownTopic,
            "$aws/events/job/j/completed/extra".into(),
            good.clone(),
            "neither",
        ),
        (
            RejectKind::UnknownTopic,
            "other/job/j/completed".into(),
            good.clone(),
            "prefix",
        ),
        (
            RejectKind::UnknownOperation,
            "$aws/events/job/j/exploded".into(),
            good.clone(),
            "exploded",
        ),
        (
            RejectKind::UnknownOperation,
            COMPLETED_TOPIC.into(),
            good.replace("\"operation\": \"completed\"", "\"operation\": \"paused\""),
            "paused",
        ),
        (
            RejectKind::PayloadTooLarge,
            COMPLETED_TOPIC.into(),
            format!("{}{}", good, " ".repeat(5000)),
            "over the cap",
        ),
        (
            RejectKind::NotJson,
            COMPLETED_TOPIC.into(),
            "{\"eventType\": ".into(),
            "not valid JSON",
        ),
        (
            RejectKind::NotJson,
            COMPLETED_TOPIC.into(),
            String::new(),
            "not valid JSON",
        ),
        (
            RejectKind::NotObject,
            COMPLETED_TOPIC.into(),
            "[1, 2]".into(),
            "array",
        ),
        (
            RejectKind::MissingField,
            COMPLETED_TOPIC.into(),
            good.replace("\"eventId\"", "\"eventIdentifier\""),
            "eventId",
        ),
        (
            RejectKind::MissingField,
            COMPLETED_TOPIC.into(),
            good.replace("\"status\": \"COMPLETED\"", "\"status\": null"),
            "status",
        ),
        (
            RejectKind::MistypedField,
            COMPLETED_TOPIC.into(),
            good.replace("\"timestamp\": 1234567890", "\"timestamp\": \"yesterday\""),
            "timestamp",
        ),
        (
            RejectKind::MistypedField,
            COMPLETED_TOPIC.into(),
            good.replace("\"timestamp\": 1234567890", "\"timestamp\": -5"),
            "timestamp",
        ),
        (
            RejectKind::MistypedField,
            COMPLETED_TOPIC.into(),
            good.replace(
                "\"numberOfFailedThings\": 0",
                "\"numberOfFailedThings\": 1.5",
            ),
            "numberOfFailedThings",
        ),
        (
            RejectKind::EventTypeMismatch,
            COMPLETED_TOPIC.into(),
            good.replace("\"eventType\": \"JOB\"", "\"eventType\": \"JOB_EXECUTION\""),
            "JOB_EXECUTION",
        ),
        (
            RejectKind::JobIdMismatch,
            "$aws/events/job/another-job/completed".into(),
            good.clone(),
            "another-job",
        ),
        (
            RejectKind::OperationMismatch,
            COMPLETED_TOPIC.replace("completed", "canceled"),
            good.replace("27450507-bf6f-4012-92af-bb8a1c8c4484/canceled", "x"),
            "completed",
        ),
        (
            RejectKind::MistypedField,
            COMPLETED_TOPIC.into(),
            good.replace("\"status\": \"COMPLETED\"", "\"status\": 3"),
            "status",
        ),
        (
            RejectKind::MistypedField,
            COMPLETED_TOPIC.into(),
            good.replace("\"targets\": [", "\"targets\": \"thing\", \"x\": ["),
            "targets",
        ),
        (
            RejectKind::MistypedField,
            exec_topic.into(),
            exec(r#"["reason","disk"]"#),
            "statusDetails",
        ),
    ];
    for (kind, topic, payload, needle) in &cases {
        let reject = reject_of(&mut parser, topic, payload);
        assert_eq!(reject.kind, *kind, "{topic} {payload:.80}: {reject}");
        assert!(
            reject.message.contains(needle),
            "message {:?} should mention {needle:?}",
            reject.message
        );
    }
    let covered: std::collections::BTreeSet<_> = cases.iter().map(|c| c.0).collect();
    // kafka_refused is the bridge's, for a valid event Kafka would not take.
    let parser_kinds = RejectKind::ALL
        .iter()
        .filter(|k| **k != RejectKind::KafkaRefused)
        .count();
    assert_eq!(covered.len(), parser_kinds, "a kind has no test input");
}

#[test]
fn caller_payload_is_left_byte_for_byte_unchanged() {
    let mut parser = Parser::default();
    let payload = completed_payload().replace("My Job Description", "escaped \\\" \\u00e9 \\n");
    let before = payload.clone().into_bytes();
    let bytes = payload.into_bytes();
    parser.parse(COMPLETED_TOPIC, &bytes, |outcome| {
        let Ok(Event::Job(job)) = outcome else {
            panic!()
        };
        assert_eq!(
            job.description.and_then(|t| t.as_str()),
            Some("escaped \" é \n")
        );
    });
    assert_eq!(bytes, before);
}
