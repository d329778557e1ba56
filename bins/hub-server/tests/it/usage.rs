//! Usage per tenant through the server: counted while it serves, flushed to PostgreSQL at a graceful stop, and still there for the next server.

use chrono::Utc;
use hub_core::TenantId;
use hub_core::tenancy::TenantDirectory;
use hub_store::testing::TestDb;
use hub_store::{PgStore, PgTenants};

use crate::pg_support::Hub;

/// A flush interval far longer than the test: only the flush at the
/// graceful stop can have stored what is read back.
const NO_PERIODIC_FLUSH: (&str, &str) = ("HUB_USAGE_FLUSH_SECS", "3600");

#[tokio::test]
async fn usage_counted_before_a_graceful_stop_survives_the_restart() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let hub = Hub::start(&db.app, &[NO_PERIODIC_FLUSH]).await;
    for i in 0..5 {
        hub.register_created("usage-a", "svc", &format!("i{i}"), "10.0.0.1")
            .await;
    }
    hub.register_created("usage-b", "svc", "only", "10.0.0.2")
        .await;
    hub.shut_down().await;

    // A second server on the same database counts on top of the first.
    let hub = Hub::start(&db.app, &[NO_PERIODIC_FLUSH]).await;
    hub.register_created("usage-a", "svc", "i5", "10.0.0.1")
        .await;
    hub.shut_down().await;

    let directory = PgTenants::new(&PgStore::new(&db.app).unwrap());
    let today = Utc::now().date_naive();
    let a = directory
        .usage(&TenantId::parse("usage-a").unwrap(), today, today)
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].counts.registrations, 6);
    assert_eq!(a[0].counts.events_published, 6);
    assert_eq!(a[0].counts.peak_instances, 6);
    let b = directory
        .usage(&TenantId::parse("usage-b").unwrap(), today, today)
        .await
        .unwrap();
    assert_eq!(b[0].counts.registrations, 1);
    assert_eq!(b[0].counts.peak_instances, 1);
}
