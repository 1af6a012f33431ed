//! `jobstream run`: MQTT → Kafka, Kafka → Parquet, or both in one process, configured by a TOML
//! file, environment and flags (flags win over environment, which wins over the file, which
//! wins over the defaults). Which stages run follows from what is configured: an MQTT URL runs
//! the bridge, a Parquet directory runs the sink stage; Kafka sits between them either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use jobstream_bridge::{BridgeConfig, BridgeError, MqttConfig, Output};
use jobstream_parser::ParserConfig;
use jobstream_sink::consumer::StageConfig;
use jobstream_sink::kafka::KafkaConfig;
use jobstream_sink::parquet::ParquetConfig;
use serde::Deserialize;

use crate::{Failure, EXIT_CONFIG};

/// The configuration file (`--config`). Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The MQTT side.
    pub mqtt: MqttSettings,
    /// The Kafka side.
    pub kafka: KafkaSettings,
    /// Parsing and hand-off.
    pub pipeline: PipelineSettings,
    /// The Kafka → Parquet stage.
    pub parquet: ParquetSettings,
    /// The `/metrics`, `/health` and `/ready` endpoint.
    pub metrics: crate::ops::MetricsSettings,
    /// Log format and filter.
    pub log: crate::ops::LogSettings,
}

/// `[parquet]`: the Kafka → Parquet stage (runs when `dir` is set).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetSettings {
    /// Root directory of the two tables.
    pub dir: Option<PathBuf>,
    /// Kafka consumer group; processes with the same group share the partitions.
    pub group_id: Option<String>,
    /// zstd (default), lz4, snappy or none; `zstd:LEVEL` sets the level.
    pub compression: Option<String>,
    /// Page encoding of ids, ARNs and status details: delta (default) or plain (for readers
    /// without the delta encodings, such as Spark before 3.3).
    pub encodings: Option<String>,
    /// A file is published once it holds this many rows…
    pub max_file_rows: Option<u64>,
    /// …or this many bytes…
    pub max_file_bytes: Option<u64>,
    /// …or has been open this long, seconds…
    pub max_file_age_secs: Option<u64>,
    /// …or has received nothing for this long, seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Encoded bytes buffered before a row group is flushed (memory per open file).
    pub row_group_bytes: Option<usize>,
    /// Offsets per partition looked back at for an earlier copy of an event (same eventId);
    /// a copy found there is not written. 0 writes every copy.
    pub dedup_window: Option<u64>,
}

/// `[mqtt]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: Option<String>,
    /// Protocol version: "3.1.1" (default) or "5".
    pub version: Option<String>,
    /// MQTT 5: how long the broker keeps the session after a disconnect, seconds.
    pub session_expiry_secs: Option<u64>,
    /// Stable base client id (the broker keeps unacknowledged messages under it).
    pub client_id: Option<String>,
    /// Parallel connections (joined in a shared subscription when more than one).
    pub connections: Option<usize>,
    /// Shared subscription group name.
    pub share_group: Option<String>,
    /// Topic filters.
    pub filters: Option<Vec<String>>,
    /// 1 (acknowledged after Kafka) or 0 (fire-and-forget).
    pub qos: Option<u8>,
    /// Keep-alive, seconds.
    pub keep_alive_secs: Option<u64>,
    /// Largest payload kept whole; larger ones go to the DLQ cut to their first 64 KiB.
    pub max_packet_bytes: Option<usize>,
    /// How long the first connection may take, seconds.
    pub connect_timeout_secs: Option<u64>,
    /// User name.
    pub username: Option<String>,
    /// Password (prefer JOBSTREAM_MQTT_PASSWORD).
    pub password: Option<String>,
    /// CA certificate file (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate file (PEM).
    pub cert: Option<PathBuf>,
    /// Client key file (PEM; PKCS#1 or PKCS#8).
    pub key: Option<PathBuf>,
    /// ALPN protocol (`x-amzn-mqtt-ca` for AWS IoT Core on port 443; automatic there).
    pub alpn: Option<String>,
}

