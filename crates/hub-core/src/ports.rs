//! Ports: the traits hub-core needs from the outside world (store, events, clock).
//!
//! Adapters live in hub-store and hub-bus; in-memory ones in [`crate::memory`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::context::ChangeContext;
use crate::domain::event::RegistryEvent;
use crate::domain::ids::{InstanceId, ServiceName, TenantId};
use crate::domain::instance::{HealthStatus, Instance, Revision};
use crate::domain::outbox::{Backlog, Delivery, Pending, Sink, SinkStatus};
use crate::domain::query::{Heartbeat, ListCursor, ListQuery};
use crate::domain::registration::Registration;
use crate::domain::summary::{ServiceSummary, StatusCounts};
use crate::error::RegistryError;

/// Result of an upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    /// The record as stored, with the revision of this change.
    pub instance: Instance,
    /// Whether the instance did not exist before.
    pub created: bool,
}

/// The instances of one service and the tenant's revision they were read at.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot {
    /// Ordered by instance id; empty if the service is unknown to the tenant.
    pub instances: Vec<Instance>,
    /// The tenant's current revision.
    pub revision: Revision,
    /// Stored instances of the service left out because they cannot be read
    /// (each logged as an error; the tenant can still deregister them).
    /// Always 0 in embedded mode.
    pub skipped: usize,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// Ordered by service name, then instance id.
    pub instances: Vec<Instance>,
    /// Present when more matching instances follow.
    pub next: Option<ListCursor>,
    /// The tenant's current revision.
    pub revision: Revision,
    /// Stored instances this page passed over because they cannot be read
    /// (each logged as an error; the tenant can still deregister them).
    /// Always 0 in embedded mode.
    pub skipped: usize,
}

/// What a removal took away.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Removed {
    /// The removed records, each carrying the revision of its removal.
    pub instances: Vec<Instance>,
    /// Stored rows removed that could not be read as instances (PostgreSQL
    /// only: rows written behind the API's back). Each got a revision and an
    /// audit row from its stored values, but no event: an event carries a
    /// valid instance.
    pub undecodable: usize,
}

/// Result of a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Renewed {
    /// The record after renewal. Its revision is new only if the status changed.
    pub instance: Instance,
    /// The status before the heartbeat.
    pub previous_status: HealthStatus,
}

/// A change the lease reaper made.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseChange {
    /// The lease ran out: the instance is now critical (new revision).
    Expired {
        /// The record after the change.
        instance: Instance,
        /// Its status before.
        previous_status: HealthStatus,
    },
    /// The lease stayed expired past `deregister_after`: the instance was
    /// removed. The record carries the revision of its removal.
    Removed(Instance),
    /// Mass-expiry protection held the tenant's removals this pass (no
    /// change was made for it; see [`crate::lease::MassExpiry`]).
    Held(crate::lease::MassExpiryHold),
}

/// The registry's source of truth.
///
/// Changing methods take the [`ChangeContext`] of the change; stores that keep
/// an audit trail record it in the same transaction as the change (lease
/// expiry records [`ChangeContext::reaper`]).
///
/// Every method is scoped to one tenant, except [`RegistryStore::expire_leases`]
/// which the reaper runs for all tenants. An implementation must never let a
/// call for tenant A read or change a record of tenant B. Every change gets the
/// next revision of its tenant. Errors: `Unavailable` when the backend cannot
/// be reached (the outcome of a write is then unknown), `Unexpected` for
/// anything else; the per-method docs name the other cases.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Inserts the instance, or replaces the tenant's record with the same
    /// (service name, instance id). A replaced record keeps its `registered_at`;
    /// status becomes passing and the lease starts at `now`.
    ///
    /// With `max_instances`, a NEW instance that would give the tenant more
    /// than that many is refused with `QuotaExceeded { limit:
    /// "max_instances", max }` and nothing is changed; replacing an existing
    /// record never is. The check is atomic with the insert: concurrent
    /// registrations of one tenant never take it past the limit.
    async fn upsert(
        &self,
        tenant: &TenantId,
        registration: Registration,
        now: DateTime<Utc>,
        context: &ChangeContext,
        max_instances: Option<u32>,
    ) -> Result<Upserted, RegistryError>;

    /// The instances of one service. An unknown service gives an empty snapshot,
    /// not an error.
    async fn service(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
    ) -> Result<ServiceSnapshot, RegistryError>;

    /// One page of the tenant's instances matching `query`.
    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListPage, RegistryError>;

    /// Removes one instance, or every instance of the service when `instance`
    /// is `None`, including stored rows that cannot be read (so a tenant can
    /// always remove what it cannot read). Returns what was removed; nothing
    /// when nothing matched (not an error).
    async fn remove(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: Option<&InstanceId>,
        context: &ChangeContext,
    ) -> Result<Removed, RegistryError>;

    /// Renews the lease of one instance at `now` with the reported status.
    /// Returns `NotFound` when the tenant has no such instance (the client must
    /// register again), `Conflict` when its stored row cannot be read (nothing
    /// is changed; the client must deregister and register it again). Only a
    /// status change takes a new revision.
    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
        context: &ChangeContext,
    ) -> Result<Renewed, RegistryError>;

    /// Applies lease expiry at `now` to every tenant, using
    /// [`Instance::lease_state`]: alive leases are untouched, expired ones turn
    /// critical (once), dead ones are removed. A heartbeat that lands between
    /// the read and the write must win: the change is conditional on the lease
    /// still being the one that was judged. A tenant whose pass fails is
    /// logged and skipped: the pass goes on for every other tenant.
    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<LeaseChange>, RegistryError>;

    /// Whether the store can serve requests (readiness). `Unavailable` if not.
    async fn check(&self) -> Result<(), RegistryError>;

    /// Every tenant that has written to the store (ids only), in id order.
    /// Callers that total across tenants visit each one through the
    /// tenant-scoped methods below.
    async fn tenant_ids(&self) -> Result<Vec<TenantId>, RegistryError>;

    /// The tenant's instances counted by status, rows that cannot be read
    /// included (by their stored status). Counts in the store, without
    /// loading the instances.
    async fn status_counts(&self, tenant: &TenantId) -> Result<StatusCounts, RegistryError>;

    /// Every service of the tenant, ordered by name: its instances by
    /// status, the newest heartbeat among them and the latest heartbeat
    /// metrics the store keeps for it (none in stores that keep none).
    async fn service_summaries(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<ServiceSummary>, RegistryError>;

    /// Tells the store that the tenant's service changed behind its back
    /// (through [`crate::lease::LeaseStore`], which the reaper uses with a
    /// lease cache). Stores that keep nothing derived ignore it; a caching
    /// decorator drops what it holds for the service.
    fn changed_elsewhere(&self, _tenant: &TenantId, _service: &ServiceName) {}

    /// What the store's own machinery has done, for operators (`/metrics`):
    /// nothing for stores without any.
    fn figures(&self) -> StoreFigures {
        StoreFigures::default()
    }
}

