//! hub-http: the HTTP edge of Central Hub on actix-web: middleware, routes, wire types and error mapping.
//!
//! [`app`] builds the whole application for one worker; hub-server calls it
//! from its `HttpServer` factory and tests can call it the same way.

pub mod access;
pub mod admin_dto;
pub mod auth;
pub mod blocking;
mod cache;
mod context;
pub mod dto;
pub mod error;
pub mod extract;
pub mod jwt;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod tenancy;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, web};
use hub_core::Registry;
use hub_core::monitor::Monitor;
use hub_core::ratelimit::Limits;

pub use auth::{ApiKeys, Auth, Principal};
pub use error::{ApiError, MAX_BODY_BYTES};
pub use tenancy::{Tenancy, TenantsMode};

/// What the HTTP layer needs from the rest of the server. Each handler gets
/// only its own part (the registry, the auth settings) through actix's data.
#[derive(Debug, Clone)]
pub struct HttpDeps {
    /// The registry use cases.
    pub registry: Registry,
    /// How requests are authenticated.
    pub auth: Auth,
    /// The state of event delivery (dashboard).
    pub events: routes::dashboard::Events,
    /// How long a request body may take to arrive (`HUB_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Rate limits per tenant and per API key (shared by every worker).
    pub limits: Arc<Limits>,
    /// The infrastructure monitor's state (dashboard health).
    pub monitor: Monitor,
    /// Request metrics (shared by every worker; each worker records in its own shard).
    pub metrics: Arc<metrics::RequestMetrics>,
    /// Tenant records, keys created through the admin API, the tenants mode
    /// and the usage meter (shared by every worker, so a change made
    /// through one worker is seen by all at once).
    pub tenancy: Arc<Tenancy>,
    /// Verifies `Authorization: Bearer` tokens; `None` when no `HUB_JWT_*`
    /// key is configured (a bearer token is then 401 `invalid_token`).
    pub jwt: Option<jwt::JwtVerifier>,
    /// The watch hub and its keep-alive (watch streams and blocking queries).
    pub watch: routes::watch::WatchDeps,
}

async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::from_status(
        StatusCode::NOT_FOUND,
        req.method().as_str(),
        req.path(),
    ))
}

/// The application: middleware (request id, then request metrics, then
/// authentication, then tenant context, then authorization (scopes, tenant
/// state, usage), then rate limits, outermost first), routes, and the JSON
/// error fallback.
pub fn app(
    deps: HttpDeps,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    use actix_web::middleware::from_fn;
    App::new()
        .app_data(web::Data::new(deps.registry))
        .app_data(web::Data::new(deps.auth))
        .app_data(web::Data::new(deps.events))
        .app_data(web::Data::from(deps.limits))
        .app_data(web::Data::new(deps.monitor))
        .app_data(web::Data::new(deps.watch))
        .app_data(web::Data::new(metrics::WorkerMetrics {
            shard: deps.metrics.shard(),
            metrics: deps.metrics.clone(),
        }))
        .app_data(web::Data::from(deps.metrics))
        .app_data(web::Data::from(deps.tenancy))
        .app_data(web::Data::new(deps.jwt))
        // One table per worker, built from the route list at start.
        .app_data(web::Data::new(access::AccessTable::new()))
        // One cache per worker: `app` runs once per worker thread.
        .app_data(web::Data::new(cache::ServiceBodyCache::default()))
        .app_data(extract::payload_config())
        .app_data(extract::BodyTimeout(deps.body_timeout))
        .configure(routes::configure)
        .configure(openapi::configure_docs)
        .default_service(web::to(no_route))
        // `wrap` puts each middleware outside the previous one: the last is outermost.
        .wrap(from_fn(middleware::rate_limit))
        .wrap(from_fn(middleware::authorize))
        .wrap(from_fn(middleware::tenant))
        .wrap(from_fn(middleware::authenticate))
        .wrap(from_fn(metrics::record_requests))
        .wrap(from_fn(middleware::request_id))
}
