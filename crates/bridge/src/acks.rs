//! PUBACKs in arrival order (MQTT 3.1.1 §4.6).
//!
//! Kafka confirms records out of order across partitions, and duplicates and rejects complete
//! at other times again. A message confirmed early therefore waits for every message received
//! before it on the same connection; acknowledgements leave in contiguous runs.

use std::collections::BTreeMap;

/// Orders completions of one connection session (an *epoch*: it restarts at every
/// reconnect, since the broker redelivers whatever was not acknowledged).
///
/// Bound: at most one entry per unacknowledged message, which the broker's in-flight window
/// (≤ 65,535 for MQTT) caps.
#[derive(Debug, Default)]
pub struct AckOrder {
    next: u64,
    done: BTreeMap<u64, u16>,
}

impl AckOrder {
    /// A tracker expecting sequence number 0 first.
    pub fn new() -> Self {
        AckOrder::default()
    }

    /// Marks message `seq` (packet id `pkid`) complete and appends to `ready` the packet ids
    /// that may now be acknowledged, in arrival order.
    pub fn complete(&mut self, seq: u64, pkid: u16, ready: &mut Vec<u16>) {
        if seq < self.next {
            return;
        }
        self.done.insert(seq, pkid);
        while let Some(pkid) = self.done.remove(&self.next) {
            ready.push(pkid);
            self.next += 1;
        }
    }

    /// Completions waiting for an earlier message.
    pub fn waiting(&self) -> usize {
        self.done.len()
    }

    /// Messages acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completions_are_released_in_arrival_order() {
        let mut order = AckOrder::new();
        let mut ready = Vec::new();
        order.complete(2, 12, &mut ready);
        order.complete(1, 11, &mut ready);
        assert!(ready.is_empty(), "message 0 is still in flight");
        assert_eq!(order.waiting(), 2);
        order.complete(0, 10, &mut ready);
        assert_eq!(ready, [10, 11, 12]);
        order.complete(4, 14, &mut ready);
        order.complete(3, 13, &mut ready);
        assert_eq!(ready, [10, 11, 12, 13, 14]);
        assert_eq!(order.acknowledged(), 5);
        order.complete(1, 11, &mut ready);
        assert_eq!(
            ready.len(),
            5,
            "a stale completion acknowledges nothing twice"
        );
    }
}
