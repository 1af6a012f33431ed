//! The connection task: polls one MQTT connection and never waits with it, parking messages
//! while the batcher is behind.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobstream_metrics::Gauge;
use jobstream_sink::kafka::DLQ_PREFIX_BYTES;
use rumqttc::QoS;
use tokio::sync::mpsc;

use crate::config::MqttConfig;
use crate::handoff::{now_ms, Inbound, Token};
use crate::mqtt::{Client, EventLoop, MqttError, NetEvent};
use crate::stats::BridgeStats;

pub(crate) struct ConnectionTask {
    pub(crate) index: usize,
    pub(crate) client: Client,
    pub(crate) eventloop: EventLoop,
    pub(crate) subscriptions: Vec<String>,
    /// Filters the session may still hold from another configuration, dropped once it is up.
    pub(crate) unsubscriptions: Vec<String>,
    /// Set when this connection drains a session an earlier configuration left behind.
    pub(crate) retirement: Option<Retirement>,
    pub(crate) qos: QoS,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) epoch: Arc<AtomicU32>,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) stats: Arc<BridgeStats>,
    pub(crate) url: String,
    pub(crate) connected: Option<tokio::sync::oneshot::Sender<()>>,
    /// The last failure to connect, for the error `run` returns if none ever succeeds.
    pub(crate) last_failure: Arc<std::sync::Mutex<Option<String>>>,
    pub(crate) acker: tokio::task::JoinHandle<()>,
    pub(crate) inflight: Gauge,
    pub(crate) inbound_depth: Gauge,
    /// Payloads above this are cut to their first bytes here and go to the DLQ.
    pub(crate) max_packet_bytes: usize,
}

/// How long a retired session must have been quiet (unsubscribed, everything it delivered
/// acknowledged, nothing new for this long) before it is ended. Ending a session discards
/// whatever it still holds, and MQTT has no way to ask whether a queue is empty; a broker
/// sends the next queued message as soon as an acknowledgement frees its in-flight window
/// (milliseconds on mosquitto), so several seconds of silence mean the queue is empty.
const RETIRED_QUIET: Duration = Duration::from_secs(5);

/// How often a retiring connection checks whether it is done while the network is quiet.
const RETIRED_CHECK: Duration = Duration::from_millis(250);

/// The state of a connection that drains a left-behind session (see `sessions`): it
/// unsubscribes every form of the filters, so the broker adds nothing new, carries what the
/// session delivers through the pipeline like any message, and ends the session once it has
/// been quiet for [`RETIRED_QUIET`] with nothing unacknowledged.
pub(crate) struct Retirement {
    client_id: String,
    mqtt: MqttConfig,
    unsubacks_due: usize,
    last_activity: Instant,
    drained: u64,
    ending: bool,
    late: bool,
}

impl Retirement {
    pub(crate) fn new(client_id: String, mqtt: MqttConfig) -> Self {
        Retirement {
            client_id,
            mqtt,
            unsubacks_due: usize::MAX,
            last_activity: Instant::now(),
            drained: 0,
            ending: false,
            late: false,
        }
    }

    fn quiet(&self, inflight: &Gauge) -> bool {
        self.unsubacks_due == 0
            && inflight.get() == 0
            && self.last_activity.elapsed() >= RETIRED_QUIET
    }
}

/// Messages a connection task parks while its batcher is behind, so that it keeps polling the
/// event loop — PUBACKs, pings and the broker's pings go out and in — instead of waiting with
/// them. The broker's in-flight window (mosquitto's `max_inflight_messages`, AWS IoT Core's
/// 100, MQTT 5's receive maximum) bounds QoS 1 messages well below this; past either bound
/// (a QoS 0 flood) the task stops polling until the batcher catches up, and TCP pushes back.
pub(crate) const PARKED_MESSAGES: usize = 65_536;

/// …and the bytes of their payloads.
pub(crate) const PARKED_BYTES: usize = 64 * 1024 * 1024;

/// Messages waiting in a connection task for room in its inbound queue.
#[derive(Default)]
pub(crate) struct Parked {
    messages: std::collections::VecDeque<Inbound>,
    bytes: usize,
}

