//! The event envelope: the one JSON form in which registry events leave the process (NATS, Kafka, outbox).
//!
//! It is part of the domain's contract with the outside world, so it lives
//! here, built from a [`RegistryEvent`] in exactly one place, and every
//! adapter (the NATS and Kafka publishers, the PostgreSQL outbox) carries
//! these bytes unchanged. Consumers dedupe on `id`; `schema` names the
//! version of this shape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::event::{EventKind, RegistryEvent};
use super::ids::TenantId;
use super::instance::{HealthStatus, Instance, Revision};
use super::registration::{Registration, RegistrationInput};

/// The version of the envelope's shape; a breaking change gets a new one.
pub const SCHEMA: &str = "central-hub.registry-event.v1";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Serialize)]
struct Envelope<'a> {
    schema: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    tenant_id: &'a str,
    service_name: &'a str,
    instance_id: &'a str,
    revision: u64,
    occurred_at: String,
    data: Data<'a>,
}

/// The instance after the change (before it, for removals).
#[derive(Serialize)]
struct Data<'a> {
    host: &'a str,
    port: u16,
    protocol: &'static str,
    url: String,
    health_endpoint: &'a str,
    version: Option<&'a str>,
    tags: &'a [String],
    metadata: &'a Map<String, Value>,
    ttl_seconds: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_status: Option<&'static str>,
    registered_at: String,
    last_heartbeat: String,
    lease_expires_at: String,
}

/// The envelope of `event` as JSON bytes.
pub fn to_json(event: &RegistryEvent) -> Vec<u8> {
    let instance = event.instance();
    let registration = instance.registration();
    let envelope = Envelope {
        schema: SCHEMA,
        id: event.id(),
        kind: event.kind().as_str(),
        tenant_id: event.tenant_id().as_str(),
        service_name: event.service_name().as_str(),
        instance_id: event.instance_id().as_str(),
        revision: event.revision().get(),
        occurred_at: rfc3339(event.occurred_at()),
        data: Data {
            host: instance.host().as_str(),
            port: instance.port(),
            protocol: instance.protocol().as_str(),
            url: instance.url(),
            health_endpoint: registration.health_endpoint(),
            version: registration.version(),
            tags: instance.tags(),
            metadata: instance.metadata(),
            ttl_seconds: registration.ttl_seconds(),
            status: instance.status().as_str(),
            previous_status: event.previous_status().map(|s| s.as_str()),
            registered_at: rfc3339(instance.registered_at()),
            last_heartbeat: rfc3339(instance.last_heartbeat()),
            lease_expires_at: rfc3339(instance.lease_expires_at()),
        },
    };
    // Serializing this struct cannot fail: every field is a string, number,
    // array or map with string keys. An empty object is the fallback rather
    // than a panic.
    serde_json::to_vec(&envelope).unwrap_or_else(|_| b"{}".to_vec())
}

/// The envelope as read back (owned fields).
#[derive(Deserialize)]
struct Incoming {
    schema: String,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    tenant_id: String,
    service_name: String,
    instance_id: String,
    revision: u64,
    occurred_at: DateTime<Utc>,
    data: IncomingData,
}

#[derive(Deserialize)]
struct IncomingData {
    host: String,
    port: i64,
    protocol: String,
    health_endpoint: String,
    version: Option<String>,
    tags: Vec<String>,
    metadata: Value,
    ttl_seconds: i64,
    status: String,
    previous_status: Option<String>,
    registered_at: DateTime<Utc>,
    last_heartbeat: DateTime<Utc>,
    lease_expires_at: DateTime<Utc>,
}

/// Why bytes are not an envelope this version understands.
#[derive(Debug, thiserror::Error)]
#[error("not a {SCHEMA} envelope: {0}")]
pub struct EnvelopeError(String);

