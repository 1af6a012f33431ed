//! `jobstream replay` and `jobstream generate` as a user runs them.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::{jobstream_bin, parquet_files};

fn run(args: &[&str]) -> Output {
    Command::new(jobstream_bin())
        .args(args)
        .output()
        .expect("jobstream runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn summary_value(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| {
            l[l.find(label).map(|i| i + label.len()).unwrap_or(0)..]
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in summary:\n{summary}"))
}

#[test]
fn replay_counts_every_line_as_a_row_or_a_reject_and_fills_the_dlq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("capture.tsv");
    let generated = run(&[
        "generate",
        "--events",
        "5000",
        "--output",
        capture.to_str().expect("utf8"),
    ]);
    assert!(generated.status.success(), "{generated:?}");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&capture)
        .expect("open");
    file.write_all(b"no tab on this line\n").expect("write");
    file.write_all(b"$aws/events/job/j/completed\tnot json\n")
        .expect("write");
    file.write_all(b"$aws/events/job/j/completed\t\xff\xfe binary\n")
        .expect("write");
    file.write_all(b"\n").expect("write");
    drop(file);
    let lines = std::fs::read(&capture)
        .expect("read")
        .split(|&b| b == b'\n')
        .count() as u64
        - 1;

    let parquet = dir.path().join("out");
    let dlq = dir.path().join("dlq.jsonl");
    let output = run(&[
        "replay",
        "--input",
        capture.to_str().expect("utf8"),
        "--parquet",
        parquet.to_str().expect("utf8"),
        "--dlq",
        dlq.to_str().expect("utf8"),
    ]);
    assert!(
        output.status.success(),
        "rejects are not errors: {output:?}"
    );
    let summary = stdout(&output);
    let read = summary_value(&summary, "lines read");
    let jobs = summary_value(&summary, "job_events rows");
    let executions = summary_value(&summary, "job_execution_events rows");
    let rejected = summary_value(&summary, "rejected");
    assert_eq!(read, lines);
    assert_eq!(read, jobs + executions + rejected, "{summary}");
    assert_eq!(rejected, 4);
    assert!(summary.contains("malformed_line"), "{summary}");
    assert!(summary.contains("not_json"), "{summary}");
    assert!(!parquet_files(&parquet).is_empty());

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&dlq)
        .expect("dlq written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("DLQ lines are JSON"))
        .collect();
    assert_eq!(records.len(), 4);
    let binary = records
        .iter()
        .find(|r| r.get("payload_base64").is_some())
        .expect("a non-UTF-8 payload is kept as base64");
    assert_eq!(binary["error_kind"], "not_json");
    assert_eq!(binary["topic"], "$aws/events/job/j/completed");
    assert_eq!(binary["payload_base64"], "//4gYmluYXJ5");
    for record in &records {
        assert!(record["line"].as_u64().expect("line") > lines - 4);
        assert!(!record["error"].as_str().expect("error").is_empty());
    }

    // A rerun publishes nothing new and rewrites the same DLQ.
    let before = parquet_files(&parquet);
    let again = run(&[
        "replay",
        "--input",
        capture.to_str().expect("utf8"),
        "--parquet",
        parquet.to_str().expect("utf8"),
        "--dlq",
        dlq.to_str().expect("utf8"),
    ]);
    assert!(again.status.success());
    let summary = stdout(&again);
    assert_eq!(
        summary_value(&summary, "already published"),
        jobs + executions
    );
    assert_eq!(parquet_files(&parquet), before);
    assert_eq!(
        std::fs::read_to_string(&dlq).expect("dlq").lines().count(),
        4
    );
}

/// Whether whoever reads the replay's standard output is still there when it prints.
enum StdoutReader {
    Stays,
    /// Closed before the capture is sent: reading standard input keeps the replay from
    /// printing before its reader is gone.
    GoesFirst,
}

/// `jobstream replay --input - --parquet DIR` fed `capture` on standard input.
fn replay_from_stdin(parquet: &Path, capture: &[u8], reader: StdoutReader) -> Output {
    let mut child = Command::new(jobstream_bin())
        .args(["replay", "--input", "-", "--parquet"])
        .arg(parquet)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let StdoutReader::GoesFirst = reader {
        drop(child.stdout.take());
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(capture)
        .expect("pipe");
    child.wait_with_output().expect("wait")
}

#[test]
fn replay_reads_standard_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = run(&["generate", "--events", "300"]);
    assert!(capture.status.success());
    let output = replay_from_stdin(dir.path(), &capture.stdout, StdoutReader::Stays);
    assert!(output.status.success());
    let summary = stdout(&output);
    let lines = capture.stdout.split(|&b| b == b'\n').count() as u64 - 1;
    assert_eq!(summary_value(&summary, "lines read"), lines);
    assert_eq!(summary_value(&summary, "rejected"), 0);
}

