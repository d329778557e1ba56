//! The tenant directory on PostgreSQL: one contract run against `PgTenants` and `MemoryTenants`, the key lookup function, audit pruning by age, usage sums and peaks across stores, the instance quota under concurrency, and the upgrade from V5.

use std::sync::Arc;

use chrono::{Duration, NaiveDate, Utc};
use hub_core::memory::{InProcessBus, ManualClock, MemoryStore};
use hub_core::ports::RegistryStore;
use hub_core::tenancy::{
    MemoryTenants, MintedKey, NewKey, Scope, Scopes, TenantDirectory, TenantLimits, TenantPatch,
    TenantSpec, TenantState, UsageCounts, UsageDelta,
};
use hub_core::{ChangeContext, Registry, RegistryError, TenantId};
use hub_store::pg::migrate;
use hub_store::testing::TestDb;
use hub_store::{GroupCommit, PgConfig, PgStore, PgTenants};

use crate::support::{registration, tenant};

fn new_key(name: &str, scopes: Scopes) -> (MintedKey, NewKey) {
    let minted = MintedKey::generate().unwrap();
    let new = NewKey {
        id: minted.id.clone(),
        digest: minted.digest,
        name: name.into(),
        scopes,
        expires_at: None,
        created_by: "op-fingerprint".into(),
    };
    (minted, new)
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
}

fn delta(t: &TenantId, d: u32, reads: u64, peak: u64) -> UsageDelta {
    UsageDelta {
        tenant: t.clone(),
        day: day(d),
        counts: UsageCounts {
            requests_read: reads,
            registrations: 1,
            peak_instances: peak,
            ..Default::default()
        },
    }
}

