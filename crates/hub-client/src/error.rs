//! `HubError`: what a call to the hub can fail with, keeping the server's own error code.

use std::time::Duration;

/// An error of a hub call.
///
/// [`HubError::Api`] is an answer of the hub (its status and the stable
/// snake_case `code` of its error body, such as `not_found`,
/// `validation_failed` or `tenant_forbidden`); [`HubError::Unreachable`] is
/// the absence of one (connection refused, reset, timed out), which callers
/// usually retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The hub answered with an error body
    /// `{"error":{"code","message","request_id"}}`.
    #[error("the hub answered {status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's stable error code (`not_found`, `validation_failed`, ...).
        code: String,
        /// The server's sentence.
        message: String,
        /// The request id the server logged this answer under.
        request_id: Option<String>,
    },
    /// No answer: the connection failed or the request timed out.
    #[error("the hub at {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A watch stream stayed silent (not even a keep-alive) for this long,
    /// so the connection is taken for dead.
    #[error("the watch stream was silent for {0:?}")]
    Idle(Duration),
    /// The hub answered something this client does not understand (a body
    /// that is not the documented JSON, an error without the error shape).
    #[error("unexpected answer from the hub ({status}): {detail}")]
    InvalidResponse { status: u16, detail: String },
    /// A background task of the client panicked or was cancelled.
    #[error("a background task of the client failed: {0}")]
    Task(String),
    /// The client was configured wrongly (a bad URL or header value).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl HubError {
    /// The server's error code, for an [`HubError::Api`] answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            HubError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the hub answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HubError::Api { status, .. } | HubError::InvalidResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// A 404: the service or instance is not registered.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Worth retrying later as is: no answer, or a 5xx / 429 from a hub
    /// that is overloaded or whose backend is down.
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::Unreachable { .. } | HubError::Idle(_) => true,
            HubError::Api { status, .. } | HubError::InvalidResponse { status, .. } => {
                *status >= 500 || *status == 429
            }
            HubError::Config(_) | HubError::Task(_) => false,
        }
    }
}
