//! What Parquet writer settings cost, side by side on the same batches:
//! `cargo run --release -p jobstream-benches --example encode_settings -- [EVENTS] [ROUNDS]`
//!
//! Generates fleet events, parses them into `job_execution_events` batches once, then encodes
//! those batches with each variant of the writer properties, interleaved for ROUNDS rounds, and
//! prints the median time of the encoding (one thread) and the file size per variant. It exists
//! to decide the sink's defaults (`writer_properties` in crates/sink/src/parquet.rs) by
//! measurement; the `current` variant is those defaults, taken from the sink. A third argument names one
//! variant to run alone, for instruction counts under callgrind.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_parser::{Parser, Provenance, TableBuilders};
use jobstream_sink::parquet::{writer_properties, Encodings, ParquetConfig};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

/// The sink's own settings, as every file gets them.
fn current() -> WriterPropertiesBuilder {
    let defaults = ParquetConfig::new(std::env::temp_dir());
    writer_properties(&defaults)
        .expect("the default settings are valid")
        .into_builder()
}

/// The sink's settings with `Encodings::Plain`: every column without a dictionary PLAIN.
fn plain() -> WriterPropertiesBuilder {
    let config = ParquetConfig {
        encodings: Encodings::Plain,
        ..ParquetConfig::new(std::env::temp_dir())
    };
    writer_properties(&config)
        .expect("the plain settings are valid")
        .into_builder()
}

fn with_dictionary(mut b: WriterPropertiesBuilder, columns: &[&str]) -> WriterPropertiesBuilder {
    for c in columns {
        let path = ColumnPath::new(c.split('.').map(str::to_owned).collect());
        b = b.set_column_dictionary_enabled(path, true);
    }
    b
}

fn variants() -> Vec<(&'static str, WriterProperties)> {
    let status_details = [
        "status_details.key_value.key",
        "status_details.key_value.value",
    ];
    let zstd = |level| Compression::ZSTD(ZstdLevel::try_new(level).expect("a zstd level"));
    vec![
        ("current", current().build()),
        ("plain encodings (--encodings plain)", plain().build()),
        (
            "plain, event_id uncompressed",
            plain()
                .set_column_compression(ColumnPath::from("event_id"), Compression::UNCOMPRESSED)
                .build(),
        ),
        (
            "delta event_time",
            current()
                .set_column_encoding(
                    ColumnPath::from("event_time"),
                    Encoding::DELTA_BINARY_PACKED,
                )
                .build(),
        ),
        (
            "write batch 1024 (parquet's default)",
            current().set_write_batch_size(1024).build(),
        ),
        (
            "+dict status_details",
            with_dictionary(current(), &status_details).build(),
        ),
        (
            "+dict status_details, things",
            with_dictionary(
                with_dictionary(current(), &status_details),
                &["thing_arn", "thing_name"],
            )
            .build(),
        ),
        (
            "1 MiB pages (parquet's default)",
            current().set_data_page_size_limit(1 << 20).build(),
        ),
        (
            "64 KiB pages",
            current().set_data_page_size_limit(64 << 10).build(),
        ),
        (
            "4 MiB pages",
            current().set_data_page_size_limit(4 << 20).build(),
        ),
        (
            "no dict job_id, mqtt_topic",
            current()
                .set_column_dictionary_enabled(ColumnPath::from("job_id"), false)
                .set_column_dictionary_enabled(ColumnPath::from("mqtt_topic"), false)
                .build(),
        ),
        (
            "event_id zstd -1",
            current()
                .set_column_compression(ColumnPath::from("event_id"), zstd(-1))
                .build(),
        ),
        (
            "no statistics (reference)",
            current()
                .set_statistics_enabled(EnabledStatistics::None)
                .build(),
        ),
        (
            "lz4 (reference)",
            current().set_compression(Compression::LZ4_RAW).build(),
        ),
    ]
}

#[inline(never)]
fn encode(batches: &[RecordBatch], properties: &WriterProperties) -> (Duration, usize) {
    // Wall time of one thread: on this VM /proc's per-thread CPU time ticks in 4 ms steps,
    // too coarse for one encoding; run it on a quiet machine and compare within one run.
    let start = Instant::now();
    let mut out = Vec::with_capacity(64 << 20);
    let mut writer = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(properties.clone()))
        .expect("writer");
    for batch in batches {
        writer.write(batch).expect("write");
        if writer.in_progress_size() >= 128 << 20 {
            writer.flush().expect("flush");
        }
    }
    writer.close().expect("close");
    (start.elapsed(), out.len())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    // A variant's name: encode with that one only, once (for callgrind, whose counts do not
    // need repeating: `valgrind --tool=callgrind --toggle-collect='*encode_settings::encode*'`).
    let only = args.next();
    let messages = Fleet::generate(FleetConfig::with_events(events));
    let mut parser = Parser::default();
    let mut tables = TableBuilders::with_capacity(8192);
    let mut batches = Vec::new();
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
        if tables.executions.len() >= 8192 {
            batches.push(tables.executions.finish().expect("batch"));
        }
    }
    batches.push(tables.executions.finish().expect("batch"));
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut variants = variants();
    if let Some(only) = &only {
        variants.retain(|(name, _)| name == only);
    }
    let mut cpu = vec![Vec::new(); variants.len()];
    let mut size = vec![0; variants.len()];
    for _ in 0..rounds {
        for (i, (_, properties)) in variants.iter().enumerate() {
            let (took, bytes) = encode(&batches, properties);
            cpu[i].push(took);
            size[i] = bytes;
        }
    }
    println!("{rows} job_execution_events rows, {rounds} rounds, median time of encoding");
    let base = {
        let mut c = cpu[0].clone();
        c.sort();
        c[c.len() / 2]
    };
    for (i, (name, _)) in variants.iter().enumerate() {
        let mut c = cpu[i].clone();
        c.sort();
        let median = c[c.len() / 2];
        println!(
            "{name:38} {:7.1} ms  (min {:7.1}, max {:7.1})  {:5.2}x current  {:6.2} MiB",
            median.as_secs_f64() * 1e3,
            c[0].as_secs_f64() * 1e3,
            c[c.len() - 1].as_secs_f64() * 1e3,
            median.as_secs_f64() / base.as_secs_f64(),
            size[i] as f64 / (1 << 20) as f64
        );
    }
}
