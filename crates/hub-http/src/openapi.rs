//! The OpenAPI 3.1 document of the API, built from the route table, and the routes that serve it: `/openapi.json`, Swagger UI at `/docs`, ReDoc at `/redoc`.
//!
//! Each handler's `#[utoipa::path]` annotation states what only that route
//! does (its parameters, bodies and own answers). What the middleware does to
//! every route is added here, once, from the same predicates the middleware
//! uses ([`crate::middleware::is_public`], [`crate::middleware::is_unlimited`]):
//! the `X-Tenant-ID` and `X-Request-ID` headers, the API key, the answers
//! 400/401/403/429 and the rate-limit headers, and for routes with a JSON body
//! the answers 400/408/413/415. The UI assets are compiled in: Swagger UI
//! from `utoipa-swagger-ui` (`vendored`), ReDoc from `assets/redoc`
//! (ReDoc's MIT-licensed standalone bundle): serving the docs downloads nothing.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Components, ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, Type,
};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_redoc::{Redoc, Servable};
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{ErrorBody, MAX_BODY_BYTES};
use crate::middleware::{is_public, is_unlimited};
use crate::routes::{self, Endpoint};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where Swagger UI is served (`/docs` redirects to `/docs/`).
pub const SWAGGER_PATH: &str = "/docs";
/// Where ReDoc is served.
pub const REDOC_PATH: &str = "/redoc";
/// The ReDoc script, next to its page.
pub const REDOC_SCRIPT_PATH: &str = "/redoc/redoc.standalone.js";
/// The name of the API key scheme in the document.
pub const API_KEY_SCHEME: &str = "ApiKey";
/// The name of the bearer-token security scheme in the document.
pub const BEARER_SCHEME: &str = "Bearer";

const REDOC_SCRIPT: &str = include_str!("../assets/redoc/redoc.standalone.js");

/// ReDoc's page: the stock template of `utoipa-redoc` with the script served
/// by this server instead of a CDN, and no web fonts.
const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html>
  <head>
    <title>Central Hub API (ReDoc)</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <style>body { margin: 0; padding: 0; }</style>
  </head>
  <body>
    <div id="redoc-container"></div>
    <script src="/redoc/redoc.standalone.js"></script>
    <script>
      Redoc.init($spec, $config, document.getElementById("redoc-container"));
    </script>
  </body>
</html>
"#;

/// An example request id for examples.
const EXAMPLE_REQUEST_ID: &str = "5b0f3c52-4c1e-4a0e-9a57-2f7e1c1d0b6e";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Central Hub",
        description = "Multi-tenant service registry. Every answer carries `X-Request-ID` and \
            `X-Tenant-ID`; every error is `{\"error\":{\"code\",\"message\",\"request_id\"}}`. \
            A known path asked with another method answers 405 `method_not_allowed` (with \
            `Allow`), an unknown path 404 `not_found`. `/health`, `/health/ready`, `/docs`, \
            `/redoc` and `/openapi.json` need no key; every other route needs `X-API-Key` \
            (an operator key, a bound key, or a key created through the admin API) or \
            `Authorization: Bearer <jwt>`. Keys and tokens carry scopes: `read` (lookups, \
            lists, dashboard), `write` (register, heartbeat, deregister), `admin` (its own \
            tenant's keys, usage and audit); tenant management and `/metrics` need an \
            operator key.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "health", description = "Liveness and readiness (public, never rate-limited)."),
        (name = "discovery", description = "Register, find, renew and remove service instances of the request's tenant."),
        (name = "dashboard", description = "Operational figures, scoped to the caller's tenant (operators: all tenants or `?tenant=`)."),
        (name = "admin", description = "Tenants (operators), a tenant's keys, usage and audit (operators, or the `admin` scope of a key of that tenant)."),
    ),
    components(schemas(ErrorBody)),
)]
struct ApiDoc;

