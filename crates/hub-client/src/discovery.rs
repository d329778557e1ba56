//! `Discovery`: the instances of one service from a local cache, fed by the watch stream (or blocking queries, or polling on a hub without them), kept while the hub is unreachable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::client::{HubClient, index_of, service_path};
use crate::error::HubError;
use crate::types::{Block, HealthStatus, Instance, ServiceBody};
use crate::watch::{WatchEvent, WatchFilter};

/// Where a [`Discovery`] gets its state from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The watch stream: changes pushed as they happen.
    Watch,
    /// Blocking queries (`?index=&wait=`): one request held until a change.
    Blocking,
    /// Plain requests at a fixed interval.
    Polling,
}

/// How [`Discovery::pick`] chooses among the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pick {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// One at random each time.
    Random,
}

/// How a [`Discovery`] works; [`DiscoverOptions::default`] suits most uses.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverOptions {
    /// The states an answer includes (default: only `passing`).
    pub statuses: Vec<HealthStatus>,
    pub pick: Pick,
    /// The first source tried (default [`Source::Watch`]). A hub without
    /// the watch endpoint (404/405) moves discovery to blocking queries,
    /// one without those (no `X-Hub-Index`) to polling.
    pub start_with: Source,
    /// How long one blocking query may be held (default 30 s).
    pub blocking_wait: Duration,
    /// The interval of polling (default 1 s).
    pub poll_interval: Duration,
    /// The longest wait between reconnection attempts while the hub is
    /// unreachable (default 5 s; the first is 100 ms).
    pub max_backoff: Duration,
    /// When the hub refuses a watch because the tenant or key has as many
    /// open as allowed (429 `too_many_watchers`), discovery uses blocking
    /// queries for this long, then tries the watch again (default 60 s).
    pub watch_retry: Duration,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        Self {
            statuses: vec![HealthStatus::Passing],
            pick: Pick::RoundRobin,
            start_with: Source::Watch,
            blocking_wait: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            watch_retry: Duration::from_secs(60),
        }
    }
}

/// The instances of one service, answered from memory.
///
/// A background task keeps the cache current (see [`Source`]); while the
/// hub cannot be reached it retries with backoff, and the cache goes on
/// answering with the last state it had, whose age [`Discovery::staleness`]
/// tells. Clones share the cache; the task stops when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Discovery {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Discovery")
            .field("service", &self.shared.service)
            .field("source", &state.source)
            .field("revision", &state.revision)
            .field("instances", &state.instances.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    service: String,
    options: DiscoverOptions,
    /// A std mutex: held only to read or replace the map, never across an
    /// await, and reads (every `pick`) are far more frequent than writes.
    state: Mutex<State>,
    /// Round-robin position.
    next: AtomicUsize,
    /// Bumped on every change of the instances, for [`Discovery::changed`].
    version: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    /// Every instance of the service by instance id, whatever its status
    /// (a status change moves it in or out of the answers).
    instances: BTreeMap<String, Instance>,
    /// The revision the state reflects (the watch resumes after it).
    revision: Option<u64>,
    loaded: bool,
    /// A watch stream is open, or a blocking query is held after a
    /// successful answer: the hub would tell of any change at once.
    live: bool,
    /// The last moment the hub confirmed the state.
    confirmed: Option<(Instant, DateTime<Utc>)>,
    source: Source,
    last_error: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write leaves the state whole before it can panic, so a
        // poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn confirm(state: &mut State, live: bool) {
        state.live = live;
        state.confirmed = Some((Instant::now(), Utc::now()));
        state.last_error = None;
    }

    /// Replaces the whole state (a snapshot, a reset, a query answer).
    fn replace(&self, instances: Vec<Instance>, revision: u64, live: bool) {
        let mut state = self.lock();
        let instances: BTreeMap<String, Instance> = instances
            .into_iter()
            .filter(|i| i.service_name == self.service)
            .map(|i| (i.instance_id.clone(), i))
            .collect();
        let changed = !state.loaded || state.instances != instances;
        state.instances = instances;
        state.revision = Some(revision);
        state.loaded = true;
        Self::confirm(&mut state, live);
        drop(state);
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
    }

    fn disconnected(&self, error: &HubError) {
        let mut state = self.lock();
        if state.live {
            // The stream was current until this moment.
            state.live = false;
            state.confirmed = Some((Instant::now(), Utc::now()));
        }
        state.last_error = Some(error.to_string());
    }
}

