//! One run of one contender: fresh topics and sessions, the backlog, the timed drain, the
//! paced latency stream, the stop, and the Kafka → Parquet stage after it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext as _};
use jobstream_bridge::MqttConfig;
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_sink::kafka::KafkaConfig;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;

use jobstream_bridge::config::ParsedUrl;

use super::brokers::KafkaBroker;
use super::brokers::{start_kafka, start_mosquitto, Managed};
use super::contender::{Contender, Plan, Running};
use super::result::{ParquetResult, RunResult};
use super::sampling::{ProcUsage, Sampler};
use super::verification::{event_id, Published};
use super::BenchArgs;
use crate::error::invalid_flag;
use jobstream_publisher::{self as publisher, PublishSettings};

pub(super) const PYTHON_BRIDGE: &str = include_str!("../../../benches/baselines/python_bridge.py");
pub(super) const TSV_PRODUCER: &str = include_str!("../../../benches/baselines/tsv_producer.py");

pub(super) struct Bench {
    pub(super) args: BenchArgs,
    pub(super) mqtt_url: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) kafka: String,
    pub(super) kafka_options: Vec<(String, String)>,
    pub(super) broker: KafkaBroker,
    pub(super) dir: PathBuf,
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) python_bridge: PathBuf,
    pub(super) tsv_producer: PathBuf,
    /// A copy of this binary: the runs keep using the same build even if target/ is rebuilt
    /// while the bench runs.
    pub(super) jobstream_bin: PathBuf,
    pub(super) run_counter: usize,
    /// The brokers bench started itself, stopped when the bench ends.
    /// Held, not read: dropping them (after the runtime, declared above) stops them.
    pub(super) _brokers: Vec<Managed>,
}