/// The document: [`ApiDoc`], every entry of [`routes::endpoints`] with the
/// middleware's parameters, answers and headers, and the security scheme.
pub fn document() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let components = doc.components.get_or_insert_with(Components::new);
    components.security_schemes.insert(
        API_KEY_SCHEME.to_owned(),
        RefOr::T(SecurityScheme::ApiKey(ApiKey::Header(
            ApiKeyValue::with_description(
                "X-API-Key",
                "An operator key, or a key bound to tenants (it acts for those only).",
            ),
        ))),
    );
    components.security_schemes.insert(
        BEARER_SCHEME.to_owned(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT (HS256 with HUB_JWT_SECRET, RS256/ES256 with HUB_JWT_JWKS_PATH) whose tenant claim binds it like a bound key and whose `scope` claim names its scopes.",
                ))
                .build(),
        )),
    );
    components.headers = common_headers();
    components.parameters = common_parameters();
    let responses = common_responses();
    for endpoint in routes::endpoints() {
        let Endpoint {
            path,
            http_method,
            mut operation,
            schemas,
            ..
        } = endpoint;
        for (name, schema) in schemas {
            components.schemas.entry(name).or_insert(schema);
        }
        describe_middleware(&mut operation, &path, &responses);
        doc.paths
            .add_path_operation(&path, vec![http_method], operation);
    }
    doc
}

fn string_schema(pattern: Option<&str>) -> RefOr<utoipa::openapi::Schema> {
    let mut schema = ObjectBuilder::new().schema_type(Type::String);
    if let Some(pattern) = pattern {
        schema = schema.pattern(Some(pattern));
    }
    RefOr::T(schema.into())
}

fn integer_schema(minimum: f64) -> RefOr<utoipa::openapi::Schema> {
    RefOr::T(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(minimum))
            .into(),
    )
}

fn header(schema: RefOr<utoipa::openapi::Schema>, description: &str) -> RefOr<Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(schema))
            .description(Some(description))
            .build(),
    )
}

const TENANT_PATTERN: &str = "^[A-Za-z0-9_-]{1,100}$";

fn common_headers() -> BTreeMap<String, RefOr<Header>> {
    BTreeMap::from([
        (
            "X-Request-ID".to_owned(),
            header(
                string_schema(None),
                "The request's id: the one sent if it was 1-128 of `[A-Za-z0-9._:-]`, else a new UUID. Logged with the request; quote it when reporting a problem.",
            ),
        ),
        (
            "X-Tenant-ID".to_owned(),
            header(
                string_schema(Some(TENANT_PATTERN)),
                "The tenant the request acted for (absent when the request's X-Tenant-ID was invalid).",
            ),
        ),
        (
            "RateLimit-Limit".to_owned(),
            header(
                integer_schema(0.0),
                "The burst of the budget (tenant's or key's) with the least room.",
            ),
        ),
        (
            "RateLimit-Remaining".to_owned(),
            header(integer_schema(0.0), "Requests left at once after this one."),
        ),
        (
            "RateLimit-Reset".to_owned(),
            header(
                integer_schema(0.0),
                "Seconds until the budget is full again.",
            ),
        ),
        (
            "Retry-After".to_owned(),
            header(
                integer_schema(1.0),
                "Whole seconds (rounded up) to wait before retrying.",
            ),
        ),
        (
            "WWW-Authenticate".to_owned(),
            header(
                string_schema(Some("^(ApiKey|Bearer .*)$")),
                "`ApiKey`, or for a refused bearer token `Bearer error=\"invalid_token\", error_description=\"...\"`.",
            ),
        ),
        (
            crate::blocking::INDEX_HEADER.to_owned(),
            header(
                integer_schema(0.0),
                "The tenant revision the answer reflects; pass it as `?index=` to wait for the next change (a blocking query).",
            ),
        ),
    ])
}

fn header_ref(name: &str) -> RefOr<Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

fn common_parameters() -> BTreeMap<String, RefOr<Parameter>> {
    let tenant = ParameterBuilder::new()
        .name("X-Tenant-ID")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "The tenant to act for: 1-100 of `[A-Za-z0-9_-]` (400 `invalid_tenant_id` otherwise). \
             Default: a bound key's first tenant, else `system`. A key bound to other tenants gets 403.",
        ))
        .schema(Some(string_schema(Some(TENANT_PATTERN))))
        .example(Some(json!("tenant1")))
        .build();
    let request_id = ParameterBuilder::new()
        .name("X-Request-ID")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "An id for this request, echoed in the answer if 1-128 of `[A-Za-z0-9._:-]` (else replaced by a new UUID).",
        ))
        .schema(Some(string_schema(None)))
        .build();
    BTreeMap::from([
        ("TenantId".to_owned(), RefOr::T(tenant)),
        ("RequestId".to_owned(), RefOr::T(request_id)),
    ])
}

fn error_example(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "request_id": EXAMPLE_REQUEST_ID}})
}

