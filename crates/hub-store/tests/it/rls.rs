//! SQL-level proof of row-level security on every tenant table, as the application role and as the table owner, and of who may run the outbox functions.

use hub_store::testing::TestDb;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// A tenant table and how to insert a valid row of tenant `$1` (with `$2`
/// making the row unique).
struct Table {
    name: &'static str,
    insert: &'static str,
    /// Whether the application role may UPDATE (the audit and metrics tables
    /// are append-only for it).
    app_may_change: bool,
    /// Whether it may DELETE (only instances are ever deleted).
    app_may_delete: bool,
}

const TABLES: [Table; 7] = [
    Table {
        name: "service_registry",
        insert: "INSERT INTO service_registry (tenant_id, service_name, instance_id, host, port, \
                 protocol, health_endpoint, ttl_seconds, status, registered_at, last_heartbeat, \
                 lease_expires_at, revision) \
                 VALUES ($1, 'svc', $2, 'h', 80, 'http', '/health', 30, 'passing', now(), now(), now(), 1)",
        app_may_change: true,
        app_may_delete: true,
    },
    Table {
        name: "health_metrics",
        insert: "INSERT INTO health_metrics (tenant_id, service_name, instance_id, status) \
                 VALUES ($1, 'svc', $2, 'passing')",
        app_may_change: false,
        app_may_delete: false,
    },
    Table {
        name: "coordination_history",
        insert: "INSERT INTO coordination_history (tenant_id, revision, event_type, service_name, instance_id) \
                 VALUES ($1, 1, 'service.registered', 'svc', $2)",
        app_may_change: false,
        app_may_delete: false,
    },
    Table {
        name: "tenant_state",
        insert: "INSERT INTO tenant_state (tenant_id, revision) VALUES ($1, length($2)) \
                 ON CONFLICT (tenant_id) DO UPDATE SET revision = EXCLUDED.revision",
        app_may_change: true,
        app_may_delete: false,
    },
    Table {
        name: "hub_api_keys",
        // The key id and digest are unique across tenants: made from $2 and
        // the tenant so that each inserted row differs.
        insert: "INSERT INTO hub_api_keys (tenant_id, key_id, digest, name, scopes, created_by) \
                 VALUES ($1, left(md5($1::varchar || $2::varchar), 16), sha256(convert_to($1::varchar || $2::varchar, 'UTF8')), \
                 'k', 1, 'op')",
        app_may_change: true,
        app_may_delete: true,
    },
    Table {
        name: "hub_admin_audit",
        insert: "INSERT INTO hub_admin_audit (tenant_id, action, target) \
                 VALUES ($1, 'key.created', $2)",
        app_may_change: false,
        app_may_delete: false,
    },
    Table {
        name: "hub_usage_daily",
        insert: "INSERT INTO hub_usage_daily (tenant_id, day, requests_read) \
                 VALUES ($1, current_date - length($2::text), 1)",
        app_may_change: true,
        app_may_delete: true,
    },
];

/// How a transaction sets its tenant before the statements under test.
#[derive(Debug, Clone, Copy)]
enum Acting {
    Unset,
    Empty,
    As(&'static str),
}

async fn begin(client: &Client, acting: Acting) {
    client.batch_execute("BEGIN").await.unwrap();
    match acting {
        Acting::Unset => {}
        Acting::Empty => {
            client
                .execute("SELECT set_config('app.tenant_id', '', true)", &[])
                .await
                .unwrap();
        }
        Acting::As(t) => {
            client
                .execute("SELECT set_config('app.tenant_id', $1, true)", &[&t])
                .await
                .unwrap();
        }
    }
}

async fn rollback(client: &Client) {
    client.batch_execute("ROLLBACK").await.unwrap();
}

/// The tenants of the rows this transaction can see.
async fn visible(client: &Client, table: &Table, acting: Acting) -> Vec<String> {
    begin(client, acting).await;
    let rows = client
        .query(
            &format!("SELECT tenant_id FROM {} ORDER BY tenant_id", table.name),
            &[],
        )
        .await
        .unwrap();
    rollback(client).await;
    rows.iter().map(|r| r.get(0)).collect()
}

fn is_denied(result: Result<u64, tokio_postgres::Error>) -> bool {
    matches!(result, Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE))
}