/// Reads an envelope back into the event it was made from (same id), for
/// replicas that follow each other through the bus. Every field passes the
/// checks its type needs again ([`Registration::restore`]): bytes from a bus
/// are input like any other, but what a store once accepted is never refused.
pub fn from_json(bytes: &[u8]) -> Result<RegistryEvent, EnvelopeError> {
    let e: Incoming = serde_json::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))?;
    if e.schema != SCHEMA {
        return Err(EnvelopeError(format!("schema is {:?}", e.schema)));
    }
    let kind = EventKind::from_type_name(&e.kind)
        .ok_or_else(|| EnvelopeError(format!("type {:?}", e.kind)))?;
    let tenant = TenantId::parse(e.tenant_id).map_err(|e| EnvelopeError(e.to_string()))?;
    let d = e.data;
    // `restore`: an envelope carries what a store accepted; the admission
    // rules were checked when it was written, and re-checking them here
    // (or checking rules added since) would make a replica refuse an event
    // its origin accepted.
    let registration = Registration::restore(RegistrationInput {
        service_name: e.service_name,
        instance_id: Some(e.instance_id),
        host: d.host,
        port: d.port,
        protocol: Some(d.protocol),
        health_endpoint: Some(d.health_endpoint),
        version: d.version,
        tags: d.tags,
        metadata: Some(d.metadata),
        ttl_seconds: Some(d.ttl_seconds),
    })
    .map_err(|e| EnvelopeError(e.to_string()))?;
    let status = |s: &str| {
        s.parse::<HealthStatus>()
            .map_err(|_| EnvelopeError(format!("status {s:?}")))
    };
    let previous_status = d.previous_status.as_deref().map(status).transpose()?;
    let instance = Instance::restore(
        tenant,
        registration,
        status(&d.status)?,
        d.registered_at,
        d.last_heartbeat,
        d.lease_expires_at,
        Revision::new(e.revision),
    );
    Ok(RegistryEvent::restore(
        e.id,
        kind,
        instance,
        previous_status,
        e.occurred_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::EventKind;
    use crate::domain::ids::TenantId;
    use crate::domain::instance::{HealthStatus, Instance, Revision};
    use crate::domain::registration::{Registration, RegistrationInput};

    /// The envelope of a minimal `service.registered` event, as JSON to edit.
    fn minimal_registered() -> Value {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let registration = Registration::try_from(RegistrationInput {
            service_name: "billing".into(),
            host: "h".into(),
            port: 1,
            ..Default::default()
        })
        .unwrap();
        let instance = Instance::registered(
            TenantId::parse("t").unwrap(),
            registration,
            at,
            None,
            Revision::new(1),
        );
        serde_json::from_slice(&to_json(&RegistryEvent::new(
            EventKind::Registered,
            instance,
            None,
            at,
        )))
        .unwrap()
    }

    #[test]
    fn envelope_has_the_documented_fields() {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let registration = Registration::try_from(RegistrationInput {
            service_name: "billing".into(),
            instance_id: Some("b-1".into()),
            host: "10.0.0.7".into(),
            port: 8080,
            tags: vec!["eu".into()],
            metadata: Some(serde_json::json!({"zone": "a"})),
            ..Default::default()
        })
        .unwrap();
        let instance = Instance::registered(
            TenantId::parse("tenant1").unwrap(),
            registration,
            at,
            None,
            Revision::new(7),
        )
        .with_status(HealthStatus::Critical);
        let event = RegistryEvent::new(
            EventKind::StatusChanged,
            instance,
            Some(HealthStatus::Passing),
            at,
        );
        let value: Value = serde_json::from_slice(&to_json(&event)).unwrap();
        assert_eq!(value["schema"], SCHEMA);
        assert_eq!(value["id"], event.id());
        assert_eq!(value["type"], "service.status_changed");
        assert_eq!(value["tenant_id"], "tenant1");
        assert_eq!(value["service_name"], "billing");
        assert_eq!(value["instance_id"], "b-1");
        assert_eq!(value["revision"], 7);
        assert_eq!(value["occurred_at"], "2027-01-15T08:00:00.000Z");
        assert_eq!(value["data"]["url"], "http://10.0.0.7:8080");
        assert_eq!(value["data"]["status"], "critical");
        assert_eq!(value["data"]["previous_status"], "passing");
        assert_eq!(value["data"]["metadata"]["zone"], "a");
        assert_eq!(value["data"]["tags"][0], "eu");
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 9, "{keys:?}");
    }

    #[test]
    fn an_envelope_reads_back_into_the_same_event() {
        let at = DateTime::<Utc>::from_timestamp_millis(1_800_000_000_123).unwrap();
        let registration = Registration::try_from(RegistrationInput {
            service_name: "billing".into(),
            instance_id: Some("b-1".into()),
            host: "10.0.0.7".into(),
            port: 8080,
            tags: vec!["eu".into(), "gpu".into()],
            metadata: Some(serde_json::json!({"zone": "a", "n": [1, 2]})),
            version: Some("1.2.3".into()),
            ..Default::default()
        })
        .unwrap();
        let instance = Instance::registered(
            TenantId::parse("tenant1").unwrap(),
            registration,
            at,
            Some(at - chrono::Duration::seconds(5)),
            Revision::new(42),
        )
        .with_status(HealthStatus::Warning);
        for previous in [None, Some(HealthStatus::Passing)] {
            let event =
                RegistryEvent::new(EventKind::StatusChanged, instance.clone(), previous, at);
            let back = from_json(&to_json(&event)).unwrap();
            assert_eq!(back, event);
            assert_eq!(to_json(&back), to_json(&event));
        }
    }

    #[test]
    fn an_envelope_written_under_older_rules_still_reads_back() {
        let mut old = minimal_registered();
        // What an older replica accepted: `..`, an invisible tag, metadata
        // over today's size limit. A replica must not refuse its events.
        old["instance_id"] = serde_json::json!("..");
        old["data"]["tags"] = serde_json::json!(["prod\u{200b}"]);
        old["data"]["metadata"] = serde_json::json!({"k": "x".repeat(20_000)});
        let back = from_json(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(back.instance_id().as_str(), "..");
        assert_eq!(back.instance().tags(), ["prod\u{200b}"]);
    }

    #[test]
    fn foreign_or_invalid_envelopes_are_refused() {
        assert!(from_json(b"not json").is_err());
        assert!(from_json(b"{}").is_err());
        let good = minimal_registered();
        for (field, value) in [
            ("schema", serde_json::json!("central-hub.registry-event.v2")),
            ("type", serde_json::json!("service.exploded")),
            ("tenant_id", serde_json::json!("no/slash")),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(
                from_json(&serde_json::to_vec(&bad).unwrap()).is_err(),
                "{field}"
            );
        }
        let mut bad = good.clone();
        bad["data"]["port"] = serde_json::json!(0);
        assert!(from_json(&serde_json::to_vec(&bad).unwrap()).is_err());
    }
}
