//! The admin API (`/api/v1/admin/...`): tenants (operators), a tenant's keys, usage and audit (operators, or the `admin` scope on its own tenant).
//!
//! Who may call each route is decided in [`crate::access`]; the routes on
//! one tenant also check here that a non-operator acts for that tenant and
//! that the tenant is active (an operator may act on a suspended tenant: it
//! is how it is reactivated). Every change passes a `ChangeContext` naming
//! the caller's fingerprint and the request id, so its audit row says who
//! made it, and drops this replica's cached view of what it changed at once.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Days, NaiveDate, Utc};
use hub_core::tenancy::{
    KeyId, MintedKey, NewKey, Scopes, TenantPatch, TenantSpec, UsageCounts, UsageDay,
    validate_display_name,
};
use hub_core::{Registry, RegistryError, TenantId, ValidationError};

use crate::admin_dto::{
    AuditBody, AuditEntryBody, CreateKeyRequest, CreateTenantRequest, CreatedKeyBody,
    DeletedTenantBody, KeyBody, KeyListBody, PatchTenantRequest, TenantBody, TenantListBody,
    UsageBody, UsageCountsBody, UsageDayBody,
};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Change, JsonBody};
use crate::tenancy::Tenancy;

/// The longest period one usage query covers, in days.
pub const MAX_USAGE_DAYS: u64 = 366;
/// The period a usage query covers without `from`, in days (today included).
pub const DEFAULT_USAGE_DAYS: u64 = 30;
/// Audit rows answered without `limit`, and the most answered with it.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
const MAX_AUDIT_LIMIT: u32 = 1000;

fn path_tenant(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw)
        .map_err(|e| ApiError::from(ValidationError::new("tenant_id", e.message().to_owned())))
}

fn principal(req: &HttpRequest) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous)
}

/// The tenant a route on `{tenant_id}` acts on, once the caller may: an
/// operator on any tenant; anyone else (holding `admin`, checked by the
/// access middleware) only on a tenant it is bound to, and only while that
/// tenant is active. The request counts as an admin request of that tenant
/// when it exists.
async fn acting_on(req: &HttpRequest, tenancy: &Tenancy, raw: &str) -> Result<TenantId, ApiError> {
    let tenant = path_tenant(raw)?;
    let principal = principal(req);
    let exists = if principal.is_operator() {
        tenancy.directory().tenant(&tenant).await?.is_some()
    } else {
        if !principal.may_act_for(&tenant) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_forbidden",
                format!("this credential may not act for tenant '{tenant}'"),
            ));
        }
        tenancy.admit(&tenant).await?;
        true
    };
    // Only a tenant with a record has usage: requests about ids that do
    // not exist (404s) must not leave usage rows behind.
    if exists {
        tenancy
            .meter()
            .request(&tenant, hub_core::tenancy::RequestClass::Admin, Utc::now());
    }
    Ok(tenant)
}

/// 404 unless `tenant` has a record.
async fn existing(tenancy: &Tenancy, tenant: &TenantId) -> Result<(), ApiError> {
    match tenancy.directory().tenant(tenant).await? {
        Some(_) => Ok(()),
        None => Err(RegistryError::not_found(format!("tenant '{tenant}'")).into()),
    }
}

/// Creates a tenant.
#[utoipa::path(
    post,
    path = "/api/v1/admin/tenants",
    tag = "admin",
    operation_id = "create_tenant",
    summary = "Create a tenant (operators)",
    request_body(content = CreateTenantRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The tenant as stored.", body = TenantBody),
        (status = 409, description = "`conflict`: a tenant with this id exists.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field broke a rule; the message names it.", body = ErrorBody),
    ),
)]
pub(crate) async fn create_tenant(
    tenancy: web::Data<Tenancy>,
    Change(change): Change,
    JsonBody(body): JsonBody<CreateTenantRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path_tenant(&body.tenant_id)?;
    let spec = TenantSpec {
        display_name: body.display_name,
        state: body.state.map(Into::into),
        limits: body.limits.unwrap_or_default().into(),
    };
    let created = tenancy
        .directory()
        .create_tenant(&id, spec, &change)
        .await?;
    tenancy.forget_tenant(&id);
    tenancy
        .meter()
        .request(&id, hub_core::tenancy::RequestClass::Admin, Utc::now());
    Ok(HttpResponse::Created().json(TenantBody::from(&created)))
}

