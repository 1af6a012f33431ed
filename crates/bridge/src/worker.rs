//! A parser worker: parse, validate, claim the event id, and hand the record to Kafka.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam::channel as xchan;
use jobstream_metrics::Throttle;
use jobstream_parser::{Parser, ParserConfig, Reject, RejectKind};
use jobstream_sink::kafka::KafkaSink;
use tokio::sync::mpsc;

use crate::dedup::{Claim, DedupWindow, Settled};
use crate::handoff::{Completion, Delivery, Inbound, Token};
use crate::rejects::{note_reject, oversized_reject};
use crate::stats::BridgeStats;

pub(crate) fn worker(
    parser_config: ParserConfig,
    batches: &xchan::Receiver<Vec<Inbound>>,
    sink: &KafkaSink<Delivery>,
    dedup: &DedupWindow<Option<Token>>,
    stats: &BridgeStats,
    completions: &[mpsc::Sender<Completion>],
    throttle: &Throttle,
) {
    let mut parser = Parser::new(parser_config);
    let complete = |completion: Completion| {
        let conn = match &completion {
            Completion::Done(t) | Completion::Failed(t) => usize::from(t.conn),
        };
        let _ = completions[conn].blocking_send(completion);
    };
    let reject_to_dlq = |message: &Inbound, reject: &Reject, event_id: Option<&str>, token| {
        note_reject(stats, throttle, &message.topic, reject, "DLQ");
        stats.kafka_pending.inc();
        sink.produce_reject(
            &message.topic,
            &message.payload,
            message.oversized,
            reject.kind.as_str(),
            &reject.message,
            Delivery {
                token,
                family: None,
                event_id: event_id.map(Into::into),
                sent: Instant::now(),
            },
        )
        .inspect_err(|_| stats.kafka_pending.dec())
    };
    for batch in batches.iter() {
        stats.handoff_queue.set(batches.len() as i64);
        for message in batch {
            let token = message.token;
            // The id whose claim this record holds, when it could not be produced: its claim
            // is released below (kept only on failure, so the hot path copies the id once).
            let mut claimed: Option<Box<str>> = None;
            let result = match message.oversized {
                Some(size) => reject_to_dlq(
                    &message,
                    &oversized_reject(size, message.payload.len()),
                    None,
                    token,
                ),
                None => parser.parse(&message.topic, &message.payload, |outcome| match outcome {
                    Ok(event) => {
                        stats.event(&event);
                        let event_id = event.common().event_id;
                        let reroute = match dedup.claim(event_id, token) {
                            Claim::Produce => None,
                            Claim::Reroute(reason) => Some(reason),
                            Claim::Duplicate(token) => {
                                stats.duplicates.inc();
                                if let Some(token) = token {
                                    complete(Completion::Done(token));
                                }
                                return Ok(());
                            }
                            // Acknowledged when the copy in flight is confirmed.
                            Claim::Waiting => {
                                stats.duplicates.inc();
                                return Ok(());
                            }
                        };
                        let refused = match reroute {
                            Some(reason) => reason.to_string(),
                            None => {
                                stats.kafka_pending.inc();
                                let produced = sink.produce_event(
                                    &event,
                                    &message.topic,
                                    &message.payload,
                                    Some(message.received_at_ms),
                                    Delivery {
                                        token,
                                        family: Some(event.family()),
                                        event_id: Some(event_id.into()),
                                        sent: Instant::now(),
                                    },
                                );
                                match produced {
                                    Ok(()) => return Ok(()),
                                    Err(refused) if refused.is_refused_for_good() => {
                                        stats.kafka_pending.dec();
                                        refused.to_string()
                                    }
                                    Err(error) => {
                                        stats.kafka_pending.dec();
                                        claimed = Some(event_id.into());
                                        return Err(error);
                                    }
                                }
                            }
                        };
                        reject_to_dlq(
                            &message,
                            &Reject::new(RejectKind::KafkaRefused, refused),
                            Some(event_id),
                            token,
                        )
                        .inspect_err(|_| claimed = Some(event_id.into()))
                    }
                    Err(reject) => reject_to_dlq(&message, &reject, None, token),
                }),
            };
            if let Err(error) = result {
                if let Some(suppressed) = throttle.allow("kafka_produce") {
                    tracing::error!(%error, topic = %message.topic, similar_since_last = suppressed, "could not hand a record to Kafka; it stays unacknowledged");
                }
                stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                let mut failed: Vec<Token> = token.into_iter().collect();
                if let Some(id) = claimed {
                    let waiters: Vec<Token> = dedup
                        .settle(&id, Settled::Failed)
                        .into_iter()
                        .flatten()
                        .collect();
                    stats
                        .abandoned
                        .fetch_add(waiters.len() as u64, Ordering::Relaxed);
                    failed.extend(waiters);
                }
                for token in failed {
                    complete(Completion::Failed(token));
                }
            }
        }
    }
}
