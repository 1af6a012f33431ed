//! MQTT connection settings: URL, session, subscriptions, TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

use crate::BridgeError;

/// Largest MQTT packet the client accepts by default. AWS IoT Core caps payloads at 128 KiB;
/// the limit here is higher so that an oversized payload reaches the parser, which counts it
/// and sends it to the DLQ (`payload_too_large`) instead of the client refusing it — a refused
/// packet would drop the connection and come back with every redelivery.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1024 * 1024;

/// TLS material, all PEM files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA certificate(s) to trust; the system roots are not used when this is set.
    pub ca: Option<PathBuf>,
    /// Client certificate (chain) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client private key: PKCS#1 (`RSA PRIVATE KEY`), PKCS#8 or SEC1.
    pub key: Option<PathBuf>,
    /// ALPN protocol to offer; AWS IoT Core on port 443 needs `x-amzn-mqtt-ca`.
    pub alpn: Option<String>,
}

/// How to reach and read the MQTT broker. Its `Debug` output hides the password (in the
/// URL and the field), so a configuration can be logged.
#[derive(Clone)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]` (1883) or `mqtts://…` (8883, TLS).
    pub url: String,
    /// Base client id; connection `i` uses `<client_id>-<i>`. Must be stable across restarts:
    /// the broker keeps the unacknowledged messages of a session under it.
    pub client_id: String,
    /// Parallel connections; with more than one they join a shared subscription.
    pub connections: usize,
    /// Shared-subscription group used when `connections > 1`.
    pub share_group: String,
    /// Topic filters to subscribe to.
    pub filters: Vec<String>,
    /// 1 (default): acknowledged after Kafka has the event. 0: fire-and-forget, a crash
    /// loses what was in flight.
    pub qos: u8,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Largest packet accepted; larger ones are refused by the client and logged.
    pub max_packet_bytes: usize,
    /// Requests queued to the client (acks, subscribes) before `ack` waits.
    pub request_capacity: usize,
    /// How long the first connection may take before `run` gives up.
    pub connect_timeout: Duration,
    /// TLS files (with `mqtts://`).
    pub tls: TlsFiles,
    /// User name (overrides the URL's).
    pub username: Option<String>,
    /// Password (overrides the URL's). Never logged.
    pub password: Option<String>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &redact(&self.url))
            .field("client_id", &self.client_id)
            .field("connections", &self.connections)
            .field("share_group", &self.share_group)
            .field("filters", &self.filters)
            .field("qos", &self.qos)
            .field("keep_alive", &self.keep_alive)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("request_capacity", &self.request_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl MqttConfig {
    /// Defaults for `url`: the two AWS job-event filters, QoS 1, one connection.
    pub fn new(url: impl Into<String>) -> Self {
        MqttConfig {
            url: url.into(),
            client_id: "jobstream".to_owned(),
            connections: 1,
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
            tls: TlsFiles::default(),
            username: None,
            password: None,
        }
    }

    /// The QoS to subscribe with.
    ///
    /// # Errors
    /// QoS other than 0 or 1.
    pub fn qos(&self) -> Result<QoS, BridgeError> {
        match self.qos {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            other => Err(BridgeError::Config(format!(
                "mqtt qos must be 0 or 1, got {other} (QoS 2 adds nothing here: Kafka is the dedup point)"
            ))),
        }
    }

    /// The subscription filters for this configuration (shared when several connections).
    pub fn subscriptions(&self) -> Vec<String> {
        self.filters
            .iter()
            .map(|f| {
                if self.connections > 1 && !f.starts_with("$share/") {
                    format!("$share/{}/{f}", self.share_group)
                } else {
                    f.clone()
                }
            })
            .collect()
    }

    /// rumqttc options for connection `index`.
    ///
    /// # Errors
    /// A malformed URL or unreadable TLS files, named in the message.
    pub fn options(&self, index: usize) -> Result<MqttOptions, BridgeError> {
        let url = ParsedUrl::parse(&self.url)?;
        // Checked whatever the scheme, so that a mistyped path is named as such rather than
        // as a scheme mismatch or a PEM error.
        for path in [&self.tls.ca, &self.tls.cert, &self.tls.key]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err(BridgeError::Config(format!(
                    "TLS file {} does not exist",
                    path.display()
                )));
            }
        }
        let client_id = if self.connections > 1 || index > 0 {
            format!("{}-{index}", self.client_id)
        } else {
            self.client_id.clone()
        };
        let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes)
            .set_request_channel_capacity(self.request_capacity)
            .set_inflight(u16::MAX);
        let username = self.username.clone().or(url.username);
        let password = self.password.clone().or(url.password);
        if let Some(user) = username {
            options.set_credentials(user, password.unwrap_or_default());
        }
        if url.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(self.rustls_config(url.port)?),
            )));
        } else if self.tls.cert.is_some() || self.tls.ca.is_some() {
            return Err(BridgeError::Config(format!(
                "TLS files are set but the URL {} is not mqtts://",
                redact(&self.url)
            )));
        }
        Ok(options)
    }

    fn rustls_config(&self, port: u16) -> Result<rustls::ClientConfig, BridgeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let mut roots = rustls::RootCertStore::empty();
        match &self.tls.ca {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| tls_error(ca, "CA file", e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_error(ca, "CA file", e))?;
                if certs.is_empty() {
                    return Err(BridgeError::Config(format!(
                        "CA file {} holds no PEM certificate",
                        ca.display()
                    )));
                }
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| tls_error(ca, "CA certificate", e))?;
                }
            }
            None => {
                return Err(BridgeError::Config(
                    "mqtts:// needs a CA file (--mqtt-ca); for AWS IoT Core use AmazonRootCA1.pem"
                        .to_owned(),
                ))
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BridgeError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
        let mut config = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| tls_error(cert, "client certificate", e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_error(cert, "client certificate", e))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls_error(key, "private key", e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| BridgeError::Config(format!("client certificate and key: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(BridgeError::Config(
                    "mutual TLS needs both --mqtt-cert and --mqtt-key".to_owned(),
                ))
            }
        };
        let alpn = self
            .tls
            .alpn
            .clone()
            .or_else(|| (port == 443).then(|| "x-amzn-mqtt-ca".to_owned()));
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.into_bytes()];
        }
        Ok(config)
    }
}

