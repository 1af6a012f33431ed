//! The acker of one connection: PUBACKs in arrival order, once what they cover is confirmed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use jobstream_metrics::Gauge;
use tokio::sync::mpsc;

use crate::acks::AckOrder;
use crate::handoff::Completion;
use crate::mqtt::Client;
use crate::stats::BridgeStats;

/// Sends PUBACKs in arrival order as completions come in; on a failed record, reconnects the
/// session so the broker redelivers everything not yet acknowledged.
pub(crate) async fn acker(
    mut completions: mpsc::Receiver<Completion>,
    client: Client,
    epoch: Arc<AtomicU32>,
    stats: Arc<BridgeStats>,
    inflight: Gauge,
) {
    let mut order = AckOrder::new();
    let mut order_epoch = 0u32;
    let mut disconnected_epoch = None;
    let mut ready = Vec::new();
    while let Some(completion) = completions.recv().await {
        let (token, failed) = match completion {
            Completion::Done(t) => (t, false),
            Completion::Failed(t) => (t, true),
        };
        if token.epoch != order_epoch {
            if token.epoch < order_epoch || token.epoch != epoch.load(Ordering::SeqCst) {
                // From a session that is gone: the broker redelivers its messages.
                if !failed {
                    stats.abandoned.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // Completions still waiting for an earlier message of the old session will never
            // be acknowledged in it.
            stats
                .abandoned
                .fetch_add(order.waiting() as u64, Ordering::Relaxed);
            order = AckOrder::new();
            order_epoch = token.epoch;
        }
        if failed {
            // The gap would hold back every later PUBACK; a new session makes the broker
            // redeliver all unacknowledged messages instead. Once per session: a second
            // DISCONNECT would wait in the client's queue and end the *next* session too.
            if disconnected_epoch != Some(order_epoch) {
                disconnected_epoch = Some(order_epoch);
                let _ = client.disconnect().await;
            }
            continue;
        }
        order.complete(token.seq, token.pkid, &mut ready);
        let mut released = ready.drain(..);
        while let Some(pkid) = released.next() {
            if client.ack(pkid).await.is_err() {
                // The client is gone (shutdown): the broker redelivers these to the next run.
                let left = 1 + released.len() as u64;
                stats.abandoned.fetch_add(left, Ordering::Relaxed);
                break;
            }
            stats.acknowledged.fetch_add(1, Ordering::Relaxed);
            // Only the current session's messages count as in flight (the connection task
            // resets the gauge when a new session starts).
            if order_epoch == epoch.load(Ordering::Relaxed) {
                inflight.dec();
            }
        }
    }
    let _ = client.disconnect().await;
}