/// `[kafka]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: Option<String>,
    /// Topic for JOB events.
    pub job_topic: Option<String>,
    /// Topic for JOB_EXECUTION events.
    pub execution_topic: Option<String>,
    /// Topic for rejects.
    pub dlq_topic: Option<String>,
    /// lz4, zstd, snappy, gzip or none.
    pub compression: Option<String>,
    /// Partitions of topics created at start.
    pub partitions: Option<i32>,
    /// Replication factor of topics created at start (unset: the broker's
    /// `default.replication.factor`).
    pub replication: Option<i32>,
    /// Seconds the first connection may take before `run` gives up.
    pub connect_timeout_secs: Option<u64>,
    /// Create missing topics at start.
    pub create_topics: Option<bool>,
    /// Settings of the topics created at start (`min.insync.replicas`, `retention.ms`, …).
    pub topic_config: BTreeMap<String, String>,
    /// Records librdkafka may queue before producing waits (memory bound).
    pub max_queued: Option<usize>,
    /// librdkafka options passed through as they are.
    pub options: BTreeMap<String, String>,
}

/// `[pipeline]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Prefix before `job/` and `jobExecution/`.
    pub topic_prefix: Option<String>,
    /// Larger payloads go to the DLQ.
    pub max_payload_bytes: Option<usize>,
    /// Parser worker threads (MQTT → Kafka; MQTT → Parquet has one writer thread).
    pub workers: Option<usize>,
    /// Messages per hand-off batch.
    pub batch_size: Option<usize>,
    /// Batches queued between the network and the parsers.
    pub queue_batches: Option<usize>,
    /// Event ids remembered for duplicate detection (0 disables it).
    pub dedup_window: Option<usize>,
    /// Graceful shutdown deadline, seconds.
    pub drain_timeout_secs: Option<u64>,
}

/// Reads and checks a configuration file.
///
/// # Errors
/// The file cannot be read, or is not valid (the message names the key and line).
pub fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// How to authenticate to the MQTT broker: the flags `run` and `simulate` share.
#[derive(Debug, clap::Args)]
pub struct MqttAuthArgs {
    /// CA certificate (PEM) for mqtts://.
    #[arg(long, env = "JOBSTREAM_MQTT_CA")]
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "JOBSTREAM_MQTT_CERT")]
    pub mqtt_cert: Option<PathBuf>,
    /// Client private key (PEM, PKCS#1 or PKCS#8) for mutual TLS.
    #[arg(long, env = "JOBSTREAM_MQTT_KEY")]
    pub mqtt_key: Option<PathBuf>,
    /// ALPN protocol to offer (x-amzn-mqtt-ca is automatic on port 443).
    #[arg(long, env = "JOBSTREAM_MQTT_ALPN")]
    pub mqtt_alpn: Option<String>,
    /// MQTT user name.
    #[arg(long, env = "JOBSTREAM_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// MQTT password (prefer the environment variable; it is never logged).
    #[arg(long, env = "JOBSTREAM_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
}

