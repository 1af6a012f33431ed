//! A loop over generated events for profilers (callgrind, perf):
//! `cargo build --release -p jobstream-benches --example profile_parser`
//! `valgrind --tool=callgrind target/release/examples/profile_parser 20000 arrow` (modes below;
//! instructions per event = (count at N events - count at M events) / (N - M))

use std::hint::black_box;

use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_parser::{Parser, Provenance, TableBuilders};

fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let mode = args.next().unwrap_or_else(|| "arrow".to_owned());
    let messages = Fleet::generate(FleetConfig::with_events(events));
    let mut parser = Parser::default();
    let mut tables = TableBuilders::with_capacity(8192);
    let mut serde_path = jobstream_benches::SerdePath::default();
    let started = std::time::Instant::now();
    for (i, m) in messages.iter().enumerate() {
        let provenance = Provenance {
            mqtt_topic: Some(&m.topic),
            received_at_ms: None,
        };
        let append = |outcome: Result<jobstream_parser::Event<'_, '_>, _>| {
            if let (Ok(event), true) = (outcome, mode.ends_with("arrow")) {
                tables.append(&event, &provenance);
            }
        };
        // Modes: arrow, parse (fast path with fallback), general-arrow, general-parse
        // (simd-json only), serde (the benchmark's baseline, with Arrow), none (input only,
        // to subtract).
        match mode.as_str() {
            "none" => {}
            "serde" => {
                black_box(serde_path.push(&m.topic, &m.payload));
                if i % 8192 == 8191 {
                    black_box(serde_path.finish());
                }
            }
            m2 if m2.starts_with("general") => parser.parse_general(&m.topic, &m.payload, append),
            _ => parser.parse(&m.topic, &m.payload, append),
        }
        if tables.executions.len() >= 8192 {
            black_box(tables.executions.finish().ok());
        }
    }
    black_box(serde_path.finish());
    black_box(tables.jobs.finish().ok());
    black_box(tables.executions.finish().ok());
    eprintln!("{} events in {:?}", messages.len(), started.elapsed());
}
