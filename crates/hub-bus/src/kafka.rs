//! `KafkaPublisher`: hub-core's `EventSink` on Kafka (rskafka), one record per event keyed by tenant, acked by the broker.
//!
//! Every event becomes one record of the topic (`hub.registry.events` by
//! default): key = the tenant id, value = the event's envelope
//! (`hub_core::domain::envelope::to_json`), timestamp = when the change
//! happened, and the headers `event-id`, `event-type` and, for changes made
//! through a known replica, `hub-origin`.
//!
//! The partition of a record is the one Kafka's own default partitioner picks
//! for its key (`(murmur2(key) & 0x7fffffff) % partitions`, see
//! [`partition_for`]), so every event of a tenant lands on one partition, in
//! order, exactly where a Java or librdkafka producer keyed by tenant would
//! put it. The partition count is read once at connect: a topic that gains
//! partitions later is only used in full after a restart of the publisher
//! (which then moves tenants, as it would for any keyed Kafka producer).
//!
//! rskafka's lingering `BatchProducer` is not used: the caller's batch is the
//! batch. One `publish` sends one produce request per partition it touches
//! (those run concurrently) and returns Ok only once the broker acknowledged
//! every record. A failed call
//! drops the partition's connection so that the next call starts afresh (a
//! restarted broker is picked up), and a topic that vanished (a broker with
//! memory storage restarted, or an operator deleted it) is created again with
//! the partition count in use.

mod tail;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use hub_core::domain::envelope;
use hub_core::domain::event::RegistryEvent;
use hub_core::error::{RegistryError, ValidationError};
use hub_core::ports::EventSink;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::Mutex;

pub use tail::{KafkaRecord, KafkaTail};

/// The topic used when none is configured.
pub const DEFAULT_TOPIC: &str = "hub.registry.events";

/// Header carrying the event id (a UUID; consumers dedupe on it).
pub const HEADER_EVENT_ID: &str = "event-id";
/// Header carrying the full event type, e.g. `service.registered`.
pub const HEADER_EVENT_TYPE: &str = "event-type";
/// Header carrying the replica a change was made through, when known.
pub const HEADER_ORIGIN: &str = "hub-origin";

/// The client id the brokers see in their logs and quotas.
const CLIENT_ID: &str = "central-hub";

/// How long to wait between two looks at a topic that was just created and
/// that the broker's metadata does not show yet.
const METADATA_POLL: Duration = Duration::from_millis(50);

/// Settings of the Kafka publisher. Build it with [`KafkaConfig::new`] and
/// override fields as needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` each (plain TCP).
    pub brokers: Vec<String>,
    /// The topic of the events (`hub.registry.events`).
    pub topic: String,
    /// Partitions of the topic when this process creates it (6). An existing
    /// topic keeps its own count, and the publisher uses that one.
    pub partitions: i32,
    /// Replication factor of the topic when this process creates it (1).
    pub replication_factor: i16,
    /// Bound on connecting and reading the cluster's metadata (2 s), so that
    /// start-up reports an unreachable broker instead of hanging.
    pub connect_timeout: Duration,
    /// Bound on creating the topic and on each `publish`, acks included
    /// (5 s): `publish` must not block the caller for long.
    pub request_timeout: Duration,
}

impl KafkaConfig {
    /// Defaults for the bootstrap `brokers` (`host:port` each).
    pub fn new(brokers: Vec<String>) -> Self {
        Self {
            brokers,
            topic: DEFAULT_TOPIC.to_owned(),
            partitions: 6,
            replication_factor: 1,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.brokers.iter().all(|b| b.trim().is_empty()) {
            return Err(ValidationError::new(
                "KAFKA_BROKERS",
                "must name at least one broker",
            ));
        }
        for broker in self
            .brokers
            .iter()
            .map(|b| b.trim())
            .filter(|b| !b.is_empty())
        {
            let port = broker
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(port))) if !host.is_empty() && port > 0) {
                return Err(ValidationError::new(
                    "KAFKA_BROKERS",
                    format!("{broker:?} is not host:port"),
                ));
            }
        }
        // Kafka's own rule for topic names.
        if self.topic.is_empty()
            || self.topic.len() > 249
            || !self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ValidationError::new(
                "kafka.topic",
                "must be 1-249 characters of [A-Za-z0-9._-]",
            ));
        }
        if self.partitions < 1 {
            return Err(ValidationError::new(
                "kafka.partitions",
                "must be at least 1",
            ));
        }
        // -1 asks the broker for its default (KIP-464); 0 is never valid.
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(ValidationError::new(
                "kafka.replication_factor",
                "must be at least 1, or -1 for the broker's default",
            ));
        }
        Ok(())
    }
}

