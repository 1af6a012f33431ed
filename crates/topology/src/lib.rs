//! The whole pipeline as one process: which stages run, on which runtime and threads, with
//! which metrics and readiness checks, and in which order they stop.
//!
//! ```text
//!              ┌──────────── tokio runtime (2 worker threads) ─────────────┐
//!  MQTT ──────▶│ bridge (jobstream_bridge::run): connections, parser       │──▶ Kafka
//!              │ workers, producer, ackers         ── or, without Kafka ── │──▶ Parquet files
//!              │ /metrics /health /ready endpoint (when a listen address)  │
//!              └───────────────────────────────────────────────────────────┘
//!  Kafka ─────▶ Parquet stage thread (jobstream_sink::consumer::run) ─────────▶ Parquet files
//! ```
//!
//! [`Topology`] says which of the two stages run (either, or both in one process);
//! [`Topology::start`] builds the runtime, binds the endpoint, registers every stage's counters
//! and readiness checks in one registry, and starts the Parquet stage; [`Running::run_until`]
//! runs the bridge until the caller's future completes (a signal for `jobstream run`, "the fleet
//! has been published and everything is in" for `jobstream demo`) or the Parquet stage ends on
//! its own, which only a failure does.
//!
//! Shutdown order: only the bridge's sources watch the shutdown future; the bridge drains
//! (everything it took from MQTT is confirmed by Kafka and acknowledged, or left unacknowledged
//! for redelivery) and returns; only then is the Parquet stage told to stop, so it publishes
//! and commits what the bridge produced last. A blocking task stuck on a hung broker gets two
//! seconds after the drain, not forever.

mod error;
mod telemetry;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use jobstream_bridge::{BridgeConfig, BridgeStats, Output};
use jobstream_sink::consumer::{StageConfig, StageStats};
use jobstream_sink::SinkError;

pub use error::TopologyError;
use telemetry::Telemetry;

/// How long blocking tasks (a producer's flush or teardown on a broker that hangs) may hold the
/// exit once the bridge has drained: the drain has its own deadline, this only keeps a stuck
/// task from holding the process forever.
const BLOCKING_TASK_GRACE: Duration = Duration::from_secs(2);

/// The runtime's worker threads: the connection tasks, batchers and ackers are light; the
/// parser workers and the Parquet stage have threads of their own.
const RUNTIME_WORKER_THREADS: usize = 2;

/// Which stages run in this process, and where their metrics are served.
#[derive(Debug, Default)]
pub struct Topology {
    /// MQTT → Kafka (or MQTT → Parquet without Kafka), when set.
    pub bridge: Option<BridgeConfig>,
    /// Kafka → Parquet, when set.
    pub stage: Option<StageConfig>,
    /// Where `/metrics`, `/health` and `/ready` are served; `None`: no endpoint.
    pub metrics: Option<MetricsEndpoint>,
}

/// A checked listen address for the metrics endpoint, and where it came from.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    /// `ip:port` to bind (port 0: any free port).
    pub listen: String,
    /// Where the address was set (a flag, or a file and key), for the message when it cannot
    /// be bound.
    pub origin: String,
}

/// Every stage's counters, readable while the topology runs and after it ended.
#[derive(Debug, Clone)]
pub struct Stats {
    /// The bridge's counters (all zero without a bridge).
    pub bridge: Arc<BridgeStats>,
    /// The Parquet stage's counters (all zero without a stage).
    pub stage: Arc<StageStats>,
    bridge_output: Option<Output>,
    has_stage: bool,
}

impl Stats {
    /// One line per running stage, as `jobstream run` logs them every interval and prints at
    /// the end.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(output) = &self.bridge_output {
            lines.push(self.bridge.line(output));
        }
        if self.has_stage {
            lines.push(self.stage.line());
        }
        lines
    }
}

/// The Parquet stage's thread and how to stop it.
#[derive(Debug)]
struct StageThread {
    thread: JoinHandle<Result<(), SinkError>>,
    stop: Arc<AtomicBool>,
    /// Closes when the stage returns, whatever the reason.
    ended: tokio::sync::oneshot::Receiver<()>,
}

/// A started topology: the Parquet stage runs; the bridge starts in [`Running::run_until`].
#[derive(Debug)]
pub struct Running {
    runtime: tokio::runtime::Runtime,
    bridge: Option<BridgeConfig>,
    stage: Option<StageThread>,
    stats: Stats,
}

