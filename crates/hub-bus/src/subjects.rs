//! NATS subjects of registry events: the one place that builds them from a `TenantId`.
//!
//! An event goes to `{prefix}.{tenant}.registry.{short_type}`, for example
//! `hub.tenant1.registry.registered`. The prefix is `hub` by default; it is
//! configurable so that several deployments (or test runs) can share one NATS
//! server without seeing each other's events.
//!
//! Tenant ids are safe subject tokens without escaping: [`TenantId`] only
//! admits `[A-Za-z0-9_-]`, so a tenant can contain neither a `.` (which would
//! add a token and let one tenant's events match another's subscription) nor
//! the wildcards `*` and `>` nor whitespace.

use std::fmt;

use hub_core::domain::event::EventKind;
use hub_core::domain::ids::TenantId;
use hub_core::error::ValidationError;

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "hub";

/// The first token(s) of every event subject, validated so that the subjects
/// and wildcards built from it are well formed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubjectPrefix(String);

impl SubjectPrefix {
    /// Accepts one or more dot-separated tokens of `[A-Za-z0-9_-]`
    /// (`hub`, `prod.hub`). Anything else is refused: an empty token, a
    /// wildcard or whitespace would make the subjects invalid or make the
    /// stream's wildcard capture foreign subjects.
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let token_ok = |token: &str| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if value.split('.').all(token_ok) {
            Ok(Self(value))
        } else {
            Err(ValidationError::new(
                "subject_prefix",
                "must be dot-separated tokens of letters, digits, '_' and '-'",
            ))
        }
    }

    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject of one event: `{prefix}.{tenant}.registry.{short_type}`.
    pub fn event_subject(&self, tenant: &TenantId, kind: EventKind) -> String {
        format!(
            "{}.{}.registry.{}",
            self.0,
            tenant.as_str(),
            kind.short_name()
        )
    }

    /// Every event of one tenant: `{prefix}.{tenant}.registry.>`.
    pub fn tenant_events(&self, tenant: &TenantId) -> String {
        format!("{}.{}.registry.>", self.0, tenant.as_str())
    }

    /// Every event of every tenant: `{prefix}.*.registry.>`, the subjects of
    /// the JetStream stream and of the replicas' cache subscription.
    pub fn all_events(&self) -> String {
        format!("{}.*.registry.>", self.0)
    }
}

impl Default for SubjectPrefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

impl fmt::Debug for SubjectPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SubjectPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    #[test]
    fn default_subject_is_the_documented_one() {
        let prefix = SubjectPrefix::default();
        assert_eq!(
            prefix.event_subject(&tenant("tenant1"), EventKind::Registered),
            "hub.tenant1.registry.registered"
        );
        assert_eq!(
            prefix.event_subject(&tenant("t-2_x"), EventKind::StatusChanged),
            "hub.t-2_x.registry.status_changed"
        );
        assert_eq!(prefix.all_events(), "hub.*.registry.>");
        assert_eq!(
            prefix.tenant_events(&tenant("tenant1")),
            "hub.tenant1.registry.>"
        );
    }

    #[test]
    fn every_kind_has_one_token() {
        let prefix = SubjectPrefix::parse("prod.hub").unwrap();
        for kind in [
            EventKind::Registered,
            EventKind::Updated,
            EventKind::Deregistered,
            EventKind::StatusChanged,
            EventKind::Expired,
        ] {
            let subject = prefix.event_subject(&tenant("acme"), kind);
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(
                tokens,
                ["prod", "hub", "acme", "registry", kind.short_name()]
            );
        }
        assert_eq!(prefix.all_events(), "prod.hub.*.registry.>");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "", ".", "hub.", ".hub", "a..b", "hub.*", "hub.>", "h b", "hub\t",
        ] {
            assert!(SubjectPrefix::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            SubjectPrefix::parse("hubt0a1f").unwrap().as_str(),
            "hubt0a1f"
        );
    }
}
