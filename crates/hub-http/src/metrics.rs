//! Request metrics: counts by route template and status, latency histograms (last minute and since start) per tenant, recorded per worker and merged when read.
//!
//! **Hot path.** Every worker thread gets its own [`Shard`] (`app` runs once
//! per worker), so recording takes a mutex that only its own worker takes on
//! the request path: uncontended, no cache line shared between cores. Readers
//! (the dashboard, `/metrics`) lock each shard in turn and merge. One shared
//! mutex taken by every request would make both cores bounce its cache line
//! on each request; the per-worker shard avoids that for the price of a merge
//! at read time, which is rare. `cargo xtask bench` measures the cost (embedded
//! lookups with the metrics on and off in the same run).
//!
//! **Bounded labels and memory.** The route is the matched route *template*
//! (`/api/v1/discovery/services/{service_name}`), never the raw path; a request
//! that matched no route counts under [`UNMATCHED_ROUTE`]. Methods outside the
//! standard set count as `OTHER`. The first `max_tenants` tenants seen
//! (`HUB_METRICS_MAX_TENANTS`) get their own figures; later tenants are pooled
//! under `other`, which only operators see (a bound key's dashboard then says
//! its tenant is not tracked rather than show pooled figures). Requests
//! answered before a tenant was known (401, an invalid `X-Tenant-ID`) count
//! under no tenant, also for operators only. Each tracked tenant costs about
//! 100 KiB per worker (five HDR histograms of 2 significant digits from 1 µs
//! to 60 s).
//!
//! **Windows.** "Last minute" is four rotating 15 s slots: the figures cover
//! the last 45 to 60 seconds. A slot older than that is cleared when it is
//! reused.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use hub_core::TenantId;
use serde::Serialize;

/// The route label of a request that matched no route (never the raw path).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Upper bounds (seconds) of the Prometheus latency histogram buckets.
pub const BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const MAX_MICROS: u64 = 60_000_000;
const SLOT_SECS: u64 = 15;
const SLOTS: usize = 4;

/// Which figures a request counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    /// Answered before a tenant was known.
    NoTenant,
    /// One of the first `max_tenants` tenants (index in [`TenantTable::ids`]).
    Tenant(u32),
    /// Every tenant past the cap.
    Other,
}

/// The first `max` tenants seen, in order, each with its slot.
#[derive(Debug, Default)]
struct TenantTable {
    by_id: HashMap<TenantId, u32>,
    ids: Vec<TenantId>,
}

/// Tenants with figures of their own (shared by every worker; taken only the
/// first time a worker sees a tenant, and for tenants past the cap).
#[derive(Debug)]
struct TenantSlots {
    max: usize,
    table: Mutex<TenantTable>,
}

impl TenantSlots {
    fn table(&self) -> MutexGuard<'_, TenantTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant's slot, giving it one if there is room.
    fn assign(&self, tenant: &TenantId) -> Slot {
        let mut table = self.table();
        if let Some(&i) = table.by_id.get(tenant) {
            return Slot::Tenant(i);
        }
        if table.ids.len() >= self.max {
            return Slot::Other;
        }
        let i = u32::try_from(table.ids.len()).unwrap_or(u32::MAX);
        table.by_id.insert(tenant.clone(), i);
        table.ids.push(tenant.clone());
        Slot::Tenant(i)
    }

