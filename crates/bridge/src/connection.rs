//! The connection task: polls one MQTT connection and never waits with it, parking messages
//! while the batcher is behind.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jobstream_metrics::Gauge;
use jobstream_sink::kafka::DLQ_PREFIX_BYTES;
use rumqttc::QoS;
use tokio::sync::mpsc;

use crate::handoff::{now_ms, Inbound, Token};
use crate::mqtt::{Client, EventLoop, MqttError, NetEvent};
use crate::stats::BridgeStats;

pub(crate) struct ConnectionTask {
    pub(crate) index: usize,
    pub(crate) client: Client,
    pub(crate) eventloop: EventLoop,
    pub(crate) subscriptions: Vec<String>,
    pub(crate) qos: QoS,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) epoch: Arc<AtomicU32>,
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) stats: Arc<BridgeStats>,
    pub(crate) url: String,
    pub(crate) connected: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) acker: tokio::task::JoinHandle<()>,
    pub(crate) inflight: Gauge,
    pub(crate) inbound_depth: Gauge,
    /// Payloads above this are cut to their first bytes here and go to the DLQ.
    pub(crate) max_packet_bytes: usize,
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
        let event = if parked.messages.is_empty() {
            task.eventloop.poll().await
        } else {
            poll_and_hand_on(&mut task.eventloop, &mut parked, &task.inbound).await
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
                up = true;
                task.stats.connected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = task.index, session_present, epoch, url = %task.url, "connected");
                if let Some(connected) = task.connected.take() {
                    let _ = connected.send(());
                }
                // Subscribing goes through the client's request queue, which this loop drains:
                // do it from another task so the event loop never waits on itself.
                let client = task.client.clone();
                let filters = task.subscriptions.clone();
                let qos = task.qos;
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe(&filters, qos).await {
                        tracing::error!(%error, "subscribe failed");
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
            Ok(NetEvent::DisconnectedByBroker { reason }) => {
                tracing::warn!(connection = task.index, %reason, url = %task.url, "the broker closed the connection");
            }
            Ok(NetEvent::Disconnecting) => {
                if task.draining.load(Ordering::SeqCst) {
                    break;
                }
            }
            Ok(NetEvent::Other) => {}
            Err(error) => {
                if up {
                    task.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    up = false;
                }
                if task.draining.load(Ordering::SeqCst) && task.acker.is_finished() {
                    break;
                }
                task.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(connection = task.index, %error, url = %task.url, retry_in = ?backoff, "MQTT connection lost");
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
}
