//! Whether Kafka can be used before anything is consumed or acknowledged: the start-up
//! connection check, the readiness probe, and telling refusals (TLS, authentication, ACLs)
//! from a broker that is only down.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::config::KafkaConfig;
use crate::{Refusal, SinkError};

/// A client that only asks for metadata: a readiness probe for stages that hold no producer
/// of their own (the Parquet stage). One connection set for the life of the process.
pub struct KafkaProbe {
    client: rdkafka::producer::BaseProducer,
    brokers: String,
    topic: String,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaProbe {
    /// A probe with `config`'s brokers and security options.
    ///
    /// # Errors
    /// Invalid librdkafka options.
    pub fn new(config: &KafkaConfig) -> Result<Self, SinkError> {
        let client = config
            .producer_config()?
            .create()
            .map_err(|e| SinkError::Config {
                setting: "kafka",
                value: config.brokers.clone(),
                reason: e.to_string(),
            })?;
        Ok(KafkaProbe {
            client,
            brokers: config.brokers.clone(),
            topic: config.job_topic.clone(),
        })
    }

    /// Whether a broker answers a metadata request within `timeout`. Blocks up to `timeout`.
    ///
    /// # Errors
    /// No broker answered in time.
    pub fn reachable(&self, timeout: Duration) -> Result<(), SinkError> {
        self.client
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map(|_| ())
            .map_err(SinkError::kafka(format!(
                "no broker at {} answered within {timeout:?}",
                self.brokers
            )))
    }
}

/// Which client a connection check speaks for: the two may carry different options
/// (`producer.`/`consumer.` prefixed keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole<'a> {
    /// The bridge's producer (also the DLQ producer of the Parquet stage and replay).
    Producer,
    /// The Parquet stage's consumer, as a member of this group: librdkafka looks up the
    /// group's coordinator at once, so the check also learns whether ACLs allow the group.
    Consumer {
        /// The consumer group the stage joins.
        group_id: &'a str,
    },
}

/// Records the first error librdkafka reports that retrying cannot cure. librdkafka retries
/// every connection failure forever, so without this a wrong password or an untrusted CA
/// would look like a broker that is merely down.
#[derive(Default)]
struct RefusalRecorder {
    first: std::sync::Mutex<Option<(Refusal, String)>>,
}

impl RefusalRecorder {
    fn take(&self) -> Option<(Refusal, String)> {
        self.first.lock().map_or(None, |mut first| first.take())
    }
}

