//! Wire types: request bodies as clients send them and response bodies as the API contract shows them.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
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

/// RFC 3339, UTC, millisecond precision, `Z` suffix: `2026-11-27T14:35:05.123Z`.
///
/// Written into a stack buffer: a service lookup serializes three timestamps
/// per instance, and allocating a string for each showed in the benchmark.
fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
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
#[derive(Debug, Serialize)]
pub struct InstanceBody<'a> {
    tenant_id: &'a str,
    service_name: &'a str,
    instance_id: &'a str,
    host: &'a str,
    port: u16,
    protocol: &'static str,
    url: Url<'a>,
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
#[derive(Debug, Serialize)]
pub struct ListBody<'a> {
    pub(crate) services: Vec<InstanceBody<'a>>,
    pub(crate) count: usize,
    pub(crate) revision: Revision,
    /// Present when another page follows: pass it back as `?cursor=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<String>,
    /// Present when stored instances were left out because they cannot be
    /// read (PostgreSQL mode only; each is logged as an error).
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `GET /api/v1/discovery/services/{service_name}`.
#[derive(Debug, Serialize)]
pub struct ServiceBody<'a> {
    pub(crate) service_name: &'a str,
    pub(crate) instances: Vec<InstanceBody<'a>>,
    pub(crate) revision: Revision,
    /// Like [`ListBody::skipped`].
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) skipped: usize,
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
#[derive(Debug, Serialize)]
pub struct HealthBody {
    pub(crate) status: &'static str,
    pub(crate) service: &'static str,
    pub(crate) version: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) timestamp: DateTime<Utc>,
}
