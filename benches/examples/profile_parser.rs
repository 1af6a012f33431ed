//! A loop over generated events for profilers (callgrind, perf):
//! `cargo build --release -p jobstream-benches --example profile_parser`
//! `valgrind --tool=callgrind target/release/examples/profile_parser 20000 arrow`

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
    let started = std::time::Instant::now();
    for m in &messages {
        let provenance = Provenance {
            mqtt_topic: Some(&m.topic),
            received_at_ms: None,
        };
        parser.parse(&m.topic, &m.payload, |outcome| {
            if let (Ok(event), true) = (outcome, mode == "arrow") {
                tables.append(&event, &provenance);
            }
        });
        if tables.executions.len() >= 8192 {
            black_box(tables.executions.finish().ok());
        }
    }
    black_box(tables.jobs.finish().ok());
    black_box(tables.executions.finish().ok());
    eprintln!("{} events in {:?}", messages.len(), started.elapsed());
}
