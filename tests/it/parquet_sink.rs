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
use jobstream_sink::parquet::{Appended, Encodings, ParquetConfig, ParquetSink};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding};

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
fn a_sink_starting_on_a_root_another_writes_leaves_its_open_files_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = messages(20);
    let mut writing = ParquetSink::new(small_files(dir.path()), "cap").expect("sink");
    write_all(&mut writing, &input, 0);
    let open_temporaries = temporaries(dir.path()).len();
    assert!(open_temporaries > 0, "the writer has files open");

    let starting = ParquetSink::new(small_files(dir.path()), "cap").expect("second sink");
    assert_eq!(
        temporaries(dir.path()).len(),
        open_temporaries,
        "a live writer's temporaries are not leftovers"
    );
    writing
        .finish()
        .expect("the first writer still publishes its open files");
    starting.finish().expect("finish");
    let ids = event_ids(dir.path());
    assert_eq!(ids.len(), input.len(), "every event exactly once");
}

#[test]
fn abandoned_run_leaves_no_readable_partial_file_and_rerun_adds_no_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = messages(40);
    let mut sink = ParquetSink::new(small_files(dir.path()), "cap").expect("sink");
    write_all(&mut sink, &input[..input.len() / 2], 0);
    let published_before = parquet_files(dir.path());
    assert!(!published_before.is_empty());
    // Simulates a crash: open files are neither published nor cleaned up, and their descriptors
    // close (as the kernel closes a dead process's).
    drop(sink);
    assert!(
        !temporaries(dir.path()).is_empty(),
        "a crash mid-file leaves temporaries"
    );
    assert_eq!(
        parquet_files(dir.path()),
        published_before,
        "temporaries are not *.parquet"
    );

    let mut sink = ParquetSink::new(small_files(dir.path()), "cap").expect("restart");
    assert!(
        temporaries(dir.path()).is_empty(),
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

/// The rows of every file under `root` by its path below `root` (as one batch), and the
/// encodings each column path used in any row group of any file.
fn read_files_and_encodings(
    root: &Path,
) -> (
    std::collections::BTreeMap<std::path::PathBuf, arrow_array::RecordBatch>,
    std::collections::BTreeMap<String, BTreeSet<Encoding>>,
) {
    let mut files = std::collections::BTreeMap::new();
    let mut encodings = std::collections::BTreeMap::<String, BTreeSet<Encoding>>::new();
    for path in parquet_files(root) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).expect("open"))
            .expect("readable");
        for row_group in builder.metadata().row_groups() {
            for column in row_group.columns() {
                encodings
                    .entry(column.column_path().string())
                    .or_default()
                    .extend(column.encodings());
            }
        }
        let schema = builder.schema().clone();
        let batches: Vec<_> = builder
            .build()
            .expect("reader")
            .map(|batch| batch.expect("batch"))
            .collect();
        let rows = arrow_select::concat::concat_batches(&schema, &batches).expect("concat");
        let name = path.strip_prefix(root).expect("under root").to_owned();
        files.insert(name, rows);
    }
    (files, encodings)
}

