//! Wire types: request bodies as clients send them and response bodies as the API contract shows them.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use hub_core::{HealthStatus, Instance, RegistrationInput, Revision};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `POST /api/v1/discovery/register`. `name` is accepted for `service_name`
/// (clients of the original hub). Unknown fields are ignored.
///
/// The schema states the rules hub-core enforces (its answer to a breach is
/// 422 naming the field); hub-core stays the one place that checks them.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "service_name": "api-gateway-tenant1",
    "host": "10.0.1.10",
    "port": 8000,
    "metadata": {"region": "eu-west"}
}))]
pub struct RegisterRequest {
    /// The service's name (`name` is accepted too): 1-128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    #[serde(alias = "name")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    service_name: String,
    /// Tells instances of one service apart; default: the service name, so
    /// registering a name again updates it. 1-128 of `[A-Za-z0-9._:-]`, not `.` or `..`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    instance_id: Option<String>,
    /// Host name or IP address callers use.
    host: String,
    /// TCP port, 1-65535.
    #[schema(minimum = 1, maximum = 65535)]
    port: i64,
    /// How callers reach the instance: `http` (default), `https`, `grpc`, `tcp`, `ws`, `wss`.
    #[schema(value_type = Option<crate::openapi::ProtocolDoc>)]
    protocol: Option<String>,
    /// Path of the instance's own health check, starting with `/`, without
    /// spaces, at most 255 bytes; default `/health`.
    #[schema(pattern = "^/[^\\s]*$", max_length = 255)]
    health_endpoint: Option<String>,
    /// The instance's version: 1-64 bytes without control or invisible characters.
    #[schema(min_length = 1, max_length = 64)]
    version: Option<String>,
    /// Up to 64 labels to filter by (`?tag=`), each 1-128 bytes without
    /// control or invisible characters.
    #[schema(value_type = Option<Vec<crate::openapi::TagDoc>>, max_items = 64)]
    tags: Option<Vec<String>>,
    /// A JSON object up to 16 KiB and 32 levels deep, read back as sent.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Lease length in seconds, 5-3600; default 30.
    #[schema(minimum = 5, maximum = 3600)]
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

/// Metrics a heartbeat may carry (each a finite number; hub-core checks ranges).
#[derive(Debug, Deserialize, Default, ToSchema)]
pub struct MetricsRequest {
    /// Milliseconds, non-negative.
    #[schema(minimum = 0.0)]
    pub(crate) response_time_ms: Option<f64>,
    /// Percent, 0-100.
    #[schema(minimum = 0.0, maximum = 100.0)]
    pub(crate) cpu_usage: Option<f64>,
    /// Non-negative.
    #[schema(minimum = 0.0)]
    pub(crate) memory_usage: Option<f64>,
    /// A fraction, 0-1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub(crate) error_rate: Option<f64>,
}

/// `POST /api/v1/discovery/heartbeat`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"service_name": "api-gateway-tenant1"}))]
pub struct HeartbeatRequest {
    /// The registered service (`name` is accepted too).
    #[serde(alias = "name")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub(crate) service_name: String,
    /// The instance; default: the service name.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub(crate) instance_id: Option<String>,
    /// The state the instance reports; default `passing`.
    #[schema(value_type = Option<crate::openapi::HealthStatusDoc>)]
    pub(crate) status: Option<String>,
    pub(crate) metrics: Option<MetricsRequest>,
}

/// RFC 3339, UTC, millisecond precision, `Z` suffix: `2026-11-27T14:35:05.123Z`.
///
/// Written into a stack buffer: a service lookup serializes three timestamps
/// per instance, and allocating a string for each showed in the benchmark.
pub(crate) fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    // Calendar fields from the naive UTC value: `DateTime::year()` and friends
    // would apply the (zero) offset again for every field.
    let t = t.naive_utc();
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return s.serialize_str(&t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.unsigned_abs(), 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    // Leap seconds are carried in nanoseconds >= 1e9; clamp to .999.
    put(20, (t.nanosecond() / 1_000_000).min(999), 3);
    match std::str::from_utf8(&buf) {
        Ok(text) => s.serialize_str(text),
        Err(_) => s.serialize_str(&t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)),
    }
}

/// `protocol://host:port`, written straight into the JSON output.
struct Url<'a>(&'a Instance);

impl std::fmt::Debug for Url<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.url_display())
    }
}

impl Serialize for Url<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.url_display())
    }
}

