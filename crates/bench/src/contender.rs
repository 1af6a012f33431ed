//! What is measured: the contenders, the runs planned for them, and the processes of one
//! while it runs.

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext as _};
use serde_json::json;

use super::brokers::signal;
use super::runner::Bench;
use super::sampling::{proc_usage, ProcUsage};
use super::BenchArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Contender {
    /// `jobstream bench-drain`: a minimal QoS 1 drain (one read and one write of PUBACKs per
    /// buffer), the broker's hand-off rate.
    Ceiling,
    /// `mosquitto_sub -c -q 1 -C N > /dev/null`: the raw subscriber a user would try first.
    MosquittoSub,
    /// `jobstream bench-produce`: the backlog produced from memory with the contenders'
    /// producer settings, no MQTT at all: Kafka's intake.
    KafkaCeiling,
    /// `jobstream run`, QoS 1 with end-to-end acknowledgements.
    Jobstream,
    /// paho-mqtt + confluent-kafka, acknowledging on receipt (benches/baselines).
    Python,
    /// `mosquitto_sub -F '%t\t%p' | python tsv_producer.py` (librdkafka ≥ 2.12).
    Pipeline,
}

impl Contender {
    pub(super) fn label(self) -> &'static str {
        match self {
            Contender::Ceiling => "ceiling",
            Contender::MosquittoSub => "mosquitto-sub",
            Contender::KafkaCeiling => "kafka-ceiling",
            Contender::Jobstream => "jobstream",
            Contender::Python => "python",
            Contender::Pipeline => "pipeline",
        }
    }

    pub(super) fn description(self) -> &'static str {
        match self {
            Contender::Ceiling => "raw QoS 1 drain, PUBACKs batched per read (MQTT ceiling)",
            Contender::MosquittoSub => "mosquitto_sub -c -q 1 > /dev/null",
            Contender::KafkaCeiling => "librdkafka producer from memory (Kafka ceiling, no MQTT)",
            Contender::Jobstream => "jobstream run, QoS 1, end-to-end acks",
            Contender::Python => "paho-mqtt + confluent-kafka bridge (acks on receipt)",
            Contender::Pipeline => "mosquitto_sub -F '%t\\t%p' | confluent-kafka producer",
        }
    }

    pub(super) fn uses_mqtt(self) -> bool {
        self != Contender::KafkaCeiling
    }

    pub(super) fn uses_kafka(self) -> bool {
        !matches!(self, Contender::Ceiling | Contender::MosquittoSub)
    }
}

/// One run to do.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) contender: Contender,
    pub(super) repetition: usize,
    /// MQTT connections of each process.
    pub(super) connections: usize,
    /// jobstream processes sharing one subscription (1 outside the process scaling runs).
    pub(super) processes: usize,
    pub(super) prefix: String,
    pub(super) label: String,
}

