//! Unit tests of the watch hub in embedded mode: order, replay from the ring, compaction, lagged subscribers, waiters and limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};

use super::*;
use crate::domain::instance::Instance;
use crate::domain::registration::{Registration, RegistrationInput};

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn event(t: &str, service: &str, revision: u64) -> RegistryEvent {
    let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
    let registration = Registration::try_from(RegistrationInput {
        service_name: service.into(),
        host: "h".into(),
        port: 1,
        ..Default::default()
    })
    .unwrap();
    let instance = Instance::registered(tenant(t), registration, at, None, Revision::new(revision));
    RegistryEvent::new(EventKind::Registered, instance, None, at)
}

fn config(history: usize, buffer: usize) -> WatchConfig {
    WatchConfig {
        history,
        buffer,
        ..WatchConfig::default()
    }
}

fn revisions(groups: &[Group]) -> Vec<u64> {
    groups
        .iter()
        .flat_map(|g| g.iter().map(|e| e.revision()))
        .collect()
}

fn drain(sub: &mut Subscription) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(g) = sub.live.try_recv() {
        out.extend(g.iter().map(|e| e.revision()));
    }
    out
}

#[tokio::test]
async fn out_of_order_publishes_reach_subscribers_in_revision_order() {
    let hub = WatchHub::embedded(config(16, 16));
    let t = tenant("t1");
    let mut sub = hub
        .subscribe(&t, WatchFilter::default(), Start::Now)
        .await
        .unwrap();
    hub.publish(&[event("t1", "a", 2)]);
    assert!(drain(&mut sub).is_empty(), "revision 2 waits for 1");
    hub.publish(&[event("t1", "a", 1)]);
    hub.publish(&[event("t1", "b", 3), event("t2", "a", 1)]);
    assert_eq!(drain(&mut sub), [1, 2, 3]);
    assert_eq!(hub.revision(&t), Some(Revision::new(3)));
}

#[tokio::test]
async fn a_replay_from_the_middle_gives_exactly_the_missing_events() {
    let hub = WatchHub::embedded(config(16, 16));
    let t = tenant("t1");
    for r in 1..=6 {
        hub.publish(&[event("t1", if r % 2 == 0 { "a" } else { "b" }, r)]);
    }
    let sub = hub
        .subscribe(&t, WatchFilter::default(), Start::After(Revision::new(3)))
        .await
        .unwrap();
    assert_eq!(revisions(&sub.replay), [4, 5, 6]);
    assert!(sub.compacted.is_none());
    let only_a = WatchFilter {
        services: vec![ServiceName::parse("a").unwrap()],
        kinds: vec![],
    };
    let sub = hub
        .subscribe(&t, only_a, Start::After(Revision::new(1)))
        .await
        .unwrap();
    assert_eq!(revisions(&sub.replay), [2, 4, 6]);
}

#[tokio::test]
async fn a_resume_point_ahead_of_the_latest_revision_is_a_reset() {
    // An embedded hub that restarted: the client's revision 9 belongs to a
    // registry that is gone, so it must replace its state, not wait.
    let hub = WatchHub::embedded(config(16, 16));
    let t = tenant("t1");
    hub.publish(&[event("t1", "a", 1)]);
    let sub = hub
        .subscribe(&t, WatchFilter::default(), Start::After(Revision::new(9)))
        .await
        .unwrap();
    assert_eq!(sub.compacted.map(|c| c.requested), Some(Revision::new(9)));
    let current = hub
        .subscribe(&t, WatchFilter::default(), Start::After(Revision::new(1)))
        .await
        .unwrap();
    assert!(current.compacted.is_none());
    assert!(current.replay.is_empty());
}

#[tokio::test]
async fn a_replay_older_than_the_ring_is_compacted() {
    let hub = WatchHub::embedded(config(3, 16));
    let t = tenant("t1");
    for r in 1..=10 {
        hub.publish(&[event("t1", "a", r)]);
    }
    let sub = hub
        .subscribe(&t, WatchFilter::default(), Start::After(Revision::new(2)))
        .await
        .unwrap();
    assert_eq!(
        sub.compacted,
        Some(Compacted {
            requested: Revision::new(2),
            oldest_retained: Revision::new(7)
        })
    );
    let sub = hub
        .subscribe(&t, WatchFilter::default(), Start::After(Revision::new(7)))
        .await
        .unwrap();
    assert_eq!(revisions(&sub.replay), [8, 9, 10]);
}

#[tokio::test]
async fn a_subscriber_past_its_buffer_is_cut_off_and_counted() {
    let hub = WatchHub::embedded(config(16, 2));
    let t = tenant("t1");
    let mut sub = hub
        .subscribe(&t, WatchFilter::default(), Start::Now)
        .await
        .unwrap();
    for r in 1..=3 {
        hub.publish(&[event("t1", "a", r)]);
    }
    assert!(sub.lagged.load(Ordering::Acquire));
    assert_eq!(drain(&mut sub), [1, 2]);
    assert_eq!(hub.figures().lagged, 1);
}

#[tokio::test]
async fn a_gap_is_skipped_after_the_grace() {
    let hub = WatchHub::embedded(config(16, 16));
    let t = tenant("t1");
    let mut sub = hub
        .subscribe(&t, WatchFilter::default(), Start::Now)
        .await
        .unwrap();
    hub.publish(&[event("t1", "a", 2)]);
    hub.tick();
    assert!(drain(&mut sub).is_empty());
    {
        let feed = hub.existing(&t).unwrap();
        let mut state = lock(&feed.state);
        state.pending_since = Some(Instant::now() - GAP_GRACE);
    }
    hub.tick();
    assert_eq!(drain(&mut sub), [2]);
}

#[tokio::test]
async fn waiters_return_on_a_change_of_their_service_only() {
    let hub = WatchHub::embedded(config(16, 16));
    let t = tenant("t1");
    hub.publish(&[event("t1", "a", 1)]);
    let a = ServiceName::parse("a").unwrap();
    let waiting = {
        let hub = hub.clone();
        let t = t.clone();
        tokio::spawn(async move { hub.wait(&t, Some(&a), Revision::new(1)).await })
    };
    hub.publish(&[event("t1", "b", 2)]);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    hub.publish(&[event("t1", "a", 3)]);
    waiting.await.unwrap().unwrap();
    // Any change of the tenant ends a wait on the whole tenant.
    hub.wait(&t, None, Revision::new(2)).await.unwrap();
}

#[test]
fn limits_count_per_tenant_and_key_and_give_back_on_drop() {
    let hub = WatchHub::embedded(WatchConfig {
        max_per_tenant: 2,
        max_per_key: 3,
        ..WatchConfig::default()
    });
    let (a, b) = (tenant("a"), tenant("b"));
    let p1 = hub.acquire(&a, Some("k"), None).unwrap();
    let _p2 = hub.acquire(&a, Some("k"), None).unwrap();
    assert_eq!(
        hub.acquire(&a, Some("k"), None).unwrap_err(),
        WatchLimit::Tenant(2)
    );
    let _p3 = hub.acquire(&a, Some("k"), Some(3)).unwrap();
    assert_eq!(
        hub.acquire(&b, Some("k"), None).unwrap_err(),
        WatchLimit::Key(3)
    );
    drop(p1);
    assert_eq!(hub.figures().open, 2);
    assert!(hub.acquire(&b, Some("k"), None).is_ok());
}
