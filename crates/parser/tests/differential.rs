//! The fast path and the general simd-json path must give identical outcomes: the same typed
//! values (and Arrow rows) for accepted events, the same reject kind and message otherwise.
//! `parse_str`, which trusts that its payload is text, must agree with both.
//!
//! Inputs: generated fleets (with and without unknown fields), the spec's examples,
//! hand-written edge cases around everything the fast path reads in place or gives up on, and
//! many thousands of mutated and random inputs from a fixed seed. Each input goes through a
//! fresh-state-independent pair of parsers, one per path, so scratch reuse is exercised too.

use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_mutate::mutate;
use jobstream_parser::model::thing_name;
use jobstream_parser::{Event, Parser, ParserConfig, Provenance, TableBuilders};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Everything an outcome says, owned, so the two paths can be compared.
fn describe(outcome: Result<Event<'_, '_>, jobstream_parser::Reject>) -> String {
    let event = match outcome {
        Ok(event) => event,
        Err(reject) => return format!("reject {:?}: {}", reject.kind, reject.message),
    };
    let c = event.common();
    let mut extra = Vec::new();
    let has_extra = c.extra.write_json(event.family(), &mut extra);
    let anomalies: Vec<_> = c.anomalies.iter().collect();
    let text = |t: Option<jobstream_parser::Text<'_, '_>>| t.map(|t| t.to_text().into_owned());
    let mut out = format!(
        "{:?} id={:?} time={} job={:?} op={} status={} anomalies={anomalies:?} extra={}:{:?}",
        event.family(),
        c.event_id,
        c.event_time_ms,
        c.job_id,
        event.operation_str(),
        event.status_str(),
        has_extra,
        String::from_utf8_lossy(&extra),
    );
    match event {
        Event::Job(j) => {
            let targets = j.targets.map(|t| {
                let texts: Vec<_> = t.iter().map(|x| x.to_text().into_owned()).collect();
                (t.len(), texts)
            });
            out += &format!(
                " sel={:?} targets={targets:?} desc={:?} comment={:?} created={:?} updated={:?} completed={:?} details={:?}",
                text(j.target_selection),
                text(j.description),
                text(j.comment),
                j.created_at_ms,
                j.last_updated_at_ms,
                j.completed_at_ms,
                j.process_details
            );
        }
        Event::Execution(e) => {
            let details = e.status_details.map(|d| {
                let entries: Vec<_> = d
                    .iter()
                    .map(|(k, v)| (k, v.to_text().into_owned()))
                    .collect();
                (d.len(), d.is_empty(), entries)
            });
            out += &format!(
                " arn={:?} name={:?}/{:?} details={details:?}",
                e.thing_arn,
                e.thing_name(),
                thing_name(e.thing_arn)
            );
        }
    }
    out
}

struct Pair {
    fast: Parser,
    general: Parser,
    /// Given payloads as text (`parse_str`, as a replay does), which it then does not check.
    text: Parser,
    fast_tables: TableBuilders,
    general_tables: TableBuilders,
    inputs: u64,
    accepted: u64,
    fast_taken: u64,
}

impl Pair {
    fn new() -> Self {
        let config = ParserConfig {
            max_payload_bytes: 1 << 20,
            ..ParserConfig::default()
        };
        Pair {
            fast: Parser::new(config.clone()),
            general: Parser::new(config.clone()),
            text: Parser::new(config),
            fast_tables: TableBuilders::with_capacity(256),
            general_tables: TableBuilders::with_capacity(256),
            inputs: 0,
            accepted: 0,
            fast_taken: 0,
        }
    }

    fn check(&mut self, topic: &str, payload: &[u8]) {
        let provenance = Provenance {
            mqtt_topic: Some(topic),
            received_at_ms: Some(1),
        };
        let original = payload.to_vec();
        let tables = &mut self.fast_tables;
        let fast = self.fast.parse(topic, payload, |o| {
            if let Ok(event) = &o {
                tables.append(event, &provenance);
            }
            describe(o)
        });
        let tables = &mut self.general_tables;
        let general = self.general.parse_general(topic, payload, |o| {
            if let Ok(event) = &o {
                tables.append(event, &provenance);
            }
            describe(o)
        });
        assert_eq!(
            fast,
            general,
            "paths disagree on topic {topic:?} payload {:?}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(payload, original.as_slice(), "payload must stay unchanged");
        if let Ok(text) = std::str::from_utf8(payload) {
            let from_text = self.text.parse_str(topic, text, describe);
            assert_eq!(
                from_text, fast,
                "parse_str disagrees on topic {topic:?} payload {text:?}"
            );
        }
        self.inputs += 1;
        if !fast.starts_with("reject") {
            self.accepted += 1;
        }
        if self.fast.fast_path_takes(topic, payload) {
            self.fast_taken += 1;
            assert!(!fast.starts_with("reject"), "fast path accepted a reject");
        }
        if self.fast_tables.len() >= 200 {
            self.compare_batches();
        }
    }

    fn compare_batches(&mut self) {
        assert_eq!(
            self.fast_tables.jobs.finish().expect("jobs"),
            self.general_tables.jobs.finish().expect("jobs")
        );
        assert_eq!(
            self.fast_tables.executions.finish().expect("executions"),
            self.general_tables.executions.finish().expect("executions")
        );
    }
}

fn spec_examples() -> Vec<(String, Vec<u8>)> {
    include_str!("../../../tests/fixtures/spec-examples.tsv")
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(t, p)| (t.to_owned(), p.as_bytes().to_vec()))
        .collect()
}

