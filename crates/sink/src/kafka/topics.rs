//! Creating the configured topics that are missing.

use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::KafkaConfig;
use super::timestamps::{read_timestamp_ranges, TimestampRanges};
use crate::{Refusal, SinkError};

/// An admin client for `config`'s cluster, with its security settings (TLS, SASL).
///
/// # Errors
/// Invalid options.
pub(super) fn admin_client(
    config: &KafkaConfig,
) -> Result<AdminClient<DefaultClientContext>, SinkError> {
    let mut admin_config = ClientConfig::new();
    admin_config.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.options {
        if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") {
            admin_config.set(key, value);
        }
    }
    admin_config.create().map_err(|e| SinkError::Config {
        setting: "kafka",
        value: config.brokers.clone(),
        reason: e.to_string(),
    })
}

/// Creates the configured topics that are missing, with `partitions` and `replication`
/// (the broker's default factor when unset). Topics that exist are left as they are, so a
/// principal without the right to create topics (ACLs) can run once they exist.
///
/// # Errors
/// The broker cannot be reached within `connect_timeout`, turns the client away, or refuses
/// to create a topic ([`SinkError::KafkaRefused`] with [`Refusal::NotAuthorized`] when ACLs
/// forbid it; the message says how to go on).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), SinkError> {
    if !config.create_topics {
        return Ok(());
    }
    ensure_topics_with(&Arc::new(admin_client(config)?), config).await
}

/// What a producing process does with the cluster before its first record: creates the missing
/// topics ([`ensure_topics`]) and reads the event topics' timestamp ranges
/// ([`TimestampRanges`]), over one admin connection.
///
/// # Errors
/// As [`ensure_topics`].
pub async fn prepare_topics(config: &KafkaConfig) -> Result<TimestampRanges, SinkError> {
    if !config.create_topics && !config.read_timestamp_limits {
        return Ok(TimestampRanges::default());
    }
    let admin = Arc::new(admin_client(config)?);
    if config.create_topics {
        ensure_topics_with(&admin, config).await?;
    }
    Ok(read_timestamp_ranges(&admin, config).await)
}

async fn ensure_topics_with(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    config: &KafkaConfig,
) -> Result<(), SinkError> {
    let wanted = [
        &config.job_topic,
        &config.execution_topic,
        &config.dlq_topic,
    ];
    let unreachable = |e: KafkaError| SinkError::KafkaUnreachable {
        brokers: config.brokers.clone(),
        timeout: config.connect_timeout,
        detail: e.to_string(),
    };
    // All topics' metadata, not the three by name: a request naming a missing topic may make
    // a broker with auto.create.topics.enable create it with its own defaults.
    // librdkafka's metadata call blocks: off the async threads.
    let metadata = {
        let (admin, timeout) = (Arc::clone(admin), config.connect_timeout);
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|source| SinkError::TaskStopped {
                what: "the metadata request",
                source,
            })?
            .map_err(unreachable)?
    };
    let missing: Vec<&String> = wanted
        .into_iter()
        .filter(|name| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == name.as_str() && t.error().is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // -1: the broker's default.replication.factor (KIP-464).
    let factor = config.replication.unwrap_or(-1);
    let topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| {
            config.topic_config.iter().fold(
                NewTopic::new(name, config.partitions, TopicReplication::Fixed(factor)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(config.connect_timeout))
        .request_timeout(Some(config.connect_timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(unreachable)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((
                topic,
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed),
            )) => {
                return Err(SinkError::KafkaRefused {
                    brokers: config.brokers.clone(),
                    refusal: Refusal::NotAuthorized,
                    detail: format!(
                        "creating topic {topic} was refused ({code}): grant this principal CREATE on it, or have an administrator create {} and set kafka.create_topics = false",
                        missing.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            Err((topic, code)) => {
                let factor = config
                    .replication
                    .map_or("the broker's default".to_owned(), |r| r.to_string());
                return Err(SinkError::TopicNotCreated {
                    topic: topic.clone(),
                    partitions: config.partitions,
                    replication: factor,
                    code,
                });
            }
        }
    }
    Ok(())
}
