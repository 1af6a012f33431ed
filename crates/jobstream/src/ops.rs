//! Operating `jobstream run`: log output, and where the `/metrics` `/health` `/ready` endpoint
//! listens (the topology serves it and registers every stage's counters and checks).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::Path;

use jobstream_metrics::MetricsServer;
use jobstream_topology::MetricsEndpoint;
use serde::Deserialize;

use crate::{Failure, EXIT_CONFIG};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`; `--log-format` and `JOBSTREAM_LOG_FORMAT` win.
    pub format: Option<LogFormat>,
    /// A filter such as `info` or `info,rumqttc=warn`; `JOBSTREAM_LOG` wins.
    pub level: Option<String>,
}

/// `[metrics]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address serving `/metrics`, `/health` and `/ready`, e.g. `127.0.0.1:9464`
    /// (`0.0.0.0:9464` in a container); unset: no endpoint. `--metrics-listen` wins.
    pub listen: Option<String>,
}

/// Only the `[log]` table of a configuration file; every other key is `run`'s to check.
#[derive(Debug, Default, Deserialize)]
struct LogOnly {
    #[serde(default)]
    log: LogSettings,
}

/// `[log]` from the configuration file, read before logging starts. A file that does not load
/// yields the defaults here: `run` reports the error itself, with the file, key and line.
pub fn peek_log_settings(config: Option<&Path>) -> LogSettings {
    config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| toml::from_str::<LogOnly>(&text).ok())
        .map(|only| only.log)
        .unwrap_or_default()
}

/// Starts the `tracing` subscriber on standard error. `JOBSTREAM_LOG` (an env-filter such as
/// `debug` or `info,rumqttc=warn`) wins over `level`, which wins over `default_level`.
pub fn init_logging(format: LogFormat, level: Option<&str>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("JOBSTREAM_LOG").unwrap_or_else(|_| {
        level
            .and_then(|l| EnvFilter::try_new(l).ok())
            .unwrap_or_else(|| EnvFilter::new(default_level))
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// Says where a configuration error comes from: a value checked after loading (a QoS of 2,
/// zero connections) is named by its key, and this adds the file, unless the message already
/// names it (syntax and unknown-key errors do, with the line).
pub fn locate(failure: Failure, config: Option<&Path>) -> Failure {
    match config {
        Some(path) if failure.code == EXIT_CONFIG => {
            let message = format!("{:#}", failure.error);
            if message.contains(&path.display().to_string()) {
                failure
            } else {
                Failure::new(
                    EXIT_CONFIG,
                    anyhow::anyhow!(
                        "config file {} (JOBSTREAM_* variables and flags override it): {message}",
                        path.display()
                    ),
                )
            }
        }
        _ => failure,
    }
}

/// `key=value, …` with secret values replaced by `***`.
pub fn redacted_options(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| {
            if jobstream_sink::kafka::is_secret_option(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the metrics endpoint listens, and where that came from (for error messages).
#[derive(Debug, Clone, Default)]
pub struct OpsPlan {
    /// The checked listen address, if any.
    pub metrics_listen: Option<String>,
    /// `--metrics-listen / JOBSTREAM_METRICS_LISTEN` or `<file>: [metrics] listen`.
    origin: String,
}

impl OpsPlan {
    /// Resolves `[metrics] listen` from the flag (or environment) and the file, and checks
    /// the address without binding it.
    ///
    /// # Errors
    /// A listen address that is not `ip:port`, naming where it came from (exit 78).
    pub fn resolve(flag: Option<String>, config: Option<&Path>) -> Result<Self, Failure> {
        let (listen, origin) = match flag {
            Some(listen) => (
                Some(listen),
                "--metrics-listen / JOBSTREAM_METRICS_LISTEN".to_owned(),
            ),
            None => {
                let from_file = config.and_then(metrics_settings).and_then(|m| m.listen);
                let origin = config.map_or_else(String::new, |p| {
                    format!("config file {}: [metrics] listen", p.display())
                });
                (from_file, origin)
            }
        };
        if let Some(address) = &listen {
            MetricsServer::parse_address(address)
                .map_err(|e| Failure::new(EXIT_CONFIG, anyhow::anyhow!("{origin}: {e}")))?;
        }
        Ok(OpsPlan {
            metrics_listen: listen,
            origin,
        })
    }

    /// The endpoint for the topology, if one is configured.
    pub fn endpoint(&self) -> Option<MetricsEndpoint> {
        self.metrics_listen.as_ref().map(|listen| MetricsEndpoint {
            listen: listen.clone(),
            origin: self.origin.clone(),
        })
    }

    /// The `--check` lines for the endpoint and the pass-through Kafka options.
    pub fn print_check(&self, kafka_options: Option<&BTreeMap<String, String>>) {
        match &self.metrics_listen {
            Some(listen) => outln!("  metrics     http://{listen}/metrics, /health, /ready"),
            None => outln!("  metrics     off (set [metrics] listen or --metrics-listen)"),
        }
        if let Some(options) = kafka_options.filter(|o| !o.is_empty()) {
            outln!("  kafka opts  {}", redacted_options(options));
        }
    }
}

fn metrics_settings(path: &Path) -> Option<MetricsSettings> {
    #[derive(Deserialize)]
    struct MetricsOnly {
        #[serde(default)]
        metrics: MetricsSettings,
    }
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<MetricsOnly>(&text).ok().map(|m| m.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_options_are_recognised() {
        for key in [
            "sasl.password",
            "sasl.username",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "producer.sasl.password",
        ] {
            assert!(jobstream_sink::kafka::is_secret_option(key), "{key}");
        }
        for key in [
            "security.protocol",
            "sasl.mechanisms",
            "ssl.ca.location",
            "linger.ms",
        ] {
            assert!(!jobstream_sink::kafka::is_secret_option(key), "{key}");
        }
        let options = BTreeMap::from([
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ]);
        assert_eq!(
            redacted_options(&options),
            "sasl.password=***, security.protocol=SASL_SSL"
        );
        let mut kafka = jobstream_sink::kafka::KafkaConfig::new("k:9092");
        kafka.options = options;
        let shown = format!("{kafka:?}");
        assert!(
            shown.contains("SASL_SSL") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