/// Every tenant.
#[utoipa::path(
    get,
    path = "/api/v1/admin/tenants",
    tag = "admin",
    operation_id = "list_tenants",
    summary = "Every tenant (operators)",
    responses((status = 200, description = "Every tenant, by id.", body = TenantListBody)),
)]
pub(crate) async fn list_tenants(tenancy: web::Data<Tenancy>) -> Result<HttpResponse, ApiError> {
    let tenants: Vec<TenantBody> = tenancy
        .directory()
        .tenants()
        .await?
        .iter()
        .map(TenantBody::from)
        .collect();
    Ok(HttpResponse::Ok().json(TenantListBody {
        count: tenants.len(),
        tenants,
    }))
}

/// One tenant.
#[utoipa::path(
    get,
    path = "/api/v1/admin/tenants/{tenant_id}",
    tag = "admin",
    operation_id = "get_tenant",
    summary = "One tenant (operators)",
    params(("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id.")),
    responses(
        (status = 200, description = "The tenant.", body = TenantBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the id is not a tenant id.", body = ErrorBody),
    ),
)]
pub(crate) async fn get_tenant(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    match tenancy.directory().tenant(&tenant).await? {
        Some(t) => Ok(HttpResponse::Ok().json(TenantBody::from(&t))),
        None => Err(RegistryError::not_found(format!("tenant '{tenant}'")).into()),
    }
}

/// Changes a tenant: name, state (suspend, reactivate), limits.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/tenants/{tenant_id}",
    tag = "admin",
    operation_id = "update_tenant",
    summary = "Change, suspend or reactivate a tenant (operators)",
    params(("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id.")),
    request_body(content = PatchTenantRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The tenant as stored now.", body = TenantBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field broke a rule; the message names it.", body = ErrorBody),
    ),
)]
pub(crate) async fn update_tenant(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    Change(change): Change,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PatchTenantRequest>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    let patch = TenantPatch {
        display_name: body.display_name,
        state: body.state.map(Into::into),
        limits: body.limits.map(Into::into),
    };
    let updated = tenancy
        .directory()
        .update_tenant(&tenant, patch, &change)
        .await?;
    tenancy.forget_tenant(&tenant);
    Ok(HttpResponse::Ok().json(TenantBody::from(&updated)))
}

