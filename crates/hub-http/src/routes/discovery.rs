//! Discovery routes: register, list, get, deregister, heartbeat.

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use hub_core::{
    HealthStatus, Heartbeat, HeartbeatMetrics, InstanceId, ListCursor, ListQuery, Registration,
    RegistrationInput, Registry, RegistryError, ServiceName,
};

use crate::cache::ServiceBodyCache;
use crate::dto::{
    DeregisteredBody, HeartbeatBody, HeartbeatRequest, InstanceBody, ListBody, RegisterRequest,
    ServiceBody,
};
use crate::error::ApiError;
use crate::extract::{Change, JsonBody, Tenant};

/// Mounts the discovery routes under `/api/v1/discovery`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/discovery")
            .service(web::resource("/register").route(web::post().to(register)))
            .service(web::resource("/heartbeat").route(web::post().to(heartbeat)))
            .service(web::resource("/services").route(web::get().to(list)))
            .service(
                web::resource("/services/{service_name}")
                    .route(web::get().to(get_service))
                    .route(web::delete().to(deregister)),
            ),
    );
}

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

async fn register(
    Tenant(tenant): Tenant,
    Change(change): Change,
    registry: web::Data<Registry>,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let registration = Registration::try_from(RegistrationInput::from(body))?;
    let upserted = registry.register(&tenant, registration, &change).await?;
    let status = if upserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(InstanceBody::from(&upserted.instance)))
}

async fn list(
    Tenant(tenant): Tenant,
    registry: web::Data<Registry>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let mut service_name = None;
    let mut tags = Vec::new();
    let mut status = None;
    let mut limit = None;
    let mut cursor = None;
    for (key, value) in query_pairs(&req)? {
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
    let page = registry.list(&tenant, &query).await?;
    let services: Vec<InstanceBody<'_>> = page.instances.iter().map(InstanceBody::from).collect();
    Ok(HttpResponse::Ok().json(ListBody {
        count: services.len(),
        services,
        revision: page.revision,
        next_cursor: page.next.as_ref().map(ListCursor::encode),
        skipped: page.skipped,
    }))
}

async fn get_service(
    Tenant(tenant): Tenant,
    registry: web::Data<Registry>,
    cache: web::Data<ServiceBodyCache>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let service = path_service(&path)?;
    let found = registry.get(&tenant, &service).await?;
    let render = || {
        serde_json::to_vec(&ServiceBody {
            service_name: found.service_name.as_str(),
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
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

async fn deregister(
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

async fn heartbeat(
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