/// A response with the error body; `headers` names components of
/// [`common_headers`] besides `X-Request-ID` and `X-Tenant-ID`.
fn error_response(description: &str, example: Value, headers: &[&str]) -> Response {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .example(Some(example))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    for name in ["X-Request-ID", "X-Tenant-ID"].iter().chain(headers) {
        response = response.header_ref(*name, Ref::new(format!("#/components/headers/{name}")));
    }
    response.build()
}

/// The answers the middleware and the body extractor give, by name.
fn common_responses() -> BTreeMap<String, Response> {
    BTreeMap::from([
        (
            "BadRequest".to_owned(),
            error_response(
                "`invalid_tenant_id` or `invalid_header`: X-Tenant-ID is not a valid tenant id; \
                 `bad_request`: the query string or body could not be read; \
                 `malformed_json`: the body is not valid JSON.",
                error_example(
                    "invalid_tenant_id",
                    "X-Tenant-ID is invalid: must be 1-100 characters of A-Z, a-z, 0-9, '_' or '-'",
                ),
                &[],
            ),
        ),
        (
            "Unauthorized".to_owned(),
            error_response(
                "`missing_api_key` or `invalid_api_key`: X-API-Key is missing or not a valid key (unknown, revoked and expired keys alike); `invalid_token`: the bearer token was refused.",
                error_example(
                    "missing_api_key",
                    "this endpoint needs an API key in the X-API-Key header",
                ),
                &["WWW-Authenticate"],
            ),
        ),
        (
            "Forbidden".to_owned(),
            error_response(
                "`tenant_forbidden`: the key or token is bound to other tenants; \
                 `insufficient_scope`: it lacks the scope the route needs (named in the message); \
                 `operator_key_required`: the route needs an operator key; \
                 `unknown_tenant`: HUB_TENANTS_MODE=registered and the tenant was not created; \
                 `tenant_suspended`: the tenant is suspended.",
                error_example(
                    "tenant_forbidden",
                    "this API key may not act for tenant 'tenant2'",
                ),
                &[],
            ),
        ),
        (
            "RequestTimeout".to_owned(),
            error_response(
                "`request_timeout`: the body did not arrive in full within HUB_BODY_TIMEOUT_SECS; the connection is closed.",
                error_example(
                    "request_timeout",
                    "the request body did not arrive within 10 s",
                ),
                &[],
            ),
        ),
        (
            "PayloadTooLarge".to_owned(),
            error_response(
                &format!("`payload_too_large`: the body exceeds {MAX_BODY_BYTES} bytes."),
                error_example(
                    "payload_too_large",
                    &format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes"),
                ),
                &[],
            ),
        ),
        (
            "UnsupportedMediaType".to_owned(),
            error_response(
                "`unsupported_media_type`: the body is not declared as JSON.",
                error_example(
                    "unsupported_media_type",
                    "request body must be JSON (Content-Type: application/json)",
                ),
                &[],
            ),
        ),
        (
            "TooManyRequests".to_owned(),
            error_response(
                "`rate_limited`: the tenant's or the key's budget is spent.",
                error_example(
                    "rate_limited",
                    "tenant 'tenant1' is over its rate limit; retry after 1 s",
                ),
                &[
                    "Retry-After",
                    "RateLimit-Limit",
                    "RateLimit-Remaining",
                    "RateLimit-Reset",
                ],
            ),
        ),
        (
            "ServiceUnavailable".to_owned(),
            error_response(
                "`store_unavailable`, `leases_unavailable`, `events_unavailable` or `backend_unavailable`: a backend does not answer; retry later.",
                error_example(
                    "store_unavailable",
                    "the store backend is unavailable; retry later",
                ),
                &[],
            ),
        ),
    ])
}

