//! `jobstream demo`: the whole pipeline on embedded defaults, zero setup.
//!
//! Everything runs in this process: an MQTT broker (rumqttd), Kafka (librdkafka's mock
//! cluster), the bridge and the Parquet stage exactly as `jobstream run` wires them, and a
//! simulated fleet publishing job lifecycles with QoS 1. rumqttd refuses `$`-topics, so the demo
//! publishes under `demo/aws/events/` (the prefix is a setting of `run` too). Two messages AWS
//! would never send show where bad input goes. The demo ends when every message is acknowledged
//! and every event is in Parquet, and says what went where.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jobstream_bridge::{BridgeConfig, MqttConfig, Output};
use jobstream_fleet::Message;
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_parser::ParserConfig;
use jobstream_sink::consumer::StageConfig;
use jobstream_sink::kafka::KafkaConfig;
use jobstream_sink::parquet::ParquetConfig;
use rumqttc::QoS;

use crate::{Failure, EXIT_CONFIG};
use jobstream_publisher::{publish, PublishSettings};

const PREFIX: &str = "demo/aws/events/";
/// How long the demo may take before it says what it is still waiting for.
const DEADLINE: Duration = Duration::from_secs(180);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo writes its Parquet files (under `parquet/`; a later demo empties it).
    #[arg(long, default_value = "jobstream-demo")]
    dir: PathBuf,
    /// About how many events the simulated fleet publishes.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// An in-process MQTT broker on a free loopback port.
fn start_broker() -> anyhow::Result<u16> {
    let port = free_port()?;
    let config: rumqttd::Config = toml::from_str(&format!(
        r#"
id = 0
[router]
max_connections = 16
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 131072
max_inflight_count = 1000
dynamic_filters = true
"#
    ))
    .context("configuring the in-process MQTT broker")?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the in-process MQTT broker stopped");
            }
        })
        .context("starting the in-process MQTT broker")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Bound by the broker once binding it here fails (a probe connection would be logged as
    // a client error).
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the in-process MQTT broker did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}

/// The file that marks a directory as the demo's own, so a later demo may empty it.
const MARKER: &str = ".jobstream-demo";

