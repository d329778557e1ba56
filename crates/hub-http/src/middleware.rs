//! The middleware chain, outermost first: request id (with the access log and the headers every response carries), authentication, tenant context, rate limits.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpResponse, ResponseError, web};
use hub_core::TenantId;
use hub_core::ratelimit::{Limits, OwnQuota, RateDecision};
use tracing::Instrument;

use crate::access::{Access, AccessTable};
use crate::auth::{Auth, Principal};
use crate::context::{self, RequestContext};
use crate::error::ApiError;
use crate::jwt::JwtVerifier;
use crate::tenancy::Tenancy;

/// Request id header, echoed or generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Tenant header.
pub const TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
/// API key header.
pub const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Paths served without a key.
pub const PUBLIC_PATHS: [&str; 5] = [
    "/health",
    "/health/ready",
    "/docs",
    "/redoc",
    "/openapi.json",
];

/// Folders served without a key: the assets of Swagger UI (`/docs/...`) and
/// ReDoc (`/redoc/...`).
pub const PUBLIC_PREFIXES: [&str; 2] = ["/docs/", "/redoc/"];

/// Whether `path` is served without a key (and never rate-limited).
pub fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path) || PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// A client-sent request id is echoed only if it is short and plain, so it
/// cannot inject anything into logs or headers.
fn sane_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    ok.then(|| text.to_owned())
}

fn is_json(response: &HttpResponse) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Outermost middleware. Gives the request an id (echoed if the client sent a
/// sane one), opens the request context and tracing span, turns every error
/// (including actix's own plain-text rejections) into the JSON error body, adds
/// `X-Request-ID`, `X-Tenant-ID` and the [`SECURITY_HEADERS`] to the response,
/// and writes the access log
/// line: request id, tenant, method, path, status, latency. Never a key or a body.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().to_string();
    let path = req.path().to_owned();
    // For responses sent before the tenant middleware ran (a 401, say), the
    // X-Tenant-ID response header echoes a valid request header, or `system`
    // when there is none; an invalid one is not echoed.
    let claimed_tenant = match req.headers().get(&TENANT_ID) {
        None => Some(TenantId::system()),
        Some(v) => v.to_str().ok().and_then(|t| TenantId::parse(t).ok()),
    };
    let span = tracing::info_span!("request", request_id = %id, tenant = tracing::field::Empty);

    RequestContext::scope(
        id.clone(),
        async move {
            let result = next.call(req).await;
            // Everything below runs inside the request context, so error bodies
            // name the request id. An `Err` from downstream (which our own
            // middleware avoids, but actix may produce) is rendered here as well
            // and handed back pre-rendered, so the dispatcher sends exactly it.
            let finish = |response: HttpResponse| {
                let response = json_errors(response, &method, &path);
                finish_response(
                    response,
                    &id,
                    claimed_tenant.as_ref(),
                    &method,
                    &path,
                    started,
                )
            };
            match result {
                Ok(response) => {
                    let (request, response) = response.map_into_boxed_body().into_parts();
                    Ok(ServiceResponse::new(request, finish(response)))
                }
                Err(error) => {
                    let response = finish(error.error_response());
                    Err(InternalError::from_response(error.to_string(), response).into())
                }
            }
        }
        .instrument(span),
    )
    .await
}

/// Replaces a plain-text (or empty) error response by the JSON error body,
/// keeping headers actix set for a reason (`Allow` on 405, for example).
fn json_errors(response: HttpResponse, method: &str, path: &str) -> HttpResponse {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let mut new = ApiError::from_status(status, method, path).error_response();
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    new
}

