//! MQTT connection settings: URL, session, subscriptions, TLS. The URL is parsed in `url`,
//! the TLS files are read in `tls`.

mod sigv4;
mod tls;
mod url;

pub use jobstream_aws::AwsCredentials;
pub use sigv4::{region_of_endpoint, Presigner, SigV4Error, IOT_SERVICE};
pub use tls::{TlsError, AWS_ALPN_PORT, AWS_MQTT_ALPN};
pub use url::{redact, MqttUrlError, ParsedUrl, UrlProblem};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

use jobstream_sink::config_fields;
use serde::Deserialize;

use crate::BridgeError;

/// Largest MQTT payload kept whole by default. AWS IoT Core caps payloads at 128 KiB; the
/// parser's own cap (`max_payload_bytes`) sends larger ones to the DLQ whole. A payload above
/// this limit is cut to its first 64 KiB as soon as it arrives and goes to the DLQ
/// (`payload_too_large`, with its size), so that no queue holds more of it.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1024 * 1024;

/// The largest packet MQTT can express (a 4-byte remaining length) plus its fixed header:
/// what the client reads at most. Refusing a packet instead would drop the connection, and the
/// broker would redeliver the same message at every reconnect, blocking the session forever;
/// and an MQTT 5 broker silently discards messages above the size a client announces.
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455 + 5;

/// How long an MQTT 5 broker keeps a session (and its unacknowledged messages) after the
/// connection drops: a week, the longest AWS IoT Core allows. MQTT 3.1.1 has no such setting;
/// the broker decides.
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (the default: every broker speaks it).
    #[default]
    V311,
    /// MQTT 5: session expiry and receive maximum are announced at connect.
    V5,
}

