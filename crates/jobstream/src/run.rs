//! `jobstream run`: MQTT → Kafka, Kafka → Parquet, or both in one process, configured by a TOML
//! file, environment and flags (flags win over environment, which wins over the file, which
//! wins over the defaults). Which stages run follows from what is configured: an MQTT URL runs
//! the bridge, a Parquet directory runs the sink stage; Kafka sits between them either way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use jobstream_bridge::{BridgeConfig, BridgeError, MqttConfig, Output, PipelineConfig};
use jobstream_sink::consumer::StageConfig;
use jobstream_sink::kafka::KafkaConfig;
use jobstream_sink::parquet::ParquetConfig;
use serde::Deserialize;

use crate::{Failure, EXIT_CONFIG};

/// The configuration file (`--config`): each section is the configuration of the library
/// that owns it and deserializes itself there, with its defaults, its documented keys and
/// unknown keys refused. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[mqtt]`: the MQTT side.
    pub mqtt: MqttConfig,
    /// `[kafka]`: the Kafka side.
    pub kafka: KafkaConfig,
    /// `[pipeline]`: parsing and hand-off.
    pub pipeline: PipelineConfig,
    /// `[parquet]`: the Parquet files and the Kafka → Parquet stage.
    pub parquet: ParquetConfig,
    /// `[metrics]`: the `/metrics`, `/health` and `/ready` endpoint.
    pub metrics: crate::ops::MetricsSettings,
    /// `[log]`: log format and filter.
    pub log: crate::ops::LogSettings,
}

/// A configuration file, read: the settings, and which keys it wrote (some defaults depend on
/// what is left out).
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// The settings, defaults filled in.
    pub settings: Settings,
    /// The file as written.
    written: toml::Table,
}

impl ConfigFile {
    /// Whether the file sets `key` in `[section]`.
    fn sets(&self, section: &str, key: &str) -> bool {
        self.written
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|table| table.contains_key(key))
    }
}

/// Reads a configuration file: every section into its library's config.
///
/// # Errors
/// The file cannot be read, or is not valid (the message names the key and line).
fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let invalid = |e: toml::de::Error| anyhow::anyhow!("config file {}: {e}", path.display());
    Ok(ConfigFile {
        settings: toml::from_str(&text).map_err(invalid)?,
        written: toml::from_str(&text).map_err(invalid)?,
    })
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
        mqtt.ca = self.mqtt_ca.clone().or(mqtt.ca.take());
        mqtt.cert = self.mqtt_cert.clone().or(mqtt.cert.take());
        mqtt.key = self.mqtt_key.clone().or(mqtt.key.take());
        mqtt.alpn = self.mqtt_alpn.clone().or(mqtt.alpn.take());
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
    #[arg(long = "kafka-option", value_parser = jobstream_sink::kafka::parse_option)]
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
    let file = match &args.config {
        Some(path) => load(path).map_err(|e| Failure::new(EXIT_CONFIG, e))?,
        None => ConfigFile::default(),
    };
    let direct_file_age_unset =
        args.max_file_age_secs.is_none() && !file.sets("parquet", "max_file_age_secs");
    let mut settings = file.settings;
    layer_flags(args, &mut settings)?;
    let Settings {
        mqtt,
        kafka,
        pipeline,
        mut parquet,
        ..
    } = settings;
    let bridges = !mqtt.url.is_empty();
    let writes_parquet = !parquet.root.as_os_str().is_empty();
    if !bridges && !writes_parquet {
        return Err(config_error(
            "nothing to run: pass --mqtt mqtt://host:1883 to bridge MQTT into Kafka, --parquet DIR to write Kafka's events to Parquet, or both (or set mqtt.url / parquet.dir in --config)",
        ));
    }
    if args.stop_at_end && (bridges || !writes_parquet) {
        return Err(config_error(
            "--stop-at-end applies to the Parquet stage alone: pass --parquet DIR without --mqtt",
        ));
    }
    let bridge_config = |output| {
        let mut bridge = BridgeConfig::new(mqtt.clone(), output);
        bridge.pipeline = pipeline.clone();
        bridge.crash = crash_point();
        bridge.validate().map_err(invalid)?;
        Ok::<_, Failure>(bridge)
    };
    if kafka.brokers.is_empty() {
        if !(bridges && writes_parquet) {
            return Err(config_error(
                "no Kafka brokers: pass --kafka host:9092 (or set kafka.brokers in --config, or JOBSTREAM_KAFKA_BROKERS); to write MQTT straight to Parquet without Kafka, pass both --mqtt and --parquet",
            ));
        }
        // MQTT straight to Parquet: no Kafka, no consumer group; files roll often, since
        // their messages stay unacknowledged until they are published.
        if direct_file_age_unset {
            parquet.max_file_age = Some(jobstream_bridge::DEFAULT_DIRECT_FILE_AGE);
        }
        return Ok(Plan {
            bridge: Some(bridge_config(Output::Parquet(parquet))?),
            stage: None,
        });
    }
    let stage = if writes_parquet {
        let mut stage = StageConfig::new(kafka.clone(), parquet);
        stage.parser = pipeline.parser();
        stage.stop_at_end = args.stop_at_end;
        stage.crash = crash_point();
        stage.validate().map_err(|e| config_error(e.to_string()))?;
        Some(stage)
    } else {
        kafka.validate().map_err(|e| config_error(e.to_string()))?;
        None
    };
    let bridge = if bridges {
        Some(bridge_config(Output::Kafka(kafka))?)
    } else {
        None
    };
    Ok(Plan { bridge, stage })
}