/// An instance as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "tenant_id": "tenant1",
    "service_name": "api-gateway-tenant1",
    "instance_id": "api-gateway-tenant1",
    "host": "10.0.1.10",
    "port": 8000,
    "protocol": "http",
    "url": "http://10.0.1.10:8000",
    "health_endpoint": "/health",
    "version": null,
    "tags": [],
    "metadata": {"region": "eu-west"},
    "ttl_seconds": 30,
    "status": "passing",
    "registered_at": "2026-11-27T14:35:05.123Z",
    "last_heartbeat": "2026-11-27T14:35:05.123Z",
    "lease_expires_at": "2026-11-27T14:35:35.123Z",
    "revision": 1
}))]
pub struct InstanceBody<'a> {
    tenant_id: &'a str,
    service_name: &'a str,
    instance_id: &'a str,
    host: &'a str,
    #[schema(minimum = 1)]
    port: u16,
    #[schema(value_type = crate::openapi::ProtocolDoc)]
    protocol: &'static str,
    /// `protocol://host:port`.
    #[schema(value_type = String)]
    url: Url<'a>,
    health_endpoint: &'a str,
    version: Option<&'a str>,
    #[schema(value_type = Vec<String>)]
    tags: &'a [String],
    #[schema(value_type = Object)]
    metadata: &'a Map<String, Value>,
    ttl_seconds: u32,
    #[schema(value_type = crate::openapi::HealthStatusDoc)]
    status: HealthStatus,
    #[serde(serialize_with = "rfc3339")]
    registered_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    last_heartbeat: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    lease_expires_at: DateTime<Utc>,
    /// The tenant's revision when this instance last changed.
    #[schema(value_type = u64)]
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
            url: Url(i),
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
#[derive(Debug, Serialize, ToSchema)]
pub struct ListBody<'a> {
    pub(crate) services: Vec<InstanceBody<'a>>,
    pub(crate) count: usize,
    /// The tenant's revision: it grows with every change of its instances.
    #[schema(value_type = u64)]
    pub(crate) revision: Revision,
    /// Present when another page follows: pass it back as `?cursor=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<String>,
    /// Present when stored instances were left out because they cannot be
    /// read (PostgreSQL mode only; each is logged as an error).
    #[serde(skip_serializing_if = "is_zero")]
    #[schema(required = false, minimum = 1)]
    pub(crate) skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `GET /api/v1/discovery/services/{service_name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceBody<'a> {
    pub(crate) service_name: &'a str,
    pub(crate) instances: Vec<InstanceBody<'a>>,
    #[schema(value_type = u64)]
    pub(crate) revision: Revision,
    /// Like [`ListBody::skipped`].
    #[serde(skip_serializing_if = "is_zero")]
    #[schema(required = false, minimum = 1)]
    pub(crate) skipped: usize,
}

/// `DELETE /api/v1/discovery/services/{service_name}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"deregistered": 1}))]
pub struct DeregisteredBody {
    /// How many instances were removed.
    pub(crate) deregistered: usize,
}

/// `POST /api/v1/discovery/heartbeat`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "status": "passing",
    "lease_expires_at": "2026-11-27T14:36:05.123Z",
    "service_name": "api-gateway-tenant1",
    "instance_id": "api-gateway-tenant1",
    "revision": 2
}))]
pub struct HeartbeatBody<'a> {
    #[schema(value_type = crate::openapi::HealthStatusDoc)]
    pub(crate) status: HealthStatus,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) lease_expires_at: DateTime<Utc>,
    pub(crate) service_name: &'a str,
    pub(crate) instance_id: &'a str,
    #[schema(value_type = u64)]
    pub(crate) revision: Revision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct At(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);

    #[test]
    fn timestamps_match_chrono_rfc3339_millis() {
        for text in [
            "2026-11-27T14:35:05.123456Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.999999999Z",
            "0001-01-01T00:00:00.001Z",
        ] {
            let t: DateTime<Utc> = text.parse().unwrap();
            let ours = serde_json::to_string(&At(t)).unwrap();
            let chrono = format!("\"{}\"", t.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(ours, chrono);
        }
    }
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "status": "healthy",
    "service": "central-hub",
    "version": "0.1.0",
    "timestamp": "2026-11-27T14:35:05.123Z"
}))]
pub struct HealthBody {
    /// Always `healthy`: the process answers.
    #[schema(value_type = String, pattern = "^healthy$")]
    pub(crate) status: &'static str,
    pub(crate) service: &'static str,
    pub(crate) version: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) timestamp: DateTime<Utc>,
}

/// `GET /health/ready` when the store answers (503 `store_unavailable` otherwise).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "components": {"store": "up"}}))]
pub struct ReadyBody {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub(crate) status: &'static str,
    /// The state of each component readiness depends on.
    pub(crate) components: ReadyComponents,
}

/// The components `/health/ready` checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyComponents {
    /// The source of truth (memory or PostgreSQL): `up`.
    #[schema(value_type = String, pattern = "^up$")]
    pub(crate) store: &'static str,
}
