//! `jobstream run` configuration: the documented example loads, and mistakes are named.

use std::ffi::OsStr;
use std::process::{Command, Output};

use crate::support::jobstream_bin;

/// `jobstream run --check ARGS` with an empty environment, so that no `JOBSTREAM_*` variable of
/// the machine running the tests leaks into the plan.
fn check<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(jobstream_bin())
        .args(["run", "--check"])
        .args(args)
        .env_clear()
        .output()
        .expect("runs")
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn the_example_config_loads() {
    let output = check([
        OsStr::new("--config"),
        repo_file("docker/jobstream.toml").as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("mqtt://mosquitto:1883"), "{stdout}");
    assert!(stdout.contains("aws-iot-job-execution-events"), "{stdout}");
}

#[test]
fn a_typo_in_a_config_key_is_rejected_with_the_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[mqtt]\nurl = \"mqtt://h\"\n\n[kafka]\nbrokers = \"k:9092\"\ncompresion = \"zstd\"\n",
    )
    .expect("write");
    let output = check([OsStr::new("--config"), path.as_os_str()]);
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("compresion") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6"),
        "the message points at the line: {stderr}"
    );
}

#[test]
fn flags_override_the_file_and_weakening_durability_is_refused() {
    let config = repo_file("docker/jobstream.toml");
    let output = check([
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--mqtt"),
        OsStr::new("mqtt://user:secret@127.0.0.1:1884"),
        OsStr::new("--connections"),
        OsStr::new("4"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("user:***@127.0.0.1:1884"),
        "password hidden: {stdout}"
    );
    assert!(!stdout.contains("secret"));
    assert!(
        stdout.contains("$share/jobstream/$aws/events/job/+/+"),
        "{stdout}"
    );

    let output = check([
        "--mqtt",
        "mqtt://h",
        "--kafka",
        "k:9092",
        "--kafka-option",
        "acks=1",
    ]);
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("acks=1"));
}

#[test]
fn the_plan_without_kafka_shows_parquet_and_no_kafka_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = check([
        OsStr::new("--mqtt"),
        OsStr::new("mqtt://h"),
        OsStr::new("--parquet"),
        dir.path().as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("directly, no Kafka"), "{stdout}");
    assert!(stdout.contains("1 parsing writer thread"), "{stdout}");
    assert!(!stdout.contains("kafka "), "no Kafka line: {stdout}");
    assert!(!stdout.contains("worker(s)"), "{stdout}");
}

#[test]
fn an_unknown_parquet_encoding_is_refused_with_the_setting_and_the_choices_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("encodings.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nurl = \"mqtt://h\"\n\n[parquet]\ndir = {:?}\nencodings = \"rle\"\n",
            dir.path().join("out")
        ),
    )
    .expect("write");
    let output = check([OsStr::new("--config"), path.as_os_str()]);
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("parquet.encodings")
            && stderr.contains("line 6")
            && stderr.contains("delta")
            && stderr.contains("plain"),
        "{stderr}"
    );
}

/// Writes `text` as a config file and runs `--check` on it.
fn check_file(text: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobstream.toml");
    std::fs::write(&path, text).expect("write");
    (check([OsStr::new("--config"), path.as_os_str()]), dir)
}

#[test]
fn an_unknown_key_in_any_section_is_refused_with_its_line() {
    for (section, typo) in [
        ("pipeline", "workrs = 2"),
        ("parquet", "row_group_byte = 1024"),
        ("mqtt", "keepalive_secs = 30"),
    ] {
        let text: String = [
            ("mqtt", "url = \"mqtt://h\""),
            ("kafka", "brokers = \"k:9092\""),
            ("pipeline", "workers = 1"),
            ("parquet", "max_file_rows = 10"),
        ]
        .iter()
        .map(|(name, body)| match *name == section {
            true => format!("[{name}]\n{body}\n{typo}\n"),
            false => format!("[{name}]\n{body}\n"),
        })
        .collect();
        let line = text
            .lines()
            .position(|l| l == typo)
            .map_or(0, |index| index + 1);
        let (output, _dir) = check_file(&text);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(78),
            "[{section}] {typo}: {stderr}"
        );
        let key = typo.split(' ').next().unwrap_or_default();
        assert!(stderr.contains(key), "[{section}] {typo}: {stderr}");
        assert!(
            stderr.contains(&format!("line {line}")),
            "[{section}] {typo} is on line {line}: {stderr}"
        );
    }
}

#[test]
fn a_zero_that_would_stall_a_stage_is_refused_naming_the_setting() {
    for (section, key, setting) in [
        ("pipeline", "batch_size", "pipeline.batch_size"),
        ("pipeline", "queue_batches", "pipeline.queue_batches"),
        ("mqtt", "connections", "mqtt.connections"),
        ("kafka", "max_queued", "kafka.max_queued"),
        ("parquet", "max_file_age_secs", "parquet.max_file_age_secs"),
        ("parquet", "idle_timeout_secs", "parquet.idle_timeout_secs"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let parquet_dir = dir.path().join("out");
        // Every section present once, the one under test with its zero.
        let mut sections = vec![
            ("mqtt", "url = \"mqtt://h\"".to_owned()),
            ("kafka", "brokers = \"k:9092\"".to_owned()),
            ("pipeline", String::new()),
            ("parquet", format!("dir = {parquet_dir:?}")),
        ];
        for (name, body) in &mut sections {
            if *name == section {
                body.push_str(&format!("\n{key} = 0"));
            }
        }
        let text: String = sections
            .iter()
            .map(|(name, body)| format!("[{name}]\n{body}\n\n"))
            .collect();
        let (output, _dir) = check_file(&text);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{setting} = 0: {stderr}");
        assert!(stderr.contains(setting), "{setting} = 0: {stderr}");
        assert!(stderr.contains("at least 1"), "{setting} = 0: {stderr}");
    }
}
