//! Publishes a fleet's events to an MQTT broker as devices would: the publisher behind
//! `jobstream simulate` (a fleet on demand), `jobstream bench` (its backlogs and paced runs) and
//! `jobstream demo` (the embedded broker's traffic).
//!
//! ```text
//!   jobstream-fleet ──Message──▶ publish ──▶ connection i = hash(job id) % connections
//!                                              │   (all of a job's events on one connection,
//!                                              │    so they arrive in order)
//!                                              └─▶ rumqttc event loop ──PUBLISH──▶ broker
//!                                                        ◀──PUBACK── (counted: "confirmed")
//! ```
//!
//! A QoS 1 message counts as sent once the broker acknowledged it (PUBACK), a QoS 0 message
//! once it was written to the connection; [`publish`] returns only when every message is, or
//! with a [`PublishError`] that says how many were confirmed by then.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobstream_bridge::{BridgeError, MqttConfig};
use jobstream_fleet::{Message, Tally};
use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet, QoS};

/// How long the broker may confirm nothing while publishes are outstanding before
/// [`publish`] gives up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Why a publish run did not get every message to the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The MQTT settings are wrong (URL, TLS files); nothing was connected.
    #[error(transparent)]
    Settings(#[from] BridgeError),
    /// A connection attempt failed (refused, TLS handshake, bad credentials).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The broker, credentials redacted.
        url: String,
        /// What the client saw.
        #[source]
        source: ConnectionError,
    },
    /// A connection's task ended before it reported the connection up or failed.
    #[error("cannot connect to {url}: the connection task ended")]
    ConnectTaskEnded {
        /// The broker, credentials redacted.
        url: String,
    },
    /// No connection came up within [`PublishSettings::connect_timeout`].
    #[error("no connection to {url} within {within:?}")]
    ConnectTimeout {
        /// The broker, credentials redacted.
        url: String,
        /// The connect timeout.
        within: Duration,
    },
    /// A connection broke after it was up.
    #[error("the connection to {url} was lost after {confirmed} confirmed publishes")]
    Lost {
        /// The broker, credentials redacted.
        url: String,
        /// Publishes the broker had confirmed by then (all connections).
        confirmed: u64,
        /// What the client saw, when it said.
        #[source]
        source: Option<ConnectionError>,
    },
    /// The broker stopped confirming for [`STALL_TIMEOUT`] with publishes outstanding.
    #[error("the broker confirmed {confirmed} of {total} publishes and then nothing for {STALL_TIMEOUT:?}")]
    Stalled {
        /// Publishes confirmed.
        confirmed: u64,
        /// Publishes sent.
        total: u64,
    },
}

impl PublishError {
    /// Whether the broker could not be used because of the caller's own settings: the URL or
    /// TLS files, or a TLS handshake the given CA or client certificate did not pass.
    pub fn is_settings(&self) -> bool {
        matches!(
            self,
            PublishError::Settings(_)
                | PublishError::Connect {
                    source: ConnectionError::Tls(_),
                    ..
                }
        )
    }
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
    /// Set when the connection failed; `failure` holds why.
    failed: AtomicBool,
    /// The error that ended the connection, taken by the error it is reported in.
    failure: Mutex<Option<ConnectionError>>,
}

impl ConnCounters {
    fn fail(&self, error: ConnectionError) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(error);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn take_failure(&self) -> Option<ConnectionError> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
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
/// Execution model: runs on the caller's tokio runtime, with one task per connection polling
/// its event loop; the loop here only hands messages to the clients, so a slow broker slows
/// it through rumqttc's bounded request channel instead of growing a queue.
///
/// # Errors
/// A bad URL or TLS setting, no connection within the timeout, a connection lost midway or a
/// broker that stops confirming (each says how many were confirmed by then).
pub async fn publish(
    settings: &PublishSettings,
    messages: impl Iterator<Item = Message>,
    mut observe: impl FnMut(&Message),
) -> Result<Sent, PublishError> {
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
        let (up_tx, up_rx) = tokio::sync::oneshot::channel::<Result<(), ConnectionError>>();
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
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(error) => {
                        // Before the connection is up the caller waits on `up_tx`; after, it
                        // sees `failed` on its next publish.
                        match up_tx.take() {
                            Some(tx) => {
                                task_counter.failed.store(true, Ordering::SeqCst);
                                let _ = tx.send(Err(error));
                            }
                            None => task_counter.fail(error),
                        }
                        return;
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
            Ok(Ok(Err(source))) => return Err(PublishError::Connect { url, source }),
            Ok(Err(_)) => return Err(PublishError::ConnectTaskEnded { url }),
            Err(_) => {
                return Err(PublishError::ConnectTimeout {
                    url,
                    within: settings.connect_timeout,
                })
            }
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
    let lost_connection = |counters: &[Arc<ConnCounters>]| PublishError::Lost {
        url: url.clone(),
        confirmed: confirmed(counters),
        source: counters.iter().find_map(|c| c.take_failure()),
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

    // Wait for the broker to confirm the rest; give up when nothing moves for a while.
    let mut last = (confirmed(&counters), Instant::now());
    while confirmed(&counters) < tally.total {
        if counters.iter().any(|c| c.failed.load(Ordering::Relaxed)) {
            return Err(lost_connection(&counters));
        }
        let now = confirmed(&counters);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL_TIMEOUT {
            return Err(PublishError::Stalled {
                confirmed: now,
                total: tally.total,
            });
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
