//! Records produced a second time, off librdkafka's polling thread: an event its topic refused
//! for good goes to the DLQ, and the events the broker failed only for sharing a batch with a
//! refused record go to their topic again.
//!
//! Why: failed to the caller, each of them stayed unacknowledged, and the bridge's only way to
//! have it redelivered is a new MQTT session, in which the broker sends the whole in-flight
//! window again. With refused records arriving steadily that never ended (a 1M backlog into
//! Kafka 4: 20 M messages received, 70 sessions).
//!
//! Execution model: one thread per sink, fed by the delivery callback through a bounded
//! queue; it may wait for room in librdkafka's queue, which the polling thread must never do.
//! It holds the producer weakly and ends when the producer is dropped (its queue's only
//! sender lives in the producer's context).

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::Message;

use super::producer::{
    dlq_record, refusal_reason, send_waiting, Context, Outcome, RecordKind, Sent, Shared,
    BATCH_FAILURES_RETRIED,
};
use crate::SinkError;

/// A failed record to produce again.
pub(super) enum Resend<T> {
    /// An event its topic refused for good: to the DLQ, with the reason.
    ToDlq {
        sent: Sent<T>,
        error: KafkaError,
        mqtt_topic: String,
        payload: Vec<u8>,
        reason: Arc<str>,
    },
    /// An event failed for a batch-mate's sake: to its topic again, as it was.
    Again {
        sent: Sent<T>,
        error: KafkaError,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Option<OwnedHeaders>,
        timestamp_ms: i64,
    },
}

impl<T> Resend<T> {
    /// What to do with an event record that failed with `error`; the record back when a
    /// retry is not this thread's to make (rejects, transient failures, too many attempts).
    pub(super) fn after_failure(
        mut sent: Sent<T>,
        error: &KafkaError,
        message: &BorrowedMessage<'_>,
    ) -> Result<Self, Sent<T>> {
        let RecordKind::Event {
            timestamp_ms,
            batch_failures,
        } = &mut sent.kind
        else {
            return Err(sent);
        };
        let timestamp_ms = *timestamp_ms;
        if let Some(reason) = refusal_reason(error, timestamp_ms) {
            let mqtt_topic = message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == "mqtt_topic"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            sent.kind = RecordKind::Rerouted(Arc::clone(&reason));
            return Ok(Resend::ToDlq {
                sent,
                error: error.clone(),
                mqtt_topic,
                payload: message.payload().unwrap_or_default().to_vec(),
                reason,
            });
        }
        let batch_mate =
            error.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidDifferentRecord);
        if !batch_mate || *batch_failures >= BATCH_FAILURES_RETRIED {
            return Err(sent);
        }
        *batch_failures += 1;
        Ok(Resend::Again {
            sent,
            error: error.clone(),
            topic: message.topic().to_owned(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers: message.headers().map(|h| h.detach()),
            timestamp_ms,
        })
    }

    /// The record's token, when it cannot be produced again after all.
    pub(super) fn into_sent(self) -> Sent<T> {
        match self {
            Resend::ToDlq { sent, .. } | Resend::Again { sent, .. } => sent,
        }
    }
}

/// Starts the thread that produces what `queue` brings.
///
/// # Errors
/// The thread could not be started.
pub(super) fn spawn<T: Send + Sync + 'static>(
    queue: Receiver<Resend<T>>,
    producer: Weak<ThreadedProducer<Context<T>>>,
    shared: Arc<Shared<T>>,
) -> Result<(), SinkError> {
    std::thread::Builder::new()
        .name("jobstream-kafka-resend".to_owned())
        .spawn(move || {
            for resend in queue {
                resend_one(resend, &producer, &shared);
                shared.resending.end();
            }
        })
        .map(drop)
        .map_err(SinkError::io("start", "the Kafka resend thread"))
}

fn resend_one<T: Send + Sync + 'static>(
    resend: Resend<T>,
    producer: &Weak<ThreadedProducer<Context<T>>>,
    shared: &Shared<T>,
) {
    // The sink is gone (shutdown): the record fails with its first error, as it would have
    // without this thread.
    let Some(producer) = producer.upgrade() else {
        let (sent, error) = match resend {
            Resend::ToDlq { sent, error, .. } | Resend::Again { sent, error, .. } => (sent, error),
        };
        (shared.on_delivery)(sent.token, Outcome::Failed(error));
        return;
    };
    let failed = match resend {
        Resend::ToDlq {
            sent,
            error,
            mqtt_topic,
            payload,
            reason,
        } => {
            let record = dlq_record(
                shared,
                &mqtt_topic,
                &payload,
                None,
                "kafka_refused",
                &reason,
                sent,
            );
            send_waiting(&producer, &shared.stopping, record)
                .err()
                .map(|(_, sent)| (sent, error))
        }
        Resend::Again {
            sent,
            error,
            topic,
            key,
            payload,
            headers,
            timestamp_ms,
        } => {
            let mut record = BaseRecord::with_opaque_to(topic.as_str(), Box::new(sent))
                .payload(payload.as_slice());
            if let Some(key) = &key {
                record = record.key(key.as_slice());
            }
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            record = record.timestamp(timestamp_ms);
            send_waiting(&producer, &shared.stopping, record)
                .err()
                .map(|(_, sent)| (sent, error))
        }
    };
    if let Some((sent, error)) = failed {
        // The first error, so that the caller sees the refusal (and remembers it) rather than
        // the full queue of a shutdown.
        (shared.on_delivery)(sent.token, Outcome::Failed(error));
    }
}

/// Records handed to the resend thread and not yet back in librdkafka's queue, and how many
/// have come back, so that a flush can wait for them.
#[derive(Debug, Default)]
pub(super) struct Resending {
    /// (waiting, completed).
    counts: Mutex<(usize, u64)>,
    idle: Condvar,
}

impl Resending {
    fn counts(&self) -> MutexGuard<'_, (usize, u64)> {
        // The counts stay meaningful if a holder panicked: two integers.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn begin(&self) {
        self.counts().0 += 1;
    }

    /// A resend begun but never queued (the queue was full): nothing was produced, so nothing
    /// a flush should wait for.
    pub(super) fn abandon(&self) {
        let mut counts = self.counts();
        counts.0 = counts.0.saturating_sub(1);
        if counts.0 == 0 {
            self.idle.notify_all();
        }
    }

    pub(super) fn end(&self) {
        let mut counts = self.counts();
        counts.0 = counts.0.saturating_sub(1);
        counts.1 += 1;
        if counts.0 == 0 {
            self.idle.notify_all();
        }
    }

    /// How many resends have ended so far.
    pub(super) fn completed(&self) -> u64 {
        self.counts().1
    }

    /// Waits until none is waiting; `false` at the deadline.
    pub(super) fn wait_idle(&self, deadline: Instant) -> bool {
        let mut counts = self.counts();
        while counts.0 > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            counts = match self.idle.wait_timeout(counts, left) {
                Ok((counts, _)) => counts,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}
