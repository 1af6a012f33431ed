//! `jobstream simulate`: a realistic fleet publishing job lifecycles to an MQTT broker.
//!
//! The events come from `jobstream-fleet` (jobs with many things, a realistic mix of execution
//! outcomes, then `completed` with matching counters, or `canceled` / `deleted` after their
//! in-progress notice). The publisher is also what `jobstream bench` uses to queue its backlogs.
//!
//! A QoS 1 message counts as sent once the broker acknowledged it (PUBACK); a QoS 0 message
//! once it was written to the connection. The report lists what was sent per
//! `family/operation`, so a run can be checked against what arrived.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jobstream_bridge::MqttConfig;
use jobstream_fleet::{Fleet, FleetConfig, Message, Tally};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

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
    /// Epoch seconds of the first event's timestamp (default: now).
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

/// How to publish: where, how many connections, QoS, window, pace.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// URL, TLS files, credentials and base client id (the session settings are overridden:
    /// a publisher uses a clean session).
    pub mqtt: MqttConfig,
    /// QoS of every publish.
    pub qos: QoS,
    /// Unacknowledged QoS 1 publishes per connection. rumqttc stops taking requests when it is
    /// reached, and its request channel (the same size) then makes `publish` wait: the bound on
    /// what the publisher holds in memory.
    pub window: u16,
    /// Events per second over all connections (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// How long the connections may take to come up.
    pub connect_timeout: Duration,
    /// Progress lines on standard error every second.
    pub progress: bool,
}

/// What a publish run sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Per `family/operation`, total and payload bytes.
    pub tally: Tally,
    /// From the first publish to the last acknowledgement.
    pub elapsed: Duration,
}

/// Counters shared between the publishing loop and a connection's event loop.
#[derive(Debug, Default)]
struct ConnCounters {
    /// Publishes handed to the client.
    queued: AtomicU64,
    /// PUBLISH packets written (QoS 0 is sent at this point).
    written: AtomicU64,
    /// PUBACKs received (QoS 1 is sent at this point).
    acked: AtomicU64,
    /// Set when the connection failed; the message says why.
    failed: AtomicBool,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Family and operation of a fleet topic (`…job/<id>/<op>`, `…jobExecution/<id>/<op>`).
pub fn kind_of(topic: &str) -> (&'static str, &str) {
    let mut parts = topic.rsplitn(3, '/');
    let operation = parts.next().unwrap_or_default();
    let _job_id = parts.next();
    let family = if parts.next().unwrap_or_default().ends_with("jobExecution") {
        "jobExecution"
    } else {
        "job"
    };
    (family, operation)
}

/// Connection for a topic: all events of a job (same `<id>` segment) share one connection,
/// so they stay in order.
fn connection_for(topic: &str, connections: usize) -> usize {
    let job = topic.rsplit('/').nth(1).unwrap_or_default();
    // FNV-1a: cheap, and stable across runs (unlike the std hasher's random keys).
    let hash = job.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % connections.max(1) as u64) as usize
}

