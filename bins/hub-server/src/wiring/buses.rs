//! The event buses, NATS and Kafka: their settings, connected lazily, and start-up's one attempt at each.

use std::sync::Arc;
use std::time::Duration;

use hub_bus::lazy::Lazy;
use hub_bus::{KafkaConfig, KafkaPublisher, NatsAuth, NatsConfig, NatsPublisher, SubjectPrefix};
use hub_core::ports::EventSink;
use hub_core::{RegistryError, Sink, Sinks};

use crate::settings::EventSettings;

/// The configured event buses, each connected on first use (and again,
/// with backoff, after a failed attempt), so that a bus that is down at
/// start-up only delays events. Start-up tries each once, after PostgreSQL,
/// to log how it publishes.
pub(crate) struct Buses {
    pub(crate) nats: Option<Arc<Lazy<NatsPublisher>>>,
    pub(crate) kafka: Option<Arc<Lazy<KafkaPublisher>>>,
}

impl Buses {
    pub(crate) fn sinks(&self) -> Sinks {
        let mut sinks = Sinks::NONE;
        if self.nats.is_some() {
            sinks = sinks.with(Sink::Nats);
        }
        if self.kafka.is_some() {
            sinks = sinks.with(Sink::Kafka);
        }
        sinks
    }

    pub(crate) fn publisher(&self, sink: Sink) -> Option<Arc<dyn EventSink>> {
        match sink {
            Sink::Nats => self.nats.clone().map(|p| p as Arc<dyn EventSink>),
            Sink::Kafka => self.kafka.clone().map(|p| p as Arc<dyn EventSink>),
        }
    }
}

fn nats_config(
    settings: &EventSettings,
    url: &str,
    replica_id: &str,
) -> anyhow::Result<NatsConfig> {
    let mut config = NatsConfig::new(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.auth = match (&settings.nats_token, &settings.nats_user) {
        (Some(token), _) => NatsAuth::Token(token.clone()),
        (None, Some(user)) => NatsAuth::UserPassword {
            user: user.clone(),
            password: settings
                .nats_password
                .clone()
                .unwrap_or_else(|| secrecy::SecretString::from(String::new())),
        },
        (None, None) => NatsAuth::None,
    };
    config.subject_prefix = SubjectPrefix::parse(settings.nats_subject_prefix.clone())
        .map_err(|e| anyhow::anyhow!("HUB_NATS_SUBJECT_PREFIX: {e}"))?;
    config.stream_name = settings.nats_stream.clone();
    config.stream_max_age = Duration::from_secs(settings.nats_stream_max_age_secs);
    config.connection_name = format!("central-hub {replica_id}");
    Ok(config)
}

/// The configured buses, not connected yet (no I/O here, so that start-up
/// can look at PostgreSQL first).
pub(crate) fn configure(settings: &EventSettings, replica_id: &str) -> anyhow::Result<Buses> {
    let nats = match settings
        .nats_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        None => None,
        Some(url) => {
            let config = nats_config(settings, url, replica_id)?;
            Some(Arc::new(Lazy::new("nats", move || {
                NatsPublisher::connect(config.clone())
            })))
        }
    };
    let kafka = match settings
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        None => None,
        Some(brokers) => {
            let config = KafkaConfig {
                topic: settings.kafka_topic.clone(),
                partitions: settings.kafka_partitions,
                ..KafkaConfig::new(
                    brokers
                        .split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            };
            Some(Arc::new(Lazy::new("kafka", move || {
                KafkaPublisher::connect(config.clone())
            })))
        }
    };
    Ok(Buses { nats, kafka })
}

/// One connection attempt per configured bus, once PostgreSQL is known to
/// be fine. An unreachable bus only delays events: [`Lazy`] logs it once
/// and retries quietly with backoff. An invalid setting (a malformed broker
/// address or topic) will not fix itself, so it stops start-up.
pub(crate) async fn first_attempts(buses: &Buses) -> anyhow::Result<()> {
    let attempts = [
        (
            "nats",
            match &buses.nats {
                Some(nats) => nats.get().await.err(),
                None => None,
            },
        ),
        (
            "kafka",
            match &buses.kafka {
                Some(kafka) => kafka.get().await.err(),
                None => None,
            },
        ),
    ];
    for (sink, error) in attempts {
        if let Some(RegistryError::Invalid(error)) = error {
            anyhow::bail!("the {sink} settings are invalid: {error}")
        }
    }
    Ok(())
}
