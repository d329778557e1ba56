//! The client's own wire types: what it sends to the hub and reads back (the server's JSON is the contract, checked by tests against a real server).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The health of an instance as the hub reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// The lease is alive and the instance reports itself healthy.
    Passing,
    /// The instance reported a degraded state.
    Warning,
    /// The lease expired or the instance reported a failure.
    Critical,
    /// A state a newer hub reports that this client does not know.
    #[serde(other)]
    Unknown,
}

impl HealthStatus {
    /// The wire name (`passing`, `warning`, `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
            HealthStatus::Unknown => "unknown",
        }
    }
}

/// One registered instance, as the hub shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub tenant_id: String,
    pub service_name: String,
    pub instance_id: String,
    pub host: String,
    pub port: u16,
    pub protocol: String,
    /// `protocol://host:port`.
    pub url: String,
    pub health_endpoint: String,
    pub version: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub ttl_seconds: u32,
    pub status: HealthStatus,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    /// The tenant's revision when this instance last changed.
    pub revision: u64,
}

/// What to register: the body of `POST /api/v1/discovery/register`.
///
/// Only the service name, host and port are required; the hub applies its
/// defaults to the rest (instance id = service name, `http`, `/health`,
/// ttl 30 s) and answers 422 `validation_failed` naming a field it refuses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistrationSpec {
    service_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
    host: String,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u32>,
}

/// The hub's default lease length when a registration names none.
pub(crate) const DEFAULT_TTL_SECONDS: u32 = 30;

impl RegistrationSpec {
    /// A registration of `service_name` reachable at `host:port`.
    pub fn new(service_name: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            service_name: service_name.into(),
            instance_id: None,
            host: host.into(),
            port,
            protocol: None,
            health_endpoint: None,
            version: None,
            tags: Vec::new(),
            metadata: None,
            ttl_seconds: None,
        }
    }

    /// Tells instances of one service apart (default: the service name).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// `http` (default), `https`, `grpc`, `tcp`, `ws` or `wss`.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }

    /// The instance's own health path (default `/health`).
    pub fn health_endpoint(mut self, path: impl Into<String>) -> Self {
        self.health_endpoint = Some(path.into());
        self
    }

    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Adds a tag (callers filter with `?tag=`).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// A JSON object read back as sent (at most 16 KiB).
    pub fn metadata(mut self, metadata: Map<String, Value>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The lease length in whole seconds (the hub accepts 5-3600; default 30).
    pub fn ttl_seconds(mut self, seconds: u32) -> Self {
        self.ttl_seconds = Some(seconds);
        self
    }

    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The instance id the hub will use: the one given, or the service name.
    pub fn effective_instance_id(&self) -> &str {
        self.instance_id.as_deref().unwrap_or(&self.service_name)
    }

    /// The lease length the hub will apply.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS)))
    }
}

/// Metrics a heartbeat may carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeartbeatMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_usage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
}

/// The body of `POST /api/v1/discovery/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeartbeatRequest {
    pub service_name: String,
    pub instance_id: Option<String>,
    /// The state the instance reports; the hub's default is `passing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<HealthStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<HeartbeatMetrics>,
}

impl HeartbeatRequest {
    /// A plain `passing` heartbeat of one instance.
    pub fn new(service_name: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            instance_id: Some(instance_id.into()),
            status: None,
            metrics: None,
        }
    }
}

/// The answer to a heartbeat: the renewed lease.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lease {
    pub status: HealthStatus,
    pub lease_expires_at: DateTime<Utc>,
    pub service_name: String,
    pub instance_id: String,
    pub revision: u64,
}

/// One page of `GET /api/v1/discovery/services`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
    /// The tenant's revision this page reflects.
    pub revision: u64,
    /// Pass back as [`ListQuery::cursor`] for the next page.
    pub next_cursor: Option<String>,
    /// `X-Hub-Index`, on a hub that serves blocking queries.
    pub index: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct ListBody {
    pub(crate) services: Vec<Instance>,
    pub(crate) revision: u64,
    #[serde(default)]
    pub(crate) next_cursor: Option<String>,
}

/// The instances of one service (`GET /api/v1/discovery/services/{name}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInstances {
    pub service_name: String,
    pub instances: Vec<Instance>,
    pub revision: u64,
    /// `X-Hub-Index`, on a hub that serves blocking queries.
    pub index: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct ServiceBody {
    pub(crate) service_name: String,
    pub(crate) instances: Vec<Instance>,
    pub(crate) revision: u64,
}

#[derive(Deserialize)]
pub(crate) struct DeregisteredBody {
    pub(crate) deregistered: usize,
}

/// Filters and paging of a list call; all optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub service_name: Option<String>,
    /// Every tag must match.
    pub tags: Vec<String>,
    pub status: Option<HealthStatus>,
    /// Page size (hub default 1000, max 10000).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// A blocking query: answer once the revision passes this index.
    pub block: Option<Block>,
}

/// The blocking part of a query: `?index=N&wait=Ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The `X-Hub-Index` of the previous answer.
    pub index: u64,
    /// How long the hub may hold the request (it caps this at 10 min).
    pub wait: Duration,
}

impl Block {
    /// The query pairs `index` and `wait` (in milliseconds, at least one).
    pub(crate) fn pairs(&self) -> [(&'static str, String); 2] {
        [
            ("index", self.index.to_string()),
            ("wait", format!("{}ms", self.wait.as_millis().max(1))),
        ]
    }
}

impl ListQuery {
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(name) = &self.service_name {
            pairs.push(("service_name", name.clone()));
        }
        for tag in &self.tags {
            pairs.push(("tag", tag.clone()));
        }
        if let Some(status) = self.status {
            pairs.push(("status", status.as_str().to_owned()));
        }
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            pairs.push(("cursor", cursor.clone()));
        }
        if let Some(block) = &self.block {
            pairs.extend(block.pairs());
        }
        pairs
    }
}