/// The demo's Parquet root under `dir`, empty. Every demo starts a new Kafka cluster, whose
/// offsets start at 0 again; the files of an earlier demo (named after the offsets they hold)
/// would make the Parquet stage take each new event for one it had already written, skip it,
/// and wait for the rest until the deadline. So what an earlier demo wrote (its directory
/// carries [`MARKER`]) is removed, and a directory with other Parquet files is refused.
fn fresh_parquet_root(dir: &Path) -> Result<PathBuf, Failure> {
    let parquet_root = dir.join("parquet");
    let marker = dir.join(MARKER);
    if marker.exists() {
        match std::fs::remove_dir_all(&parquet_root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e)
                    .context(format!(
                        "cannot remove the earlier demo's files in {}",
                        parquet_root.display()
                    ))
                    .into());
            }
            _ => {}
        }
    } else if std::fs::read_dir(&parquet_root).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Failure::new(
            EXIT_CONFIG,
            anyhow::anyhow!(
                "{} holds files that no demo wrote; give the demo a directory of its own \
                 with --dir (or remove that one)",
                parquet_root.display()
            ),
        ));
    }
    std::fs::create_dir_all(&parquet_root)
        .with_context(|| format!("cannot create {}", parquet_root.display()))?;
    std::fs::write(
        &marker,
        "written by `jobstream demo`, which empties parquet/ on each run\n",
    )
    .with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(parquet_root)
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    let parquet_root = fresh_parquet_root(&args.dir)?;

    let mut fleet = Fleet::new(FleetConfig {
        unknown_fields: true,
        topic_prefix: PREFIX.to_owned(),
        ..FleetConfig::with_events(args.events)
    });
    let mut messages: Vec<Message> = fleet.by_ref().collect();
    let events = messages.len();
    // Two messages AWS would never send: cut-off JSON, and an event type that does not match
    // its topic.
    messages.push(Message {
        topic: format!("{PREFIX}job/j-bad/completed"),
        payload: br#"{"eventType":"JOB""#.to_vec(),
    });
    messages.push(Message {
        topic: format!("{PREFIX}jobExecution/j-bad/failed"),
        payload: br#"{"eventType":"JOB","eventId":"x","timestamp":1,"operation":"failed","jobId":"j-bad","status":"FAILED"}"#.to_vec(),
    });
    let published = messages.len();

    let port = start_broker()?;
    let cluster = rdkafka::mocking::MockCluster::new(1)
        .map_err(|e| anyhow::anyhow!("starting the in-process Kafka mock cluster: {e}"))?;
    let mut kafka = KafkaConfig::new(cluster.bootstrap_servers());
    kafka.create_topics = false;
    // The mock cluster answers no DescribeConfigs; its topics take any timestamp anyway.
    kafka.read_timestamp_limits = false;
    for topic in [&kafka.job_topic, &kafka.execution_topic, &kafka.dlq_topic] {
        cluster
            .create_topic(topic, kafka.partitions, 1)
            .map_err(|e| anyhow::anyhow!("creating {topic} in the mock cluster: {e}"))?;
    }
    let parser = ParserConfig {
        topic_prefix: PREFIX.to_owned(),
        ..ParserConfig::default()
    };

    let mut fleet_mqtt = MqttConfig::new(format!("mqtt://127.0.0.1:{port}"));
    fleet_mqtt.client_id = "demo-fleet".to_owned();
    let fleet_publisher = PublishSettings {
        mqtt: fleet_mqtt,
        qos: QoS::AtLeastOnce,
        window: 1000,
        rate: None,
        connect_timeout: Duration::from_secs(10),
        progress: false,
    };
    let mut mqtt = MqttConfig::new(format!("mqtt://127.0.0.1:{port}"));
    mqtt.client_id = "jobstream-demo".to_owned();
    mqtt.filters = vec![
        format!("{PREFIX}job/+/+"),
        format!("{PREFIX}jobExecution/+/+"),
    ];
    let mut bridge = BridgeConfig::new(mqtt, Output::Kafka(kafka.clone()));
    bridge.pipeline.topic_prefix = parser.topic_prefix.clone();
    bridge.pipeline.max_payload_bytes = parser.max_payload_bytes;

    let mut stage = StageConfig::new(kafka.clone(), ParquetConfig::new(&parquet_root));
    stage.parser = parser;
    stage.parquet.group_id = "jobstream-demo".to_owned();

    outln!(
        "in-process MQTT broker on 127.0.0.1:{port} (topics under {PREFIX}), Kafka mock cluster at {}",
        cluster.bootstrap_servers()
    );
    let started = Instant::now();
    let running = jobstream_topology::Topology {
        bridge: Some(bridge),
        stage: Some(stage),
        metrics: None,
    }
    .start()?;
    let stats = running.stats();
    let (bridge_stats, stage_stats) = (Arc::clone(&stats.bridge), Arc::clone(&stats.stage));
    let drive = async {
        // The bridge subscribes first so that nothing is published before anyone listens.
        let deadline = Instant::now() + DEADLINE;
        while bridge_stats.connected.get() < 1 {
            anyhow::ensure!(Instant::now() < deadline, "the bridge did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Subscriptions follow the connection by a round trip.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = publish(&fleet_publisher, messages.into_iter(), |_| {}).await?;
        outln!(
            "simulated fleet: published {} messages ({events} job events + 2 bad ones) with QoS 1",
            sent.tally.total
        );
        let settled = async {
            loop {
                let acked = bridge_stats.acknowledged.get() as usize;
                let read = stage_stats.records.load(Ordering::Relaxed) as usize;
                if acked >= published && read >= events {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            tokio::time::timeout(remaining, settled).await.is_ok(),
            "the demo did not settle within {} s (acknowledged {} of {published}, Parquet stage read {} of {events})",
            DEADLINE.as_secs(),
            bridge_stats.acknowledged.get(),
            stage_stats.records.load(Ordering::Relaxed)
        );
        Ok(())
    };
    match running.run_until(drive)? {
        Some(driven) => driven?,
        None => {
            return Err(anyhow::anyhow!("the pipeline stopped before the demo was done").into())
        }
    }
    let (bridge_stats, stage_stats) = (&stats.bridge, &stats.stage);

    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    outln!(
        "bridge: received {}, produced {} job and {} job execution events to Kafka, 2 rejected → DLQ topic {}, acknowledged {} to MQTT after Kafka confirmed",
        bridge_stats.received.get(),
        bridge_stats.produced_jobs.get(),
        bridge_stats.produced_executions.get(),
        kafka.dlq_topic,
        bridge_stats.acknowledged.get()
    );
    outln!(
        "Parquet stage: read {} records from Kafka → {} job_events rows, {} job_execution_events rows in {} files ({} bytes) under {}",
        get(&stage_stats.records),
        get(&stage_stats.job_rows),
        get(&stage_stats.execution_rows),
        get(&stage_stats.files),
        get(&stage_stats.file_bytes),
        parquet_root.display()
    );
    outln!("done in {:.1} s", started.elapsed().as_secs_f64());
    outln!(
        "query it: duckdb -c \"SELECT operation, count(*) FROM read_parquet('{}/job_execution_events/*/*.parquet', hive_partitioning=true) GROUP BY 1\"",
        parquet_root.display()
    );
    Ok(())
}