impl MqttAuthArgs {
    /// Sets TLS files and credentials on `mqtt`, each flag winning over what is there.
    pub fn apply(&self, mqtt: &mut MqttConfig) {
        mqtt.tls.ca = self.mqtt_ca.clone().or(mqtt.tls.ca.take());
        mqtt.tls.cert = self.mqtt_cert.clone().or(mqtt.tls.cert.take());
        mqtt.tls.key = self.mqtt_key.clone().or(mqtt.tls.key.take());
        mqtt.tls.alpn = self.mqtt_alpn.clone().or(mqtt.tls.alpn.take());
        mqtt.username = self.mqtt_username.clone().or(mqtt.username.take());
        mqtt.password = self.mqtt_password.clone().or(mqtt.password.take());
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file (see docker/jobstream.toml).
    #[arg(long, env = "JOBSTREAM_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// MQTT broker URL: mqtt://host[:port] or mqtts://host[:port].
    #[arg(long, env = "JOBSTREAM_MQTT_URL")]
    mqtt: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "JOBSTREAM_KAFKA_BROKERS")]
    kafka: Option<String>,
    /// Parquet output directory: runs the Kafka → Parquet stage (alone without --mqtt); with
    /// --mqtt and no --kafka, MQTT goes straight to Parquet (acknowledged once a file is
    /// published).
    #[arg(long, env = "JOBSTREAM_PARQUET_DIR")]
    parquet: Option<PathBuf>,
    /// Kafka consumer group of the Parquet stage (members share the partitions).
    #[arg(long, env = "JOBSTREAM_GROUP_ID")]
    group_id: Option<String>,
    /// Publish a Parquet file once it has been open this many seconds.
    #[arg(long, env = "JOBSTREAM_MAX_FILE_AGE_SECS")]
    max_file_age_secs: Option<u64>,
    /// Publish a Parquet file once it holds this many rows.
    #[arg(long, env = "JOBSTREAM_MAX_FILE_ROWS")]
    max_file_rows: Option<u64>,
    /// Parquet stage: offsets per partition looked back at for an earlier copy of an event
    /// (same eventId), which is then not written (default 100000; 0 writes every copy).
    #[arg(long, env = "JOBSTREAM_PARQUET_DEDUP_WINDOW")]
    parquet_dedup_window: Option<u64>,
    /// Parquet stage alone: stop once every partition is read to the end it had at start
    /// (a backfill of what Kafka holds), publishing and committing everything.
    #[arg(long)]
    stop_at_end: bool,
    /// MQTT protocol version: 3.1.1 (default) or 5.
    #[arg(long, env = "JOBSTREAM_MQTT_VERSION")]
    mqtt_version: Option<String>,
    /// MQTT 5: how long the broker keeps the session (and its unacknowledged messages) after a
    /// disconnect, seconds (default a week).
    #[arg(long, env = "JOBSTREAM_MQTT_SESSION_EXPIRY_SECS")]
    mqtt_session_expiry_secs: Option<u64>,
    /// Largest MQTT payload kept whole (default 1 MiB); a larger message goes to the DLQ as
    /// payload_too_large with its first 64 KiB and its size, and is acknowledged.
    #[arg(long, env = "JOBSTREAM_MQTT_MAX_PACKET_BYTES")]
    mqtt_max_packet_bytes: Option<usize>,
    /// Stable MQTT client id.
    #[arg(long, env = "JOBSTREAM_MQTT_CLIENT_ID")]
    client_id: Option<String>,
    /// Parallel MQTT connections (shared subscription when more than one).
    #[arg(long, env = "JOBSTREAM_MQTT_CONNECTIONS")]
    connections: Option<usize>,
    /// Topic filter to subscribe to (repeat for several).
    #[arg(long = "filter", env = "JOBSTREAM_MQTT_FILTERS", value_delimiter = ',')]
    filters: Option<Vec<String>>,
    /// Subscription QoS: 1 (acknowledged after Kafka) or 0 (fire-and-forget: a crash loses
    /// what is in flight).
    #[arg(long, env = "JOBSTREAM_MQTT_QOS")]
    qos: Option<u8>,
    /// Topic prefix before job/ and jobExecution/.
    #[arg(long, env = "JOBSTREAM_TOPIC_PREFIX")]
    topic_prefix: Option<String>,
    /// TLS files and credentials.
    #[command(flatten)]
    mqtt_auth: MqttAuthArgs,
    /// A librdkafka option KEY=VALUE passed through (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// SASL user name for Kafka (librdkafka's `sasl.username`).
    #[arg(long, env = "JOBSTREAM_KAFKA_USERNAME")]
    kafka_username: Option<String>,
    /// SASL password for Kafka (`sasl.password`); best from the environment, which `ps` does
    /// not show.
    #[arg(long, env = "JOBSTREAM_KAFKA_PASSWORD", hide_env_values = true)]
    kafka_password: Option<String>,
    /// Parser worker threads (default: one per core). Without Kafka (`--mqtt` with
    /// `--parquet`) one writer thread parses and writes, and this is not used.
    #[arg(long, env = "JOBSTREAM_WORKERS")]
    workers: Option<usize>,
    /// Event ids remembered for duplicate detection (0 disables it).
    #[arg(long, env = "JOBSTREAM_DEDUP_WINDOW")]
    dedup_window: Option<usize>,
    /// Seconds the first connection to each broker (MQTT, Kafka) may take before giving up.
    #[arg(long, env = "JOBSTREAM_CONNECT_TIMEOUT_SECS")]
    connect_timeout_secs: Option<u64>,
    /// Check the configuration (file, environment, flags), print the effective settings and
    /// exit without connecting anywhere.
    #[arg(long)]
    check: bool,
    /// Print the counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 10)]
    stats_every_secs: u64,
    /// Serve /metrics (Prometheus), /health and /ready on this address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "JOBSTREAM_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