/// Publishes `messages` and waits until the broker has them all (QoS 1: acknowledged; QoS 0:
/// written). `observe` sees each message just before it is handed to the client.
///
/// # Errors
/// A bad URL or TLS setting, no connection within the timeout, or a connection lost midway
/// (the message says how many were confirmed by then).
pub async fn publish(
    settings: &PublishSettings,
    messages: impl Iterator<Item = Message>,
    mut observe: impl FnMut(&Message),
) -> anyhow::Result<Sent> {
    let connections = settings.mqtt.connections.max(1);
    let window = settings.window.max(1);
    let mut clients = Vec::with_capacity(connections);
    let mut counters = Vec::with_capacity(connections);
    let mut loops = Vec::with_capacity(connections);
    let mut connected = Vec::with_capacity(connections);
    for index in 0..connections {
        let mut options = settings.mqtt.options(index)?;
        options
            .set_clean_session(true)
            .set_manual_acks(false)
            .set_inflight(window)
            .set_request_channel_capacity(usize::from(window));
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(window));
        let counter = Arc::new(ConnCounters::default());
        let (up_tx, up_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let task_counter = Arc::clone(&counter);
        loops.push(tokio::spawn(async move {
            let mut up_tx = Some(up_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        task_counter.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                        task_counter.written.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => {
                        task_counter.failed.store(true, Ordering::SeqCst);
                        let message = error.to_string();
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(Err(message.clone()));
                        }
                        return Err(message);
                    }
                }
            }
        }));
        clients.push(client);
        counters.push(counter);
        connected.push(up_rx);
    }
    let url = jobstream_bridge::config::redact(&settings.mqtt.url);
    for up in connected {
        match tokio::time::timeout(settings.connect_timeout, up).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => anyhow::bail!("cannot connect to {url}: {error}"),
            Ok(Err(_)) => anyhow::bail!("cannot connect to {url}: the connection task ended"),
            Err(_) => anyhow::bail!(
                "no connection to {url} within {:?}",
                settings.connect_timeout
            ),
        }
    }

    let confirmed = |counters: &[Arc<ConnCounters>]| -> u64 {
        counters
            .iter()
            .map(|c| {
                if settings.qos == QoS::AtMostOnce {
                    c.written.load(Ordering::Relaxed)
                } else {
                    c.acked.load(Ordering::Relaxed)
                }
            })
            .sum()
    };
    let lost_connection = |counters: &[Arc<ConnCounters>]| {
        anyhow::anyhow!(
            "the connection to {url} was lost after {} confirmed publishes",
            confirmed(counters)
        )
    };

    let mut tally = Tally::default();
    let started = Instant::now();
    let mut last_progress = started;
    let mut progress_count = 0u64;
    for (index, message) in messages.enumerate() {
        if let Some(rate) = settings.rate {
            // Sleep only when ahead by more than 2 ms: the timer's granularity is about 1 ms.
            let due = started + Duration::from_secs_f64(index as f64 / rate);
            if due > Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        observe(&message);
        let (family, operation) = kind_of(&message.topic);
        tally.record(family, operation, message.payload.len());
        let conn = connection_for(&message.topic, connections);
        counters[conn].queued.fetch_add(1, Ordering::Relaxed);
        if clients[conn]
            .publish(message.topic, settings.qos, false, message.payload)
            .await
            .is_err()
            || counters[conn].failed.load(Ordering::Relaxed)
        {
            return Err(lost_connection(&counters));
        }
        progress_count += 1;
        if settings.progress && progress_count.is_multiple_of(1024) {
            let now = Instant::now();
            if now - last_progress >= Duration::from_secs(1) {
                last_progress = now;
                eprintln!(
                    "simulate: published {} | confirmed {} | {:.0} events/s",
                    tally.total,
                    confirmed(&counters),
                    confirmed(&counters) as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }

    // Wait for the broker to confirm the rest; give up when nothing moves for 30 s.
    let mut last = (confirmed(&counters), Instant::now());
    while confirmed(&counters) < tally.total {
        if counters.iter().any(|c| c.failed.load(Ordering::Relaxed)) {
            return Err(lost_connection(&counters));
        }
        let now = confirmed(&counters);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "the broker confirmed {now} of {} publishes and then nothing for 30 s",
                tally.total
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    for client in &clients {
        let _ = client.disconnect().await;
    }
    for task in loops {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(Sent { tally, elapsed })
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
        (None, Some(events)) => events.div_ceil(args.things_per_job + 3).max(1),
        (None, None) => 10,
    };
    let start_epoch_s = args
        .start_epoch_s
        .unwrap_or_else(|| (now_nanos() / 1_000_000_000) as i64);
    let fleet = Fleet::new(FleetConfig {
        seed,
        jobs,
        things_per_job: args.things_per_job,
        concurrent_jobs: args.concurrent_jobs.max(1),
        topic_prefix: args.topic_prefix.clone(),
        start_epoch_s,
        unknown_fields: args.unknown_fields,
    });
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
            let code = if e.to_string().contains("TLS") {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_connections_come_from_the_topic() {
        assert_eq!(
            kind_of("$aws/events/jobExecution/j-1/succeeded"),
            ("jobExecution", "succeeded")
        );
        assert_eq!(kind_of("bench/job/j-1/completed"), ("job", "completed"));
        let a = connection_for("$aws/events/job/j-1/completed", 4);
        assert_eq!(a, connection_for("$aws/events/jobExecution/j-1/failed", 4));
        assert!(a < 4);
        assert_eq!(connection_for("x/job/j-1/completed", 1), 0);
    }
}
