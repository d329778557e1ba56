//! `GET /metrics`: this replica's figures in the Prometheus text exposition format, for operator keys only.
//!
//! Nothing is kept in a process-wide Prometheus registry: every scrape
//! builds a fresh [`prometheus::Registry`] from the hub's own counters (the
//! request metrics' shards, the registry's change counters, the rate-limit
//! rejections, the event delivery state), so several apps in one process (the
//! tests) never share or clash over series. A scrape is rare; its cost is the
//! merge of the shards and one read of the outbox backlog.
//!
//! **Bounded series.** Tenant labels go through
//! [`RequestMetrics::tenant_label`]: the first `HUB_METRICS_MAX_TENANTS`
//! tenants keep their id, the rest are summed under `other`, so a flood of
//! tenants cannot explode the number of series. Request series carry the
//! route template, never the raw path. A template's `{name}` segments are
//! written `:name` in the label (`/api/v1/discovery/services/:service_name`):
//! the exposition format allows braces in label values, but several parsers
//! (prometheus-parse among them) cut a label set at the first `}`.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use hub_core::monitor::{BackendStatus, Monitor, MonitorSnapshot};
use hub_core::ratelimit::Limits;
use hub_core::{Registry, SinkStatus, StatusCounts, TenantId};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder,
};

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::metrics::{BUCKETS_SECONDS, RequestMetrics};
use crate::routes::dashboard::Events;

/// The path of the Prometheus endpoint.
pub const METRICS_PATH: &str = "/metrics";

fn internal(error: &prometheus::Error) -> ApiError {
    ApiError::internal(error)
}

/// Only operators (or anyone when authentication is off) may scrape: the
/// series name tenants and count across them.
fn require_operator(req: &HttpRequest) -> Result<(), ApiError> {
    match req.extensions().get::<Principal>() {
        Some(Principal::Operator { .. } | Principal::Anonymous) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_key_required",
            "GET /metrics needs an operator key: it covers every tenant",
        )),
    }
}

/// This replica's figures for Prometheus.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitoring",
    operation_id = "prometheus_metrics",
    summary = "This replica's figures in the Prometheus text exposition format (operator keys only)",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4: HTTP requests and latency by method, route template and status; instances by tenant and status; registry changes, lease expirations and rate-limit rejections by tenant; events published and failed and outbox backlog by bus; backend up/down and check latency.",
            body = String, content_type = "text/plain; version=0.0.4",
            example = "# TYPE hub_backend_up gauge\nhub_backend_up{backend=\"postgres\"} 1\n"),
        (status = 403, description = "`operator_key_required`: a key bound to tenants may not scrape (the series cover every tenant).", body = ErrorBody),
    ),
)]
pub(crate) async fn scrape(
    req: HttpRequest,
    requests: web::Data<RequestMetrics>,
    registry: web::Data<Registry>,
    limits: web::Data<Limits>,
    events: web::Data<Events>,
    monitor: web::Data<Monitor>,
    watch: web::Data<crate::routes::watch::WatchDeps>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&req)?;
    let sinks = events.sinks(None).await?;
    let instances = registry.status_counts_by_tenant().await?;
    let scraped = Scraped {
        sinks: &sinks,
        instances: &instances,
        backends: &monitor.snapshot(),
    };
    let mut families = gather(&requests, &registry, &limits, &scraped).map_err(|e| internal(&e))?;
    families.extend(watch_families(&watch.hub).map_err(|e| internal(&e))?);
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    encoder
        .encode(&families, &mut body)
        .map_err(|e| internal(&e))?;
    let mut response = HttpResponse::Ok().body(body);
    if let Ok(value) = HeaderValue::from_str(encoder.format_type()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// The watch hub's series: open streams, events delivered, lagged cut-offs.
pub fn watch_families(
    hub: &hub_core::watch::WatchHub,
) -> Result<Vec<MetricFamily>, prometheus::Error> {
    let figures = hub.figures();
    let out = prometheus::Registry::new();
    let open = IntGauge::with_opts(Opts::new(
        "hub_watch_streams_open",
        "Watch streams (SSE) open on this replica now",
    ))?;
    open.set(i64::try_from(figures.open).unwrap_or(i64::MAX));
    out.register(Box::new(open))?;
    let delivered = IntCounter::with_opts(Opts::new(
        "hub_watch_events_delivered_total",
        "Events this replica wrote to watch streams since it started",
    ))?;
    delivered.inc_by(figures.delivered);
    out.register(Box::new(delivered))?;
    let lagged = IntCounter::with_opts(Opts::new(
        "hub_watch_lagged_total",
        "Watch streams this replica ended because their reader fell behind its buffer, since it started",
    ))?;
    lagged.inc_by(figures.lagged);
    out.register(Box::new(lagged))?;
    let waiting = IntGauge::with_opts(Opts::new(
        "hub_blocking_queries_waiting",
        "Blocking queries (?index=) waiting on this replica now",
    ))?;
    waiting.set(i64::try_from(figures.waiting).unwrap_or(i64::MAX));
    out.register(Box::new(waiting))?;
    Ok(out.gather())
}

/// What a scrape reads from the store and the monitor before rendering.
#[derive(Debug)]
pub struct Scraped<'a> {
    /// Event delivery per bus (every tenant's backlog).
    pub sinks: &'a [SinkStatus],
    /// Instances by status, per tenant (each counted in its own scope).
    pub instances: &'a [(TenantId, StatusCounts)],
    /// The infrastructure monitor's view of each backend.
    pub backends: &'a MonitorSnapshot,
}

