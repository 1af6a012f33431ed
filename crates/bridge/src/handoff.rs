//! What passes between the parts: a message with the token that acknowledges it, the
//! delivery that settles it, and the batcher that groups messages for the workers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam::channel as xchan;
use jobstream_metrics::Gauge;
use jobstream_parser::Family;
use tokio::sync::{mpsc, Notify};

/// What acknowledges one QoS 1 message: which connection, which session of it, where it
/// arrived, and its packet id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    /// The connection's index.
    pub(crate) conn: u16,
    /// The session the message arrived in: a PUBACK for an older one would ack a stranger.
    pub(crate) epoch: u32,
    /// Arrival order on the connection, for acknowledging in order.
    pub(crate) seq: u64,
    /// The MQTT packet id.
    pub(crate) pkid: u16,
}

/// What a Kafka delivery report settles.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) token: Option<Token>,
    pub(crate) family: Option<Family>,
    /// The event id whose claim in the dedup window this record settles.
    pub(crate) event_id: Option<Box<str>>,
    /// When the record was handed to the producer, for the delivery latency histogram.
    pub(crate) sent: Instant,
}

#[derive(Debug)]
pub(crate) enum Completion {
    Done(Token),
    Failed(Token),
}

pub(crate) struct Inbound {
    pub(crate) token: Option<Token>,
    pub(crate) topic: String,
    /// The payload, or only its first bytes when `oversized`.
    pub(crate) payload: Bytes,
    /// The payload was larger than `max_packet_bytes`: its full size. It goes to the DLQ.
    pub(crate) oversized: Option<usize>,
    pub(crate) received_at_ms: i64,
}

/// Completions waiting for a connection's acker. They rarely exceed its unacknowledged
/// messages, which MQTT's 16-bit packet ids cap at 65,535 — but a broker may exceed that cap
/// (mosquitto with `max_inflight_messages 0` reuses packet ids), so a sender can wait here;
/// it waits only briefly, because the acker never stops reading (see `acker`).
pub(crate) const COMPLETIONS_PER_CONNECTION: usize = 65_536;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) async fn batcher(
    mut inbound: mpsc::Receiver<Inbound>,
    batches: xchan::Sender<Vec<Inbound>>,
    batch_size: usize,
    drain: Arc<Notify>,
    depth: Gauge,
) {
    let drained = drain.notified();
    tokio::pin!(drained);
    loop {
        let mut batch = Vec::with_capacity(batch_size);
        tokio::select! {
            received = inbound.recv_many(&mut batch, batch_size) => {
                if received == 0 {
                    return;
                }
            }
            () = &mut drained => return,
        }
        // The workers are behind: wait without blocking the runtime, and without unbounded
        // buffering (this task stops reading, the connection task stops polling).
        let mut pending = batch;
        loop {
            match batches.try_send(pending) {
                Ok(()) => {
                    depth.set(batches.len() as i64);
                    break;
                }
                Err(xchan::TrySendError::Full(back)) => {
                    pending = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(xchan::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}
