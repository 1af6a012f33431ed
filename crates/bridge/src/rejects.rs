//! What every writer does with a reject: count it, log it (throttled), and say why.

use jobstream_metrics::Throttle;
use jobstream_parser::{Reject, RejectKind};

use crate::stats::BridgeStats;

/// The reject of a message larger than `max_packet_bytes`, of which the connection task kept
/// the first `kept` bytes.
pub(crate) fn oversized_reject(size: usize, kept: usize) -> Reject {
    Reject::new(
        RejectKind::PayloadTooLarge,
        format!("the payload of {size} bytes is larger than mqtt.max_packet_bytes; its first {kept} bytes are kept"),
    )
}

/// Counts a reject and logs it, at most one line per kind per interval: a flood of bad input
/// must not flood the log (every reject is in `destination` and the counters anyway). The
/// payload is not logged: it may carry device data.
pub(crate) fn note_reject(
    stats: &BridgeStats,
    throttle: &Throttle,
    topic: &str,
    reject: &Reject,
    destination: &str,
) {
    stats.reject(reject.kind);
    if let Some(suppressed) = throttle.allow(reject.kind.as_str()) {
        tracing::warn!(
            kind = reject.kind.as_str(),
            topic = %topic,
            error = %reject.message,
            similar_since_last = suppressed,
            "rejected input sent to the {destination}"
        );
    }
}
