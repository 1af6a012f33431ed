//! The `jobstream` command. See `jobstream --help` and the README.
//!
//! Exit codes: 0 success; 1 `report --fail-on-mismatch` found disagreeing jobs; 2 bad flags (clap); 66 input not found; 69 a broker is unreachable; 70 a bug (a thread panicked); 71 the OS refused a thread;
//! 74 I/O error while running; 75 the drain did not finish in time; 77 Kafka refused us (TLS, authentication, ACLs); 78 invalid configuration. Rejected events are not errors: they go to the DLQ and the summary.

/// `println!` that never panics: when standard output is gone (`jobstream replay … | head -1`),
/// the line is dropped and the command carries on to its normal end and exit status, instead of
/// dying with a panic after the work is done.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod demo;
mod generate;
mod ops;
mod replay;
mod report;
mod run;
mod simulate;
mod tables;

/// mimalloc, not glibc's malloc. A replay builds each Arrow batch (a few MB) on the parsing
/// thread and frees it on the encoder thread, and Parquet grows and shrinks a buffer or two per
/// page; glibc served that with more system time and more copying reallocations. Interleaved
/// replays of 1M events, same build otherwise: 5-8% less wall time, 0.05 s less system time.
/// Without transparent huge pages (`no_thp` in Cargo.toml): with them, perf showed 6.7% of
/// the CPU in the kernel clearing 2 MiB pages that mimalloc had purged and touched again, 1.4%
/// without, and the same wall time within noise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an input file that cannot be opened (sysexits EX_NOINPUT).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when a broker cannot be reached (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when Kafka turned us away: TLS, authentication or ACLs (sysexits EX_NOPERM).
pub const EXIT_REFUSED: u8 = 77;
/// Exit code for an I/O failure while running (sysexits EX_IOERR).
pub const EXIT_IO: u8 = 74;
/// Exit code for a bug: a pipeline thread panicked (sysexits EX_SOFTWARE).
pub const EXIT_SOFTWARE: u8 = 70;
/// Exit code when the operating system refused a thread (sysexits EX_OSERR).
pub const EXIT_OS: u8 = 71;
/// Exit code when the drain did not finish in time (sysexits EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: u8 = 75;
/// Exit code for an invalid configuration (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// The version, and whether this build has the crash tests' crash points (the test suite's
/// builds do, with the `fault-injection` feature; release builds do not).
#[cfg(not(feature = "fault-injection"))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "fault-injection")]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (with fault injection for tests)"
);

#[derive(Debug, Parser)]
#[command(
    name = "jobstream",
    version = VERSION,
    about = "Moves AWS IoT Jobs events from MQTT into Kafka and analytics-ready Parquet.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (default) or `json` (one object per line); `run` also reads
    /// `[log] format` from its config file.
    #[arg(long, global = true, env = "JOBSTREAM_LOG_FORMAT", value_enum)]
    log_format: Option<ops::LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline on embedded defaults, with zero setup, and summarise what went where.
    Demo(demo::DemoArgs),
    /// Bridge MQTT to Kafka with end-to-end acknowledgements (config file, environment, flags).
    Run(Box<run::RunArgs>),
    /// Replay a capture (`TOPIC<TAB>PAYLOAD` lines) through the parser into Parquet and a DLQ.
    Replay(replay::ReplayArgs),
    /// Per-job rollout outcomes from the Parquet output, reconciled with AWS's own counters.
    Report(report::ReportArgs),
    /// Print the CREATE EXTERNAL TABLE statements for Athena, Spark, Trino or Hive over a root.
    Tables(tables::TablesArgs),
    /// Write a simulated fleet's job events as a capture file (the format `replay` reads).
    Generate(generate::GenerateArgs),
    /// Publish a realistic fleet's job lifecycles to an MQTT broker and report what was sent.
    Simulate(Box<simulate::SimulateArgs>),
    /// Measure MQTT → Kafka ingest rates against baselines on real brokers, with a report.
    Bench(Box<jobstream_bench::BenchArgs>),
    /// The MQTT ceiling bench starts: drain a persistent session's QoS 1 backlog, doing nothing.
    #[command(hide = true)]
    BenchDrain(jobstream_bench::DrainArgs),
    /// The Kafka ceiling bench starts: produce a capture from memory, doing nothing else.
    #[command(hide = true)]
    BenchProduce(jobstream_bench::ProduceArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// A failure exiting with `code`.
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: EXIT_IO,
            error,
        }
    }
}

/// The exit code of a sink error: bad settings are configuration errors, Kafka's refusals and
/// silence have codes of their own, a panicked encoder is a bug (70), the rest is I/O.
pub fn sink_exit_code(error: &jobstream_sink::SinkError) -> u8 {
    match error {
        jobstream_sink::SinkError::Config { .. } => EXIT_CONFIG,
        jobstream_sink::SinkError::KafkaRefused { .. } => EXIT_REFUSED,
        jobstream_sink::SinkError::KafkaUnreachable { .. } => EXIT_UNAVAILABLE,
        jobstream_sink::SinkError::EncoderPanicked { .. } | jobstream_sink::SinkError::NoWriter => {
            EXIT_SOFTWARE
        }
        jobstream_sink::SinkError::EncoderSpawn { .. } => EXIT_OS,
        jobstream_sink::SinkError::Store { source, .. } => match source {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => EXIT_REFUSED,
            object_store::Error::NotFound { .. } => EXIT_NO_INPUT,
            _ => EXIT_UNAVAILABLE,
        },
        jobstream_sink::SinkError::Io { action, source, .. }
            if *action == "open capture" && source.kind() == std::io::ErrorKind::NotFound =>
        {
            EXIT_NO_INPUT
        }
        _ => EXIT_IO,
    }
}

