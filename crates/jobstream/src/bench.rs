//! `jobstream bench`: measured MQTT → Kafka ingest rates against baselines, in one run.
//!
//! For every contender and repetition the bench
//! 1. creates fresh Kafka topics and the contender's persistent MQTT session(s) (QoS 1
//!    subscriptions, then disconnected), and publishes the same backlog of N fleet events
//!    (`simulate`'s publisher; sent = acknowledged by the broker), so the broker holds them;
//! 2. starts the contender and times the drain: from spawning it until Kafka's high watermarks
//!    over the contender's topics add up to N (polled every `--sample-ms` with one ListOffsets
//!    request; the samples also give the rate-over-time chart). The raw ceiling
//!    (`mosquitto_sub -c -q 1 -C N > /dev/null`) is timed from spawn to exit;
//! 3. measures latency on a paced stream while the contender keeps running: M more events at
//!    R events/s; an event's latency is from the moment it was handed to the MQTT client to
//!    the first watermark sample that shows its (partition, offset) — an upper bound, at most
//!    one sample interval (plus a ListOffsets round trip) late;
//! 4. stops the contender (SIGTERM, graceful), reads its topics back from the beginning and
//!    counts lost and duplicated events by `eventId` against what was published, then reopens
//!    the MQTT session(s) to count messages the broker still held (unacknowledged) and drops
//!    them.
//!
//! CPU (utime + stime) and peak RSS (VmHWM) of the contender's processes come from /proc,
//! read when the drain completes: they cover start-up and the drain at full rate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use jobstream_bridge::config::ParsedUrl;
use jobstream_bridge::MqttConfig;
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_sink::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;

use crate::run::parse_key_value;
use crate::{Failure, EXIT_CONFIG};
use jobstream_publisher::{self as publisher, PublishSettings};

const PYTHON_BRIDGE: &str = include_str!("../../../benches/baselines/python_bridge.py");
const TSV_PRODUCER: &str = include_str!("../../../benches/baselines/tsv_producer.py");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Contender {
    /// `mosquitto_sub -c -q 1 -C N > /dev/null`: the broker's hand-off rate, doing nothing.
    Ceiling,
    /// The TSV producer reading the backlog from a file: Kafka's intake, no MQTT at all.
    KafkaCeiling,
    /// `jobstream run`, QoS 1 with end-to-end acknowledgements.
    Jobstream,
    /// paho-mqtt + confluent-kafka, acknowledging on receipt (benches/baselines).
    Python,
    /// `mosquitto_sub -F '%t\t%p' | python tsv_producer.py` (librdkafka ≥ 2.12).
    Pipeline,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Ceiling => "ceiling",
            Contender::KafkaCeiling => "kafka-ceiling",
            Contender::Jobstream => "jobstream",
            Contender::Python => "python",
            Contender::Pipeline => "pipeline",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Contender::Ceiling => "mosquitto_sub -c -q 1 > /dev/null (MQTT ceiling)",
            Contender::KafkaCeiling => "TSV producer from a file (Kafka ceiling, no MQTT)",
            Contender::Jobstream => "jobstream run, QoS 1, end-to-end acks",
            Contender::Python => "paho-mqtt + confluent-kafka bridge (acks on receipt)",
            Contender::Pipeline => "mosquitto_sub -F '%t\\t%p' | confluent-kafka producer",
        }
    }

    fn uses_mqtt(self) -> bool {
        self != Contender::KafkaCeiling
    }

    fn uses_kafka(self) -> bool {
        self != Contender::Ceiling
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// MQTT broker (mqtt://host:port). Default: start a mosquitto of our own (see
    /// scripts/bench-brokers for the same settings by hand).
    #[arg(long)]
    mqtt: Option<String>,
    /// Kafka bootstrap servers of a broker you run. Default: start an Apache Kafka of our own
    /// with --kafka-script.
    #[arg(long)]
    kafka: Option<String>,
    /// The script that starts Apache Kafka from its Maven Central jars (`scripts/kafka start`;
    /// `scripts/kafka fetch` gets the jars once).
    #[arg(
        long,
        default_value = "scripts/kafka",
        env = "JOBSTREAM_BENCH_KAFKA_SCRIPT"
    )]
    kafka_script: PathBuf,
    /// Events in each backlog (about: whole jobs are published).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Repetitions of the whole comparison (contenders interleaved in each).
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Contenders, in the order of the first repetition (later ones rotate it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,kafka-ceiling,jobstream,python,pipeline"
    )]
    contenders: Vec<Contender>,
    /// jobstream connection counts to measure (shared subscription under --scaling-prefix);
    /// `0` skips the scaling runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    scaling: Vec<usize>,
    /// Topic prefix of the scaling runs (mosquitto 2.0.11 cannot share `$` topics).
    #[arg(long, default_value = "bench/events/")]
    scaling_prefix: String,
    /// Events of the paced latency stream after each drain (0 skips latency).
    #[arg(long, default_value_t = 5_000)]
    latency_events: usize,
    /// Events per second of the latency stream (keep it below every contender's capacity).
    #[arg(long, default_value_t = 2_000.0)]
    latency_rate: f64,
    /// Milliseconds between Kafka watermark samples (progress, completion, latency).
    #[arg(long, default_value_t = 20)]
    sample_ms: u64,
    /// Read the topics back and match event ids when a run holds at most this many records;
    /// above, compare counts (reading back costs memory: one id per record).
    #[arg(long, default_value_t = 2_000_000)]
    verify_ids_up_to: u64,
    /// Partitions of each contender's topics.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// A librdkafka option KEY=VALUE for every contender's producer (repeatable).
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// Python with paho-mqtt and confluent-kafka, for the baselines.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// mosquitto_sub binary.
    #[arg(long, default_value = "mosquitto_sub")]
    mosquitto_sub: PathBuf,
    /// mosquitto binary (when bench starts the broker).
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Seconds a single drain may take before the run is recorded as failed.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The JSON result.
    #[arg(long, default_value = "bench-result.json")]
    output: PathBuf,
    /// The rate-over-time chart (SVG).
    #[arg(long, default_value = "bench-rate.svg")]
    chart: PathBuf,
    /// Skip the Kafka → Parquet measurement after the jobstream runs.
    #[arg(long)]
    no_parquet: bool,
    /// Working directory for logs, broker data and scripts (default: a new temporary one).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

fn config_error(message: impl Into<String>) -> Failure {
    Failure::new(EXIT_CONFIG, anyhow::anyhow!(message.into()))
}

/// A broker process bench started, stopped on drop.
#[derive(Debug)]
struct Managed(Child);

