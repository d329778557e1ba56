//! Upgrades from every state the original hub left behind (single-tenant, after the seed document's migration SQL, its own multi-tenant schema): rows land in their own tenants behind row-level security, and an unknown state is refused with nothing changed.
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
use hub_store::pg::legacy::{self, SchemaState, UpgradeReport};
use hub_store::pg::migrate::{self, MigrateError};
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

    assert_eq!(
        legacy::detect(&owner).await.unwrap(),
        SchemaState::LegacySingleTenant
    );
    let migrated = migrate::run_with_report(&owner_config).await.unwrap();
    let applied = migrated.applied;
    assert_eq!(
        applied[..2],
        ["V1__multi_tenant_registry", "V2__event_outbox"]
    );
    assert_eq!(applied, migrate::known_versions());
    let report = migrated.upgrade.expect("an upgrade report");
    assert_eq!(report.from, SchemaState::LegacySingleTenant);
    assert_eq!(
        moved_and_found(&report),
        [
            ("service_registry", "system".to_owned(), 5, 7),
            ("health_metrics", "system".to_owned(), 3, 3),
            ("coordination_history", "system".to_owned(), 3, 3),
        ]
    );
    assert!(report.dropped_policies.is_empty());
    let again = migrate::run(&owner_config).await.unwrap();
    assert!(again.is_empty(), "a second run applied {again:?}");
    let recorded: Vec<String> = owner
        .query(
            "SELECT format('V%s__%s', version, name) FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, applied);

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

/// (table, tenant, moved, found) of every table and tenant of a report.
fn moved_and_found(report: &UpgradeReport) -> Vec<(&str, String, u64, u64)> {
    report
        .tables
        .iter()
        .flat_map(|table| {
            table
                .tenants
                .iter()
                .map(|t| (table.table.as_str(), t.tenant.clone(), t.moved, t.found))
        })
        .collect()
}

/// The table refinery's first run creates in a transaction of its own: an
/// older `cargo xtask migrate` that failed on V1 left it behind, empty.
const EMPTY_REFINERY_HISTORY: &str = "
    CREATE TABLE refinery_schema_history (
        version INT4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255));
";

/// The seed document's \"Database Migration\" SQL, run on the original
/// single-tenant schema: existing rows get tenant `system` from the default,
/// the unique name becomes unique per tenant, and row-level security comes
/// with policies that compare with `app.tenant_id`.
const SEED_MIGRATION: &str = "
    ALTER TABLE service_registry ADD COLUMN tenant_id VARCHAR(100) DEFAULT 'system';
    ALTER TABLE health_metrics ADD COLUMN tenant_id VARCHAR(100) DEFAULT 'system';
    ALTER TABLE coordination_history ADD COLUMN tenant_id VARCHAR(100) DEFAULT 'system';
    ALTER TABLE service_registry DROP CONSTRAINT service_registry_service_name_key;
    ALTER TABLE service_registry
        ADD CONSTRAINT service_registry_tenant_service_unique UNIQUE (tenant_id, service_name);
    CREATE INDEX idx_service_registry_tenant ON service_registry (tenant_id);
    ALTER TABLE service_registry ENABLE ROW LEVEL SECURITY;
    ALTER TABLE health_metrics ENABLE ROW LEVEL SECURITY;
    ALTER TABLE coordination_history ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation_policy_service_registry ON service_registry
        USING (tenant_id = current_setting('app.tenant_id'));
    CREATE POLICY tenant_isolation_policy_health_metrics ON health_metrics
        USING (tenant_id = current_setting('app.tenant_id'));
    CREATE POLICY tenant_isolation_policy_coordination_history ON coordination_history
        USING (tenant_id = current_setting('app.tenant_id'));
";

