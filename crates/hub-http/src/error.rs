//! `ApiError` and the one table that maps hub-core errors and HTTP rejections to status codes and stable codes.

use hub_core::error_chain;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use hub_core::{RegistryError, ValidationError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::context;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An error as the API reports it: a status, a stable snake_case code and a
/// human message. Server errors carry their cause for the log only.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The `WWW-Authenticate` challenge of a 401 (`ApiKey` unless set).
    challenge: Option<HeaderValue>,
}

/// The body of every error answer: `{"error":{"code","message","request_id"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {
    "code": "not_found",
    "message": "service 'api-gateway-tenant1' not found",
    "request_id": "5b0f3c52-4c1e-4a0e-9a57-2f7e1c1d0b6e"
}}))]
pub struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

/// What went wrong, in [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorFields<'a> {
    /// Stable snake_case code to act on (`not_found`, `validation_failed`, ...).
    #[schema(pattern = "^[a-z][a-z0-9_]*$")]
    code: &'a str,
    /// A sentence for humans; for 422, it starts with the field that broke a rule.
    message: &'a str,
    /// The request's id, as in the `X-Request-ID` response header.
    request_id: &'a str,
}

impl ApiError {
    /// An error with an explicit status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    /// 401 `invalid_token` for a refused bearer token, with the challenge
    /// `Bearer error="invalid_token", error_description="..."` (RFC 6750).
    /// `description` must not quote the token; it is reduced to printable
    /// ASCII without quotes or backslashes so the header stays well formed.
    pub fn invalid_token(description: &str) -> Self {
        let clean: String = description
            .chars()
            .map(|c| {
                if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(200)
            .collect();
        let challenge = HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{clean}\""
        ))
        .ok();
        Self {
            challenge,
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                format!("the bearer token is not valid: {description}"),
            )
        }
    }

    /// 400 for a body that is not valid JSON.
    pub fn malformed_json(detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {detail}"),
        )
    }

    /// 400 for a header that cannot be read.
    pub fn invalid_header(name: &str, detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("header {name} is invalid: {detail}"),
        )
    }

    /// 408 for a request body that did not arrive in full within `limit`.
    /// Its response closes the connection (see `error_response`).
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                limit.as_secs_f64()
            ),
        )
    }

    /// 422 naming the field that broke a rule.
    pub fn validation(error: &ValidationError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{}: {}", error.field(), error.message()),
        )
    }

    /// 500 whose cause goes to the log, never to the client.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(
            request_id = %context::request_id(),
            cause = %error_chain(cause),
            "internal error"
        );
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle this request; quote the request id when reporting it",
        )
    }

    /// The error for a response that actix (or a handler) produced with an
    /// error status and no JSON body: unknown route, wrong method, oversized
    /// body and the like. One place decides their codes.
    pub fn from_status(status: StatusCode, method: &str, path: &str) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", format!("no route for {method} {path}")),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                format!("method {method} is not allowed on {path}"),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes"),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "request body must be JSON (Content-Type: application/json)".to_owned(),
            ),
            StatusCode::BAD_REQUEST => ("bad_request", "the request could not be read".to_owned()),
            StatusCode::REQUEST_TIMEOUT => (
                "request_timeout",
                "the request was not received in time".to_owned(),
            ),
            s if s.is_server_error() => (
                "internal_error",
                "the server failed to handle this request; quote the request id when reporting it"
                    .to_owned(),
            ),
            s => (
                "http_error",
                s.canonical_reason().unwrap_or("request failed").to_owned(),
            ),
        };
        Self::new(status, code, message)
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = context::request_id();
        let body = ErrorBody {
            error: ErrorFields {
                code: self.code,
                message: &self.message,
                request_id: &request_id,
            },
        };
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = self
                .challenge
                .clone()
                .unwrap_or_else(|| HeaderValue::from_static("ApiKey"));
            response.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        // After a 408 the rest of the body may still be on its way (or never
        // come): the connection cannot carry another request, so it ends.
        if self.status == StatusCode::REQUEST_TIMEOUT {
            response.force_close();
        }
        response.json(body)
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        Self::validation(&error)
    }
}

/// The mapping of hub-core errors to HTTP. `Unavailable` becomes 503 with a
/// code naming the component (`store_unavailable`, ...); its cause is logged.
impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Invalid(v) => Self::validation(&v),
            RegistryError::NotFound(what) => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            RegistryError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", what),
            RegistryError::QuotaExceeded { limit, max } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("the tenant is at its limit: {limit} is {max}"),
            ),
            RegistryError::Unavailable { component, source } => {
                tracing::warn!(
                    request_id = %context::request_id(),
                    component,
                    cause = %error_chain(source.as_ref()),
                    "backend unavailable"
                );
                let code = match component {
                    "store" => "store_unavailable",
                    "leases" => "leases_unavailable",
                    "events" => "events_unavailable",
                    _ => "backend_unavailable",
                };
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("the {component} backend is unavailable; retry later"),
                )
            }
            RegistryError::Unexpected(cause) => Self::internal(cause.as_ref()),
        }
    }
}
