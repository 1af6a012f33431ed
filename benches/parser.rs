//! Parser throughput, side by side on the same generated input in one run:
//! jobstream's parser (its fast path for well-formed events, simd-json for the rest; the
//! benchmark ids keep their old `jobstream_simd` name so runs stay comparable) into Arrow
//! batches versus serde_json into structs feeding the same Arrow columns (see `lib.rs`). Throughput is reported per event and per byte; the
//! benchmark is single-threaded, so the figures are per core.
//!
//! `cargo bench -p jobstream-benches --bench parser`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use jobstream_benches::SerdePath;
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_parser::{Parser, Provenance, TableBuilders};

const EVENTS: usize = 100_000;
const BATCH_ROWS: usize = 8192;

fn parse_to_arrow(c: &mut Criterion) {
    let messages = Fleet::generate(FleetConfig::with_events(EVENTS));
    let bytes: usize = messages
        .iter()
        .map(|m| m.payload.len() + m.topic.len())
        .sum();
    eprintln!(
        "input: {} events, {} payload+topic bytes, {:.0} B/event",
        messages.len(),
        bytes,
        bytes as f64 / messages.len() as f64
    );
    for (label, throughput) in [
        ("events", Throughput::Elements(messages.len() as u64)),
        ("bytes", Throughput::Bytes(bytes as u64)),
    ] {
        let mut group = c.benchmark_group(format!("parse_to_arrow/{label}"));
        group.throughput(throughput);
        group.sample_size(20);
        group.bench_function("jobstream_simd", |b| {
            let mut parser = Parser::default();
            b.iter_batched_ref(
                || TableBuilders::with_capacity(BATCH_ROWS),
                |tables| {
                    for m in &messages {
                        let provenance = Provenance {
                            mqtt_topic: Some(&m.topic),
                            received_at_ms: None,
                        };
                        parser.parse(&m.topic, &m.payload, |outcome| {
                            if let Ok(event) = outcome {
                                tables.append(&event, &provenance);
                            }
                        });
                        if tables.executions.len() >= BATCH_ROWS {
                            black_box(tables.executions.finish().ok());
                        }
                        if tables.jobs.len() >= BATCH_ROWS {
                            black_box(tables.jobs.finish().ok());
                        }
                    }
                    black_box(tables.jobs.finish().ok());
                    black_box(tables.executions.finish().ok());
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function("serde_json_baseline", |b| {
            b.iter_batched_ref(
                || SerdePath::with_capacity(BATCH_ROWS),
                |path| {
                    for (i, m) in messages.iter().enumerate() {
                        black_box(path.push(&m.topic, &m.payload));
                        if i % BATCH_ROWS == BATCH_ROWS - 1 {
                            black_box(path.finish());
                        }
                    }
                    black_box(path.finish());
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

/// Parsing and validation alone (no Arrow), to show where the time of the full path goes.
fn parse_only(c: &mut Criterion) {
    let messages = Fleet::generate(FleetConfig::with_events(EVENTS));
    let mut group = c.benchmark_group("parse_only/events");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.sample_size(20);
    group.bench_function("jobstream_simd", |b| {
        let mut parser = Parser::default();
        b.iter(|| {
            for m in &messages {
                black_box(parser.parse(&m.topic, &m.payload, |o| o.map(|e| e.family()).ok()));
            }
        })
    });
    group.bench_function("serde_json_baseline", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(
                    serde_json::from_slice::<jobstream_benches::SerdeEvent<'_>>(&m.payload).ok(),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, parse_to_arrow, parse_only);
criterion_main!(benches);
