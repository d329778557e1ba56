//! The outbox on PostgreSQL: every change writes its event in its own transaction, one relay leads per sink, marks, pruning, backlog and grants.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use hub_core::domain::envelope;
use hub_core::memory::{InProcessBus, ManualClock};
use hub_core::ports::{Outbox, OutboxSession};
use hub_core::{
    ChangeContext, EventKind, HealthStatus, Heartbeat, InstanceId, OutboxEntry, Pending, Registry,
    RegistryEvent, ServiceName, Sink, Sinks,
};
use hub_store::testing::TestDb;
use hub_store::{PgOutbox, PgStore};
use tokio::sync::broadcast::Receiver;

use crate::support::{registration, tenant};

struct OutboxWorld {
    db: TestDb,
    /// The outbox as the relay sees it: the relay's own login.
    outbox: PgOutbox,
    registry: Registry,
    clock: Arc<ManualClock>,
    bus: Receiver<RegistryEvent>,
}

async fn outbox_world(sinks: Sinks) -> Option<OutboxWorld> {
    let db = TestDb::create().await?;
    let store = PgStore::new(&db.app)
        .unwrap()
        .with_outbox(sinks, "replica-a");
    let clock = Arc::new(ManualClock::default());
    let bus = InProcessBus::new();
    let rx = bus.subscribe();
    let outbox = store.relay_outbox(&db.relay).unwrap();
    let registry = Registry::new(Arc::new(store), Arc::new(bus), clock.clone());
    Some(OutboxWorld {
        db,
        outbox,
        registry,
        clock,
        bus: rx,
    })
}

fn both() -> Sinks {
    Sinks::NONE.with(Sink::Nats).with(Sink::Kafka)
}

async fn leader(outbox: &PgOutbox, sink: Sink) -> Box<dyn OutboxSession> {
    let mut session = outbox.open(sink).await.unwrap();
    assert!(session.lead().await.unwrap(), "no other relay runs here");
    session
}

/// The pending events, every row decoded.
async fn events(session: &mut dyn OutboxSession, max: u32) -> Vec<OutboxEntry> {
    session
        .pending(max)
        .await
        .unwrap()
        .into_iter()
        .map(|p| match p {
            Pending::Event(entry) => entry,
            Pending::Undecodable(row) => panic!("undecodable outbox row: {row:?}"),
        })
        .collect()
}

