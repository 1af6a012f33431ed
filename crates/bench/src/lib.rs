//! `jobstream bench`: measured MQTT → Kafka ingest rates against baselines, in one run.
//!
//! For every contender and repetition the bench
//! 1. creates fresh Kafka topics and the contender's persistent MQTT session(s) (QoS 1
//!    subscriptions, then disconnected), and publishes the same backlog of N fleet events
//!    (`jobstream-publisher`; sent = acknowledged by the broker), so the broker holds them;
//! 2. starts the contender and times the drain: from spawning it until Kafka's high watermarks
//!    over the contender's topics add up to N (polled every `--sample-ms` with one ListOffsets
//!    request; the samples also give the rate-over-time chart). The MQTT-only contenders are
//!    timed from spawn until the raw drain reports the whole backlog taken, or until
//!    `mosquitto_sub -c -q 1 -C N > /dev/null` exits;
//! 3. measures latency on a paced stream while the contender keeps running: M more events at
//!    R events/s; an event's latency is from the moment it was handed to the MQTT client to
//!    the `LogAppendTime` Kafka stamped on its record (the run's topics are created with
//!    `message.timestamp.type=LogAppendTime`), read back in step 4 — per record, to within
//!    the 1 ms of Kafka's timestamps;
//! 4. stops the contender (SIGTERM, graceful), reads its topics back from the beginning and
//!    counts lost and duplicated events by `eventId` against what was published, then reopens
//!    the MQTT session(s) to count messages the broker still held (unacknowledged) and drops
//!    them.
//!
//! CPU (utime + stime) and peak RSS (VmHWM) of the contender's processes come from /proc,
//! read when the drain completes: they cover start-up and the drain at full rate.
//!
//! Where each part lives:
//! - `contender`: the contenders, the plan of runs (interleaved, rotated per repetition), and
//!   how each contender's processes are started;
//! - `drain`: the MQTT ceiling, a minimal QoS 1 drain run as `jobstream bench-drain`;
//! - `produce`: the Kafka ceiling, a producer of the backlog from memory run as
//!   `jobstream bench-produce`;
//! - `brokers`: the mosquitto and Apache Kafka bench starts when none is given;
//! - `runner`: one run — topics, sessions, backlog, the timed drain, latency, the stop — and
//!   the Kafka → Parquet stage after jobstream's runs;
//! - `sampling`: /proc CPU and memory, and Kafka watermarks polled from a thread;
//! - `verification`: lost and duplicated events, by id, against what was published;
//! - `statistics`: latency percentiles, medians and ranges;
//! - `summary` and `result`: the table, the JSON result and the machine it ran on;
//!   `chart`: the rate-over-time and latency-distribution SVGs;
//! - `error`: [`BenchError`], what stops a bench (a contender's failed run does not: it is
//!   recorded in its result).

mod brokers;
mod chart;
mod contender;
mod drain;
mod error;
mod produce;
mod result;
mod runner;
mod sampling;
mod statistics;
mod summary;
mod verification;

use std::io::Write;
use std::path::{Path, PathBuf};

use jobstream_sink::kafka::parse_option;

pub use contender::Contender;
pub use drain::{drain, DrainArgs, Drained};
pub use error::BenchError;
pub use produce::{produce, ProduceArgs};

use contender::Plan;
use error::{invalid_flag, IoContext as _};
use runner::Bench;
use summary::Summary;

/// The bench's settings, as the flags of `jobstream bench` (the binary flattens them in).
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
        default_value = "ceiling,mosquitto-sub,kafka-ceiling,jobstream,python,pipeline"
    )]
    contenders: Vec<Contender>,
    /// jobstream connection counts to measure (shared subscription under --scaling-prefix);
    /// `0` skips the scaling runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    scaling: Vec<usize>,
    /// Process counts to measure: that many `jobstream run` processes of one connection each,
    /// in one shared subscription under --scaling-prefix; `0` skips them.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    scaling_processes: Vec<usize>,
    /// Topic prefix of the scaling runs (mosquitto 2.0.11 cannot share `$` topics).
    #[arg(long, default_value = "bench/events/")]
    scaling_prefix: String,
    /// Events of the paced latency stream after each drain (0 skips latency).
    #[arg(long, default_value_t = 5_000)]
    latency_events: usize,
    /// Events per second of the latency stream (keep it below every contender's capacity).
    #[arg(long, default_value_t = 2_000.0)]
    latency_rate: f64,
    /// Milliseconds between Kafka watermark samples (progress, completion, the rate chart).
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
    #[arg(long = "kafka-option", value_parser = parse_option)]
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
    /// Start bench's mosquitto with `set_tcp_nodelay true` (Nagle's algorithm off): lower
    /// latency for subscribers that acknowledge late, such as jobstream, and a slower hand-off
    /// of a backlog. Off by default, so that the ceiling is the broker's fastest drain.
    #[arg(long)]
    mosquitto_nodelay: bool,
    /// Seconds a single drain may take before the run is recorded as failed.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The JSON result.
    #[arg(long, default_value = "bench-result.json")]
    output: PathBuf,
    /// The rate-over-time chart (SVG).
    #[arg(long, default_value = "bench-rate.svg")]
    chart: PathBuf,
    /// The per-record latency distribution chart (SVG).
    #[arg(long, default_value = "bench-latency.svg")]
    latency_chart: PathBuf,
    /// Skip the Kafka → Parquet measurement after the jobstream runs.
    #[arg(long)]
    no_parquet: bool,
    /// Skip the unrecorded warm-up run of the first contender. Without it, the first recorded
    /// run meets a cold broker (Kafka's JIT): its p99 latency was 3–6× the others'.
    #[arg(long)]
    no_warmup: bool,
    /// Working directory for logs, broker data and scripts (default: a new temporary one).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