/// Rows written after the seed migration: tenant `acme` (one of its
/// services shares a name with `system`'s), rows with a NULL or empty
/// tenant (which belong to `system`), a NULL-tenant duplicate of a `system`
/// service (the row that names its tenant wins), and an `acme` row with a
/// name the new schema refuses.
const SEED_ROWS: &str = "
    INSERT INTO service_registry
        (tenant_id, service_name, host, port, protocol, health_endpoint, version, metadata, status,
         registered_at, last_heartbeat)
    VALUES
        ('acme', 'api-gateway', '10.1.0.10', 8001, 'http', '/health', '3.0.0', '{\"team\": \"acme\"}',
         'healthy', '2024-02-01 00:00:00', '2024-02-01 00:01:00'),
        ('acme', 'billing', '10.1.0.11', 8002, 'https', '/ready', '1.0.0', '{}',
         'degraded', '2024-02-02 00:00:00', '2024-02-02 00:01:00'),
        ('acme', 'bad name', '10.1.0.12', 8003, 'http', '/health', '1.0.0', '{}',
         'active', '2024-02-02 00:00:00', '2024-02-02 00:01:00'),
        (NULL, 'orphan', '10.0.0.30', 8030, 'http', '/health', NULL, '{}',
         'active', '2024-02-03 00:00:00', '2024-02-03 00:01:00'),
        (NULL, 'api-gateway', '10.9.9.9', 9999, 'http', '/health', NULL, '{}',
         'active', '2024-02-04 00:00:00', '2024-02-04 00:01:00');
    INSERT INTO health_metrics (tenant_id, service_name, status, response_time_ms, recorded_at)
    VALUES ('acme', 'billing', 'healthy', 5.0, '2024-02-02 00:01:00'),
           ('', 'orphan', 'up', 7.0, '2024-02-03 00:01:00');
    INSERT INTO coordination_history (tenant_id, coordination_id, service_name, action, details)
    VALUES ('acme', 'c-4', 'billing', 'register', '{}');
";

/// The original hub's own multi-tenant start-up schema: `tenant_id` on every
/// table, names unique per tenant, three columns the new schema has no place
/// for, and ENABLE-only row-level security whose policies pass every row
/// when `app.tenant_id` is unset (fail-open).
const MULTI_TENANT_SCHEMA: &str = "
    CREATE TABLE service_registry (
        id                     SERIAL PRIMARY KEY,
        tenant_id              VARCHAR(100) NOT NULL DEFAULT 'system',
        service_name           VARCHAR(255) NOT NULL,
        host                   VARCHAR(255) NOT NULL,
        port                   INTEGER NOT NULL,
        protocol               VARCHAR(20) DEFAULT 'http',
        health_endpoint        VARCHAR(255) DEFAULT '/health',
        version                VARCHAR(50),
        metadata               JSONB DEFAULT '{}',
        transport_preferences  JSONB DEFAULT '{}',
        contract_validated     BOOLEAN DEFAULT FALSE,
        status                 VARCHAR(50) DEFAULT 'active',
        registered_at          TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        last_heartbeat         TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        last_seen              TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        UNIQUE (tenant_id, service_name)
    );
    CREATE INDEX idx_service_registry_tenant ON service_registry (tenant_id);
    CREATE TABLE health_metrics (
        id                SERIAL PRIMARY KEY,
        tenant_id         VARCHAR(100) NOT NULL DEFAULT 'system',
        service_name      VARCHAR(255) NOT NULL,
        status            VARCHAR(50),
        response_time_ms  FLOAT,
        cpu_usage         FLOAT,
        memory_usage      FLOAT,
        error_rate        FLOAT,
        metadata          JSONB DEFAULT '{}',
        recorded_at       TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    );
    CREATE INDEX idx_health_metrics_tenant ON health_metrics (tenant_id, service_name);
    CREATE TABLE coordination_history (
        id                SERIAL PRIMARY KEY,
        tenant_id         VARCHAR(100) NOT NULL DEFAULT 'system',
        coordination_id   VARCHAR(255),
        service_name      VARCHAR(255),
        action            VARCHAR(100),
        details           JSONB DEFAULT '{}',
        created_at        TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    );
    ALTER TABLE service_registry ENABLE ROW LEVEL SECURITY;
    ALTER TABLE health_metrics ENABLE ROW LEVEL SECURITY;
    ALTER TABLE coordination_history ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation_service_registry ON service_registry
        USING (current_setting('app.tenant_id', true) IS NULL
               OR current_setting('app.tenant_id', true) = ''
               OR tenant_id = current_setting('app.tenant_id', true));
    CREATE POLICY tenant_isolation_health_metrics ON health_metrics
        USING (current_setting('app.tenant_id', true) IS NULL
               OR current_setting('app.tenant_id', true) = ''
               OR tenant_id = current_setting('app.tenant_id', true));
    CREATE POLICY tenant_isolation_coordination_history ON coordination_history
        USING (current_setting('app.tenant_id', true) IS NULL
               OR current_setting('app.tenant_id', true) = ''
               OR tenant_id = current_setting('app.tenant_id', true));
