//! Outbox vocabulary: the buses events are relayed to, a pending outbox entry, and a sink's backlog.

use std::fmt;

use chrono::{DateTime, Utc};

use super::event::RegistryEvent;

/// A bus the outbox relays events to. Each has one bit in an outbox row's
/// set of sinks still owed the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sink {
    /// NATS (JetStream when available).
    Nats,
    /// Kafka.
    Kafka,
}

impl Sink {
    /// Every sink, in bit order.
    pub const ALL: [Sink; 2] = [Sink::Nats, Sink::Kafka];

    /// The sink's bit in a [`Sinks`] set (and its number in the outbox).
    pub fn bit(self) -> u8 {
        match self {
            Sink::Nats => 1,
            Sink::Kafka => 2,
        }
    }

    /// The sink's name in logs, metrics and locks: `nats` or `kafka`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Nats => "nats",
            Sink::Kafka => "kafka",
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of sinks: those configured, or those an outbox row still owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sinks(u8);

impl Sinks {
    /// No sink.
    pub const NONE: Sinks = Sinks(0);

    /// The set with `sink` added.
    pub fn with(self, sink: Sink) -> Self {
        Sinks(self.0 | sink.bit())
    }

    /// Whether `sink` is in the set.
    pub fn contains(self, sink: Sink) -> bool {
        self.0 & sink.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as bits (see [`Sink::bit`]).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The sinks in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Sink> {
        Sink::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Sink> for Sinks {
    fn from_iter<I: IntoIterator<Item = Sink>>(iter: I) -> Self {
        iter.into_iter().fold(Sinks::NONE, Sinks::with)
    }
}

/// One event the outbox still owes a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The outbox's own sequence number: the relay publishes in this order,
    /// which is the commit order of each tenant's changes.
    pub seq: i64,
    /// The event, with the id it keeps on every delivery (consumers dedupe on it).
    pub event: RegistryEvent,
}

/// An outbox row the relay read but could not rebuild into an event (a
/// payload of the wrong shape, a value out of range): it can never be
/// delivered as it is, so the relay sets it aside instead of retrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// The row's sequence number.
    pub seq: i64,
    /// The tenant the row names, as stored (for the log).
    pub tenant: String,
    /// Why it could not be decoded.
    pub cause: String,
}

/// One row the outbox still owes a sink, as the relay reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// An event to publish.
    Event(OutboxEntry),
    /// A row that is not a valid event; it is set aside, never published.
    Undecodable(Undecodable),
}

impl Pending {
    /// The row's sequence number.
    pub fn seq(&self) -> i64 {
        match self {
            Pending::Event(entry) => entry.seq,
            Pending::Undecodable(row) => row.seq,
        }
    }
}

/// What a sink is still owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events not yet delivered.
    pub pending: u64,
    /// When the oldest of them was written, if any.
    pub oldest: Option<DateTime<Utc>>,
    /// Events set aside as undeliverable (kept for an operator, never
    /// published nor pruned).
    pub undeliverable: u64,
}

/// How this replica gets events to the buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No external bus: in-process watchers only.
    InProcess,
    /// Through the PostgreSQL outbox: at least once, nothing lost.
    Outbox,
    /// Embedded mode: a bounded queue per bus, lost on restart or overflow.
    BestEffort,
}

impl Delivery {
    /// `in_process`, `outbox` or `best_effort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::InProcess => "in_process",
            Delivery::Outbox => "outbox",
            Delivery::BestEffort => "best_effort",
        }
    }
}

/// One bus as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// Which bus.
    pub sink: Sink,
    /// Events this replica delivered to it since start.
    pub published: u64,
    /// Failed delivery attempts since start.
    pub failures: u64,
    /// Outbox mode: whether this replica's relay is the one publishing.
    pub relaying: Option<bool>,
    /// Best-effort mode: events dropped because the queue was full.
    pub dropped: Option<u64>,
    /// Outbox mode: what the bus is still owed (all replicas' events).
    pub backlog: Option<Backlog>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_what_was_added() {
        let both: Sinks = [Sink::Nats, Sink::Kafka].into_iter().collect();
        assert_eq!(both.bits(), 3);
        assert!(both.contains(Sink::Kafka));
        let nats = Sinks::NONE.with(Sink::Nats);
        assert!(nats.contains(Sink::Nats) && !nats.contains(Sink::Kafka));
        assert_eq!(nats.iter().collect::<Vec<_>>(), [Sink::Nats]);
        assert!(Sinks::NONE.is_empty() && !nats.is_empty());
        assert_eq!(Sink::Nats.bit() & Sink::Kafka.bit(), 0, "bits overlap");
    }
}
