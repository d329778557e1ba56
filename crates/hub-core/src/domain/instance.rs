//! `Instance` (a stored registration with its lease), `HealthStatus` and `Revision`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::{InstanceId, ServiceName, TenantId};
use super::registration::{DEREGISTER_AFTER_TTLS, Host, Protocol, Registration};
use crate::error::ValidationError;

/// Health of an instance, as Consul names check states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Lease alive and the instance reports itself healthy.
    Passing,
    /// Lease alive but the instance reports a degraded state.
    Warning,
    /// Lease expired, or the instance reports itself failing.
    Critical,
}

impl HealthStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HealthStatus {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passing" => Ok(Self::Passing),
            "warning" => Ok(Self::Warning),
            "critical" => Ok(Self::Critical),
            other => Err(ValidationError::new(
                "status",
                format!("{other:?} is not one of passing, warning, critical"),
            )),
        }
    }
}

/// A position in a tenant's change history. Every change to a tenant's
/// registry gets the next revision of that tenant, so a client can tell
/// whether what it holds is current. Revisions are counted per tenant, so they
/// reveal nothing about the activity of other tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Revision(u64);

impl Revision {
    /// The revision of a tenant that never changed anything.
    pub const ZERO: Revision = Revision(0);

    /// Wraps a stored value.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// The revision after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an instance's lease stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed within its ttl.
    Alive,
    /// Not renewed within its ttl: the instance must be shown `critical`.
    Expired,
    /// Expired for longer than `deregister_after`: the instance must be removed.
    Dead,
}

/// A registered instance as stored: the registration plus its tenant, lease,
/// status and revision.
///
/// The registration is shared (`Arc`): it never changes after registration,
/// while reads clone instances on every lookup, so sharing it keeps a lookup
/// from copying every tag, metadata key and name.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    tenant_id: TenantId,
    registration: Arc<Registration>,
    status: HealthStatus,
    registered_at: DateTime<Utc>,
    last_heartbeat: DateTime<Utc>,
    lease_expires_at: DateTime<Utc>,
    revision: Revision,
}

impl Instance {
    /// A freshly (re-)registered instance: status passing, lease starting `now`.
    /// `registered_at` is kept from the previous record on re-registration.
    pub fn registered(
        tenant_id: TenantId,
        registration: Registration,
        now: DateTime<Utc>,
        registered_at: Option<DateTime<Utc>>,
        revision: Revision,
    ) -> Self {
        let lease_expires_at = now + Duration::seconds(i64::from(registration.ttl_seconds()));
        Self {
            tenant_id,
            registration: Arc::new(registration),
            status: HealthStatus::Passing,
            registered_at: registered_at.unwrap_or(now),
            last_heartbeat: now,
            lease_expires_at,
            revision,
        }
    }

    /// Rebuilds a record read back from a store, exactly as it was saved.
    pub fn restore(
        tenant_id: TenantId,
        registration: Registration,
        status: HealthStatus,
        registered_at: DateTime<Utc>,
        last_heartbeat: DateTime<Utc>,
        lease_expires_at: DateTime<Utc>,
        revision: Revision,
    ) -> Self {
        Self {
            tenant_id,
            registration: Arc::new(registration),
            status,
            registered_at,
            last_heartbeat,
            lease_expires_at,
            revision,
        }
    }

    /// The lease state at `now`. Pure: the same record and time always give
    /// the same answer, which is what lets the reaper be tested with a manual clock.
    pub fn lease_state(&self, now: DateTime<Utc>) -> LeaseState {
        if now < self.lease_expires_at {
            LeaseState::Alive
        } else if now < self.deregister_at() {
            LeaseState::Expired
        } else {
            LeaseState::Dead
        }
    }

    /// When an unrenewed instance is removed: `deregister_after` (3 x ttl) after
    /// its lease expired, as Consul's `DeregisterCriticalServiceAfter` counts
    /// from the moment a check turns critical.
    pub fn deregister_at(&self) -> DateTime<Utc> {
        self.lease_expires_at
            + Duration::seconds(i64::from(
                self.registration.ttl_seconds() * DEREGISTER_AFTER_TTLS,
            ))
    }

    /// The record after a heartbeat at `now` that reports `status`.
    #[must_use]
    pub fn renewed(&self, now: DateTime<Utc>, status: HealthStatus) -> Self {
        Self {
            status,
            last_heartbeat: now,
            lease_expires_at: now + Duration::seconds(i64::from(self.registration.ttl_seconds())),
            ..self.clone()
        }
    }

