//! The shared GCRA script through a real Redis (standing in for DragonflyDB): burst, refusal, refill, both budgets atomic, and an unreachable server.

use std::time::{Duration, Instant};

use hub_core::TenantId;
use hub_core::ratelimit::{Quota, RateLimiter, RateRequest};
use hub_store::dragonfly::DragonflyLimiter;
use hub_store::testing::{self, RedisServer};

/// A tenant id no other test run uses, so tests share Redis without FLUSHALL.
fn fresh_tenant() -> TenantId {
    TenantId::parse(format!("rl-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn request(tenant: &TenantId, rate: u32, burst: u32, key: Option<(u32, u32)>) -> RateRequest {
    let mut budgets = vec![("tenant".to_owned(), Quota { rate, burst })];
    if let Some((rate, burst)) = key {
        budgets.push(("key:abc".to_owned(), Quota { rate, burst }));
    }
    RateRequest {
        tenant: tenant.clone(),
        budgets,
    }
}

#[tokio::test]
async fn burst_then_refusal_then_refill() {
    let Some(client) = testing::dragonfly().await else {
        return;
    };
    let limiter = DragonflyLimiter::new(client);
    let tenant = fresh_tenant();
    // 10/s, burst 5: five pass at once, the sixth waits ~100 ms.
    let req = request(&tenant, 10, 5, None);
    for left in (0..5).rev() {
        let d = limiter.check(&req).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!((d.limit, d.remaining), (5, left));
    }
    let refused = limiter.check(&req).await.unwrap();
    assert!(!refused.allowed);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100),
        "{refused:?}"
    );
    // Refill: one request's share comes back after the retry-after; poll
    // with a deadline rather than sleep a guessed time.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let d = limiter.check(&req).await.unwrap();
        if d.allowed {
            break;
        }
        assert!(Instant::now() < deadline, "the budget never refilled");
        tokio::time::sleep(d.retry_after).await;
    }
}

#[tokio::test]
async fn both_budgets_bind_and_a_refusal_charges_neither() {
    let Some(client) = testing::dragonfly().await else {
        return;
    };
    let limiter = DragonflyLimiter::new(client);
    let tenant = fresh_tenant();
    // The key's budget (burst 2) binds before the tenant's (burst 3).
    let with_key = request(&tenant, 1, 3, Some((1, 2)));
    assert!(limiter.check(&with_key).await.unwrap().allowed);
    assert!(limiter.check(&with_key).await.unwrap().allowed);
    let d = limiter.check(&with_key).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.limit, 2, "the key's budget refused: {d:?}");
    // The refusal did not charge the tenant: one request of its 3 remains.
    let d = limiter.check(&request(&tenant, 1, 3, None)).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
}

#[tokio::test]
async fn a_server_that_forgot_the_script_gets_it_again() {
    // A server of its own: SCRIPT FLUSH on the shared one would touch others.
    let server = RedisServer::start().await;
    let limiter = DragonflyLimiter::new(testing::dragonfly_on(server.port).await);
    let tenant = fresh_tenant();
    assert!(limiter.check(&request(&tenant, 10, 10, None)).await.is_ok());
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "SCRIPT", "FLUSH"])
        .output()
        .unwrap();
    assert!(flushed.status.success());
    let d = limiter
        .check(&request(&tenant, 10, 10, None))
        .await
        .unwrap();
    assert_eq!(
        d.remaining, 8,
        "the budget survived, the script was reloaded"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_hang() {
    let mut server = RedisServer::start().await;
    let limiter = DragonflyLimiter::new(testing::dragonfly_on(server.port).await);
    let tenant = fresh_tenant();
    assert!(limiter.check(&request(&tenant, 10, 10, None)).await.is_ok());
    server.stop();
    let started = Instant::now();
    let mut failed = false;
    for _ in 0..3 {
        failed |= limiter
            .check(&request(&tenant, 10, 10, None))
            .await
            .is_err();
    }
    assert!(failed, "a stopped server must make the limiter fail");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
