//! Extractors: the resolved `Tenant`, and `JsonBody<T>` that reports JSON problems in our error format.

use std::future::{Ready, ready};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use hub_core::{ChangeContext, TenantId};

use crate::auth::Principal;
use crate::context;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, MAX_BODY_BYTES};

/// The tenant this request acts for, as resolved by the tenant middleware.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantId);

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<TenantId>()
                .cloned()
                .map(Tenant)
                .ok_or_else(|| {
                    ApiError::internal(&std::io::Error::other(
                        "tenant middleware did not run for this route",
                    ))
                }),
        )
    }
}

/// The [`ChangeContext`] of a changing request: the fingerprint of the API
/// key that made it (none when auth is disabled) and the request id.
#[derive(Debug, Clone)]
pub struct Change(pub ChangeContext);

impl FromRequest for Change {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let actor = req
            .extensions()
            .get::<Principal>()
            .and_then(Principal::fingerprint)
            .map(str::to_owned);
        ready(Ok(Change(ChangeContext::new(
            actor,
            Some(context::request_id()),
        ))))
    }
}

/// How long a request body may take to arrive in full, counted from the end
/// of its headers (`HUB_BODY_TIMEOUT_SECS`, app data of the application).
/// actix's own client request timeout covers only the headers: without this,
/// a body sent one byte a second would hold its connection (and a worker's
/// attention) for as long as the client likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeout(pub Duration);

impl Default for BodyTimeout {
    fn default() -> Self {
        Self(Duration::from_secs(10))
    }
}

/// A JSON request body. Checks the content type (415), the time it takes to
/// arrive (408 `request_timeout` beyond [`BodyTimeout`], and the connection is
/// closed), the size (413 beyond 64 KiB), the syntax (400 `malformed_json`)
/// and the shape (422 `validation_failed` naming the field, e.g.
/// `port: invalid type: string "80"`).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

fn is_json_content_type(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON object body, telling syntax errors (400 `malformed_json`)
/// from shape errors (422 `validation_failed`, naming the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Serde would also accept a struct written as an array; our bodies are objects.
    let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if is_object {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
            .and_then(|value| {
                deserializer
                    .end()
                    .map(|()| value)
                    .map_err(|e| (String::new(), e))
            })
    } else {
        Err((
            ".".to_owned(),
            serde::de::Error::custom("must be a JSON object"),
        ))
    };
    parsed.map_err(|(path, error)| {
        // A shape error is only reported as such when the body is valid JSON
        // as a whole: `{} {}` or a truncated body is a syntax problem first.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            return ApiError::malformed_json(syntax);
        }
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{field}: {error}"),
        )
    })
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if !is_json_content_type(req) {
            return Box::pin(ready(Err(ApiError::from_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                req.method().as_str(),
                req.path(),
            ))));
        }
        let bytes = web::Bytes::from_request(req, payload);
        let (method, path) = (req.method().to_string(), req.path().to_owned());
        let timeout = req.app_data::<BodyTimeout>().copied().unwrap_or_default().0;
        Box::pin(async move {
            let bytes = tokio::time::timeout(timeout, bytes)
                .await
                .map_err(|_| ApiError::body_timeout(timeout))?;
            let bytes = bytes.map_err(|error| {
                let status = error.as_response_error().status_code();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::from_status(status, &method, &path)
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("request body could not be read: {error}"),
                    )
                }
            })?;
            parse_json(&bytes).map(JsonBody)
        })
    }
}

/// The body limit handed to actix's payload reader.
pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::new(MAX_BODY_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        port: i64,
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_are_422() {
        assert_eq!(
            parse_json::<Body>(b"{\"port\":").unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            parse_json::<Body>(b"{} x").unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            parse_json::<Body>(b"{} {}").unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            parse_json::<Body>(b"").unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            parse_json::<Body>(b"[1").unwrap_err().code(),
            "malformed_json"
        );
        let array = parse_json::<Body>(b" [80]").unwrap_err();
        assert_eq!(array.code(), "validation_failed");
        assert!(array.message().starts_with("body:"), "{}", array.message());
        let shape = parse_json::<Body>(b"{\"port\":\"80\"}").unwrap_err();
        assert_eq!(shape.code(), "validation_failed");
        assert!(shape.message().starts_with("port:"), "{}", shape.message());
        let missing = parse_json::<Body>(b"{}").unwrap_err();
        assert_eq!(missing.code(), "validation_failed");
        assert!(missing.message().contains("port"), "{}", missing.message());
    }
}

/// Which tenants a dashboard answer covers. A key bound to tenants sees only
/// the request's tenant (`?tenant=` may name it, and no other: 403). An
/// operator key (or anyone when authentication is off) sees the totals
/// across tenants, or one tenant with `?tenant=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Totals across every tenant (operators only).
    AllTenants,
    /// One tenant.
    Tenant(TenantId),
}

impl Scope {
    /// The one tenant, or `None` for totals across tenants.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Scope::AllTenants => None,
            Scope::Tenant(t) => Some(t),
        }
    }

    /// How answers name the scope: `all_tenants` or the tenant id.
    pub fn label(&self) -> &str {
        match self {
            Scope::AllTenants => "all_tenants",
            Scope::Tenant(t) => t.as_str(),
        }
    }

    fn resolve(req: &HttpRequest) -> Result<Self, ApiError> {
        let asked = serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("query string could not be read: {e}"),
                )
            })?
            .into_iter()
            .filter(|(k, _)| k == "tenant")
            .map(|(_, v)| {
                TenantId::parse(&v).map_err(|e| {
                    ApiError::from(hub_core::ValidationError::new(
                        "tenant",
                        e.message().to_owned(),
                    ))
                })
            })
            .next_back()
            .transpose()?;
        let extensions = req.extensions();
        let sees_all = matches!(
            extensions.get::<Principal>(),
            Some(Principal::Operator { .. } | Principal::Anonymous)
        );
        if sees_all {
            return Ok(asked.map_or(Scope::AllTenants, Scope::Tenant));
        }
        let own = extensions.get::<TenantId>().cloned().ok_or_else(|| {
            ApiError::internal(&std::io::Error::other(
                "tenant middleware did not run for this route",
            ))
        })?;
        match asked {
            Some(other) if other != own => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_forbidden",
                format!(
                    "this API key sees only tenant '{own}' here; it may not ask for tenant '{other}'"
                ),
            )),
            _ => Ok(Scope::Tenant(own)),
        }
    }
}

/// The query parameter [`Scope`] reads, as the OpenAPI document describes it
/// (the extractor parses the query itself).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ScopeQuery {
    /// Operator keys: one tenant instead of the totals across tenants. Bound
    /// keys: only their own tenant (403 otherwise).
    #[param(pattern = "^[A-Za-z0-9_-]{1,100}$")]
    tenant: Option<String>,
}

impl FromRequest for Scope {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::resolve(req))
    }
}
