//! The watch hub: per tenant, the latest revision, a bounded ring of recent events for replay, subscribers with bounded buffers (a slow one is cut off as lagged), waiters for blocking queries, and the limits on open watches.
//!
//! Events reach the hub in one of two ways. In embedded mode the registry's
//! event sink hands every event to [`WatchHub::publish`]; two requests may
//! publish out of revision order, so events wait in a pending map until the
//! revision before them arrived. In PostgreSQL mode a feed task reads each
//! tenant's changes from the store's [`ChangeLog`] whenever the database
//! notifies a change ([`WatchHub::changed`] marks the tenant, the task takes
//! the marked tenants with [`WatchHub::dirty`]) and hands them over with
//! [`WatchHub::deliver`]; a gap in revisions is then always filled from the
//! database, never from a message bus.
//!
//! Locks: one `std::sync::Mutex` per tenant feed, held only to append events
//! and to hand them to subscribers (`try_send`, never an await), and one for
//! the map of feeds and one for the watch counts. No lock is held across an
//! await.

mod limits;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, watch};

use crate::domain::envelope;
use crate::domain::event::{EventKind, RegistryEvent};
use crate::domain::ids::{ServiceName, TenantId};
use crate::domain::instance::Revision;
use crate::error::RegistryError;

pub use limits::{WatchLimit, WatchPermit};

/// How long an embedded feed waits for a missing revision before it goes on
/// without it. An event goes missing only when a request is cancelled between
/// storing its change and publishing it; waiting longer would hold up every
/// watcher of the tenant for an event that will never come.
pub const GAP_GRACE: Duration = Duration::from_secs(1);

/// The hub's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// Events kept per tenant for replay (`HUB_WATCH_HISTORY`).
    pub history: usize,
    /// Revisions buffered per subscriber before it is cut off as lagged
    /// (`HUB_WATCH_BUFFER`).
    pub buffer: usize,
    /// Open watches per tenant (`HUB_WATCH_MAX_PER_TENANT`).
    pub max_per_tenant: u32,
    /// Open watches per API key (`HUB_WATCH_MAX_PER_KEY`).
    pub max_per_key: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            history: 64,
            buffer: 1024,
            max_per_tenant: 1000,
            max_per_key: 1000,
        }
    }
}

/// A tenant's changes after a revision, read from a store that keeps them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChangesSince {
    /// The events, in revision order.
    pub events: Vec<RegistryEvent>,
    /// Every event with a revision in `(after, through]` is in `events`.
    pub through: Revision,
    /// The oldest revision a replay can start after: asked for an earlier
    /// one, `events` may miss changes that are no longer kept.
    pub oldest_retained: Revision,
    /// Whether the read stopped at `max` and more changes may follow.
    pub more: bool,
}

/// The store's history of changes, for replay and for the PostgreSQL feed.
///
/// Implementations read only the tenant's own changes (PostgreSQL: in the
/// tenant's scoped transaction, under row-level security). `Unavailable`
/// when the store cannot be reached.
#[async_trait]
pub trait ChangeLog: Send + Sync + 'static {
    /// Up to `max` events after `after`, in revision order; a revision's
    /// events are never split between two answers.
    async fn changes_since(
        &self,
        tenant: &TenantId,
        after: Revision,
        max: u32,
    ) -> Result<ChangesSince, RegistryError>;

    /// The tenant's current revision and its oldest retained one.
    async fn head(&self, tenant: &TenantId) -> Result<(Revision, Revision), RegistryError>;
}

/// One event as watchers get it: its envelope, already serialized once for
/// every stream.
#[derive(Debug, PartialEq, Eq)]
pub struct WatchEvent {
    revision: u64,
    kind: EventKind,
    service: ServiceName,
    envelope: Arc<str>,
}

impl WatchEvent {
    /// The event's envelope (the bytes NATS and Kafka carry) and what watchers filter on.
    pub fn new(event: &RegistryEvent) -> Self {
        let json = envelope::to_json(event);
        Self {
            revision: event.revision().get(),
            kind: event.kind(),
            service: event.service_name().clone(),
            envelope: String::from_utf8_lossy(&json).into(),
        }
    }

