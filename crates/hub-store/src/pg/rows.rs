//! Mapping between `service_registry` rows and hub-core's `Instance`.

use chrono::{DateTime, Utc};
use hub_core::{
    HealthStatus, Instance, Registration, RegistrationInput, RegistryError, Revision, TenantId,
};
use serde_json::{Value, json};
use tokio_postgres::Row;

/// The columns every instance query selects, in the order [`instance`] reads them.
pub(crate) const COLUMNS: &str = "service_name, instance_id, host, port, protocol, \
    health_endpoint, version, tags, metadata, ttl_seconds, status, registered_at, \
    last_heartbeat, lease_expires_at, revision";

fn corrupt(what: String) -> RegistryError {
    RegistryError::Unexpected(what.into())
}

/// Rebuilds an instance from a row of [`COLUMNS`]. The values pass the checks
/// their types need again ([`Registration::restore`]): a row that breaks them
/// (written by hand, say) is reported as an unexpected error naming the row,
/// never served. The admission rules (the metadata size limit, invisible
/// characters) are not re-checked: a read never refuses what a write accepted.
pub(crate) fn instance(tenant: &TenantId, row: &Row) -> Result<Instance, RegistryError> {
    instance_at(tenant, row, 0)
}

/// Like [`instance`], for a row whose [`COLUMNS`] start at column `first`.
pub(crate) fn instance_at(
    tenant: &TenantId,
    row: &Row,
    first: usize,
) -> Result<Instance, RegistryError> {
    let decode = |e: tokio_postgres::Error| RegistryError::Unexpected(Box::new(e));
    let service_name: String = row.try_get(first).map_err(decode)?;
    let instance_id: String = row.try_get(first + 1).map_err(decode)?;
    let registration = Registration::restore(RegistrationInput {
        service_name: service_name.clone(),
        instance_id: Some(instance_id.clone()),
        host: row.try_get(first + 2).map_err(decode)?,
        port: i64::from(row.try_get::<_, i32>(first + 3).map_err(decode)?),
        protocol: Some(row.try_get(first + 4).map_err(decode)?),
        health_endpoint: Some(row.try_get(first + 5).map_err(decode)?),
        version: row.try_get(first + 6).map_err(decode)?,
        tags: row.try_get(first + 7).map_err(decode)?,
        metadata: Some(row.try_get::<_, Value>(first + 8).map_err(decode)?),
        ttl_seconds: Some(i64::from(row.try_get::<_, i32>(first + 9).map_err(decode)?)),
    })
    .map_err(|e| {
        corrupt(format!(
            "stored instance {service_name}/{instance_id} of tenant {tenant} is invalid: {e}"
        ))
    })?;
    let status: String = row.try_get(first + 10).map_err(decode)?;
    let status: HealthStatus = status
        .parse()
        .map_err(|_| corrupt(format!("stored status {status:?} is unknown")))?;
    let revision: i64 = row.try_get(first + 14).map_err(decode)?;
    Ok(Instance::restore(
        tenant.clone(),
        registration,
        status,
        row.try_get::<_, DateTime<Utc>>(first + 11)
            .map_err(decode)?,
        row.try_get::<_, DateTime<Utc>>(first + 12)
            .map_err(decode)?,
        row.try_get::<_, DateTime<Utc>>(first + 13)
            .map_err(decode)?,
        revision_of(revision)?,
    ))
}

/// A stored revision (BIGINT, never negative by its CHECK).
pub(crate) fn revision_of(value: i64) -> Result<Revision, RegistryError> {
    u64::try_from(value)
        .map(Revision::new)
        .map_err(|_| corrupt(format!("negative revision {value}")))
}

/// A revision as stored.
pub(crate) fn stored(revision: Revision) -> i64 {
    i64::try_from(revision.get()).unwrap_or(i64::MAX)
}

/// The audit payload of a change: the instance as it was after it (or
/// before, for removals).
pub(crate) fn payload(instance: &Instance) -> Value {
    registration_payload(
        instance.registration(),
        instance.status(),
        instance.lease_expires_at(),
    )
}

/// The audit payload of a registration with its status and lease.
pub(crate) fn registration_payload(
    r: &Registration,
    status: HealthStatus,
    lease_expires_at: DateTime<Utc>,
) -> Value {
    json!({
        "host": r.host().as_str(),
        "port": r.port(),
        "protocol": r.protocol().as_str(),
        "health_endpoint": r.health_endpoint(),
        "version": r.version(),
        "tags": r.tags(),
        "metadata": r.metadata(),
        "ttl_seconds": r.ttl_seconds(),
        "status": status.as_str(),
        "lease_expires_at": lease_expires_at,
    })
}

/// The audit payload of a stored row as PostgreSQL holds it, as JSON text,
/// for a row that cannot be read into an instance: the keys of [`payload`]
/// plus `"unreadable": true`. Built in SQL and carried as text, it never
/// passes through serde_json, so values serde_json cannot represent are
/// audited exactly as they were stored.
pub(crate) const RAW_PAYLOAD: &str = "jsonb_build_object('host', host, 'port', port, \
    'protocol', protocol, 'health_endpoint', health_endpoint, 'version', version, \
    'tags', to_jsonb(tags), 'metadata', metadata, 'ttl_seconds', ttl_seconds, \
    'status', status, 'lease_expires_at', lease_expires_at, 'unreadable', true)::text";

/// Rebuilds an instance from a [`payload`] and the fields it does not carry
/// (the outbox keeps its events this way). The values pass the checks their
/// types need again, like [`instance`].
pub(crate) fn instance_from_payload(
    tenant: &TenantId,
    service_name: String,
    instance_id: String,
    payload: &Value,
    registered_at: DateTime<Utc>,
    last_heartbeat: DateTime<Utc>,
    revision: Revision,
) -> Result<Instance, RegistryError> {
    let bad = |what: &str| {
        corrupt(format!(
            "stored event payload of {service_name}/{instance_id} (tenant {tenant}) has no valid {what}"
        ))
    };
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_owned);
    let tags = payload
        .get("tags")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("tags"))?
        .iter()
        .map(|t| t.as_str().map(str::to_owned).ok_or_else(|| bad("tags")))
        .collect::<Result<Vec<_>, _>>()?;
    let registration = Registration::restore(RegistrationInput {
        service_name: service_name.clone(),
        instance_id: Some(instance_id.clone()),
        host: text("host").ok_or_else(|| bad("host"))?,
        port: payload
            .get("port")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("port"))?,
        protocol: text("protocol"),
        health_endpoint: text("health_endpoint"),
        version: text("version"),
        tags,
        metadata: payload.get("metadata").cloned(),
        ttl_seconds: payload.get("ttl_seconds").and_then(Value::as_i64),
    })
    .map_err(|e| bad(&e.to_string()))?;
    let status: HealthStatus = text("status")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status"))?;
    let lease_expires_at = text("lease_expires_at")
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .ok_or_else(|| bad("lease_expires_at"))?
        .with_timezone(&Utc);
    Ok(Instance::restore(
        tenant.clone(),
        registration,
        status,
        registered_at,
        last_heartbeat,
        lease_expires_at,
        revision,
    ))
}
