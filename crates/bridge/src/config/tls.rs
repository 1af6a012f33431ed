//! TLS for `mqtts://`: the CA to trust, the client certificate and key for mutual TLS (PKCS#1
//! or PKCS#8, as AWS hands them out), and ALPN for port 443.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::MqttConfig;
use crate::BridgeError;

impl MqttConfig {
    pub(super) fn rustls_config(
        &self,
        url: &super::ParsedUrl,
    ) -> Result<rustls::ClientConfig, BridgeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| pem_error(ca, "CA file", e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error(ca, "CA file", e))?;
                if certs.is_empty() {
                    return Err(TlsError::EmptyCa { path: ca.clone() }.into());
                }
                for cert in certs {
                    roots.add(cert).map_err(|source| TlsError::BadCa {
                        path: ca.clone(),
                        source,
                    })?;
                }
            }
            None => return Err(TlsError::NoCa.into()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| pem_error(cert, "client certificate", e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error(cert, "client certificate", e))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| pem_error(key, "private key", e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(TlsError::ClientAuth)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfClientAuth.into()),
        };
        if let Some(alpn) = self.offered_alpn(url) {
            config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        }
        Ok(config)
    }

    /// The ALPN protocol offered to the TLS server of `url`: `alpn` as set (`none` offers
    /// none), else AWS IoT Core's `x-amzn-mqtt-ca` for MQTT on port 443, where AWS takes MQTT
    /// only with it (WebSockets on 443 are HTTPS, and offer none).
    pub fn offered_alpn(&self, url: &super::ParsedUrl) -> Option<&str> {
        match self.alpn.as_deref() {
            Some("none" | "") => None,
            Some(alpn) => Some(alpn),
            None => (url.port == AWS_ALPN_PORT && !url.websocket).then_some(AWS_MQTT_ALPN),
        }
    }

    /// AWS IoT Core on port 443 serves HTTPS to a TLS client that offers no ALPN, and closes
    /// an MQTT connection there before CONNACK; nothing else in the failure says so.
    pub(crate) fn unreachable_hint(&self) -> Option<&'static str> {
        let url = super::ParsedUrl::parse(&self.url).ok()?;
        let missing = url.tls && !url.websocket && url.port == AWS_ALPN_PORT;
        (missing && self.offered_alpn(&url).is_none()).then_some(
            "no ALPN protocol was offered: AWS IoT Core on port 443 takes MQTT only with ALPN x-amzn-mqtt-ca; leave --mqtt-alpn unset or set it to x-amzn-mqtt-ca",
        )
    }
}

/// The ALPN protocol AWS IoT Core requires for MQTT with X.509 client certificates on port 443.
pub const AWS_MQTT_ALPN: &str = "x-amzn-mqtt-ca";

/// The port on which AWS IoT Core tells MQTT from HTTPS by ALPN.
pub const AWS_ALPN_PORT: u16 = 443;

fn pem_error(path: &Path, what: &'static str, source: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Why the TLS material for `mqtts://` is unusable. Each message names the file, or the flag
/// to set.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA, certificate or key path that is not a file.
    #[error("TLS file {} does not exist", path.display())]
    MissingFile {
        /// The path as given.
        path: PathBuf,
    },
    /// TLS files with an `mqtt://` URL: almost always a URL typed wrong, not a wish for
    /// plain text.
    #[error("TLS files are set but the URL {url} is not mqtts:// or wss://")]
    FilesWithoutTls {
        /// The URL, password hidden.
        url: String,
    },
    /// `mqtts://` without a CA: there is no system trust store to fall back on here.
    #[error("mqtts:// needs a CA file (--mqtt-ca); for AWS IoT Core use AmazonRootCA1.pem")]
    NoCa,
    /// The CA file parses but holds no certificate.
    #[error("CA file {} holds no PEM certificate", path.display())]
    EmptyCa {
        /// The CA file.
        path: PathBuf,
    },
    /// A file that is not the PEM it should be.
    #[error("{what} {}: {source}", path.display())]
    Pem {
        /// Which file: the CA file, client certificate or private key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A CA certificate rustls will not trust.
    #[error("CA certificate {}: {source}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused its own default protocol versions (a build problem, not a setting).
    #[error("TLS setup: {0}")]
    Setup(#[source] rustls::Error),
    /// The client certificate and key do not go together.
    #[error("client certificate and key: {0}")]
    ClientAuth(#[source] rustls::Error),
    /// Only one of the two files mutual TLS needs.
    #[error("mutual TLS needs both --mqtt-cert and --mqtt-key")]
    HalfClientAuth,
}
