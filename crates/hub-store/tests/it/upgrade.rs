//! The upgrade path of `V1__multi_tenant_registry.sql`: a database of the original single-tenant hub, migrated, lands in tenant `system` behind row-level security.
//!
//! `TestDb` migrates at once, so this test builds its own database: the
//! superuser admin connection only creates and drops the database and roles;
//! the legacy tables are made by the owner (as the original hub's own role
//! would have made them), the migration runs as that owner, and every check
//! of the result is made as a non-superuser application role, which is bound
//! by row-level security.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use hub_core::memory::{InProcessBus, SystemClock};
use hub_core::{
    ChangeContext, HealthStatus, Heartbeat, HeartbeatMetrics, Registration, RegistrationInput,
    Registry, ServiceName,
};
use hub_store::PgStore;
use hub_store::pg::migrate;
use hub_store::testing::TestDb;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// The original hub's tables, as the migration reads them: no `tenant_id`,
/// one row per service name, free-text statuses and naive timestamps.
const LEGACY_SCHEMA: &str = "
    CREATE TABLE service_registry (
        id               SERIAL PRIMARY KEY,
        service_name     VARCHAR(255) UNIQUE NOT NULL,
        host             VARCHAR(255) NOT NULL,
        port             INTEGER NOT NULL,
        protocol         VARCHAR(20) DEFAULT 'http',
        health_endpoint  VARCHAR(255) DEFAULT '/health',
        version          VARCHAR(50),
        metadata         JSONB DEFAULT '{}',
        status           VARCHAR(50) DEFAULT 'active',
        registered_at    TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        last_heartbeat   TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    );
    CREATE INDEX idx_service_registry_status ON service_registry (status);
    CREATE TABLE health_metrics (
        id                SERIAL PRIMARY KEY,
        service_name      VARCHAR(255) NOT NULL,
        status            VARCHAR(50),
        response_time_ms  FLOAT,
        cpu_usage         FLOAT,
        memory_usage      FLOAT,
        error_rate        FLOAT,
        metadata          JSONB DEFAULT '{}',
        recorded_at       TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    );
    CREATE TABLE coordination_history (
        id                SERIAL PRIMARY KEY,
        coordination_id   VARCHAR(255),
        service_name      VARCHAR(255),
        action            VARCHAR(100),
        details           JSONB DEFAULT '{}',
        created_at        TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    );
";

/// Five importable services with every status spelling the migration maps,
/// and two rows the new constraints reject (a URL where a host belongs, a
/// port out of range): those must stay behind in `legacy_service_registry`.
const LEGACY_ROWS: &str = "
    INSERT INTO service_registry
        (service_name, host, port, protocol, health_endpoint, version, metadata, status,
         registered_at, last_heartbeat)
    VALUES
        ('api-gateway', '10.0.0.10', 8000, 'http', '/health', '2.1.0', '{\"team\": \"edge\"}',
         'active', '2024-01-02 03:04:05', '2024-01-02 03:05:00'),
        ('mt5-connector', 'mt5.internal', 443, 'HTTPS', 'status', '', '{\"broker\": \"demo\"}',
         'healthy', '2024-01-03 00:00:00', NULL),
        ('signal-engine', '10.0.0.12', 9000, 'grpc', '/healthz', '0.9.3', '[1, 2]',
         'degraded', '2024-01-04 12:00:00', '2024-01-04 12:30:00'),
        ('notification', '10.0.0.13', 8025, 'smtp', '/health', NULL, NULL,
         'inactive', NULL, NULL),
        ('analytics', 'analytics-1.internal', 8088, NULL, NULL, '1.0.0', '{}',
         NULL, '2024-01-05 08:00:00', '2024-01-05 08:01:00'),
        ('legacy-web', 'http://bad host', 80, 'http', '/health', '0.1', '{}',
         'active', '2024-01-01 00:00:00', '2024-01-01 00:00:00'),
        ('legacy-batch', '10.0.0.99', 70000, 'http', '/health', '0.1', '{}',
         'active', '2024-01-01 00:00:00', '2024-01-01 00:00:00');
    INSERT INTO health_metrics
        (service_name, status, response_time_ms, cpu_usage, memory_usage, error_rate, metadata, recorded_at)
    VALUES
        ('api-gateway', 'healthy', 12.5, 35.0, 512.0, 0.01, '{\"probe\": \"http\"}', '2024-01-02 03:05:00'),
        ('signal-engine', 'degraded', 250.0, 150.0, -1.0, 2.0, '\"not an object\"', '2024-01-04 12:30:00'),
        ('notification', 'down', NULL, NULL, NULL, NULL, NULL, NULL);
    INSERT INTO coordination_history (coordination_id, service_name, action, details, created_at)
    VALUES
        ('c-1', 'api-gateway', 'register', '{\"by\": \"deploy\"}', '2024-01-02 03:04:05'),
        ('c-2', 'signal-engine', 'status_change', '{\"to\": \"degraded\"}', '2024-01-04 12:30:00'),
        ('c-3', NULL, 'broadcast', '{}', NULL);