    /// The tenant's slot if it has one; `None` if it has none yet but would
    /// get one; `Some(Other)` if the table is full.
    fn find(&self, tenant: &TenantId) -> Option<Slot> {
        let table = self.table();
        match table.by_id.get(tenant) {
            Some(&i) => Some(Slot::Tenant(i)),
            None if table.ids.len() >= self.max => Some(Slot::Other),
            None => None,
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    slot: Slot,
    method: &'static str,
    route: String,
    status: u16,
}

/// Count, sum and bucket counts (not cumulative) of one route key.
#[derive(Debug, Clone, Copy, Default)]
struct RouteStats {
    count: u64,
    sum_micros: u64,
    buckets: [u64; BUCKETS_SECONDS.len()],
}

impl RouteStats {
    fn record(&mut self, micros: u64) {
        self.count += 1;
        self.sum_micros += micros;
        let seconds = micros as f64 / 1e6;
        if let Some(i) = BUCKETS_SECONDS.iter().position(|&b| seconds <= b) {
            self.buckets[i] += 1;
        }
    }

    fn add(&mut self, other: &RouteStats) {
        self.count += other.count;
        self.sum_micros += other.sum_micros;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }
}

/// Latency of one slot: the rotating window, and everything older folded
/// into `older`. A request is recorded once, in its window slot; a slot's
/// samples move to `older` when the slot is reused, so "since start" is
/// `older` plus every slot (one record per request instead of two: the
/// histogram was the largest part of the metrics' cost in a profile).
#[derive(Debug)]
struct Latency {
    older: Histogram<u64>,
    window: [(u64, Histogram<u64>); SLOTS],
}

impl Latency {
    fn new(empty: &Histogram<u64>) -> Self {
        Self {
            older: empty.clone(),
            window: std::array::from_fn(|_| (u64::MAX, empty.clone())),
        }
    }

    fn record(&mut self, epoch: u64, micros: u64) {
        let (slot_epoch, h) = &mut self.window[(epoch % SLOTS as u64) as usize];
        if *slot_epoch != epoch {
            // Same bounds on both sides: adding cannot fail.
            let _ = self.older.add(&*h);
            h.reset();
            *slot_epoch = epoch;
        }
        h.saturating_record(micros);
    }

    /// Adds every sample since start.
    fn add_all(&self, into: &mut Histogram<u64>) {
        let _ = into.add(&self.older);
        for (_, h) in &self.window {
            let _ = into.add(h);
        }
    }

    /// Adds the window slots still within the last minute at `epoch`.
    fn add_recent(&self, epoch: u64, into: &mut Histogram<u64>) {
        for (slot_epoch, h) in &self.window {
            if *slot_epoch <= epoch && epoch - *slot_epoch < SLOTS as u64 {
                // Same bounds on both sides: adding cannot fail.
                let _ = into.add(h);
            }
        }
    }
}

/// FxHash (rustc's hasher): a few instructions per word where the default
/// SipHash costs tens of nanoseconds for each of the three lookups a request
/// makes. It does not resist hash flooding, which does not matter here: the
/// keys are route templates (a fixed set), methods and statuses, and the
/// tenant map holds at most `max_tenants` tenants.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

type Fx = BuildHasherDefault<FxHasher>;

#[derive(Debug, Default)]
struct ShardData {
    /// This worker's copy of the tenant table (tracked tenants only).
    slots: HashMap<TenantId, Slot, Fx>,
    routes: HashMap<RouteKey, RouteStats, Fx>,
    latency: HashMap<Slot, Latency, Fx>,
}

/// One worker's figures. Its mutex is taken by that worker's requests and,
/// rarely, by a reader merging every shard.
#[derive(Debug, Default)]
pub struct Shard {
    data: Mutex<ShardData>,
}

impl Shard {
    fn data(&self) -> MutexGuard<'_, ShardData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The request metrics of one server (every worker), since it started.
#[derive(Debug)]
pub struct RequestMetrics {
    enabled: bool,
    started_at: DateTime<Utc>,
    started: Instant,
    tenants: TenantSlots,
    shards: Mutex<Vec<Arc<Shard>>>,
    /// An empty histogram with the bounds every latency histogram has.
    empty: Histogram<u64>,
}

/// Requests of one route template, method and status class.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RouteCount {
    /// HTTP method (`OTHER` for non-standard ones).
    pub method: String,
    /// The matched route template, or `unmatched`.
    #[schema(example = "/api/v1/discovery/services/{service_name}")]
    pub route: String,
    /// `2xx`, `4xx`, ...
    #[schema(example = "2xx")]
    pub status_class: String,
    /// Requests answered.
    pub count: u64,
}

/// Latency percentiles of a set of requests, in milliseconds (null when
/// there were none).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let at = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
        Self {
            count: h.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
        }
    }
}