impl HubClient {
    /// Follows the instances of `service` with the default options (watch
    /// stream first, only `passing` instances, round-robin).
    ///
    /// # Panics
    /// Outside a tokio runtime: it spawns the task that feeds the cache.
    pub fn discover(&self, service: impl Into<String>) -> Discovery {
        self.discover_with(service, DiscoverOptions::default())
    }

    /// [`HubClient::discover`] with chosen options.
    pub fn discover_with(&self, service: impl Into<String>, options: DiscoverOptions) -> Discovery {
        let shared = Arc::new(Shared {
            service: service.into(),
            state: Mutex::new(State {
                instances: BTreeMap::new(),
                revision: None,
                loaded: false,
                live: false,
                confirmed: None,
                source: options.start_with,
                last_error: None,
            }),
            options,
            next: AtomicUsize::new(0),
            version: watch::channel(0).0,
        });
        let task = tokio::spawn(feed(self.clone(), shared.clone()));
        Discovery {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }
}

impl Discovery {
    /// The service followed.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The instances in the chosen states (only `passing` by default),
    /// ordered by instance id; empty until the first answer.
    pub fn instances(&self) -> Vec<Instance> {
        let state = self.shared.lock();
        state
            .instances
            .values()
            .filter(|i| self.shared.options.statuses.contains(&i.status))
            .cloned()
            .collect()
    }

    /// One instance, chosen round-robin or at random; `None` when there is
    /// none in the chosen states.
    pub fn pick(&self) -> Option<Instance> {
        let state = self.shared.lock();
        let eligible: Vec<&Instance> = state
            .instances
            .values()
            .filter(|i| self.shared.options.statuses.contains(&i.status))
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let at = match self.shared.options.pick {
            Pick::RoundRobin => self.shared.next.fetch_add(1, Ordering::Relaxed) % eligible.len(),
            Pick::Random => fastrand::usize(..eligible.len()),
        };
        Some(eligible[at].clone())
    }

    /// The revision the state reflects.
    pub fn revision(&self) -> Option<u64> {
        self.shared.lock().revision
    }

    /// Where the state comes from now.
    pub fn source(&self) -> Source {
        self.shared.lock().source
    }

    /// How old the state may be: zero while a watch stream (or a held
    /// blocking query) is open, since the hub would report any change at
    /// once; otherwise the time since the hub last confirmed it. `None`
    /// before the first answer.
    pub fn staleness(&self) -> Option<Duration> {
        let state = self.shared.lock();
        let (at, _) = state.confirmed?;
        Some(if state.live {
            Duration::ZERO
        } else {
            at.elapsed()
        })
    }

    /// When the hub last confirmed the state: now while live (see
    /// [`Discovery::staleness`]). `None` before the first answer.
    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        let state = self.shared.lock();
        let (_, at) = state.confirmed?;
        Some(if state.live { Utc::now() } else { at })
    }

    /// Why the last attempt to reach the hub failed, while it keeps failing.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// Waits for the first answer from the hub (wrap it in
    /// `tokio::time::timeout` to bound the wait).
    pub async fn ready(&self) {
        let mut version = self.shared.version.subscribe();
        loop {
            if self.shared.lock().loaded {
                return;
            }
            // The sender lives in `shared`, which `self` holds, so this
            // cannot fail while we wait; if it did, polling the flag again
            // is still correct.
            if version.changed().await.is_err() {
                return;
            }
        }
    }

    /// [`Discovery::pick`], waiting up to `wait` for an instance to be
    /// there (at once when one is); `None` if none came.
    pub async fn pick_within(&self, wait: Duration) -> Option<Instance> {
        // Subscribed before looking, so that a change between the look and
        // the wait is not missed.
        let mut version = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(instance) = self.pick() {
                return Some(instance);
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                // The deadline passed, or (cannot happen while `self`
                // holds the sender) the sender is gone.
                Ok(Err(_)) | Err(_) => return self.pick(),
            }
        }
    }

    /// Waits until the instances change (any status, any field).
    pub async fn changed(&self) {
        let mut version = self.shared.version.subscribe();
        // The receiver starts at the current version: only a later change wakes it.
        let _ = version.changed().await;
    }
}

