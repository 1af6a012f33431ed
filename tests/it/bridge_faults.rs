//! The bridge against librdkafka's mock cluster with produce errors injected, and a real
//! mosquitto in front: a record whose delivery fails is left unacknowledged, the broker
//! redelivers it, and that copy reaches Kafka — it is not taken for a duplicate of the copy
//! that failed. Needs `mosquitto` on PATH (scripts/test-env installs it). librdkafka's mock
//! cluster is here for what Apache Kafka cannot be made to do on cue: fail a produce request.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobstream_bridge::{BridgeConfig, BridgeStats, MqttConfig, Output};
use jobstream_sink::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

use crate::support::wait_for;

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

fn mosquitto(dir: &std::path::Path) -> (Mosquitto, u16) {
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n"),
    )
    .expect("config written");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto on PATH (scripts/test-env installs it)");
    let guard = Mosquitto(child);
    wait_for("mosquitto to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (guard, port)
}

fn execution(i: usize) -> (String, String) {
    let job = format!("job-{}", i % 7);
    let payload = format!(
        r#"{{"eventType":"JOB_EXECUTION","eventId":"event-{i:05}","timestamp":1795132800,"operation":"succeeded","jobId":"{job}","thingArn":"arn:aws:iot:us-east-1:123456789012:thing/t-{i}","status":"SUCCEEDED"}}"#
    );
    (format!("$aws/events/jobExecution/{job}/succeeded"), payload)
}

/// Publishes with QoS 1 from a client of its own and waits until the broker took each one.
async fn publish(port: u16, messages: &[(String, String)]) {
    let mut options = rumqttc::MqttOptions::new("publisher", "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    let owned = messages.to_vec();
    let sender = tokio::spawn(async move {
        for (topic, payload) in owned {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .expect("queued");
        }
        client
    });
    let mut acked = 0;
    while acked < messages.len() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
            eventloop.poll().await.expect("publisher connected")
        {
            acked += 1;
        }
    }
    let client = sender.await.expect("sender");
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_delivery_failed_is_redelivered_and_reaches_kafka() {
    let dir = std::env::temp_dir().join(format!("jobstream-mock-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (_mosquitto, port) = mosquitto(&dir);
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in ["jobs", "executions", "dlq"] {
        cluster.create_topic(topic, 3, 1).expect("topic");
    }
    // Produce requests fail for good (not retried by librdkafka): those records come back
    // as delivery failures.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION; 8],
    );

    let mut kafka = KafkaConfig::new(cluster.bootstrap_servers());
    kafka.job_topic = "jobs".into();
    kafka.execution_topic = "executions".into();
    kafka.dlq_topic = "dlq".into();
    kafka.create_topics = false;
    let mut mqtt = MqttConfig::new(format!("mqtt://127.0.0.1:{port}"));
    mqtt.client_id = "bridge-under-faults".into();
    let mut config = BridgeConfig::new(mqtt, Output::Kafka(kafka));
    config.pipeline.workers = 1;
    let stats = Arc::new(BridgeStats::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bridge = tokio::spawn(jobstream_bridge::run(config, Arc::clone(&stats), async {
        let _ = stopped.await;
    }));
    let subscribed = Arc::clone(&stats);
    tokio::task::spawn_blocking(move || {
        wait_for("the bridge to connect", Duration::from_secs(30), || {
            subscribed.connected.get() > 0
        });
    })
    .await
    .expect("waited");
    // The subscription follows the connection: publish after it is surely in place.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let messages: Vec<_> = (0..500).map(execution).collect();
    publish(port, &messages).await;
    let watched = Arc::clone(&stats);
    let total = messages.len() as u64;
    tokio::task::spawn_blocking(move || {
        wait_for(
            "every message acknowledged",
            Duration::from_secs(120),
            || watched.acknowledged.load(Ordering::Relaxed) >= total,
        );
    })
    .await
    .expect("waited");
    assert!(
        stats.delivery_failures.load(Ordering::Relaxed) > 0,
        "the injected errors failed deliveries"
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["executions"]).expect("subscribed");
    let mut ids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < messages.len() && Instant::now() < deadline {
        if let Some(Ok(record)) = consumer.poll(Duration::from_millis(100)) {
            let id = record
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event_id"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            ids.extend(id);
        }
    }
    let missing: Vec<_> = (0..messages.len())
        .map(|i| format!("event-{i:05}"))
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka: {missing:?}"
    );
    let _ = stop.send(());
    bridge.await.expect("joined").expect("the bridge drained");
    let _ = std::fs::remove_dir_all(&dir);
}