";

/// Two tenants with a service of the same name, the multi-tenant columns
/// filled in, and one `globex` row the new schema refuses (port 0).
const MULTI_TENANT_ROWS: &str = "
    INSERT INTO service_registry
        (tenant_id, service_name, host, port, protocol, version, metadata, transport_preferences,
         contract_validated, status, registered_at, last_heartbeat, last_seen)
    VALUES
        ('acme', 'api-gateway', '10.1.0.10', 8001, 'http', '1.0.0', '{\"team\": \"acme\"}',
         '{\"preferred\": \"http\"}', true, 'healthy', '2024-03-01 00:00:00', '2024-03-01 00:01:00',
         '2024-03-01 00:02:00'),
        ('acme', 'orders', '10.1.0.11', 8002, 'grpc', '2.0.0', '{}', '{}', false, 'active',
         '2024-03-01 00:00:00', '2024-03-01 00:01:00', '2024-03-01 00:02:00'),
        ('globex', 'api-gateway', '10.2.0.10', 9001, 'https', '7.0.0', '{\"team\": \"globex\"}',
         '{\"preferred\": \"nats\"}', true, 'degraded', '2024-03-02 00:00:00', '2024-03-02 00:01:00',
         '2024-03-02 00:02:00'),
        ('globex', 'ledger', '10.2.0.11', 9002, 'http', NULL, '{}', '{}', false, 'up',
         '2024-03-02 00:00:00', NULL, '2024-03-02 00:02:00'),
        ('globex', 'broken', '10.2.0.12', 0, 'http', NULL, '{}', '{}', false, 'up',
         '2024-03-02 00:00:00', NULL, NULL);
    INSERT INTO health_metrics (tenant_id, service_name, status, response_time_ms, cpu_usage, recorded_at)
    VALUES ('acme', 'api-gateway', 'healthy', 3.0, 10.0, '2024-03-01 00:01:00'),
           ('acme', 'orders', 'healthy', 4.0, 11.0, '2024-03-01 00:01:00'),
           ('globex', 'ledger', 'up', 9.0, 12.0, '2024-03-02 00:01:00');
    INSERT INTO coordination_history (tenant_id, coordination_id, service_name, action, details)
    VALUES ('acme', 'c-1', 'api-gateway', 'register', '{}'),
           ('globex', 'c-2', 'api-gateway', 'register', '{}'),
           ('globex', 'c-3', 'ledger', 'register', '{}');
";

/// An unmigrated database whose owner ran `setup`, and the owner's
/// connection.
async fn legacy_database(setup: &[&str]) -> Option<(TestDb, Client)> {
    let db = TestDb::create_unmigrated().await?;
    let owner = TestDb::connect(&db.owner).await;
    for sql in setup {
        owner.batch_execute(sql).await.unwrap();
    }
    Some((db, owner))
}