fn config_error(message: impl Into<String>) -> Failure {
    Failure::new(EXIT_CONFIG, anyhow::anyhow!(message.into()))
}

/// What `run` will do: the bridge, the Parquet stage, or both.
#[derive(Debug)]
pub struct Plan {
    /// MQTT → Kafka, when an MQTT URL is configured.
    pub bridge: Option<BridgeConfig>,
    /// Kafka → Parquet, when a Parquet directory is configured.
    pub stage: Option<StageConfig>,
}

/// Builds the plan from defaults, the file, the environment and the flags.
pub fn plan(args: &RunArgs) -> Result<Plan, Failure> {
    let settings = match &args.config {
        Some(path) => load_settings(path).map_err(|e| Failure::new(EXIT_CONFIG, e))?,
        None => Settings::default(),
    };
    let (m, k, p, q) = (
        settings.mqtt,
        settings.kafka,
        settings.pipeline,
        settings.parquet,
    );
    let url = args.mqtt.clone().or(m.url.clone());
    let parquet_dir = args.parquet.clone().or(q.dir.clone());
    if url.is_none() && parquet_dir.is_none() {
        return Err(config_error(
            "nothing to run: pass --mqtt mqtt://host:1883 to bridge MQTT into Kafka, --parquet DIR to write Kafka's events to Parquet, or both (or set mqtt.url / parquet.dir in --config)",
        ));
    }
    if args.stop_at_end && (url.is_some() || parquet_dir.is_none()) {
        return Err(config_error(
            "--stop-at-end applies to the Parquet stage alone: pass --parquet DIR without --mqtt",
        ));
    }
    let brokers = args.kafka.clone().or(k.brokers.clone());
    let parser = ParserConfig {
        topic_prefix: args
            .topic_prefix
            .clone()
            .or(p.topic_prefix.clone())
            .unwrap_or_else(|| jobstream_parser::DEFAULT_PREFIX.to_owned()),
        max_payload_bytes: p
            .max_payload_bytes
            .unwrap_or(jobstream_parser::DEFAULT_MAX_PAYLOAD_BYTES),
    };
    let Some(brokers) = brokers else {
        // MQTT straight to Parquet: no Kafka, no consumer group.
        return match (url, parquet_dir) {
            (Some(url), Some(dir)) => {
                let mut parquet = parquet_config(args, &q, dir)?;
                if args.max_file_age_secs.or(q.max_file_age_secs).is_none() {
                    parquet.max_file_age = Some(jobstream_bridge::DEFAULT_DIRECT_FILE_AGE);
                }
                let mut bridge = bridge_config(args, m, p, url, Output::Parquet(parquet), parser)?;
                bridge.crash = crash_point();
                Ok(Plan {
                    bridge: Some(bridge),
                    stage: None,
                })
            }
            _ => Err(config_error(
                "no Kafka brokers: pass --kafka host:9092 (or set kafka.brokers in --config, or JOBSTREAM_KAFKA_BROKERS); to write MQTT straight to Parquet without Kafka, pass both --mqtt and --parquet",
            )),
        };
    };
    let kafka = kafka_config(args, k, brokers)?;
    let stage = match parquet_dir {
        Some(dir) => Some(stage_config(args, q, dir, kafka.clone(), parser.clone())?),
        None => None,
    };
    let bridge = match url {
        Some(url) => Some(bridge_config(
            args,
            m,
            p,
            url,
            Output::Kafka(kafka),
            parser,
        )?),
        None => None,
    };
    Ok(Plan { bridge, stage })
}