impl std::str::FromStr for MqttVersion {
    type Err = BridgeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "3.1.1" | "3" | "4" | "v3" | "v4" | "311" => Ok(MqttVersion::V311),
            "5" | "5.0" | "v5" => Ok(MqttVersion::V5),
            other => Err(BridgeError::UnknownMqttVersion {
                given: other.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

/// Whether a connection takes up its client id's persistent session or ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStart {
    /// Clean session (clean start) off: the broker hands over what the session holds.
    Resume,
    /// Clean session on (MQTT 5: clean start, expiry 0): the broker discards the session.
    Discard,
}

/// The parts of a connection both protocol versions share.
struct Connection {
    client_id: String,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    transport: Option<Transport>,
    /// Signs each WebSocket handshake anew (AWS SigV4).
    signer: Option<Arc<Presigner>>,
}

/// How to reach and read the MQTT broker. Its `Debug` output hides the password (in the
/// URL and the field), so a configuration can be logged. It is the `[mqtt]` section of a
/// configuration file, which deserializes into it (durations as `*_secs` keys, unknown keys
/// refused); a key left out keeps the default of [`MqttConfig::new`]. [`validate`] checks the
/// whole of it.
///
/// [`validate`]: MqttConfig::validate
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (1883) or `mqtts://…` (8883, TLS); MQTT over
    /// WebSockets as `ws://host[:port][/path]` (80, `/mqtt`) or `wss://…` (443, TLS).
    pub url: String,
    /// Protocol version: `3.1.1` or `5`.
    #[serde(deserialize_with = "version_setting")]
    pub version: MqttVersion,
    /// MQTT 5: how long the broker keeps the session after a disconnect (3.1.1: ignored).
    #[serde(
        rename = "session_expiry_secs",
        deserialize_with = "config_fields::seconds"
    )]
    pub session_expiry: Duration,
    /// Base client id: connection 0 uses it as it is, connection `i` uses `<client_id>-<i>`.
    /// Must be stable across restarts: the broker keeps the unacknowledged messages of a
    /// session under it.
    pub client_id: String,
    /// Parallel connections; with more than one they join a shared subscription.
    pub connections: usize,
    /// At start, find the persistent sessions that a run with more connections left under
    /// this client id (`<client_id>-<connections>`, the next, …) and drain them: unsubscribe,
    /// take what they hold through the pipeline, then end them. Off where the broker's policy
    /// lets this client connect under its own ids only.
    pub retire_sessions: bool,
    /// Shared-subscription group used when `connections > 1`.
    pub share_group: String,
    /// Topic filters to subscribe to.
    pub filters: Vec<String>,
    /// 1 (default): acknowledged after Kafka has the event. 0: fire-and-forget, a crash
    /// loses what was in flight.
    pub qos: u8,
    /// Keep-alive interval (at least 5 seconds).
    #[serde(
        rename = "keep_alive_secs",
        deserialize_with = "config_fields::seconds"
    )]
    pub keep_alive: Duration,
    /// Largest payload kept whole; larger ones are cut to their first 64 KiB on arrival and
    /// go to the DLQ (`payload_too_large`), acknowledged like any reject. Every packet is read
    /// (up to MQTT's 256 MiB), so memory briefly holds one such packet per connection; cap it
    /// at the broker (mosquitto's `max_packet_size`, AWS's 128 KiB).
    pub max_packet_bytes: usize,
    /// Requests queued to the client (acks, subscribes) before `ack` waits.
    pub request_capacity: usize,
    /// How long the first connection may take before `run` gives up.
    #[serde(
        rename = "connect_timeout_secs",
        deserialize_with = "config_fields::seconds"
    )]
    pub connect_timeout: Duration,
    /// `mqtts://`: CA certificate(s) to trust (PEM); the system roots are not used.
    pub ca: Option<PathBuf>,
    /// Mutual TLS: client certificate (chain), PEM.
    pub cert: Option<PathBuf>,
    /// Mutual TLS: client private key, PEM: PKCS#1 (`RSA PRIVATE KEY`), PKCS#8 or SEC1.
    pub key: Option<PathBuf>,
    /// ALPN protocol to offer (`none`: offer none); AWS IoT Core on port 443 needs
    /// `x-amzn-mqtt-ca`, offered there unless set.
    pub alpn: Option<String>,
    /// `wss://` to AWS IoT Core: sign the WebSocket request with AWS SigV4 (credentials from
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` or the shared
    /// credentials file), instead of a device certificate.
    pub aws_sigv4: bool,
    /// The region SigV4 signs for; unset, the one the endpoint's host names
    /// (`…iot.<region>.amazonaws.com`).
    pub aws_region: Option<String>,
    /// User name (overrides the URL's).
    pub username: Option<String>,
    /// Password (overrides the URL's). Never logged.
    pub password: Option<String>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &redact(&self.url))
            .field("version", &self.version)
            .field("session_expiry", &self.session_expiry)
            .field("client_id", &self.client_id)
            .field("connections", &self.connections)
            .field("retire_sessions", &self.retire_sessions)
            .field("share_group", &self.share_group)
            .field("filters", &self.filters)
            .field("qos", &self.qos)
            .field("keep_alive", &self.keep_alive)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("request_capacity", &self.request_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("alpn", &self.alpn)
            .field("aws_sigv4", &self.aws_sigv4)
            .field("aws_region", &self.aws_region)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

fn version_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<MqttVersion, D::Error> {
    config_fields::parsed_as("mqtt.version", deserializer)
}

impl Default for MqttConfig {
    /// The defaults of [`MqttConfig::new`] with no URL yet (a configuration file may leave it
    /// to a flag).
    fn default() -> Self {
        MqttConfig::new("")
    }
}

impl MqttConfig {
    /// Defaults for `url`: the two AWS job-event filters, QoS 1, one connection.
    pub fn new(url: impl Into<String>) -> Self {
        MqttConfig {
            url: url.into(),
            version: MqttVersion::V311,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            client_id: "jobstream".to_owned(),
            connections: 1,
            retire_sessions: true,
            share_group: "jobstream".to_owned(),
            filters: vec![
                "$aws/events/job/+/+".to_owned(),
                "$aws/events/jobExecution/+/+".to_owned(),
            ],
            qos: 1,
            keep_alive: Duration::from_secs(30),
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            request_capacity: 4096,
            connect_timeout: Duration::from_secs(30),
            ca: None,
            cert: None,
            key: None,
            alpn: None,
            aws_sigv4: false,
            aws_region: None,
            username: None,
            password: None,
        }
    }

    /// Checks every setting before anything connects: the URL, the TLS files it needs, and
    /// each number in range.
    ///
    /// # Errors
    /// [`BridgeError::InvalidSetting`] naming the first setting out of range, or
    /// [`BridgeError::Config`] for the URL and TLS files.
    pub fn validate(&self) -> Result<(), BridgeError> {
        let invalid = |setting: &'static str, value: String, reason: &str| {
            Err(BridgeError::InvalidSetting {
                setting,
                value,
                reason: reason.to_owned(),
            })
        };
        if self.session_expiry.is_zero() {
            return invalid(
                "mqtt.session_expiry_secs",
                "0".into(),
                "must be at least 1: with 0 the broker forgets the unacknowledged messages when the connection drops",
            );
        }
        if self.connections == 0 {
            return invalid("mqtt.connections", "0".into(), "must be at least 1");
        }
        if self.filters.is_empty() {
            return invalid(
                "mqtt.filters",
                "[]".into(),
                "must name at least one topic filter",
            );
        }
        if self.max_packet_bytes < 1024 {
            return invalid(
                "mqtt.max_packet_bytes",
                self.max_packet_bytes.to_string(),
                "must be at least 1024 (AWS IoT Core sends up to 131072)",
            );
        }
        if self.keep_alive < Duration::from_secs(5) {
            return invalid(
                "mqtt.keep_alive_secs",
                self.keep_alive.as_secs().to_string(),
                "must be at least 5",
            );
        }
        if self.connect_timeout.is_zero() {
            return invalid(
                "mqtt.connect_timeout_secs",
                "0".into(),
                "must be at least 1",
            );
        }
        if self.request_capacity == 0 {
            return invalid("mqtt.request_capacity", "0".into(), "must be at least 1");
        }
        self.qos()?;
        // The URL and the TLS files, as the first connection would read them.
        self.options(0).map(|_| ())
    }

    /// The QoS to subscribe with.
    ///
    /// # Errors
    /// QoS other than 0 or 1.
    pub fn qos(&self) -> Result<QoS, BridgeError> {
        match self.qos {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            other => Err(BridgeError::InvalidSetting {
                setting: "mqtt.qos",
                value: other.to_string(),
                reason: format!("must be 0 or 1, got {other} (QoS 2 adds nothing here: Kafka is the dedup point)"),
            }),
        }
    }

    /// The subscription filters for this configuration (shared when several connections).
    pub fn subscriptions(&self) -> Vec<String> {
        if self.connections > 1 {
            self.shared_filters()
        } else {
            self.filters.clone()
        }
    }

    /// The filters a session may still hold from a run with another number of connections
    /// (the plain ones when this run shares, the shared ones when it does not): a persistent
    /// session keeps its subscriptions, and holding both forms would deliver every event
    /// twice to the same connection.
    pub fn superseded_subscriptions(&self) -> Vec<String> {
        let (now, then) = (self.subscriptions(), self.retired_subscriptions());
        then.into_iter().filter(|f| !now.contains(f)).collect()
    }

    /// Every form of the filters a session of this client id may hold: what a retired session
    /// is unsubscribed from.
    pub fn retired_subscriptions(&self) -> Vec<String> {
        let mut filters = self.filters.clone();
        for shared in self.shared_filters() {
            if !filters.contains(&shared) {
                filters.push(shared);
            }
        }
        filters
    }

    fn shared_filters(&self) -> Vec<String> {
        self.filters
            .iter()
            .map(|f| {
                if f.starts_with("$share/") {
                    f.clone()
                } else {
                    format!("$share/{}/{f}", self.share_group)
                }
            })
            .collect()
    }

    /// The client id of connection `index`: the base id for connection 0, `<base>-<index>`
    /// after it. Adding connections never renames one that exists, so its session (and the
    /// messages the broker queued in it) is found again; sessions that fewer connections leave
    /// behind are retired at start (`retire_sessions`).
    pub fn client_id_of(&self, index: usize) -> String {
        if index == 0 {
            self.client_id.clone()
        } else {
            format!("{}-{index}", self.client_id)
        }
    }

    /// rumqttc (MQTT 3.1.1) options for connection `index`.
    ///
    /// # Errors
    /// A malformed URL or unreadable TLS files, named in the message.
    pub fn options(&self, index: usize) -> Result<MqttOptions, BridgeError> {
        self.options_as(&self.client_id_of(index), SessionStart::Resume)
    }

    /// rumqttc (MQTT 3.1.1) options for client id `client_id`, resuming or discarding its
    /// session.
    pub(crate) fn options_as(
        &self,
        client_id: &str,
        start: SessionStart,
    ) -> Result<MqttOptions, BridgeError> {
        let connection = self.connection(client_id)?;
        let mut options = MqttOptions::new(connection.client_id, connection.host, connection.port);
        options
            .set_clean_session(start == SessionStart::Discard)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(MQTT_MAX_PACKET_BYTES, self.max_packet_bytes)
            .set_request_channel_capacity(self.request_capacity)
            .set_inflight(u16::MAX);
        if let Some((user, password)) = connection.credentials {
            options.set_credentials(user, password);
        }
        if let Some(transport) = connection.transport {
            options.set_transport(transport);
        }
        if let Some(signer) = connection.signer {
            options.set_request_modifier(move |mut request| {
                signer.sign_request(&mut request);
                std::future::ready(request)
            });
        }
        Ok(options)
    }

    /// rumqttc MQTT 5 options for connection `index`: a persistent session (clean start off,
    /// session expiry set) and the largest receive maximum, so the broker may keep as many
    /// QoS 1 messages in flight as 3.1.1 allows.
    ///
    /// The Maximum Packet Size announced is MQTT's largest: a broker discards messages above
    /// the announced size instead of sending them (the protocol says so), and those would be
    /// lost without a trace; oversized messages reach the DLQ instead (`max_packet_bytes`).
    ///
    /// # Errors
    /// A malformed URL or unreadable TLS files, named in the message.
    pub fn options_v5(&self, index: usize) -> Result<rumqttc::v5::MqttOptions, BridgeError> {
        self.options_v5_as(&self.client_id_of(index), SessionStart::Resume)
    }

    /// rumqttc MQTT 5 options for client id `client_id`; discarding its session is a clean
    /// start with a session expiry of 0, so nothing is kept after the disconnect either.
    pub(crate) fn options_v5_as(
        &self,
        client_id: &str,
        start: SessionStart,
    ) -> Result<rumqttc::v5::MqttOptions, BridgeError> {
        let connection = self.connection(client_id)?;
        let mut options =
            rumqttc::v5::MqttOptions::new(connection.client_id, connection.host, connection.port);
        let max_packet = u32::try_from(MQTT_MAX_PACKET_BYTES).unwrap_or(u32::MAX);
        let expiry = match start {
            SessionStart::Resume => {
                u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX)
            }
            SessionStart::Discard => 0,
        };
        options
            .set_clean_start(start == SessionStart::Discard)
            .set_session_expiry_interval(Some(expiry))
            .set_receive_maximum(Some(u16::MAX))
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(Some(max_packet))
            .set_request_channel_capacity(self.request_capacity);
        if let Some((user, password)) = connection.credentials {
            options.set_credentials(user, password);
        }
        if let Some(transport) = connection.transport {
            options.set_transport(transport);
        }
        if let Some(signer) = connection.signer {
            options.set_request_modifier(move |mut request| {
                signer.sign_request(&mut request);
                std::future::ready(request)
            });
        }
        Ok(options)
    }

    /// The SigV4 signer `aws_sigv4` asks for, with credentials read now.
    fn presigner(&self, url: &ParsedUrl) -> Result<Option<Arc<Presigner>>, BridgeError> {
        if !self.aws_sigv4 {
            return Ok(None);
        }
        if !url.websocket {
            return Err(SigV4Error::NotWebSocket.into());
        }
        let region = match (&self.aws_region, region_of_endpoint(&url.host)) {
            (Some(region), _) => region.clone(),
            (None, Some(region)) => region.to_owned(),
            (None, None) => {
                return Err(SigV4Error::NoRegion {
                    host: url.host.clone(),
                }
                .into())
            }
        };
        let credentials = AwsCredentials::from_environment().map_err(SigV4Error::from)?;
        Ok(Some(Arc::new(Presigner::new(
            credentials,
            region,
            IOT_SERVICE,
        ))))
    }

    /// What both protocol versions need: address, client id, credentials, TLS.
    fn connection(&self, client_id: &str) -> Result<Connection, BridgeError> {
        let url = ParsedUrl::parse(&self.url)?;
        // Checked whatever the scheme, so that a mistyped path is named as such rather than
        // as a scheme mismatch or a PEM error.
        for path in [&self.ca, &self.cert, &self.key].into_iter().flatten() {
            if !path.is_file() {
                return Err(TlsError::MissingFile { path: path.clone() }.into());
            }
        }
        let client_id = client_id.to_owned();
        let username = self.username.clone().or(url.username.clone());
        let password = self.password.clone().or(url.password.clone());
        if !url.tls && (self.cert.is_some() || self.ca.is_some()) {
            return Err(TlsError::FilesWithoutTls {
                url: redact(&self.url),
            }
            .into());
        }
        let signer = self.presigner(&url)?;
        let tls = || {
            self.rustls_config(&url)
                .map(|config| TlsConfiguration::Rustls(Arc::new(config)))
        };
        let transport = match (url.websocket, url.tls) {
            (false, false) => None,
            (false, true) => Some(Transport::tls_with_config(tls()?)),
            (true, false) => Some(Transport::Ws),
            (true, true) => Some(Transport::Wss(tls()?)),
        };
        // For WebSockets rumqttc takes the whole URL where the host goes.
        let host = if url.websocket {
            let scheme = if url.tls { "wss" } else { "ws" };
            let host = if url.host.contains(':') {
                format!("[{}]", url.host)
            } else {
                url.host.clone()
            };
            format!("{scheme}://{host}:{}{}", url.port, url.path)
        } else {
            url.host.clone()
        };
        Ok(Connection {
            client_id,
            host,
            port: url.port,
            credentials: username.map(|user| (user, password.unwrap_or_default())),
            transport,
            signer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_versions_parse_and_bad_ones_name_the_choices() {
        assert_eq!(
            "3.1.1".parse::<MqttVersion>().expect("3.1.1"),
            MqttVersion::V311
        );
        assert_eq!("5".parse::<MqttVersion>().expect("5"), MqttVersion::V5);
        assert_eq!("v5".parse::<MqttVersion>().expect("v5"), MqttVersion::V5);
        let error = "6".parse::<MqttVersion>().expect_err("6").to_string();
        assert!(error.contains("3.1.1 or 5"), "{error}");
    }

    #[test]
    fn mqtt5_options_keep_the_session_and_allow_the_full_receive_window() {
        let mut config = MqttConfig::new("mqtt://user:pw@broker:1884");
        config.version = MqttVersion::V5;
        config.connections = 2;
        let options = config.options_v5(1).expect("valid");
        assert!(!options.clean_start(), "a restart must find its session");
        assert_eq!(
            options.session_expiry_interval(),
            Some(DEFAULT_SESSION_EXPIRY.as_secs() as u32)
        );
        assert_eq!(options.receive_maximum(), Some(u16::MAX));
        assert_eq!(
            options.max_packet_size(),
            Some(MQTT_MAX_PACKET_BYTES as u32),
            "a broker discards what exceeds the announced size: announce MQTT's largest"
        );
        assert!(options.manual_acks());
        assert_eq!(options.client_id(), "jobstream-1");
        assert_eq!(options.broker_address(), ("broker".to_owned(), 1884));
        assert!(options.credentials().is_some());
    }

    #[test]
    fn debug_output_hides_passwords() {
        let mut config = MqttConfig::new("mqtt://user:url-secret@h:1883");
        config.password = Some("field-secret".to_owned());
        let shown = format!("{config:?}");
        assert!(shown.contains("user:***@h:1883"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn connection_zero_keeps_the_bare_client_id_whatever_the_number_of_connections() {
        let mut config = MqttConfig::new("mqtt://h");
        for connections in [1, 2, 5] {
            config.connections = connections;
            assert_eq!(config.client_id_of(0), "jobstream");
            assert_eq!(config.client_id_of(1), "jobstream-1");
            let options = config.options(connections - 1).expect("valid");
            assert_eq!(options.client_id(), config.client_id_of(connections - 1));
            assert!(!options.clean_session(), "a restart must find its session");
        }
    }

    #[test]
    fn a_session_drops_the_form_of_the_filters_another_number_of_connections_used() {
        let mut config = MqttConfig::new("mqtt://h");
        config.filters = vec!["a/+".to_owned(), "$share/g/b/+".to_owned()];
        assert_eq!(config.superseded_subscriptions(), ["$share/jobstream/a/+"]);
        config.connections = 2;
        assert_eq!(
            config.subscriptions(),
            ["$share/jobstream/a/+", "$share/g/b/+"]
        );
        assert_eq!(config.superseded_subscriptions(), ["a/+"]);
        assert_eq!(
            config.retired_subscriptions(),
            ["a/+", "$share/g/b/+", "$share/jobstream/a/+"]
        );
    }

    #[test]
    fn discarding_a_session_is_a_clean_start_that_keeps_nothing_after_it() {
        let mut config = MqttConfig::new("mqtt://h");
        let v311 = config
            .options_as("jobstream-3", SessionStart::Discard)
            .expect("valid");
        assert!(v311.clean_session());
        assert_eq!(v311.client_id(), "jobstream-3");
        config.version = MqttVersion::V5;
        let v5 = config
            .options_v5_as("jobstream-3", SessionStart::Discard)
            .expect("valid");
        assert!(v5.clean_start());
        assert_eq!(v5.session_expiry_interval(), Some(0));
    }

    #[test]
    fn alpn_is_offered_on_443_unless_set_and_none_offers_none() {
        let url = |text: &str| ParsedUrl::parse(text).expect("valid");
        let mut config = MqttConfig::new("mqtts://h:443");
        assert_eq!(
            config.offered_alpn(&url("mqtts://h:443")),
            Some("x-amzn-mqtt-ca")
        );
        assert_eq!(config.offered_alpn(&url("mqtts://h:8883")), None);
        assert_eq!(
            config.offered_alpn(&url("wss://h")),
            None,
            "WebSockets on 443 are HTTPS"
        );
        config.alpn = Some("none".to_owned());
        assert_eq!(config.offered_alpn(&url("mqtts://h:443")), None);
        assert!(config
            .unreachable_hint()
            .is_some_and(|hint| hint.contains("ALPN x-amzn-mqtt-ca")));
        config.alpn = Some("mqtt".to_owned());
        assert_eq!(config.offered_alpn(&url("mqtts://h:443")), Some("mqtt"));
        assert_eq!(config.unreachable_hint(), None);
        config.url = "mqtt://h:443".to_owned();
        config.alpn = None;
        assert_eq!(config.unreachable_hint(), None, "no TLS, no ALPN to miss");
    }

    #[test]
    fn several_connections_share_the_subscription() {
        let mut config = MqttConfig::new("mqtt://h");
        assert_eq!(config.subscriptions()[0], "$aws/events/job/+/+");
        config.connections = 3;
        assert_eq!(
            config.subscriptions()[0],
            "$share/jobstream/$aws/events/job/+/+"
        );
    }
}
