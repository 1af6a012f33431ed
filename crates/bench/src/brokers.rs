//! The brokers a bench run needs when none is given: a mosquitto and an Apache Kafka of its
//! own, each stopped when its handle drops.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext as _};

use super::BenchArgs;

/// A broker process bench started, stopped on drop.
#[derive(Debug)]
pub(super) struct Managed(Child);

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

pub(super) fn signal(pid: u32, name: &str) -> std::io::Result<()> {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
}

pub(super) fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").io("finding a free port")?;
    Ok(listener.local_addr().io("finding a free port")?.port())
}

pub(super) fn wait_port(port: u16, what: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::BrokerStart(format!(
        "{what} did not open port {port} within 30 s (see its log in the work directory)"
    )))
}

/// What bench's own mosquitto is configured with, besides its listener (scripts/bench-brokers
/// writes the same): an unlimited in-flight window and queue, since the backlog must fit and the
/// hand-off must not be throttled to 20 messages in flight (mosquitto's default).
pub(super) const MOSQUITTO_SETTINGS: &str = "max_inflight_messages 0\nmax_queued_messages 0";

/// With `--mosquitto-nodelay`: Nagle's algorithm off. With it on (mosquitto's default),
/// mosquitto holds each small PUBLISH until the last one's TCP ACK, and a subscriber that
/// acknowledges only once Kafka confirmed has nothing to send with that ACK, so its kernel
/// delays it: jobstream paid 2–3 ms more median latency than clients that acknowledge on
/// receipt. Off, mosquitto writes a segment per message: the raw drain of a 100k backlog fell
/// from ~170k to ~90k events/s (README, Benchmarks).
pub(super) const MOSQUITTO_NODELAY: &str = "set_tcp_nodelay true";

pub(super) fn start_mosquitto(
    args: &BenchArgs,
    dir: &Path,
) -> Result<(Managed, String), BenchError> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{MOSQUITTO_SETTINGS}\n{}\n",
            if args.mosquitto_nodelay {
                MOSQUITTO_NODELAY
            } else {
                ""
            }
        ),
    )
    .io_with(|| format!("writing {}", conf.display()))?;
    let log = dir.join("mosquitto.log");
    let log = std::fs::File::create(&log).io_with(|| format!("creating {}", log.display()))?;
    let child = Command::new(&args.mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .io_with(|| format!("cannot start {}", args.mosquitto.display()))?;
    let managed = Managed(child);
    wait_port(port, "mosquitto")?;
    Ok((managed, format!("mqtt://127.0.0.1:{port}")))
}

/// Starts Apache Kafka with `scripts/kafka start` (one KRaft node, freshly formatted, the same
/// settings as the tests' broker) and waits until its log says it started.
pub(super) fn start_kafka(
    args: &BenchArgs,
    dir: &Path,
) -> Result<(Managed, String, KafkaBroker), BenchError> {
    let (port, controller_port) = (free_port()?, free_port()?);
    let data = dir.join("kafka");
    std::fs::create_dir_all(&data).io_with(|| format!("creating {}", data.display()))?;
    let libs = Command::new(&args.kafka_script)
        .arg("libs")
        .stderr(Stdio::inherit())
        .output()
        .io_with(|| format!("cannot run {}", args.kafka_script.display()))?;
    if !libs.status.success() {
        return Err(BenchError::BrokerStart(format!(
            "no Apache Kafka to start: run `{} fetch` once (Maven resolves the broker's jars), or pass --kafka BROKERS for a broker you run",
            args.kafka_script.display()
        )));
    }
    let libs = PathBuf::from(String::from_utf8_lossy(&libs.stdout).trim());
    let version = std::fs::read_dir(&libs)
        .io_with(|| format!("listing {}", libs.display()))?
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
        .io_with(|| format!("cannot start {}", args.kafka_script.display()))?;
    let mut managed = Managed(child);
    // The port opens before requests are served; the broker's own word is the signal.
    let log = data.join("kafka.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Kafka Server started")) {
            break;
        }
        if let Ok(Some(status)) = managed.0.try_wait() {
            return Err(BenchError::BrokerStart(format!(
                "Apache Kafka exited ({status}) before it started: see {}",
                log.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(BenchError::BrokerStart(format!(
                "Apache Kafka did not start within 120 s: see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let broker = KafkaBroker {
        started: true,
        version: version.map(|v| format!("Apache Kafka {v}")),
    };
    Ok((managed, format!("127.0.0.1:{port}"), broker))
}

/// The Kafka broker the runs go to.
#[derive(Debug)]
pub(super) struct KafkaBroker {
    /// Started by bench (else given with --kafka).
    pub(super) started: bool,
    /// "Apache Kafka 4.1.1" when bench started it.
    pub(super) version: Option<String>,
}

impl KafkaBroker {
    pub(super) fn describe(&self) -> String {
        match (self.started, &self.version) {
            (true, Some(version)) => format!("{version}, started by bench"),
            (true, None) => "Apache Kafka, started by bench".to_owned(),
            (false, _) => "external broker (--kafka)".to_owned(),
        }
    }
}