/// Builds every family of one scrape in a registry of its own.
pub fn gather(
    requests: &RequestMetrics,
    registry: &Registry,
    limits: &Limits,
    scraped: &Scraped<'_>,
) -> Result<Vec<MetricFamily>, prometheus::Error> {
    let sinks = scraped.sinks;
    let out = prometheus::Registry::new();
    out.register(Box::new(request_histogram(requests)?))?;

    let requests_total = IntCounterVec::new(
        Opts::new(
            "hub_http_requests_total",
            "HTTP requests answered by this replica since it started, by method, route template and status",
        ),
        &["method", "route", "status"],
    )?;
    for s in requests.series() {
        requests_total
            .with_label_values(&[s.method, &route_label(&s.route), &s.status.to_string()])
            .inc_by(s.count);
    }
    out.register(Box::new(requests_total))?;

    let tenant = |t: &TenantId| requests.tenant_label(t).to_owned();

    let changes = IntCounterVec::new(
        Opts::new(
            "hub_registry_changes_total",
            "Registry changes made through this replica since it started, by tenant and kind",
        ),
        &["tenant", "kind"],
    )?;
    let expirations = IntCounterVec::new(
        Opts::new(
            "hub_lease_expirations_total",
            "Leases that ran out (outcome critical) and instances removed after staying expired (outcome removed), by tenant",
        ),
        &["tenant", "outcome"],
    )?;
    for (t, c) in registry.change_counts_by_tenant() {
        let t = tenant(&t);
        for (kind, n) in [
            ("registration", c.registrations),
            ("update", c.updates),
            ("deregistration", c.deregistrations),
            ("status_change", c.status_changes),
        ] {
            changes.with_label_values(&[t.as_str(), kind]).inc_by(n);
        }
        for (outcome, n) in [
            ("critical", c.expired_to_critical),
            ("removed", c.expired_removed),
        ] {
            expirations
                .with_label_values(&[t.as_str(), outcome])
                .inc_by(n);
        }
    }
    out.register(Box::new(changes))?;
    out.register(Box::new(expirations))?;

    let rejections = IntCounterVec::new(
        Opts::new(
            "hub_rate_limit_rejections_total",
            "Requests refused with 429 by this replica since it started, by tenant",
        ),
        &["tenant"],
    )?;
    for (t, n) in limits.all_rejections() {
        rejections
            .with_label_values(&[tenant(&t).as_str()])
            .inc_by(n);
    }
    out.register(Box::new(rejections))?;

    let fallbacks = IntCounter::with_opts(Opts::new(
        "hub_lease_cache_fallbacks_total",
        "Heartbeats this replica sent to the store because the lease cache failed, since it started",
    ))?;
    fallbacks.inc_by(registry.lease_status().fallbacks);
    out.register(Box::new(fallbacks))?;
    store_figures(&out, registry)?;

    let published = IntCounterVec::new(
        Opts::new(
            "hub_events_published_total",
            "Events this replica delivered to a bus since it started",
        ),
        &["bus"],
    )?;
    let failed = IntCounterVec::new(
        Opts::new(
            "hub_events_failed_total",
            "Failed attempts of this replica to deliver events to a bus since it started",
        ),
        &["bus"],
    )?;
    let backlog = GaugeVec::new(
        Opts::new(
            "hub_outbox_backlog",
            "Events owed to a bus (outbox rows in PostgreSQL mode, the queue in embedded mode)",
        ),
        &["bus"],
    )?;
    for sink in sinks {
        let bus = sink.sink.as_str();
        published.with_label_values(&[bus]).inc_by(sink.published);
        failed.with_label_values(&[bus]).inc_by(sink.failures);
        if let Some(b) = &sink.backlog {
            backlog.with_label_values(&[bus]).set(b.pending as f64);
        }
    }
    out.register(Box::new(published))?;
    out.register(Box::new(failed))?;
    out.register(Box::new(backlog))?;

    // Tenants past the label cap are summed under `other`, so the gauge is
    // built from sums, not set per tenant.
    let mut by_label: HashMap<String, StatusCounts> = HashMap::new();
    for (t, c) in scraped.instances {
        let entry = by_label.entry(tenant(t)).or_default();
        *entry = entry.plus(*c);
    }
    let instances = IntGaugeVec::new(
        Opts::new(
            "hub_instances",
            "Registered instances by tenant and status, as the store holds them at scrape time",
        ),
        &["tenant", "status"],
    )?;
    for (t, c) in &by_label {
        for (status, n) in [
            ("passing", c.passing),
            ("warning", c.warning),
            ("critical", c.critical),
        ] {
            instances
                .with_label_values(&[t.as_str(), status])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    out.register(Box::new(instances))?;

    let backend_up = IntGaugeVec::new(
        Opts::new(
            "hub_backend_up",
            "1 when the infrastructure monitor's last check of a configured backend succeeded, else 0",
        ),
        &["backend"],
    )?;
    let backend_latency = GaugeVec::new(
        Opts::new(
            "hub_backend_check_latency_seconds",
            "Round trip of the infrastructure monitor's last check of a backend",
        ),
        &["backend"],
    )?;
    let backend_failures = IntCounterVec::new(
        Opts::new(
            "hub_backend_check_failures_total",
            "Checks of a backend that failed or timed out since this replica started",
        ),
        &["backend"],
    )?;
    for b in &scraped.backends.backends {
        if b.status == BackendStatus::NotConfigured {
            continue;
        }
        let name = b.backend.as_str();
        backend_up
            .with_label_values(&[name])
            .set(i64::from(b.status == BackendStatus::Up));
        backend_failures
            .with_label_values(&[name])
            .inc_by(b.failures);
        if let Some(ms) = b.latency_ms {
            backend_latency.with_label_values(&[name]).set(ms / 1000.0);
        }
    }
    out.register(Box::new(backend_up))?;
    out.register(Box::new(backend_latency))?;
    out.register(Box::new(backend_failures))?;

    let started = IntGauge::with_opts(Opts::new(
        "hub_replica_start_time_seconds",
        "When this replica started (Unix time): every counter here counts from then",
    ))?;
    started.set(requests.started_at().timestamp());
    out.register(Box::new(started))?;

    Ok(out.gather())
}

/// The request latency histogram, built from the shards' bucket counts (the
/// prometheus crate's own histogram type can only observe samples).
struct Prebuilt {
    desc: Desc,
    family: MetricFamily,
}

impl Collector for Prebuilt {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![self.family.clone()]
    }
}

/// The route label of a template: `{name}` segments as `:name`.
pub fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn request_histogram(requests: &RequestMetrics) -> Result<Prebuilt, prometheus::Error> {
    const NAME: &str = "hub_http_request_duration_seconds";
    const HELP: &str = "Latency of HTTP requests answered by this replica since it started, by method, route template and status";
    let labels = ["method", "route", "status"];
    let desc = Desc::new(
        NAME.to_owned(),
        HELP.to_owned(),
        labels.iter().map(|l| (*l).to_owned()).collect(),
        HashMap::new(),
    )?;
    let metrics = requests
        .series()
        .into_iter()
        .map(|s| {
            let mut histogram = Histogram::default();
            histogram.set_sample_count(s.count);
            histogram.set_sample_sum(s.sum_seconds);
            histogram.set_bucket(
                BUCKETS_SECONDS
                    .iter()
                    .zip(s.cumulative)
                    .map(|(&bound, count)| {
                        let mut bucket = Bucket::default();
                        bucket.set_upper_bound(bound);
                        bucket.set_cumulative_count(count);
                        bucket
                    })
                    .collect(),
            );
            let mut metric = Metric::default();
            let status = s.status.to_string();
            metric.set_label(vec![
                label("method", s.method),
                label("route", &route_label(&s.route)),
                label("status", &status),
            ]);
            metric.set_histogram(histogram);
            metric
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(NAME.to_owned());
    family.set_help(HELP.to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(metrics);
    Ok(Prebuilt { desc, family })
}

/// The store's machinery, when it has any: the PostgreSQL-mode lookup cache
/// (whether its change listener is connected, and what it did) and group
/// commit. Families appear only in the modes that have them.
fn store_figures(out: &prometheus::Registry, registry: &Registry) -> prometheus::Result<()> {
    let figures = registry.store_figures();
    let counter = |name: &str, help: &str, value: u64| -> prometheus::Result<()> {
        let counter = IntCounter::with_opts(Opts::new(name, help))?;
        counter.inc_by(value);
        out.register(Box::new(counter))
    };
    let gauge = |name: &str, help: &str, value: u64| -> prometheus::Result<()> {
        let gauge = IntGauge::with_opts(Opts::new(name, help))?;
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        out.register(Box::new(gauge))
    };
    if let Some(cache) = figures.lookup_cache {
        gauge(
            "hub_lookup_cache_listening",
            "1 while this replica's change listener (LISTEN on PostgreSQL) is connected, so cached lookups last until their service changes; 0 while cached lookups fall back to HUB_LOOKUP_CACHE_MS",
            u64::from(cache.listening),
        )?;
        gauge(
            "hub_lookup_cache_entries",
            "Services whose lookups this replica holds in memory now",
            u64::try_from(cache.entries).unwrap_or(u64::MAX),
        )?;
        counter(
            "hub_lookup_cache_hits_total",
            "Service lookups this replica answered from memory since it started",
            cache.hits,
        )?;
        counter(
            "hub_lookup_cache_misses_total",
            "Service lookups this replica read from PostgreSQL since it started",
            cache.misses,
        )?;
        counter(
            "hub_lookup_cache_invalidations_total",
            "Cached lookups dropped because their service changed (here or, by notification, on another replica) since this replica started",
            cache.invalidations,
        )?;
        counter(
            "hub_lookup_cache_flushes_total",
            "Times this replica dropped every cached lookup (its change listener connected or was lost) since it started",
            cache.flushes,
        )?;
        counter(
            "hub_lookup_cache_evictions_total",
            "Cached lookups evicted to stay within HUB_LOOKUP_CACHE_ENTRIES since this replica started",
            cache.evictions,
        )?;
    }
    if let Some(batches) = figures.write_batches {
        counter(
            "hub_pg_write_batches_total",
            "Grouped transactions (group commit) this replica committed since it started",
            batches.batches,
        )?;
        counter(
            "hub_pg_write_batch_changes_total",
            "Registrations and lease renewals committed in grouped transactions since this replica started",
            batches.changes,
        )?;
        counter(
            "hub_pg_write_bypassed_total",
            "Changes that left their batch because a row they needed was locked elsewhere (their tenant then commits alone for 2 s) since this replica started",
            batches.bypassed,
        )?;
    }
    Ok(())
}