fn tls_error(path: &Path, what: &str, error: impl std::fmt::Display) -> BridgeError {
    BridgeError::Config(format!("{what} {}: {error}", path.display()))
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The parts of an MQTT URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// TLS (`mqtts`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// From `user@`.
    pub username: Option<String>,
    /// From `user:password@`.
    pub password: Option<String>,
}

impl ParsedUrl {
    /// Parses `mqtt://` and `mqtts://` URLs.
    ///
    /// # Errors
    /// Any other scheme, a missing host, or a bad port, with the URL (password hidden).
    pub fn parse(url: &str) -> Result<Self, BridgeError> {
        let bad = |why: &str| {
            BridgeError::Config(format!(
                "MQTT URL {:?} {why}; expected mqtt://host[:port] or mqtts://host[:port]",
                redact(url)
            ))
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(bad("has an unknown scheme"));
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                None => (Some(info.to_owned()), None),
            },
            None => (None, None),
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("has a bad port"))?,
                None => default_port,
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| bad("has a bad port"))?,
                ),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("has no host"));
        }
        Ok(ParsedUrl {
            tls,
            host,
            port,
            username,
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_credentials_and_ipv6() {
        let u = ParsedUrl::parse("mqtt://localhost").expect("valid");
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "localhost", 1883));
        let u = ParsedUrl::parse("mqtts://a:b@iot.example:443").expect("valid");
        assert_eq!((u.tls, u.port), (true, 443));
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("a"), Some("b"))
        );
        let u = ParsedUrl::parse("mqtt://[::1]:1884").expect("valid");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        for bad in ["http://x", "mqtt://", "mqtt://host:port", "mqtt://h:99999"] {
            assert!(ParsedUrl::parse(bad).is_err(), "{bad}");
        }
        let error = ParsedUrl::parse("tcp://user:secret@h")
            .expect_err("bad scheme")
            .to_string();
        assert!(
            error.contains("user:***@h") && !error.contains("secret"),
            "{error}"
        );
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