/// Kafka's default partition for a record with key `key` over `partitions`
/// partitions: `(murmur2(key) & 0x7fffffff) % partitions`, as the Java
/// client's `BuiltInPartitioner.partitionForKey` and librdkafka's
/// `murmur2_random` partitioner compute it. `partitions` must be positive;
/// anything else gives partition 0.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    if partitions < 1 {
        return 0;
    }
    // The mask makes the hash non-negative, so the remainder is in range.
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`,
/// reading the input as little-endian 4-byte words.
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java hashes `int length`; keys longer than 2 GiB do not occur here, and
    // the truncation is what Java would see for them anyway.
    let mut h = SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // The remaining 0 to 3 bytes, as Java's fall-through switch does them.
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    // Reinterpret the bits as Java's signed int.
    h as i32
}

use crate::error::kafka_produce;
pub(crate) use crate::error::{unavailable, unavailable_msg};

/// Whether the broker answered that the topic or partition does not exist.
fn is_unknown_topic(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::ServerError {
            protocol_error: ProtocolError::UnknownTopicOrPartition,
            ..
        }
    )
}

/// One plain TCP connect to each broker in turn, until one answers. rskafka
/// retries a refused connection with backoff until its deadline, logging
/// every attempt: a broker that is simply down would cost the whole
/// deadline and a screenful of lines per attempt. This says it at once, in
/// one error.
async fn probe(brokers: &[String], deadline: Duration) -> Result<(), RegistryError> {
    let mut failures = Vec::with_capacity(brokers.len());
    for broker in brokers {
        match tokio::time::timeout(deadline, tokio::net::TcpStream::connect(broker.as_str())).await
        {
            Ok(Ok(_connection)) => return Ok(()),
            Ok(Err(error)) => failures.push(format!("{broker}: {error}")),
            Err(_) => failures.push(format!("{broker}: no answer within {deadline:?}")),
        }
    }
    Err(unavailable_msg(format!(
        "no Kafka broker reachable ({})",
        failures.join("; ")
    )))
}

/// A client of the cluster, whose own retries (rskafka retries broken
/// connections with backoff, forever by default) stop after `deadline`.
/// Callers bound the whole operation with a timeout as well. Fails at once
/// when no broker accepts a TCP connection (see [`probe`]).
pub(crate) async fn build_client(
    brokers: &[String],
    deadline: Duration,
) -> Result<Client, RegistryError> {
    let brokers: Vec<String> = brokers
        .iter()
        .map(|b| b.trim())
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    let listed = brokers.join(",");
    probe(&brokers, deadline).await?;
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(deadline),
    };
    let build = ClientBuilder::new(brokers)
        .client_id(CLIENT_ID)
        .backoff_config(backoff)
        .build();
    tokio::time::timeout(deadline, build)
        .await
        .map_err(|_| {
            unavailable_msg(format!(
                "connecting to Kafka at {listed} timed out after {deadline:?}"
            ))
        })?
        .map_err(unavailable)
}

/// The partition count of `topic`, or `None` if the cluster does not know it.
pub(crate) async fn topic_partitions(
    client: &Client,
    topic: &str,
) -> Result<Option<i32>, RegistryError> {
    let topics = client.list_topics().await.map_err(unavailable)?;
    Ok(topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
}

/// Creates `topic`, treating "it already exists" (another process won the
/// race) as success.
async fn create_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    timeout: Duration,
) -> Result<(), RegistryError> {
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let controller = client.controller_client().map_err(unavailable)?;
    match controller
        .create_topic(topic, partitions, replication_factor, timeout_ms)
        .await
    {
        Ok(()) => {
            tracing::info!(topic, partitions, "created Kafka topic {topic}");
            Ok(())
        }
        Err(KafkaError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        }) => Ok(()),
        Err(err) => Err(unavailable(err)),
    }
}

/// Publishes registry events to Kafka.
///
/// Holds one rskafka client (its connections are shared) and one cached
/// partition client per partition. Each cache slot sits behind its own tokio
/// mutex, held for the whole produce request: two concurrent `publish` calls
/// thus reach a partition one after the other, and a call that returned
/// before another began is ahead of it in the partition.
pub struct KafkaPublisher {
    client: Client,
    topic: String,
    partitions: i32,
    replication_factor: i16,
    request_timeout: Duration,
    /// Index = partition. `None` until first use, and again after a failure,
    /// so that the next call builds a fresh partition client.
    slots: Vec<Mutex<Option<PartitionClient>>>,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Connects, creates the topic if it is missing, and reads its partition
    /// count (an existing topic keeps its own).
    ///
    /// Returns `Invalid` for an empty broker list, a broker that is not
    /// `host:port`, a topic name Kafka would refuse, or a partition
    /// count or replication factor out of range; `Unavailable` when no broker
    /// answers within `connect_timeout`, or the topic cannot be created or
    /// seen within `request_timeout`.
    pub async fn connect(config: KafkaConfig) -> Result<Self, RegistryError> {
        config.validate()?;
        let client = build_client(&config.brokers, config.connect_timeout).await?;
        let partitions =
            tokio::time::timeout(config.request_timeout, Self::ensure_topic(&client, &config))
                .await
                .map_err(|_| {
                    unavailable_msg(format!(
                        "Kafka topic {} not ready within {:?}",
                        config.topic, config.request_timeout
                    ))
                })??;
        if partitions != config.partitions {
            tracing::info!(
                topic = %config.topic,
                partitions,
                configured = config.partitions,
                "Kafka topic {} exists with {partitions} partitions; keeping them",
                config.topic
            );
        }
        tracing::info!(
            topic = %config.topic,
            partitions,
            "Kafka events to topic {} ({partitions} partitions, keyed by tenant)",
            config.topic
        );
        let slots = (0..partitions).map(|_| Mutex::new(None)).collect();
        Ok(Self {
            client,
            topic: config.topic,
            partitions,
            replication_factor: config.replication_factor,
            request_timeout: config.request_timeout,
            slots,
        })
    }

    /// The topic's partition count, creating the topic first if needed.
    async fn ensure_topic(client: &Client, config: &KafkaConfig) -> Result<i32, RegistryError> {
        if let Some(partitions) = topic_partitions(client, &config.topic).await? {
            return Self::usable(&config.topic, partitions);
        }
        create_topic(
            client,
            &config.topic,
            config.partitions,
            config.replication_factor,
            config.request_timeout,
        )
        .await?;
        // The metadata may lag behind the creation for a moment; the caller's
        // timeout bounds this loop.
        loop {
            if let Some(partitions) = topic_partitions(client, &config.topic).await? {
                return Self::usable(&config.topic, partitions);
            }
            tokio::time::sleep(METADATA_POLL).await;
        }
    }

    fn usable(topic: &str, partitions: i32) -> Result<i32, RegistryError> {
        if partitions < 1 {
            return Err(unavailable_msg(format!(
                "Kafka topic {topic} has no partitions"
            )));
        }
        Ok(partitions)
    }

    /// The topic's partition count, as read at connect.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The topic the events go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The monitor's check: a metadata request (the topic list) answered
    /// by a broker. The caller bounds it with a timeout: rskafka retries a
    /// broken connection by itself.
    pub async fn check(&self) -> Result<(), RegistryError> {
        self.client.list_topics().await.map_err(unavailable)?;
        Ok(())
    }

    /// The record of one event.
    fn record(event: &RegistryEvent) -> Record {
        let mut headers = BTreeMap::new();
        headers.insert(HEADER_EVENT_ID.to_owned(), event.id().as_bytes().to_vec());
        headers.insert(
            HEADER_EVENT_TYPE.to_owned(),
            event.kind().as_str().as_bytes().to_vec(),
        );
        if let Some(origin) = event.origin() {
            headers.insert(HEADER_ORIGIN.to_owned(), origin.as_bytes().to_vec());
        }
        // Kafka keeps milliseconds. rskafka stores each record's timestamp as
        // the difference to the batch's first one, truncating that Duration,
        // so sub-millisecond parts could make a record a millisecond early:
        // cut them off here and every record keeps its own millisecond.
        let occurred_at = event.occurred_at();
        let timestamp =
            DateTime::from_timestamp_millis(occurred_at.timestamp_millis()).unwrap_or(occurred_at);
        Record {
            key: Some(event.tenant_id().as_str().as_bytes().to_vec()),
            value: Some(envelope::to_json(event)),
            headers,
            timestamp,
        }
    }

    /// The records of `events` grouped by partition, each group in the order
    /// of `events`.
    fn group(&self, events: &[RegistryEvent]) -> BTreeMap<i32, Vec<Record>> {
        let mut groups: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for event in events {
            let partition = partition_for(event.tenant_id().as_str().as_bytes(), self.partitions);
            groups
                .entry(partition)
                .or_default()
                .push(Self::record(event));
        }
        groups
    }

    /// Sends `records` to `partition` in one produce request and waits for
    /// the ack. The slot's client is taken out for the request and put back
    /// only on success: after an error, or when the caller's timeout drops
    /// this future, the next call connects afresh.
    async fn produce(&self, partition: i32, records: Vec<Record>) -> Result<(), RegistryError> {
        let slot = usize::try_from(partition)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or_else(|| {
                unavailable_msg(format!("no partition {partition} in {}", self.topic))
            })?;
        let mut slot = slot.lock().await;
        let mut recreated = false;
        loop {
            let client = match slot.take() {
                Some(client) => client,
                None => {
                    // rskafka's metadata request for one topic allows the
                    // broker to auto-create it (Kafka's and Tansu's default),
                    // which would give the topic the broker's partition count
                    // rather than ours. Looking at the list of all topics
                    // first, which creates nothing, avoids that.
                    if !recreated && topic_partitions(&self.client, &self.topic).await?.is_none() {
                        self.topic_vanished(partition, &mut recreated).await?;
                    }
                    match self
                        .client
                        .partition_client(
                            self.topic.as_str(),
                            partition,
                            UnknownTopicHandling::Error,
                        )
                        .await
                    {
                        Ok(client) => client,
                        Err(err) if is_unknown_topic(&err) => {
                            self.topic_vanished(partition, &mut recreated).await?;
                            continue;
                        }
                        Err(err) => return Err(unavailable(err)),
                    }
                }
            };
            match client
                .produce(records.clone(), Compression::NoCompression)
                .await
            {
                Ok(_offsets) => {
                    *slot = Some(client);
                    return Ok(());
                }
                Err(err) if is_unknown_topic(&err) => {
                    self.topic_vanished(partition, &mut recreated).await?;
                }
                // The partition's connection is fine after a refusal, but
                // dropping it costs one reconnect and keeps this path simple.
                Err(err) => return Err(kafka_produce(err)),
            }
        }
    }

    /// The broker does not know the topic (any more): create it again once
    /// per call, then give the metadata a moment to catch up. The caller's
    /// timeout bounds the waiting, for example when someone re-created the
    /// topic with fewer partitions than this publisher uses.
    async fn topic_vanished(
        &self,
        partition: i32,
        recreated: &mut bool,
    ) -> Result<(), RegistryError> {
        if *recreated {
            tokio::time::sleep(METADATA_POLL).await;
            return Ok(());
        }
        tracing::warn!(
            topic = %self.topic,
            partition,
            "Kafka topic {} or its partition {partition} is unknown to the broker; creating it again",
            self.topic
        );
        create_topic(
            &self.client,
            &self.topic,
            self.partitions,
            self.replication_factor,
            self.request_timeout,
        )
        .await?;
        *recreated = true;
        Ok(())
    }

    async fn publish_all(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        let requests = self
            .group(events)
            .into_iter()
            .map(|(partition, records)| self.produce(partition, records));
        // All requests run to their end (rather than stopping at the first
        // error), so that as many events as possible are stored before the
        // caller retries the batch.
        futures_util::future::join_all(requests)
            .await
            .into_iter()
            .collect()
    }
}

#[async_trait]
impl EventSink for KafkaPublisher {
    /// Publishes the events: one produce request per partition touched, the
    /// requests concurrent, each partition's records in the order given.
    /// Ok means the broker acknowledged every record. `Invalid` means the
    /// broker refused a partition's records for good (too large, or an
    /// invalid record; see `error.rs`). On `Unavailable` some
    /// partitions may have stored their records: a retry of the batch then
    /// repeats them, and consumers drop the repeats by `event-id`.
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        if events.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(self.request_timeout, self.publish_all(events))
            .await
            .map_err(|_| {
                unavailable_msg(format!(
                    "Kafka publish to {} not acknowledged within {:?}",
                    self.topic, self.request_timeout
                ))
            })?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`), then librdkafka's
    /// (`rdmurmur2.c`), which cover every tail length, and the empty key.
    const VECTORS: [(&[u8], i32); 13] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
        (b"kafka", 0xd067_cf64_u32 as i32),
        (b"giberish123456789", 0x8f55_2b0c_u32 as i32),
        (b"1234", 0x9fc9_7b14_u32 as i32),
        (b"234", 0xe7c0_09ca_u32 as i32),
        (b"34", 0x8739_30da_u32 as i32),
        (b"4", 0x5a4b_5ca1_u32 as i32),
        (b"", 275_646_681),
    ];

    #[test]
    fn murmur2_matches_kafka_and_librdkafka() {
        for (input, expected) in VECTORS {
            assert_eq!(
                murmur2(input),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partition_is_the_positive_hash_modulo_the_count() {
        for (input, hash) in VECTORS {
            for partitions in [1, 3, 6, 7, 12, 100] {
                let expected = (hash & 0x7fff_ffff) % partitions;
                assert_eq!(partition_for(input, partitions), expected);
            }
        }
        // Worked by hand: foobar's positive hash 1357151166 is 6 * 226191861.
        assert_eq!(partition_for(b"foobar", 6), 0);
        assert_eq!(partition_for(b"a-little-bit-longer-string", 6), 5);
        assert_eq!(partition_for(b"acme", 6), 0);
        assert_eq!(partition_for(b"globex", 6), 1);
        assert_eq!(partition_for(b"anything", 0), 0);
        assert_eq!(partition_for(b"anything", -3), 0);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = KafkaConfig::new(vec!["127.0.0.1:9092".to_owned()]);
        assert_eq!(config.topic, "hub.registry.events");
        assert_eq!(config.partitions, 6);
        assert_eq!(config.replication_factor, 1);
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert!(config.validate().is_ok());
        let printed = format!("{config:?}");
        assert!(printed.contains("127.0.0.1:9092"), "{printed}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let good = KafkaConfig::new(vec!["k:9092".to_owned()]);
        type Spoil = fn(&mut KafkaConfig);
        let cases: [(&str, Spoil); 10] = [
            ("KAFKA_BROKERS", |c| c.brokers = vec![" ".to_owned()]),
            ("KAFKA_BROKERS", |c| c.brokers = vec!["kafka".to_owned()]),
            ("KAFKA_BROKERS", |c| c.brokers = vec!["kafka:0".to_owned()]),
            ("KAFKA_BROKERS", |c| c.brokers = vec![":9092".to_owned()]),
            ("KAFKA_BROKERS", |c| c.brokers.push("k:99999".to_owned())),
            ("kafka.topic", |c| c.topic.clear()),
            ("kafka.topic", |c| c.topic = "hub/events".to_owned()),
            ("kafka.partitions", |c| c.partitions = 0),
            ("kafka.replication_factor", |c| c.replication_factor = 0),
            ("kafka.replication_factor", |c| c.replication_factor = -2),
        ];
        for (field, spoil) in cases {
            let mut config = good.clone();
            spoil(&mut config);
            assert_eq!(config.validate().unwrap_err().field(), field);
        }
        let mut default_rf = good;
        default_rf.replication_factor = -1;
        assert!(default_rf.validate().is_ok());
    }
}