#[test]
fn delta_and_plain_encodings_read_back_as_the_same_rows() {
    let input = messages(40);
    let mut written = Vec::new();
    for encodings in [Encodings::Delta, Encodings::Plain] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ParquetConfig {
            encodings,
            ..small_files(dir.path())
        };
        let mut sink = ParquetSink::new(config, "cap").expect("sink");
        write_all(&mut sink, &input, 0);
        sink.finish().expect("finish");
        written.push((encodings, read_files_and_encodings(dir.path())));
    }
    for (encodings, (_, used)) in &written {
        for (column, delta) in [
            ("thing_arn", Encoding::DELTA_BYTE_ARRAY),
            ("thing_name", Encoding::DELTA_BYTE_ARRAY),
            ("event_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
            (
                "status_details.key_value.key",
                Encoding::DELTA_LENGTH_BYTE_ARRAY,
            ),
            (
                "status_details.key_value.value",
                Encoding::DELTA_LENGTH_BYTE_ARRAY,
            ),
        ] {
            let column_encodings = used.get(column).expect("the column is in the files");
            assert_eq!(
                column_encodings.contains(&delta),
                *encodings == Encodings::Delta,
                "{encodings:?} {column}: {column_encodings:?}"
            );
        }
        // Dictionaries stay where they were, whatever the delta setting.
        assert!(
            used["job_id"].contains(&Encoding::RLE_DICTIONARY),
            "{used:?}"
        );
    }
    let (delta, plain) = (&written[0].1 .0, &written[1].1 .0);
    let rows: usize = delta.values().map(arrow_array::RecordBatch::num_rows).sum();
    assert!(
        rows > 1000 && delta.len() > 2,
        "{rows} rows in {} files",
        delta.len()
    );
    assert_eq!(
        delta.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    for (name, rows) in delta {
        assert_eq!(rows, &plain[name], "{}", name.display());
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

fn relative_names(root: &Path) -> Vec<std::path::PathBuf> {
    parquet_files(root)
        .iter()
        .map(|p| p.strip_prefix(root).expect("under root").to_owned())
        .collect()
}

#[test]
fn background_encoding_writes_the_same_files_as_encoding_inline() {
    assert_background_encoding_matches_inline(small_files);
}

#[test]
fn background_write_back_of_flushed_row_groups_changes_no_byte() {
    // Row groups of a few KiB: every file flushes several before it is published, and each
    // flush asks the write-back thread to sync the file while encoding goes on.
    let row_groups = |root: &Path| ParquetConfig {
        row_group_bytes: 8 << 10,
        ..small_files(root)
    };
    let background = assert_background_encoding_matches_inline(row_groups);
    let executions = parquet_files(&background.path().join("job_execution_events"));
    assert!(!executions.is_empty());
    for file in executions {
        let reader = parquet::file::reader::SerializedFileReader::new(
            std::fs::File::open(&file).expect("open"),
        )
        .expect("a whole Parquet file");
        let row_groups = parquet::file::reader::FileReader::metadata(&reader).num_row_groups();
        assert!(
            row_groups > 1,
            "{} has {row_groups} row group",
            file.display()
        );
    }
}

/// Writes the same input inline and in the background with `config`, checks names, rows and
/// bytes agree; returns the background run's directory.
fn assert_background_encoding_matches_inline(
    config: impl Fn(&Path) -> ParquetConfig,
) -> tempfile::TempDir {
    let input = messages(20);
    let inline = tempfile::tempdir().expect("tempdir");
    let mut sink = ParquetSink::new(config(inline.path()), "cap").expect("sink");
    write_all(&mut sink, &input, 0);
    let inline_published = sink.finish().expect("finish");

    let background = tempfile::tempdir().expect("tempdir");
    let mut sink = ParquetSink::new(config(background.path()), "cap")
        .and_then(ParquetSink::encode_in_background)
        .expect("sink");
    write_all(&mut sink, &input, 0);
    let mut published = sink.take_published();
    published.extend(sink.finish().expect("finish"));

    assert_eq!(
        relative_names(inline.path()),
        relative_names(background.path())
    );
    let summary = |files: &[jobstream_sink::parquet::PublishedFile]| -> Vec<_> {
        let mut rows: Vec<_> = files.iter().map(|f| (f.first, f.last, f.rows)).collect();
        rows.sort_unstable();
        rows
    };
    assert_eq!(summary(&inline_published), summary(&published));
    // Columns encoded on two threads still make the bytes ArrowWriter makes.
    for (a, b) in parquet_files(inline.path())
        .iter()
        .zip(parquet_files(background.path()).iter())
    {
        let (a_bytes, b_bytes) = (
            std::fs::read(a).expect("read"),
            std::fs::read(b).expect("read"),
        );
        assert!(
            a_bytes == b_bytes,
            "{} and {} differ",
            a.display(),
            b.display()
        );
    }
    assert!(published.iter().all(|f| f.path.exists() && f.bytes > 0));
    let ids = event_ids(background.path());
    assert_eq!(ids.len(), input.len());
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), input.len());
    background
}

#[test]
fn background_encoding_rolls_on_bytes_at_the_same_rows_on_every_run() {
    let input = messages(20);
    let config = |root: &Path| ParquetConfig {
        // Every batch passes the limit: a file holds the batch that did, then the lag.
        max_file_bytes: 1,
        max_file_rows: 1_000_000,
        ..small_files(root)
    };
    let run = |root: &Path| {
        let mut sink = ParquetSink::new(config(root), "cap")
            .and_then(ParquetSink::encode_in_background)
            .expect("sink");
        write_all(&mut sink, &input, 0);
        sink.finish().expect("finish")
    };
    let first = tempfile::tempdir().expect("tempdir");
    let published = run(first.path());
    let rows_per_full_file = (jobstream_sink::parquet::SIZE_LAG_BATCHES + 1) * 256;
    let mut by_partition: std::collections::BTreeMap<_, Vec<_>> = Default::default();
    for file in &published {
        by_partition
            .entry(file.path.parent().expect("partition").to_owned())
            .or_default()
            .push(file.clone());
    }
    let mut rolled = 0;
    for files in by_partition.values_mut() {
        files.sort_by_key(|f| f.first);
        let total: u64 = files.iter().map(|f| f.rows).sum();
        let (last, full) = files.split_last().expect("a file");
        assert_eq!(
            full.len() as u64,
            (total - 1) / rows_per_full_file,
            "{files:?}"
        );
        assert!(
            full.iter().all(|f| f.rows == rows_per_full_file),
            "{full:?}"
        );
        assert!(last.rows <= rows_per_full_file);
        rolled += full.len();
    }
    assert!(rolled > 0, "files roll on bytes: {published:?}");
    let second = tempfile::tempdir().expect("tempdir");
    run(second.path());
    assert_eq!(relative_names(first.path()), relative_names(second.path()));
    assert_eq!(event_ids(second.path()).len(), input.len());
}

#[test]
fn an_error_on_the_encoder_thread_is_returned_by_the_sink_not_a_hang_or_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = messages(40);
    let mut sink = ParquetSink::new(small_files(dir.path()), "cap")
        .and_then(ParquetSink::encode_in_background)
        .expect("sink");
    let mut parser = Parser::default();
    let mut first_error = None;
    for (i, m) in input.iter().enumerate() {
        if i == 100 {
            // The open files' temporaries vanish with their directories: the encoder thread
            // can still write them, but it cannot rename them when they roll at 700 rows.
            for table in ["job_events", "job_execution_events"] {
                std::fs::remove_dir_all(dir.path().join(table)).expect("remove");
            }
        }
        let provenance = Provenance {
            mqtt_topic: Some(&m.topic),
            received_at_ms: None,
        };
        let result = parser.parse(&m.topic, &m.payload, |outcome| {
            sink.append(&outcome.expect("valid"), &provenance, i as u64 + 1)
        });
        if let Err(error) = result {
            first_error = Some(error.to_string());
            break;
        }
    }
    let error = match first_error {
        Some(error) => error,
        None => sink
            .finish()
            .expect_err("the rename failed on the encoder thread")
            .to_string(),
    };
    assert!(
        error.contains("publish (rename)") && error.contains("cap+"),
        "{error}"
    );
    assert!(
        parquet_files(dir.path()).is_empty(),
        "nothing was published"
    );
}

/// The sink's temporaries (`.….inprogress`) under `root`.
fn temporaries(root: &Path) -> Vec<std::path::PathBuf> {
    walk(root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".inprogress"))
        .collect()
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