    /// The tenant revision of the change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// What happened.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The service it happened to.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The envelope JSON (one line).
    pub fn envelope(&self) -> &str {
        &self.envelope
    }
}

/// The events of one revision (usually one), handed to subscribers together
/// so that a stream can put the revision's id after its last event.
pub type Group = Arc<[Arc<WatchEvent>]>;

/// Which events a watcher wants: empty lists mean every service, every type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only these services.
    pub services: Vec<ServiceName>,
    /// Only these types.
    pub kinds: Vec<EventKind>,
}

impl WatchFilter {
    /// Whether the watcher wants `event`.
    pub fn matches(&self, event: &WatchEvent) -> bool {
        (self.services.is_empty() || self.services.contains(&event.service))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }

    /// Whether the watcher wants this service's instances in a snapshot.
    pub fn wants_service(&self, service: &ServiceName) -> bool {
        self.services.is_empty() || self.services.contains(service)
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From now: the caller sends a snapshot, then live events.
    Now,
    /// After this revision: replay, then live events.
    After(Revision),
}

/// Why a replay could not start where it was asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The revision asked for.
    pub requested: Revision,
    /// The oldest one the hub could have replayed after.
    pub oldest_retained: Revision,
}

/// An open subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    /// Events to send first (replay), grouped by revision.
    pub replay: Vec<Group>,
    /// Live groups: every revision after `live_after` the filter matches.
    /// Groups at or before the caller's own start (a snapshot's revision)
    /// must be skipped by the caller.
    pub live: mpsc::Receiver<Group>,
    /// Set when the buffer overflowed: the caller ends the stream as lagged.
    pub lagged: Arc<AtomicBool>,
    /// `Some` when a replay was asked for revisions no longer kept; the
    /// caller then sends a snapshot (a `reset`) instead of `replay`.
    pub compacted: Option<Compacted>,
    /// The hub's revision when the subscription started.
    pub live_after: Revision,
    _guard: SubscriberGuard,
}

#[derive(Debug)]
struct SubscriberGuard {
    feed: Arc<Feed>,
    id: u64,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        lock(&self.feed.state)
            .subscribers
            .retain(|s| s.id != self.id);
    }
}

/// What the hub has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStats {
    delivered: AtomicU64,
    lagged: AtomicU64,
    waiting: AtomicU64,
}

/// A copy of [`WatchStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchFigures {
    /// Watch streams open now.
    pub open: u64,
    /// Events written to watch streams.
    pub delivered: u64,
    /// Streams cut off because their reader was too slow.
    pub lagged: u64,
    /// Blocking queries waiting now.
    pub waiting: u64,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    filter: WatchFilter,
    tx: mpsc::Sender<Group>,
    lagged: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FeedState {
    /// Every event with a revision up to here has been handed out.
    latest: u64,
    /// The ring holds every event with a revision in `(floor, latest]`.
    floor: u64,
    ring: VecDeque<Arc<WatchEvent>>,
    /// Embedded mode: events that arrived before a revision before them,
    /// with when the first of them arrived.
    pending: BTreeMap<u64, Vec<RegistryEvent>>,
    pending_since: Option<Instant>,
    /// The revision of each service's last change, complete for changes
    /// after `known_from` (blocking queries on one service).
    services: HashMap<ServiceName, u64>,
    known_from: u64,
    subscribers: Vec<Subscriber>,
}

#[derive(Debug)]
struct Feed {
    state: Mutex<FeedState>,
    /// The latest revision, for blocking queries.
    wake: watch::Sender<u64>,
}

