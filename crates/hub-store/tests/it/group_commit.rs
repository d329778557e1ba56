//! Group commit on PostgreSQL: many tenants' concurrent changes share transactions and each tenant keeps its order, revisions and records.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use hub_core::memory::{InProcessBus, ManualClock};
use hub_core::{
    ChangeContext, HealthStatus, Heartbeat, InstanceId, Registry, ServiceName, Sink, Sinks,
};
use hub_store::testing::TestDb;
use hub_store::{GroupCommit, PgConfig, PgStore};

use crate::support::{registration, tenant};

const TENANTS: usize = 12;
const INSTANCES: usize = 15;

/// What one tenant's audit holds and its revision, read as the application
/// in a transaction scoped to that tenant, and its outbox events.
async fn records(db: &TestDb, tenant: &str) -> (Vec<(i64, String, String, String)>, Vec<i64>, i64) {
    let audit = db
        .as_tenant(
            tenant,
            "SELECT revision, event_type, instance_id, tenant_id FROM coordination_history \
             ORDER BY revision",
            &[],
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let revision = db
        .as_tenant(
            tenant,
            "SELECT coalesce((SELECT revision FROM tenant_state), 0)",
            &[],
        )
        .await
        .first()
        .map_or(0, |r| r.get(0));
    // The outbox has no tenant policy; its owner reads it.
    let owner = TestDb::connect(&db.owner).await;
    let outbox = owner
        .query(
            "SELECT revision FROM hub_outbox WHERE tenant_id = $1 ORDER BY revision",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (audit, outbox, revision)
}

/// Every tenant registers each of its instances twice and renews some,
/// all at once, so that writers group them: each tenant then has exactly
/// its own rows, revisions 1..n without gap or repeat, one audit row and
/// one outbox row per change, each instance's first change recorded as a
/// registration and its second as an update, the instance's stored
/// revision its last change's; and the changes did share transactions.
#[tokio::test]
async fn concurrent_changes_of_many_tenants_share_commits_and_keep_each_tenants_order() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::new(&PgConfig {
        pool_size: 6,
        group_commit: GroupCommit {
            writers: 2,
            max_batch: 64,
            per_tenant: 8,
        },
        ..db.app.clone()
    })
    .unwrap()
    .with_outbox(Sinks::NONE.with(Sink::Nats), "replica-a");
    let store = Arc::new(store);
    let registry = Arc::new(Registry::new(
        store.clone(),
        Arc::new(InProcessBus::new()),
        Arc::new(ManualClock::default()),
    ));
    let context = ChangeContext::default();
    // First registrations, all at once.
    let mut tasks = Vec::new();
    for t in 0..TENANTS {
        for i in 0..INSTANCES {
            let registry = registry.clone();
            let context = context.clone();
            tasks.push(tokio::spawn(async move {
                registry
                    .register(
                        &tenant(&format!("gc-{t:02}")),
                        registration("svc", &format!("i{i:02}")),
                        &context,
                    )
                    .await
                    .unwrap();
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Second registrations (updates) and renewals, all at once.
    let mut tasks = Vec::new();
    for t in 0..TENANTS {
        for i in 0..INSTANCES {
            let registry = registry.clone();
            let context = context.clone();
            tasks.push(tokio::spawn(async move {
                let tenant = tenant(&format!("gc-{t:02}"));
                registry
                    .register(&tenant, registration("svc", &format!("i{i:02}")), &context)
                    .await
                    .unwrap();
                registry
                    .heartbeat(
                        &tenant,
                        &ServiceName::parse("svc").unwrap(),
                        Some(&InstanceId::parse(format!("i{i:02}")).unwrap()),
                        &Heartbeat::new(HealthStatus::Passing, None),
                        &context,
                    )
                    .await
                    .unwrap();
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    let changes = i64::try_from(INSTANCES * 2).unwrap();
    for t in 0..TENANTS {
        let name = format!("gc-{t:02}");
        let (audit, outbox, revision) = records(&db, &name).await;
        assert_eq!(revision, changes, "{name}");
        let revisions: Vec<i64> = audit.iter().map(|a| a.0).collect();
        assert_eq!(revisions, (1..=changes).collect::<Vec<_>>(), "{name}");
        assert_eq!(outbox, revisions, "{name}: one event per change");
        assert!(audit.iter().all(|a| a.3 == name), "{name}: foreign rows");
        let mut kinds: HashMap<&str, Vec<&str>> = HashMap::new();
        for (_, kind, instance, _) in &audit {
            kinds.entry(instance).or_default().push(kind);
        }
        assert_eq!(kinds.len(), INSTANCES);
        for (instance, kinds) in &kinds {
            assert_eq!(
                kinds,
                &["service.registered", "service.updated"],
                "{name}/{instance}"
            );
        }
        let snapshot = registry
            .get(&tenant(&name), &ServiceName::parse("svc").unwrap())
            .await
            .unwrap();
        assert_eq!(snapshot.instances.len(), INSTANCES);
        for instance in &snapshot.instances {
            let last = audit
                .iter()
                .filter(|a| a.2 == instance.instance_id().as_str())
                .map(|a| a.0)
                .max()
                .unwrap();
            assert_eq!(i64::try_from(instance.revision().get()).unwrap(), last);
            assert!(instance.last_heartbeat() <= Utc::now());
        }
    }
    let stats = store.write_batches();
    let expected = u64::try_from(TENANTS * INSTANCES * 3).unwrap();
    assert_eq!(stats.changes, expected, "{stats:?}");
    assert!(
        stats.batches * 2 <= stats.changes,
        "changes did not share transactions: {stats:?}"
    );
}