fn fleet(seed: u64, unknown_fields: bool) -> Vec<(String, Vec<u8>)> {
    Fleet::generate(FleetConfig {
        seed,
        jobs: 6,
        things_per_job: 60,
        unknown_fields,
        ..FleetConfig::default()
    })
    .into_iter()
    .map(|m| (m.topic, m.payload))
    .collect()
}

#[test]
fn generated_and_spec_events_agree_and_mostly_take_the_fast_path() {
    let mut pair = Pair::new();
    for (topic, payload) in spec_examples() {
        pair.check(&topic, &payload);
    }
    for seed in 1..=4 {
        for (topic, payload) in fleet(seed, false) {
            pair.check(&topic, &payload);
        }
    }
    pair.compare_batches();
    assert_eq!(pair.accepted, pair.inputs, "every generated event is valid");
    assert_eq!(
        pair.fast_taken, pair.inputs,
        "events of the known schema all take the fast path"
    );

    let mut pair = Pair::new();
    for (topic, payload) in fleet(9, true) {
        pair.check(&topic, &payload);
    }
    pair.compare_batches();
    assert_eq!(pair.accepted, pair.inputs);
    assert!(
        pair.fast_taken < pair.inputs,
        "unknown fields take the general path"
    );
}

const EXEC: &str = "$aws/events/jobExecution/j1/succeeded";
const EXEC_DELETED: &str = "$aws/events/jobExecution/j1/deleted";
const JOB: &str = "$aws/events/job/j1/completed";
const JOB_CANCELED: &str = "$aws/events/job/j1/canceled";

fn exec_with(rest: &str) -> String {
    format!(
        r#"{{"eventType":"JOB_EXECUTION","eventId":"e1","timestamp":1700000000,"operation":"succeeded","jobId":"j1","thingArn":"arn:aws:iot:us-east-1:1:thing/t1","status":"SUCCEEDED"{rest}}}"#
    )
}

fn job_with(rest: &str) -> String {
    format!(
        r#"{{"eventType":"JOB","eventId":"e1","timestamp":1700000000,"operation":"completed","jobId":"j1","status":"COMPLETED"{rest}}}"#
    )
}

