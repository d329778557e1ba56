//! `KafkaTail`: a minimal Kafka consumer for tests and tools, reading every partition of a topic from its earliest offset.
//!
//! rskafka has no consumer groups, so the tail keeps its own offset per
//! partition, in memory: a new tail starts at the beginning again. It is not
//! meant for the replicas' event following, which needs committed offsets.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hub_core::error::RegistryError;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};

use super::{build_client, topic_partitions, unavailable, unavailable_msg};

/// The most bytes one fetch asks of one partition.
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;

/// How long connecting and each request beyond the caller's wait may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One record read back from the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The key (the tenant id, for the hub's events).
    pub key: Option<Vec<u8>>,
    /// The value (the envelope, for the hub's events); empty for a null value.
    pub value: Vec<u8>,
    /// The headers by name.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// The record's timestamp (millisecond precision).
    pub timestamp: DateTime<Utc>,
}

/// Reads every partition of one topic, from the earliest offset on.
pub struct KafkaTail {
    topic: String,
    /// Index = partition: its client and the next offset to read.
    partitions: Vec<(PartitionClient, i64)>,
}

impl fmt::Debug for KafkaTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offsets: Vec<i64> = self.partitions.iter().map(|(_, next)| *next).collect();
        f.debug_struct("KafkaTail")
            .field("topic", &self.topic)
            .field("next_offsets", &offsets)
            .finish()
    }
}

impl KafkaTail {
    /// Connects to `brokers` (`host:port` each) and positions itself at the
    /// earliest offset of every partition of `topic`.
    ///
    /// Returns `Unavailable` when no broker answers, or the topic does not
    /// exist.
    pub async fn connect(brokers: Vec<String>, topic: &str) -> Result<Self, RegistryError> {
        let client = build_client(&brokers, REQUEST_TIMEOUT).await?;
        let setup = async {
            let count = topic_partitions(&client, topic)
                .await?
                .ok_or_else(|| unavailable_msg(format!("Kafka topic {topic} does not exist")))?;
            let mut partitions = Vec::new();
            for partition in 0..count {
                let partition_client = client
                    .partition_client(topic, partition, UnknownTopicHandling::Retry)
                    .await
                    .map_err(unavailable)?;
                let earliest = partition_client
                    .get_offset(OffsetAt::Earliest)
                    .await
                    .map_err(unavailable)?;
                partitions.push((partition_client, earliest));
            }
            Ok::<_, RegistryError>(partitions)
        };
        let partitions = tokio::time::timeout(REQUEST_TIMEOUT, setup)
            .await
            .map_err(|_| unavailable_msg(format!("Kafka tail of {topic} not ready in time")))??;
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// The number of partitions of the topic.
    pub fn partitions(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }

    /// The records that arrived since the last poll, from every partition,
    /// waiting up to `max_wait` for one to come (all partitions are asked at
    /// once). Records are ordered by partition, then offset.
    ///
    /// Returns `Unavailable` when the broker does not answer.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<KafkaRecord>, RegistryError> {
        let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        let fetches = self.partitions.iter().map(|(client, next)| {
            let next = *next;
            async move {
                client
                    .fetch_records(next, 1..FETCH_MAX_BYTES, wait_ms)
                    .await
                    .map(|(records, _high_watermark)| (client.partition(), records))
            }
        });
        let bound = max_wait.saturating_add(REQUEST_TIMEOUT);
        let fetched = tokio::time::timeout(bound, futures_util::future::join_all(fetches))
            .await
            .map_err(|_| unavailable_msg(format!("Kafka fetch from {} timed out", self.topic)))?;

        let mut out = Vec::new();
        for (slot, result) in self.partitions.iter_mut().zip(fetched) {
            let (partition, mut records) = result.map_err(unavailable)?;
            records.sort_by_key(|r| r.offset);
            if let Some(last) = records.last() {
                slot.1 = last.offset + 1;
            }
            out.extend(records.into_iter().map(|r| KafkaRecord {
                partition,
                offset: r.offset,
                key: r.record.key,
                value: r.record.value.unwrap_or_default(),
                headers: r.record.headers,
                timestamp: r.record.timestamp,
            }));
        }
        Ok(out)
    }
}
