//! `RegistryEvent`: one change to a tenant's registry, as published to watchers and buses.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ids::{InstanceId, ServiceName, TenantId};
use super::instance::{HealthStatus, Instance, Revision};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventKind {
    /// A new instance was registered.
    #[serde(rename = "service.registered")]
    Registered,
    /// An existing instance was registered again (its fields may have changed).
    #[serde(rename = "service.updated")]
    Updated,
    /// An instance was removed on request.
    #[serde(rename = "service.deregistered")]
    Deregistered,
    /// An instance changed health status (lease expiry, or a heartbeat).
    #[serde(rename = "service.status_changed")]
    StatusChanged,
    /// An instance was removed because its lease stayed expired.
    #[serde(rename = "service.expired")]
    Expired,
}

impl EventKind {
    /// The full type name, e.g. `service.registered`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Registered => "service.registered",
            EventKind::Updated => "service.updated",
            EventKind::Deregistered => "service.deregistered",
            EventKind::StatusChanged => "service.status_changed",
            EventKind::Expired => "service.expired",
        }
    }

    /// The kind whose full type name is `name` (`service.registered`, ...).
    pub fn from_type_name(name: &str) -> Option<EventKind> {
        [
            EventKind::Registered,
            EventKind::Updated,
            EventKind::Deregistered,
            EventKind::StatusChanged,
            EventKind::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    /// The type without its `service.` prefix, e.g. `registered` (a NATS subject token).
    pub fn short_name(self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::Updated => "updated",
            EventKind::Deregistered => "deregistered",
            EventKind::StatusChanged => "status_changed",
            EventKind::Expired => "expired",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change. `instance` is the record after the change, or the last record
/// before removal for `Deregistered` and `Expired`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryEvent {
    id: String,
    kind: EventKind,
    instance: Instance,
    previous_status: Option<HealthStatus>,
    occurred_at: DateTime<Utc>,
    origin: Option<Arc<str>>,
}

impl RegistryEvent {
    /// An event about `instance`, whose revision is the revision of the change.
    /// It gets a fresh random id (consumers dedupe on it; a revision alone is
    /// not enough, as an embedded registry starts counting again after a restart).
    pub fn new(
        kind: EventKind,
        instance: Instance,
        previous_status: Option<HealthStatus>,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            instance,
            previous_status,
            occurred_at,
            origin: None,
        }
    }

    /// An event read back from where it was kept (the outbox, a bus), with
    /// its original id.
    pub fn restore(
        id: String,
        kind: EventKind,
        instance: Instance,
        previous_status: Option<HealthStatus>,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            kind,
            instance,
            previous_status,
            occurred_at,
            origin: None,
        }
    }

    /// The same event, marked as made through the replica `origin` (carried
    /// in bus headers, not in the envelope, so that a replica can skip its
    /// own changes when it follows the bus).
    pub fn with_origin(mut self, origin: impl Into<Arc<str>>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Unique id (a UUID).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// What happened.
    pub fn kind(&self) -> EventKind {
        self.kind
    }
    /// Tenant whose registry changed.
    pub fn tenant_id(&self) -> &TenantId {
        self.instance.tenant_id()
    }
    /// Service concerned.
    pub fn service_name(&self) -> &ServiceName {
        self.instance.service_name()
    }
    /// Instance concerned.
    pub fn instance_id(&self) -> &InstanceId {
        self.instance.instance_id()
    }
    /// Revision of the change.
    pub fn revision(&self) -> Revision {
        self.instance.revision()
    }
    /// The instance after the change (or before removal).
    pub fn instance(&self) -> &Instance {
        &self.instance
    }
    /// For status changes, the status before.
    pub fn previous_status(&self) -> Option<HealthStatus> {
        self.previous_status
    }
    /// When the change happened.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    /// The replica the change was made through, when known.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }
}
