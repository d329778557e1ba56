//! Discovery routes: register, list, get, deregister, heartbeat.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use hub_core::{
    HealthStatus, Heartbeat, HeartbeatMetrics, InstanceId, ListCursor, ListQuery, Registration,
    RegistrationInput, Registry, RegistryError, ServiceName,
};

use actix_web::ResponseError;
use actix_web::http::header::{HeaderName, HeaderValue};

use crate::blocking::{Blocking, index_header};
use crate::cache::ServiceBodyCache;
use crate::dto::{
    DeregisteredBody, HeartbeatBody, HeartbeatRequest, InstanceBody, ListBody, RegisterRequest,
    ServiceBody,
};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Change, JsonBody, Tenant};
use crate::routes::watch::WatchDeps;

/// Query-string pairs; repeated keys (such as `tag`) are kept.
fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("query string could not be read: {e}"),
        )
    })
}

fn path_service(raw: &str) -> Result<ServiceName, ApiError> {
    Ok(ServiceName::parse(raw)?)
}

/// Registers an instance (201) or updates the one with the same instance id (200).
#[utoipa::path(
    post,
    path = "/api/v1/discovery/register",
    tag = "discovery",
    operation_id = "register",
    summary = "Register (201) or update (200) an instance",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered: the stored instance.", body = InstanceBody),
        (status = 200, description = "Updated an instance with this id: the stored instance.", body = InstanceBody),
        (status = 422, description = "`validation_failed`: a field broke a rule; the message names it.", body = ErrorBody,
            example = json!({"error": {"code": "validation_failed", "message": "host: missing field `host`", "request_id": "5b0f3c52-4c1e-4a0e-9a57-2f7e1c1d0b6e"}})),
        (status = 429, description = "`quota_exceeded`: a new instance past the tenant's `max_instances` (updates never are); or `rate_limited`.", body = ErrorBody,
            example = json!({"error": {"code": "quota_exceeded", "message": "the tenant is at its limit: max_instances is 10", "request_id": "5b0f3c52-4c1e-4a0e-9a57-2f7e1c1d0b6e"}})),
    ),
)]
pub(crate) async fn register(
    Tenant(tenant): Tenant,
    Change(change): Change,
    registry: web::Data<Registry>,
    req: HttpRequest,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let registration = Registration::try_from(RegistrationInput::from(body))?;
    // The tenant's record, as the authorization middleware admitted it
    // (at most ~500 ms old): its instance quota applies.
    let max_instances = req
        .extensions()
        .get::<std::sync::Arc<hub_core::tenancy::Tenant>>()
        .and_then(|t| t.limits.max_instances);
    let upserted = registry
        .register_limited(&tenant, registration, &change, max_instances)
        .await?;
    let status = if upserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(InstanceBody::from(&upserted.instance)))
}

