//! One face for rumqttc's two protocol implementations (MQTT 3.1.1 and MQTT 5).
//!
//! The pipeline needs five things from a connection: poll its event loop, read CONNACK,
//! PUBLISH and SUBACK, send PUBACKs, subscribe, and disconnect. rumqttc implements each protocol
//! in its own module with its own types; this module maps both onto [`NetEvent`] so that the
//! connection task and the acker are written once. Dispatch is a `match` per call: there are
//! two variants, and both are known at compile time.

use bytes::Bytes;
use rumqttc::{Outgoing, QoS};

use crate::config::{MqttConfig, MqttVersion, SessionStart};
use crate::BridgeError;

/// A failure of either protocol's client: the connection is down (the next poll reconnects), or
/// the event loop that carries requests is gone (shutdown).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// MQTT 3.1.1: the connection failed or dropped.
    #[error(transparent)]
    Connection(#[from] rumqttc::ConnectionError),
    /// MQTT 5: the connection failed or dropped.
    #[error(transparent)]
    ConnectionV5(#[from] rumqttc::v5::ConnectionError),
    /// MQTT 3.1.1: a request could not be queued to the event loop.
    #[error(transparent)]
    Request(#[from] rumqttc::ClientError),
    /// MQTT 5: a request could not be queued to the event loop.
    #[error(transparent)]
    RequestV5(#[from] rumqttc::v5::ClientError),
}

/// What the connection task reacts to.
#[derive(Debug)]
pub(crate) enum NetEvent {
    /// A session is (re)established.
    Connected {
        /// The broker kept the session (and its unacknowledged messages).
        session_present: bool,
    },
    /// An application message.
    Message {
        /// The topic, as the broker sent it (MQTT requires UTF-8; anything else is replaced
        /// and then rejected by the parser as a topic mismatch).
        topic: String,
        /// The payload, untouched.
        payload: Bytes,
        /// QoS 1 or 2: needs an acknowledgement.
        needs_ack: bool,
        /// Packet identifier to acknowledge with.
        pkid: u16,
    },
    /// A SUBACK; `refused` filters failed.
    Subscribed {
        /// Filters the broker refused.
        refused: usize,
    },
    /// An UNSUBACK.
    Unsubscribed,
    /// The broker sent DISCONNECT (MQTT 5 only), with its reason.
    DisconnectedByBroker {
        /// The reason code and string, for the log.
        reason: String,
    },
    /// We sent DISCONNECT.
    Disconnecting,
    /// Anything else (pings, our own PUBACKs, …).
    Other,
}

/// The cloneable handle: acknowledgements, subscriptions, disconnect.
#[derive(Clone)]
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop, polled by exactly one task.
pub(crate) enum EventLoop {
    // Boxed: the two loops differ in size by hundreds of bytes.
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// Builds the client and event loop of connection `index`.
///
/// # Errors
/// A malformed URL or unreadable TLS files, named in the message.
pub(crate) fn connect(
    config: &MqttConfig,
    index: usize,
) -> Result<(Client, EventLoop), BridgeError> {
    connect_as(config, &config.client_id_of(index), SessionStart::Resume)
}

/// Builds a client and event loop under `client_id`, resuming or discarding its session.
///
/// # Errors
/// A malformed URL or unreadable TLS files, named in the message.
pub(crate) fn connect_as(
    config: &MqttConfig,
    client_id: &str,
    start: SessionStart,
) -> Result<(Client, EventLoop), BridgeError> {
    match config.version {
        MqttVersion::V311 => {
            let (client, eventloop) = rumqttc::AsyncClient::new(
                config.options_as(client_id, start)?,
                config.request_capacity,
            );
            Ok((Client::V311(client), EventLoop::V311(Box::new(eventloop))))
        }
        MqttVersion::V5 => {
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(
                config.options_v5_as(client_id, start)?,
                config.request_capacity,
            );
            Ok((Client::V5(client), EventLoop::V5(Box::new(eventloop))))
        }
    }
}

impl Client {
    /// Queues a PUBACK for QoS 1 packet `pkid`.
    ///
    /// # Errors
    /// The event loop is gone (shutdown).
    pub(crate) async fn ack(&self, pkid: u16) -> Result<(), MqttError> {
        match self {
            Client::V311(client) => Ok(client.ack(&received_v311(pkid)).await?),
            Client::V5(client) => Ok(client.ack(&received_v5(pkid)).await?),
        }
    }

    /// Queues a PUBACK for QoS 1 packet `pkid` if the client's request queue has room; `false`
    /// when it is full or the event loop is gone ([`Client::ack`] tells which, by waiting).
    pub(crate) fn try_ack(&self, pkid: u16) -> bool {
        match self {
            Client::V311(client) => client.try_ack(&received_v311(pkid)).is_ok(),
            Client::V5(client) => client.try_ack(&received_v5(pkid)).is_ok(),
        }
    }

    /// Subscribes to `filters` at `qos` (0 or 1) in one SUBSCRIBE.
    ///
    /// # Errors
    /// The event loop is gone.
    pub(crate) async fn subscribe(&self, filters: &[String], qos: QoS) -> Result<(), MqttError> {
        match self {
            Client::V311(client) => client
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos)),
                )
                .await
                .map_err(MqttError::from),
            Client::V5(client) => {
                use rumqttc::v5::mqttbytes::v5::Filter;
                let qos = match qos {
                    QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    _ => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                };
                client
                    .subscribe_many(filters.iter().map(|f| Filter::new(f.clone(), qos)))
                    .await
                    .map_err(MqttError::from)
            }
        }
    }

    /// Unsubscribes from `filters`, one UNSUBSCRIBE each (rumqttc sends one filter a packet).
    ///
    /// # Errors
    /// The event loop is gone.
    pub(crate) async fn unsubscribe(&self, filters: &[String]) -> Result<(), MqttError> {
        for filter in filters {
            match self {
                Client::V311(client) => client.unsubscribe(filter.clone()).await?,
                Client::V5(client) => client.unsubscribe(filter.clone()).await?,
            }
        }
        Ok(())
    }

    /// Queues a DISCONNECT.
    ///
    /// # Errors
    /// The event loop is gone.
    pub(crate) async fn disconnect(&self) -> Result<(), MqttError> {
        match self {
            Client::V311(client) => Ok(client.disconnect().await?),
            Client::V5(client) => Ok(client.disconnect().await?),
        }
    }
}

/// The QoS 1 PUBLISH a PUBACK answers: rumqttc builds the acknowledgement from its packet id.
fn received_v311(pkid: u16) -> rumqttc::Publish {
    let mut publish = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
    publish.pkid = pkid;
    publish
}

/// [`received_v311`] for MQTT 5.
fn received_v5(pkid: u16) -> rumqttc::v5::mqttbytes::v5::Publish {
    let mut publish = rumqttc::v5::mqttbytes::v5::Publish::new(
        "",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        Vec::new(),
        None,
    );
    publish.pkid = pkid;
    publish
}

impl EventLoop {
    /// The next event; an error means the connection is down (the next poll reconnects).
    pub(crate) async fn poll(&mut self) -> Result<NetEvent, MqttError> {
        match self {
            EventLoop::V311(eventloop) => {
                use rumqttc::{Event, Packet};
                Ok(match eventloop.poll().await? {
                    Event::Incoming(Packet::ConnAck(ack)) => NetEvent::Connected {
                        session_present: ack.session_present,
                    },
                    Event::Incoming(Packet::Publish(publish)) => NetEvent::Message {
                        topic: publish.topic,
                        payload: publish.payload,
                        needs_ack: publish.qos != QoS::AtMostOnce,
                        pkid: publish.pkid,
                    },
                    Event::Incoming(Packet::SubAck(ack)) => NetEvent::Subscribed {
                        refused: ack
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count(),
                    },
                    Event::Incoming(Packet::UnsubAck(_)) => NetEvent::Unsubscribed,
                    Event::Outgoing(Outgoing::Disconnect) => NetEvent::Disconnecting,
                    _ => NetEvent::Other,
                })
            }
            EventLoop::V5(eventloop) => {
                use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
                use rumqttc::v5::Event;
                Ok(match eventloop.poll().await? {
                    Event::Incoming(Packet::ConnAck(ack)) => NetEvent::Connected {
                        session_present: ack.session_present,
                    },
                    Event::Incoming(Packet::Publish(publish)) => NetEvent::Message {
                        topic: match String::from_utf8(publish.topic.to_vec()) {
                            Ok(topic) => topic,
                            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        },
                        payload: publish.payload,
                        needs_ack: publish.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                        pkid: publish.pkid,
                    },
                    Event::Incoming(Packet::SubAck(ack)) => NetEvent::Subscribed {
                        refused: ack
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .count(),
                    },
                    Event::Incoming(Packet::UnsubAck(_)) => NetEvent::Unsubscribed,
                    Event::Incoming(Packet::Disconnect(disconnect)) => {
                        NetEvent::DisconnectedByBroker {
                            reason: match disconnect.properties.and_then(|p| p.reason_string) {
                                Some(text) => format!("{:?}: {text}", disconnect.reason_code),
                                None => format!("{:?}", disconnect.reason_code),
                            },
                        }
                    }
                    Event::Outgoing(Outgoing::Disconnect) => NetEvent::Disconnecting,
                    _ => NetEvent::Other,
                })
            }
        }
    }
}