/// Headers on every response this application sends, errors and the 404
/// fallback included. Every body is tenant data or an error about it, so no
/// cache (a shared proxy, a browser's disk) may keep it: `no-store`. And a
/// browser must not guess another type than the declared JSON: `nosniff`.
pub const SECURITY_HEADERS: [(HeaderName, &str); 2] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Adds `X-Request-ID`, `X-Tenant-ID` and the [`SECURITY_HEADERS`], and
/// writes the access log line.
fn finish_response(
    mut response: HttpResponse,
    id: &str,
    claimed_tenant: Option<&TenantId>,
    method: &str,
    path: &str,
    started: Instant,
) -> HttpResponse {
    let tenant = context::tenant();
    let resolved = tenant.is_some();
    let tenant = tenant.or_else(|| claimed_tenant.cloned());
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(tenant) = &tenant
        && let Ok(value) = HeaderValue::from_str(tenant.as_str())
    {
        headers.insert(TENANT_ID, value);
    }
    tracing::info!(
        target: "hub_http::access",
        request_id = %id,
        tenant = tenant.as_ref().filter(|_| resolved).map_or("-", TenantId::as_str),
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Authentication: `X-API-Key` must be a configured key or a key created
/// through the admin API (looked up by digest, see [`Tenancy`]), except on
/// public paths or when auth is disabled. An unknown, revoked or expired key
/// gets the same 401 `invalid_api_key`: an attacker learns nothing of which.
/// Without `X-API-Key`, `Authorization: Bearer <jwt>` is verified by the
/// [`JwtVerifier`]: its tenants bind it like a bound key and its scopes
/// apply; a refused token is 401 `invalid_token` with a `Bearer` challenge
/// whose description never quotes the token.
/// The principal goes into the request extensions for the tenant middleware.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let principal = match req.app_data::<web::Data<Auth>>().map(|a| a.get_ref()) {
        Some(Auth::Disabled) | None => Some(Principal::Anonymous),
        Some(Auth::Keys(keys)) => match credential(&req) {
            Credential::None if is_public(req.path()) => None,
            Credential::None => {
                return Ok(reject(
                    req,
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "missing_api_key",
                        "this endpoint needs an API key in the X-API-Key header",
                    ),
                ));
            }
            Credential::Key(presented) => {
                let mut principal = presented
                    .as_deref()
                    .and_then(|k| keys.authenticate(k))
                    .cloned();
                if principal.is_none()
                    && let (Some(presented), Some(tenancy)) =
                        (presented.as_deref(), req.app_data::<web::Data<Tenancy>>())
                {
                    principal = match tenancy.key_principal(presented).await {
                        Ok(p) => p,
                        Err(error) => return Ok(reject(req, error)),
                    };
                }
                match principal {
                    Some(p) => Some(p),
                    None if is_public(req.path()) => None,
                    None => {
                        return Ok(reject(
                            req,
                            ApiError::new(
                                StatusCode::UNAUTHORIZED,
                                "invalid_api_key",
                                "the API key in X-API-Key is not valid",
                            ),
                        ));
                    }
                }
            }
            Credential::Bearer(token) => {
                let verified = match req
                    .app_data::<web::Data<Option<JwtVerifier>>>()
                    .and_then(|v| v.get_ref().as_ref())
                {
                    None => Err("bearer tokens are not enabled on this server".to_owned()),
                    Some(verifier) => verifier.verify(&token).map_err(|e| e.to_string()),
                };
                match verified {
                    Ok(claims) => Some(Principal::Bound {
                        fingerprint: claims.fingerprint,
                        tenants: claims.tenants,
                        scopes: claims.scopes,
                    }),
                    Err(_) if is_public(req.path()) => None,
                    Err(description) => {
                        return Ok(reject(req, ApiError::invalid_token(&description)));
                    }
                }
            }
        },
    };
    if let Some(principal) = principal {
        req.extensions_mut().insert(principal);
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The credential a request presents. `X-API-Key` wins when both are sent.
enum Credential {
    None,
    /// The `X-API-Key` value (`None` when it is not valid header text: such
    /// a key is simply not one of ours).
    Key(Option<String>),
    /// The token of `Authorization: Bearer <token>`.
    Bearer(String),
}

fn credential(req: &ServiceRequest) -> Credential {
    if let Some(value) = req.headers().get(&API_KEY) {
        return Credential::Key(value.to_str().ok().map(str::to_owned));
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    match bearer {
        Some(token) => Credential::Bearer(token),
        None => Credential::None,
    }
}

/// Answers the request with an error without calling the rest of the chain.
/// Middleware rejects this way (not with `Err`) so the response is built
/// inside the request context.
fn reject(req: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(error.error_response())
}

/// Tenant context: `X-Tenant-ID` (1-100 of `[A-Za-z0-9_-]`), defaulting to
/// the key's first tenant for bound keys and `system` otherwise. An invalid
/// value is a 400, never silently replaced; a bound key used for another
/// tenant is a 403. The tenant goes into the request extensions (read by the
/// [`Tenant`](crate::extract::Tenant) extractor) and the request context.
pub async fn tenant(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let principal = req.extensions().get::<Principal>().cloned();
    let tenant = match resolve_tenant(&req, principal.as_ref()) {
        Ok(tenant) => tenant,
        Err(error) => return Ok(reject(req, error)),
    };
    tracing::Span::current().record("tenant", tenant.as_str());
    context::set_tenant(&tenant);
    req.extensions_mut().insert(tenant);
    Ok(next.call(req).await?.map_into_boxed_body())
}

fn resolve_tenant(
    req: &ServiceRequest,
    principal: Option<&Principal>,
) -> Result<TenantId, ApiError> {
    let tenant = match req.headers().get(&TENANT_ID) {
        None => principal.map_or_else(TenantId::system, Principal::default_tenant),
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|e| ApiError::invalid_header("X-Tenant-ID", e))?;
            TenantId::parse(text).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_tenant_id",
                    format!("X-Tenant-ID is invalid: {}", e.message()),
                )
            })?
        }
    };
    if let Some(principal) = principal
        && !principal.may_act_for(&tenant)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_forbidden",
            format!("this credential may not act for tenant '{tenant}'"),
        ));
    }
    Ok(tenant)
}

