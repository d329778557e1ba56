//! Wire types: request bodies as clients send them and response bodies as the API contract shows them.

use chrono::{DateTime, SecondsFormat, Utc};
use hub_core::{HealthStatus, Instance, RegistrationInput, Revision};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// `POST /api/v1/discovery/register`. `name` is accepted for `service_name`
/// (clients of the original hub). Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct RegisterRequest {
    #[serde(alias = "name")]
    service_name: String,
    instance_id: Option<String>,
    host: String,
    port: i64,
    protocol: Option<String>,
    health_endpoint: Option<String>,
    version: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
    ttl_seconds: Option<i64>,
}

impl From<RegisterRequest> for RegistrationInput {
    fn from(r: RegisterRequest) -> Self {
        RegistrationInput {
            service_name: r.service_name,
            instance_id: r.instance_id,
            host: r.host,
            port: r.port,
            protocol: r.protocol,
            health_endpoint: r.health_endpoint,
            version: r.version,
            tags: r.tags.unwrap_or_default(),
            metadata: r.metadata,
            ttl_seconds: r.ttl_seconds,
        }
    }
}

/// Metrics a heartbeat may carry.
#[derive(Debug, Deserialize, Default)]
pub struct MetricsRequest {
    pub(crate) response_time_ms: Option<f64>,
    pub(crate) cpu_usage: Option<f64>,
    pub(crate) memory_usage: Option<f64>,
    pub(crate) error_rate: Option<f64>,
}

/// `POST /api/v1/discovery/heartbeat`.
#[derive(Debug, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(alias = "name")]
    pub(crate) service_name: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) metrics: Option<MetricsRequest>,
}

/// RFC 3339, UTC, millisecond precision, `Z` suffix.
fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// An instance as the API shows it.
#[derive(Debug, Serialize)]
pub struct InstanceBody<'a> {
    tenant_id: &'a str,
    service_name: &'a str,
    instance_id: &'a str,
    host: &'a str,
    port: u16,
    protocol: &'static str,
    url: String,
    health_endpoint: &'a str,
    version: Option<&'a str>,
    tags: &'a [String],
    metadata: &'a Map<String, Value>,
    ttl_seconds: u32,
    status: HealthStatus,
    #[serde(serialize_with = "rfc3339")]
    registered_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    last_heartbeat: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    lease_expires_at: DateTime<Utc>,
    revision: Revision,
}

impl<'a> From<&'a Instance> for InstanceBody<'a> {
    fn from(i: &'a Instance) -> Self {
        let r = i.registration();
        InstanceBody {
            tenant_id: i.tenant_id().as_str(),
            service_name: i.service_name().as_str(),
            instance_id: i.instance_id().as_str(),
            host: i.host().as_str(),
            port: i.port(),
            protocol: i.protocol().as_str(),
            url: i.url(),
            health_endpoint: r.health_endpoint(),
            version: r.version(),
            tags: i.tags(),
            metadata: i.metadata(),
            ttl_seconds: r.ttl_seconds(),
            status: i.status(),
            registered_at: i.registered_at(),
            last_heartbeat: i.last_heartbeat(),
            lease_expires_at: i.lease_expires_at(),
            revision: i.revision(),
        }
    }
}

/// `GET /api/v1/discovery/services`.
#[derive(Debug, Serialize)]
pub struct ListBody<'a> {
    pub(crate) services: Vec<InstanceBody<'a>>,
    pub(crate) count: usize,
    pub(crate) revision: Revision,
    /// Present when another page follows: pass it back as `?cursor=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<String>,
}

/// `GET /api/v1/discovery/services/{service_name}`.
#[derive(Debug, Serialize)]
pub struct ServiceBody<'a> {
    pub(crate) service_name: &'a str,
    pub(crate) instances: Vec<InstanceBody<'a>>,
    pub(crate) revision: Revision,
}

/// `DELETE /api/v1/discovery/services/{service_name}`.
#[derive(Debug, Serialize)]
pub struct DeregisteredBody {
    pub(crate) deregistered: usize,
}

/// `POST /api/v1/discovery/heartbeat`.
#[derive(Debug, Serialize)]
pub struct HeartbeatBody<'a> {
    pub(crate) status: HealthStatus,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) lease_expires_at: DateTime<Utc>,
    pub(crate) service_name: &'a str,
    pub(crate) instance_id: &'a str,
    pub(crate) revision: Revision,
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub struct HealthBody {
    pub(crate) status: &'static str,
    pub(crate) service: &'static str,
    pub(crate) version: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) timestamp: DateTime<Utc>,
}