fn stage_config(
    args: &RunArgs,
    q: ParquetSettings,
    dir: PathBuf,
    kafka: KafkaConfig,
    parser: ParserConfig,
) -> Result<StageConfig, Failure> {
    let parquet = parquet_config(args, &q, dir)?;
    let mut stage = StageConfig::new(kafka, parquet);
    if let Some(v) = args.group_id.clone().or(q.group_id) {
        if v.is_empty() {
            return Err(config_error("parquet.group_id must not be empty"));
        }
        stage.group_id = v;
    }
    stage.parser = parser;
    stage.stop_at_end = args.stop_at_end;
    if let Some(v) = args.parquet_dedup_window.or(q.dedup_window) {
        stage.dedup_window = v;
    }
    stage.crash = crash_point();
    stage
        .kafka
        .consumer_config(&stage.group_id)
        .map_err(|e| config_error(e.to_string()))?;
    Ok(stage)
}

/// Fault injection for the crash tests (test_parquet_stage.py, test_direct_parquet.py): abort
/// once `JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING` files were published, before their input is
/// committed or acknowledged. Only in builds with the `fault-injection` feature (the test
/// suite's); elsewhere the variable means nothing.
#[cfg(feature = "fault-injection")]
fn crash_point() -> jobstream_sink::CrashPoint {
    jobstream_sink::CrashPoint::after_publishing(
        std::env::var("JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING")
            .ok()
            .and_then(|v| v.parse().ok()),
    )
}

#[cfg(not(feature = "fault-injection"))]
fn crash_point() -> jobstream_sink::CrashPoint {
    jobstream_sink::CrashPoint::never()
}

/// The `[parquet]` settings and flags both Parquet writers share (the Kafka stage and direct
/// MQTT → Parquet).
fn parquet_config(
    args: &RunArgs,
    q: &ParquetSettings,
    dir: PathBuf,
) -> Result<ParquetConfig, Failure> {
    let mut parquet = ParquetConfig::new(dir);
    if let Some(v) = &q.compression {
        parquet.codec = v
            .parse()
            .map_err(|e| config_error(format!("parquet.compression = {v:?}: {e}")))?;
    }
    if let Some(v) = &q.encodings {
        parquet.encodings = v
            .parse()
            .map_err(|e| config_error(format!("parquet.encodings = {v:?}: {e}")))?;
    }
    if let Some(v) = args.max_file_rows.or(q.max_file_rows) {
        parquet.max_file_rows = v;
    }
    if let Some(v) = q.max_file_bytes {
        parquet.max_file_bytes = v;
    }
    if let Some(v) = args.max_file_age_secs.or(q.max_file_age_secs) {
        parquet.max_file_age = Some(Duration::from_secs(v.max(1)));
    }
    if let Some(v) = q.idle_timeout_secs {
        parquet.idle_timeout = Some(Duration::from_secs(v.max(1)));
    }
    if let Some(v) = q.row_group_bytes {
        parquet.row_group_bytes = v;
    }
    parquet
        .validate()
        .map_err(|e| config_error(e.to_string()))?;
    Ok(parquet)
}