impl Feed {
    fn new(revision: u64) -> Self {
        Self {
            state: Mutex::new(FeedState {
                latest: revision,
                floor: revision,
                ring: VecDeque::new(),
                pending: BTreeMap::new(),
                pending_since: None,
                services: HashMap::new(),
                known_from: revision,
                subscribers: Vec::new(),
            }),
            wake: watch::channel(revision).0,
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the
/// state it guards is still consistent (every change to it is one push or
/// one assignment), so the hub goes on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
struct Inner {
    config: WatchConfig,
    log: Option<Arc<dyn ChangeLog>>,
    feeds: Mutex<HashMap<TenantId, Arc<Feed>>>,
    dirty: Mutex<HashSet<TenantId>>,
    dirty_notify: Notify,
    next_id: AtomicU64,
    stats: WatchStats,
    limits: limits::Counts,
    closed: watch::Sender<bool>,
}

impl std::fmt::Debug for dyn ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeLog")
    }
}

/// The watch hub (cheap to clone; clones share everything).
#[derive(Debug, Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

impl WatchHub {
    /// A hub fed by [`WatchHub::publish`] (embedded mode): its history is its ring.
    pub fn embedded(config: WatchConfig) -> Self {
        Self::build(config, None)
    }

    /// A hub fed from a store's [`ChangeLog`] (PostgreSQL mode): replays
    /// older than the ring read the store.
    pub fn with_log(config: WatchConfig, log: Arc<dyn ChangeLog>) -> Self {
        Self::build(config, Some(log))
    }