impl Parked {
    fn push(&mut self, message: Inbound) {
        self.bytes += message.payload.len();
        self.messages.push_back(message);
    }

    fn pop(&mut self) -> Option<Inbound> {
        let message = self.messages.pop_front()?;
        self.bytes -= message.payload.len();
        Some(message)
    }

    fn full(&self) -> bool {
        self.messages.len() >= PARKED_MESSAGES || self.bytes >= PARKED_BYTES
    }
}

/// The next event of `eventloop`, handing parked messages to `inbound` while waiting for it.
/// The poll future lives across hand-offs (it is never dropped half-way).
pub(crate) async fn poll_and_hand_on(
    eventloop: &mut EventLoop,
    parked: &mut Parked,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<NetEvent, MqttError> {
    let poll = eventloop.poll();
    tokio::pin!(poll);
    loop {
        // Handing on first: parked messages leave as soon as there is room, so the parking
        // lot stays as small as the batcher allows; the poll only waits for the network.
        tokio::select! {
            biased;
            permit = inbound.reserve(), if !parked.messages.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(message) = parked.pop() {
                        permit.send(message);
                    }
                }
                // The batcher is gone (drain): parked messages stay unacknowledged.
                Err(_) => *parked = Parked::default(),
            },
            event = &mut poll => return event,
        }
    }
}