/// Deletes a tenant: its instances first (through the registry, so
/// watchers and buses see them go), then its record, keys, limits and
/// usage. Its audit rows stay.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/tenants/{tenant_id}",
    tag = "admin",
    operation_id = "delete_tenant",
    summary = "Delete a tenant, its instances, keys and usage (operators; the audit stays)",
    params(("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id.")),
    responses(
        (status = 200, description = "The tenant is gone.", body = DeletedTenantBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the id is not a tenant id.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_tenant(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    registry: web::Data<Registry>,
    Change(change): Change,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    existing(&tenancy, &tenant).await?;
    let mut removed = 0;
    for summary in registry.service_summaries(&tenant).await? {
        match registry
            .deregister(&tenant, &summary.service_name, None, &change)
            .await
        {
            Ok(n) => removed += n,
            // Removed meanwhile (a deregistration or the reaper): gone either way.
            Err(RegistryError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tenancy.directory().delete_tenant(&tenant, &change).await?;
    tenancy.forget_tenant(&tenant);
    Ok(HttpResponse::Ok().json(DeletedTenantBody {
        tenant_id: tenant.to_string(),
        instances_removed: removed,
    }))
}

fn parse_expiry(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ValidationError> {
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|e| {
            ValidationError::new(
                "expires_at",
                format!("must be an RFC 3339 time such as 2027-01-01T00:00:00Z ({e})"),
            )
        })?
        .with_timezone(&Utc);
    if at <= now {
        return Err(ValidationError::new("expires_at", "must be in the future"));
    }
    Ok(at)
}

/// Creates a key for the tenant; the key itself is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/admin/tenants/{tenant_id}/keys",
    tag = "admin",
    operation_id = "create_key",
    summary = "Create a key for a tenant (operators, or its own `admin` scope)",
    params(("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id.")),
    request_body(content = CreateKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key's record and, this once, the key.", body = CreatedKeyBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field broke a rule; the message names it.", body = ErrorBody),
    ),
)]
pub(crate) async fn create_key(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    Change(change): Change,
    path: web::Path<String>,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    validate_display_name(&body.name)
        .map_err(|e| ValidationError::new("name", e.message().to_owned()))?;
    let scopes = Scopes::parse_list(&body.scopes)?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|t| parse_expiry(t, Utc::now()))
        .transpose()?;
    let minted = MintedKey::generate().map_err(|e| {
        ApiError::internal(&std::io::Error::other(format!(
            "no randomness for a key: {e}"
        )))
    })?;
    let created_by = change.actor().unwrap_or("anonymous").to_owned();
    let record = tenancy
        .directory()
        .create_key(
            &tenant,
            NewKey {
                id: minted.id.clone(),
                digest: minted.digest,
                name: body.name,
                scopes,
                expires_at,
                created_by,
            },
            &change,
        )
        .await?;
    Ok(HttpResponse::Created().json(CreatedKeyBody {
        key: minted.secret,
        record: KeyBody::from(&record),
    }))
}

/// The tenant's keys, without secrets.
#[utoipa::path(
    get,
    path = "/api/v1/admin/tenants/{tenant_id}/keys",
    tag = "admin",
    operation_id = "list_keys",
    summary = "A tenant's keys (operators, or its own `admin` scope)",
    params(("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id.")),
    responses(
        (status = 200, description = "The keys, revoked ones included, oldest first; never a secret.", body = KeyListBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the id is not a tenant id.", body = ErrorBody),
    ),
)]
pub(crate) async fn list_keys(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    existing(&tenancy, &tenant).await?;
    let keys: Vec<KeyBody> = tenancy
        .directory()
        .keys(&tenant)
        .await?
        .iter()
        .map(KeyBody::from)
        .collect();
    Ok(HttpResponse::Ok().json(KeyListBody {
        count: keys.len(),
        keys,
    }))
}

/// Revokes a key for good.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/tenants/{tenant_id}/keys/{key_id}",
    tag = "admin",
    operation_id = "revoke_key",
    summary = "Revoke a key (operators, or its tenant's `admin` scope)",
    params(
        ("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id."),
        ("key_id" = String, Path, pattern = "^[0-9a-f]{16}$", description = "The key's id."),
    ),
    responses(
        (status = 200, description = "The key's record, with `revoked_at`.", body = KeyBody),
        (status = 404, description = "`not_found`: the tenant has no such key.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the tenant id or key id is malformed.", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke_key(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    Change(change): Change,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_tenant, raw_key) = path.into_inner();
    let tenant = acting_on(&req, &tenancy, &raw_tenant).await?;
    let id = KeyId::parse(&raw_key)?;
    let record = tenancy
        .directory()
        .revoke_key(&tenant, &id, &change)
        .await?;
    tenancy.forget_key(&id);
    Ok(HttpResponse::Ok().json(KeyBody::from(&record)))
}

fn query_value(req: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("query string could not be read: {e}"),
            )
        })?;
    Ok(pairs
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .next_back())
}

fn parse_day(field: &str, text: &str) -> Result<NaiveDate, ValidationError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| ValidationError::new(field, format!("must be a date YYYY-MM-DD ({e})")))
}

