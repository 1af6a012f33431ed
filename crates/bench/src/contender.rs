//! What is measured: the contenders, the runs planned for them, and the processes of one
//! while it runs.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext as _};
use serde_json::json;

use super::brokers::signal;
use super::runner::Bench;
use super::sampling::{proc_usage, ProcUsage};
use super::BenchArgs;

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
    pub(super) fn label(self) -> &'static str {
        match self {
            Contender::Ceiling => "ceiling",
            Contender::KafkaCeiling => "kafka-ceiling",
            Contender::Jobstream => "jobstream",
            Contender::Python => "python",
            Contender::Pipeline => "pipeline",
        }
    }

    pub(super) fn description(self) -> &'static str {
        match self {
            Contender::Ceiling => "mosquitto_sub -c -q 1 > /dev/null (MQTT ceiling)",
            Contender::KafkaCeiling => "TSV producer from a file (Kafka ceiling, no MQTT)",
            Contender::Jobstream => "jobstream run, QoS 1, end-to-end acks",
            Contender::Python => "paho-mqtt + confluent-kafka bridge (acks on receipt)",
            Contender::Pipeline => "mosquitto_sub -F '%t\\t%p' | confluent-kafka producer",
        }
    }

    pub(super) fn uses_mqtt(self) -> bool {
        self != Contender::KafkaCeiling
    }

    pub(super) fn uses_kafka(self) -> bool {
        self != Contender::Ceiling
    }
}

/// One run to do.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) contender: Contender,
    pub(super) repetition: usize,
    pub(super) connections: usize,
    pub(super) prefix: String,
    pub(super) label: String,
}

/// The processes of one contender.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) children: Vec<Child>,
    /// Last usage seen per child (a zombie keeps its CPU times but not its memory figures).
    pub(super) usage: Vec<ProcUsage>,
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

    /// Whether the first process (the one that ends the run on its own) has exited.
    pub(super) fn first_exited(&self) -> bool {
        self.usage.first().is_some_and(|u| u.zombie)
    }

    pub(super) fn stop(&mut self) -> Option<i32> {
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
                    prefix: "$aws/events/".to_owned(),
                    label: contender.label().to_owned(),
                })
                .collect();
            for &connections in &scaling {
                round.push(Plan {
                    contender: Contender::Jobstream,
                    repetition,
                    connections,
                    prefix: args.scaling_prefix.clone(),
                    label: format!("jobstream ×{connections} (shared)"),
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
                .io("cannot start mosquitto_sub")?],
            Contender::KafkaCeiling => {
                let mut cmd = Command::new(&self.args.python);
                cmd.arg(&self.tsv_producer);
                kafka_args(&mut cmd);
                vec![cmd
                    .stdin(
                        std::fs::File::open(self.dir.join(format!("{id}.tsv")))
                            .io_with(|| format!("opening {id}.tsv"))?,
                    )
                    .stdout(Stdio::null())
                    .stderr(log("stderr")?)
                    .spawn()
                    .io("cannot start the TSV producer (--python)")?]
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
                ).io_with(|| format!("writing {}", config.display()))?;
                vec![Command::new(&self.jobstream_bin)
                    .args(["run", "--stats-every-secs", "1", "--config"])
                    .arg(&config)
                    .env("JOBSTREAM_LOG", "warn")
                    .stdout(log("stdout")?)
                    .stderr(log("stderr")?)
                    .spawn()
                    .io("cannot start jobstream run")?]
            }
        };
        let usage = vec![ProcUsage::default(); children.len()];
        Ok(Running { children, usage })
    }
}