/// The tenant's instances, filtered and paged.
#[utoipa::path(
    get,
    path = "/api/v1/discovery/services",
    tag = "discovery",
    operation_id = "list_services",
    summary = "The tenant's instances",
    params(
        ("service_name" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,128}$", description = "Only this service."),
        ("tag" = Option<Vec<crate::openapi::TagDoc>>, Query, explode = true, style = Form,
            description = "Only instances carrying every given tag (repeatable)."),
        ("status" = Option<crate::openapi::HealthStatusDoc>, Query, description = "Only instances in this state."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000,
            description = "Page size, 1-10000, default 1000 (a page also ends at 4 MiB)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
        ("index" = Option<u64>, Query, minimum = 0,
            description = "Blocking query: wait until the revision passes this `X-Hub-Index` (0, or one older than the current revision, answers at once)."),
        ("wait" = Option<String>, Query,
            description = "How long a blocking query waits: `10s`, `5m`, `500ms` or plain seconds; default 5m, at most 10m, plus up to 1/16 jitter."),
    ),
    responses(
        (status = 200, description = "One page of instances; `next_cursor` when another follows.", body = ListBody,
            headers(("X-Hub-Index" = u64, description = "The tenant revision this answer reflects.")),
            example = json!({"services": [], "count": 0, "revision": 0})),
        (status = 422, description = "`validation_failed`: a query parameter broke a rule; the message names it.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    Tenant(tenant): Tenant,
    registry: web::Data<Registry>,
    watch: web::Data<WatchDeps>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut blocking = Blocking::default();
    let mut service_name = None;
    let mut tags = Vec::new();
    let mut status = None;
    let mut limit = None;
    let mut cursor = None;
    for (key, value) in query_pairs(&req)? {
        if blocking.take(&key, &value)? {
            continue;
        }
        match key.as_str() {
            "service_name" => service_name = Some(ServiceName::parse(value)?),
            "tag" => tags.push(value),
            "status" => status = Some(value.parse::<HealthStatus>()?),
            "limit" => {
                limit = Some(value.parse::<i64>().map_err(|_| {
                    hub_core::ValidationError::new(
                        "limit",
                        format!("{value:?} is not a whole number"),
                    )
                })?)
            }
            "cursor" => cursor = Some(ListCursor::decode(&value)?),
            // Unknown parameters are ignored, as most HTTP APIs do.
            _ => {}
        }
    }
    let query = ListQuery::new(service_name, tags, status, limit, cursor)?;
    let mut page = registry.list(&tenant, &query).await?;
    if blocking.wait(&watch, &tenant, None, page.revision).await? {
        page = registry.list(&tenant, &query).await?;
    }
    let services: Vec<InstanceBody<'_>> = page.instances.iter().map(InstanceBody::from).collect();
    let mut response = HttpResponse::Ok();
    index_header(&mut response, page.revision);
    Ok(response.json(ListBody {
        count: services.len(),
        services,
        revision: page.revision,
        next_cursor: page.next.as_ref().map(ListCursor::encode),
        skipped: page.skipped,
    }))
}

/// The instances of one service.
#[utoipa::path(
    get,
    path = "/api/v1/discovery/services/{service_name}",
    tag = "discovery",
    operation_id = "get_service",
    summary = "The instances of one service",
    params(
        ("service_name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$", description = "The service's name."),
        ("index" = Option<u64>, Query, minimum = 0,
            description = "Blocking query: wait until this service changes after this `X-Hub-Index` (0, or one older than the current revision, answers at once)."),
        ("wait" = Option<String>, Query,
            description = "How long a blocking query waits: `10s`, `5m`, `500ms` or plain seconds; default 5m, at most 10m, plus up to 1/16 jitter."),
    ),
    responses(
        (status = 200, description = "The service and its instances.", body = ServiceBody,
            headers(("X-Hub-Index" = u64, description = "The tenant revision this answer reflects."))),
        (status = 404, description = "`not_found`: the tenant has no such service.", body = ErrorBody,
            headers(("X-Hub-Index" = u64, description = "The tenant revision this answer reflects.")),
            example = json!({"error": {"code": "not_found", "message": "service 'api-gateway-tenant1' not found", "request_id": "5b0f3c52-4c1e-4a0e-9a57-2f7e1c1d0b6e"}})),
        (status = 422, description = "`validation_failed`: the name broke a rule.", body = ErrorBody),
    ),
)]
pub(crate) async fn get_service(
    Tenant(tenant): Tenant,
    registry: web::Data<Registry>,
    cache: web::Data<ServiceBodyCache>,
    watch: web::Data<WatchDeps>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let service = path_service(&path)?;
    let mut blocking = Blocking::default();
    for (key, value) in query_pairs(&req)? {
        blocking.take(&key, &value)?;
    }
    let mut found = registry.service_snapshot(&tenant, &service).await?;
    if blocking
        .wait(&watch, &tenant, Some(&service), found.revision)
        .await?
    {
        found = registry.service_snapshot(&tenant, &service).await?;
    }
    if found.instances.is_empty() && found.skipped == 0 {
        let mut response = ApiError::from(RegistryError::not_found(format!("service '{service}'")))
            .error_response();
        if let Ok(value) = HeaderValue::from_str(&found.revision.get().to_string()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-hub-index"), value);
        }
        return Ok(response);
    }
    let render = || {
        serde_json::to_vec(&ServiceBody {
            service_name: service.as_str(),
            instances: found.instances.iter().map(InstanceBody::from).collect(),
            revision: found.revision,
            skipped: found.skipped,
        })
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(&e))
    };
    // The cache's stamp does not cover rows that could not be read (they
    // change behind the API's back), so such an answer is never kept.
    let body = if found.skipped > 0 {
        render()?
    } else {
        cache.get_or_render(&tenant, &service, found.revision, &found.instances, render)?
    };
    let mut response = HttpResponse::Ok();
    index_header(&mut response, found.revision);
    Ok(response.content_type(ContentType::json()).body(body))
}