/// What a store reports of its machinery: the lookup cache (when lookups
/// are cached) and group commit (when writes are grouped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFigures {
    /// The lookup cache's counts and state.
    pub lookup_cache: Option<crate::cache::CacheStats>,
    /// Group commit's counts.
    pub write_batches: Option<WriteBatchStats>,
}

/// What group commit has done since the store was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBatchStats {
    /// Grouped transactions committed.
    pub batches: u64,
    /// Changes they committed.
    pub changes: u64,
    /// Changes that left their batch because a lock they needed was held
    /// elsewhere (their tenant then commits alone for a while).
    pub bypassed: u64,
}

/// Where registry events go after a change is stored (in-process watchers,
/// NATS, Kafka). Publishing must not block for long: implementations buffer
/// or drop per their documented guarantee.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Publishes the events in order. Returns `Unavailable` if the sink could
    /// not take them; the change itself is already stored. `Invalid` means
    /// the sink refused an event for good (it will never take it, however
    /// often it is sent): the outbox relay then sends the batch one event at
    /// a time and sets the refused one aside instead of retrying it.
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError>;
}

/// The transactional outbox: events a store wrote in the same transaction as
/// their change, waiting to be relayed to a bus. Implemented by stores that
/// keep one (PostgreSQL); the relay in hub-bus drains it.
///
/// The outbox holds every tenant's events; nothing tenant-facing reads it.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Opens a relay session for `sink`, on a connection of its own. At most
    /// one session per sink leads at a time, across every process sharing
    /// the store (see [`OutboxSession::lead`]).
    async fn open(&self, sink: Sink) -> Result<Box<dyn OutboxSession>, RegistryError>;

    /// Deletes up to `max` entries written before `cutoff` that every sink
    /// they were owed to has; returns how many. Undelivered entries, and
    /// entries set aside, are never pruned.
    async fn prune(&self, cutoff: DateTime<Utc>, max: u32) -> Result<u64, RegistryError>;

    /// What `sink` is still owed: for one tenant, or for all when `tenant` is `None`.
    async fn backlog(
        &self,
        sink: Sink,
        tenant: Option<&TenantId>,
    ) -> Result<Backlog, RegistryError>;
}

/// One relay's hold on the outbox of one sink.
#[async_trait]
pub trait OutboxSession: Send {
    /// Tries to become the sink's one relay; `true` once it is, for as long
    /// as the session lives. Leadership ends when the session is dropped or
    /// its connection is lost, and then another session can take it.
    async fn lead(&mut self) -> Result<bool, RegistryError>;

    /// Up to `max` entries still owed to the sink, in outbox order (which is
    /// each tenant's commit order). Only for a leading session. Each row is
    /// decoded on its own: one that is not a valid event comes back as
    /// [`Pending::Undecodable`] in its place, and the others are unaffected.
    /// An error means the outbox could not be read at all.
    async fn pending(&mut self, max: u32) -> Result<Vec<Pending>, RegistryError>;

    /// Records that the entries with these sequence numbers reached the sink.
    async fn mark(&mut self, seqs: &[i64]) -> Result<(), RegistryError>;

    /// Sets the entry `seq` aside for this sink: it is no longer pending, is
    /// kept (never pruned) with `reason` for an operator, and is counted in
    /// [`Backlog::undeliverable`]. Returns whether the sink still owed it.
    async fn set_aside(&mut self, seq: i64, reason: &str) -> Result<bool, RegistryError>;
}

/// The state of event delivery, for the dashboard.
#[async_trait]
pub trait EventStatus: std::fmt::Debug + Send + Sync + 'static {
    /// How events reach the buses.
    fn delivery(&self) -> Delivery;

    /// Every configured bus, with the outbox backlog of `tenant`'s events,
    /// or of all tenants' when `None`.
    async fn sinks(&self, tenant: Option<&TenantId>) -> Result<Vec<SinkStatus>, RegistryError>;
}

/// The time, as the registry sees it. Lease logic takes time only from here,
/// so tests drive it with a manual clock instead of sleeping.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}