/// Authorization, once the principal and the tenant are known: the route's
/// decision in the [`AccessTable`] (403 `operator_key_required` or
/// `insufficient_scope` naming the scope), then, for a request acting for
/// its tenant, the tenant's record (403 `unknown_tenant` in `registered`
/// mode, 403 `tenant_suspended`), then the request counts in the tenant's
/// usage by class. Routes the table does not know (404, 405) pass through to
/// the router's answer. The admin routes on one tenant check their path's
/// tenant themselves ([`crate::routes::admin`]).
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let access = req
        .app_data::<web::Data<AccessTable>>()
        .and_then(|t| t.lookup(req.method(), req.path()));
    let principal = req.extensions().get::<Principal>().cloned();
    let (Some(access), Some(principal)) = (access, principal) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let needed = match access {
        Access::Public => return Ok(next.call(req).await?.map_into_boxed_body()),
        Access::Operator => {
            if !principal.is_operator() {
                let error = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "operator_key_required",
                    format!(
                        "{} {} needs an operator key: it is not about one tenant's own data",
                        req.method(),
                        req.path()
                    ),
                );
                return Ok(reject(req, error));
            }
            None
        }
        Access::Scoped(scope) => Some(scope),
        Access::Dashboard => Some(hub_core::tenancy::Scope::Read),
        Access::TenantAdmin => Some(hub_core::tenancy::Scope::Admin),
    };
    if let Some(scope) = needed
        && !principal.has(scope)
    {
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "this credential lacks the '{scope}' scope that {} {} needs",
                req.method(),
                req.path()
            ),
        );
        return Ok(reject(req, error));
    }
    // Requests on the request's own tenant are admitted against its record;
    // operators reading the dashboard act across tenants, and the admin
    // routes name their tenant in the path.
    let own_tenant = match access {
        Access::Scoped(_) => true,
        Access::Dashboard => !principal.is_operator(),
        Access::Public | Access::Operator | Access::TenantAdmin => false,
    };
    let tenancy = req.app_data::<web::Data<Tenancy>>().cloned();
    let tenant = req.extensions().get::<TenantId>().cloned();
    if own_tenant && let (Some(tenancy), Some(tenant)) = (tenancy, tenant) {
        match tenancy.admit(&tenant).await {
            Ok(record) => {
                if let Some(class) = access.class() {
                    tenancy.meter().request(&tenant, class, chrono::Utc::now());
                }
                req.extensions_mut().insert(record);
            }
            Err(error) => return Ok(reject(req, error)),
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `RateLimit-Limit`: the burst of the budget that binds.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: requests left at once after this one.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until the budget is full again.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The heartbeat path: exempt from rate limits. A heartbeat refused would
/// let a healthy instance's lease run out, and its count is bounded by the
/// tenant's instances and their ttl anyway; a tenant's own lookups must not
/// be able to starve it.
pub const HEARTBEAT_PATH: &str = "/api/v1/discovery/heartbeat";

/// Whether requests to `path` skip the rate limits: public paths and heartbeats.
pub fn is_unlimited(path: &str) -> bool {
    is_public(path) || path == HEARTBEAT_PATH
}

/// Whole seconds, rounded up (a client waiting the rounded-down value would
/// come back too early).
fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn limit_headers(headers: &mut header::HeaderMap, decision: &RateDecision) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        RATELIMIT_RESET,
        HeaderValue::from(ceil_secs(decision.reset)),
    );
}

/// Rate limits, after the tenant is known: the tenant's budget and the API
/// key's (by fingerprint) must both have room, else 429 `rate_limited` with
/// `Retry-After`. Every limited answer carries `RateLimit-Limit`,
/// `RateLimit-Remaining` and `RateLimit-Reset`. Health, docs and heartbeats
/// are never limited. The limiter itself never fails a request (see
/// [`Limits`]).
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let limits = req.app_data::<web::Data<Limits>>().cloned();
    let tenant = req.extensions().get::<TenantId>().cloned();
    let (Some(limits), Some(tenant)) = (limits, tenant) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if is_unlimited(req.path()) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let fingerprint = req
        .extensions()
        .get::<Principal>()
        .and_then(|p| p.fingerprint().map(str::to_owned));
    // The tenant's own rate and burst (its record, as admitted) replace the
    // configured ones.
    let own = req
        .extensions()
        .get::<std::sync::Arc<hub_core::tenancy::Tenant>>()
        .map(|t| OwnQuota {
            rate: t.limits.rate,
            burst: t.limits.burst,
        })
        .unwrap_or_default();
    let Some(decision) = limits
        .check_with(&tenant, fingerprint.as_deref(), own)
        .await
    else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if !decision.allowed {
        let retry = ceil_secs(decision.retry_after).max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("tenant '{tenant}' is over its rate limit; retry after {retry} s"),
        )
        .error_response();
        let headers = response.headers_mut();
        limit_headers(headers, &decision);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
        return Ok(req.into_response(response));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    limit_headers(response.headers_mut(), &decision);
    Ok(response)
}