impl Bench {
    /// Prepares the work directory, starts the brokers not given, and checks the MQTT URL.
    ///
    /// # Errors
    /// A URL bench cannot use (78), or a broker, script or runtime that cannot be started.
    pub(super) fn start(args: BenchArgs) -> Result<Bench, BenchError> {
        let dir = match &args.workdir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .io_with(|| format!("cannot create {}", dir.display()))?;
                dir.clone()
            }
            None => tempfile_dir()?,
        };
        let (mosquitto, mqtt_url) = match &args.mqtt {
            Some(url) => (None, url.clone()),
            None => {
                let (broker, url) = start_mosquitto(&args, &dir)?;
                (Some(broker), url)
            }
        };
        let kafka_options = args.kafka_options.clone();
        let (kafka_broker, kafka, broker) = match &args.kafka {
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
        let url = ParsedUrl::parse(&mqtt_url).map_err(|e| invalid_flag(format!("--mqtt: {e}")))?;
        if url.tls {
            return Err(invalid_flag(
                "bench drives mosquitto_sub and paho without TLS: pass an mqtt:// URL",
            ));
        }
        let python_bridge = dir.join("python_bridge.py");
        let tsv_producer = dir.join("tsv_producer.py");
        std::fs::write(&python_bridge, PYTHON_BRIDGE)
            .and_then(|()| std::fs::write(&tsv_producer, TSV_PRODUCER))
            .io("writing the baseline scripts")?;
        let jobstream_bin = dir.join("jobstream");
        std::env::current_exe()
            .and_then(|exe| std::fs::copy(exe, &jobstream_bin))
            .io("copying the jobstream binary into the work directory")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .io("starting the async runtime")?;
        Ok(Bench {
            mqtt_url,
            host: url.host,
            port: url.port,
            kafka,
            kafka_options,
            broker,
            dir,
            runtime,
            python_bridge,
            tsv_producer,
            jobstream_bin,
            run_counter: 0,
            _brokers: [mosquitto, kafka_broker].into_iter().flatten().collect(),
            args,
        })
    }

    /// Runs every plan in order, printing a line per run; a failed run is recorded in its
    /// result and the next one goes on.
    pub(super) fn run_all(&mut self, plans: &[Plan]) -> Vec<RunResult> {
        eprintln!(
            "bench: {} runs ({} repetitions) on mqtt {} and kafka {} ({}); logs in {}",
            plans.len(),
            self.args.repetitions,
            self.mqtt_url,
            self.kafka,
            self.broker.describe(),
            self.dir.display()
        );
        let progress = indicatif::ProgressBar::new(0);
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if let (false, Some(first)) = (self.args.no_warmup, plans.first()) {
            progress.set_prefix("[warm-up]");
            let warmup = self.run_one(first, &progress);
            progress.suspend(|| match &warmup.error {
                Some(error) => eprintln!(
                    "bench: warm-up run ({}, not recorded): FAILED: {error}",
                    first.label
                ),
                None => eprintln!(
                    "bench: warm-up run ({}, not recorded): {:.0} events/s",
                    first.label, warmup.events_per_sec
                ),
            });
        }
        let mut results: Vec<RunResult> = Vec::new();
        for (index, plan) in plans.iter().enumerate() {
            progress.set_prefix(format!(
                "[{}/{} rep {}]",
                index + 1,
                plans.len(),
                plan.repetition + 1
            ));
            let result = self.run_one(plan, &progress);
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
        results
    }

    pub(super) fn filters(prefix: &str) -> Vec<String> {
        vec![
            format!("{prefix}job/+/+"),
            format!("{prefix}jobExecution/+/+"),
        ]
    }

    /// The MQTT settings of each process of a run: one, or one per process with its own
    /// client id in a share group they all join.
    pub(super) fn mqtt_configs(&self, id: &str, plan: &Plan) -> Vec<MqttConfig> {
        (0..plan.processes.max(1))
            .map(|process| {
                let mut mqtt = MqttConfig::new(self.mqtt_url.clone());
                mqtt.client_id = match plan.processes {
                    0 | 1 => id.to_owned(),
                    _ => format!("{id}-p{process}"),
                };
                mqtt.connections = plan.connections;
                mqtt.share_group = format!("{id}-group");
                mqtt.filters = Self::filters(&plan.prefix);
                if plan.processes > 1 {
                    // One connection per process shares only with filters that name the
                    // group themselves, as the README tells users to write them.
                    mqtt.filters = mqtt
                        .filters
                        .iter()
                        .map(|f| format!("$share/{}/{f}", mqtt.share_group))
                        .collect();
                }
                mqtt
            })
            .collect()
    }

    /// Opens each connection's session (clean session off, QoS 1 subscriptions), counts
    /// the messages the broker delivers within `listen`, and disconnects; `clean` then
    /// discards the session.
    pub(super) fn session(
        &self,
        mqtt: &MqttConfig,
        listen: Duration,
        clean: bool,
    ) -> Result<u64, BenchError> {
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
                        Err(_) => {
                            return Err(BenchError::Run(
                                "no SUBACK from the MQTT broker within 30 s".into(),
                            ))
                        }
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) if !clean => {
                            let filters = filters
                                .iter()
                                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                                .collect::<Vec<_>>();
                            client.subscribe_many(filters).await.map_err(|e| {
                                BenchError::Run(format!("MQTT session set-up: {e}"))
                            })?;
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            until = Some(tokio::time::Instant::now() + listen);
                        }
                        Ok(Event::Incoming(Packet::Publish(_))) => received += 1,
                        Ok(_) => {}
                        Err(error) => {
                            return Err(BenchError::Run(format!("MQTT session set-up: {error}")))
                        }
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

    pub(super) fn publish_settings(&self, rate: Option<f64>) -> PublishSettings {
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

    pub(super) fn fleet(&self, seed: u64, events: usize, prefix: &str) -> Fleet {
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

    pub(super) fn run_one(&mut self, plan: &Plan, progress: &indicatif::ProgressBar) -> RunResult {
        let mut result = RunResult {
            contender: plan.label.clone(),
            repetition: plan.repetition,
            connections: plan.connections,
            processes: plan.processes,
            topic_prefix: plan.prefix.clone(),
            ..RunResult::default()
        };
        if let Err(error) = self.try_run(plan, progress, &mut result) {
            result.error = Some(format!("{error:#}"));
        }
        result
    }

    pub(super) fn try_run(
        &mut self,
        plan: &Plan,
        progress: &indicatif::ProgressBar,
        result: &mut RunResult,
    ) -> Result<(), BenchError> {
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
        let mqtt = self.mqtt_configs(&id, plan);
        let seed = 1000 + plan.repetition as u64;

        // 1. topics, sessions, backlog
        if plan.contender.uses_kafka() {
            let mut kafka = KafkaConfig::new(self.kafka.clone());
            kafka.job_topic = topics[0].clone();
            kafka.execution_topic = topics[1].clone();
            kafka.dlq_topic = topics[2].clone();
            kafka.partitions = self.args.partitions;
            kafka.options = self.kafka_options.iter().cloned().collect();
            // The broker stamps each record when it appends it: latency per record, read
            // back with the records, whatever timestamp the contender's producer set.
            kafka
                .topic_config
                .insert("message.timestamp.type".into(), "LogAppendTime".into());
            self.runtime
                .block_on(jobstream_sink::kafka::ensure_topics(&kafka))?;
        }
        let mut published = Published::default();
        let fleet = self.fleet(seed, self.args.events, &plan.prefix);
        if plan.contender.uses_mqtt() {
            for process in &mqtt {
                self.session(process, Duration::ZERO, false)?;
            }
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
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(self.dir.join(format!("{id}.tsv")))
                    .io_with(|| format!("creating {id}.tsv"))?,
            );
            for message in fleet {
                if let Some(id) = event_id(&message.payload) {
                    published.backlog.insert(id.to_owned());
                }
                published.bytes += message.payload.len() as u64;
                message
                    .write_capture(&mut out)
                    .io_with(|| format!("writing {id}.tsv"))?;
            }
            out.flush().io_with(|| format!("writing {id}.tsv"))?;
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
            let ended = match &sampler {
                Some(s) => {
                    progress.set_position(s.total().min(n));
                    (s.total() >= n).then(|| s.reached(n, started).unwrap_or_else(Instant::now))
                }
                None => running.drain_ended(),
            };
            if let Some(at) = ended {
                break at.saturating_duration_since(started);
            }
            if sampler.is_none() && running.first_exited() {
                return Err(BenchError::Run(format!(
                    "{} exited before draining the backlog (see {}/{id}-*.log)",
                    plan.label,
                    self.dir.display()
                )));
            }
            // The Kafka ceiling's producer ends by itself at the end of its file; the drain
            // ends when Kafka shows every record.
            if sampler.is_some()
                && running.first_exited()
                && plan.contender != Contender::KafkaCeiling
            {
                running.stop();
                return Err(BenchError::Run(format!(
                    "{} exited before draining the backlog (see {}/{id}-*.log)",
                    plan.label,
                    self.dir.display()
                )));
            }
            if Instant::now() > deadline {
                running.stop();
                return Err(BenchError::Run(format!(
                    "the drain took longer than {} s",
                    self.args.timeout_secs
                )));
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
            let sent = &mut published.latency_sent;
            self.runtime
                .block_on(publisher::publish(&settings, fleet, |m| {
                    if let Some(id) = event_id(&m.payload) {
                        sent.insert(id.to_owned(), unix_millis());
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
        if plan.contender.uses_kafka() {
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
            let mut left = 0;
            for process in &mqtt {
                left += self.session(process, Duration::from_millis(500), false)?;
                self.session(process, Duration::ZERO, true)?;
            }
            result.left_at_broker = Some(left);
        }
        Ok(())
    }

    /// Kafka → Parquet: `jobstream run --parquet DIR --stop-at-end` over the run's topics,
    /// timed from spawn to exit.
    pub(super) fn parquet_stage(
        &self,
        id: &str,
        topics: &[String],
    ) -> Result<ParquetResult, BenchError> {
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
        )
        .io_with(|| format!("writing {}", config.display()))?;
        let stdout = self.dir.join(format!("{id}-parquet-stdout.log"));
        let started = Instant::now();
        let child = Command::new(&self.jobstream_bin)
            .args(["run", "--stop-at-end", "--config"])
            .arg(&config)
            .env("JOBSTREAM_LOG", "warn")
            .stdout(
                std::fs::File::create(&stdout)
                    .io_with(|| format!("creating {}", stdout.display()))?,
            )
            .stderr(
                std::fs::File::create(self.dir.join(format!("{id}-parquet-stderr.log")))
                    .io_with(|| format!("creating {id}-parquet-stderr.log"))?,
            )
            .spawn()
            .io("cannot start jobstream run --parquet")?;
        let mut running = Running {
            usage: vec![ProcUsage::default()],
            children: vec![child],
            peers: false,
            drained_at: None,
            output_reader: None,
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
                return Err(BenchError::Run(format!(
                    "the Parquet stage had not ended after {limit} s (see {id}-parquet-*.log)"
                )));
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
            return Err(BenchError::Run(format!(
                "jobstream run --parquet exited with {code:?} (see {}-parquet-*.log)",
                id
            )));
        };
        Ok(ParquetResult {
            rows,
            seconds,
            rows_per_sec: rows as f64 / seconds,
            cpu_percent: 100.0 * cpu / seconds,
            peak_rss_mb: rss,
        })
    }
}

/// A fresh directory under the system's temporary directory, kept for the logs.
fn tempfile_dir() -> Result<PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "jobstream-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    std::fs::create_dir_all(&dir).io_with(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Now, in milliseconds since the Unix epoch: the clock Kafka's `LogAppendTime` uses.
fn unix_millis() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
