//! `GET /api/v1/discovery/watch`: the tenant's registry events as Server-Sent Events (snapshot or replay, then live), resumable by revision.
//!
//! The wire format (h5's client depends on it):
//! - `event: snapshot`, `id: R`, `data: {"revision":R,"instances":[...]}` first
//!   when neither `since` nor `Last-Event-ID` is given;
//! - `event: <envelope type>`, `id: R`, `data: <envelope>` for every change
//!   after the start point, in revision order; when several events share a
//!   revision, only the last carries the `id:` line, so that resuming from an
//!   id never skips half a revision;
//! - `event: reset`, `id: R`, `data: {"revision":R,"instances":[...],
//!   "oldest_retained":M,"requested":K}` when the revision asked for is older
//!   than what is retained (then live events follow);
//! - `event: lagged`, `data: {"resume_from":R}`, then the end of the stream,
//!   for a reader slower than its bounded buffer;
//! - `: keep-alive` every `HUB_WATCH_KEEPALIVE_SECS`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::stream;
use hub_core::watch::{Group, Start, Subscription, WatchFilter, WatchHub, WatchLimit, WatchPermit};
use hub_core::{
    EventKind, Instance, ListCursor, ListQuery, MAX_LIST_LIMIT, Registry, Revision, ServiceName,
    TenantId, ValidationError,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::dto::InstanceBody;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Tenant;

/// What the watch route needs besides the registry: the hub and the
/// keep-alive interval.
#[derive(Debug, Clone)]
pub struct WatchDeps {
    /// The watch hub (shared by every worker).
    pub hub: WatchHub,
    /// How often an idle stream gets a `: keep-alive` comment.
    pub keepalive: Duration,
    /// The longest a blocking query waits (`HUB_BLOCKING_MAX_WAIT_SECS`).
    pub max_wait: Duration,
}

/// Groups written per wake-up of a stream: what a burst puts in one write.
const BATCH_GROUPS: usize = 64;

/// How a watch starts, read from the query string and `Last-Event-ID`.
#[derive(Debug, Default)]
struct WatchQuery {
    filter: WatchFilter,
    since: Option<Revision>,
}

fn revision_param(name: &str, value: &str) -> Result<Revision, ApiError> {
    value.trim().parse::<u64>().map(Revision::new).map_err(|_| {
        ValidationError::new(
            if name == "since" {
                "since"
            } else {
                "Last-Event-ID"
            },
            format!("{value:?} is not a revision (a whole number from 0)"),
        )
        .into()
    })
}

fn parse_query(req: &HttpRequest) -> Result<WatchQuery, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("query string could not be read: {e}"),
            )
        })?;
    let mut query = WatchQuery::default();
    for (key, value) in pairs {
        match key.as_str() {
            "service_name" => query.filter.services.push(ServiceName::parse(value)?),
            "type" => query.filter.kinds.push(EventKind::from_type_name(&value).ok_or_else(
                || {
                    ValidationError::new(
                        "type",
                        format!(
                            "{value:?} is not an event type (service.registered, service.updated, service.deregistered, service.status_changed, service.expired)"
                        ),
                    )
                },
            )?),
            "since" => query.since = Some(revision_param("since", &value)?),
            _ => {}
        }
    }
    // `Last-Event-ID` is what a reconnecting EventSource sends: it wins.
    if let Some(value) = req.headers().get("last-event-id") {
        let value = value
            .to_str()
            .map_err(|e| ApiError::invalid_header("Last-Event-ID", e))?;
        query.since = Some(revision_param("Last-Event-ID", value)?);
    }
    Ok(query)
}

fn limit_error(limit: &WatchLimit) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_watchers",
        format!("{limit}; close a watch before opening another"),
    )
}

