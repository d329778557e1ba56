//! The shared GCRA script through a real Redis (standing in for DragonflyDB): burst, refusal, refill, both budgets atomic, batches, and an unreachable server; and `Limits` spending batches: few script calls, small limits exact, two replicas on one budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_core::TenantId;
use hub_core::ratelimit::{Limits, Quota, RateLimiter, RatePolicy, RateRequest};
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

#[tokio::test]
async fn a_batch_takes_what_fits_and_a_refusal_charges_nothing() {
    let Some(client) = testing::dragonfly().await else {
        return;
    };
    let limiter = DragonflyLimiter::new(client);
    let tenant = fresh_tenant();
    let req = request(&tenant, 1, 5, None);
    let g = limiter.take(&req, 3).await.unwrap();
    assert_eq!(
        (g.cells, g.decision.allowed, g.decision.remaining),
        (3, true, 2)
    );
    // Five asked, two fit: those two are granted.
    let g = limiter.take(&req, 5).await.unwrap();
    assert_eq!((g.cells, g.decision.remaining), (2, 0), "{g:?}");
    let g = limiter.take(&req, 4).await.unwrap();
    assert_eq!(g.cells, 0);
    assert!(!g.decision.allowed && g.decision.retry_after > Duration::ZERO);
    // Both budgets at once: the key's burst of 3 bounds the batch, and the
    // tenant is charged exactly as much.
    let other = fresh_tenant();
    let g = limiter
        .take(&request(&other, 1, 10, Some((1, 3))), 8)
        .await
        .unwrap();
    assert_eq!((g.cells, g.decision.limit, g.decision.remaining), (3, 3, 0));
    let d = limiter.check(&request(&other, 1, 10, None)).await.unwrap();
    assert_eq!(d.remaining, 6, "the tenant paid 3 + this one: {d:?}");
    // A refused batch charged neither budget.
    let g = limiter
        .take(&request(&other, 1, 10, Some((1, 3))), 8)
        .await
        .unwrap();
    assert_eq!(g.cells, 0);
    let d = limiter.check(&request(&other, 1, 10, None)).await.unwrap();
    assert_eq!(d.remaining, 5, "{d:?}");
}

/// EVAL and EVALSHA calls the server has run so far (`INFO commandstats`).
fn script_calls(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn limits_on(client: hub_store::dragonfly::Dragonfly, rate: u32, burst: u32) -> Limits {
    let policy = RatePolicy {
        tenant: Quota { rate, burst },
        key: Quota::default(),
        overrides: HashMap::new(),
    };
    Limits::new(policy, Some(Arc::new(DragonflyLimiter::new(client))))
}

#[tokio::test]
async fn a_big_limit_makes_far_fewer_script_calls_than_requests() {
    // A server of its own, so that other tests' calls do not count.
    let server = RedisServer::start().await;
    let limits = Arc::new(limits_on(
        testing::dragonfly_on(server.port).await,
        1_000_000,
        1_000_000,
    ));
    let tenant = fresh_tenant();
    let before = script_calls(server.port);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (limits, tenant) = (limits.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..1_000 {
                assert!(limits.check(&tenant, Some("k")).await.unwrap().allowed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let calls = script_calls(server.port) - before;
    assert!(
        calls > 0 && calls <= 200,
        "{calls} script calls for 4000 requests"
    );
    assert_eq!(limits.fallbacks(), 0);
}

#[tokio::test]
async fn a_small_limit_stays_exact_one_call_per_request() {
    let server = RedisServer::start().await;
    let limits = limits_on(testing::dragonfly_on(server.port).await, 10, 5);
    // Load the script first (a NOSCRIPT answer would count a call more).
    limits.check(&fresh_tenant(), None).await.unwrap();
    let tenant = fresh_tenant();
    let before = script_calls(server.port);
    for left in (0..5).rev() {
        let d = limits.check(&tenant, None).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!((d.limit, d.remaining), (5, left));
    }
    let refused = limits.check(&tenant, None).await.unwrap();
    assert!(!refused.allowed);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100),
        "{refused:?}"
    );
    assert_eq!(script_calls(server.port) - before, 6);
    // Refused again at once: answered from the refusal, no call.
    assert!(!limits.check(&tenant, None).await.unwrap().allowed);
    assert_eq!(script_calls(server.port) - before, 6);
    assert_eq!(limits.fallbacks(), 0);
}

#[tokio::test]
async fn two_batching_replicas_share_one_tight_budget() {
    let server = RedisServer::start().await;
    // Burst 400: batches of up to 25 cells.
    let (rate, burst) = (200, 400);
    let replicas = [
        Arc::new(limits_on(
            testing::dragonfly_on(server.port).await,
            rate,
            burst,
        )),
        Arc::new(limits_on(
            testing::dragonfly_on(server.port).await,
            rate,
            burst,
        )),
    ];
    let tenant = fresh_tenant();
    let period = Duration::from_millis(1500);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let limits = replicas[worker % 2].clone();
        let tenant = tenant.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u32;
            while started.elapsed() < period {
                if limits.check(&tenant, None).await.unwrap().allowed {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            ok
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let exact = f64::from(burst) + f64::from(rate) * elapsed;
    // At most rate × lifetime over one exact GCRA (ALLOWANCE_LIFETIME's
    // bound); each replica on its own would have given about twice `exact`.
    let most = exact + f64::from(rate) * 0.1 + 2.0;
    let ok = f64::from(ok);
    assert!(
        ok <= most && ok >= exact * 0.85,
        "{ok} passed in {elapsed:.2} s, exact GCRA: {exact:.0}, at most {most:.0}"
    );
    for limits in &replicas {
        assert_eq!(limits.fallbacks(), 0);
    }
}
