//! `jobstream simulate`: a realistic fleet publishing job lifecycles to an MQTT broker.
//!
//! The events come from `jobstream-fleet` (jobs with many things, a realistic mix of execution
//! outcomes, then `completed` with matching counters, or `canceled` / `deleted` after their
//! in-progress notice); `jobstream-publisher` publishes them, as it does for `bench` and `demo`.
//!
//! A QoS 1 message counts as sent once the broker acknowledged it (PUBACK); a QoS 0 message
//! once it was written to the connection. The report lists what was sent per
//! `family/operation`, so a run can be checked against what arrived.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jobstream_bridge::MqttConfig;
use jobstream_fleet::{Fleet, FleetConfig, Tally, JOB_EVENTS_PER_JOB};
use jobstream_publisher::{publish, PublishSettings};
use rumqttc::QoS;

use crate::run::MqttAuthArgs;
use crate::EXIT_UNAVAILABLE;
use crate::{Failure, EXIT_CONFIG};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// MQTT broker URL: mqtt://host[:port] or mqtts://host[:port].
    #[arg(long, env = "JOBSTREAM_MQTT_URL")]
    mqtt: String,
    /// Jobs to run to their end (default 10; see also --events).
    #[arg(long, conflicts_with = "events")]
    jobs: Option<usize>,
    /// About this many events in total: sets the number of jobs from --things-per-job (whole
    /// jobs are published, and canceled or deleted jobs end early, so the count is close to
    /// this, not equal; the report has the exact figures).
    #[arg(long)]
    events: Option<usize>,
    /// Things targeted by each job (one execution event per thing that reports).
    #[arg(long, default_value_t = 100)]
    things_per_job: usize,
    /// Jobs in progress at once (their events interleave on the wire).
    #[arg(long, default_value_t = 4)]
    concurrent_jobs: usize,
    /// Events per second across all connections; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// QoS of the publishes: 1 (sent = acknowledged by the broker) or 0.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Parallel MQTT connections; a job's events all go through the same one (in order).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Unacknowledged QoS 1 publishes allowed per connection (AWS IoT Core allows 100).
    #[arg(long, default_value_t = 1000)]
    window: u16,
    /// Topic prefix before job/ and jobExecution/.
    #[arg(long, default_value = "$aws/events/")]
    topic_prefix: String,
    /// RNG seed; the same seed and sizes publish the same bytes. Default: from the clock, so
    /// that every run has its own job and event ids.
    #[arg(long)]
    seed: Option<u64>,
    /// Epoch seconds of the first event's timestamp (default: early enough that the run's
    /// last event is dated about now; the fleet's clock moves ~150 ms an event).
    #[arg(long)]
    start_epoch_s: Option<i64>,
    /// Add an unknown field to about one event in 40 (as AWS adds fields over time).
    #[arg(long)]
    unknown_fields: bool,
    /// MQTT client id (connection i of several uses `<id>-<i>`).
    #[arg(long, env = "JOBSTREAM_SIMULATE_CLIENT_ID")]
    client_id: Option<String>,
    /// TLS files and credentials, as for `run`.
    #[command(flatten)]
    mqtt_auth: MqttAuthArgs,
    /// Seconds the connections may take to come up.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
    /// Write the report as JSON to this file (`-`: standard output, instead of the table).
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress lines on standard error.
    #[arg(long)]
    quiet: bool,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn config_error(message: impl Into<String>) -> Failure {
    Failure::new(EXIT_CONFIG, anyhow::anyhow!(message.into()))
}

/// The MQTT settings of `simulate` (URL, TLS, credentials, client id, connections).
fn mqtt_config(args: &SimulateArgs) -> Result<MqttConfig, Failure> {
    let mut mqtt = MqttConfig::new(args.mqtt.clone());
    mqtt.client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("jobstream-simulate-{}", std::process::id()));
    mqtt.connections = args.connections;
    args.mqtt_auth.apply(&mut mqtt);
    // Surfaces URL and TLS errors before anything connects.
    mqtt.options(0).map_err(|e| config_error(e.to_string()))?;
    Ok(mqtt)
}