/// Latency over the last minute and since this replica started.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LatencySummary {
    /// The last 45 to 60 seconds (four rotating 15 s windows).
    pub last_minute: Percentiles,
    /// Since this replica started.
    pub since_start: Percentiles,
}

/// The request figures of a dashboard scope.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RequestSummary {
    /// False when the request metrics are off (`HUB_REQUEST_METRICS=off`) or
    /// the tenant is past `HUB_METRICS_MAX_TENANTS` (its requests are pooled
    /// with other such tenants, which only operators see); the figures are
    /// then empty.
    pub tracked: bool,
    /// Requests answered in the scope.
    pub total: u64,
    /// For operators' totals: requests answered before a tenant was known
    /// (401, an invalid tenant header), included in `total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without_tenant: Option<u64>,
    /// By method, route template and status class, most requests first.
    pub by_route: Vec<RouteCount>,
    /// Latency percentiles.
    pub latency: LatencySummary,
}

/// One Prometheus series of the request metrics (summed over tenants).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSeries {
    /// HTTP method.
    pub method: &'static str,
    /// Route template or [`UNMATCHED_ROUTE`].
    pub route: String,
    /// Status code.
    pub status: u16,
    /// Requests.
    pub count: u64,
    /// Sum of latencies, seconds.
    pub sum_seconds: f64,
    /// Cumulative counts for [`BUCKETS_SECONDS`].
    pub cumulative: [u64; BUCKETS_SECONDS.len()],
}