/// Adds what the middleware does on `path` to an operation annotated on its
/// handler. The common answers are written into each operation rather than
/// referenced, because whether they carry the rate-limit headers depends on
/// the route.
fn describe_middleware(
    operation: &mut Operation,
    path: &str,
    responses: &BTreeMap<String, Response>,
) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    for name in ["TenantId", "RequestId"] {
        parameters.push(RefOr::Ref(Ref::new(format!(
            "#/components/parameters/{name}"
        ))));
    }
    let limited = !is_unlimited(path);
    // The handler's own answers carry the headers every answer carries, and
    // the rate-limit headers when the route is limited.
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            let mut names = vec!["X-Request-ID", "X-Tenant-ID"];
            if limited {
                names.extend(["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]);
            }
            for name in names {
                response
                    .headers
                    .entry(name.to_owned())
                    .or_insert_with(|| header_ref(name));
            }
            // A handler names `X-Hub-Index` in its annotation; the document
            // describes it once, as a component.
            let index = crate::blocking::INDEX_HEADER;
            if response.headers.contains_key(index) {
                response.headers.insert(index.to_owned(), header_ref(index));
            }
        }
    }
    let mut common = vec![("400", "BadRequest"), ("403", "Forbidden")];
    if !is_public(path) {
        operation.security = Some(vec![
            SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()),
        ]);
        common.extend([("401", "Unauthorized"), ("503", "ServiceUnavailable")]);
    }
    if limited {
        common.push(("429", "TooManyRequests"));
    }
    if operation.request_body.is_some() {
        common.extend([
            ("408", "RequestTimeout"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
        ]);
    }
    for (status, name) in common {
        let Some(response) = responses.get(name) else {
            continue;
        };
        let mut response = response.clone();
        // A 401 is answered before the rate limiter runs; a 400 or 403 may
        // come from the tenant middleware (before it) or the handler (after).
        if limited && status != "401" {
            for name in ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
                response
                    .headers
                    .entry(name.to_owned())
                    .or_insert_with(|| header_ref(name));
            }
        }
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(response));
    }
}

/// Mounts `/openapi.json`, Swagger UI (`/docs`, `/docs/`) and ReDoc
/// (`/redoc` and its script). All of them are public ([`is_public`]).
pub fn configure_docs(cfg: &mut web::ServiceConfig) {
    let doc = document();
    cfg.service(SwaggerUi::new(format!("{SWAGGER_PATH}/{{_:.*}}")).url(OPENAPI_PATH, doc.clone()))
        .service(web::resource(SWAGGER_PATH).route(web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, format!("{SWAGGER_PATH}/")))
                .finish()
        })))
        .service(Redoc::with_url(REDOC_PATH, doc).custom_html(REDOC_HTML))
        .service(
            web::resource(REDOC_SCRIPT_PATH).route(web::get().to(|| async {
                HttpResponse::Ok()
                    .content_type("text/javascript; charset=utf-8")
                    .body(REDOC_SCRIPT)
            })),
        );
}

/// A tag: 1-128 bytes without control or invisible characters (the schema
/// states the length in characters; the server counts bytes).
#[derive(Debug, ToSchema)]
#[schema(as = Tag, value_type = String, min_length = 1, max_length = 128)]
#[allow(dead_code)]
pub struct TagDoc(String);

/// Health of an instance (`hub_core::HealthStatus` on the wire).
#[derive(Debug, ToSchema)]
#[schema(as = HealthStatus)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum HealthStatusDoc {
    /// Lease alive and the instance reports itself healthy.
    Passing,
    /// Lease alive but the instance reports a degraded state.
    Warning,
    /// Lease expired, or the instance reports itself failing.
    Critical,
}

/// How callers reach an instance (`hub_core::Protocol` on the wire).
#[derive(Debug, ToSchema)]
#[schema(as = Protocol)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ProtocolDoc {
    /// `http://`
    Http,
    /// `https://`
    Https,
    /// `grpc://`
    Grpc,
    /// `tcp://`
    Tcp,
    /// `ws://`
    Ws,
    /// `wss://`
    Wss,
}

/// `GET /api/v1/dashboard/metrics` (the handler builds it as JSON; this
/// type only describes it). Counters are this replica's since it started.
#[derive(Debug, ToSchema)]
#[schema(as = DashboardMetrics)]
#[allow(dead_code)]
pub struct DashboardMetricsDoc {
    /// `all_tenants` (operators without `?tenant=`) or the tenant id.
    scope: String,
    generated_at: DateTime<Utc>,
    events: EventsDoc,
    rate_limits: RateLimitsDoc,
    leases: LeasesDoc,
    counted_since: crate::routes::dashboard::CountingPeriod,
    requests: crate::metrics::RequestSummary,
    changes: crate::routes::dashboard::ChangesBody,
    instances: crate::routes::dashboard_health::StatusCountsBody,
    /// One tenant's usage today (absent for totals across tenants): stored
    /// counts plus those not yet flushed.
    #[schema(required = false)]
    usage_today: Option<crate::admin_dto::UsageCountsBody>,
}

/// How events leave the hub, and per bus their state.
#[derive(Debug, ToSchema)]
#[schema(as = DashboardEvents)]
#[allow(dead_code)]
struct EventsDoc {
    delivery: DeliveryDoc,
    /// Per configured bus (`nats`, `kafka`).
    sinks: BTreeMap<String, SinkDoc>,
}

