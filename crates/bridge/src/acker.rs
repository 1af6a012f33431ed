//! The acker of one connection: PUBACKs in arrival order, once what they cover is confirmed.

use std::collections::VecDeque;
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
///
/// It never stops reading completions to wait for room in the client's request queue: that
/// queue drains only while the connection task polls its event loop, which stops when the
/// pipeline is full, and the pipeline empties only as Kafka's delivery reports are handed
/// here. Waiting would close the circle (it did, with mosquitto's unlimited in-flight window:
/// 275k messages unacknowledged, every thread waiting). PUBACKs the queue cannot take yet wait
/// in `unsent`, in order, bounded by the messages unacknowledged.
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
    let mut unsent: VecDeque<u16> = VecDeque::new();
    let mut client_gone = false;
    let acknowledged = |order_epoch: u32| {
        stats.acknowledged.fetch_add(1, Ordering::Relaxed);
        // Only the current session's messages count as in flight (the connection task
        // resets the gauge when a new session starts).
        if order_epoch == epoch.load(Ordering::Relaxed) {
            inflight.dec();
        }
    };
    loop {
        let next_unsent = unsent.front().copied().unwrap_or_default();
        let completion = tokio::select! {
            biased;
            completion = completions.recv() => match completion {
                Some(completion) => completion,
                None => break,
            },
            queued = client.ack(next_unsent), if !unsent.is_empty() => {
                unsent.pop_front();
                match queued {
                    Ok(()) => acknowledged(order_epoch),
                    Err(_) => {
                        // The client is gone (shutdown): the broker redelivers these to the
                        // next run.
                        stats.abandoned.fetch_add(1 + unsent.len() as u64, Ordering::Relaxed);
                        unsent.clear();
                        client_gone = true;
                    }
                }
                continue;
            }
        };
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
            // be acknowledged in it, nor will its PUBACKs not yet queued: a PUBACK from an
            // older session would acknowledge a stranger.
            stats
                .abandoned
                .fetch_add((order.waiting() + unsent.len()) as u64, Ordering::Relaxed);
            unsent.clear();
            order = AckOrder::new();
            order_epoch = token.epoch;
        }
        if failed {
            // The gap would hold back every later PUBACK; a new session makes the broker
            // redeliver all unacknowledged messages instead. Once per session: a second
            // DISCONNECT would wait in the client's queue and end the *next* session too.
            // Queued by a task of its own, so that a full request queue does not stop this one.
            if disconnected_epoch != Some(order_epoch) {
                disconnected_epoch = Some(order_epoch);
                let client = client.clone();
                tokio::spawn(async move { client.disconnect().await });
            }
            continue;
        }
        order.complete(token.seq, token.pkid, &mut ready);
        for pkid in ready.drain(..) {
            if client_gone {
                stats.abandoned.fetch_add(1, Ordering::Relaxed);
            } else if unsent.is_empty() && client.try_ack(pkid) {
                acknowledged(order_epoch);
            } else {
                unsent.push_back(pkid);
            }
        }
    }
    // Draining: the connection task polls until the acker ends, so these get through.
    for (sent, pkid) in unsent.iter().enumerate() {
        if client.ack(*pkid).await.is_err() {
            stats
                .abandoned
                .fetch_add((unsent.len() - sent) as u64, Ordering::Relaxed);
            break;
        }
        acknowledged(order_epoch);
    }
    let _ = client.disconnect().await;
}