/// (service_name, host) of every service `tenant` sees, as the application
/// role, by name.
async fn services_of(app: &Client, tenant: &str) -> Vec<(String, String)> {
    begin_as(app, tenant).await;
    let rows = app
        .query(
            "SELECT service_name, host FROM service_registry ORDER BY service_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    app.batch_execute("ROLLBACK").await.unwrap();
    rows
}

/// The application role sees only the rows of the tenant it acts for, and
/// none without one (unset, empty) or as a tenant that had no rows.
async fn assert_isolated(app: &Client, tenants: &[(&str, i64, i64, i64)]) {
    for (tenant, services, metrics, history) in tenants {
        for (table, expected) in [
            ("service_registry", services),
            ("health_metrics", metrics),
            ("coordination_history", history),
        ] {
            assert_eq!(
                scoped_count(app, Some(tenant), table).await,
                *expected,
                "{table} as {tenant}"
            );
        }
    }
    for table in [
        "service_registry",
        "health_metrics",
        "coordination_history",
        "tenant_state",
    ] {
        assert_eq!(scoped_count(app, None, table).await, 0, "{table} unscoped");
        assert_eq!(scoped_count(app, Some(""), table).await, 0, "{table} as ''");
        assert_eq!(
            scoped_count(app, Some("initech"), table).await,
            0,
            "{table} as initech"
        );
    }
}

/// The old tables stay as `legacy_*`, without their old policies, with
/// row-level security still enabled (so a role holding grants sees no row)
/// but not forced (so the owner can check the import), and not readable by
/// the application.
async fn assert_legacy_tables_kept(owner: &Client, app: &Client, rows: [i64; 3]) {
    for (table, expected) in [
        "legacy_service_registry",
        "legacy_health_metrics",
        "legacy_coordination_history",
    ]
    .into_iter()
    .zip(rows)
    {
        let row = owner
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {table}), \
                            (SELECT count(*) FROM pg_policy WHERE polrelid = '{table}'::regclass), \
                            relrowsecurity, relforcerowsecurity \
                     FROM pg_class WHERE oid = '{table}'::regclass"
                ),
                &[],
            )
            .await
            .unwrap();
        let kept: (i64, i64, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(kept, (expected, 0, true, false), "{table}");
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
    let policies: i64 = owner
        .query_one(
            "SELECT count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
             WHERE c.relname IN ('service_registry', 'health_metrics', 'coordination_history') \
               AND p.polname <> 'tenant_isolation'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(policies, 0, "only the new fail-closed policies remain");
}

#[tokio::test]
async fn seed_migrated_schema_keeps_each_rows_tenant() {
    let Some((db, owner)) = legacy_database(&[
        LEGACY_SCHEMA,
        LEGACY_ROWS,
        SEED_MIGRATION,
        SEED_ROWS,
        EMPTY_REFINERY_HISTORY,
    ])
    .await
    else {
        return;
    };
    assert_eq!(
        legacy::detect(&owner).await.unwrap(),
        SchemaState::LegacySeedMigrated
    );

    let migrated = migrate::run_with_report(&db.owner).await.unwrap();
    assert_eq!(migrated.state, SchemaState::LegacySeedMigrated);
    assert_eq!(migrated.applied, migrate::known_versions());
    let report = migrated.upgrade.expect("an upgrade report");
    assert_eq!(
        moved_and_found(&report),
        [
            ("service_registry", "acme".to_owned(), 2, 3),
            ("service_registry", "system".to_owned(), 6, 9),
            ("health_metrics", "acme".to_owned(), 1, 1),
            ("health_metrics", "system".to_owned(), 4, 4),
            ("coordination_history", "acme".to_owned(), 1, 1),
            ("coordination_history", "system".to_owned(), 3, 3),
        ]
    );
    assert_eq!(
        report.dropped_policies,
        [
            "tenant_isolation_policy_service_registry on service_registry",
            "tenant_isolation_policy_health_metrics on health_metrics",
            "tenant_isolation_policy_coordination_history on coordination_history",
        ]
    );
    assert!(
        report.tables.iter().all(|t| t.unmapped_columns.is_empty()),
        "{report}"
    );
    let again = migrate::run_with_report(&db.owner).await.unwrap();
    assert_eq!(again.state, SchemaState::Current);
    assert!(again.applied.is_empty() && again.upgrade.is_none());

    let app = TestDb::connect(&db.app).await;
    let s = |name: &str, host: &str| (name.to_owned(), host.to_owned());
    assert_eq!(
        services_of(&app, "acme").await,
        [s("api-gateway", "10.1.0.10"), s("billing", "10.1.0.11")]
    );
    assert_eq!(
        services_of(&app, "system").await,
        [
            s("analytics", "analytics-1.internal"),
            // The row that named its tenant, not the NULL-tenant duplicate.
            s("api-gateway", "10.0.0.10"),
            s("mt5-connector", "mt5.internal"),
            s("notification", "10.0.0.13"),
            s("orphan", "10.0.0.30"),
            s("signal-engine", "10.0.0.12"),
        ]
    );
    assert_isolated(&app, &[("acme", 2, 1, 1), ("system", 6, 4, 3)]).await;
    begin_as(&app, "acme").await;
    let billing: (String, String, i64) = {
        let row = app
            .query_one(
                "SELECT status, health_endpoint, revision FROM service_registry \
                 WHERE service_name = 'billing'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(billing, ("warning".to_owned(), "/ready".to_owned(), 2));
    let revision: i64 = app
        .query_one("SELECT revision FROM tenant_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(revision, 2, "acme's counter starts after its imported rows");
    app.batch_execute("ROLLBACK").await.unwrap();
    let mut tenants: Vec<String> = app
        .query("SELECT tenant_id FROM hub_tenants", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tenants.sort();
    assert_eq!(tenants, ["acme", "system"]);
    assert_legacy_tables_kept(&owner, &app, [12, 5, 4]).await;

    // The store carries on in the imported tenant.
    let registry = Registry::new(
        Arc::new(PgStore::new(&db.app).unwrap()),
        Arc::new(InProcessBus::new()),
        Arc::new(SystemClock),
    );
    let acme = hub_core::TenantId::parse("acme").unwrap();
    let ctx = ChangeContext::new(Some("upgrade-test".into()), None);
    let updated = registry
        .register(
            &acme,
            Registration::try_from(RegistrationInput {
                service_name: "billing".into(),
                host: "10.1.0.21".into(),
                port: 8002,
                ..Default::default()
            })
            .unwrap(),
            &ctx,
        )
        .await
        .unwrap();
    assert!(
        !updated.created,
        "the imported instance is updated in place"
    );
    assert_eq!(updated.instance.revision().get(), 3);
}

#[tokio::test]
async fn multi_tenant_schema_keeps_tenants_and_closes_the_fail_open_policies() {
    let Some((db, owner)) = legacy_database(&[MULTI_TENANT_SCHEMA, MULTI_TENANT_ROWS]).await else {
        return;
    };
    assert_eq!(
        legacy::detect(&owner).await.unwrap(),
        SchemaState::LegacyMultiTenant
    );

    let migrated = migrate::run_with_report(&db.owner).await.unwrap();
    let report = migrated.upgrade.expect("an upgrade report");
    assert_eq!(report.from, SchemaState::LegacyMultiTenant);
    assert_eq!(
        moved_and_found(&report),
        [
            ("service_registry", "acme".to_owned(), 2, 2),
            ("service_registry", "globex".to_owned(), 2, 3),
            ("health_metrics", "acme".to_owned(), 2, 2),
            ("health_metrics", "globex".to_owned(), 1, 1),
            ("coordination_history", "acme".to_owned(), 1, 1),
            ("coordination_history", "globex".to_owned(), 2, 2),
        ]
    );
    // What has no home in the new schema is named, and stays in the legacy
    // table (counted rows hold a value).
    let services = report.table("service_registry").unwrap();
    assert_eq!(
        services.unmapped_columns,
        [
            ("transport_preferences".to_owned(), 5),
            ("contract_validated".to_owned(), 5),
            ("last_seen".to_owned(), 4),
        ]
    );
    assert_eq!(report.dropped_policies.len(), 3);
    let text = report.to_string();
    for expected in [
        "service_registry: acme 2 of 2, globex 2 of 3",
        "legacy_service_registry keeps 1 row(s)",
        "transport_preferences (5 row(s) with a value)",
        "tenant_isolation_service_registry on service_registry",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let kept: serde_json::Value = owner
        .query_one(
            "SELECT transport_preferences FROM legacy_service_registry \
             WHERE tenant_id = 'globex' AND service_name = 'api-gateway'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, serde_json::json!({"preferred": "nats"}));

    let app = TestDb::connect(&db.app).await;
    let s = |name: &str, host: &str| (name.to_owned(), host.to_owned());
    assert_eq!(
        services_of(&app, "acme").await,
        [s("api-gateway", "10.1.0.10"), s("orders", "10.1.0.11")]
    );
    assert_eq!(
        services_of(&app, "globex").await,
        [s("api-gateway", "10.2.0.10"), s("ledger", "10.2.0.11")]
    );
    assert_isolated(&app, &[("acme", 2, 2, 1), ("globex", 2, 1, 2)]).await;
    assert_eq!(
        scoped_count(&app, Some("system"), "service_registry").await,
        0
    );
    assert_legacy_tables_kept(&owner, &app, [5, 3, 3]).await;
}

/// A catalog and content fingerprint of the current schema, as the owner:
/// relations with their row-level security flags, columns, policies,
/// constraints, and every row of the original tables.
async fn snapshot(owner: &Client) -> String {
    let catalog: String = owner
        .query_one(
            "SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
                 SELECT format('rel %s %s rls=%s force=%s', c.relname, c.relkind,
                               c.relrowsecurity, c.relforcerowsecurity) AS line
                 FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace
                 UNION ALL
                 SELECT format('col %s.%s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod))
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 WHERE c.relnamespace = current_schema()::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
                 UNION ALL
                 SELECT format('pol %s on %s: %s', p.polname, c.relname, pg_get_expr(p.polqual, p.polrelid))
                 FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                 WHERE c.relnamespace = current_schema()::regnamespace
                 UNION ALL
                 SELECT format('con %s', conname) FROM pg_constraint
                 WHERE connamespace = current_schema()::regnamespace
             ) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut content = catalog;
    for table in ["service_registry", "health_metrics", "coordination_history"] {
        let exists: bool = owner
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        if !exists {
            continue;
        }
        let rows: Option<String> = owner
            .query_one(
                &format!("SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {table} t"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        content.push_str(&format!("\n{table}:\n{}", rows.unwrap_or_default()));
    }
    content
}

#[tokio::test]
async fn invalid_tenant_ids_are_refused_and_listed_with_nothing_changed() {
    let Some((db, owner)) = legacy_database(&[
        MULTI_TENANT_SCHEMA,
        MULTI_TENANT_ROWS,
        "INSERT INTO service_registry (tenant_id, service_name, host, port)
         VALUES ('acme corp', 'web', '10.3.0.1', 80), ('globex.com', 'web', '10.4.0.1', 80);
         INSERT INTO health_metrics (tenant_id, service_name) VALUES ('acme corp', 'web');",
    ])
    .await
    else {
        return;
    };
    let before = snapshot(&owner).await;
    let Err(MigrateError::Refused(message)) = migrate::run_with_report(&db.owner).await else {
        panic!("an invalid tenant id must be refused");
    };
    for expected in [
        "2 tenant id(s)",
        "\"acme corp\" (service_registry 1 row(s), health_metrics 1 row(s))",
        "\"globex.com\" (service_registry 1 row(s))",
        "Nothing was changed",
        "UPDATE service_registry SET tenant_id",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    assert_eq!(snapshot(&owner).await, before);
}

#[tokio::test]
async fn an_unknown_state_is_refused_with_nothing_changed() {
    // Another application's `service_registry` (no host or port): not one
    // of the original hub's states.
    let Some((db, owner)) = legacy_database(&["CREATE TABLE service_registry (
             tenant_id VARCHAR(100), service_name TEXT PRIMARY KEY, url TEXT);
         INSERT INTO service_registry VALUES ('acme', 'web', 'http://web');
         ALTER TABLE service_registry ENABLE ROW LEVEL SECURITY;
         CREATE POLICY open ON service_registry USING (true);"])
    .await
    else {
        return;
    };
    let state = legacy::detect(&owner).await.unwrap();
    assert!(
        matches!(&state, SchemaState::Unknown(reason) if reason.contains("service_registry has no column host")),
        "{state:?}"
    );
    let before = snapshot(&owner).await;
    let error = migrate::run_with_report(&db.owner).await.unwrap_err();
    let MigrateError::Refused(message) = &error else {
        panic!("refused, not failed: {error:?}");
    };
    assert!(
        message.starts_with("refusing to migrate: the database is in a state this hub does not know how to upgrade (service_registry has no column host")
            && message.ends_with("Nothing was changed."),
        "{message}"
    );
    assert_eq!(snapshot(&owner).await, before);
    // Not even refinery's history table, which the old code created in a
    // transaction of its own before failing.
    let history: Option<String> = owner
        .query_one("SELECT to_regclass('refinery_schema_history')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, None);
    // `run`, as the server's HUB_MIGRATE_ON_START uses it, refuses too.
    assert!(migrate::run(&db.owner).await.is_err());
    assert_eq!(snapshot(&owner).await, before);
}

#[tokio::test]
async fn detection_tells_the_states_apart() {
    let Some(db) = TestDb::create_unmigrated().await else {
        return;
    };
    let owner = TestDb::connect(&db.owner).await;
    let cases: &[(&str, &str)] = &[
        ("", "Fresh"),
        ("CREATE TABLE unrelated (id INT)", "Fresh"),
        (LEGACY_SCHEMA, "LegacySingleTenant"),
        (EMPTY_REFINERY_HISTORY, "Fresh"),
        ("CREATE TABLE hub_tenants (tenant_id TEXT)", "Unknown"),
        ("CREATE TABLE legacy_service_registry (id INT)", "Unknown"),
        ("CREATE TABLE health_metrics (service_name TEXT)", "Unknown"),
        (
            "CREATE VIEW service_registry AS SELECT 'a'::text AS service_name, 'h'::text AS host, 1 AS port",
            "Unknown",
        ),
        (
            "CREATE TABLE service_registry (service_name TEXT, host TEXT, port TEXT)",
            "Unknown",
        ),
        (
            "CREATE TABLE service_registry (tenant_id TEXT, service_name TEXT, host TEXT, port INT);
             CREATE TABLE health_metrics (service_name TEXT)",
            "Unknown",
        ),
        (
            "CREATE TABLE service_registry (tenant_id TEXT, service_name TEXT, host TEXT, port INT)",
            "LegacySeedMigrated",
        ),
        (
            "CREATE TABLE service_registry (tenant_id TEXT, service_name TEXT, host TEXT, port INT,
                                            last_seen TIMESTAMP)",
            "LegacyMultiTenant",
        ),
        (
            "CREATE TABLE refinery_schema_history (version INT4 PRIMARY KEY, name VARCHAR(255),
                                                   applied_on VARCHAR(255), checksum VARCHAR(255));
             INSERT INTO refinery_schema_history VALUES (1, 'other_app', '', '1')",
            "Unknown",
        ),
    ];
    for (sql, expected) in cases {
        owner.batch_execute("BEGIN").await.unwrap();
        owner.batch_execute(sql).await.unwrap();
        let state = legacy::detect(&owner).await.unwrap();
        owner.batch_execute("ROLLBACK").await.unwrap();
        assert!(
            format!("{state:?}").starts_with(expected),
            "{sql}: {state:?}"
        );
    }
    migrate::run(&db.owner).await.unwrap();
    assert_eq!(legacy::detect(&owner).await.unwrap(), SchemaState::Current);
}

#[tokio::test]
async fn old_tables_of_another_owner_are_refused_with_nothing_changed() {
    // The original hub's tables, made by another role than the migrating
    // one (here the test's app login, allowed to create in the schema).
    let Some(db) = TestDb::create_unmigrated().await else {
        return;
    };
    let owner = TestDb::connect(&db.owner).await;
    owner
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {}", db.app.user))
        .await
        .unwrap();
    let other = TestDb::connect(&db.app).await;
    other.batch_execute(LEGACY_SCHEMA).await.unwrap();
    other.batch_execute(LEGACY_ROWS).await.unwrap();
    let before = snapshot(&other).await;

    let Err(MigrateError::Refused(message)) = migrate::run_with_report(&db.owner).await else {
        panic!("old tables of another owner must be refused");
    };
    assert!(
        message.contains(&format!(
            "is owned by {:?}, and only its owner may rename it: run the upgrade with POSTGRES_USER={}",
            db.app.user, db.app.user
        )),
        "{message}"
    );
    assert_eq!(snapshot(&other).await, before);
}