/// The tenant's registry events as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/api/v1/discovery/watch",
    tag = "discovery",
    operation_id = "watch",
    summary = "Follow the tenant's registry events (Server-Sent Events, resumable by revision)",
    params(
        ("service_name" = Option<Vec<String>>, Query, explode = true, style = Form,
            description = "Only these services (repeatable)."),
        ("type" = Option<Vec<String>>, Query, explode = true, style = Form,
            description = "Only these event types (repeatable): service.registered, service.updated, service.deregistered, service.status_changed, service.expired."),
        ("since" = Option<u64>, Query, minimum = 0,
            description = "Replay every retained change after this revision, then follow. Without it (and without Last-Event-ID) the stream starts with a `snapshot` event."),
        ("Last-Event-ID" = Option<u64>, Header,
            description = "The last `id:` received; wins over `since`."),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `snapshot` (or `reset` when the revision asked for is no longer retained: the current snapshot with `oldest_retained` and `requested`), then one event per change named by its envelope type (`service.registered`...) with `id:` = the tenant revision and the envelope as data; `lagged` with `resume_from` ends the stream of a reader too slow for its buffer; `: keep-alive` comments keep proxies from closing it.",
            body = String, content_type = "text/event-stream",
            example = "event: snapshot\nid: 3\ndata: {\"revision\":3,\"instances\":[]}\n\n"),
        (status = 422, description = "`validation_failed`: a parameter broke a rule; the message names it.", body = ErrorBody),
        (status = 429, description = "`too_many_watchers`: the tenant or the key has as many watches open as allowed.", body = ErrorBody),
    ),
)]
pub(crate) async fn watch(
    Tenant(tenant): Tenant,
    registry: web::Data<Registry>,
    deps: web::Data<WatchDeps>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = parse_query(&req)?;
    let fingerprint = req
        .extensions()
        .get::<Principal>()
        .and_then(|p| p.fingerprint().map(str::to_owned));
    // The tenant's own `max_watchers`, from its record as the authorization
    // middleware admitted it, replaces the configured per-tenant limit.
    let tenant_limit = req
        .extensions()
        .get::<std::sync::Arc<hub_core::tenancy::Tenant>>()
        .and_then(|t| t.limits.max_watchers);
    let permit = deps
        .hub
        .acquire(&tenant, fingerprint.as_deref(), tenant_limit)
        .map_err(|e| limit_error(&e))?;
    let start = query.since.map_or(Start::Now, Start::After);
    let subscription = deps
        .hub
        .subscribe(&tenant, query.filter.clone(), start)
        .await?;
    let mut frames = VecDeque::new();
    let position;
    if let (Start::After(requested), None) = (start, subscription.compacted) {
        position = requested.get();
        for group in &subscription.replay {
            if let Some(frame) = render_group(group, &query.filter, position) {
                frames.push_back(frame);
            }
        }
    } else {
        let (revision, listed) = snapshot(&registry, &tenant, &query.filter).await?;
        position = revision.get();
        let bodies: Vec<InstanceBody<'_>> = listed.iter().map(InstanceBody::from).collect();
        let frame = match subscription.compacted {
            None => sse_frame(
                "snapshot",
                Some(revision.get()),
                &serde_json::to_string(&SnapshotData {
                    revision,
                    instances: &bodies,
                    oldest_retained: None,
                    requested: None,
                })
                .map_err(|e| ApiError::internal(&e))?,
            ),
            Some(compacted) => sse_frame(
                "reset",
                Some(revision.get()),
                &serde_json::to_string(&SnapshotData {
                    revision,
                    instances: &bodies,
                    oldest_retained: Some(compacted.oldest_retained),
                    requested: Some(compacted.requested),
                })
                .map_err(|e| ApiError::internal(&e))?,
            ),
        };
        drop(bodies);
        frames.push_back(frame);
    }
    let delivered: u64 = subscription.replay.iter().map(|g| g.len() as u64).sum();
    deps.hub.count_delivered(delivered);
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + deps.keepalive,
        deps.keepalive.max(Duration::from_millis(10)),
    );
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = StreamState {
        frames,
        closed: deps.hub.closed(),
        hub: deps.hub.clone(),
        subscription,
        filter: query.filter,
        position,
        keepalive,
        done: false,
        _permit: permit,
    };
    let body = stream::unfold(state, next_frame);
    let mut response = HttpResponse::Ok();
    response
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        // Tells nginx not to buffer the stream.
        .insert_header(("X-Accel-Buffering", HeaderValue::from_static("no")));
    Ok(response.streaming(body))
}

/// The data of `snapshot` and `reset`.
#[derive(Serialize)]
struct SnapshotData<'a> {
    revision: Revision,
    instances: &'a [InstanceBody<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_retained: Option<Revision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested: Option<Revision>,
}