/// Deregisters every instance of a service, or one with `?instance_id=`.
#[utoipa::path(
    delete,
    path = "/api/v1/discovery/services/{service_name}",
    tag = "discovery",
    operation_id = "deregister",
    summary = "Deregister a service's instances, or one",
    params(
        ("service_name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$", description = "The service's name."),
        ("instance_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "Only this instance."),
    ),
    responses(
        (status = 200, description = "How many instances were removed.", body = DeregisteredBody),
        (status = 404, description = "`not_found`: nothing to deregister.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the name or instance id broke a rule.", body = ErrorBody),
    ),
)]
pub(crate) async fn deregister(
    Tenant(tenant): Tenant,
    Change(change): Change,
    registry: web::Data<Registry>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let service = path_service(&path)?;
    let mut instance = None;
    for (key, value) in query_pairs(&req)? {
        if key == "instance_id" {
            instance = Some(InstanceId::parse(value)?);
        }
    }
    let deregistered = registry
        .deregister(&tenant, &service, instance.as_ref(), &change)
        .await?;
    Ok(HttpResponse::Ok().json(DeregisteredBody { deregistered }))
}

/// Renews an instance's lease and records its state and metrics.
#[utoipa::path(
    post,
    path = "/api/v1/discovery/heartbeat",
    tag = "discovery",
    operation_id = "heartbeat",
    summary = "Renew a lease (never rate-limited)",
    request_body(content = HeartbeatRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The renewed lease.", body = HeartbeatBody),
        (status = 404, description = "`not_found`: the instance is not registered; register it again.", body = ErrorBody),
        (status = 409, description = "`conflict`: its stored row cannot be read; deregister and register again.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field broke a rule; the message names it.", body = ErrorBody),
    ),
)]
pub(crate) async fn heartbeat(
    Tenant(tenant): Tenant,
    Change(change): Change,
    registry: web::Data<Registry>,
    JsonBody(body): JsonBody<HeartbeatRequest>,
) -> Result<HttpResponse, ApiError> {
    let service = ServiceName::parse(body.service_name)?;
    let instance = body.instance_id.map(InstanceId::parse).transpose()?;
    let status = match body.status {
        Some(s) => s.parse::<HealthStatus>()?,
        None => HealthStatus::Passing,
    };
    let metrics = body
        .metrics
        .map(|m| {
            HeartbeatMetrics::new(
                m.response_time_ms,
                m.cpu_usage,
                m.memory_usage,
                m.error_rate,
            )
        })
        .transpose()?;
    let renewed = registry
        .heartbeat(
            &tenant,
            &service,
            instance.as_ref(),
            &Heartbeat::new(status, metrics),
            &change,
        )
        .await
        .map_err(|e| match e {
            RegistryError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} is not registered; register it again"),
            ),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(HeartbeatBody {
        status: renewed.status(),
        lease_expires_at: renewed.lease_expires_at(),
        service_name: renewed.service_name().as_str(),
        instance_id: renewed.instance_id().as_str(),
        revision: renewed.revision(),
    }))
}