impl Topology {
    /// Builds the runtime, binds the metrics endpoint (before anything connects, so a taken
    /// port fails the start rather than the first scrape), registers every stage's counters and
    /// readiness checks, and starts the Parquet stage's thread.
    ///
    /// # Errors
    /// The runtime or the stage's thread cannot start, or the endpoint cannot be bound.
    pub fn start(self) -> Result<Running, TopologyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKER_THREADS)
            .enable_all()
            .build()
            .map_err(TopologyError::Runtime)?;
        let telemetry = Telemetry::start(&runtime, self.metrics.as_ref())?;
        let bridge_stats = Arc::new(
            self.bridge
                .as_ref()
                .map_or_else(BridgeStats::default, |config| {
                    BridgeStats::registered(&telemetry.registry, &telemetry.health, config)
                }),
        );
        if let Some(Output::Parquet(parquet)) = self.bridge.as_ref().map(|b| &b.output) {
            telemetry.watch_direct_parquet(&parquet.local_dir());
        }
        let stage_stats = Arc::new(StageStats::default());
        let stats = Stats {
            bridge: bridge_stats,
            stage: Arc::clone(&stage_stats),
            bridge_output: self.bridge.as_ref().map(|b| b.output.clone()),
            has_stage: self.stage.is_some(),
        };
        let stage = match self.stage {
            Some(config) => {
                let stop = Arc::new(AtomicBool::new(false));
                telemetry.watch_stage(&stage_stats, &config, &stop);
                let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
                let thread = {
                    let stop = Arc::clone(&stop);
                    std::thread::Builder::new()
                        .name("parquet-stage".into())
                        .spawn(move || {
                            let result = jobstream_sink::consumer::run(config, stage_stats, &stop);
                            let _ = ended_tx.send(());
                            result
                        })
                        .map_err(TopologyError::StageSpawn)?
                };
                Some(StageThread {
                    thread,
                    stop,
                    ended,
                })
            }
            None => None,
        };
        Ok(Running {
            runtime,
            bridge: self.bridge,
            stage,
            stats,
        })
    }
}

impl Running {
    /// Every stage's counters (shared: they keep counting while the topology runs).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// The runtime the bridge runs on, for the caller's own tasks (a stats reporter, the
    /// demo's publisher). They are cancelled when [`Running::run_until`] returns.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Runs the bridge until `until` completes or the Parquet stage ends on its own, then stops
    /// the stages in order (see the crate's docs) and returns `until`'s output (`None` when it
    /// had not completed: the stage or the bridge ended first).
    ///
    /// # Errors
    /// The bridge's error, else the Parquet stage's: the bridge's comes first because the stage
    /// ending early stops the bridge, never the other way round.
    pub fn run_until<T>(self, until: impl Future<Output = T>) -> Result<Option<T>, TopologyError> {
        let Running {
            runtime,
            bridge,
            stage,
            stats,
        } = self;
        let (stage_thread, stage_ended) = match stage {
            Some(StageThread {
                thread,
                stop,
                ended,
            }) => (Some((thread, stop)), Some(ended)),
            None => (None, None),
        };
        let mut output = None;
        let bridge_result = runtime.block_on(async {
            // The Parquet stage ending on its own means it failed: the whole process stops, so
            // that a supervisor restarts it, rather than bridging on without Parquet.
            let stage_ended = async move {
                match stage_ended {
                    Some(ended) => {
                        let _ = ended.await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let shutdown = async {
                tokio::select! {
                    value = until => output = Some(value),
                    () = stage_ended => {}
                }
            };
            match bridge {
                Some(config) => {
                    jobstream_bridge::run(config, Arc::clone(&stats.bridge), shutdown).await
                }
                None => {
                    shutdown.await;
                    Ok(())
                }
            }
        });
        runtime.shutdown_timeout(BLOCKING_TASK_GRACE);
        let stage_result = stage_thread.map(|(thread, stop)| {
            stop.store(true, Ordering::Relaxed);
            match thread.join() {
                Ok(result) => result.map_err(TopologyError::Stage),
                Err(_) => Err(TopologyError::StagePanicked),
            }
        });
        bridge_result?;
        stage_result.transpose()?;
        Ok(output)
    }
}