fn bridge_config(
    args: &RunArgs,
    m: MqttSettings,
    p: PipelineSettings,
    url: String,
    output: Output,
    parser: ParserConfig,
) -> Result<BridgeConfig, Failure> {
    let mut mqtt = MqttConfig::new(url);
    if let Some(v) = args.mqtt_version.clone().or(m.version) {
        mqtt.version = v.parse().map_err(|e: BridgeError| {
            config_error(format!("mqtt.version / --mqtt-version: {e}"))
        })?;
    }
    if let Some(v) = args.mqtt_session_expiry_secs.or(m.session_expiry_secs) {
        if v == 0 {
            return Err(config_error(
                "mqtt.session_expiry_secs must be at least 1: with 0 the broker forgets the unacknowledged messages when the connection drops",
            ));
        }
        mqtt.session_expiry = Duration::from_secs(v);
    }
    if let Some(v) = args.client_id.clone().or(m.client_id) {
        mqtt.client_id = v;
    }
    if let Some(v) = args.connections.or(m.connections) {
        if v == 0 {
            return Err(config_error("mqtt.connections must be at least 1"));
        }
        mqtt.connections = v;
    }
    if let Some(v) = m.share_group {
        mqtt.share_group = v;
    }
    if let Some(v) = args.filters.clone().or(m.filters) {
        if v.is_empty() {
            return Err(config_error(
                "mqtt.filters must name at least one topic filter",
            ));
        }
        mqtt.filters = v;
    }
    if let Some(v) = args.qos.or(m.qos) {
        mqtt.qos = v;
    }
    if let Some(v) = args.mqtt_max_packet_bytes.or(m.max_packet_bytes) {
        if v < 1024 {
            return Err(config_error(format!(
                "mqtt.max_packet_bytes / --mqtt-max-packet-bytes = {v}: must be at least 1024 (AWS IoT Core sends up to 131072)"
            )));
        }
        mqtt.max_packet_bytes = v;
    }
    if let Some(v) = m.keep_alive_secs {
        mqtt.keep_alive = Duration::from_secs(v.max(5));
    }
    if let Some(v) = args.connect_timeout_secs.or(m.connect_timeout_secs) {
        mqtt.connect_timeout = Duration::from_secs(v.max(1));
    }
    mqtt.username = m.username;
    mqtt.password = m.password;
    mqtt.tls.ca = m.ca;
    mqtt.tls.cert = m.cert;
    mqtt.tls.key = m.key;
    mqtt.tls.alpn = m.alpn;
    args.mqtt_auth.apply(&mut mqtt);
    mqtt.qos().map_err(|e| config_error(e.to_string()))?;
    // Surfaces URL and TLS errors before anything connects.
    mqtt.options(0).map_err(|e| config_error(e.to_string()))?;

    let mut config = BridgeConfig::new(mqtt, output);
    config.parser = parser;
    if let Some(v) = args.workers.or(p.workers) {
        config.workers = v.max(1);
    }
    if let Some(v) = p.batch_size {
        config.batch_size = v.max(1);
    }
    if let Some(v) = p.queue_batches {
        config.queue_batches = v.max(1);
    }
    if let Some(v) = args.dedup_window.or(p.dedup_window) {
        config.dedup_window = v;
    }
    if let Some(v) = p.drain_timeout_secs {
        config.drain_timeout = Duration::from_secs(v.max(1));
    }
    Ok(config)
}

fn kafka_config(args: &RunArgs, k: KafkaSettings, brokers: String) -> Result<KafkaConfig, Failure> {
    let mut kafka = KafkaConfig::new(brokers);
    if let Some(v) = k.job_topic {
        kafka.job_topic = v;
    }
    if let Some(v) = k.execution_topic {
        kafka.execution_topic = v;
    }
    if let Some(v) = k.dlq_topic {
        kafka.dlq_topic = v;
    }
    if let Some(v) = k.compression {
        kafka.compression = v;
    }
    if let Some(v) = k.partitions {
        kafka.partitions = v;
    }
    kafka.replication = k.replication;
    if let Some(v) = args.connect_timeout_secs.or(k.connect_timeout_secs) {
        kafka.connect_timeout = Duration::from_secs(v.max(1));
    }
    if let Some(v) = k.create_topics {
        kafka.create_topics = v;
    }
    kafka.topic_config = k.topic_config;
    if let Some(v) = k.max_queued {
        kafka.max_queued = v.max(1);
    }
    kafka.options = k.options;
    kafka.options.extend(args.kafka_options.iter().cloned());
    if let Some(v) = &args.kafka_username {
        kafka.options.insert("sasl.username".into(), v.clone());
    }
    if let Some(v) = &args.kafka_password {
        kafka.options.insert("sasl.password".into(), v.clone());
    }
    kafka
        .producer_config()
        .map_err(|e| config_error(e.to_string()))?;
    Ok(kafka)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub fn run(args: RunArgs) -> Result<(), Failure> {
    let plan =
        plan(&args).map_err(|failure| crate::ops::locate(failure, args.config.as_deref()))?;
    let ops = crate::ops::OpsPlan::resolve(args.metrics_listen.clone(), args.config.as_deref())?;
    if args.check {
        print_plan(&plan);
        let kafka = plan
            .bridge
            .as_ref()
            .and_then(|b| match &b.output {
                Output::Kafka(kafka) => Some(kafka),
                Output::Parquet(_) => None,
            })
            .or(plan.stage.as_ref().map(|s| &s.kafka));
        ops.print_check(kafka.map(|k| &k.options));
        return Ok(());
    }
    let running = jobstream_topology::Topology {
        bridge: plan.bridge,
        stage: plan.stage,
        metrics: ops.endpoint(),
    }
    .start()?;
    let stats = running.stats();
    if args.stats_every_secs > 0 {
        let (stats, every) = (stats.clone(), Duration::from_secs(args.stats_every_secs));
        running.handle().spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                for line in stats.lines() {
                    tracing::info!(target: "jobstream::stats", "{line}");
                }
            }
        });
    }
    let outcome = running.run_until(async {
        shutdown_signal().await;
        tracing::warn!("draining: no new messages; finishing, confirming and acknowledging what is in flight (a second signal exits at once; nothing unconfirmed is acknowledged)");
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::error!("second signal: exiting now; unconfirmed messages stay unacknowledged and will be redelivered");
            std::process::exit(130);
        });
    });
    for line in stats.lines() {
        outln!("{line}");
    }
    outcome?;
    Ok(())
}