#[test]
fn a_summary_into_a_closed_pipe_neither_panics_nor_fails_the_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = run(&["generate", "--events", "300"]);
    assert!(capture.status.success());
    let output = replay_from_stdin(dir.path(), &capture.stdout, StdoutReader::GoesFirst);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!parquet_files(dir.path()).is_empty());
}

#[test]
fn missing_input_and_bad_flags_exit_non_zero_with_a_clear_message() {
    let missing = run(&["replay", "--input", "/nonexistent/capture.tsv"]);
    assert_eq!(missing.status.code(), Some(66));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("/nonexistent/capture.tsv"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {stderr}"
    );

    let bad_codec = run(&["replay", "--input", "-", "--compression", "brotli9"]);
    assert_eq!(bad_codec.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_codec.stderr);
    assert!(
        stderr.contains("unknown codec") && stderr.contains("zstd"),
        "{stderr}"
    );

    let bad_encodings = run(&["replay", "--input", "-", "--encodings", "rle"]);
    assert_eq!(bad_encodings.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_encodings.stderr);
    assert!(
        stderr.contains("unknown encodings") && stderr.contains("plain"),
        "{stderr}"
    );

    let zero_rows = run(&[
        "replay",
        "--input",
        "-",
        "--parquet",
        "/tmp/x",
        "--max-file-rows",
        "0",
    ]);
    assert_eq!(zero_rows.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&zero_rows.stderr);
    assert!(stderr.contains("max_file_rows"), "{stderr}");
}

#[test]
fn a_write_error_on_the_encoder_thread_exits_with_the_io_code_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("capture.tsv");
    let out = dir.path().join("out");
    let generated = run(&[
        "generate",
        "--events",
        "20000",
        "--output",
        capture.to_str().expect("utf8"),
    ]);
    assert!(generated.status.success(), "{generated:?}");
    // `ulimit -f` caps the size of files the process writes; with SIGXFSZ ignored (an ignored
    // signal stays ignored across exec) a write past the cap fails with EFBIG instead of
    // killing the process. Replay writes Parquet bytes on its encoder thread, so that is where
    // the error happens.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 16; exec "$0" replay --input "$1" --parquet "$2" --quiet"#)
        .arg(jobstream_bin())
        .arg(&capture)
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("replay hung after the encoder thread failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains("writing Parquet file")
            && stderr.contains(".inprogress")
            && stderr.contains("File too large"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        parquet_files(&out.join("job_execution_events")).is_empty(),
        "the file that failed was not published"
    );
}

/// Runs the demo with `dir` and checks its summary against its Parquet files; the summary.
fn demo_in(dir: &Path) -> String {
    let output = run(&[
        "demo",
        "--events",
        "2000",
        "--dir",
        dir.to_str().expect("utf8"),
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("2 rejected"), "{text}");
    // "published N messages (E job events + 2 bad ones)": every event, and only those, is in
    // Parquet after its trip through MQTT, the bridge, Kafka and the Parquet stage.
    let events: u64 = text
        .split_once("messages (")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in {text}"));
    let files = parquet_files(&dir.join("parquet"));
    let rows: i64 = files
        .iter()
        .map(|path| {
            let file = std::fs::File::open(path).expect("open");
            parquet::file::reader::FileReader::metadata(
                &parquet::file::reader::SerializedFileReader::new(file).expect("parquet"),
            )
            .file_metadata()
            .num_rows()
        })
        .sum();
    assert_eq!(rows as u64, events, "{text}");
    assert!(
        text.contains(&format!("acknowledged {}", events + 2)),
        "{text}"
    );
    text
}

#[test]
fn demo_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    demo_in(dir.path());
}

#[test]
fn a_second_demo_in_the_same_directory_starts_afresh_and_a_foreign_directory_is_refused() {
    // Each demo has a new Kafka cluster whose offsets start at 0: the first demo's files
    // (named after offsets) once made the second skip every event and wait out its deadline.
    let dir = tempfile::tempdir().expect("tempdir");
    demo_in(dir.path());
    demo_in(dir.path());

    let foreign = tempfile::tempdir().expect("tempdir");
    let table = foreign.path().join("parquet").join("job_events");
    std::fs::create_dir_all(&table).expect("mkdir");
    std::fs::write(table.join("mine.parquet"), b"not the demo's").expect("write");
    let output = run(&["demo", "--dir", foreign.path().to_str().expect("utf8")]);
    assert_eq!(output.status.code(), Some(78), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no demo wrote"), "{stderr}");
    assert!(
        table.join("mine.parquet").exists(),
        "nothing of the user's is removed"
    );
}

#[test]
fn the_version_says_whether_the_build_has_crash_points() {
    let version = stdout(&run(&["--version"]));
    assert_eq!(
        version.contains("fault injection"),
        cfg!(feature = "fault-injection"),
        "{version}"
    );
}