/// The exit code of a bridge error: its Kafka errors map as the sink's do, except that Kafka
/// failing in any other way is "unavailable" (69): the bridge only ever waits on it.
pub fn bridge_exit_code(error: &jobstream_bridge::BridgeError) -> u8 {
    use jobstream_bridge::BridgeError;
    use jobstream_sink::SinkError;
    match error {
        BridgeError::MqttUrl(_)
        | BridgeError::Tls(_)
        | BridgeError::SigV4(_)
        | BridgeError::UnknownMqttVersion { .. }
        | BridgeError::InvalidSetting { .. } => EXIT_CONFIG,
        BridgeError::MqttUnreachable { .. } => EXIT_UNAVAILABLE,
        BridgeError::Kafka(error @ (SinkError::KafkaRefused { .. } | SinkError::Config { .. })) => {
            sink_exit_code(error)
        }
        BridgeError::Kafka(_) => EXIT_UNAVAILABLE,
        BridgeError::DrainTimeout { .. } => EXIT_TEMPFAIL,
        BridgeError::Parquet(_) => EXIT_IO,
        BridgeError::Spawn { .. } => EXIT_OS,
        BridgeError::Panicked { .. } => EXIT_SOFTWARE,
    }
}

/// The exit code of a bench error: flags are configuration errors, brokers that do not come up
/// are unavailable services, files are I/O.
fn bench_exit_code(error: &jobstream_bench::BenchError) -> u8 {
    use jobstream_bench::BenchError;
    match error {
        BenchError::InvalidFlag(_) => EXIT_CONFIG,
        BenchError::Output { .. } | BenchError::Io { .. } => EXIT_IO,
        BenchError::BrokerStart(_) | BenchError::Kafka { .. } | BenchError::Run(_) => {
            EXIT_UNAVAILABLE
        }
        BenchError::Topics(error) => sink_exit_code(error),
        BenchError::Publish(error) if error.is_settings() => EXIT_CONFIG,
        BenchError::Publish(_) => EXIT_UNAVAILABLE,
        BenchError::Mqtt(error) => bridge_exit_code(error),
        BenchError::Encode(_) => EXIT_SOFTWARE,
    }
}

impl From<jobstream_topology::TopologyError> for Failure {
    fn from(error: jobstream_topology::TopologyError) -> Self {
        use jobstream_topology::TopologyError;
        let code = match &error {
            TopologyError::Runtime(_) | TopologyError::StageSpawn(_) => EXIT_OS,
            TopologyError::MetricsBind { .. } => EXIT_CONFIG,
            TopologyError::Bridge(error) => bridge_exit_code(error),
            TopologyError::Stage(error) => sink_exit_code(error),
            TopologyError::StagePanicked => EXIT_SOFTWARE,
        };
        Failure::new(code, error)
    }
}

impl From<jobstream_sink::SinkError> for Failure {
    fn from(error: jobstream_sink::SinkError) -> Self {
        Failure {
            code: sink_exit_code(&error),
            error: error.into(),
        }
    }
}

/// An error and its causes on one line, each cause once. The library errors say their cause in
/// their own message (so a log line with just the error is whole) and also give it as their
/// `source`; `{:#}` would print it twice.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` is a service: its progress (connections, stats, drain) is info. The other commands
    // print their own summaries and log only warnings by default.
    let (file_log, default_level) = match &cli.command {
        Command::Run(args) => (
            ops::peek_log_settings(args.config.as_deref()),
            "info,rumqttc=warn",
        ),
        // The demo's in-process broker logs every client that comes and goes as an error.
        Command::Demo(_) => (ops::LogSettings::default(), "warn,rumqttd=off"),
        _ => (ops::LogSettings::default(), "warn"),
    };
    let log_format = cli.log_format.or(file_log.format).unwrap_or_default();
    ops::init_logging(log_format, file_log.level.as_deref(), default_level);
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Run(args) => run::run(*args),
        Command::Replay(args) => replay::run(args),
        Command::Report(args) => report::run(args),
        Command::Tables(args) => tables::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Bench(args) => jobstream_bench::run(*args, &mut std::io::stdout().lock())
            .map_err(|error| Failure::new(bench_exit_code(&error), error)),
        Command::BenchProduce(args) => jobstream_bench::produce(&args)
            .map(|sent| println!("{sent} records delivered"))
            .map_err(|error| Failure::new(bench_exit_code(&error), error)),
        Command::BenchDrain(args) => jobstream_bench::drain(&args)
            .map(|drained| {
                println!("{} messages in {} reads", drained.messages, drained.reads);
            })
            .map_err(|error| Failure::new(bench_exit_code(&error), error)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            match log_format {
                ops::LogFormat::Text => {
                    eprintln!("jobstream: error: {}", error_text(&failure.error))
                }
                ops::LogFormat::Json => {
                    tracing::error!(exit_code = failure.code, "{}", error_text(&failure.error));
                }
            }
            ExitCode::from(failure.code)
        }
    }
}