fn invalid(error: BridgeError) -> Failure {
    config_error(error.to_string())
}

/// The flags and `JOBSTREAM_*` variables, each winning over what the file says.
fn layer_flags(args: &RunArgs, settings: &mut Settings) -> Result<(), Failure> {
    fn set<T: Clone>(target: &mut T, flag: &Option<T>) {
        if let Some(value) = flag {
            *target = value.clone();
        }
    }
    let Settings {
        mqtt,
        kafka,
        pipeline,
        parquet,
        ..
    } = settings;
    set(&mut mqtt.url, &args.mqtt);
    if let Some(version) = &args.mqtt_version {
        mqtt.version = version.parse().map_err(|e: BridgeError| {
            config_error(format!("mqtt.version / --mqtt-version: {e}"))
        })?;
    }
    if let Some(secs) = args.mqtt_session_expiry_secs {
        mqtt.session_expiry = Duration::from_secs(secs);
    }
    set(&mut mqtt.max_packet_bytes, &args.mqtt_max_packet_bytes);
    set(&mut mqtt.client_id, &args.client_id);
    set(&mut mqtt.connections, &args.connections);
    set(&mut mqtt.filters, &args.filters);
    set(&mut mqtt.qos, &args.qos);
    args.mqtt_auth.apply(mqtt);
    if let Some(secs) = args.connect_timeout_secs {
        mqtt.connect_timeout = Duration::from_secs(secs);
        kafka.connect_timeout = Duration::from_secs(secs);
    }

    set(&mut kafka.brokers, &args.kafka);
    kafka.options.extend(args.kafka_options.iter().cloned());
    if let Some(v) = &args.kafka_username {
        kafka.options.insert("sasl.username".into(), v.clone());
    }
    if let Some(v) = &args.kafka_password {
        kafka.options.insert("sasl.password".into(), v.clone());
    }

    set(&mut pipeline.topic_prefix, &args.topic_prefix);
    set(&mut pipeline.workers, &args.workers);
    set(&mut pipeline.dedup_window, &args.dedup_window);

    set(&mut parquet.root, &args.parquet);
    set(&mut parquet.group_id, &args.group_id);
    set(&mut parquet.max_file_rows, &args.max_file_rows);
    set(&mut parquet.dedup_window, &args.parquet_dedup_window);
    if let Some(secs) = args.max_file_age_secs {
        parquet.max_file_age = Some(Duration::from_secs(secs));
    }
    Ok(())
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
                jobstream_bridge::config::redact(&parquet.root.to_string_lossy()),
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
            Output::Kafka(_) => format!("{} parser worker(s)", config.pipeline.workers),
            Output::Parquet(_) => "1 parsing writer thread".to_owned(),
        };
        outln!(
            "  pipeline    prefix {:?}, {workers}, batches of {}, dedup window {}",
            config.pipeline.topic_prefix,
            config.pipeline.batch_size,
            config.pipeline.dedup_window
        );
    }
    if let Some(stage) = &plan.stage {
        let age =
            |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{}s", d.as_secs()));
        outln!(
            "  parquet     {} ← {}, {} (group {:?}, dlq {})",
            jobstream_bridge::config::redact(&stage.parquet.root.to_string_lossy()),
            stage.kafka.job_topic,
            stage.kafka.execution_topic,
            stage.parquet.group_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_of_the_example_file_lands_in_its_library_config() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/jobstream.toml");
        let file = load(&example).expect("the example loads");
        let Settings {
            mqtt,
            kafka,
            pipeline,
            parquet,
            ..
        } = &file.settings;
        // What the example writes, a value or two per section (the URL, brokers and dir are
        // not defaults; a section read into the wrong struct would fail on them).
        assert_eq!(mqtt.url, "mqtt://mosquitto:1883");
        assert_eq!(mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(kafka.brokers, "kafka:9092");
        assert_eq!(kafka.partitions, 3);
        assert_eq!(pipeline.max_payload_bytes, 131_072);
        assert_eq!(parquet.root, Path::new("/var/lib/jobstream/parquet"));
        assert_eq!(parquet.max_file_age, Some(Duration::from_secs(600)));
        assert!(file.sets("parquet", "max_file_age_secs"));
        assert!(!file.sets("parquet", "batch_rows"));
        mqtt.validate().expect("mqtt");
        kafka.validate().expect("kafka");
        pipeline.validate().expect("pipeline");
        parquet.validate().expect("parquet");
    }
}