/// What ended one run of a source.
enum Ended {
    /// The hub lacks this source: move to the next one, at once.
    Unsupported,
    /// The connection ended or a request failed: retry after a backoff.
    Failed(HubError),
    /// The stream ended in an orderly way (lagged): reconnect at once.
    Reconnect,
    /// The hub refused the watch for its limit (429): blocking queries for
    /// a while instead.
    Busy,
    /// The while is over: try the watch again.
    RetryWatch,
}

/// The task behind a [`Discovery`]: runs the current source, falls back
/// when the hub lacks it, backs off while the hub is unreachable.
async fn feed(client: HubClient, shared: Arc<Shared>) {
    let options = shared.options.clone();
    let mut backoff = Backoff::new(Duration::from_millis(100), options.max_backoff);
    let mut source = options.start_with;
    // Until when queries stand in for a watch the hub refused (429).
    let mut watch_again: Option<tokio::time::Instant> = None;
    loop {
        let ended = match source {
            Source::Watch => run_watch(&client, &shared, &mut backoff).await,
            Source::Blocking => {
                run_queries(&client, &shared, &mut backoff, true, watch_again).await
            }
            Source::Polling => {
                run_queries(&client, &shared, &mut backoff, false, watch_again).await
            }
        };
        match ended {
            Ended::Busy => {
                tracing::info!(service = %shared.service, "the hub has as many watches as allowed: blocking queries for now");
                watch_again = Some(tokio::time::Instant::now() + options.watch_retry);
                source = Source::Blocking;
                shared.lock().source = source;
            }
            Ended::RetryWatch => {
                watch_again = None;
                source = Source::Watch;
                shared.lock().source = source;
            }
            Ended::Unsupported => {
                source = match source {
                    Source::Watch => Source::Blocking,
                    Source::Blocking | Source::Polling => Source::Polling,
                };
                tracing::info!(service = %shared.service, ?source, "the hub lacks the previous source: falling back");
                shared.lock().source = source;
            }
            Ended::Reconnect => {}
            Ended::Failed(error) => {
                tracing::debug!(service = %shared.service, %error, "discovery lost the hub; retrying");
                shared.disconnected(&error);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Follows the watch stream until it ends. Resumes after the revision the
/// state has (`Last-Event-ID`), so a reconnection replays what was missed.
async fn run_watch(client: &HubClient, shared: &Shared, backoff: &mut Backoff) -> Ended {
    let mut filter = WatchFilter::new().service(shared.service.clone());
    let resume = {
        let state = shared.lock();
        state.loaded.then_some(state.revision).flatten()
    };
    if let Some(revision) = resume {
        // A hub that lost its registry (an embedded hub restarted) counts
        // revisions from 0 again, and a resume point ahead of it would hide
        // every change until it caught up. Its current revision tells: if
        // it went back, start afresh from a snapshot.
        match query(client, &shared.service, None).await {
            Ok((_, _, Some(current))) if current < revision => {
                tracing::info!(service = %shared.service, revision, current, "the hub's revision went back: taking a new snapshot");
            }
            Ok(_) => filter = filter.since(revision),
            Err(HubError::Api {
                status: 404 | 405, ..
            }) => return Ended::Unsupported,
            Err(e) => return Ended::Failed(e),
        }
    }
    let mut stream = match client.watch(&filter).await {
        Ok(stream) => stream,
        Err(HubError::Api {
            status: 404 | 405, ..
        }) => return Ended::Unsupported,
        Err(HubError::Api { status: 429, .. }) => return Ended::Busy,
        Err(e) => return Ended::Failed(e),
    };
    backoff.reset();
    {
        // Connected and resuming: the state is current from here on (the
        // replay brings what was missed).
        let mut state = shared.lock();
        if state.loaded {
            Shared::confirm(&mut state, true);
        }
    }
    while let Some(item) = stream.next().await {
        match item {
            Ok(WatchEvent::Snapshot {
                revision,
                instances,
            })
            | Ok(WatchEvent::Reset {
                revision,
                instances,
                ..
            }) => shared.replace(instances, revision, true),
            Ok(WatchEvent::Change(change)) => {
                let change = *change;
                let mut state = shared.lock();
                Shared::confirm(&mut state, true);
                // A change older than the state is already in it. Several
                // changes may share one revision (only the last carries the
                // SSE id), so an equal revision is applied: upserts and
                // removals are idempotent.
                if state.revision.is_some_and(|r| change.revision < r) {
                    continue;
                }
                state.revision = Some(change.revision);
                if change.instance.service_name != shared.service {
                    continue;
                }
                let id = change.instance.instance_id.clone();
                if change.kind.removes() {
                    state.instances.remove(&id);
                } else {
                    state.instances.insert(id, change.instance);
                }
                drop(state);
                shared.version.send_modify(|v| *v += 1);
            }
            Ok(WatchEvent::Lagged { resume_from }) => {
                let mut state = shared.lock();
                state.revision = Some(resume_from.max(state.revision.unwrap_or(0)));
                return Ended::Reconnect;
            }
            Ok(WatchEvent::KeepAlive) => Shared::confirm(&mut shared.lock(), true),
            Err(e) => return Ended::Failed(e),
        }
    }
    Ended::Failed(HubError::InvalidResponse {
        status: 200,
        detail: "the watch stream ended".into(),
    })
}

/// Blocking queries (`blocking`) or polling. Blocking falls back to polling
/// when the hub answers without `X-Hub-Index`.
async fn run_queries(
    client: &HubClient,
    shared: &Shared,
    backoff: &mut Backoff,
    blocking: bool,
    until: Option<tokio::time::Instant>,
) -> Ended {
    let options = &shared.options;
    // Each run starts with a plain query: after a failure the hub may be a
    // new one whose revisions started again from 0, and an index from the
    // old one would hold the query for the whole wait.
    let mut last_index: Option<u64> = None;
    loop {
        // Standing in for a refused watch: no query is held past the time
        // to try the watch again.
        let mut wait = options.blocking_wait;
        if let Some(until) = until {
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ended::RetryWatch;
            }
            wait = wait.min(until - now);
        }
        let block = if blocking {
            last_index.map(|index| Block { index, wait })
        } else {
            None
        };
        let answer = match query(client, &shared.service, block).await {
            Ok(answer) => answer,
            Err(e) => return Ended::Failed(e),
        };
        backoff.reset();
        let (instances, revision, index) = answer;
        // Every answer of a hub with blocking queries carries the index,
        // its 404s included.
        if blocking && index.is_none() {
            shared.replace(instances, revision, false);
            return Ended::Unsupported;
        }
        // Held queries keep the state live; polling confirms it each time.
        // Index 0 (a tenant with no change yet) is answered at once by the
        // hub, so it cannot be blocked on either.
        let live = blocking && index.is_some_and(|i| i > 0);
        last_index = index;
        shared.replace(instances, revision, live);
        if !live {
            // At least 10 ms, so that a zero interval is no busy loop.
            tokio::time::sleep(options.poll_interval.max(Duration::from_millis(10))).await;
        }
    }
}

/// One query of the service: `(instances, revision, X-Hub-Index)`.
/// A 404 `not_found` is a service with no instances, not an error.
async fn query(
    client: &HubClient,
    service: &str,
    block: Option<Block>,
) -> Result<(Vec<Instance>, u64, Option<u64>), HubError> {
    let mut request = client.request(Method::GET, &service_path(service)?);
    if let Some(block) = &block {
        request = request.query(&block.pairs());
    }
    let response = client
        .send(request.timeout(client.timeout_for(block.as_ref())))
        .await?;
    let index = index_of(&response);
    match client.read::<ServiceBody>(response).await {
        Ok((body, index)) => Ok((body.instances, body.revision, index)),
        Err(e) if e.code() == Some("not_found") => {
            let revision = index.unwrap_or(0);
            Ok((Vec::new(), revision, index))
        }
        Err(e) => Err(e),
    }
}