/// Creates the folder `path` is to be written in and checks that the file can be written
/// there, leaving no empty file behind.
fn prepare_output(flag: &'static str, path: &Path) -> Result<(), BenchError> {
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
        .map_err(|source| BenchError::Output {
            flag,
            path: path.to_owned(),
            source,
        })
}

/// Runs the whole comparison: every planned run of every contender, then the table to `out`
/// (before the files, so that a file that cannot be written loses no figures) and the JSON
/// result and chart to their files.
///
/// Execution model: blocking, for minutes; brokers and contenders are child processes, the
/// publisher runs on a runtime of its own, progress goes to standard error. A failed write to
/// `out` (a closed pipe) is ignored.
///
/// # Errors
/// A bad flag ([`BenchError::InvalidFlag`], [`BenchError::Output`]) before anything starts, a
/// broker that cannot be started, or a result that cannot be written. A contender's failed run
/// is recorded in the result, not returned.
pub fn run(args: BenchArgs, out: &mut dyn Write) -> Result<(), BenchError> {
    validate(&args)?;
    let mut bench = Bench::start(args)?;
    let plans = Plan::all(&bench.args);
    let results = bench.run_all(&plans);
    let summary = Summary::of(&bench, &plans, results);
    let _ = write!(out, "{}", summary.table);
    let _ = out.flush();
    let text = serde_json::to_string_pretty(&summary.json(&bench))?;
    std::fs::write(&bench.args.output, format!("{text}\n"))
        .io_with(|| format!("cannot write {}", bench.args.output.display()))?;
    std::fs::write(&bench.args.chart, &summary.chart)
        .io_with(|| format!("cannot write {}", bench.args.chart.display()))?;
    std::fs::write(&bench.args.latency_chart, &summary.latency_chart)
        .io_with(|| format!("cannot write {}", bench.args.latency_chart.display()))?;
    let _ = writeln!(
        out,
        "wrote {}, {} and {}",
        bench.args.output.display(),
        bench.args.chart.display(),
        bench.args.latency_chart.display()
    );
    let _ = out.flush();
    Ok(())
}

/// The flags' checks, before minutes of measuring rather than after them.
fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    if args.events == 0 || args.repetitions == 0 {
        return Err(invalid_flag(
            "--events and --repetitions must be at least 1",
        ));
    }
    if args.contenders.is_empty() {
        return Err(invalid_flag(
            "--contenders must name at least one contender",
        ));
    }
    if args.scaling.iter().any(|&c| c > 64) {
        return Err(invalid_flag(
            "--scaling connection counts must be 64 or fewer",
        ));
    }
    if args.scaling_processes.iter().any(|&p| p > 16) {
        return Err(invalid_flag(
            "--scaling-processes counts must be 16 or fewer (each is a jobstream process)",
        ));
    }
    if !(args.latency_rate.is_finite() && args.latency_rate > 0.0) {
        return Err(invalid_flag(
            "--latency-rate must be a positive number of events per second",
        ));
    }
    if args.partitions < 1 {
        return Err(invalid_flag("--partitions must be at least 1"));
    }
    if args.mosquitto_nodelay && args.mqtt.is_some() {
        return Err(invalid_flag(
            "--mosquitto-nodelay configures the mosquitto bench starts; with --mqtt, set `set_tcp_nodelay true` in your broker's configuration instead",
        ));
    }
    // Checked before minutes of measuring, not after them: a result that cannot be written is
    // a whole run lost.
    for (flag, path) in [
        ("--output", &args.output),
        ("--chart", &args.chart),
        ("--latency-chart", &args.latency_chart),
    ] {
        prepare_output(flag, path)?;
    }
    let needs_python = args
        .contenders
        .iter()
        .any(|c| matches!(c, Contender::Python | Contender::Pipeline));
    if needs_python && !args.python.exists() {
        return Err(invalid_flag(format!(
            "--python {} does not exist; the Python baselines need a Python with paho-mqtt and confluent-kafka (scripts/test-env makes .venv)",
            args.python.display()
        )));
    }
    Ok(())
}