/// How events are delivered.
#[derive(Debug, ToSchema)]
#[schema(as = Delivery)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum DeliveryDoc {
    /// Published by the request (embedded mode).
    InProcess,
    /// Written to the outbox in the change's transaction, relayed after.
    Outbox,
    /// Published after the change, lost if the bus is down.
    BestEffort,
}

/// One bus. `published`, `failures`, `relaying` and `dropped` only for totals across tenants.
#[derive(Debug, ToSchema)]
#[schema(as = DashboardSink)]
#[allow(dead_code)]
struct SinkDoc {
    #[schema(required = false)]
    backlog: Option<BacklogDoc>,
    /// Events set aside because they could not be decoded.
    #[schema(required = false)]
    undeliverable: Option<u64>,
    #[schema(required = false)]
    published: Option<u64>,
    #[schema(required = false)]
    failures: Option<u64>,
    #[schema(required = false)]
    relaying: Option<bool>,
    #[schema(required = false)]
    dropped: Option<u64>,
}

/// The outbox backlog of one bus.
#[derive(Debug, ToSchema)]
#[schema(as = DashboardBacklog)]
#[allow(dead_code)]
struct BacklogDoc {
    pending: u64,
    /// Age of the oldest pending event; null when none is pending.
    oldest_pending_age_seconds: Option<f64>,
}

/// Requests refused with 429 by this replica.
#[derive(Debug, ToSchema)]
#[schema(as = DashboardRateLimits)]
#[allow(dead_code)]
struct RateLimitsDoc {
    /// Per tenant.
    rejected: BTreeMap<String, u64>,
    /// Operators: requests answered by the local fallback limiter.
    #[schema(required = false)]
    fallbacks: Option<u64>,
    /// Operators: whether the fallback is in use now.
    #[schema(required = false)]
    degraded: Option<bool>,
}

/// Where heartbeat leases live, and the mass-expiry holds.
#[derive(Debug, ToSchema)]
#[schema(as = DashboardLeases)]
#[allow(dead_code)]
struct LeasesDoc {
    /// `store` or `dragonfly`.
    backend: String,
    /// Operators: whether the lease cache answers (null without one).
    #[schema(required = false)]
    cache_reachable: Option<bool>,
    /// Operators: heartbeats that fell back to the store.
    #[schema(required = false)]
    fallbacks: Option<u64>,
    /// A tenant: its hold or null. Operators: every held tenant's hold by tenant id.
    #[schema(value_type = Option<Object>)]
    mass_expiry: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request schemas state hub-core's limits as literals (attributes
    /// take no constants): this keeps them equal to the constants, so the
    /// document cannot drift from what the server enforces.
    #[test]
    fn request_limits_in_the_document_are_hub_cores() {
        use hub_core::domain::registration as reg;
        use hub_core::{InstanceId, Protocol, ServiceName};
        let doc = serde_json::to_value(document()).unwrap();
        let register = &doc["components"]["schemas"]["RegisterRequest"]["properties"];
        assert_eq!(
            register["service_name"]["pattern"],
            format!("^[A-Za-z0-9._-]{{1,{}}}$", ServiceName::MAX_LEN)
        );
        assert_eq!(
            register["instance_id"]["pattern"],
            format!("^[A-Za-z0-9._:-]{{1,{}}}$", InstanceId::MAX_LEN)
        );
        assert_eq!(register["ttl_seconds"]["minimum"], reg::TTL_MIN_SECONDS);
        assert_eq!(register["ttl_seconds"]["maximum"], reg::TTL_MAX_SECONDS);
        assert_eq!(
            register["health_endpoint"]["maxLength"],
            reg::MAX_HEALTH_ENDPOINT_LEN
        );
        assert_eq!(register["version"]["maxLength"], reg::MAX_VERSION_LEN);
        assert_eq!(register["tags"]["maxItems"], reg::MAX_TAGS);
        let protocols: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            doc["components"]["schemas"]["Protocol"]["enum"],
            serde_json::json!(protocols)
        );
    }

    #[test]
    fn the_document_names_exactly_the_route_table() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            let json = serde_json::to_value(item).unwrap();
            for method in json.as_object().unwrap().keys() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        let mut served: Vec<String> = routes::endpoints()
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(document()).unwrap();
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap();
                        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