";

async fn scoped_count(client: &Client, tenant: Option<&str>, table: &str) -> i64 {
    client.batch_execute("BEGIN").await.unwrap();
    if let Some(tenant) = tenant {
        client
            .execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
            .await
            .unwrap();
    }
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    client.batch_execute("ROLLBACK").await.unwrap();
    count
}

async fn begin_as(client: &Client, tenant: &str) {
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("SELECT set_config('app.tenant_id', $1, true)", &[&tenant])
        .await
        .unwrap();
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

#[tokio::test]
async fn single_tenant_schema_is_upgraded_into_tenant_system() {
    let Some(db) = TestDb::create_unmigrated().await else {
        return;
    };
    // The owner runs with a session time zone far from UTC, so that a naive
    // legacy timestamp read in the session's zone would show as a wrong
    // instant below: the original hub stored UTC wall-clock times.
    db.admin()
        .await
        .batch_execute(&format!(
            "ALTER ROLE {} SET TimeZone = 'Asia/Tokyo'",
            db.owner.user
        ))
        .await
        .unwrap();
    let owner_config = db.owner.clone();
    let app_config = db.app.clone();

    // The original hub's database, built by its owner.
    let owner = TestDb::connect(&owner_config).await;
    owner.batch_execute(LEGACY_SCHEMA).await.unwrap();
    owner.batch_execute(LEGACY_ROWS).await.unwrap();

    let applied = migrate::run(&owner_config).await.unwrap();
    assert_eq!(
        applied,
        [
            "V1__multi_tenant_registry",
            "V2__event_outbox",
            "V3__outbox_hardening"
        ]
    );
    let again = migrate::run(&owner_config).await.unwrap();
    assert!(again.is_empty(), "a second run applied {again:?}");
    let recorded: Vec<(i32, String)> = owner
        .query("SELECT version, name FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        [
            (1, "multi_tenant_registry".to_owned()),
            (2, "event_outbox".to_owned()),
            (3, "outbox_hardening".to_owned())
        ]
    );

    // The legacy tables stay, untouched, for the operator to inspect: the
    // rows the new constraints rejected are only there.
    let legacy: Vec<String> = owner
        .query(
            "SELECT service_name FROM legacy_service_registry ORDER BY service_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        legacy,
        [
            "analytics",
            "api-gateway",
            "legacy-batch",
            "legacy-web",
            "mt5-connector",
            "notification",
            "signal-engine"
        ]
    );
    for (table, rows) in [
        ("legacy_health_metrics", 3),
        ("legacy_coordination_history", 3),
    ] {
        let count: i64 = owner
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, rows, "{table}");
    }
    // An upgraded database has the object names of a fresh one: later
    // migrations and the grants name these sequences.
    let sequences: (String, String) = {
        let row = owner
            .query_one(
                "SELECT pg_get_serial_sequence('health_metrics', 'id'), \
                        pg_get_serial_sequence('coordination_history', 'id')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        sequences,
        (
            "public.health_metrics_id_seq".to_owned(),
            "public.coordination_history_id_seq".to_owned()
        )
    );

    // Everything below is seen as the application role, bound by RLS.
    let app = TestDb::connect(&app_config).await;
    begin_as(&app, "system").await;
    let rows = app
        .query(
            "SELECT service_name, instance_id, host, port, protocol, health_endpoint, version, \
                    metadata, tags, ttl_seconds, status, registered_at, last_heartbeat, revision, \
                    lease_expires_at > now() \
             FROM service_registry ORDER BY service_name",
            &[],
        )
        .await
        .unwrap();
    type Row = (
        String,
        String,
        String,
        i32,
        String,
        String,
        Option<String>,
        serde_json::Value,
        Vec<String>,
        i32,
        String,
        chrono::DateTime<Utc>,
        chrono::DateTime<Utc>,
        i64,
        bool,
    );
    let imported: Vec<Row> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
                r.get(9),
                r.get(10),
                r.get(11),
                r.get(12),
                r.get(13),
                r.get(14),
            )
        })
        .collect();
    let names: Vec<&str> = imported.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "analytics",
            "api-gateway",
            "mt5-connector",
            "notification",
            "signal-engine"
        ]
    );
    for row in &imported {
        assert_eq!(row.1, row.0, "instance_id is the service name");
        assert!(row.8.is_empty(), "no tags in the original schema");
        assert_eq!(row.9, 30, "imported leases use the default ttl");
        assert!(row.14, "{}: imported with a live lease", row.0);
    }
    // Revisions are 1..=n in service name order.
    let revisions: Vec<i64> = imported.iter().map(|r| r.13).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5]);
    let by_name = |name: &str| imported.iter().find(|r| r.0 == name).unwrap();

    let gateway = by_name("api-gateway");
    assert_eq!(
        (
            gateway.2.as_str(),
            gateway.3,
            gateway.4.as_str(),
            gateway.5.as_str()
        ),
        ("10.0.0.10", 8000, "http", "/health")
    );
    assert_eq!(gateway.6.as_deref(), Some("2.1.0"));
    assert_eq!(gateway.7, serde_json::json!({"team": "edge"}));
    assert_eq!(gateway.10, "passing", "active");
    assert_eq!(gateway.11, utc(2024, 1, 2, 3, 4, 5));
    assert_eq!(gateway.12, utc(2024, 1, 2, 3, 5, 0));

    let mt5 = by_name("mt5-connector");
    assert_eq!(mt5.4, "https", "protocol is lower-cased");
    assert_eq!(mt5.5, "/health", "an endpoint without '/' is replaced");
    assert_eq!(mt5.6, None, "an empty version is none");
    assert_eq!(mt5.10, "passing", "healthy");
    assert_eq!(
        mt5.12,
        utc(2024, 1, 3, 0, 0, 0),
        "heartbeat falls back to registration"
    );

    let signal = by_name("signal-engine");
    assert_eq!((signal.4.as_str(), signal.5.as_str()), ("grpc", "/healthz"));
    assert_eq!(
        signal.7,
        serde_json::json!({}),
        "a non-object metadata is dropped"
    );
    assert_eq!(signal.10, "warning", "degraded");

    let notification = by_name("notification");
    assert_eq!(notification.4, "http", "an unknown protocol becomes http");
    assert_eq!(notification.7, serde_json::json!({}), "null metadata");
    assert_eq!(notification.10, "critical", "inactive");

    let analytics = by_name("analytics");
    assert_eq!(
        (analytics.4.as_str(), analytics.5.as_str()),
        ("http", "/health")
    );
    assert_eq!(analytics.10, "critical", "no status at all");

    let state: i64 = app
        .query_one("SELECT revision FROM tenant_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, 5, "tenant_state counts the imported rows");

    /// service_name, status, response_time_ms, cpu_usage, memory_usage,
    /// error_rate, metadata.
    type Metric = (
        String,
        String,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        serde_json::Value,
    );
    let metrics: Vec<Metric> =
        app.query(
            "SELECT service_name, status, response_time_ms, cpu_usage, memory_usage, error_rate, metadata \
             FROM health_metrics ORDER BY service_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect();
    assert_eq!(
        metrics,
        [
            (
                "api-gateway".to_owned(),
                "passing".to_owned(),
                Some(12.5),
                Some(35.0),
                Some(512.0),
                Some(0.01),
                serde_json::json!({"probe": "http"})
            ),
            (
                "notification".to_owned(),
                "critical".to_owned(),
                None,
                None,
                None,
                None,
                serde_json::json!({})
            ),
            (
                "signal-engine".to_owned(),
                "warning".to_owned(),
                Some(250.0),
                None,
                None,
                None,
                serde_json::json!({})
            ),
        ]
    );

    let history: Vec<(
        i64,
        String,
        String,
        String,
        Option<String>,
        serde_json::Value,
    )> = app
        .query(
            "SELECT revision, event_type, service_name, instance_id, actor, payload \
             FROM coordination_history ORDER BY payload->>'coordination_id'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(history.len(), 3);
    for (revision, event_type, _, _, actor, _) in &history {
        assert_eq!(*revision, 0);
        assert_eq!(event_type, "service.updated");
        assert_eq!(actor.as_deref(), Some("legacy-import"));
    }
    assert_eq!(history[0].2, "api-gateway");
    assert_eq!(history[0].5["action"], "register");
    assert_eq!(history[0].5["details"], serde_json::json!({"by": "deploy"}));
    assert_eq!(
        (history[2].2.as_str(), history[2].3.as_str()),
        ("unknown", "unknown")
    );
    app.batch_execute("ROLLBACK").await.unwrap();

    // Fail closed: another tenant, no tenant, or an empty one sees nothing.
    for table in [
        "service_registry",
        "health_metrics",
        "coordination_history",
        "tenant_state",
    ] {
        assert!(
            scoped_count(&app, Some("system"), table).await > 0,
            "{table} as system"
        );
        assert_eq!(
            scoped_count(&app, Some("acme"), table).await,
            0,
            "{table} as acme"
        );
        assert_eq!(
            scoped_count(&app, Some(""), table).await,
            0,
            "{table} as ''"
        );
        assert_eq!(scoped_count(&app, None, table).await, 0, "{table} unscoped");
    }
    let tenants: Vec<String> = app
        .query("SELECT tenant_id FROM hub_tenants", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, ["system"]);

    // The legacy tables were never granted to the application.
    for table in [
        "legacy_service_registry",
        "legacy_health_metrics",
        "legacy_coordination_history",
    ] {
        let error = app
            .query(&format!("SELECT * FROM {table}"), &[])
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{table}: {error}"
        );
    }

    // The real store works on the upgraded database: revisions continue from
    // the import, an imported instance is updated in place, and heartbeats
    // append metrics and audit rows (which need the sequences' grants).
    let registry = Registry::new(
        Arc::new(PgStore::new(&app_config).unwrap()),
        Arc::new(InProcessBus::new()),
        Arc::new(SystemClock),
    );
    let system = hub_core::TenantId::parse("system").unwrap();
    let ctx = ChangeContext::new(Some("upgrade-test".into()), None);
    let registration = |name: &str, host: &str| {
        Registration::try_from(RegistrationInput {
            service_name: name.into(),
            host: host.into(),
            port: 8080,
            ..Default::default()
        })
        .unwrap()
    };
    let risk = registry
        .register(&system, registration("risk-engine", "10.0.0.20"), &ctx)
        .await
        .unwrap();
    assert!(risk.created);
    assert_eq!(risk.instance.revision().get(), 6);
    let gateway = registry
        .register(&system, registration("api-gateway", "10.0.0.11"), &ctx)
        .await
        .unwrap();
    assert!(
        !gateway.created,
        "the imported instance is updated in place"
    );
    assert_eq!(gateway.instance.revision().get(), 7);
    assert_eq!(gateway.instance.registered_at(), utc(2024, 1, 2, 3, 4, 5));
    let metrics = HeartbeatMetrics::new(Some(8.0), Some(20.0), Some(256.0), Some(0.0)).unwrap();
    registry
        .heartbeat(
            &system,
            &ServiceName::parse("mt5-connector").unwrap(),
            None,
            &Heartbeat::new(HealthStatus::Passing, Some(metrics)),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(
        scoped_count(&app, Some("system"), "health_metrics").await,
        4
    );
    assert!(scoped_count(&app, Some("system"), "coordination_history").await >= 5);
    assert_eq!(
        scoped_count(&app, Some("acme"), "service_registry").await,
        0
    );

    drop(db);
}
