//! A mutation fuzzer for the parser and the column builders: no input may panic them.
//!
//! Seeds are the spec's examples and generated events; mutations flip, insert, delete and
//! duplicate bytes, splice seeds together, and substitute JSON fragments at random offsets
//! (deep nesting, huge numbers, wrong types, invalid UTF-8, lone surrogates). Accepted events
//! are appended to Arrow builders, and their `extra` JSON must parse, as must the JSON text kept
//! for a non-string `statusDetails` value or `targets` element (an anomaly, not a reject).
//!
//! By default it runs a fixed number of iterations (deterministic seed); set
//! `JOBSTREAM_FUZZ_SECS` to run for that long instead (the 10-minute runs recorded in the issue
//! notes use `JOBSTREAM_FUZZ_SECS=600 cargo test --release --test it fuzz`).

use std::time::{Duration, Instant};

use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_mutate::mutate;
use jobstream_parser::{Parser, ParserConfig, Provenance, TableBuilders};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::support::spec_examples;

#[test]
fn parser_survives_mutated_inputs_without_panicking() {
    let budget = std::env::var("JOBSTREAM_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let seed: u64 = std::env::var("JOBSTREAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut seeds: Vec<(String, Vec<u8>)> = spec_examples()
        .into_iter()
        .map(|(t, p)| (t, p.into_bytes()))
        .collect();
    seeds.extend(
        Fleet::generate(FleetConfig {
            jobs: 3,
            things_per_job: 20,
            unknown_fields: true,
            ..FleetConfig::default()
        })
        .into_iter()
        .map(|m| (m.topic, m.payload)),
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut parser = Parser::new(ParserConfig {
        max_payload_bytes: 1 << 20,
        ..ParserConfig::default()
    });
    let mut tables = TableBuilders::with_capacity(1024);
    let started = Instant::now();
    let (mut runs, mut accepted, mut anomalous) = (0u64, 0u64, 0u64);
    let mut input = Vec::new();
    let mut extra = Vec::new();
    loop {
        match budget {
            Some(budget) if started.elapsed() >= budget => break,
            None if runs >= 30_000 => break,
            _ => {}
        }
        let (topic, payload) = &seeds[rng.random_range(0..seeds.len())];
        input.clear();
        input.extend_from_slice(payload);
        mutate(&mut rng, &seeds, &mut input);
        let mut topic = topic.clone();
        if rng.random_ratio(1, 20) {
            topic.push_str(["/x", "", "é"][rng.random_range(0..3)]);
        }
        parser.parse(&topic, &input, |outcome| {
            if let Ok(event) = outcome {
                accepted += 1;
                if !event.common().anomalies.is_empty() {
                    anomalous += 1;
                }
                check_kept_json(&event);
                extra.clear();
                if event.common().extra.write_json(event.family(), &mut extra) {
                    // serde_json stops at 128 levels of nesting; deeper `extra` is still JSON.
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&extra) {
                        assert!(
                            e.to_string().contains("recursion limit"),
                            "extra is not JSON ({e}): {}",
                            String::from_utf8_lossy(&extra)
                        );
                    }
                }
                tables.append(
                    &event,
                    &Provenance {
                        mqtt_topic: Some(&topic),
                        received_at_ms: None,
                    },
                );
            } else if let Err(reject) = outcome {
                assert!(!reject.message.is_empty());
            }
        });
        if tables.len() >= 1024 {
            tables.jobs.finish().expect("job batch");
            tables.executions.finish().expect("execution batch");
        }
        runs += 1;
    }
    eprintln!(
        "fuzz: {runs} inputs ({accepted} accepted, {anomalous} with anomalies) in {:.1} s, seed {seed}",
        started.elapsed().as_secs_f64()
    );
    assert!(anomalous > 0, "mutations should reach the anomaly paths");
    assert!(
        accepted > 0 && accepted < runs,
        "mutations should both keep and break events"
    );
}

/// Every value kept as JSON text (not a string in the payload) is JSON.
fn check_kept_json(event: &jobstream_parser::Event<'_, '_>) {
    let texts: Vec<jobstream_parser::Text<'_, '_>> = match event {
        jobstream_parser::Event::Job(j) => j
            .targets
            .iter()
            .flat_map(|t| t.iter())
            .chain(
                [j.description, j.comment, j.target_selection]
                    .into_iter()
                    .flatten(),
            )
            .collect(),
        jobstream_parser::Event::Execution(e) => e
            .status_details
            .iter()
            .flat_map(|d| d.iter().map(|(_, v)| v))
            .collect(),
    };
    for text in texts.into_iter().filter(|t| t.as_str().is_none()) {
        let json = text.to_text();
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&json) {
            assert!(
                e.to_string().contains("recursion limit"),
                "kept text is not JSON ({e}): {json}"
            );
        }
    }
}