impl ClientContext for RefusalRecorder {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka connection check");
        if let Some(refusal) = classify_refusal(error.rdkafka_error_code(), reason) {
            if let Ok(mut first) = self.first.lock() {
                first.get_or_insert_with(|| (refusal, reason.to_owned()));
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RefusalRecorder {}

impl ProducerContext for RefusalRecorder {
    type DeliveryOpaque = ();

    // The check produces nothing.
    fn delivery(&self, _: &DeliveryResult<'_>, (): ()) {}
}

/// What an error librdkafka reports means for a connection, if it is one that retrying with
/// the same settings cannot cure. librdkafka gives the TLS failures one code (`_SSL`) and
/// says which in its text (OpenSSL's reason).
pub(crate) fn classify_refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<Refusal> {
    let code = code?;
    let reason = reason.to_ascii_lowercase();
    // The broker ended the handshake with an alert about the client's certificate:
    // "bad certificate" (42), "unknown ca" (48), TLS 1.3's "certificate required" (116).
    let tls_alert = [
        "alert bad certificate",
        "alert unknown ca",
        "alert certificate required",
    ]
    .iter()
    .any(|alert| reason.contains(alert));
    match code {
        RDKafkaErrorCode::Authentication => Some(Refusal::Authentication),
        RDKafkaErrorCode::SSL => Some(if reason.contains("certificate verify failed") {
            Refusal::UnknownCa
        } else if tls_alert || reason.contains("handshake failure") {
            Refusal::ClientCertificate
        } else {
            Refusal::Tls
        }),
        // The alert reaches librdkafka as a failed read after its side of the handshake, so
        // it is reported as a transport failure, unlike a connection that merely dropped.
        RDKafkaErrorCode::BrokerTransportFailure if tls_alert => Some(Refusal::ClientCertificate),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed => Some(Refusal::NotAuthorized),
        _ => None,
    }
}

/// Connects as `role` would and asks for the cluster's metadata, within the configured
/// `connect_timeout`. Blocks; call it from a blocking context.
///
/// # Errors
/// [`SinkError::KafkaRefused`] as soon as the broker turns the client away (TLS,
/// authentication), [`SinkError::KafkaUnreachable`] when no broker answered in time, and
/// [`SinkError::Config`] for options librdkafka does not accept.
pub fn check_connection(config: &KafkaConfig, role: ClientRole<'_>) -> Result<(), SinkError> {
    let client_config = match role {
        ClientRole::Producer => config.producer_config()?,
        ClientRole::Consumer { group_id } => config.consumer_config(group_id)?,
    };
    let invalid = |e: KafkaError| SinkError::Config {
        setting: "kafka",
        value: config.brokers.clone(),
        reason: e.to_string(),
    };
    // A consumer checks with a consumer's options; it joins no group (nothing subscribes).
    match role {
        ClientRole::Producer => {
            let client: rdkafka::producer::BaseProducer<RefusalRecorder> = client_config
                .create_with_context(RefusalRecorder::default())
                .map_err(invalid)?;
            await_metadata(client.client(), config, || {
                client.poll(Duration::ZERO);
            })
        }
        ClientRole::Consumer { .. } => {
            use rdkafka::consumer::Consumer as _;
            let client: rdkafka::consumer::BaseConsumer<RefusalRecorder> = client_config
                .create_with_context(RefusalRecorder::default())
                .map_err(invalid)?;
            await_metadata(client.client(), config, || {
                // Nothing is subscribed: a poll only serves the error callbacks.
                let _ = client.poll(Duration::ZERO);
            })
        }
    }
}

/// Short metadata requests until one succeeds, the recorder saw a refusal, or the deadline.
/// librdkafka queues its error events until the client is polled: `serve` polls it, so the
/// recorder hears of a refusal between two requests.
fn await_metadata(
    client: &rdkafka::client::Client<RefusalRecorder>,
    config: &KafkaConfig,
    serve: impl Fn(),
) -> Result<(), SinkError> {
    let deadline = std::time::Instant::now() + config.connect_timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Short requests: the error callback runs only in `serve`, between two of them.
        let attempt = client.fetch_metadata(None, left.min(Duration::from_millis(250)));
        serve();
        if let Some((refusal, detail)) = client.context().take() {
            return Err(SinkError::KafkaRefused {
                brokers: config.brokers.clone(),
                refusal,
                detail,
            });
        }
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if left.is_zero() => {
                return Err(SinkError::KafkaUnreachable {
                    brokers: config.brokers.clone(),
                    timeout: config.connect_timeout,
                    detail: e.to_string(),
                })
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_told_apart_by_openssl_s_reason() {
        // Messages as librdkafka 2.12 words them for each case (seen against Apache Kafka).
        let ssl = Some(RDKafkaErrorCode::SSL);
        assert_eq!(
            classify_refusal(ssl, "127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)"),
            Some(Refusal::UnknownCa)
        );
        assert_eq!(
            classify_refusal(ssl, "127.0.0.1:9093/bootstrap: SSL handshake failed: ssl/record/rec_layer_s3.c:1605: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116 (after 9ms in state SSL_HANDSHAKE)"),
            Some(Refusal::ClientCertificate)
        );
        assert_eq!(
            classify_refusal(ssl, "SSL handshake failed: wrong version number"),
            Some(Refusal::Tls)
        );
    }

    #[test]
    fn authentication_and_acl_errors_are_refusals_and_transport_errors_are_not() {
        assert_eq!(
            classify_refusal(Some(RDKafkaErrorCode::Authentication), "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"),
            Some(Refusal::Authentication)
        );
        assert_eq!(
            classify_refusal(Some(RDKafkaErrorCode::TopicAuthorizationFailed), ""),
            Some(Refusal::NotAuthorized)
        );
        assert_eq!(
            classify_refusal(Some(RDKafkaErrorCode::BrokerTransportFailure), "ssl://127.0.0.1:57719/bootstrap: Receive failed: ../ssl/record/rec_layer_s3.c:1601:ssl3_read_bytes error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)"),
            Some(Refusal::ClientCertificate)
        );
        for retried in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::Resolve,
        ] {
            assert_eq!(classify_refusal(Some(retried), "Connection refused"), None);
        }
        assert_eq!(classify_refusal(None, "anything"), None);
    }
}