impl Drop for Managed {
    fn drop(&mut self) {
        let _ = signal(self.0.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, name: &str) -> std::io::Result<()> {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not open port {port} within 30 s (see its log in the work directory)")
}

fn start_mosquitto(args: &BenchArgs, dir: &Path) -> anyhow::Result<(Managed, String)> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n\
             # Unlimited in-flight window and queue: the backlog must fit, and the hand-off\n\
             # must not be throttled to 20 messages in flight (mosquitto's default).\n\
             max_inflight_messages 0\nmax_queued_messages 0\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    let child = Command::new(&args.mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", args.mosquitto.display()))?;
    let managed = Managed(child);
    wait_port(port, "mosquitto")?;
    Ok((managed, format!("mqtt://127.0.0.1:{port}")))
}

/// Starts Apache Kafka with `scripts/kafka start` (one KRaft node, freshly formatted, the same
/// settings as the tests' broker) and waits until its log says it started.
fn start_kafka(args: &BenchArgs, dir: &Path) -> anyhow::Result<(Managed, String, KafkaBroker)> {
    let (port, controller_port) = (free_port()?, free_port()?);
    let data = dir.join("kafka");
    std::fs::create_dir_all(&data)?;
    let libs = Command::new(&args.kafka_script)
        .arg("libs")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", args.kafka_script.display()))?;
    if !libs.status.success() {
        bail!(
            "no Apache Kafka to start: run `{} fetch` once (Maven resolves the broker's jars), or pass --kafka BROKERS for a broker you run",
            args.kafka_script.display()
        );
    }
    let libs = PathBuf::from(String::from_utf8_lossy(&libs.stdout).trim());
    let version = std::fs::read_dir(&libs)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            Some(
                name.strip_prefix("kafka_2.13-")?
                    .strip_suffix(".jar")?
                    .to_owned(),
            )
        });
    let child = Command::new(&args.kafka_script)
        .arg("start")
        .arg("--dir")
        .arg(&data)
        .args(["--port", &port.to_string()])
        .args(["--controller-port", &controller_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", args.kafka_script.display()))?;
    let mut managed = Managed(child);
    // The port opens before requests are served; the broker's own word is the signal.
    let log = data.join("kafka.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Kafka Server started")) {
            break;
        }
        if let Ok(Some(status)) = managed.0.try_wait() {
            bail!(
                "Apache Kafka exited ({status}) before it started: see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "Apache Kafka did not start within 120 s: see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let broker = KafkaBroker {
        started: true,
        version: version.map(|v| format!("Apache Kafka {v}")),
    };
    Ok((managed, format!("127.0.0.1:{port}"), broker))
}

/// CPU seconds and peak RSS of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcUsage {
    cpu_s: f64,
    hwm_kb: u64,
    zombie: bool,
}

/// Linux reports times in USER_HZ, which is 100 on every architecture Linux supports today.
const USER_HZ: f64 = 100.0;

fn proc_usage(pid: u32) -> Option<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z");
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let hwm_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    Some(ProcUsage {
        cpu_s: (utime + stime) / USER_HZ,
        hwm_kb,
        zombie,
    })
}

/// The processes of one contender.
#[derive(Debug)]
struct Running {
    children: Vec<Child>,
    /// Last usage seen per child (a zombie keeps its CPU times but not its memory figures).
    usage: Vec<ProcUsage>,
}

impl Running {
    fn sample(&mut self) {
        for (child, last) in self.children.iter().zip(self.usage.iter_mut()) {
            if let Some(now) = proc_usage(child.id()) {
                last.cpu_s = now.cpu_s;
                last.zombie = now.zombie;
                if now.hwm_kb > 0 {
                    last.hwm_kb = now.hwm_kb;
                }
            }
        }
    }

    fn total(&self) -> (f64, f64) {
        let cpu = self.usage.iter().map(|u| u.cpu_s).sum();
        let rss = self.usage.iter().map(|u| u.hwm_kb as f64 / 1024.0).sum();
        (cpu, rss)
    }

    /// Whether the first process (the one that ends the run on its own) has exited.
    fn first_exited(&self) -> bool {
        self.usage.first().is_some_and(|u| u.zombie)
    }

    fn stop(&mut self) -> Option<i32> {
        // The first process feeds the others (pipeline): stopping it lets them drain.
        if let Some(first) = self.children.first() {
            let _ = signal(first.id(), "TERM");
        }
        let mut code = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        let count = self.children.len();
        for (index, child) in self.children.iter_mut().enumerate() {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if index + 1 == count || code.is_none() {
                            code = status.code();
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        code
    }
}

/// One watermark sample: when it came back, and the high watermark of each partition.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    /// One past the last record of each partition.
    watermarks: Vec<i64>,
}

/// Polls the high watermarks of a contender's topics from a thread of its own.
#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    samples: Arc<std::sync::Mutex<Vec<Sample>>>,
    handle: std::thread::JoinHandle<()>,
}

fn consumer(brokers: &str, options: &[(String, String)]) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("jobstream-bench-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.wait.max.ms", "100");
    for (key, value) in options {
        if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") {
            config.set(key, value);
        }
    }
    config.create().context("creating a Kafka consumer")
}

fn partitions_list(topics: &[String], partitions: i32) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..partitions {
            // The offset field carries the timestamp for ListOffsets: -1 is "latest".
            list.add_partition_offset(topic, partition, Offset::End)?;
        }
    }
    Ok(list)
}

fn watermarks(consumer: &BaseConsumer, list: &TopicPartitionList) -> anyhow::Result<Vec<i64>> {
    let answer = consumer.offsets_for_times(list.clone(), Duration::from_secs(10))?;
    Ok(answer
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .collect())
}