#[test]
fn edge_cases_agree() {
    let mut cases: Vec<(&str, String)> = Vec::new();
    let exec_values = [
        r#","statusDetails":{}"#,
        r#","statusDetails":{"a":"b","a":"c"}"#,
        r#","statusDetails":{"k\"q":"v\\w\/x\b\f\n\r\t"}"#,
        r#","statusDetails":{"u":"\u00e9\u0041\u20ac"}"#,
        r#","statusDetails":{"u":"\u0000"}"#,
        r#","statusDetails":{"u":"\ud83d\ude00"}"#,
        r#","statusDetails":{"u":"\ud800"}"#,
        r#","statusDetails":{"u":"\udc00x"}"#,
        r#","statusDetails":{"u":"\ud800\u0041"}"#,
        r#","statusDetails":{"u":"\uZZZZ"}"#,
        r#","statusDetails":{"u":"\x"}"#,
        r#","statusDetails":{"u":"a	tab"}"#,
        "\n,\"statusDetails\":{\"u\":\"raw\u{1}control\"}",
        "\n,\"statusDetails\":{\"u\":\"raw\u{7f}del\"}",
        r#","statusDetails":{"u":"é✎😀"}"#,
        r#","statusDetails":{"u":1}"#,
        r#","statusDetails":{"downloadTime":120,"retryCount":4,"ok":true,"x":{"a":[1,"\u00e9"]}}"#,
        r#","statusDetails":{"u":null}"#,
        r#","statusDetails":null"#,
        r#","statusDetails":[]"#,
        r#","statusDetails":{"a":"b",}"#,
        r#","statusDetails":{"a" : "b" , "c" : "d" }"#,
        r#","statusDetails":{}, "statusDetails":{"a":"b"}"#,
        r#","eventId":null"#,
        r#","eventId":"e2""#,
        r#","eventType":null"#,
        r#","status":null"#,
        r#","thingArn":null"#,
        r#","thingArn":"a\/b\/c""#,
        r#","thingArn":"noslash""#,
        r#","thingArn":"""#,
        r#","x":null"#,
        r#","x":1"#,
        r#","x":{"y":[1,2.5,-0,1e3,"z",true,false,null]}"#,
        r#","targets":["a"]"#,
        r#","comment":"c""#,
        r#","timestamp":1700000001"#,
        r#","even\u0074Type":"JOB_EXECUTION""#,
        r#","jobId":"j\u0031""#,
        r#","jobId":"j2""#,
        r#","operation":"failed""#,
        r#","operation":"flew""#,
        r#","status":"FAILED""#,
        r#","status":"SUCCEEDED ""#,
        r#","status":"SUCC\u0045EDED""#,
        r#","eventType":"JOB""#,
        r#","eventType":"JOB_EXECUTIONX""#,
        "",
        " ",
        "}",
        ",",
        ",}",
    ];
    for rest in exec_values {
        cases.push((EXEC, exec_with(rest)));
    }
    for ts in [
        "0",
        "00",
        "01",
        "-0",
        "-1",
        "1.0",
        "1e3",
        "1E3",
        "99999999999",
        "100000000000",
        "253402300799",
        "253402300800",
        "253402300799999",
        "253402300800000",
        "999999999999999999",
        "1000000000000000000",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "1700000000x",
        "1700000000 ",
        "\"1700000000\"",
        "true",
        "[]",
        "nul",
        "nullx",
    ] {
        cases.push((
            EXEC,
            exec_with("").replace("1700000000", ts).replace("}", " }"),
        ));
        cases.push((JOB, job_with(&format!(r#","createdAt":{ts}"#))));
        cases.push((
            JOB,
            job_with(&format!(
                r#","jobProcessDetails":{{"numberOfFailedThings":{ts}}}"#
            )),
        ));
    }
    for status in [
        "QUEUED",
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "REJECTED",
        "CANCELED",
        "REMOVED",
        "TIMED_OUT",
        "DELETED",
        "DELETE",
        "",
    ] {
        let payload = exec_with("")
            .replace("\"succeeded\"", "\"deleted\"")
            .replace("SUCCEEDED", status);
        cases.push((EXEC_DELETED, payload.clone()));
        cases.push((EXEC, payload));
    }
    let job_values = [
        r#","targets":[]"#,
        r#","targets":[ "a" , "b\"c" ]"#,
        r#","targets":["a",1]"#,
        r#","targets":["a",1.50,true,null,{"b":["c"]}]"#,
        r#","description":120,"comment":true,"targetSelection":{"s":[1]}"#,
        r#","description":"d","comment":"c","status":"SUCCEEDED""#,
        r#","status":"PAUSED""#,
        r#","targets":["a",]"#,
        r#","targets":"a""#,
        r#","targets":null"#,
        r#","targetSelection":"SNAPSHOT","description":"d\u00e9","comment":"Stopped: \"x\" — ✎""#,
        r#","jobProcessDetails":{}"#,
        r#","jobProcessDetails":{"numberOfFailedThings":1,"numberOfFailedThings":2}"#,
        r#","jobProcessDetails":{"numberOfFailedThings":1,"numberOfFailedThings":null}"#,
        r#","jobProcessDetails":{"numberOfFailedThings":null,"numberOfFailedThings":3}"#,
        r#","jobProcessDetails":{"numberOfFailedThings":1,"numberOfOddThings":2}"#,
        r#","jobProcessDetails":{"numberOfOddThings":null}"#,
        r#","jobProcessDetails":{"numberOf\u0046ailedThings":1}"#,
        r#","jobProcessDetails":null"#,
        r#","jobProcessDetails":[]"#,
        r#","jobProcessDetails":{"numberOfCanceledThings":0,"numberOfRejectedThings":1,"numberOfFailedThings":2,"numberOfRemovedThings":3,"numberOfSucceededThings":4,"numberOfTimedOutThings":5,"numberOfQueuedThings":6,"numberOfInProgressThings":7}"#,
        r#","thingArn":"a""#,
        r#","statusDetails":{}"#,
        r#","createdAt":1,"createdAt":2"#,
        r#","completedAt":null,"completedAt":5"#,
    ];
    for rest in job_values {
        cases.push((JOB, job_with(rest)));
        cases.push((
            JOB_CANCELED,
            job_with(rest)
                .replace("\"completed\"", "\"canceled\"")
                .replace("COMPLETED", "CANCELED"),
        ));
    }
    let raw = [
        "",
        " ",
        "{}",
        "[]",
        "null",
        "\"s\"",
        "1",
        "{",
        "}",
        "\u{feff}{}",
        "{\"eventType\"}",
    ];
    for payload in raw {
        cases.push((EXEC, payload.to_owned()));
        cases.push((JOB, payload.to_owned()));
    }
    let pretty = exec_with(r#","statusDetails":{"a":"b"}"#)
        .replace(',', " ,\n\t")
        .replace(':', "\r: ")
        .replace('{', "{ ");
    cases.push((EXEC, format!("  \n{pretty}\n\t ")));
    cases.push((EXEC, format!("{pretty}x")));
    cases.push((EXEC, format!("{pretty}{{}}")));
    cases.push((
        "$aws/events/jobExecution/j\"1/succeeded",
        exec_with("").replace("\"j1\"", "\"j\\\"1\""),
    ));
    cases.push((
        "$aws/events/jobExecution/j\"1/succeeded",
        exec_with("").replace("\"j1\"", "\"j\"1\""),
    ));
    cases.push(("$aws/events/jobExecution/j1/flew", exec_with("")));
    cases.push(("$aws/events/job/j1", job_with("")));

    let mut pair = Pair::new();
    for (topic, payload) in &cases {
        pair.check(topic, payload.as_bytes());
        // Invalid UTF-8 around and inside the payload.
        let mut bytes = payload.clone().into_bytes();
        bytes.insert(bytes.len() / 2, 0xff);
        pair.check(topic, &bytes);
    }
    pair.compare_batches();
    assert!(pair.fast_taken > 20, "{} fast", pair.fast_taken);
    assert!(
        pair.accepted > pair.fast_taken,
        "some take the general path"
    );
}

#[test]
fn mutated_and_random_inputs_agree() {
    let mut seeds = spec_examples();
    seeds.extend(fleet(3, true).into_iter().step_by(7));
    let mut rng = SmallRng::seed_from_u64(0xd1ff);
    let mut pair = Pair::new();
    let mut input = Vec::new();
    for _ in 0..150_000 {
        let (topic, payload) = &seeds[rng.random_range(0..seeds.len())];
        input.clear();
        input.extend_from_slice(payload);
        mutate(&mut rng, &seeds, &mut input);
        pair.check(topic, &input);
    }
    for _ in 0..5_000 {
        let len = rng.random_range(0..64);
        input.clear();
        input.extend((0..len).map(|_| {
            let pick: u8 = rng.random();
            // Mostly JSON-ish bytes, so some inputs get past the first character.
            *b"{}[]\":,\\ 0123456789-.eEnulltrufasJOB\xff\x01"
                .get(usize::from(pick) % 44)
                .unwrap_or(&pick)
        }));
        pair.check(EXEC, &input);
    }
    pair.compare_batches();
    eprintln!(
        "differential: {} inputs, {} accepted, {} on the fast path",
        pair.inputs, pair.accepted, pair.fast_taken
    );
    assert!(
        pair.fast_taken > 1000,
        "mutations keep many events on the fast path"
    );
    assert!(pair.accepted > pair.fast_taken);
}

/// Strings are scanned a word at a time, and the last bytes of a payload by re-reading its
/// final word: put an escape, a quote or a control byte at every offset of strings of every
/// length up to the payload's end (and away from it).
#[test]
fn special_bytes_at_every_offset_agree() {
    let mut pair = Pair::new();
    let specials: [&[u8]; 6] = [b"", b"\\n", b"\\\"", b"\x01", b"\"", b"\\u00e9"];
    for len in 0..40 {
        for at in 0..=len {
            for special in specials {
                let mut value = vec![b'a'; len];
                value.splice(at..at, special.iter().copied());
                let value = String::from_utf8_lossy(&value).into_owned();
                for trailer in ["}", "}  ", ",\"z\":\"y\"}"] {
                    let payload =
                        exec_with(&format!(r#","statusDetails":{{"k":"{value}"{trailer}"#));
                    pair.check(EXEC, payload.as_bytes());
                }
                let payload = exec_with("").replace("\"e1\"", &format!("\"{value}\""));
                pair.check(EXEC, payload.as_bytes());
            }
        }
    }
    pair.compare_batches();
    assert!(pair.fast_taken > 1000, "{}", pair.fast_taken);
}
