//! Change notifications (migration V5) through the listener (`pg::listen`): every committed change of the application role is notified once per service, in commit order; a rolled-back one never; a lost connection is reported and listening resumes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hub_core::ports::RegistryStore;
use hub_core::{ChangeContext, Heartbeat, InstanceId, ServiceName, TenantId};
use hub_store::PgStore;
use hub_store::pg::listen::{self, ChangeHandler};
use hub_store::testing::TestDb;
use tokio::sync::{mpsc, watch};

use crate::support::{registration, tenant};

/// Hands each call on as a line of text, in order.
struct Recorder(mpsc::UnboundedSender<String>);

impl ChangeHandler for Recorder {
    fn connected(&self) {
        let _ = self.0.send("connected".into());
    }
    fn lost(&self) {
        let _ = self.0.send("lost".into());
    }
    fn changed(&self, tenant: &TenantId, service: &ServiceName) {
        let _ = self.0.send(format!("{tenant}/{service}"));
    }
    fn everything_changed(&self) {
        let _ = self.0.send("everything".into());
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("no notification within 15 s")
        .expect("the listener ended")
}

/// Runs `sql` in one transaction of the application's login, scoped to
/// `tenant`, then commits or rolls back.
async fn in_transaction(db: &TestDb, tenant: &str, sql: &str, commit: bool) {
    let mut app = TestDb::connect(&db.app).await;
    let tx = app.transaction().await.unwrap();
    tx.execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
        .await
        .unwrap();
    tx.batch_execute(sql).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn committed_changes_are_notified_once_per_service_and_rolled_back_ones_never() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let name = format!("notify-test-{}", db.name);
    let listening = tokio::spawn(listen::run(
        db.app.clone(),
        name.clone(),
        Arc::new(Recorder(tx)),
        stop_rx,
    ));
    assert_eq!(next(&mut rx).await, "connected");

    // The store's own writes, as the application role under row-level
    // security: a registration per tenant, a renewal (it moves
    // last_heartbeat, which lookups return), a removal.
    let store = PgStore::new(&db.app).unwrap();
    let ctx = ChangeContext::default();
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    for t in [&t1, &t2] {
        store
            .upsert(t, registration("orders", "a"), Utc::now(), &ctx, None)
            .await
            .unwrap();
    }
    assert_eq!(next(&mut rx).await, "t1/orders");
    assert_eq!(next(&mut rx).await, "t2/orders");
    let orders = ServiceName::parse("orders").unwrap();
    let a = InstanceId::parse("a").unwrap();
    store
        .renew(&t1, &orders, &a, &Heartbeat::default(), Utc::now(), &ctx)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "t1/orders");
    store.remove(&t2, &orders, None, &ctx).await.unwrap();
    assert_eq!(next(&mut rx).await, "t2/orders");

    // Several rows of one service in one transaction: one notification.
    // A rolled-back change: none. Notifications come in commit order, so
    // the marker committed last shows nothing else came before it.
    for id in ["b", "c"] {
        store
            .upsert(&t1, registration("orders", id), Utc::now(), &ctx, None)
            .await
            .unwrap();
        assert_eq!(next(&mut rx).await, "t1/orders");
    }
    in_transaction(
        &db,
        "t1",
        "UPDATE service_registry SET port = 9000; UPDATE service_registry SET port = 9001",
        true,
    )
    .await;
    assert_eq!(next(&mut rx).await, "t1/orders");
    in_transaction(&db, "t1", "DELETE FROM service_registry", false).await;
    store
        .upsert(&t1, registration("marker", "m"), Utc::now(), &ctx, None)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "t1/marker");

    // The connection is cut: reported, then listening resumes.
    let admin = db.admin().await;
    let cut: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2",
            &[&db.name, &name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 1);
    assert_eq!(next(&mut rx).await, "lost");
    assert_eq!(next(&mut rx).await, "connected");
    store
        .upsert(&t2, registration("search", "s"), Utc::now(), &ctx, None)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "t2/search");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), listening)
        .await
        .expect("the listener did not stop")
        .unwrap();
}
