//! `jobstream run` configuration: the documented example loads, and mistakes are named.

use std::process::Command;

use crate::support::jobstream_bin;

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn the_example_config_loads() {
    let output = Command::new(jobstream_bin())
        .args(["run", "--check", "--config"])
        .arg(repo_file("docker/jobstream.toml"))
        .env_clear()
        .output()
        .expect("runs");
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
    let output = Command::new(jobstream_bin())
        .args(["run", "--check", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .expect("runs");
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
    let output = Command::new(jobstream_bin())
        .args(["run", "--check", "--config"])
        .arg(repo_file("docker/jobstream.toml"))
        .args([
            "--mqtt",
            "mqtt://user:secret@127.0.0.1:1884",
            "--connections",
            "4",
        ])
        .env_clear()
        .output()
        .expect("runs");
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

    let output = Command::new(jobstream_bin())
        .args([
            "run",
            "--check",
            "--mqtt",
            "mqtt://h",
            "--kafka",
            "k:9092",
            "--kafka-option",
            "acks=1",
        ])
        .env_clear()
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("acks=1"));
}

#[test]
fn the_plan_without_kafka_shows_parquet_and_no_kafka_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(jobstream_bin())
        .args(["run", "--check", "--mqtt", "mqtt://h", "--parquet"])
        .arg(dir.path())
        .env_clear()
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("directly, no Kafka"), "{stdout}");
    assert!(stdout.contains("1 parsing writer thread"), "{stdout}");
    assert!(!stdout.contains("kafka "), "no Kafka line: {stdout}");
    assert!(!stdout.contains("worker(s)"), "{stdout}");
}