async fn owner_count(db: &TestDb, sql: &str) -> i64 {
    TestDb::connect(&db.owner)
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_change_writes_its_event_in_commit_order() {
    let Some(mut w) = outbox_world(both()).await else {
        return;
    };
    let (t1, t2) = (tenant("tenant1"), tenant("tenant2"));
    let ctx = ChangeContext::new(Some("abcd1234".into()), Some("req-1".into()));
    let svc = ServiceName::parse("svc").unwrap();
    let a = InstanceId::parse("a").unwrap();
    w.registry
        .register(&t1, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    w.registry
        .register(&t2, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    w.registry
        .register(&t1, registration("svc", "a"), &ctx)
        .await
        .unwrap();
    w.registry
        .register(&t1, registration("svc", "b"), &ctx)
        .await
        .unwrap();
    w.registry
        .heartbeat(
            &t1,
            &svc,
            Some(&a),
            &Heartbeat::new(HealthStatus::Warning, None),
            &ctx,
        )
        .await
        .unwrap();
    // A heartbeat that changes nothing is no event.
    w.registry
        .heartbeat(
            &t1,
            &svc,
            Some(&a),
            &Heartbeat::new(HealthStatus::Warning, None),
            &ctx,
        )
        .await
        .unwrap();
    w.clock.advance(Duration::seconds(11));
    w.registry.expire_leases().await.unwrap();
    w.clock.advance(Duration::seconds(31));
    w.registry.expire_leases().await.unwrap();
    w.registry
        .register(&t1, registration("svc", "c"), &ctx)
        .await
        .unwrap();
    w.registry.deregister(&t1, &svc, None, &ctx).await.unwrap();

    let mut local = Vec::new();
    while let Ok(event) = w.bus.try_recv() {
        local.push(event);
    }
    let mut nats = leader(&w.outbox, Sink::Nats).await;
    let pending = events(nats.as_mut(), 100).await;
    assert_eq!(pending.len(), local.len(), "one outbox row per event");
    let seqs: Vec<i64> = pending.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    // The outbox's event is the one the registry published in-process, as
    // it leaves the process (the envelope), but for its id. (A
    // deregistration's time is the database's clock, not the registry's.)
    let comparable = |event: &RegistryEvent| {
        let mut value: serde_json::Value =
            serde_json::from_slice(&envelope::to_json(event)).unwrap();
        let object = value.as_object_mut().unwrap();
        object.remove("id");
        if event.kind() == EventKind::Deregistered {
            object.remove("occurred_at");
        }
        value
    };
    for (stored, published) in pending.iter().map(|e| &e.event).zip(&local) {
        assert_eq!(comparable(stored), comparable(published));
        assert_eq!(stored.origin(), Some("replica-a"));
        assert_eq!(stored.id().len(), 36, "a UUID");
    }
    let kinds: Vec<(String, EventKind, u64)> = pending
        .iter()
        .map(|e| {
            (
                e.event.tenant_id().to_string(),
                e.event.kind(),
                e.event.revision().get(),
            )
        })
        .collect();
    let t1_revisions: Vec<u64> = kinds
        .iter()
        .filter(|k| k.0 == "tenant1")
        .map(|k| k.2)
        .collect();
    assert_eq!(
        t1_revisions,
        (1..=t1_revisions.len() as u64).collect::<Vec<_>>(),
        "tenant1's events have every revision once, in order"
    );
    for kind in [
        EventKind::Registered,
        EventKind::Updated,
        EventKind::StatusChanged,
        EventKind::Expired,
        EventKind::Deregistered,
    ] {
        assert!(
            kinds.iter().any(|k| k.1 == kind),
            "{kind:?} missing: {kinds:?}"
        );
    }
    // Ids are unique.
    let mut ids: Vec<&str> = pending.iter().map(|e| e.event.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), pending.len());
}

#[tokio::test]
async fn without_sinks_nothing_is_written() {
    let Some(w) = outbox_world(Sinks::NONE).await else {
        return;
    };
    let ctx = ChangeContext::new(None, None);
    w.registry
        .register(&tenant("t"), registration("svc", "a"), &ctx)
        .await
        .unwrap();
    assert_eq!(
        owner_count(&w.db, "SELECT count(*) FROM hub_outbox").await,
        0
    );
}

#[tokio::test]
async fn marks_are_per_sink_and_pruning_keeps_what_is_owed() {
    let Some(w) = outbox_world(both()).await else {
        return;
    };
    let ctx = ChangeContext::new(None, None);
    let (t1, t2) = (tenant("tenant1"), tenant("tenant2"));
    for i in 0..5 {
        w.registry
            .register(&t1, registration("svc", &format!("i{i}")), &ctx)
            .await
            .unwrap();
    }
    w.registry
        .register(&t2, registration("svc", "x"), &ctx)
        .await
        .unwrap();
    let backlog = w.outbox.backlog(Sink::Kafka, None).await.unwrap();
    assert_eq!(backlog.pending, 6);
    assert!(backlog.oldest.unwrap() <= Utc::now());
    assert_eq!(
        w.outbox
            .backlog(Sink::Kafka, Some(&t2))
            .await
            .unwrap()
            .pending,
        1
    );

    let mut nats = leader(&w.outbox, Sink::Nats).await;
    let first = events(nats.as_mut(), 4).await;
    assert_eq!(first.len(), 4);
    nats.mark(&first.iter().map(|e| e.seq).collect::<Vec<_>>())
        .await
        .unwrap();
    let rest = events(nats.as_mut(), 100).await;
    assert_eq!(rest.len(), 2);
    assert!(rest[0].seq > first[3].seq);
    assert_eq!(w.outbox.backlog(Sink::Nats, None).await.unwrap().pending, 2);
    // Kafka still owes all six: one sink's progress is not the other's.
    let mut kafka = leader(&w.outbox, Sink::Kafka).await;
    assert_eq!(events(kafka.as_mut(), 100).await.len(), 6);

    // Nothing is fully delivered yet: pruning removes nothing, however late.
    let future = Utc::now() + Duration::days(1);
    assert_eq!(w.outbox.prune(future, 1000).await.unwrap(), 0);
    kafka
        .mark(&first.iter().map(|e| e.seq).collect::<Vec<_>>())
        .await
        .unwrap();
    // Delivered to both, but within the retention: kept.
    assert_eq!(
        w.outbox
            .prune(Utc::now() - Duration::hours(1), 1000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(w.outbox.prune(future, 1000).await.unwrap(), 4);
    assert_eq!(
        owner_count(&w.db, "SELECT count(*) FROM hub_outbox").await,
        2
    );
    // Marking again is harmless.
    kafka.mark(&[first[0].seq]).await.unwrap();
}

#[tokio::test]
async fn one_session_leads_per_sink_until_it_is_dropped() {
    let Some(w) = outbox_world(both()).await else {
        return;
    };
    let mut first = w.outbox.open(Sink::Nats).await.unwrap();
    let mut second = w.outbox.open(Sink::Nats).await.unwrap();
    assert!(first.lead().await.unwrap());
    assert!(!second.lead().await.unwrap());
    assert!(second.pending(10).await.is_err(), "a follower may not read");
    // The other sink has its own leader.
    let mut kafka = w.outbox.open(Sink::Kafka).await.unwrap();
    assert!(kafka.lead().await.unwrap());
    drop(first);
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(5);
    loop {
        if second.lead().await.unwrap() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership not handed over"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_application_role_can_only_insert_its_own_tenants_rows() {
    let Some(w) = outbox_world(both()).await else {
        return;
    };
    w.registry
        .register(
            &tenant("tenant1"),
            registration("svc", "a"),
            &ChangeContext::new(None, None),
        )
        .await
        .unwrap();
    let app = TestDb::connect(&w.db.app).await;
    for sql in [
        "SELECT count(*) FROM hub_outbox",
        "UPDATE hub_outbox SET origin = 'x'",
        "DELETE FROM hub_outbox",
        "TRUNCATE hub_outbox",
        "SELECT count(*) FROM hub_outbox_due",
        "DELETE FROM hub_outbox_due",
        "UPDATE hub_outbox_due SET sink = 1",
    ] {
        let error = app.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {error}"
        );
    }
    let event = "INSERT INTO hub_outbox (tenant_id, revision, event_type, service_name, \
                  instance_id, occurred_at, payload, registered_at, last_heartbeat) \
                  VALUES ('tenant2', 1, 'service.registered', 's', 'i', now(), '{}', now(), now())";
    let due = "INSERT INTO hub_outbox_due (sink, id, tenant_id) VALUES (1, 1, 'tenant2')";
    for (setting, insert) in [("", event), ("tenant1", event), ("", due), ("tenant1", due)] {
        let error = app
            .batch_execute(&format!(
                "BEGIN; SELECT set_config('app.tenant_id', '{setting}', true); {insert}; COMMIT"
            ))
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "as {setting:?}: {error}"
        );
        app.batch_execute("ROLLBACK").await.unwrap();
    }
    // A tenant's backlog follows the transaction's tenant, not a parameter:
    // with no tenant set it is empty.
    let backlog = |sql: &'static str| {
        let app = &app;
        async move {
            let rows = app.simple_query(sql).await.unwrap();
            // The value of the last row: the backlog's.
            rows.iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .last()
                .unwrap()
        }
    };
    assert_eq!(
        backlog("SELECT backlog FROM hub_outbox_backlog(1::smallint, true)").await,
        "0"
    );
    assert_eq!(
        backlog(
            "BEGIN; SELECT set_config('app.tenant_id', 'tenant1', true); \
             SELECT backlog FROM hub_outbox_backlog(1::smallint, true); COMMIT"
        )
        .await,
        "1"
    );
    // The functions are the only way in (the relay's: see rls.rs for the
    // application role), and they refuse unknown sinks.
    let relay = TestDb::connect(&w.db.relay).await;
    let error = relay
        .query("SELECT * FROM hub_outbox_pending(4::smallint, 1)", &[])
        .await
        .unwrap_err();
    assert!(
        format!("{error:?}").contains("unknown outbox sink"),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_undecodable_row_comes_back_in_its_place_and_stays_set_aside() {
    let Some(w) = outbox_world(Sinks::NONE.with(Sink::Nats)).await else {
        return;
    };
    let ctx = ChangeContext::new(None, None);
    w.registry
        .register(&tenant("tenant1"), registration("svc", "a"), &ctx)
        .await
        .unwrap();
    // Written as the owner, past every check a request goes through: a
    // payload that is not an instance, and a number serde_json cannot hold.
    let owner = TestDb::connect(&w.db.owner).await;
    for payload in [r#"["not", "an", "object"]"#, r#"{"metadata":{"x":1e400}}"#] {
        owner
            .execute(
                "WITH e AS (INSERT INTO hub_outbox (tenant_id, revision, event_type, service_name, \
                     instance_id, occurred_at, payload, registered_at, last_heartbeat) \
                     VALUES ('tenantx', 1, 'service.registered', 'svc', 'i', now(), $1::text::jsonb, \
                             now(), now()) RETURNING id) \
                 INSERT INTO hub_outbox_due (sink, id, tenant_id) SELECT 1, id, 'tenantx' FROM e",
                &[&payload],
            )
            .await
            .unwrap();
    }
    w.registry
        .register(&tenant("tenant2"), registration("svc", "b"), &ctx)
        .await
        .unwrap();
    let mut nats = leader(&w.outbox, Sink::Nats).await;
    let pending = nats.pending(100).await.unwrap();
    let shape: Vec<&str> = pending
        .iter()
        .map(|p| match p {
            Pending::Event(e) => e.event.tenant_id().as_str(),
            Pending::Undecodable(row) => {
                assert_eq!(row.tenant, "tenantx");
                assert!(
                    !row.cause.is_empty() && !row.cause.contains("unavailable"),
                    "{row:?}"
                );
                "undecodable"
            }
        })
        .collect();
    assert_eq!(shape, ["tenant1", "undecodable", "undecodable", "tenant2"]);
    let seqs: Vec<i64> = pending.iter().map(Pending::seq).collect();
    for (seq, item) in seqs.iter().zip(&pending) {
        if let Pending::Undecodable(row) = item {
            assert!(nats.set_aside(*seq, &row.cause).await.unwrap());
            assert!(!nats.set_aside(*seq, &row.cause).await.unwrap(), "once");
        }
    }
    nats.mark(&[seqs[0], seqs[3]]).await.unwrap();
    assert!(
        nats.pending(100).await.unwrap().is_empty(),
        "nothing retried"
    );
    let backlog = w.outbox.backlog(Sink::Nats, None).await.unwrap();
    assert_eq!((backlog.pending, backlog.undeliverable), (0, 2));
    let tenant1 = w
        .outbox
        .backlog(Sink::Nats, Some(&tenant("tenant1")))
        .await
        .unwrap();
    assert_eq!(
        tenant1.undeliverable, 0,
        "another tenant's rows are not counted"
    );
    // Delivered events are pruned; the set-aside ones are kept for an operator.
    let future = Utc::now() + Duration::days(1);
    assert_eq!(w.outbox.prune(future, 1000).await.unwrap(), 2);
    assert_eq!(
        owner_count(
            &w.db,
            "SELECT count(*) FROM hub_outbox o JOIN hub_outbox_undeliverable u USING (id) \
             WHERE u.reason <> ''"
        )
        .await,
        2
    );
}
