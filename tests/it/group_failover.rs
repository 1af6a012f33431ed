//! Two Parquet-stage processes in one consumer group, one killed with SIGKILL and restarted.
//!
//! The same fault on Apache Kafka is `test_two_members_of_one_group_share_partitions_and_survive_a_kill`
//! in `tests/python/test_parquet_stage.py`; this one runs against librdkafka's mock cluster,
//! in-process here and reached by the two `jobstream` processes over TCP like any broker, so
//! that it needs no JVM and runs with the Rust suite. (On the mock cluster the coordinator
//! also refuses the offset commit of a member
//! releasing its partitions mid-rebalance, as Kafka does; the new owner then resumes from the
//! published files' footers — this test is where that path was found and is exercised.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jobstream_fleet::{Fleet, FleetConfig};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::support::{event_ids, jobstream_bin, wait_for};

const JOBS: &str = "jobs";
const EXECUTIONS: &str = "executions";
const PARTITIONS: i32 = 3;

struct Member {
    log: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    offset: u64,
}

impl Member {
    fn new(dir: &Path, name: &str, brokers: &str, out: &Path) -> Member {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[kafka]
brokers = "{brokers}"
job_topic = "{JOBS}"
execution_topic = "{EXECUTIONS}"
dlq_topic = "dlq"
[kafka.options]
"consumer.session.timeout.ms" = "3000"
"consumer.heartbeat.interval.ms" = "300"
[parquet]
dir = "{}"
group_id = "two"
max_file_rows = 1000
"#,
                out.display()
            ),
        )
        .expect("write config");
        Member {
            log: dir.join(format!("{name}.log")),
            config,
            child: None,
            offset: 0,
        }
    }

    fn start(&mut self) {
        self.offset = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(jobstream_bin())
            .args(["run", "--stats-every-secs", "1", "--config"])
            .arg(&self.config)
            .env("JOBSTREAM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn jobstream");
        self.child = Some(child);
    }

    /// The latest value after `label` in this run's stats lines.
    fn stat(&self, label: &str) -> Option<String> {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text =
            String::from_utf8_lossy(&text[(self.offset as usize).min(text.len())..]).into_owned();
        text.lines()
            .rev()
            .filter(|l| l.contains("parquet: read"))
            .filter_map(|l| {
                let at = l.find(label)? + label.len();
                l[at..].split_whitespace().next().map(str::to_owned)
            })
            .next()
    }

    fn partitions(&self) -> Option<i32> {
        self.stat("| partitions ").and_then(|p| p.parse().ok())
    }

    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let status = child.wait().expect("exit");
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            status.success(),
            "{status:?}\n{}",
            &log[log.len().saturating_sub(3000)..]
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn two_members_share_the_partitions_and_survive_a_kill_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().to_owned();
    let out = dir_path.join("out");
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [JOBS, EXECUTIONS, "dlq"] {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    let brokers = cluster.bootstrap_servers();

    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut sent = HashSet::new();
    for message in Fleet::new(FleetConfig::with_events(20_000)) {
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).expect("json");
        let topic = if payload["eventType"] == "JOB" {
            JOBS
        } else {
            EXECUTIONS
        };
        let event_id = payload["eventId"].as_str().expect("id").to_owned();
        let job_id = payload["jobId"].as_str().expect("job").to_owned();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "mqtt_topic",
                value: Some(&message.topic),
            })
            .insert(Header {
                key: "event_id",
                value: Some(&event_id),
            });
        let mut record = BaseRecord::to(topic)
            .key(&job_id)
            .payload(&message.payload)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        sent.insert(event_id);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");

    let mut a = Member::new(&dir_path, "a", &brokers, &out);
    let mut b = Member::new(&dir_path, "b", &brokers, &out);
    a.start();
    b.start();
    wait_for(
        "both members to get partitions",
        Duration::from_secs(60),
        || a.partitions().unwrap_or(0) > 0 && b.partitions().unwrap_or(0) > 0,
    );
    // Mid-stream: b has published files, and there is more to read.
    wait_for("b to publish a file", Duration::from_secs(60), || {
        b.stat("| published ").is_some_and(|rows| rows != "0")
    });
    a.kill();
    wait_for(
        "b to take over a's partitions",
        Duration::from_secs(60),
        || b.partitions() == Some(2 * PARTITIONS),
    );
    a.start();
    wait_for(
        "the restarted a to get partitions back",
        Duration::from_secs(60),
        || a.partitions().unwrap_or(0) > 0,
    );
    wait_for(
        "the group to read everything",
        Duration::from_secs(300),
        || {
            a.stat("| lag ").as_deref() == Some("0")
                && b.stat("| lag ").as_deref() == Some("0")
                && a.partitions().unwrap_or(0) + b.partitions().unwrap_or(0) == 2 * PARTITIONS
        },
    );
    a.stop();
    b.stop();

    let ids = event_ids(&out);
    assert_eq!(ids.len(), sent.len(), "no duplicate rows");
    assert_eq!(
        ids.into_iter().collect::<HashSet<_>>(),
        sent,
        "every event, exactly once"
    );
}