    fn build(config: WatchConfig, log: Option<Arc<dyn ChangeLog>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                log,
                feeds: Mutex::new(HashMap::new()),
                dirty: Mutex::new(HashSet::new()),
                dirty_notify: Notify::new(),
                next_id: AtomicU64::new(1),
                stats: WatchStats::default(),
                limits: limits::Counts::default(),
                closed: watch::channel(false).0,
            }),
        }
    }

    /// The hub's settings.
    pub fn config(&self) -> WatchConfig {
        self.inner.config
    }

    /// Whether the hub reads a store's history (PostgreSQL mode).
    pub fn reads_store(&self) -> bool {
        self.inner.log.is_some()
    }

    /// Counts one more open watch of `tenant` and `key`, refused past the
    /// per-tenant limit (`tenant_override` when the tenant has its own) or
    /// the per-key limit. The permit gives the watch back when dropped.
    pub fn acquire(
        &self,
        tenant: &TenantId,
        key: Option<&str>,
        tenant_override: Option<u32>,
    ) -> Result<WatchPermit, WatchLimit> {
        let config = self.inner.config;
        limits::acquire(
            &self.inner,
            tenant,
            key,
            tenant_override.unwrap_or(config.max_per_tenant),
            config.max_per_key,
        )
    }

    /// What the hub has done so far.
    pub fn figures(&self) -> WatchFigures {
        WatchFigures {
            open: self.inner.limits.open(),
            delivered: self.inner.stats.delivered.load(Ordering::Relaxed),
            lagged: self.inner.stats.lagged.load(Ordering::Relaxed),
            waiting: self.inner.stats.waiting.load(Ordering::Relaxed),
        }
    }

    /// Counts events a stream wrote.
    pub fn count_delivered(&self, events: u64) {
        self.inner
            .stats
            .delivered
            .fetch_add(events, Ordering::Relaxed);
    }

    /// Ends every stream (server shutdown): [`WatchHub::closed`] turns true.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// A receiver that turns true when the hub closes.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.inner.closed.subscribe()
    }

    fn existing(&self, tenant: &TenantId) -> Option<Arc<Feed>> {
        lock(&self.inner.feeds).get(tenant).cloned()
    }

    /// The tenant's feed, made on first use: at revision 0 in embedded mode
    /// (the hub sees every event from the store's start), at the store's
    /// current revision otherwise, and then marked for a catch-up read (a
    /// change committed between reading the head and adding the feed would
    /// otherwise wait for the next notification).
    async fn feed(&self, tenant: &TenantId) -> Result<Arc<Feed>, RegistryError> {
        if let Some(feed) = self.existing(tenant) {
            return Ok(feed);
        }
        let revision = match &self.inner.log {
            Some(log) => log.head(tenant).await?.0.get(),
            None => 0,
        };
        let feed = lock(&self.inner.feeds)
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Feed::new(revision)))
            .clone();
        if self.inner.log.is_some() {
            self.changed(tenant);
        }
        Ok(feed)
    }

    /// The revision the hub has reached for `tenant`, if it follows it.
    pub fn revision(&self, tenant: &TenantId) -> Option<Revision> {
        self.existing(tenant)
            .map(|f| Revision::new(lock(&f.state).latest))
    }

    /// PostgreSQL mode: the tenant changed (a notification). Followed
    /// tenants are marked for the feed task; others are ignored (a feed made
    /// later starts from the store's head).
    pub fn changed(&self, tenant: &TenantId) {
        if self.existing(tenant).is_none() {
            return;
        }
        lock(&self.inner.dirty).insert(tenant.clone());
        self.inner.dirty_notify.notify_one();
    }

    /// PostgreSQL mode: any tenant may have changed (the listener
    /// reconnected, or a periodic sweep): every followed tenant is marked.
    pub fn everything_changed(&self) {
        let tenants: Vec<TenantId> = lock(&self.inner.feeds).keys().cloned().collect();
        if tenants.is_empty() {
            return;
        }
        lock(&self.inner.dirty).extend(tenants);
        self.inner.dirty_notify.notify_one();
    }

    /// The feed task's next work: the tenants marked since the last call,
    /// waiting until there is at least one. Marks made while the task reads
    /// coalesce into one read per tenant.
    pub async fn dirty(&self) -> Vec<TenantId> {
        loop {
            let notified = self.inner.dirty_notify.notified();
            let taken: Vec<TenantId> = lock(&self.inner.dirty).drain().collect();
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// PostgreSQL mode: reads what the tenant's feed misses from the store
    /// and hands it out, until the store has nothing newer. `max` events per read.
    pub async fn catch_up(&self, tenant: &TenantId, max: u32) -> Result<(), RegistryError> {
        let (Some(log), Some(feed)) = (&self.inner.log, self.existing(tenant)) else {
            return Ok(());
        };
        loop {
            let after = lock(&feed.state).latest;
            let changes = log.changes_since(tenant, Revision::new(after), max).await?;
            let (more, through) = (changes.more, changes.through);
            self.deliver_to(&feed, after, changes.events, through.get());
            if !more || through.get() <= after {
                return Ok(());
            }
        }
    }

    /// PostgreSQL mode: events read after `after`, complete through
    /// `through`. Ignored if another read already moved the feed past `after`.
    pub fn deliver(
        &self,
        tenant: &TenantId,
        after: Revision,
        events: Vec<RegistryEvent>,
        through: Revision,
    ) {
        if let Some(feed) = self.existing(tenant) {
            self.deliver_to(&feed, after.get(), events, through.get());
        }
    }

    fn deliver_to(&self, feed: &Feed, after: u64, events: Vec<RegistryEvent>, through: u64) {
        let mut state = lock(&feed.state);
        if state.latest != after || through <= after {
            return;
        }
        let events: Vec<Arc<WatchEvent>> = events
            .iter()
            .filter(|e| e.revision().get() > after && e.revision().get() <= through)
            .map(|e| Arc::new(WatchEvent::new(e)))
            .collect();
        self.append(&mut state, events, through);
        drop(state);
        feed.wake.send_replace(through);
    }

    /// Embedded mode: events just stored, in any order across calls.
    /// Each tenant's events are handed out in revision order; one whose
    /// predecessor has not arrived waits for it (at most [`GAP_GRACE`]).
    pub fn publish(&self, events: &[RegistryEvent]) {
        let mut by_tenant: HashMap<&TenantId, Vec<RegistryEvent>> = HashMap::new();
        for event in events {
            by_tenant
                .entry(event.tenant_id())
                .or_default()
                .push(event.clone());
        }
        for (tenant, events) in by_tenant {
            let feed = lock(&self.inner.feeds)
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(Feed::new(0)))
                .clone();
            let mut state = lock(&feed.state);
            for event in events {
                let revision = event.revision().get();
                if revision > state.latest {
                    state.pending.entry(revision).or_default().push(event);
                }
            }
            if state.pending_since.is_none() && !state.pending.is_empty() {
                state.pending_since = Some(Instant::now());
            }
            self.drain_pending(&feed, state, false);
        }
    }

    /// Embedded mode: goes on past revisions missing for longer than
    /// [`GAP_GRACE`] (called periodically by the server).
    pub fn tick(&self) {
        let feeds: Vec<Arc<Feed>> = lock(&self.inner.feeds).values().cloned().collect();
        for feed in feeds {
            let state = lock(&feed.state);
            let overdue = state
                .pending_since
                .is_some_and(|since| since.elapsed() >= GAP_GRACE);
            self.drain_pending(&feed, state, overdue);
        }
    }

    fn drain_pending(&self, feed: &Feed, mut state: MutexGuard<'_, FeedState>, skip_gap: bool) {
        let mut ready = Vec::new();
        let mut through = state.latest;
        while let Some((&next, _)) = state.pending.first_key_value() {
            if next != through + 1 && !(skip_gap && ready.is_empty()) {
                break;
            }
            if next != through + 1 {
                tracing::warn!(
                    missing_from = through + 1,
                    missing_to = next - 1,
                    "watch feed: revisions never published (a request cancelled between its change and its event); watchers go on without them"
                );
            }
            if let Some(events) = state.pending.remove(&next) {
                ready.extend(events.iter().map(|e| Arc::new(WatchEvent::new(e))));
            }
            through = next;
        }
        state.pending_since = if state.pending.is_empty() {
            None
        } else if ready.is_empty() {
            state.pending_since
        } else {
            Some(Instant::now())
        };
        if through > state.latest {
            self.append(&mut state, ready, through);
            drop(state);
            feed.wake.send_replace(through);
        }
    }

    /// Adds events (in revision order, all after `latest`) to the ring and
    /// hands them to subscribers, grouped by revision; `latest` becomes `through`.
    fn append(&self, state: &mut FeedState, events: Vec<Arc<WatchEvent>>, through: u64) {
        let history = self.inner.config.history;
        for group in groups(&events) {
            let revision = group[0].revision;
            for event in group.iter() {
                state.services.insert(event.service.clone(), revision);
            }
            let mut cut = false;
            state.subscribers.retain(|s| {
                if !group.iter().any(|e| s.filter.matches(e)) {
                    return true;
                }
                match s.tx.try_send(group.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.lagged.store(true, Ordering::Release);
                        cut = true;
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if cut {
                self.inner.stats.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
        for event in events {
            state.ring.push_back(event);
        }
        // The ring drops whole revisions from the front, so that a replay
        // from the ring never starts in the middle of one.
        while state.ring.len() > history {
            let Some(front) = state.ring.pop_front() else {
                break;
            };
            state.floor = front.revision;
            while state
                .ring
                .front()
                .is_some_and(|e| e.revision == front.revision)
            {
                state.ring.pop_front();
            }
        }
        if state.ring.is_empty() {
            state.floor = through;
        }
        state.latest = through;
    }

    /// Subscribes to `tenant`'s events matching `filter` from `start`.
    /// `Unavailable` when the hub is closed or the store cannot be read.
    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        filter: WatchFilter,
        start: Start,
    ) -> Result<Subscription, RegistryError> {
        if *self.inner.closed.borrow() {
            return Err(RegistryError::Unavailable {
                component: "watch",
                source: "the server is shutting down".into(),
            });
        }
        let feed = self.feed(tenant).await?;
        let (tx, live) = mpsc::channel(self.inner.config.buffer.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (latest, floor, ring_replay) = {
            let mut state = lock(&feed.state);
            state.subscribers.push(Subscriber {
                id,
                filter: filter.clone(),
                tx,
                lagged: lagged.clone(),
            });
            let after = match start {
                Start::Now => state.latest,
                Start::After(r) => r.get(),
            };
            let replay: Vec<Arc<WatchEvent>> = state
                .ring
                .iter()
                .filter(|e| e.revision > after && filter.matches(e))
                .cloned()
                .collect();
            (state.latest, state.floor, replay)
        };
        let guard = SubscriberGuard {
            feed: feed.clone(),
            id,
        };
        let mut subscription = Subscription {
            replay: Vec::new(),
            live,
            lagged,
            compacted: None,
            live_after: Revision::new(latest),
            _guard: guard,
        };
        let Start::After(requested) = start else {
            return Ok(subscription);
        };
        let after = requested.get();
        // Without a store history (embedded mode) this hub has seen every
        // revision of the tenant, so one ahead of the latest was handed out
        // by an earlier process (a restart lost the registry): the client's
        // state is of another history and must be replaced, like etcd's
        // answer to a revision of a compacted past.
        if after > latest && self.inner.log.is_none() {
            subscription.compacted = Some(Compacted {
                requested,
                oldest_retained: Revision::new(floor),
            });
            return Ok(subscription);
        }
        if after >= floor {
            subscription.replay = groups(&ring_replay);
            return Ok(subscription);
        }
        // Older than the ring: the store's history, if it keeps one.
        match &self.inner.log {
            Some(log) => {
                let events = self
                    .history(log.as_ref(), tenant, requested, latest)
                    .await?;
                match events {
                    Ok(events) => {
                        let events: Vec<Arc<WatchEvent>> = events
                            .iter()
                            .map(|e| Arc::new(WatchEvent::new(e)))
                            .filter(|e| filter.matches(e))
                            .collect();
                        subscription.replay = groups(&events);
                    }
                    Err(oldest_retained) => {
                        subscription.compacted = Some(Compacted {
                            requested,
                            oldest_retained,
                        })
                    }
                }
            }
            None => {
                subscription.compacted = Some(Compacted {
                    requested,
                    oldest_retained: Revision::new(floor),
                })
            }
        }
        Ok(subscription)
    }

    /// The store's events in `(after, through]`, or the oldest retained
    /// revision when `after` is older than that.
    async fn history(
        &self,
        log: &dyn ChangeLog,
        tenant: &TenantId,
        after: Revision,
        through: u64,
    ) -> Result<Result<Vec<RegistryEvent>, Revision>, RegistryError> {
        const PAGE: u32 = 1000;
        let mut events = Vec::new();
        let mut at = after;
        while at.get() < through {
            let page = log.changes_since(tenant, at, PAGE).await?;
            if page.oldest_retained > after {
                return Ok(Err(page.oldest_retained));
            }
            let more = page.more;
            events.extend(
                page.events
                    .into_iter()
                    .filter(|e| e.revision().get() <= through),
            );
            if page.through <= at || !more {
                break;
            }
            at = page.through;
        }
        Ok(Ok(events))
    }

    /// Waits until the tenant's revision passes `after` (with `service`:
    /// until that service changes after `after`). Returns at once if the hub
    /// cannot tell (changes before it followed the tenant). The caller bounds
    /// the wait with a timeout.
    pub async fn wait(
        &self,
        tenant: &TenantId,
        service: Option<&ServiceName>,
        after: Revision,
    ) -> Result<(), RegistryError> {
        let feed = self.feed(tenant).await?;
        let mut wake = feed.wake.subscribe();
        let mut closed = self.closed();
        let _waiting = Waiting::count(&self.inner.stats.waiting);
        let after = after.get();
        loop {
            {
                let state = lock(&feed.state);
                let passed = match service {
                    None => state.latest > after,
                    Some(service) => {
                        (after < state.known_from && state.latest > after)
                            || state.services.get(service).is_some_and(|r| *r > after)
                    }
                };
                if passed || *closed.borrow() {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return Ok(()); },
                _ = closed.changed() => return Ok(()),
            }
        }
    }
}

/// Counts a blocking query while it waits (also when its caller gives up
/// and drops the wait).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn count(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Splits events (in revision order) into groups of one revision each.
fn groups(events: &[Arc<WatchEvent>]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut start = 0;
    for i in 1..=events.len() {
        if i == events.len() || events[i].revision != events[start].revision {
            out.push(events[start..i].iter().cloned().collect());
            start = i;
        }
    }
    out
}

#[async_trait]
impl crate::ports::EventSink for WatchHub {
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        WatchHub::publish(self, events);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