/// Runs one statement in its own transaction acting as `acting`.
async fn attempt(
    client: &Client,
    acting: Acting,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    begin(client, acting).await;
    let result = client.execute(sql, params).await;
    rollback(client).await;
    result
}

async fn prove(client: &Client, table: &Table, may_change: bool, may_delete: bool, who: &str) {
    let name = table.name;
    let update_all = format!("UPDATE {name} SET tenant_id = tenant_id");
    let delete_all = format!("DELETE FROM {name}");
    let update_b = format!("UPDATE {name} SET tenant_id = tenant_id WHERE tenant_id = 'tenant-b'");
    let delete_b = format!("DELETE FROM {name} WHERE tenant_id = 'tenant-b'");
    let move_to_b = format!("UPDATE {name} SET tenant_id = 'tenant-b'");
    let a = Acting::As("tenant-a");

    for acting in [Acting::Unset, Acting::Empty] {
        let ctx = format!("{who} {name} {acting:?}");
        assert!(
            visible(client, table, acting).await.is_empty(),
            "{ctx}: no tenant, no rows"
        );
        let insert = attempt(client, acting, table.insert, &[&"tenant-a", &"x"]).await;
        assert!(
            is_denied(insert),
            "{ctx}: insert without a tenant must fail"
        );
        if may_change {
            let updated = attempt(client, acting, &update_all, &[]).await.unwrap();
            assert_eq!(updated, 0, "{ctx}: update reaches nothing");
        }
        if may_delete {
            let deleted = attempt(client, acting, &delete_all, &[]).await.unwrap();
            assert_eq!(deleted, 0, "{ctx}: delete reaches nothing");
        }
    }

    let ctx = format!("{who} {name}");
    assert_eq!(visible(client, table, a).await, ["tenant-a"], "{ctx}");
    assert_eq!(
        visible(client, table, Acting::As("tenant-b")).await,
        ["tenant-b"],
        "{ctx}"
    );
    assert!(
        visible(client, table, Acting::As("tenant-c"))
            .await
            .is_empty(),
        "{ctx}"
    );
    let foreign = attempt(client, a, table.insert, &[&"tenant-b", &"yy"]).await;
    assert!(
        is_denied(foreign),
        "{ctx}: acting as A, inserting a row of B must fail"
    );
    let own = attempt(client, a, table.insert, &[&"tenant-a", &"zzz"])
        .await
        .unwrap();
    assert_eq!(own, 1, "{ctx}: acting as A, inserting a row of A works");

    if may_change {
        assert!(
            is_denied(attempt(client, a, &move_to_b, &[]).await),
            "{ctx}: moving A's row to B must fail (WITH CHECK)"
        );
        let touched = attempt(client, a, &update_b, &[]).await.unwrap();
        assert_eq!(touched, 0, "{ctx}: B's rows are out of reach");
    } else {
        assert!(
            is_denied(attempt(client, a, &update_all, &[]).await),
            "{ctx}: the application may not update"
        );
    }
    if may_delete {
        let deleted = attempt(client, a, &delete_b, &[]).await.unwrap();
        assert_eq!(deleted, 0, "{ctx}: B's rows cannot be deleted");
        let own = attempt(client, a, &delete_all, &[]).await.unwrap();
        assert_eq!(own, 1, "{ctx}: A's own row can be deleted");
    } else {
        assert!(
            is_denied(attempt(client, a, &delete_all, &[]).await),
            "{ctx}: the application may not delete"
        );
    }
}