impl RequestMetrics {
    /// Metrics that record when `enabled`, with figures of their own for the
    /// first `max_tenants` tenants (at least one). Fails only if hdrhistogram
    /// refuses the (constant) bounds.
    pub fn new(enabled: bool, max_tenants: usize) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            enabled,
            started_at: Utc::now(),
            started: Instant::now(),
            tenants: TenantSlots {
                max: max_tenants.max(1),
                table: Mutex::default(),
            },
            shards: Mutex::default(),
            empty: Histogram::new_with_bounds(1, MAX_MICROS, 2)?,
        })
    }

    /// Whether requests are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// When these metrics started (the replica's start).
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// A new shard for one worker.
    pub fn shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shard.clone());
        shard
    }

    fn shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn epoch(&self) -> u64 {
        self.started.elapsed().as_secs() / SLOT_SECS
    }

    /// Records one answered request on `shard` (the worker's own).
    pub fn record(
        &self,
        shard: &Shard,
        tenant: Option<&TenantId>,
        method: &Method,
        route: Option<String>,
        status: u16,
        elapsed: Duration,
    ) {
        if !self.enabled {
            return;
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let epoch = self.epoch();
        let mut data = shard.data();
        let slot = match tenant {
            None => Slot::NoTenant,
            Some(tenant) => match data.slots.get(tenant) {
                Some(&slot) => slot,
                None => {
                    // First sight of this tenant on this worker (or a tenant
                    // past the cap): ask the shared table.
                    let slot = self.tenants.assign(tenant);
                    if slot != Slot::Other {
                        data.slots.insert(tenant.clone(), slot);
                    }
                    slot
                }
            },
        };
        let key = RouteKey {
            slot,
            method: method_label(method),
            route: route.unwrap_or_else(|| UNMATCHED_ROUTE.to_owned()),
            status,
        };
        data.routes.entry(key).or_default().record(micros);
        data.latency
            .entry(slot)
            .or_insert_with(|| Latency::new(&self.empty))
            .record(epoch, micros);
    }

    /// The label a tenant gets in Prometheus series: its id for the first
    /// `max_tenants` tenants, `other` for the rest.
    pub fn tenant_label<'a>(&self, tenant: &'a TenantId) -> &'a str {
        match self.tenants.assign(tenant) {
            Slot::Tenant(_) => tenant.as_str(),
            _ => "other",
        }
    }

    /// The request figures for `scope`: one tenant, or (`None`) every
    /// request, tenant or not.
    pub fn summary(&self, scope: Option<&TenantId>) -> RequestSummary {
        let wanted: Option<Option<Slot>> = scope.map(|tenant| self.tenants.find(tenant));
        let tracked = self.enabled && !matches!(wanted, Some(Some(Slot::Other)));
        let epoch = self.epoch();
        let mut by_route: HashMap<(&'static str, String, String), u64> = HashMap::new();
        let mut recent = self.empty.clone();
        let mut total = self.empty.clone();
        let mut without_tenant = 0;
        let matches = |slot: &Slot| match wanted {
            None => true,
            Some(Some(Slot::Tenant(i))) => *slot == Slot::Tenant(i),
            Some(_) => false,
        };
        if tracked {
            for shard in self.shards() {
                let data = shard.data();
                for (key, stats) in data.routes.iter().filter(|(k, _)| matches(&k.slot)) {
                    let class = format!("{}xx", key.status / 100);
                    *by_route
                        .entry((key.method, key.route.clone(), class))
                        .or_default() += stats.count;
                    if key.slot == Slot::NoTenant {
                        without_tenant += stats.count;
                    }
                }
                for (_, latency) in data.latency.iter().filter(|(s, _)| matches(s)) {
                    latency.add_all(&mut total);
                    latency.add_recent(epoch, &mut recent);
                }
            }
        }
        let mut by_route: Vec<RouteCount> = by_route
            .into_iter()
            .map(|((method, route, status_class), count)| RouteCount {
                method: method.to_owned(),
                route,
                status_class,
                count,
            })
            .collect();
        by_route.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.route.cmp(&b.route))
                .then_with(|| a.method.cmp(&b.method))
                .then_with(|| a.status_class.cmp(&b.status_class))
        });
        RequestSummary {
            tracked,
            total: by_route.iter().map(|r| r.count).sum(),
            without_tenant: scope.is_none().then_some(without_tenant),
            by_route,
            latency: LatencySummary {
                last_minute: Percentiles::of(&recent),
                since_start: Percentiles::of(&total),
            },
        }
    }

    /// Every request series, summed over tenants, ordered by route, method
    /// and status.
    pub fn series(&self) -> Vec<RouteSeries> {
        let mut merged: HashMap<(&'static str, String, u16), RouteStats> = HashMap::new();
        for shard in self.shards() {
            let data = shard.data();
            for (key, stats) in &data.routes {
                merged
                    .entry((key.method, key.route.clone(), key.status))
                    .or_default()
                    .add(stats);
            }
        }
        let mut series: Vec<RouteSeries> = merged
            .into_iter()
            .map(|((method, route, status), stats)| {
                let mut cumulative = stats.buckets;
                for i in 1..cumulative.len() {
                    cumulative[i] += cumulative[i - 1];
                }
                RouteSeries {
                    method,
                    route,
                    status,
                    count: stats.count,
                    sum_seconds: stats.sum_micros as f64 / 1e6,
                    cumulative,
                }
            })
            .collect();
        series.sort_by(|a, b| {
            (a.route.as_str(), a.method, a.status).cmp(&(b.route.as_str(), b.method, b.status))
        });
        series
    }
}

/// What the metrics middleware of one worker needs: the server's metrics and
/// the worker's own shard (app data).
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// The server's metrics.
    pub metrics: Arc<RequestMetrics>,
    /// This worker's shard.
    pub shard: Arc<Shard>,
}