pub(crate) async fn connection(mut task: ConnectionTask) {
    let conn = u16::try_from(task.index).unwrap_or(u16::MAX);
    let mut seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut up = false;
    let mut parked = Parked::default();
    loop {
        while parked.full() {
            // Past the bound: stop polling until the batcher takes some (see PARKED_MESSAGES).
            match parked.pop() {
                Some(message) => {
                    if task.inbound.send(message).await.is_err() {
                        parked = Parked::default();
                    }
                }
                None => break,
            }
        }
        let (eventloop, inbound) = (&mut task.eventloop, &task.inbound);
        let next = async {
            if parked.messages.is_empty() {
                eventloop.poll().await
            } else {
                poll_and_hand_on(eventloop, &mut parked, inbound).await
            }
        };
        let event = match task.retirement.as_mut() {
            // rumqttc keeps what it read of a packet across a dropped poll; the next poll
            // goes on from there.
            Some(retirement) => match tokio::time::timeout(RETIRED_CHECK, next).await {
                Ok(event) => event,
                Err(_) => {
                    if !retirement.ending && retirement.quiet(&task.inflight) {
                        retirement.ending = true;
                        let client = task.client.clone();
                        tokio::spawn(async move { client.disconnect().await });
                    }
                    continue;
                }
            },
            None => next.await,
        };
        task.inbound_depth.set(
            (task.inbound.max_capacity() - task.inbound.capacity() + parked.messages.len()) as i64,
        );
        match event {
            Ok(NetEvent::Connected { session_present }) => {
                let epoch = task.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                seq = 0;
                task.inflight.set(0);
                backoff = Duration::from_millis(100);
                tracing::info!(connection = task.index, session_present, epoch, url = %task.url, "connected");
                if let Some(retirement) = task.retirement.as_mut() {
                    retirement.last_activity = Instant::now();
                    retirement.unsubacks_due = task.unsubscriptions.len();
                } else {
                    up = true;
                    task.stats.connected.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(connected) = task.connected.take() {
                    let _ = connected.send(());
                }
                // (Un)subscribing goes through the client's request queue, which this loop
                // drains: do it from another task so the event loop never waits on itself.
                // The new subscription first, so that no event falls between the two.
                let client = task.client.clone();
                let filters = task.subscriptions.clone();
                let superseded = if session_present || task.retirement.is_some() {
                    task.unsubscriptions.clone()
                } else {
                    Vec::new() // a new session holds no subscription
                };
                let qos = task.qos;
                tokio::spawn(async move {
                    if !filters.is_empty() {
                        if let Err(error) = client.subscribe(&filters, qos).await {
                            tracing::error!(%error, "subscribe failed");
                        }
                    }
                    if let Err(error) = client.unsubscribe(&superseded).await {
                        tracing::error!(%error, "unsubscribe failed");
                    }
                });
            }
            Ok(NetEvent::Message {
                topic,
                payload,
                needs_ack,
                pkid,
            }) => {
                task.stats.received.fetch_add(1, Ordering::Relaxed);
                if let Some(retirement) = task.retirement.as_mut() {
                    retirement.last_activity = Instant::now();
                    retirement.drained += 1;
                    // After the DISCONNECT was queued: this one may not be acknowledged in
                    // the session, which must then stay for the next start.
                    retirement.late |= retirement.ending;
                }
                if task.draining.load(Ordering::Relaxed) {
                    continue; // not acknowledged: the broker redelivers it to the next run
                }
                let token = needs_ack.then(|| {
                    let token = Token {
                        conn,
                        epoch: task.epoch.load(Ordering::SeqCst),
                        seq,
                        pkid,
                    };
                    seq += 1;
                    task.inflight.inc();
                    token
                });
                // Cut here, so that no queue holds more than max_packet_bytes of it.
                let (payload, oversized) = if payload.len() > task.max_packet_bytes {
                    let kept = DLQ_PREFIX_BYTES.min(task.max_packet_bytes);
                    (
                        Bytes::copy_from_slice(&payload[..kept]),
                        Some(payload.len()),
                    )
                } else {
                    (payload, None)
                };
                let message = Inbound {
                    token,
                    topic,
                    payload,
                    oversized,
                    received_at_ms: now_ms(),
                };
                // Never wait here with the event loop: park the message (in order) while the
                // batcher is behind; the in-flight window bounds the parked messages.
                if parked.messages.is_empty() {
                    match task.inbound.try_send(message) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(message)) => parked.push(message),
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                } else {
                    parked.push(message);
                }
            }
            Ok(NetEvent::Subscribed { refused }) => {
                if refused > 0 {
                    tracing::error!(connection = task.index, refused, filters = ?task.subscriptions, "the broker refused subscriptions");
                } else {
                    tracing::info!(connection = task.index, filters = ?task.subscriptions, "subscribed");
                }
            }
            Ok(NetEvent::Unsubscribed) => {
                if let Some(retirement) = task.retirement.as_mut() {
                    retirement.unsubacks_due = retirement.unsubacks_due.saturating_sub(1);
                    retirement.last_activity = Instant::now();
                }
            }
            Ok(NetEvent::DisconnectedByBroker { reason }) => {
                tracing::warn!(connection = task.index, %reason, url = %task.url, "the broker closed the connection");
            }
            Ok(NetEvent::Disconnecting) => {
                let retired = task.retirement.as_ref().is_some_and(|r| r.ending);
                if retired || task.draining.load(Ordering::SeqCst) {
                    break;
                }
            }
            Ok(NetEvent::Other) => {}
            Err(error) => {
                if up {
                    task.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    up = false;
                }
                if let Some(retirement) = task.retirement.as_mut() {
                    // Not quiet while down: the broker may hold more for the next session.
                    // An end already under way leaves the session to the next start, since
                    // its DISCONNECT may go out on a new connection before what that delivers.
                    retirement.unsubacks_due = usize::MAX;
                    retirement.late |= retirement.ending;
                }
                if task.draining.load(Ordering::SeqCst) && task.acker.is_finished() {
                    break;
                }
                task.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(connection = task.index, %error, url = %task.url, retry_in = ?backoff, "MQTT connection lost");
                if let Ok(mut last) = task.last_failure.lock() {
                    *last = Some(error.to_string());
                }
                if let Some(connected) = task.connected.as_ref() {
                    if connected.is_closed() {
                        break;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    if up {
        task.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    if let Some(retirement) = task.retirement.filter(|r| r.ending && !r.late) {
        // Drained and quiet: the session goes, so that the broker queues nothing more for it.
        match crate::sessions::discard(&retirement.mqtt, &retirement.client_id).await {
            Ok(()) => tracing::info!(
                client_id = retirement.client_id,
                drained = retirement.drained,
                "retired the session an earlier run left behind"
            ),
            Err(error) => {
                tracing::warn!(client_id = retirement.client_id, %error, "drained the session an earlier run left behind, but could not end it; the next start drains it again")
            }
        }
    }
}