fn print_plan(plan: &Plan) {
    outln!("configuration OK");
    if let Some(config) = &plan.bridge {
        outln!(
            "  mqtt        {} (MQTT {}, {} connection(s), qos {}, client id {:?})",
            jobstream_bridge::config::redact(&config.mqtt.url),
            config.mqtt.version,
            config.mqtt.connections,
            config.mqtt.qos,
            config.mqtt.client_id
        );
        outln!("  filters     {}", config.mqtt.subscriptions().join(", "));
        match &config.output {
            Output::Parquet(parquet) => outln!(
                "  parquet     {} directly, no Kafka (acknowledged when a file is published; files roll every {}s, {:?}, DLQ file under dlq/)",
                parquet.root.display(),
                parquet.max_file_age.map_or(0, |d| d.as_secs()),
                parquet.codec
            ),
            Output::Kafka(kafka) => outln!(
                "  kafka       {} → {}, {}, dlq {} ({})",
                kafka.brokers,
                kafka.job_topic,
                kafka.execution_topic,
                kafka.dlq_topic,
                topic_creation(kafka)
            ),
        }
        // Straight to Parquet, one writer thread parses and writes, whatever `workers` says.
        let workers = match config.output {
            Output::Kafka(_) => format!("{} parser worker(s)", config.workers),
            Output::Parquet(_) => "1 parsing writer thread".to_owned(),
        };
        outln!(
            "  pipeline    prefix {:?}, {workers}, batches of {}, dedup window {}",
            config.parser.topic_prefix,
            config.batch_size,
            config.dedup_window
        );
    }
    if let Some(stage) = &plan.stage {
        let age =
            |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{}s", d.as_secs()));
        outln!(
            "  parquet     {} ← {}, {} (group {:?}, dlq {})",
            stage.parquet.root.display(),
            stage.kafka.job_topic,
            stage.kafka.execution_topic,
            stage.group_id,
            stage.kafka.dlq_topic
        );
        outln!(
            "  files       {:?}, roll at {} rows / {} bytes / {} open / {} idle",
            stage.parquet.codec,
            stage.parquet.max_file_rows,
            stage.parquet.max_file_bytes,
            age(stage.parquet.max_file_age),
            age(stage.parquet.idle_timeout)
        );
    }
}

/// How missing topics get made, as `run --check` says it.
fn topic_creation(kafka: &KafkaConfig) -> String {
    if !kafka.create_topics {
        return "topics must exist".to_owned();
    }
    let factor = kafka
        .replication
        .map_or("the broker's default".to_owned(), |r| r.to_string());
    format!(
        "missing topics created with {} partitions, replication factor {factor}",
        kafka.partitions
    )
}