    /// The record with another status (the lease is unchanged).
    #[must_use]
    pub fn with_status(&self, status: HealthStatus) -> Self {
        Self {
            status,
            ..self.clone()
        }
    }

    /// The record stamped with the revision of the change that produced it.
    #[must_use]
    pub fn with_revision(&self, revision: Revision) -> Self {
        Self {
            revision,
            ..self.clone()
        }
    }

    /// Owner tenant.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }
    /// The registration this record was made from.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }
    /// Service name.
    pub fn service_name(&self) -> &ServiceName {
        self.registration.service_name()
    }
    /// Instance id.
    pub fn instance_id(&self) -> &InstanceId {
        self.registration.instance_id()
    }
    /// Host.
    pub fn host(&self) -> &Host {
        self.registration.host()
    }
    /// Port.
    pub fn port(&self) -> u16 {
        self.registration.port()
    }
    /// Protocol.
    pub fn protocol(&self) -> Protocol {
        self.registration.protocol()
    }
    /// Tags.
    pub fn tags(&self) -> &[String] {
        self.registration.tags()
    }
    /// Metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        self.registration.metadata()
    }
    /// Current status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }
    /// First registration time.
    pub fn registered_at(&self) -> DateTime<Utc> {
        self.registered_at
    }
    /// Last heartbeat (or registration) time.
    pub fn last_heartbeat(&self) -> DateTime<Utc> {
        self.last_heartbeat
    }
    /// When the lease runs out unless renewed.
    pub fn lease_expires_at(&self) -> DateTime<Utc> {
        self.lease_expires_at
    }
    /// Revision of the last change to this record.
    pub fn revision(&self) -> Revision {
        self.revision
    }
    /// `protocol://host:port`, what a caller dials.
    pub fn url(&self) -> String {
        self.url_display().to_string()
    }

    /// The URL as a `Display` value, to write it without allocating.
    pub fn url_display(&self) -> impl fmt::Display + '_ {
        struct Url<'a>(&'a Instance);
        impl fmt::Display for Url<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}://{}:{}",
                    self.0.protocol(),
                    self.0.host().url_form(),
                    self.0.port()
                )
            }
        }
        Url(self)
    }
    /// Whether the instance carries every one of `tags`.
    pub fn has_all_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags().contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::registration::RegistrationInput;

    fn instance(ttl: i64, now: DateTime<Utc>) -> Instance {
        let reg = Registration::try_from(RegistrationInput {
            service_name: "svc".into(),
            host: "::1".into(),
            port: 9000,
            protocol: Some("grpc".into()),
            ttl_seconds: Some(ttl),
            ..Default::default()
        })
        .unwrap();
        Instance::registered(TenantId::system(), reg, now, None, Revision::new(1))
    }

    #[test]
    fn lease_states_follow_the_clock() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let i = instance(10, t0);
        assert_eq!(i.lease_state(t0), LeaseState::Alive);
        assert_eq!(
            i.lease_state(t0 + Duration::milliseconds(9_999)),
            LeaseState::Alive
        );
        assert_eq!(
            i.lease_state(t0 + Duration::seconds(10)),
            LeaseState::Expired
        );
        // Removed 3 x ttl after expiry.
        assert_eq!(
            i.lease_state(t0 + Duration::seconds(39)),
            LeaseState::Expired
        );
        assert_eq!(i.lease_state(t0 + Duration::seconds(40)), LeaseState::Dead);
    }

    #[test]
    fn renewal_extends_the_lease_and_sets_the_status() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let i = instance(10, t0).with_status(HealthStatus::Critical);
        let r = i.renewed(t0 + Duration::seconds(35), HealthStatus::Warning);
        assert_eq!(r.status(), HealthStatus::Warning);
        assert_eq!(r.lease_expires_at(), t0 + Duration::seconds(45));
        assert_eq!(r.last_heartbeat(), t0 + Duration::seconds(35));
        assert_eq!(r.registered_at(), t0);
    }

    #[test]
    fn url_brackets_ipv6() {
        let i = instance(10, DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(i.url(), "grpc://[::1]:9000");
    }

    #[test]
    fn status_parses_only_the_three_states() {
        assert_eq!(
            "warning".parse::<HealthStatus>().unwrap(),
            HealthStatus::Warning
        );
        assert_eq!(
            "Passing".parse::<HealthStatus>().unwrap_err().field(),
            "status"
        );
    }
}