#[tokio::test]
async fn every_tenant_table_is_isolated_for_the_app_role_and_the_owner() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let app = TestDb::connect(&db.app).await;
    let owner = TestDb::connect(&db.owner).await;
    for table in &TABLES {
        // One committed row per tenant, each written acting as its tenant.
        for (tenant, unique) in [("tenant-a", "a"), ("tenant-b", "bb")] {
            begin(&app, Acting::As(tenant)).await;
            app.execute(table.insert, &[&tenant, &unique])
                .await
                .unwrap();
            app.batch_execute("COMMIT").await.unwrap();
        }
        prove(
            &app,
            table,
            table.app_may_change,
            table.app_may_delete,
            "app role",
        )
        .await;
        // FORCE ROW LEVEL SECURITY binds the owner as well.
        prove(&owner, table, true, true, "owner").await;
    }
    // After all those transactions the session carries no tenant.
    let setting: Option<String> = app
        .query_one("SELECT current_setting('app.tenant_id', true)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(setting.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn the_app_role_cannot_switch_security_off() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let app = TestDb::connect(&db.app).await;
    for sql in [
        "ALTER TABLE service_registry DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE service_registry NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON service_registry",
        "SET row_security = off; SELECT count(*) FROM service_registry",
    ] {
        let result = app.batch_execute(sql).await;
        assert!(
            result.is_err(),
            "{sql} must be refused to the application role"
        );
    }
    let role: (bool, bool) = {
        let row = app
            .query_one(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(role, (false, false), "tests connect as a plain role");
}

/// Writes `n` events of `tenant` owed to both buses (two days old), as the
/// application writes them: acting as the tenant, through its INSERT grant.
async fn owed_events(app: &Client, tenant: &'static str, n: i64) {
    begin(app, Acting::As(tenant)).await;
    app.execute(
        "WITH e AS (SELECT nextval('hub_outbox_id_seq') AS id FROM generate_series(1, $2::bigint)), \
              o AS (INSERT INTO hub_outbox (id, tenant_id, revision, event_type, service_name, \
                        instance_id, occurred_at, payload, registered_at, last_heartbeat, created_at) \
                    SELECT id, $1, 1, 'service.registered', 's', 'i', now(), '{}', now(), now(), \
                           now() - interval '2 days' FROM e) \
         INSERT INTO hub_outbox_due (sink, id, tenant_id) \
         SELECT v.sink, e.id, $1 FROM e, (VALUES (1::smallint), (2::smallint)) v (sink)",
        &[&tenant, &n],
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
}

/// Every event in the outbox, as the owner counts them.
async fn events_kept(owner: &Client) -> i64 {
    owner
        .query_one("SELECT count(*) FROM hub_outbox", &[])
        .await
        .unwrap()
        .get(0)
}

fn denied(result: Result<(), tokio_postgres::Error>, what: &str) {
    match result {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {}
        other => panic!("{what}: expected 42501, got {other:?}"),
    }
}

const PENDING: &str = "SELECT * FROM hub_outbox_pending(1::smallint, 100)";
const MARK: &str = "SELECT hub_outbox_mark(1::smallint, ARRAY[1, 2]::bigint[])";
const PRUNE: &str = "SELECT hub_outbox_prune(now() + interval '1 day', 1000)";
const SET_ASIDE: &str = "SELECT hub_outbox_set_aside(1::smallint, 1, 'x')";

#[tokio::test]
async fn only_the_relay_role_may_read_mark_set_aside_or_prune_events() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let app = TestDb::connect(&db.app).await;
    let relay = TestDb::connect(&db.relay).await;
    let owner = TestDb::connect(&db.owner).await;
    owed_events(&app, "tenant-a", 3).await;
    owed_events(&app, "tenant-b", 3).await;

    // The request path can neither read nor drop any tenant's events, not
    // even while acting as that tenant.
    for acting in ["", "tenant-a"] {
        for sql in [PENDING, MARK, PRUNE, SET_ASIDE] {
            let result = app
                .batch_execute(&format!(
                    "BEGIN; SELECT set_config('app.tenant_id', '{acting}', true); {sql}; COMMIT"
                ))
                .await;
            denied(result, &format!("app acting as {acting:?}: {sql}"));
            app.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    // It keeps the backlog counts of the dashboards.
    let counts = app
        .query_one(
            "SELECT backlog, undeliverable FROM hub_outbox_backlog(1::smallint, false)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((counts.get::<_, i64>(0), counts.get::<_, i64>(1)), (6, 0));
    // Neither role reaches the tables themselves.
    for (who, client) in [("app", &app), ("relay", &relay)] {
        for sql in [
            "SELECT count(*) FROM hub_outbox",
            "SELECT count(*) FROM hub_outbox_due",
            "SELECT count(*) FROM hub_outbox_undeliverable",
            "DELETE FROM hub_outbox",
            "INSERT INTO hub_outbox_undeliverable (sink, id, tenant_id, reason) VALUES (1, 1, 'x', 'x')",
        ] {
            denied(client.batch_execute(sql).await, &format!("{who}: {sql}"));
        }
    }

    // The relay role does its job: read, mark, set aside, prune.
    let ids: Vec<i64> = relay
        .query("SELECT id FROM hub_outbox_pending(1::smallint, 100)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 6);
    let marked: i64 = relay
        .query_one("SELECT hub_outbox_mark(1::smallint, $1)", &[&&ids[..2]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(marked, 2);
    let set_aside: bool = relay
        .query_one(
            "SELECT hub_outbox_set_aside(1::smallint, $1, 'cannot be decoded')",
            &[&ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(set_aside);
    let pruned: i64 = relay.query_one(PRUNE, &[]).await.unwrap().get(0);
    assert_eq!(pruned, 0, "Kafka is still owed every event");
    let counts = app
        .query_one(
            "SELECT backlog, undeliverable FROM hub_outbox_backlog(1::smallint, false)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((counts.get::<_, i64>(0), counts.get::<_, i64>(1)), (3, 1));
    assert_eq!(events_kept(&owner).await, 6);
}

#[tokio::test]
async fn a_temporary_table_cannot_make_prune_delete_owed_events() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let app = TestDb::connect(&db.app).await;
    owed_events(&app, "tenant-a", 6).await;
    owed_events(&app, "tenant-b", 5).await;
    let owner = TestDb::connect(&db.owner).await;
    for (who, login) in [("app", &db.app), ("relay", &db.relay)] {
        // A session of its own: the temporary tables live as long as it.
        let client = TestDb::connect(login).await;
        client
            .batch_execute(
                // Empty look-alikes, readable by the functions' owner: under
                // V2, prune read these and deleted every event (seen).
                "CREATE TEMP TABLE hub_outbox_due (sink SMALLINT, id BIGINT, tenant_id VARCHAR); \
                 CREATE TEMP TABLE hub_outbox_undeliverable (sink SMALLINT, id BIGINT); \
                 GRANT SELECT ON hub_outbox_due, hub_outbox_undeliverable TO PUBLIC; \
                 SET search_path = pg_temp, public",
            )
            .await
            .unwrap();
        let result = client.query_one(PRUNE, &[]).await;
        match who {
            "app" => denied(result.map(|_| ()), "app: prune"),
            _ => assert_eq!(result.unwrap().get::<_, i64>(0), 0, "{who}: nothing pruned"),
        }
        assert_eq!(
            events_kept(&owner).await,
            11,
            "{who}: every owed event kept"
        );
    }
}

#[tokio::test]
async fn no_caller_can_delete_an_event_still_owed_or_set_aside() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let app = TestDb::connect(&db.app).await;
    let relay = TestDb::connect(&db.relay).await;
    let owner = TestDb::connect(&db.owner).await;
    owed_events(&app, "tenant-a", 4).await;
    let ids: Vec<i64> = relay
        .query("SELECT id FROM hub_outbox_pending(1::smallint, 100)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Event 0 delivered to both buses, event 1 delivered to Kafka and set
    // aside for NATS, events 2 and 3 still owed.
    for sink in [1i16, 2] {
        relay
            .execute("SELECT hub_outbox_mark($1, $2)", &[&sink, &&ids[..1]])
            .await
            .unwrap();
    }
    relay
        .execute("SELECT hub_outbox_mark(2::smallint, $1)", &[&&ids[1..2]])
        .await
        .unwrap();
    relay
        .execute(
            "SELECT hub_outbox_set_aside(1::smallint, $1, 'cannot be decoded')",
            &[&ids[1]],
        )
        .await
        .unwrap();
    // Even the tables' owner, past every function, is refused by
    // PostgreSQL itself.
    for id in &ids[1..] {
        let error = owner
            .execute("DELETE FROM hub_outbox WHERE id = $1", &[id])
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            Some(&SqlState::FOREIGN_KEY_VIOLATION),
            "owner deleting event {id}: {error}"
        );
    }
    let error = owner
        .batch_execute("DELETE FROM hub_outbox")
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&SqlState::FOREIGN_KEY_VIOLATION),
        "{error}"
    );
    assert_eq!(events_kept(&owner).await, 4);
    // Pruning removes exactly the event nobody is owed.
    let pruned: i64 = relay.query_one(PRUNE, &[]).await.unwrap().get(0);
    assert_eq!(pruned, 1);
    let left: Vec<i64> = owner
        .query("SELECT id FROM hub_outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ids[1..], "the set-aside and the owed events are kept");
}