/// What every `TenantDirectory` must do, whatever stores it.
async fn contract(dir: &dyn TenantDirectory) {
    let ctx = ChangeContext::new(Some("op".into()), Some("req-1".into()));
    let acme = tenant("acme");
    let other = tenant("other");

    // Tenants: create, conflict, record on first use, get, list.
    let limits = TenantLimits {
        max_instances: Some(5),
        rate: Some(100),
        ..Default::default()
    };
    let created = dir
        .create_tenant(
            &acme,
            TenantSpec {
                display_name: Some("Acme Trading".into()),
                state: None,
                limits,
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(created.display_name, "Acme Trading");
    assert_eq!(created.state, TenantState::Active);
    assert_eq!(created.limits, limits);
    assert!(matches!(
        dir.create_tenant(&acme, TenantSpec::default(), &ctx).await,
        Err(RegistryError::Conflict(_))
    ));
    let bad = TenantSpec {
        limits: TenantLimits {
            rate: Some(0),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        dir.create_tenant(&tenant("bad"), bad, &ctx).await,
        Err(RegistryError::Invalid(_))
    ));
    let recorded = dir.record_tenant(&other).await.unwrap();
    assert_eq!(recorded.display_name, "other");
    assert_eq!(recorded.limits, TenantLimits::default());
    assert_eq!(dir.record_tenant(&other).await.unwrap(), recorded);
    // Recording never changes an existing tenant.
    assert_eq!(dir.record_tenant(&acme).await.unwrap(), created);
    assert_eq!(dir.tenant(&acme).await.unwrap(), Some(created.clone()));
    assert_eq!(dir.tenant(&tenant("nobody")).await.unwrap(), None);
    let ids: Vec<String> = dir
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(ids, ["acme", "other"]);

    // Update: suspend, reactivate, limits replaced as a whole.
    let suspended = dir
        .update_tenant(
            &acme,
            TenantPatch {
                state: Some(TenantState::Suspended),
                ..Default::default()
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(suspended.state, TenantState::Suspended);
    assert_eq!(suspended.display_name, "Acme Trading");
    assert_eq!(suspended.limits, limits);
    let new_limits = TenantLimits {
        max_watchers: Some(3),
        ..Default::default()
    };
    let back = dir
        .update_tenant(
            &acme,
            TenantPatch {
                state: Some(TenantState::Active),
                limits: Some(new_limits),
                display_name: None,
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(back.state, TenantState::Active);
    assert_eq!(back.limits, new_limits);
    assert!(back.updated_at >= created.updated_at);
    assert!(matches!(
        dir.update_tenant(&tenant("nobody"), TenantPatch::default(), &ctx)
            .await,
        Err(RegistryError::NotFound(_))
    ));

    // Keys: create, conflict, list, grant, touch, revoke (twice), cross-tenant.
    let (minted, new) = new_key("ci", Scopes::of(&[Scope::Read, Scope::Write]));
    assert!(matches!(
        dir.create_key(&tenant("nobody"), new.clone(), &ctx).await,
        Err(RegistryError::NotFound(_))
    ));
    let record = dir.create_key(&acme, new.clone(), &ctx).await.unwrap();
    assert_eq!(record.tenant, acme);
    assert_eq!(record.scopes, new.scopes);
    assert_eq!(record.revoked_at, None);
    assert!(matches!(
        dir.create_key(&acme, new.clone(), &ctx).await,
        Err(RegistryError::Conflict(_))
    ));
    let (_, unnamed) = new_key("", Scopes::ALL);
    assert!(matches!(
        dir.create_key(&acme, unnamed, &ctx).await,
        Err(RegistryError::Invalid(_))
    ));
    let grant = dir.key_grant(&minted.digest).await.unwrap().unwrap();
    assert_eq!(grant.id, minted.id);
    assert_eq!(grant.tenant, acme);
    assert_eq!(grant.scopes, new.scopes);
    assert!(!grant.revoked);
    assert!(grant.usable_at(Utc::now()));
    assert_eq!(dir.key_grant(&[7u8; 32]).await.unwrap(), None);
    let used_at = Utc::now() - Duration::seconds(5);
    dir.touch_keys(&[
        (
            acme.clone(),
            minted.id.clone(),
            used_at - Duration::seconds(60),
        ),
        (acme.clone(), minted.id.clone(), used_at),
    ])
    .await
    .unwrap();
    let listed = dir.keys(&acme).await.unwrap();
    assert_eq!(listed.len(), 1);
    let last = listed[0].last_used_at.unwrap();
    assert!(
        (last - used_at).num_milliseconds().abs() < 1,
        "{last} {used_at}"
    );
    assert!(dir.keys(&other).await.unwrap().is_empty());
    assert!(matches!(
        dir.revoke_key(&other, &minted.id, &ctx).await,
        Err(RegistryError::NotFound(_))
    ));
    let revoked = dir.revoke_key(&acme, &minted.id, &ctx).await.unwrap();
    let revoked_at = revoked.revoked_at.unwrap();
    let again = dir.revoke_key(&acme, &minted.id, &ctx).await.unwrap();
    assert_eq!(again.revoked_at, Some(revoked_at), "answered unchanged");
    let grant = dir.key_grant(&minted.digest).await.unwrap().unwrap();
    assert!(grant.revoked);
    assert!(!grant.usable_at(Utc::now()));

    // Usage: sums per day, peaks as the greater; tenants apart.
    dir.add_usage(vec![
        delta(&acme, 1, 10, 4),
        delta(&acme, 2, 1, 1),
        delta(&other, 1, 100, 50),
    ])
    .await
    .unwrap();
    dir.add_usage(vec![delta(&acme, 1, 5, 2), delta(&acme, 1, 1, 7)])
        .await
        .unwrap();
    let days = dir.usage(&acme, day(1), day(30)).await.unwrap();
    assert_eq!(days.len(), 2);
    assert_eq!(days[0].day, day(1));
    assert_eq!(days[0].counts.requests_read, 16);
    assert_eq!(days[0].counts.registrations, 3);
    assert_eq!(days[0].counts.peak_instances, 7);
    assert_eq!(days[1].counts.requests_read, 1);
    assert_eq!(dir.usage(&acme, day(2), day(2)).await.unwrap().len(), 1);
    assert_eq!(
        dir.usage(&other, day(1), day(1)).await.unwrap()[0]
            .counts
            .requests_read,
        100
    );

    // Delete: keys and usage go, the audit stays.
    dir.delete_tenant(&acme, &ctx).await.unwrap();
    assert!(matches!(
        dir.delete_tenant(&acme, &ctx).await,
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(dir.tenant(&acme).await.unwrap(), None);
    assert_eq!(dir.key_grant(&minted.digest).await.unwrap(), None);
    assert!(dir.keys(&acme).await.unwrap().is_empty());
    assert!(dir.usage(&acme, day(1), day(30)).await.unwrap().is_empty());
    assert_eq!(dir.usage(&other, day(1), day(30)).await.unwrap().len(), 1);
    let audit = dir.audit(&acme, 10).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.deleted",
            "key.revoked",
            "key.created",
            "tenant.reactivated",
            "tenant.suspended",
            "tenant.created"
        ]
    );
    assert!(audit.iter().all(|a| a.tenant == acme
        && a.actor.as_deref() == Some("op")
        && a.request_id.as_deref() == Some("req-1")));
    assert_eq!(audit[2].target, minted.id.as_str());
    assert_eq!(audit[2].details["name"], "ci");
    assert!(!audit[2].details.to_string().contains(&minted.secret));
    assert_eq!(dir.audit(&acme, 2).await.unwrap().len(), 2);
    assert!(dir.audit(&other, 10).await.unwrap().is_empty());
    // Nothing is younger than the retention: nothing pruned.
    assert_eq!(
        dir.prune_audit(Utc::now() - Duration::days(90))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn memory_tenants_keep_the_directory_contract() {
    contract(&MemoryTenants::new()).await;
}

#[tokio::test]
async fn pg_tenants_keep_the_directory_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::new(&db.app).unwrap();
    contract(&PgTenants::new(&store)).await;
}

/// Usage flushed through one store is there for the next (a restart), and
/// adds up with what the next one flushes.
#[tokio::test]
async fn flushed_usage_survives_a_new_store() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let t = tenant("usage-t");
    {
        let dir = PgTenants::new(&PgStore::new(&db.app).unwrap());
        dir.add_usage(vec![delta(&t, 3, 7, 9)]).await.unwrap();
    }
    let dir = PgTenants::new(&PgStore::new(&db.app).unwrap());
    dir.add_usage(vec![delta(&t, 3, 1, 2)]).await.unwrap();
    let days = dir.usage(&t, day(1), day(30)).await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].counts.requests_read, 8);
    assert_eq!(days[0].counts.registrations, 2);
    assert_eq!(days[0].counts.peak_instances, 9);
}

/// `hub_key_grant` answers the key with that digest and only it, and the
/// application cannot read any other key around it.
#[tokio::test]
async fn the_key_lookup_answers_only_the_matching_key() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = PgTenants::new(&PgStore::new(&db.app).unwrap());
    let ctx = ChangeContext::default();
    let (a, b) = (tenant("key-a"), tenant("key-b"));
    let mut minted = Vec::new();
    for t in [&a, &b] {
        dir.create_tenant(t, TenantSpec::default(), &ctx)
            .await
            .unwrap();
        let (key, new) = new_key("k", Scopes::of(&[Scope::Read]));
        dir.create_key(t, new, &ctx).await.unwrap();
        minted.push(key);
    }
    let app = TestDb::connect(&db.app).await;
    let row = app
        .query_one("SELECT * FROM hub_key_grant($1)", &[&&minted[1].digest[..]])
        .await
        .unwrap();
    let columns: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        columns,
        ["key_id", "tenant_id", "scopes", "expires_at", "revoked"]
    );
    assert_eq!(row.get::<_, String>(0), minted[1].id.as_str());
    assert_eq!(row.get::<_, String>(1), "key-b");
    for wrong in [vec![0u8; 32], minted[1].digest[..31].to_vec(), Vec::new()] {
        let rows = app
            .query("SELECT * FROM hub_key_grant($1)", &[&wrong])
            .await
            .unwrap();
        assert!(rows.is_empty(), "{wrong:?}");
    }
    // Around the function: nothing without a tenant, only A's acting as A,
    // and the owner's marker gains the application nothing.
    let hex = hex_of(&minted[1].digest);
    for (setup, expected) in [
        (String::new(), 0i64),
        (
            "SELECT set_config('app.tenant_id', 'key-a', true);".to_owned(),
            1,
        ),
        (
            format!("SELECT set_config('hub.key_digest', '{hex}', true);"),
            0,
        ),
    ] {
        app.batch_execute(&format!("BEGIN; {setup}")).await.unwrap();
        let seen: i64 = app
            .query_one("SELECT count(*) FROM hub_api_keys", &[])
            .await
            .unwrap()
            .get(0);
        let b_seen: i64 = app
            .query_one(
                "SELECT count(*) FROM hub_api_keys WHERE tenant_id = 'key-b'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        app.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!((seen, b_seen), (expected, 0), "{setup}");
    }
    // The marker does not outlive the lookup in the caller's transaction.
    app.batch_execute("BEGIN").await.unwrap();
    app.query("SELECT * FROM hub_key_grant($1)", &[&&minted[0].digest[..]])
        .await
        .unwrap();
    let marker: Option<String> = app
        .query_one("SELECT current_setting('hub.key_digest', true)", &[])
        .await
        .unwrap()
        .get(0);
    app.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(marker.unwrap_or_default(), "");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pruning goes by age only: rows older than the cutoff go, of every
/// tenant (deleted ones too); rows younger than a day stay whatever the
/// cutoff; and the application has no other way to delete audit rows.
#[tokio::test]
async fn audit_pruning_goes_by_age_only() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = PgTenants::new(&PgStore::new(&db.app).unwrap());
    let app = TestDb::connect(&db.app).await;
    for (t, age_days) in [("aud-a", 100), ("aud-a", 10), ("aud-b", 200), ("aud-b", 0)] {
        app.batch_execute(&format!(
            "BEGIN; SELECT set_config('app.tenant_id', '{t}', true); \
             INSERT INTO hub_admin_audit (tenant_id, action, target, at) \
             VALUES ('{t}', 'tenant.updated', '{t}', now() - interval '{age_days} days'); COMMIT"
        ))
        .await
        .unwrap();
    }
    let pruned = dir
        .prune_audit(Utc::now() - Duration::days(90))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(dir.audit(&tenant("aud-a"), 10).await.unwrap().len(), 1);
    // A cutoff in the future still keeps the last day.
    let pruned = dir
        .prune_audit(Utc::now() + Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(dir.audit(&tenant("aud-b"), 10).await.unwrap().len(), 1);
    let denied = app
        .batch_execute(
            "BEGIN; SELECT set_config('app.tenant_id', 'aud-b', true); \
             SELECT set_config('hub.audit_prune', 'on', true); DELETE FROM hub_admin_audit",
        )
        .await;
    app.batch_execute("ROLLBACK").await.unwrap();
    assert!(denied.is_err(), "the application may not delete audit rows");
}

const ATTEMPTS: usize = 50;
const QUOTA: u32 = 10;

/// Registers `ATTEMPTS` distinct instances at once under a quota of `QUOTA`
/// and returns how many succeeded; every failure must be the quota's.
async fn race(store: Arc<dyn RegistryStore>, t: &TenantId) -> usize {
    let registry = Arc::new(Registry::new(
        store,
        Arc::new(InProcessBus::new()),
        Arc::new(ManualClock::default()),
    ));
    let mut tasks = Vec::new();
    for i in 0..ATTEMPTS {
        let registry = registry.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            registry
                .register_limited(
                    &t,
                    registration(&format!("svc{}", i % 3), &format!("i{i:02}")),
                    &ChangeContext::default(),
                    Some(QUOTA),
                )
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(RegistryError::QuotaExceeded { limit, max }) => {
                assert_eq!((limit, max), ("max_instances", u64::from(QUOTA)));
            }
            Err(other) => panic!("only the quota may refuse: {other:?}"),
        }
    }
    // At the limit, updating an existing instance still works and a new
    // one still does not.
    let first = registry
        .list(t, &hub_core::ListQuery::default())
        .await
        .unwrap()
        .instances
        .into_iter()
        .next()
        .unwrap();
    let update = registration(first.service_name().as_str(), first.instance_id().as_str());
    registry
        .register_limited(t, update, &ChangeContext::default(), Some(QUOTA))
        .await
        .unwrap();
    assert!(matches!(
        registry
            .register_limited(
                t,
                registration("svc0", "late"),
                &ChangeContext::default(),
                Some(QUOTA)
            )
            .await,
        Err(RegistryError::QuotaExceeded { .. })
    ));
    // Without a limit (or a higher one) it goes in.
    registry
        .register(t, registration("svc0", "late"), &ChangeContext::default())
        .await
        .unwrap();
    ok
}

#[tokio::test]
async fn the_memory_store_keeps_the_quota_under_concurrency() {
    let ok = race(Arc::new(MemoryStore::new()), &tenant("quota-m")).await;
    assert_eq!(ok, QUOTA as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_the_quota_under_concurrency_with_and_without_group_commit() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    for (name, group_commit) in [
        ("quota-batched", GroupCommit::default()),
        (
            "quota-lone",
            GroupCommit {
                writers: 0,
                ..Default::default()
            },
        ),
    ] {
        let store = PgStore::new(&PgConfig {
            pool_size: 8,
            group_commit,
            ..db.app.clone()
        })
        .unwrap();
        let batched = group_commit.writers > 0;
        let store = Arc::new(store);
        let t = tenant(name);
        let ok = race(store.clone(), &t).await;
        assert_eq!(ok, QUOTA as usize, "{name}");
        let stored: i64 = db
            .as_tenant(name, "SELECT count(*) FROM service_registry", &[])
            .await[0]
            .get(0);
        assert_eq!(
            stored,
            i64::from(QUOTA) + 1,
            "{name}: the quota and the unlimited one"
        );
        // A refusal writes nothing: the revision counts the changes made
        // (QUOTA registrations, one update, one unlimited registration).
        let revision: i64 = db
            .as_tenant(name, "SELECT revision FROM tenant_state", &[])
            .await[0]
            .get(0);
        assert_eq!(revision, i64::from(QUOTA) + 2, "{name}");
        if batched {
            assert!(store.write_batches().changes > 0, "{name}: batched");
        }
    }
}

/// A refused registration in a batch answers alone: the other tenant's
/// changes in the same batches commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_refusal_in_a_batch_leaves_the_rest_committed() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = Arc::new(
        PgStore::new(&PgConfig {
            group_commit: GroupCommit {
                writers: 1,
                ..Default::default()
            },
            ..db.app.clone()
        })
        .unwrap(),
    );
    let full = tenant("quota-zero");
    let free = tenant("quota-free");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        let (t, max) = if i % 2 == 0 {
            (full.clone(), Some(0))
        } else {
            (free.clone(), None)
        };
        tasks.push(tokio::spawn(async move {
            store
                .upsert(
                    &t,
                    registration("svc", &format!("i{i:02}")),
                    Utc::now(),
                    &ChangeContext::default(),
                    max,
                )
                .await
                .map(|_| ())
        }));
    }
    let results: Vec<_> = futures_util::future::join_all(tasks).await;
    for (i, result) in results.into_iter().enumerate() {
        match result.unwrap() {
            Ok(()) => assert!(i % 2 == 1, "{i}"),
            Err(RegistryError::QuotaExceeded { max: 0, .. }) => assert!(i % 2 == 0, "{i}"),
            Err(other) => panic!("{i}: {other:?}"),
        }
    }
    let stored: i64 = db
        .as_tenant("quota-free", "SELECT count(*) FROM service_registry", &[])
        .await[0]
        .get(0);
    assert_eq!(stored, 10);
}

/// A database left at V5 keeps its tenants through V6: active, named after
/// their ids, created when first seen.
#[tokio::test]
async fn the_upgrade_from_v5_keeps_every_tenant() {
    let Some(db) = TestDb::create_unmigrated().await else {
        return;
    };
    migrate::run_up_to(&db.owner, 5).await.unwrap();
    let owner = TestDb::connect(&db.owner).await;
    owner
        .batch_execute(
            "INSERT INTO hub_tenants (tenant_id, first_seen) VALUES \
             ('old-a', '2025-01-02T03:04:05Z'), ('old-b', now())",
        )
        .await
        .unwrap();
    let applied = migrate::run(&db.owner).await.unwrap();
    // V6 first, then whatever later migrations exist (V8 and on).
    assert_eq!(
        applied.first().map(|v| v.as_ref()),
        Some("V6__tenants_keys_usage")
    );
    let dir = PgTenants::new(&PgStore::new(&db.app).unwrap());
    let tenants = dir.tenants().await.unwrap();
    assert_eq!(tenants.len(), 2);
    let a = &tenants[0];
    assert_eq!(a.id.as_str(), "old-a");
    assert_eq!(a.display_name, "old-a");
    assert_eq!(a.state, TenantState::Active);
    assert_eq!(a.limits, TenantLimits::default());
    assert_eq!(a.created_at.to_rfc3339(), "2025-01-02T03:04:05+00:00");
    assert_eq!(a.updated_at, a.created_at);
    assert!(migrate::role_check(&db.app).await.unwrap().schema_ready);
}