/// The report as JSON.
pub fn tally_json(tally: &Tally) -> serde_json::Value {
    let by_kind: BTreeMap<&str, u64> = tally
        .by_kind
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    serde_json::json!({ "events": tally.total, "bytes": tally.bytes, "by_kind": by_kind })
}

pub fn run(args: SimulateArgs) -> Result<(), Failure> {
    if args.things_per_job == 0 {
        return Err(config_error("--things-per-job must be at least 1"));
    }
    if args.connections == 0 || args.connections > 1024 {
        return Err(config_error("--connections must be between 1 and 1024"));
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        return Err(config_error(
            "--rate must be a number of events per second, or 0 for as fast as possible",
        ));
    }
    if args.window == 0 {
        return Err(config_error("--window must be at least 1"));
    }
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => {
            return Err(config_error(format!(
                "--qos must be 0 or 1, got {other} (QoS 2 is not used by AWS IoT Core)"
            )))
        }
    };
    let mqtt = mqtt_config(&args)?;
    let seed = args.seed.unwrap_or_else(now_nanos);
    let jobs = match (args.jobs, args.events) {
        (Some(jobs), _) => jobs.max(1),
        (None, Some(events)) => events
            .div_ceil(args.things_per_job + JOB_EVENTS_PER_JOB)
            .max(1),
        (None, None) => 10,
    };
    let mut fleet_config = FleetConfig {
        seed,
        jobs,
        things_per_job: args.things_per_job,
        concurrent_jobs: args.concurrent_jobs.max(1),
        topic_prefix: args.topic_prefix.clone(),
        start_epoch_s: 0,
        unknown_fields: args.unknown_fields,
    };
    fleet_config.start_epoch_s = args
        .start_epoch_s
        .unwrap_or_else(|| fleet_config.start_to_end_by((now_nanos() / 1_000_000_000) as i64));
    let fleet = Fleet::new(fleet_config);
    let settings = PublishSettings {
        mqtt,
        qos,
        window: args.window,
        rate: (args.rate > 0.0).then_some(args.rate),
        connect_timeout: Duration::from_secs(args.connect_timeout_secs.max(1)),
        progress: !args.quiet,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let sent = runtime
        .block_on(publish(&settings, fleet, |_| {}))
        .map_err(|e| {
            let code = if e.is_settings() {
                EXIT_CONFIG
            } else {
                EXIT_UNAVAILABLE
            };
            Failure::new(code, e)
        })?;

    let seconds = sent.elapsed.as_secs_f64();
    let mut report = tally_json(&sent.tally);
    if let Some(object) = report.as_object_mut() {
        for (key, value) in [
            ("seconds", serde_json::json!(seconds)),
            (
                "events_per_sec",
                serde_json::json!(sent.tally.total as f64 / seconds.max(1e-9)),
            ),
            ("qos", serde_json::json!(args.qos)),
            ("connections", serde_json::json!(args.connections)),
            ("jobs", serde_json::json!(jobs)),
            ("things_per_job", serde_json::json!(args.things_per_job)),
            ("topic_prefix", serde_json::json!(args.topic_prefix)),
            ("seed", serde_json::json!(seed)),
        ] {
            object.insert(key.to_owned(), value);
        }
    }
    let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
    match &args.report {
        Some(path) if path.as_os_str() == "-" => {
            outln!("{text}");
            return Ok(());
        }
        Some(path) => std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {}
    }
    outln!(
        "sent {} events ({:.1} MB of payload) in {:.2} s: {:.0} events/s, QoS {}, {} connection(s), {} jobs × {} things, seed {}",
        sent.tally.total,
        sent.tally.bytes as f64 / 1e6,
        seconds,
        sent.tally.total as f64 / seconds.max(1e-9),
        args.qos,
        args.connections,
        jobs,
        args.things_per_job,
        seed
    );
    for (kind, count) in &sent.tally.by_kind {
        outln!("  {kind:<40} {count:>10}");
    }
    Ok(())
}