/// The processes of one contender.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) children: Vec<Child>,
    /// Last usage seen per child (a zombie keeps its CPU times but not its memory figures).
    pub(super) usage: Vec<ProcUsage>,
    /// The processes are peers, not a pipeline: each one is stopped, none feeds another.
    pub(super) peers: bool,
    /// When the first process printed [`DRAINED_LINE`](super::drain::DRAINED_LINE) (the raw
    /// drain has taken the whole backlog), set by a thread reading its output.
    pub(super) drained_at: Option<Arc<OnceLock<Instant>>>,
    /// The thread reading the first process's output, joined once the process has exited.
    pub(super) output_reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub(super) fn sample(&mut self) {
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

    pub(super) fn total(&self) -> (f64, f64) {
        let cpu = self.usage.iter().map(|u| u.cpu_s).sum();
        let rss = self.usage.iter().map(|u| u.hwm_kb as f64 / 1024.0).sum();
        (cpu, rss)
    }

    /// When the MQTT-only contender's drain ended: the raw drain's own word, else the first
    /// process's exit.
    pub(super) fn drain_ended(&mut self) -> Option<Instant> {
        let Some(at) = &self.drained_at else {
            return self.first_exited().then(Instant::now);
        };
        if at.get().is_none() && self.first_exited() {
            // The process has exited, so its output ends: once the reader is through it, the
            // line is either seen or was never written.
            if let Some(reader) = self.output_reader.take() {
                let _ = reader.join();
            }
        }
        at.get().copied()
    }

    /// Whether the first process (the one that ends the run on its own) has exited.
    pub(super) fn first_exited(&self) -> bool {
        self.usage.first().is_some_and(|u| u.zombie)
    }

    pub(super) fn stop(&mut self) -> Option<i32> {
        // The first process feeds the others (pipeline): stopping it lets them drain. Peers
        // (jobstream processes in one shared subscription) are each stopped.
        let stopped = if self.peers { self.children.len() } else { 1 };
        for child in self.children.iter().take(stopped) {
            let _ = signal(child.id(), "TERM");
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

impl Plan {
    /// Every run of the comparison: each repetition runs the contenders, then the scaling
    /// runs, rotated by one per repetition.
    pub(super) fn all(args: &BenchArgs) -> Vec<Plan> {
        let mut plans = Vec::new();
        let scaling: Vec<usize> = args.scaling.iter().copied().filter(|&c| c > 0).collect();
        for repetition in 0..args.repetitions {
            let mut round: Vec<Plan> = args
                .contenders
                .iter()
                .map(|&contender| Plan {
                    contender,
                    repetition,
                    connections: 1,
                    processes: 1,
                    prefix: "$aws/events/".to_owned(),
                    label: contender.label().to_owned(),
                })
                .collect();
            for &connections in &scaling {
                round.push(Plan {
                    contender: Contender::Jobstream,
                    repetition,
                    connections,
                    processes: 1,
                    prefix: args.scaling_prefix.clone(),
                    label: format!("jobstream ×{connections} (shared)"),
                });
            }
            for &processes in args.scaling_processes.iter().filter(|&&p| p > 0) {
                round.push(Plan {
                    contender: Contender::Jobstream,
                    repetition,
                    connections: 1,
                    processes,
                    prefix: args.scaling_prefix.clone(),
                    label: format!("jobstream {processes} processes (shared)"),
                });
            }
            // Interleave: each repetition starts one contender later, so that a slow spell of this
            // noisy machine does not always land on the same contender.
            let shift = repetition % round.len();
            round.rotate_left(shift);
            plans.extend(round);
        }
        plans
    }
}

impl Bench {
    pub(super) fn spawn(
        &self,
        plan: &Plan,
        id: &str,
        topics: &[String],
        n: u64,
    ) -> Result<Running, BenchError> {
        let log = |name: &str| -> Result<std::fs::File, BenchError> {
            std::fs::File::create(self.dir.join(format!("{id}-{name}.log")))
                .io_with(|| format!("creating {id}-{name}.log"))
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
        let mut drained_at = None;
        let mut output_reader = None;
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
            Contender::Ceiling => {
                let mut drain = Command::new(&self.jobstream_bin)
                    .arg("bench-drain")
                    .args(["--host", &self.host, "--port", &self.port.to_string()])
                    .args(["--client-id", id, "--count", &n.to_string()])
                    .args(["--timeout-secs", &self.args.timeout_secs.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(log("stderr")?)
                    .spawn()
                    .io("cannot start jobstream bench-drain")?;
                let output = drain.stdout.take().ok_or_else(|| {
                    BenchError::Run("jobstream bench-drain has no standard output".into())
                })?;
                let at = Arc::new(OnceLock::new());
                let seen = at.clone();
                output_reader = Some(
                    std::thread::Builder::new()
                        .name("drain-output".into())
                        .spawn(move || {
                            for line in std::io::BufReader::new(output).lines() {
                                match line {
                                    Ok(line) if line.starts_with(super::drain::DRAINED_LINE) => {
                                        let _ = seen.set(Instant::now());
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        })
                        .io("starting the drain's output reader")?,
                );
                drained_at = Some(at);
                vec![drain]
            }
            Contender::MosquittoSub => vec![mosquitto_sub(&["-C", &n.to_string()])
                .stdout(Stdio::null())
                .stderr(log("stderr")?)
                .spawn()
                .io("cannot start mosquitto_sub")?],
            Contender::KafkaCeiling => {
                let mut cmd = Command::new(&self.jobstream_bin);
                cmd.arg("bench-produce")
                    .arg("--input")
                    .arg(self.dir.join(format!("{id}.tsv")));
                kafka_args(&mut cmd);
                vec![cmd
                    .stdout(Stdio::null())
                    .stderr(log("stderr")?)
                    .spawn()
                    .io("cannot start jobstream bench-produce")?]
            }
            Contender::Pipeline => {
                let mut sub = mosquitto_sub(&["-F", "%t\t%p"])
                    .stdout(Stdio::piped())
                    .stderr(log("sub")?)
                    .spawn()
                    .io("cannot start mosquitto_sub")?;
                let pipe = sub.stdout.take().ok_or_else(|| {
                    BenchError::Run("mosquitto_sub has no standard output".into())
                })?;
                let mut cmd = Command::new(&self.args.python);
                cmd.arg(&self.tsv_producer);
                kafka_args(&mut cmd);
                let producer = cmd
                    .stdin(pipe)
                    .stdout(Stdio::null())
                    .stderr(log("producer")?)
                    .spawn()
                    .io("cannot start the TSV producer (--python)")?;
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
                    .io("cannot start the Python bridge (--python)")?]
            }
            Contender::Jobstream => {
                let mut options = String::new();
                for (key, value) in &self.kafka_options {
                    let _ = writeln!(options, "{} = {}", json!(key), json!(value));
                }
                let mut children = Vec::with_capacity(plan.processes);
                for mqtt in self.mqtt_configs(id, plan) {
                    let process = mqtt.client_id.clone();
                    // Files are named after the process's client id: the run's id, then
                    // `-p<k>` when there are several.
                    let name = |stream: &str| match process
                        .strip_prefix(id)
                        .and_then(|own| own.strip_prefix('-'))
                    {
                        Some(own) => format!("{own}-{stream}"),
                        None => stream.to_owned(),
                    };
                    let config = self.dir.join(format!("{process}.toml"));
                    std::fs::write(
                        &config,
                        format!(
                            "[mqtt]\nurl = {url}\nclient_id = {client}\nconnections = {conns}\nshare_group = {group}\n\
                             filters = {filters}\nqos = 1\n\n[kafka]\nbrokers = {kafka}\njob_topic = {jobs}\n\
                             execution_topic = {execs}\ndlq_topic = {dlq}\npartitions = {parts}\n\n\
                             [kafka.options]\n{options}\n[pipeline]\ntopic_prefix = {prefix}\ndrain_timeout_secs = 120\n",
                            url = json!(self.mqtt_url),
                            client = json!(process),
                            conns = mqtt.connections,
                            group = json!(mqtt.share_group),
                            filters = json!(mqtt.filters),
                            kafka = json!(self.kafka),
                            jobs = json!(topics[0]),
                            execs = json!(topics[1]),
                            dlq = json!(topics[2]),
                            parts = self.args.partitions,
                            prefix = json!(plan.prefix),
                        ),
                    )
                    .io_with(|| format!("writing {}", config.display()))?;
                    children.push(
                        Command::new(&self.jobstream_bin)
                            .args(["run", "--stats-every-secs", "1", "--config"])
                            .arg(&config)
                            .env("JOBSTREAM_LOG", "warn")
                            .stdout(log(&name("stdout"))?)
                            .stderr(log(&name("stderr"))?)
                            .spawn()
                            .io("cannot start jobstream run")?,
                    );
                }
                children
            }
        };
        let usage = vec![ProcUsage::default(); children.len()];
        Ok(Running {
            children,
            usage,
            peers: plan.contender == Contender::Jobstream,
            drained_at,
            output_reader,
        })
    }
}
