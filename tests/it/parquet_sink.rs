//! The Parquet sink: layout, atomic publication, deterministic names, resume without
//! duplicates, rolling, and a write → read round trip with the parquet crate's own reader.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::Array;
use jobstream_fleet::{Fleet, FleetConfig, Message};
use jobstream_parser::{Parser, Provenance};
use jobstream_sink::parquet::{Appended, ParquetConfig, ParquetSink};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;

use crate::support::{event_ids, parquet_files};

fn messages(jobs: usize) -> Vec<Message> {
    Fleet::generate(FleetConfig {
        jobs,
        things_per_job: 50,
        ..FleetConfig::default()
    })
}

fn write_all(sink: &mut ParquetSink, messages: &[Message], from: usize) -> (u64, u64) {
    let mut parser = Parser::default();
    let (mut written, mut skipped) = (0, 0);
    for (i, m) in messages.iter().enumerate().skip(from) {
        let provenance = Provenance {
            mqtt_topic: Some(&m.topic),
            received_at_ms: None,
        };
        let appended = parser.parse(&m.topic, &m.payload, |outcome| {
            sink.append(&outcome.expect("valid"), &provenance, i as u64 + 1)
                .expect("append")
        });
        match appended {
            Appended::Written => written += 1,
            Appended::AlreadyPublished => skipped += 1,
        }
    }
    (written, skipped)
}

fn small_files(root: &Path) -> ParquetConfig {
    ParquetConfig {
        max_file_rows: 700,
        batch_rows: 256,
        max_file_age: None,
        idle_timeout: None,
        ..ParquetConfig::new(root)
    }
}

#[test]
fn files_land_in_hive_partitions_with_deterministic_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = messages(20);
    let mut sink = ParquetSink::new(small_files(dir.path()), "capture.tsv").expect("sink");
    write_all(&mut sink, &input, 0);
    let published = sink.finish().expect("finish");
    assert!(
        published.len() > 2,
        "700-row files should roll: {}",
        published.len()
    );
    for file in &published {
        let relative = file.path.strip_prefix(dir.path()).expect("under root");
        let parts: Vec<_> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts.len(), 3, "{relative:?}");
        assert_eq!(parts[0], file.family.table());
        assert!(parts[1].starts_with("date=2026-11-"), "{}", parts[1]);
        assert_eq!(
            parts[2],
            format!("capture.tsv+{:012}+{:012}.parquet", file.first, file.last)
        );
        assert!(file.rows <= 700 && file.first <= file.last);
    }
    let ids = event_ids(dir.path());
    assert_eq!(ids.len(), input.len());
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), input.len());

    // A second run over the same input into a fresh root writes exactly the same names.
    let again = tempfile::tempdir().expect("tempdir");
    let mut sink = ParquetSink::new(small_files(again.path()), "capture.tsv").expect("sink");
    write_all(&mut sink, &input, 0);
    sink.finish().expect("finish");
    let names = |root: &Path| -> Vec<_> {
        parquet_files(root)
            .iter()
            .map(|p| p.strip_prefix(root).expect("under root").to_owned())
            .collect()
    };
    assert_eq!(names(dir.path()), names(again.path()));
}

#[test]
fn abandoned_run_leaves_no_readable_partial_file_and_rerun_adds_no_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = messages(40);
    let mut sink = ParquetSink::new(small_files(dir.path()), "cap").expect("sink");
    write_all(&mut sink, &input[..input.len() / 2], 0);
    let published_before = parquet_files(dir.path());
    assert!(!published_before.is_empty());
    // Simulates a crash: open files are neither published nor cleaned up.
    std::mem::forget(sink);
    let temporaries: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".inprogress"))
        .collect();
    assert!(
        !temporaries.is_empty(),
        "a crash mid-file leaves temporaries"
    );
    assert_eq!(
        parquet_files(dir.path()),
        published_before,
        "temporaries are not *.parquet"
    );

    let mut sink = ParquetSink::new(small_files(dir.path()), "cap").expect("restart");
    assert!(
        walk(dir.path())
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".inprogress")),
        "restart removes the temporaries"
    );
    let (written, skipped) = write_all(&mut sink, &input, 0);
    sink.finish().expect("finish");
    assert!(skipped > 0);
    assert_eq!(written + skipped, input.len() as u64);
    let ids = event_ids(dir.path());
    assert_eq!(ids.len(), input.len(), "every event exactly once");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), input.len());
}

#[test]
fn parquet_files_have_millisecond_utc_timestamps_and_zstd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = messages(3);
    let mut sink = ParquetSink::new(ParquetConfig::new(dir.path()), "cap").expect("sink");
    write_all(&mut sink, &input, 0);
    let published = sink.finish().expect("finish");
    for file in published {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(File::open(&file.path).expect("open"))
                .expect("readable");
        let metadata = builder.metadata().clone();
        let column = metadata.row_group(0).column(0);
        assert!(matches!(column.compression(), Compression::ZSTD(_)));
        assert!(column.statistics().is_some(), "statistics are on");
        let schema = builder.parquet_schema().clone();
        let event_time = schema
            .columns()
            .iter()
            .find(|c| c.name() == "event_time")
            .expect("event_time");
        let logical = format!("{:?}", event_time.logical_type_ref());
        assert!(
            logical.contains("MILLIS") && logical.contains("is_adjusted_to_u_t_c: true"),
            "{logical}"
        );
        for batch in builder.build().expect("reader") {
            let batch = batch.expect("batch");
            let times = batch
                .column_by_name("event_time")
                .expect("event_time")
                .as_primitive::<TimestampMillisecondType>();
            assert!(times
                .iter()
                .all(|t| t.is_some_and(|t| t > 1_700_000_000_000)));
            assert_eq!(times.null_count(), 0);
        }
    }
}

#[test]
fn idle_and_old_files_are_published_by_tick() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ParquetConfig {
        idle_timeout: Some(std::time::Duration::from_millis(1)),
        ..ParquetConfig::new(dir.path())
    };
    let mut sink = ParquetSink::new(config, "live").expect("sink");
    write_all(&mut sink, &messages(1), 0);
    assert!(sink.pending_rows() > 0);
    let later = std::time::Instant::now() + std::time::Duration::from_secs(1);
    sink.tick(later).expect("tick");
    assert_eq!(sink.pending_rows(), 0);
    assert!(!sink.take_published().is_empty());
}

#[test]
fn invalid_settings_are_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ParquetConfig {
        max_file_rows: 0,
        ..ParquetConfig::new(dir.path())
    };
    let error = ParquetSink::new(config, "x").expect_err("0 rows per file is invalid");
    assert!(error.to_string().contains("max_file_rows"), "{error}");
    let codec = "zstd:99".parse::<jobstream_sink::parquet::Codec>();
    assert!(codec.expect_err("level 99").contains("1..=22"));
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