/// Middleware (just inside the request-id one, so it sees every answer,
/// 401s included): records each answered request's method, route template,
/// status, tenant (once the tenant middleware resolved it) and latency in the
/// worker's shard. Does nothing when the metrics are off.
pub async fn record_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let worker = req
        .app_data::<web::Data<WorkerMetrics>>()
        .filter(|w| w.metrics.enabled())
        .cloned();
    let Some(worker) = worker else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let started = Instant::now();
    let method = req.method().clone();
    let result = next.call(req).await;
    match &result {
        Ok(response) => {
            let request = response.request();
            let extensions = request.extensions();
            worker.metrics.record(
                &worker.shard,
                extensions.get::<TenantId>(),
                &method,
                request.match_pattern(),
                response.status().as_u16(),
                started.elapsed(),
            );
        }
        // The request is gone with the error: its route is unknown here.
        Err(error) => worker.metrics.record(
            &worker.shard,
            None,
            &method,
            None,
            error.as_response_error().status_code().as_u16(),
            started.elapsed(),
        ),
    }
    Ok(result?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    #[test]
    fn shards_merge_and_tenants_past_the_cap_are_pooled() {
        let metrics = RequestMetrics::new(true, 2).unwrap();
        let (a, b) = (metrics.shard(), metrics.shard());
        let route = || Some("/api/v1/discovery/services/{service_name}".to_owned());
        let ms = Duration::from_millis;
        for (shard, t, d) in [(&a, "t1", 1), (&b, "t1", 3), (&a, "t2", 2), (&b, "t3", 5)] {
            metrics.record(shard, Some(&tenant(t)), &Method::GET, route(), 200, ms(d));
        }
        metrics.record(&a, None, &Method::GET, None, 401, ms(1));
        let t1 = metrics.summary(Some(&tenant("t1")));
        assert!(t1.tracked);
        assert_eq!(t1.total, 2);
        assert_eq!(t1.latency.since_start.count, 2);
        assert!(t1.latency.since_start.p99_ms.unwrap() >= 2.9);
        let t3 = metrics.summary(Some(&tenant("t3")));
        assert!(!t3.tracked);
        assert_eq!(t3.total, 0);
        let all = metrics.summary(None);
        assert_eq!(all.total, 5);
        assert_eq!(all.without_tenant, Some(1));
        assert!(
            all.by_route
                .iter()
                .any(|r| r.route == UNMATCHED_ROUTE && r.status_class == "4xx")
        );
        assert_eq!(metrics.tenant_label(&tenant("t3")), "other");
        assert_eq!(metrics.tenant_label(&tenant("t2")), "t2");
        let series = metrics.series();
        let lookups = series.iter().find(|s| s.status == 200).unwrap();
        assert_eq!(lookups.count, 4);
        assert_eq!(*lookups.cumulative.last().unwrap(), 4);
    }

    #[test]
    fn the_window_keeps_the_last_four_slots_and_since_start_keeps_all() {
        let empty = Histogram::new_with_bounds(1, MAX_MICROS, 2).unwrap();
        let mut latency = Latency::new(&empty);
        // One sample per 15 s slot for 8 slots (two minutes), 1 ms more each time.
        for epoch in 0..8u64 {
            latency.record(epoch, 1000 * (epoch + 1));
        }
        let mut recent = empty.clone();
        latency.add_recent(7, &mut recent);
        assert_eq!(recent.len(), 4);
        // Slots 4 to 7 only (5 ms and up; 2 significant digits of precision).
        assert!(recent.equivalent(recent.min(), 5000), "{}", recent.min());
        let mut all = empty.clone();
        latency.add_all(&mut all);
        assert_eq!(all.len(), 8);
        // A minute later with nothing recorded, the window is empty.
        let mut later = empty.clone();
        latency.add_recent(11, &mut later);
        assert_eq!(later.len(), 0);
        // Two samples in one slot both count.
        latency.record(12, 2000);
        latency.record(12, 3000);
        let mut now = empty.clone();
        latency.add_recent(12, &mut now);
        assert_eq!(now.len(), 2);
        let mut all = empty.clone();
        latency.add_all(&mut all);
        assert_eq!(all.len(), 10, "nothing is lost when slots are reused");
    }

    #[test]
    fn off_records_nothing() {
        let metrics = RequestMetrics::new(false, 2).unwrap();
        let shard = metrics.shard();
        metrics.record(
            &shard,
            None,
            &Method::GET,
            None,
            200,
            Duration::from_millis(1),
        );
        assert!(metrics.series().is_empty());
        assert!(!metrics.summary(None).tracked);
    }
}