/// The tenant's instances the filter wants, read page by page, and the
/// revision of the first page (changes made while later pages are read come
/// after it, so the stream replays them: a client applying them ends up
/// right).
async fn snapshot(
    registry: &Registry,
    tenant: &TenantId,
    filter: &WatchFilter,
) -> Result<(Revision, Vec<Instance>), ApiError> {
    let only = match filter.services.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let mut revision = None;
    let mut instances = Vec::new();
    let mut cursor: Option<ListCursor> = None;
    loop {
        let query = ListQuery::new(
            only.clone(),
            Vec::new(),
            None,
            Some(i64::try_from(MAX_LIST_LIMIT).unwrap_or(i64::MAX)),
            cursor.take(),
        )?;
        let page = registry.list(tenant, &query).await?;
        revision.get_or_insert(page.revision);
        instances.extend(
            page.instances
                .into_iter()
                .filter(|i| filter.wants_service(i.service_name())),
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok((revision.unwrap_or(Revision::ZERO), instances))
}

/// One SSE frame. `data` is one line (JSON without raw newlines).
fn sse_frame(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 32);
    push_frame(&mut out, event, id, data);
    Bytes::from(out)
}

fn push_frame(out: &mut String, event: &str, id: Option<u64>, data: &str) {
    use std::fmt::Write;
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
}

/// The frames of one revision's events the filter wants, after `position`;
/// the revision's id goes on the last of them.
fn render_group(group: &Group, filter: &WatchFilter, position: u64) -> Option<Bytes> {
    let mut out = String::new();
    render_into(&mut out, group, filter, position).then(|| Bytes::from(out))
}

fn render_into(out: &mut String, group: &Group, filter: &WatchFilter, position: u64) -> bool {
    let wanted: Vec<_> = group
        .iter()
        .filter(|e| e.revision() > position && filter.matches(e))
        .collect();
    let count = wanted.len();
    for (i, event) in wanted.into_iter().enumerate() {
        let id = (i + 1 == count).then_some(event.revision());
        push_frame(out, event.kind().as_str(), id, event.envelope());
    }
    count > 0
}

struct StreamState {
    frames: VecDeque<Bytes>,
    subscription: Subscription,
    filter: WatchFilter,
    /// Every wanted event up to this revision has been written (or was
    /// covered by the snapshot).
    position: u64,
    keepalive: tokio::time::Interval,
    closed: watch::Receiver<bool>,
    hub: WatchHub,
    done: bool,
    _permit: WatchPermit,
}

fn lagged_frame(position: u64) -> Bytes {
    sse_frame(
        "lagged",
        None,
        &serde_json::json!({ "resume_from": position }).to_string(),
    )
}

/// The stream's next bytes: queued frames first, then live events (several
/// revisions per write when they queue up), keep-alives while idle. Ends
/// after a `lagged` frame, and when the hub closes (server shutdown).
async fn next_frame(
    mut s: StreamState,
) -> Option<(Result<Bytes, std::convert::Infallible>, StreamState)> {
    if s.done {
        return None;
    }
    if let Some(frame) = s.frames.pop_front() {
        return Some((Ok(frame), s));
    }
    loop {
        if *s.closed.borrow() {
            return None;
        }
        if s.subscription.lagged.load(Ordering::Acquire) {
            s.done = true;
            let frame = lagged_frame(s.position);
            return Some((Ok(frame), s));
        }
        tokio::select! {
            biased;
            _ = s.closed.changed() => return None,
            group = s.subscription.live.recv() => {
                let Some(group) = group else {
                    // The hub dropped this subscriber: it lagged.
                    s.done = true;
                    let frame = lagged_frame(s.position);
                    return Some((Ok(frame), s));
                };
                let mut out = String::new();
                let mut events = 0u64;
                let mut next = Some(group);
                let mut taken = 0;
                while let Some(group) = next.take() {
                    if render_into(&mut out, &group, &s.filter, s.position) {
                        events += group.iter().filter(|e| s.filter.matches(e)).count() as u64;
                    }
                    s.position = s.position.max(group[0].revision());
                    taken += 1;
                    if taken < BATCH_GROUPS {
                        next = s.subscription.live.try_recv().ok();
                    }
                }
                if out.is_empty() {
                    continue;
                }
                s.hub.count_delivered(events);
                return Some((Ok(Bytes::from(out)), s));
            }
            _ = s.keepalive.tick() => {
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), s));
            }
        }
    }
}
