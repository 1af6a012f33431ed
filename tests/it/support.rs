//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jobstream_parser::{Event, Parser, Reject};

/// The spec's example payloads, as `(topic, payload)` lines.
pub fn spec_examples() -> Vec<(String, String)> {
    let text = include_str!("../fixtures/spec-examples.tsv");
    text.lines()
        .map(|line| {
            let (topic, payload) = line.split_once('\t').expect("fixture lines have a TAB");
            (topic.to_owned(), payload.to_owned())
        })
        .collect()
}

/// Parses and returns the reject, panicking (in tests only) if the input was accepted.
pub fn reject_of(parser: &mut Parser, topic: &str, payload: &str) -> Reject {
    parser.parse(topic, payload.as_bytes(), |outcome| match outcome {
        Ok(event) => panic!("expected a reject, got {:?}", event.family()),
        Err(reject) => reject,
    })
}

/// Runs `check` on the accepted event, panicking with the reject otherwise.
pub fn with_event<R>(
    parser: &mut Parser,
    topic: &str,
    payload: &str,
    check: impl for<'t, 'i> FnOnce(Event<'t, 'i>) -> R,
) -> R {
    parser.parse(topic, payload.as_bytes(), |outcome| match outcome {
        Ok(event) => check(event),
        Err(reject) => panic!("expected an event, got {reject}"),
    })
}

/// The `jobstream` binary built for these tests.
pub fn jobstream_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobstream"))
}

/// Every `*.parquet` file under `root`, sorted.
pub fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The `event_id` of every row in every Parquet file under `root`, in file order.
pub fn event_ids(root: &Path) -> Vec<String> {
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let mut ids = Vec::new();
    for path in parquet_files(root) {
        let file = std::fs::File::open(&path).expect("open");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("a readable Parquet file")
            .build()
            .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let column = batch
                .column_by_name("event_id")
                .expect("event_id")
                .as_string::<i32>();
            ids.extend(column.iter().map(|s| s.expect("not null").to_owned()));
        }
    }
    ids
}

/// Polls `condition` until it holds; fails the test naming `what` once `timeout` passed.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
