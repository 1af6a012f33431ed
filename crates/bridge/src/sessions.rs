//! Persistent sessions that an earlier configuration left behind under this client id.
//!
//! A broker keeps a persistent session, its subscriptions and the QoS 1 messages queued in it,
//! under the client id that opened it. Connection `i` of a run is `<client_id>-<i>` (0 is the
//! bare id), so a run with fewer connections than the one before leaves sessions nobody
//! connects to again: the broker goes on queuing for them (a share group's member that is
//! offline keeps its share on mosquitto) and those events never reach Kafka. At start the
//! bridge looks for such sessions and drains each one through the pipeline like any other
//! connection (`connection::Retirement`), then ends it.

use std::time::Duration;

use crate::config::{MqttConfig, SessionStart};
use crate::mqtt::{self, MqttError, NetEvent};
use crate::BridgeError;

/// The longest run of left-behind sessions looked for, so that the start-up probes are
/// bounded whatever the broker answers; far more connections than any deployment opens.
const MOST_LEFT_BEHIND: usize = 1024;

/// The client ids whose sessions an earlier configuration left behind: `<client_id>-0` (what
/// connection 0 was called before it took the bare id), then `<client_id>-<connections>`,
/// the next one, … up to the first without a session.
///
/// Asking whether a session exists means connecting under its id with the session kept, which
/// opens an empty session where there was none: that one is discarded at once. A probe that
/// fails (a broker whose policy refuses the id, one that is down) ends the search with a
/// warning and no retirement; the regular connections report an unreachable broker themselves.
pub(crate) async fn left_behind(config: &MqttConfig) -> Vec<String> {
    let earlier_first = format!("{}-0", config.client_id);
    let beyond = (config.connections..config.connections.saturating_add(MOST_LEFT_BEHIND))
        .map(|index| config.client_id_of(index));
    let mut found = Vec::new();
    for (position, client_id) in std::iter::once(earlier_first).chain(beyond).enumerate() {
        match open(config, &client_id, SessionStart::Resume).await {
            Ok(true) => {
                tracing::warn!(client_id, "a persistent session of an earlier run with more connections is still on the broker; draining it");
                found.push(client_id);
            }
            Ok(false) => {
                if let Err(error) = open(config, &client_id, SessionStart::Discard).await {
                    tracing::warn!(client_id, %error, "could not discard the empty session the probe opened");
                }
                // `<client_id>-0` is looked at on its own; the numbered run ends at a gap.
                if position > 0 {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(client_id, %error, "could not look for sessions left behind by an earlier run; not retiring any");
                break;
            }
        }
    }
    found
}

/// Ends the session of `client_id` (after it was drained): a connection that discards it.
///
/// # Errors
/// The connection failed; the session stays, and the next start finds it again.
pub(crate) async fn discard(config: &MqttConfig, client_id: &str) -> Result<(), ProbeError> {
    open(config, client_id, SessionStart::Discard)
        .await
        .map(|_| ())
}

/// Connects under `client_id`, reads CONNACK's session-present flag, and disconnects without
/// acknowledging anything the broker sent meanwhile (it stays queued in the session).
async fn open(
    config: &MqttConfig,
    client_id: &str,
    start: SessionStart,
) -> Result<bool, ProbeError> {
    let (client, mut eventloop) = mqtt::connect_as(config, client_id, start)?;
    let within = config.connect_timeout;
    let exchange = async {
        let session_present = loop {
            if let NetEvent::Connected { session_present } = eventloop.poll().await? {
                break session_present;
            }
        };
        client.disconnect().await?;
        // Until the DISCONNECT is on the wire; what arrives meanwhile is left unacknowledged.
        while !matches!(eventloop.poll().await?, NetEvent::Disconnecting) {}
        Ok::<_, ProbeError>(session_present)
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| ProbeError::Timeout { within })?
}

/// Why looking at (or ending) a session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The settings did not make a client.
    #[error(transparent)]
    Settings(#[from] Box<BridgeError>),
    /// The connection failed (boxed: rumqttc's errors are large, and this one is rare).
    #[error(transparent)]
    Mqtt(Box<MqttError>),
    /// No CONNACK, or the DISCONNECT not sent, in time.
    #[error("the broker did not answer within {within:?}")]
    Timeout {
        /// `connect_timeout`.
        within: Duration,
    },
}

impl From<MqttError> for ProbeError {
    fn from(error: MqttError) -> Self {
        ProbeError::Mqtt(Box::new(error))
    }
}

impl From<BridgeError> for ProbeError {
    fn from(error: BridgeError) -> Self {
        ProbeError::Settings(Box::new(error))
    }
}
