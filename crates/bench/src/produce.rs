//! The Kafka ceiling: the least a producer can do with a backlog already in memory, with the
//! producer settings every contender uses, so that the broker's intake is what is measured.
//!
//! The Python TSV producer this replaces was slower than jobstream itself (it parses each
//! payload for headers, in Python), so it was no ceiling. This one reads the capture once,
//! then hands each line's payload to librdkafka with its key and the `mqtt_topic` header and
//! nothing else, and waits for every delivery report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::error::{BenchError, IoContext as _, KafkaContext as _};
use jobstream_sink::kafka::parse_option;

/// How long the last deliveries may take once everything is handed over.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The raw producer's settings (`jobstream bench-produce`, which bench starts as its
/// `kafka-ceiling`).
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// Topic for JOB events.
    #[arg(long)]
    job_topic: String,
    /// Topic for JOB_EXECUTION events.
    #[arg(long)]
    execution_topic: String,
    /// The backlog as a capture: `TOPIC<TAB>PAYLOAD` lines.
    #[arg(long)]
    input: PathBuf,
    /// A librdkafka option KEY=VALUE (repeatable), after the contenders' shared settings.
    #[arg(long = "kafka-option", value_parser = parse_option)]
    kafka_options: Vec<(String, String)>,
}

/// Counts failed deliveries; librdkafka calls it from the producer's polling thread.
#[derive(Debug, Default)]
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces every line of the capture and waits for its delivery; returns the records sent.
///
/// Execution model: blocking, on the calling thread, plus librdkafka's threads and the
/// producer's polling thread.
///
/// # Errors
/// [`BenchError::Io`] when the capture cannot be read, [`BenchError::Kafka`] when the producer
/// cannot be created or a record cannot be queued, [`BenchError::Run`] when deliveries fail or
/// do not finish within two minutes.
pub fn produce(args: &ProduceArgs) -> Result<u64, BenchError> {
    let capture =
        std::fs::read(&args.input).io_with(|| format!("reading {}", args.input.display()))?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    for (key, value) in &args.kafka_options {
        config.set(key, value);
    }
    let producer: ThreadedProducer<Failures> = config
        .create_with_context(Failures::default())
        .kafka("creating the producer")?;
    let mut sent = 0u64;
    for line in capture.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Some(tab) = line.iter().position(|&b| b == b'\t') else {
            continue;
        };
        let (mqtt_topic, payload) = (&line[..tab], &line[tab + 1..]);
        let target = if contains(mqtt_topic, b"/jobExecution/") {
            &args.execution_topic
        } else {
            &args.job_topic
        };
        // The job id (JOB topics) or thing name (execution topics): the segment before last.
        let key = mqtt_topic
            .rsplit(|&b| b == b'/')
            .nth(1)
            .unwrap_or(mqtt_topic);
        let headers = OwnedHeaders::new().insert(Header {
            key: "mqtt_topic",
            value: Some(mqtt_topic),
        });
        let mut record = BaseRecord::to(target)
            .payload(payload)
            .key(key)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((source, _)) => {
                    return Err(BenchError::Kafka {
                        action: "producing".into(),
                        source,
                    })
                }
            }
        }
        sent += 1;
    }
    producer
        .flush(FLUSH_TIMEOUT)
        .kafka("waiting for the last deliveries")?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(BenchError::Run(format!(
            "{failed} of {sent} records were not delivered"
        )));
    }
    Ok(sent)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