impl Sampler {
    fn start(
        brokers: &str,
        options: &[(String, String)],
        topics: &[String],
        partitions: i32,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let consumer = consumer(brokers, options)?;
        let list = partitions_list(topics, partitions)?;
        watermarks(&consumer, &list).context("reading Kafka watermarks")?;
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
        let (thread_stop, thread_total, thread_samples) =
            (Arc::clone(&stop), Arc::clone(&total), Arc::clone(&samples));
        let handle = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    if let Ok(watermarks) = watermarks(&consumer, &list) {
                        let at = Instant::now();
                        let mut samples = thread_samples
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let sample = Sample { at, watermarks };
                        let sum: i64 = sample.watermarks.iter().sum();
                        thread_total.store(sum.max(0) as u64, Ordering::Relaxed);
                        samples.push(sample);
                    }
                    std::thread::sleep(every);
                }
            })
            .context("starting the sampler thread")?;
        Ok(Sampler {
            stop,
            total,
            samples,
            handle,
        })
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// When the first sample taken after `since` showed at least `n` records.
    fn reached(&self, n: u64, since: Instant) -> Option<Instant> {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples
            .iter()
            .filter(|s| s.at >= since)
            .find(|s| s.watermarks.iter().sum::<i64>().max(0) as u64 >= n)
            .map(|s| s.at)
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        std::mem::take(
            &mut *self
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Everything measured in one run of one contender.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct RunResult {
    contender: String,
    repetition: usize,
    connections: usize,
    topic_prefix: String,
    events: u64,
    payload_bytes: u64,
    seconds: f64,
    events_per_sec: f64,
    mb_per_sec: f64,
    ratio_to_ceiling: Option<f64>,
    cpu_seconds: f64,
    cpu_percent: f64,
    peak_rss_mb: f64,
    latency_events: u64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    kafka_records: Option<u64>,
    lost: Option<u64>,
    duplicated: Option<u64>,
    unexpected: Option<u64>,
    /// "event ids" (read back and matched) or "counts" (records in Kafka vs published).
    verified_by: String,
    left_at_broker: Option<u64>,
    exit_code: Option<i32>,
    error: Option<String>,
    /// Kafka → Parquet over this run's topics (the main jobstream run only).
    parquet: Option<ParquetResult>,
    parquet_error: Option<String>,
    /// (seconds since start, events in Kafka) for the chart.
    series: Vec<(f64, u64)>,
}

/// The Kafka → Parquet stage over a jobstream run's topics.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct ParquetResult {
    rows: u64,
    seconds: f64,
    rows_per_sec: f64,
    cpu_percent: f64,
    peak_rss_mb: f64,
}

/// What was published for one run: event ids, payload bytes, and the latency stream's
/// publish instants.
#[derive(Debug, Default)]
struct Published {
    backlog: HashSet<String>,
    bytes: u64,
    latency_ids: HashSet<String>,
    /// When each event of the latency stream was handed to the MQTT client, in order.
    latency_sent: Vec<Instant>,
}

fn event_id(payload: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"eventId\":\"";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = payload[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[start..start + len]).ok()
}

struct Bench {
    args: BenchArgs,
    mqtt_url: String,
    host: String,
    port: u16,
    kafka: String,
    kafka_options: Vec<(String, String)>,
    broker: KafkaBroker,
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
    python_bridge: PathBuf,
    tsv_producer: PathBuf,
    /// A copy of this binary: the runs keep using the same build even if target/ is rebuilt
    /// while the bench runs.
    jobstream_bin: PathBuf,
    run_counter: usize,
}

/// The Kafka broker the runs go to.
#[derive(Debug)]
struct KafkaBroker {
    /// Started by bench (else given with --kafka).
    started: bool,
    /// "Apache Kafka 4.1.1" when bench started it.
    version: Option<String>,
}

impl KafkaBroker {
    fn describe(&self) -> String {
        match (self.started, &self.version) {
            (true, Some(version)) => format!("{version}, started by bench"),
            (true, None) => "Apache Kafka, started by bench".to_owned(),
            (false, _) => "external broker (--kafka)".to_owned(),
        }
    }
}

/// One run to do.
#[derive(Debug, Clone)]
struct Plan {
    contender: Contender,
    repetition: usize,
    connections: usize,
    prefix: String,
    label: String,
}

impl Bench {
    fn filters(prefix: &str) -> Vec<String> {
        vec![
            format!("{prefix}job/+/+"),
            format!("{prefix}jobExecution/+/+"),
        ]
    }

    fn mqtt_config(&self, client_id: &str, plan: &Plan) -> MqttConfig {
        let mut mqtt = MqttConfig::new(self.mqtt_url.clone());
        mqtt.client_id = client_id.to_owned();
        mqtt.connections = plan.connections;
        mqtt.share_group = format!("{client_id}-group");
        mqtt.filters = Self::filters(&plan.prefix);
        mqtt
    }

    /// Opens each connection's session (clean session off, QoS 1 subscriptions), counts
    /// the messages the broker delivers within `listen`, and disconnects; `clean` then
    /// discards the session.
    fn session(&self, mqtt: &MqttConfig, listen: Duration, clean: bool) -> anyhow::Result<u64> {
        let subscriptions = mqtt.subscriptions();
        let mut received = 0;
        for index in 0..mqtt.connections.max(1) {
            let mut options = mqtt.options(index)?;
            options.set_manual_acks(false).set_clean_session(clean);
            let filters = subscriptions.clone();
            received += self.runtime.block_on(async move {
                let (client, mut eventloop) = AsyncClient::new(options, 64);
                let mut received = 0u64;
                let mut until: Option<tokio::time::Instant> = None;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let wait = until.unwrap_or(deadline);
                    let event = match tokio::time::timeout_at(wait, eventloop.poll()).await {
                        Ok(event) => event,
                        Err(_) if until.is_some() => break,
                        Err(_) => bail!("no SUBACK from the MQTT broker within 30 s"),
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) if !clean => {
                            let filters = filters
                                .iter()
                                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                                .collect::<Vec<_>>();
                            client.subscribe_many(filters).await?;
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            until = Some(tokio::time::Instant::now() + listen);
                        }
                        Ok(Event::Incoming(Packet::Publish(_))) => received += 1,
                        Ok(_) => {}
                        Err(error) => bail!("MQTT session set-up: {error}"),
                    }
                }
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                Ok(received)
            })?;
        }
        Ok(received)
    }

    fn publish_settings(&self, rate: Option<f64>) -> PublishSettings {
        let mut mqtt = MqttConfig::new(self.mqtt_url.clone());
        mqtt.client_id = format!("jobstream-bench-pub-{}", std::process::id());
        PublishSettings {
            mqtt,
            qos: QoS::AtLeastOnce,
            window: 1000,
            rate,
            connect_timeout: Duration::from_secs(10),
            progress: false,
        }
    }

    fn fleet(&self, seed: u64, events: usize, prefix: &str) -> Fleet {
        let things = 100;
        Fleet::new(FleetConfig {
            seed,
            jobs: events.div_ceil(things + 3).max(1),
            things_per_job: things,
            concurrent_jobs: 4,
            topic_prefix: prefix.to_owned(),
            start_epoch_s: FleetConfig::default().start_epoch_s,
            unknown_fields: false,
        })
    }

    fn spawn(&self, plan: &Plan, id: &str, topics: &[String], n: u64) -> anyhow::Result<Running> {
        let log = |name: &str| -> anyhow::Result<std::fs::File> {
            Ok(std::fs::File::create(
                self.dir.join(format!("{id}-{name}.log")),
            )?)
        };
        let kafka_args = |cmd: &mut Command| {
            cmd.arg("--brokers")
                .arg(&self.kafka)
                .arg("--job-topic")
                .arg(&topics[0])
                .arg("--execution-topic")
                .arg(&topics[1]);
            for (key, value) in &self.kafka_options {
                cmd.arg("--kafka-option").arg(format!("{key}={value}"));
            }
        };
        let filters = Self::filters(&plan.prefix);
        let mosquitto_sub = |extra: &[&str]| {
            let mut cmd = Command::new(&self.args.mosquitto_sub);
            cmd.args(["-h", &self.host, "-p", &self.port.to_string()])
                .args(["-c", "-q", "1", "-i", id]);
            for filter in &filters {
                cmd.arg("-t").arg(filter);
            }
            cmd.args(extra);
            cmd
        };
        let children = match plan.contender {
            Contender::Ceiling => vec![mosquitto_sub(&["-C", &n.to_string()])
                .stdout(Stdio::null())
                .stderr(log("stderr")?)
                .spawn()
                .context("cannot start mosquitto_sub")?],
            Contender::KafkaCeiling => {
                let mut cmd = Command::new(&self.args.python);
                cmd.arg(&self.tsv_producer);
                kafka_args(&mut cmd);
                vec![cmd
                    .stdin(std::fs::File::open(self.dir.join(format!("{id}.tsv")))?)
                    .stdout(Stdio::null())
                    .stderr(log("stderr")?)
                    .spawn()
                    .context("cannot start the TSV producer (--python)")?]
            }
            Contender::Pipeline => {
                let mut sub = mosquitto_sub(&["-F", "%t\t%p"])
                    .stdout(Stdio::piped())
                    .stderr(log("sub")?)
                    .spawn()
                    .context("cannot start mosquitto_sub")?;
                let pipe = sub
                    .stdout
                    .take()
                    .context("mosquitto_sub has no standard output")?;
                let mut cmd = Command::new(&self.args.python);
                cmd.arg(&self.tsv_producer);
                kafka_args(&mut cmd);
                let producer = cmd
                    .stdin(pipe)
                    .stdout(Stdio::null())
                    .stderr(log("producer")?)
                    .spawn()
                    .context("cannot start the TSV producer (--python)")?;
                vec![sub, producer]
            }
            Contender::Python => {
                let mut cmd = Command::new(&self.args.python);
                cmd.arg(&self.python_bridge)
                    .args(["--mqtt-host", &self.host])
                    .args(["--mqtt-port", &self.port.to_string()])
                    .args(["--client-id", id]);
                for filter in &filters {
                    cmd.arg("--filter").arg(filter);
                }
                kafka_args(&mut cmd);
                vec![cmd
                    .stdout(Stdio::null())
                    .stderr(log("stderr")?)
                    .spawn()
                    .context("cannot start the Python bridge (--python)")?]
            }
            Contender::Jobstream => {
                let config = self.dir.join(format!("{id}.toml"));
                let mut options = String::new();
                for (key, value) in &self.kafka_options {
                    let _ = writeln!(options, "{} = {}", json!(key), json!(value));
                }
                std::fs::write(
                    &config,
                    format!(
                        "[mqtt]\nurl = {url}\nclient_id = {id}\nconnections = {conns}\nshare_group = {group}\n\
                         filters = {filters}\nqos = 1\n\n[kafka]\nbrokers = {kafka}\njob_topic = {jobs}\n\
                         execution_topic = {execs}\ndlq_topic = {dlq}\npartitions = {parts}\n\n\
                         [kafka.options]\n{options}\n[pipeline]\ntopic_prefix = {prefix}\ndrain_timeout_secs = 120\n",
                        url = json!(self.mqtt_url),
                        id = json!(id),
                        conns = plan.connections,
                        group = json!(format!("{id}-group")),
                        filters = json!(filters),
                        kafka = json!(self.kafka),
                        jobs = json!(topics[0]),
                        execs = json!(topics[1]),
                        dlq = json!(topics[2]),
                        parts = self.args.partitions,
                        prefix = json!(plan.prefix),
                    ),
                )?;
                vec![Command::new(&self.jobstream_bin)
                    .args(["run", "--stats-every-secs", "1", "--config"])
                    .arg(&config)
                    .env("JOBSTREAM_LOG", "warn")
                    .stdout(log("stdout")?)
                    .stderr(log("stderr")?)
                    .spawn()
                    .context("cannot start jobstream run")?]
            }
        };
        let usage = vec![ProcUsage::default(); children.len()];
        Ok(Running { children, usage })
    }

    fn run_one(&mut self, plan: &Plan, progress: &indicatif::ProgressBar) -> RunResult {
        let mut result = RunResult {
            contender: plan.label.clone(),
            repetition: plan.repetition,
            connections: plan.connections,
            topic_prefix: plan.prefix.clone(),
            ..RunResult::default()
        };
        if let Err(error) = self.try_run(plan, progress, &mut result) {
            result.error = Some(format!("{error:#}"));
        }
        result
    }

    fn try_run(
        &mut self,
        plan: &Plan,
        progress: &indicatif::ProgressBar,
        result: &mut RunResult,
    ) -> anyhow::Result<()> {
        self.run_counter += 1;
        let id = format!(
            "bench-{}-{}-{}-c{}",
            std::process::id(),
            self.run_counter,
            plan.contender.label(),
            plan.connections
        );
        let topics: Vec<String> = ["jobs", "executions", "dlq"]
            .iter()
            .map(|t| format!("{id}-{t}"))
            .collect();
        let mqtt = self.mqtt_config(&id, plan);
        let seed = 1000 + plan.repetition as u64;

        // 1. topics, sessions, backlog
        if plan.contender.uses_kafka() {
            let mut kafka = KafkaConfig::new(self.kafka.clone());
            kafka.job_topic = topics[0].clone();
            kafka.execution_topic = topics[1].clone();
            kafka.dlq_topic = topics[2].clone();
            kafka.partitions = self.args.partitions;
            kafka.options = self.kafka_options.iter().cloned().collect();
            self.runtime
                .block_on(jobstream_sink::kafka::ensure_topics(&kafka))
                .context("creating the run's Kafka topics")?;
        }
        let mut published = Published::default();
        let fleet = self.fleet(seed, self.args.events, &plan.prefix);
        if plan.contender.uses_mqtt() {
            self.session(&mqtt, Duration::ZERO, false)?;
            progress.set_message(format!("{}: queueing the backlog", plan.label));
            let settings = self.publish_settings(None);
            let sent = self
                .runtime
                .block_on(publisher::publish(&settings, fleet, |m| {
                    if let Some(id) = event_id(&m.payload) {
                        published.backlog.insert(id.to_owned());
                    }
                }))?;
            published.bytes = sent.tally.bytes;
        } else {
            let mut out =
                std::io::BufWriter::new(std::fs::File::create(self.dir.join(format!("{id}.tsv")))?);
            for message in fleet {
                if let Some(id) = event_id(&message.payload) {
                    published.backlog.insert(id.to_owned());
                }
                published.bytes += message.payload.len() as u64;
                crate::generate::write_capture_line(&mut out, &message)?;
            }
            out.flush()?;
        }
        let n = published.backlog.len() as u64;
        result.events = n;
        result.payload_bytes = published.bytes;

        // 2. the timed drain
        let sampler = if plan.contender.uses_kafka() {
            Some(Sampler::start(
                &self.kafka,
                &self.kafka_options,
                &topics[..2],
                self.args.partitions,
                Duration::from_millis(self.args.sample_ms.max(1)),
            )?)
        } else {
            None
        };
        progress.reset();
        progress.set_length(n);
        progress.set_message(format!("{}: draining", plan.label));
        let started = Instant::now();
        let mut running = self.spawn(plan, &id, &topics, n)?;
        let deadline = started + Duration::from_secs(self.args.timeout_secs);
        let drained = loop {
            running.sample();
            let done = match &sampler {
                Some(s) => {
                    progress.set_position(s.total().min(n));
                    s.total() >= n
                }
                None => running.first_exited(),
            };
            if done {
                let now = Instant::now();
                let at = sampler.as_ref().and_then(|s| s.reached(n, started));
                break at.unwrap_or(now).saturating_duration_since(started);
            }
            // The Kafka ceiling's producer ends by itself at the end of its file; the drain
            // ends when Kafka shows every record.
            if sampler.is_some()
                && running.first_exited()
                && plan.contender != Contender::KafkaCeiling
            {
                running.stop();
                bail!(
                    "{} exited before draining the backlog (see {}/{id}-*.log)",
                    plan.label,
                    self.dir.display()
                );
            }
            if Instant::now() > deadline {
                running.stop();
                bail!("the drain took longer than {} s", self.args.timeout_secs);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        running.sample();
        let (cpu, rss) = running.total();
        result.seconds = drained.as_secs_f64();
        result.events_per_sec = n as f64 / result.seconds;
        result.mb_per_sec = published.bytes as f64 / 1e6 / result.seconds;
        result.cpu_seconds = cpu;
        result.cpu_percent = 100.0 * cpu / result.seconds;
        result.peak_rss_mb = rss;
        progress.set_position(n);

        // 3. latency on a paced stream
        let latency_n = if plan.contender.uses_mqtt() && plan.contender.uses_kafka() {
            self.args.latency_events
        } else {
            0
        };
        if latency_n > 0 {
            progress.set_message(format!("{}: latency stream", plan.label));
            let settings = self.publish_settings(Some(self.args.latency_rate.max(1.0)));
            let fleet = self.fleet(seed + 500_000, latency_n, &plan.prefix);
            let (ids, sent) = (&mut published.latency_ids, &mut published.latency_sent);
            self.runtime
                .block_on(publisher::publish(&settings, fleet, |m| {
                    if let Some(id) = event_id(&m.payload) {
                        ids.insert(id.to_owned());
                        sent.push(Instant::now());
                    }
                }))?;
            result.latency_events = published.latency_sent.len() as u64;
            let target = n + published.latency_sent.len() as u64;
            let wait_until = Instant::now() + Duration::from_secs(120);
            while sampler.as_ref().is_some_and(|s| s.total() < target) {
                if Instant::now() > wait_until || running.first_exited() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        // 4. stop, read back, count
        progress.set_message(format!("{}: checking", plan.label));
        if plan.contender != Contender::Ceiling {
            result.exit_code = running.stop();
        } else {
            result.exit_code = running.children[0].wait().ok().and_then(|s| s.code());
        }
        let samples = sampler.map(Sampler::finish).unwrap_or_default();
        result.series = match samples.is_empty() {
            true => vec![(0.0, 0), (result.seconds, n)],
            false => samples
                .iter()
                .filter(|s| s.at >= started)
                .map(|s| {
                    (
                        (s.at - started).as_secs_f64(),
                        s.watermarks.iter().sum::<i64>().max(0) as u64,
                    )
                })
                .take_while(|(_, count)| *count <= n)
                .collect(),
        };
        if plan.contender.uses_kafka() {
            latency(n, &published.latency_sent, &samples, result);
            self.check_kafka(&topics, &published, result)?;
        }
        if plan.contender == Contender::Jobstream
            && plan.label == Contender::Jobstream.label()
            && !self.args.no_parquet
        {
            progress.set_message(format!("{}: Kafka → Parquet", plan.label));
            match self.parquet_stage(&id, &topics) {
                Ok(stage) => result.parquet = Some(stage),
                Err(error) => result.parquet_error = Some(format!("{error:#}")),
            }
        }
        if plan.contender.uses_mqtt() {
            result.left_at_broker = Some(self.session(&mqtt, Duration::from_millis(500), false)?);
            self.session(&mqtt, Duration::ZERO, true)?;
        }
        Ok(())
    }

    /// Kafka → Parquet: `jobstream run --parquet DIR --stop-at-end` over the run's topics,
    /// timed from spawn to exit.
    fn parquet_stage(&self, id: &str, topics: &[String]) -> anyhow::Result<ParquetResult> {
        let config = self.dir.join(format!("{id}-parquet.toml"));
        let out = self.dir.join(format!("{id}-parquet"));
        let mut options = String::new();
        for (key, value) in &self.kafka_options {
            // Producer-only settings would only draw warnings from the consumer.
            if !key.starts_with("max.in.flight") {
                let _ = writeln!(options, "{} = {}", json!(key), json!(value));
            }
        }
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = {}\njob_topic = {}\nexecution_topic = {}\ndlq_topic = {}\n\n\
                 [kafka.options]\n{options}\n[parquet]\ndir = {}\ngroup_id = {}\n",
                json!(self.kafka),
                json!(topics[0]),
                json!(topics[1]),
                json!(topics[2]),
                json!(out),
                json!(format!("{id}-parquet")),
            ),
        )?;
        let stdout = self.dir.join(format!("{id}-parquet-stdout.log"));
        let started = Instant::now();
        let child = Command::new(&self.jobstream_bin)
            .args(["run", "--stop-at-end", "--config"])
            .arg(&config)
            .env("JOBSTREAM_LOG", "warn")
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(
                self.dir.join(format!("{id}-parquet-stderr.log")),
            )?)
            .spawn()
            .context("cannot start jobstream run --parquet")?;
        let mut running = Running {
            usage: vec![ProcUsage::default()],
            children: vec![child],
        };
        // A backfill of this size takes seconds; a stage that has not ended after five minutes
        // (or --timeout-secs) is stuck, and the rest of the bench should go on.
        let limit = self.args.timeout_secs.min(300);
        let deadline = started + Duration::from_secs(limit);
        loop {
            running.sample();
            if running.first_exited() {
                break;
            }
            if Instant::now() > deadline {
                running.stop();
                bail!("the Parquet stage had not ended after {limit} s (see {id}-parquet-*.log)");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let seconds = started.elapsed().as_secs_f64();
        let (cpu, rss) = running.total();
        let code = running.children[0].wait().ok().and_then(|s| s.code());
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        let rows = text
            .split(" | ")
            .find_map(|part| part.strip_prefix("published "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        let Some(rows) = rows.filter(|_| code == Some(0)) else {
            bail!(
                "jobstream run --parquet exited with {code:?} (see {}-parquet-*.log)",
                id
            );
        };
        Ok(ParquetResult {
            rows,
            seconds,
            rows_per_sec: rows as f64 / seconds,
            cpu_percent: 100.0 * cpu / seconds,
            peak_rss_mb: rss,
        })
    }

    fn check_kafka(
        &self,
        topics: &[String],
        published: &Published,
        result: &mut RunResult,
    ) -> anyhow::Result<()> {
        let consumer = consumer(&self.kafka, &self.kafka_options)?;
        let list = partitions_list(&topics[..2], self.args.partitions)?;
        let ends = watermarks(&consumer, &list)?;
        let total = ends.iter().sum::<i64>().max(0) as u64;
        let expected = (published.backlog.len() + published.latency_ids.len()) as u64;
        result.kafka_records = Some(total);
        if total > self.args.verify_ids_up_to {
            // Past the limit the ids would not fit the memory we allow ourselves: count instead.
            // Counts cannot tell one loss plus one duplicate from neither; the event-id check
            // below can.
            result.verified_by = "counts".to_owned();
            result.lost = Some(expected.saturating_sub(total));
            result.duplicated = Some(total.saturating_sub(expected));
            return Ok(());
        }
        result.verified_by = "event ids".to_owned();
        let mut assignment = TopicPartitionList::new();
        for element in list.elements() {
            assignment.add_partition_offset(
                element.topic(),
                element.partition(),
                Offset::Beginning,
            )?;
        }
        consumer.assign(&assignment)?;
        let index_of = |topic: &str, partition: i32| -> Option<usize> {
            let t = topics.iter().position(|t| t == topic)?;
            Some(t * self.args.partitions as usize + usize::try_from(partition).ok()?)
        };
        let mut next = vec![0i64; ends.len()];
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut records = 0u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while next.iter().zip(&ends).any(|(n, e)| n < e) {
            if Instant::now() > deadline {
                bail!("reading the run's topics back took over 10 minutes");
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            let Some(slot) = index_of(message.topic(), message.partition()) else {
                continue;
            };
            next[slot] = next[slot].max(message.offset() + 1);
            records += 1;
            let Some(id) = message.payload().and_then(event_id) else {
                continue;
            };
            *seen.entry(id.to_owned()).or_default() += 1;
        }
        let mut lost = 0u64;
        let mut duplicated = 0u64;
        for id in published.backlog.iter().chain(&published.latency_ids) {
            match seen.get(id) {
                None | Some(0) => lost += 1,
                Some(&c) => duplicated += c - 1,
            }
        }
        let known: u64 = published
            .backlog
            .iter()
            .chain(&published.latency_ids)
            .filter_map(|id| seen.get(id))
            .sum();
        result.kafka_records = Some(records);
        result.lost = Some(lost);
        result.duplicated = Some(duplicated);
        result.unexpected = Some(records - known);
        Ok(())
    }
}

/// Publish → Kafka latency of the paced stream: the k-th event published after the backlog is
/// matched with the first watermark sample showing `backlog + k` records. Exact when Kafka
/// confirms in publish order; otherwise it pairs the k-th publish with the k-th confirmation,
/// which keeps the mean exact and moves percentiles only by the reordering (milliseconds at a
/// pace far below capacity). Each value is an upper bound, late by at most one sample interval
/// plus a ListOffsets round trip.
fn latency(backlog: u64, sent: &[Instant], samples: &[Sample], result: &mut RunResult) {
    let mut latencies = Vec::with_capacity(sent.len());
    let mut next = 0;
    for (k, sent_at) in sent.iter().enumerate() {
        let target = backlog + k as u64 + 1;
        while next < samples.len()
            && (samples[next].watermarks.iter().sum::<i64>().max(0) as u64) < target
        {
            next += 1;
        }
        let Some(sample) = samples.get(next) else {
            break;
        };
        latencies.push(sample.at.saturating_duration_since(*sent_at).as_secs_f64() * 1e3);
    }
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        result.latency_p50_ms = Some(percentile(&latencies, 0.50));
        result.latency_p99_ms = Some(percentile(&latencies, 0.99));
        result.latency_max_ms = latencies.last().copied();
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median, minimum and maximum.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

fn spread_json(values: &[f64]) -> serde_json::Value {
    match spread(values) {
        Some((median, min, max)) => json!({ "median": median, "min": min, "max": max }),
        None => serde_json::Value::Null,
    }
}

fn first_line(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

fn machine(args: &BenchArgs, broker: &KafkaBroker) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gb": (memory_gb * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "mosquitto": first_line(&args.mosquitto, "-h"),
        "kafka": broker.version.clone(),
        "jobstream": env!("CARGO_PKG_VERSION"),
        "jobstream_build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// The rate over time of one run per contender (its median repetition), as an SVG.
fn chart(runs: &[&RunResult]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 230.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    const COLORS: &[&str] = &[
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#17becf",
    ];
    let rates: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| rate_series(&r.series)).collect();
    let max_t = runs
        .iter()
        .map(|r| r.seconds)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let max_rate = rates
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let (step_r, max_r) = nice_axis(max_rate);
    let (step_t, max_t) = nice_axis(max_t);
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / max_t;
    let y = |r: f64| H - BOTTOM - (H - TOP - BOTTOM) * r / max_r;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15">jobstream bench: drain rate over time (events/s into Kafka; ceiling: average)</text>"#
    );
    let mut r = 0.0;
    while r <= max_r + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            y(r),
            y(r),
            LEFT - 6.0,
            y(r) + 4.0,
            human(r)
        );
        r += step_r;
    }
    let mut t = 0.0;
    while t <= max_t + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(t),
            x(t),
            TOP,
            H - BOTTOM,
            x(t),
            H - BOTTOM + 16.0,
            format_seconds(t)
        );
        t += step_t;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the contender started</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0
    );
    for (i, (run, points)) in runs.iter().zip(&rates).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(t, r)| format!("{:.1},{:.1}", x(*t), y(*r)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} ({})</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 32.0,
            W - RIGHT + 38.0,
            ly + 4.0,
            xml_escape(&run.contender),
            human(run.events_per_sec)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Events/s over windows of about 200 ms from cumulative (t, count) samples.
fn rate_series(series: &[(f64, u64)]) -> Vec<(f64, f64)> {
    if series.len() == 2 && series[0].1 == 0 {
        // Only start and end are known (the ceiling): its average rate.
        let (t, n) = series[1];
        let rate = n as f64 / t.max(1e-9);
        return vec![(0.0, rate), (t, rate)];
    }
    let mut out = vec![(0.0, 0.0)];
    let mut last = (0.0, 0u64);
    for &(t, count) in series {
        if t - last.0 >= 0.2 {
            let rate = (count.saturating_sub(last.1)) as f64 / (t - last.0);
            out.push(((t + last.0) / 2.0, rate));
            last = (t, count);
        }
    }
    out
}

fn nice_axis(max: f64) -> (f64, f64) {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    (step, (max / step).ceil() * step)
}

fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn format_seconds(t: f64) -> String {
    if t.fract().abs() < 1e-9 {
        format!("{t:.0}")
    } else {
        format!("{t:.2}")
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_opt(value: Option<(f64, f64, f64)>, unit: &str, digits: usize) -> String {
    match value {
        Some((m, lo, hi)) => format!("{m:.digits$}{unit} ({lo:.digits$}–{hi:.digits$})"),
        None => "—".to_owned(),
    }
}

fn sum_opt(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let mut any = false;
    let mut total = 0;
    for v in values.flatten() {
        any = true;
        total += v;
    }
    any.then_some(total)
}

/// Creates the folder `path` is to be written in and checks that the file can be written
/// there, leaving no empty file behind.
fn prepare_output(flag: &str, path: &Path) -> Result<(), Failure> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let existed = path.exists();
    std::fs::create_dir_all(folder)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map(drop)
        })
        .and_then(|()| {
            if existed {
                Ok(())
            } else {
                std::fs::remove_file(path)
            }
        })
        .map_err(|e| {
            Failure::new(
                crate::EXIT_IO,
                anyhow::anyhow!(
                    "{flag} {}: cannot be written ({e}); name a file in a writable folder",
                    path.display()
                ),
            )
        })
}

pub fn run(args: BenchArgs) -> Result<(), Failure> {
    if args.events == 0 || args.repetitions == 0 {
        return Err(config_error(
            "--events and --repetitions must be at least 1",
        ));
    }
    if args.contenders.is_empty() {
        return Err(config_error(
            "--contenders must name at least one contender",
        ));
    }
    if args.scaling.iter().any(|&c| c > 64) {
        return Err(config_error(
            "--scaling connection counts must be 64 or fewer",
        ));
    }
    if !(args.latency_rate.is_finite() && args.latency_rate > 0.0) {
        return Err(config_error(
            "--latency-rate must be a positive number of events per second",
        ));
    }
    if args.partitions < 1 {
        return Err(config_error("--partitions must be at least 1"));
    }
    // Checked before minutes of measuring, not after them: a result that cannot be written is
    // a whole run lost.
    for (flag, path) in [("--output", &args.output), ("--chart", &args.chart)] {
        prepare_output(flag, path)?;
    }
    let needs_python = args.contenders.iter().any(|c| {
        matches!(
            c,
            Contender::Python | Contender::Pipeline | Contender::KafkaCeiling
        )
    });
    if needs_python && !args.python.exists() {
        return Err(config_error(format!(
            "--python {} does not exist; the Python baselines need a Python with paho-mqtt and confluent-kafka (scripts/test-env makes .venv)",
            args.python.display()
        )));
    }
    let temp;
    let dir = match &args.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile_dir()?;
            temp.clone()
        }
    };
    let (_mosquitto, mqtt_url) = match &args.mqtt {
        Some(url) => (None, url.clone()),
        None => {
            let (broker, url) = start_mosquitto(&args, &dir)?;
            (Some(broker), url)
        }
    };
    let kafka_options = args.kafka_options.clone();
    let (_kafka, kafka, broker) = match &args.kafka {
        Some(brokers) => {
            let broker = KafkaBroker {
                started: false,
                version: None,
            };
            (None, brokers.clone(), broker)
        }
        None => {
            let (managed, brokers, broker) = start_kafka(&args, &dir)?;
            (Some(managed), brokers, broker)
        }
    };
    let url = ParsedUrl::parse(&mqtt_url).map_err(|e| config_error(e.to_string()))?;
    if url.tls {
        return Err(config_error(
            "bench drives mosquitto_sub and paho without TLS: pass an mqtt:// URL",
        ));
    }
    let python_bridge = dir.join("python_bridge.py");
    let tsv_producer = dir.join("tsv_producer.py");
    std::fs::write(&python_bridge, PYTHON_BRIDGE)
        .and_then(|()| std::fs::write(&tsv_producer, TSV_PRODUCER))
        .context("writing the baseline scripts")?;
    let jobstream_bin = dir.join("jobstream");
    std::env::current_exe()
        .and_then(|exe| std::fs::copy(exe, &jobstream_bin))
        .context("copying the jobstream binary into the work directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut bench = Bench {
        mqtt_url,
        host: url.host,
        port: url.port,
        kafka,
        kafka_options,
        broker,
        dir: dir.clone(),
        runtime,
        python_bridge,
        tsv_producer,
        jobstream_bin,
        run_counter: 0,
        args,
    };

    let mut plans = Vec::new();
    let scaling: Vec<usize> = bench
        .args
        .scaling
        .iter()
        .copied()
        .filter(|&c| c > 0)
        .collect();
    for repetition in 0..bench.args.repetitions {
        let mut round: Vec<Plan> = bench
            .args
            .contenders
            .iter()
            .map(|&contender| Plan {
                contender,
                repetition,
                connections: 1,
                prefix: "$aws/events/".to_owned(),
                label: contender.label().to_owned(),
            })
            .collect();
        for &connections in &scaling {
            round.push(Plan {
                contender: Contender::Jobstream,
                repetition,
                connections,
                prefix: bench.args.scaling_prefix.clone(),
                label: format!("jobstream ×{connections} (shared)"),
            });
        }
        // Interleave: each repetition starts one contender later, so that a slow spell of this
        // noisy machine does not always land on the same contender.
        let shift = repetition % round.len();
        round.rotate_left(shift);
        plans.extend(round);
    }

    eprintln!(
        "bench: {} runs ({} repetitions) on mqtt {} and kafka {} ({}); logs in {}",
        plans.len(),
        bench.args.repetitions,
        bench.mqtt_url,
        bench.kafka,
        bench.broker.describe(),
        dir.display()
    );
    let progress = indicatif::ProgressBar::new(0);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results: Vec<RunResult> = Vec::new();
    for (index, plan) in plans.iter().enumerate() {
        progress.set_prefix(format!(
            "[{}/{} rep {}]",
            index + 1,
            plans.len(),
            plan.repetition + 1
        ));
        let result = bench.run_one(plan, &progress);
        progress.suspend(|| match &result.error {
            Some(error) => eprintln!("bench: {} rep {}: FAILED: {error}", plan.label, plan.repetition + 1),
            None => eprintln!(
                "bench: {} rep {}: {} events in {:.2} s = {:.0} events/s, {:.1} MB/s, CPU {:.0}%, RSS {:.0} MB{}{}",
                plan.label,
                plan.repetition + 1,
                result.events,
                result.seconds,
                result.events_per_sec,
                result.mb_per_sec,
                result.cpu_percent,
                result.peak_rss_mb,
                result
                    .latency_p50_ms
                    .map(|p| format!(", latency p50 {p:.1} ms p99 {:.1} ms", result.latency_p99_ms.unwrap_or(f64::NAN)))
                    .unwrap_or_default(),
                match (result.lost, result.duplicated) {
                    (Some(l), Some(d)) => format!(", lost {l}, duplicated {d}"),
                    _ => String::new(),
                }
            ),
        });
        results.push(result);
    }
    progress.finish_and_clear();

    // Ratios within each repetition.
    let ceilings: BTreeMap<usize, f64> = results
        .iter()
        .filter(|r| r.contender == "ceiling" && r.error.is_none())
        .map(|r| (r.repetition, r.events_per_sec))
        .collect();
    let pythons: BTreeMap<usize, f64> = results
        .iter()
        .filter(|r| r.contender == "python" && r.error.is_none())
        .map(|r| (r.repetition, r.events_per_sec))
        .collect();
    for result in &mut results {
        if result.error.is_none() {
            result.ratio_to_ceiling = ceilings
                .get(&result.repetition)
                .map(|c| result.events_per_sec / c);
        }
    }
    let ratio_to_python: Vec<f64> = results
        .iter()
        .filter(|r| r.contender == "jobstream" && r.error.is_none())
        .filter_map(|r| pythons.get(&r.repetition).map(|p| r.events_per_sec / p))
        .collect();

    let mut labels: Vec<String> = Vec::new();
    for plan in plans
        .iter()
        .take(plans.len() / bench.args.repetitions.max(1))
    {
        if !labels.contains(&plan.label) {
            labels.push(plan.label.clone());
        }
    }
    // Table order: the contenders as given, then scaling.
    labels.sort_by_key(|l| {
        bench
            .args
            .contenders
            .iter()
            .position(|c| c.label() == l)
            .unwrap_or(usize::MAX)
    });

    let mut summary = Vec::new();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<24} {:>26} {:>8} {:>20} {:>9} {:>9} {:>7} {:>8} {:>6} {:>6} {:>5}",
        "contender",
        "events/s median (range)",
        "MB/s",
        "× ceiling (range)",
        "p50 ms",
        "p99 ms",
        "CPU %",
        "RSS MB",
        "lost",
        "dup",
        "fail"
    );
    let mut chart_runs = Vec::new();
    for label in &labels {
        let ok: Vec<&RunResult> = results
            .iter()
            .filter(|r| &r.contender == label && r.error.is_none())
            .collect();
        let failed = results
            .iter()
            .filter(|r| &r.contender == label && r.error.is_some())
            .count();
        let col = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
            ok.iter().filter_map(|r| f(r)).collect()
        };
        let rate = col(&|r| Some(r.events_per_sec));
        let mb = col(&|r| Some(r.mb_per_sec));
        let ratio = col(&|r| r.ratio_to_ceiling);
        let p50 = col(&|r| r.latency_p50_ms);
        let p99 = col(&|r| r.latency_p99_ms);
        let cpu = col(&|r| Some(r.cpu_percent));
        let rss = col(&|r| Some(r.peak_rss_mb));
        let lost = sum_opt(ok.iter().map(|r| r.lost));
        let dup = sum_opt(ok.iter().map(|r| r.duplicated));
        let median = |v: &[f64], digits: usize| {
            spread(v).map_or("—".to_owned(), |(m, _, _)| format!("{m:.digits$}"))
        };
        let _ = writeln!(
            table,
            "{:<24} {:>26} {:>8} {:>20} {:>9} {:>9} {:>7} {:>8} {:>6} {:>6} {:>5}",
            label,
            fmt_opt(spread(&rate), "", 0),
            median(&mb, 1),
            fmt_opt(spread(&ratio), "", 2),
            median(&p50, 1),
            median(&p99, 1),
            median(&cpu, 0),
            median(&rss, 0),
            lost.map_or("—".into(), |v| v.to_string()),
            dup.map_or("—".into(), |v| v.to_string()),
            failed
        );
        summary.push(json!({
            "contender": label,
            "runs": ok.len(),
            "failed": failed,
            "events_per_sec": spread_json(&rate),
            "mb_per_sec": spread_json(&mb),
            "ratio_to_ceiling": spread_json(&ratio),
            "latency_p50_ms": spread_json(&p50),
            "latency_p99_ms": spread_json(&p99),
            "cpu_percent": spread_json(&cpu),
            "peak_rss_mb": spread_json(&rss),
            "lost": lost,
            "duplicated": dup,
        }));
        // The chart shows the repetition with the median rate.
        if let Some((m, _, _)) = spread(&rate) {
            if let Some(run) = ok.iter().min_by(|a, b| {
                (a.events_per_sec - m)
                    .abs()
                    .total_cmp(&(b.events_per_sec - m).abs())
            }) {
                chart_runs.push(*run);
            }
        }
    }
    let parquet: Vec<&ParquetResult> = results.iter().filter_map(|r| r.parquet.as_ref()).collect();
    let parquet_rates: Vec<f64> = parquet.iter().map(|p| p.rows_per_sec).collect();
    if let Some((m, lo, hi)) = spread(&parquet_rates) {
        let cpu: Vec<f64> = parquet.iter().map(|p| p.cpu_percent).collect();
        let rss: Vec<f64> = parquet.iter().map(|p| p.peak_rss_mb).collect();
        let _ = writeln!(
            table,
            "\nKafka → Parquet (jobstream run --parquet --stop-at-end, from spawn to exit): {m:.0} rows/s ({lo:.0}–{hi:.0}), CPU {:.0}%, RSS {:.0} MB, {} runs",
            spread(&cpu).map_or(f64::NAN, |s| s.0),
            spread(&rss).map_or(f64::NAN, |s| s.0),
            parquet.len()
        );
    }
    for error in results.iter().filter_map(|r| r.parquet_error.as_ref()) {
        let _ = writeln!(table, "Kafka → Parquet failed: {error}");
    }
    let jobstream_vs_python = spread(&ratio_to_python);
    if let Some((m, lo, hi)) = jobstream_vs_python {
        let _ = writeln!(
            table,
            "\njobstream / python bridge: {m:.2}× (range {lo:.2}–{hi:.2}) over {} repetitions",
            ratio_to_python.len()
        );
    }
    let avg_payload = results
        .iter()
        .find(|r| r.events > 0)
        .map_or(0.0, |r| r.payload_bytes as f64 / r.events as f64);
    let _ = writeln!(
        table,
        "{} events per backlog, {:.0} B average payload, QoS 1, {} repetitions; Kafka ({}): acks=all, idempotent, lz4, linger.ms=5{}",
        bench.args.events,
        avg_payload,
        bench.args.repetitions,
        bench.broker.describe(),
        bench
            .kafka_options
            .iter()
            .map(|(k, v)| format!(", {k}={v}"))
            .collect::<String>()
    );
    out!("{table}");

    let result_json = json!({
        "machine": machine(&bench.args, &bench.broker),
        "settings": {
            "events": bench.args.events,
            "average_payload_bytes": avg_payload,
            "qos": 1,
            "repetitions": bench.args.repetitions,
            "latency_events": bench.args.latency_events,
            "latency_rate": bench.args.latency_rate,
            "sample_ms": bench.args.sample_ms,
            "partitions": bench.args.partitions,
            "mqtt": jobstream_bridge::config::redact(&bench.mqtt_url),
            "kafka": bench.kafka,
            "kafka_broker": {
                "started_by_bench": bench.broker.started,
                "version": bench.broker.version,
            },
            "kafka_producer": {
                "acks": "all", "enable.idempotence": true, "compression.type": "lz4", "linger.ms": 5,
                "options": bench.kafka_options.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            "contenders": bench.args.contenders.iter().map(|c| (c.label(), c.description())).collect::<BTreeMap<_, _>>(),
        },
        "summary": summary,
        "jobstream_vs_python": spread_json(&ratio_to_python),
        "kafka_to_parquet_rows_per_sec": spread_json(&parquet_rates),
        "runs": results,
    });
    let text = serde_json::to_string_pretty(&result_json).context("encoding the result")?;
    std::fs::write(&bench.args.output, format!("{text}\n"))
        .with_context(|| format!("cannot write {}", bench.args.output.display()))?;
    std::fs::write(&bench.args.chart, chart(&chart_runs))
        .with_context(|| format!("cannot write {}", bench.args.chart.display()))?;
    outln!(
        "wrote {} and {}",
        bench.args.output.display(),
        bench.args.chart.display()
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

/// A fresh directory under the system's temporary directory, kept for the logs.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "jobstream-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_percentiles_and_axes() {
        assert_eq!(
            event_id(br#"{"eventType":"JOB","eventId":"abc-1","x":1}"#),
            Some("abc-1")
        );
        assert_eq!(event_id(b"{}"), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(nice_axis(9.0), (2.0, 10.0));
        let rates = rate_series(&[(0.0, 0), (0.5, 1000)]);
        assert_eq!(rates, vec![(0.0, 2000.0), (0.5, 2000.0)]);
    }
}
