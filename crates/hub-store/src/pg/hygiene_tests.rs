//! Pool hygiene: with two pooled connections, thousands of interleaved tenant transactions (half failing or abandoned) never see another tenant's rows and never leave a tenant on a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hub_core::{RegistryError, TenantId};

use super::gate::Gate;
use super::scoped::in_tenant;
use crate::testing::TestDb;

const REQUESTS: usize = 2000;
const WORKERS: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Reads and commits.
    Succeed,
    /// Reads, then a statement fails: the transaction is rolled back.
    FailMidway,
    /// Reads, then the caller gives up while a statement runs: the
    /// transaction is abandoned mid-flight.
    Abandon,
    /// The same three, as pipelined single-statement transactions.
    OneShotSucceed,
    OneShotFail,
    OneShotAbandon,
}

/// What a pipelined single-statement transaction saw.
async fn one_shot(
    pool: &Gate,
    tenant: &TenantId,
    mode: Mode,
) -> Result<(Vec<String>, String), RegistryError> {
    let sql = match mode {
        Mode::OneShotFail => {
            "SELECT tenant_id, current_setting('app.tenant_id', true), 1 / 0 FROM service_registry"
        }
        Mode::OneShotAbandon => {
            "SELECT tenant_id, current_setting('app.tenant_id', true), pg_sleep(0.04)::text FROM service_registry"
        }
        _ => "SELECT tenant_id, current_setting('app.tenant_id', true) FROM service_registry",
    };
    let rows = super::scoped::single_statement(pool, tenant, sql, &[]).await?;
    let setting = rows
        .first()
        .map(|r| r.get::<_, String>(1))
        .unwrap_or_default();
    Ok((
        rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        setting,
    ))
}

/// What one transaction saw: the tenants of the visible rows and the
/// tenant setting in force.
async fn run(
    pool: &Gate,
    tenant: &TenantId,
    mode: Mode,
) -> Result<(Vec<String>, String), RegistryError> {
    in_tenant!(pool, tenant, |scoped| {
        let rows = scoped
            .query("SELECT tenant_id FROM service_registry", &[])
            .await?;
        let setting = scoped
            .query_one("SELECT current_setting('app.tenant_id', true)", &[])
            .await?;
        match mode {
            Mode::Succeed | Mode::OneShotSucceed => {}
            Mode::FailMidway | Mode::OneShotFail => {
                scoped.query_one("SELECT 1 / 0", &[]).await?;
            }
            Mode::Abandon | Mode::OneShotAbandon => {
                scoped.execute("SELECT pg_sleep(0.2)", &[]).await?;
            }
        }
        let setting: Option<String> = setting.try_get(0)?;
        Ok((
            rows.iter().map(|r| r.get::<_, String>(0)).collect(),
            setting.unwrap_or_default(),
        ))
    })
}

async fn seed(pool: &Gate, tenant: &TenantId) -> Result<(), RegistryError> {
    in_tenant!(pool, tenant, |scoped| {
        for n in 0..3 {
            scoped
                .execute(
                    "INSERT INTO service_registry (tenant_id, service_name, instance_id, host, port, \
                     protocol, health_endpoint, ttl_seconds, status, registered_at, last_heartbeat, \
                     lease_expires_at, revision) VALUES ($1, 'svc', $2, 'h', 80, 'http', '/health', 30, \
                     'passing', now(), now(), now(), 1)",
                    &[&tenant.as_str(), &format!("i{n}")],
                )
                .await?;
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_failing_transactions_never_leak_a_tenant() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let config = crate::PgConfig {
        pool_size: 2,
        // Either tenant may use both connections, as before the cap.
        tenant_max_connections: Some(2),
        ..db.app.clone()
    };
    let pool = Gate::new(&config).unwrap();
    let tenants = [
        TenantId::parse("hyg-a").unwrap(),
        TenantId::parse("hyg-b").unwrap(),
    ];
    for tenant in &tenants {
        seed(&pool, tenant).await.unwrap();
    }

    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (pool, tenants, next, failures) = (
            pool.clone(),
            tenants.clone(),
            next.clone(),
            failures.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    break;
                }
                let tenant = &tenants[i % 2];
                let mode = match (i / 2) % 8 {
                    0 | 4 => Mode::Succeed,
                    2 | 6 => Mode::OneShotSucceed,
                    1 => Mode::FailMidway,
                    5 => Mode::OneShotFail,
                    3 => Mode::Abandon,
                    _ => Mode::OneShotAbandon,
                };
                let limit = Duration::from_millis(20);
                let outcome = match mode {
                    Mode::Abandon => tokio::time::timeout(limit, run(&pool, tenant, mode))
                        .await
                        .ok(),
                    Mode::OneShotAbandon => {
                        tokio::time::timeout(limit, one_shot(&pool, tenant, mode))
                            .await
                            .ok()
                    }
                    Mode::OneShotSucceed | Mode::OneShotFail => {
                        Some(one_shot(&pool, tenant, mode).await)
                    }
                    _ => Some(run(&pool, tenant, mode).await),
                };
                match (mode, outcome) {
                    (Mode::Succeed | Mode::OneShotSucceed, Some(Ok((seen, setting)))) => {
                        assert_eq!(setting, tenant.as_str(), "request {i}");
                        assert_eq!(seen.len(), 3, "request {i}: its own three rows");
                        assert!(
                            seen.iter().all(|t| t == tenant.as_str()),
                            "request {i} saw {seen:?}"
                        );
                    }
                    (Mode::Succeed | Mode::OneShotSucceed, other) => {
                        panic!("request {i} ({mode:?}) should succeed: {other:?}")
                    }
                    (_, Some(Ok(_))) => panic!("request {i} ({mode:?}) should have failed"),
                    (_, _) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        REQUESTS / 2,
        "half the requests failed on purpose"
    );

    // Both pooled connections, outside any transaction, carry no tenant and see nothing.
    let (a, b) = tokio::join!(pool.internal(), pool.internal());
    for client in [a.unwrap(), b.unwrap()] {
        let setting: Option<String> = client
            .query_one("SELECT current_setting('app.tenant_id', true)", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            setting.unwrap_or_default().is_empty(),
            "a pooled connection kept a tenant"
        );
        let rows = client
            .query("SELECT 1 FROM service_registry", &[])
            .await
            .unwrap();
        assert!(
            rows.is_empty(),
            "outside a tenant transaction nothing is visible"
        );
    }
}
