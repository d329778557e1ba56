//! The event buses of the bench: whether NATS and a Kafka-compatible broker answer, clients for both, and the per-server names (subject prefix, stream, topic) deleted at the end.

use std::time::Duration;

use anyhow::Context;
use rskafka::BackoffConfig;
use rskafka::client::{Client as KafkaClient, ClientBuilder};

use crate::bench::console::{progress, report};
use crate::bench::names::random_hex;
use crate::bench::options::Options;
/// The brokers of the event phases (those of `cargo xtask test`).
pub(super) const NATS_URL: &str = "nats://127.0.0.1:4222";
pub(super) const KAFKA_BROKER: &str = "127.0.0.1:9092";
/// `HUB_KAFKA_PARTITIONS` of the server, which creates the topic.
pub(super) const KAFKA_PARTITIONS: i32 = 6;
/// Bound on connecting to a broker and on each request beyond a fetch's wait.
pub(super) const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The brokers, checked once before the runs. Holds the Kafka-compatible
/// broker this bench started, if it started one, until the end.
#[derive(Debug)]
pub(crate) struct Brokers {
    pub(super) _kafka: crate::kafka::Broker,
}

/// Whether the event phases can run: `None` means they do not, and the report
/// says why.
pub(crate) async fn brokers(options: &Options) -> Option<Brokers> {
    if !options.events {
        report("events: skipped (--skip-events)\n");
        return None;
    }
    if let Err(error) = nats_connect().await {
        report(&format!(
            "events: SKIPPED, NATS on {NATS_URL} does not answer: {error:#}\n"
        ));
        return None;
    }
    let kafka = match tokio::task::spawn_blocking(crate::kafka::ensure).await {
        Ok(Ok(kafka)) => kafka,
        Ok(Err(error)) => {
            report(&format!(
                "events: SKIPPED, no Kafka-compatible broker on {KAFKA_BROKER}: {error:#}\n"
            ));
            return None;
        }
        Err(error) => {
            report(&format!(
                "events: SKIPPED, looking for a Kafka-compatible broker failed: {error}\n"
            ));
            return None;
        }
    };
    report(&format!(
        "events: NATS {NATS_URL}, Kafka {KAFKA_BROKER} ({KAFKA_PARTITIONS} partitions); a subject prefix, \
         stream and topic per run; latency phase {} registrations/s for {} s, open loop over {} connections\n",
        options.event_rate,
        options.event_duration.as_secs(),
        options.connections,
    ));
    Some(Brokers { _kafka: kafka })
}

pub(super) async fn nats_connect() -> anyhow::Result<async_nats::Client> {
    let connect = async_nats::ConnectOptions::new()
        .name("hub-bench")
        .connection_timeout(Duration::from_secs(2))
        .connect(NATS_URL);
    tokio::time::timeout(BROKER_TIMEOUT, connect)
        .await
        .context("timed out")?
        .context("connecting")
}

pub(super) async fn kafka_client() -> anyhow::Result<KafkaClient> {
    // rskafka retries without end by default; a bench must not hang.
    let backoff = BackoffConfig {
        deadline: Some(Duration::from_secs(5)),
        ..BackoffConfig::default()
    };
    let build = ClientBuilder::new(vec![KAFKA_BROKER.to_owned()])
        .client_id("hub-bench")
        .backoff_config(backoff)
        .build();
    tokio::time::timeout(BROKER_TIMEOUT, build)
        .await
        .context("timed out")?
        .with_context(|| format!("connecting to Kafka on {KAFKA_BROKER}"))
}

/// The bus names of one server: deleted (the stream and the topic) when
/// dropped, on the error paths too. Drop it after the server, or the server
/// would create them again.
#[derive(Debug)]
pub(super) struct Buses {
    pub(super) prefix: String,
    pub(super) stream: String,
    pub(super) topic: String,
}

impl Buses {
    pub(super) fn new() -> anyhow::Result<Self> {
        let id = random_hex(6)?;
        Ok(Self {
            prefix: format!("hubbench{id}"),
            stream: format!("HUBBENCH_{id}"),
            topic: format!("hubbench.{id}"),
        })
    }

    pub(super) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", NATS_URL.to_owned()),
            ("HUB_NATS_SUBJECT_PREFIX", self.prefix.clone()),
            ("HUB_NATS_STREAM", self.stream.clone()),
            // Only in case the deletion fails: the stream then goes by itself.
            ("HUB_NATS_STREAM_MAX_AGE_SECS", "3600".to_owned()),
            ("KAFKA_BROKERS", KAFKA_BROKER.to_owned()),
            ("HUB_KAFKA_TOPIC", self.topic.clone()),
            ("HUB_KAFKA_PARTITIONS", KAFKA_PARTITIONS.to_string()),
        ]
    }
}

impl Drop for Buses {
    fn drop(&mut self) {
        // As for the scratch database: Drop cannot await, and the calling
        // thread belongs to the load generator's runtime.
        let stream = self.stream.clone();
        let topic = self.topic.clone();
        let outcome = std::thread::spawn(move || -> Vec<String> {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return vec![format!("no runtime for the cleanup: {error}")],
            };
            runtime.block_on(async {
                let mut problems = Vec::new();
                let nats = async {
                    let client = nats_connect().await?;
                    async_nats::jetstream::new(client)
                        .delete_stream(&stream)
                        .await
                        .context("deleting")?;
                    anyhow::Ok(())
                };
                if let Err(error) = nats.await {
                    problems.push(format!("the NATS stream {stream} ({error:#})"));
                }
                let kafka = async {
                    let client = kafka_client().await?;
                    let controller = client.controller_client().context("controller")?;
                    tokio::time::timeout(BROKER_TIMEOUT, controller.delete_topic(&topic, 5_000))
                        .await
                        .context("timed out")?
                        .context("deleting")?;
                    anyhow::Ok(())
                };
                if let Err(error) = kafka.await {
                    problems.push(format!("the Kafka topic {topic} ({error:#})"));
                }
                problems
            })
        })
        .join()
        .unwrap_or_else(|_| vec!["the cleanup thread panicked".to_owned()]);
        for problem in outcome {
            progress(&format!("warning: could not delete {problem}"));
        }
    }
}
