//! The error vocabulary of hub-core: what callers (HTTP, embedders) can act on.

use std::fmt;

/// A value broke a domain rule. Names the offending field so an API client
/// knows what to fix; the message is a human sentence fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    field: String,
    message: String,
}

impl ValidationError {
    /// A rule broken by `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field (JSON path, e.g. `port` or `tags[2]`) that broke the rule.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Errors of the registry use cases and of every port.
///
/// Adapters translate their driver errors into these variants; no driver error
/// type crosses into hub-http.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The input broke a domain rule.
    #[error("invalid input: {0}")]
    Invalid(#[from] ValidationError),

    /// The thing asked for does not exist for this tenant (it may exist for
    /// another one; callers must not be able to tell the difference).
    #[error("{0} not found")]
    NotFound(String),

    /// The change conflicts with the current state (for example a concurrent
    /// update that the store refused).
    #[error("conflict: {0}")]
    Conflict(String),

    /// The change would take the tenant past one of its limits (`limit`
    /// names it, e.g. `max_instances`, and `max` is its value).
    #[error("quota exceeded: {limit} is {max}")]
    QuotaExceeded {
        /// The limit's name.
        limit: &'static str,
        /// Its value.
        max: u64,
    },

    /// A backend the operation needs is unreachable or timed out. The outcome
    /// of a write that fails this way is unknown to the caller.
    #[error("{component} unavailable")]
    Unavailable {
        /// The backend that failed: `store`, `leases`, `events`...
        component: &'static str,
        /// The driver's error, for the log only.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A bug or an unexpected backend answer; the cause is for the log only.
    #[error("unexpected error")]
    Unexpected(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RegistryError {
    /// Shorthand for [`RegistryError::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }
}

/// An error and its causes on one line, joined by `: `, for logs and
/// operator-facing messages: an outer message alone ("unexpected error")
/// rarely says anything an operator can act on. Every adapter and the binary
/// use this one function.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