/// The period of a usage query: `to` defaults to today, `from` to 29 days
/// before `to`; `from` <= `to`, at most [`MAX_USAGE_DAYS`] days.
fn usage_period(
    from: Option<&str>,
    to: Option<&str>,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), ValidationError> {
    let to = to.map(|t| parse_day("to", t)).transpose()?.unwrap_or(today);
    let from = match from {
        Some(f) => parse_day("from", f)?,
        None => to
            .checked_sub_days(Days::new(DEFAULT_USAGE_DAYS - 1))
            .unwrap_or(to),
    };
    if from > to {
        return Err(ValidationError::new("from", "must not be after `to`"));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_USAGE_DAYS as i64 {
        return Err(ValidationError::new(
            "from",
            format!("the period is {days} days; at most {MAX_USAGE_DAYS} days per query"),
        ));
    }
    Ok((from, to))
}

/// Stored days plus what is counted and not yet flushed today.
pub(crate) fn with_pending(
    mut days: Vec<UsageDay>,
    pending: UsageCounts,
    today: NaiveDate,
    (from, to): (NaiveDate, NaiveDate),
) -> Vec<UsageDay> {
    if pending.is_empty() || today < from || today > to {
        return days;
    }
    match days.iter_mut().find(|d| d.day == today) {
        Some(d) => d.counts.add(&pending),
        None => {
            days.push(UsageDay {
                day: today,
                counts: pending,
            });
            days.sort_by_key(|d| d.day);
        }
    }
    days
}

/// The tenant's usage per day over a period.
#[utoipa::path(
    get,
    path = "/api/v1/admin/tenants/{tenant_id}/usage",
    tag = "admin",
    operation_id = "tenant_usage",
    summary = "A tenant's usage per day (operators, or its own `admin` scope)",
    params(
        ("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id."),
        ("from" = Option<String>, Query, format = Date, description = "First day (UTC), default 29 days before `to`."),
        ("to" = Option<String>, Query, format = Date, description = "Last day (UTC), default today; at most 366 days after `from`."),
    ),
    responses(
        (status = 200, description = "Usage per day and the totals; today includes what is not yet flushed.", body = UsageBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a date is malformed, `from` is after `to`, or the period is longer than 366 days.", body = ErrorBody),
    ),
)]
pub(crate) async fn usage(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    let now = Utc::now();
    let today = now.date_naive();
    let period = usage_period(
        query_value(&req, "from")?.as_deref(),
        query_value(&req, "to")?.as_deref(),
        today,
    )?;
    existing(&tenancy, &tenant).await?;
    let stored = tenancy
        .directory()
        .usage(&tenant, period.0, period.1)
        .await?;
    let days = with_pending(
        stored,
        tenancy.meter().pending(&tenant, today),
        today,
        period,
    );
    let mut total = UsageCounts::default();
    for d in &days {
        total.add(&d.counts);
    }
    Ok(HttpResponse::Ok().json(UsageBody {
        tenant_id: tenant.to_string(),
        from: period.0,
        to: period.1,
        days: days.iter().map(UsageDayBody::from).collect(),
        total: UsageCountsBody::from(total),
    }))
}

/// The tenant's newest admin changes.
#[utoipa::path(
    get,
    path = "/api/v1/admin/tenants/{tenant_id}/audit",
    tag = "admin",
    operation_id = "tenant_audit",
    summary = "A tenant's admin changes, newest first (operators, or its own `admin` scope)",
    params(
        ("tenant_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,100}$", description = "The tenant's id."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many rows, 1-1000, default 100."),
    ),
    responses(
        (status = 200, description = "The newest audit rows.", body = AuditBody),
        (status = 422, description = "`validation_failed`: `limit` is not 1-1000.", body = ErrorBody),
    ),
)]
pub(crate) async fn audit(
    req: HttpRequest,
    tenancy: web::Data<Tenancy>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = acting_on(&req, &tenancy, &path).await?;
    let limit = match query_value(&req, "limit")? {
        None => DEFAULT_AUDIT_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_AUDIT_LIMIT).contains(l))
            .ok_or_else(|| {
                ValidationError::new(
                    "limit",
                    format!("{text:?} is not a whole number from 1 to {MAX_AUDIT_LIMIT}"),
                )
            })?,
    };
    let entries: Vec<AuditEntryBody> = tenancy
        .directory()
        .audit(&tenant, limit)
        .await?
        .iter()
        .map(AuditEntryBody::from)
        .collect();
    Ok(HttpResponse::Ok().json(AuditBody {
        tenant_id: tenant.to_string(),
        count: entries.len(),
        entries,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_periods() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let (from, to) = usage_period(None, None, today).unwrap();
        assert_eq!((to - from).num_days(), 29);
        assert_eq!(to, today);
        assert!(usage_period(Some("2026-12-02"), Some("2026-12-01"), today).is_err());
        assert!(usage_period(Some("2025-01-01"), Some("2026-12-01"), today).is_err());
        assert!(usage_period(Some("2025-12-01"), Some("2026-12-01"), today).is_ok());
        assert_eq!(
            usage_period(Some("2026-13-01"), None, today)
                .unwrap_err()
                .field(),
            "from"
        );
        let pending = UsageCounts {
            requests_read: 2,
            ..Default::default()
        };
        let days = with_pending(Vec::new(), pending, today, (today, today));
        assert_eq!(days[0].counts.requests_read, 2);
        assert!(with_pending(Vec::new(), pending, today, (from, from)).is_empty());
    }

    #[test]
    fn expiry_must_be_future_rfc3339() {
        let now = Utc::now();
        assert!(parse_expiry("2999-01-01T00:00:00Z", now).is_ok());
        assert!(parse_expiry("2000-01-01T00:00:00Z", now).is_err());
        assert!(parse_expiry("tomorrow", now).is_err());
    }
}
