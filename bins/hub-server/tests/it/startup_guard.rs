//! The start-up guard: a database role that bypasses row-level security is refused unless explicitly allowed, and a database that cannot be used is one sentence with the next step.

use crate::support::build_and_stop;
use std::collections::HashMap;

use hub_store::testing::TestDb;

fn env(db: &TestDb, user: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("HUB_BIND", "127.0.0.1:0".to_owned()),
        ("CENTRAL_HUB_API_KEYS", "startup-guard-key-0001".to_owned()),
        ("POSTGRES_HOST", db.app.host.clone()),
        ("POSTGRES_PORT", db.app.port.to_string()),
        ("POSTGRES_DB", db.app.dbname.clone()),
        ("POSTGRES_USER", user.to_owned()),
        ("HUB_PG_STARTUP_TIMEOUT_SECS", "5".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

#[tokio::test]
async fn roles_that_bypass_rls_are_refused_unless_allowed() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let bypass = format!("{}_bypass", db.app.user);
    let admin = db.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {bypass} LOGIN BYPASSRLS; GRANT central_hub_app TO {bypass}"
        ))
        .await
        .unwrap();

    // The application role starts.
    build_and_stop(&env(&db, &db.app.user, &[])).await.unwrap();

    for user in ["postgres", bypass.as_str()] {
        let error = match build_and_stop(&env(&db, user, &[])).await {
            Ok(_) => panic!("{user} must be refused"),
            Err(e) => e,
        };
        assert!(error.contains("refusing to start"), "{error}");
        assert!(error.contains("row-level security"), "{error}");
        assert!(
            error.contains("HUB_ALLOW_RLS_BYPASS"),
            "says how to override: {error}"
        );
        // Explicitly allowed (development only): it starts.
        let allowed = build_and_stop(&env(&db, user, &[("HUB_ALLOW_RLS_BYPASS", "true")])).await;
        assert!(
            allowed.is_ok(),
            "{user} with HUB_ALLOW_RLS_BYPASS=true: {:?}",
            allowed.err()
        );
    }
    admin
        .batch_execute(&format!("DROP ROLE {bypass}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_without_the_schema_is_refused_with_the_fix() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let admin = db.admin().await;
    let empty = format!("{}_empty", db.name);
    admin
        .batch_execute(&format!("CREATE DATABASE {empty}"))
        .await
        .unwrap();
    let mut env = env(&db, &db.app.user, &[]);
    env.insert("POSTGRES_DB".into(), empty.clone());
    let error = match build_and_stop(&env).await {
        Ok(_) => panic!("an unmigrated database must be refused"),
        Err(e) => e,
    };
    assert!(error.contains("cargo xtask migrate"), "{error}");
    admin
        .batch_execute(&format!("DROP DATABASE {empty} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_database_or_an_unreachable_server_is_one_sentence_with_the_next_step() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut missing_db = env(&db, &db.app.user, &[]);
    missing_db.insert("POSTGRES_DB".into(), format!("{}_absent", db.name));
    let error = build_and_stop(&missing_db).await.unwrap_err();
    assert!(error.contains("has no database"), "{error}");
    assert!(!error.contains("DbError {"), "a Debug dump: {error}");
    assert!(
        error.contains(&format!("cargo xtask migrate --app-user {}", db.app.user)),
        "{error}"
    );

    // Nothing listens on the port: retried for HUB_PG_STARTUP_TIMEOUT_SECS,
    // then the variables to check.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut unreachable = env(&db, &db.app.user, &[("HUB_PG_STARTUP_TIMEOUT_SECS", "1")]);
    unreachable.insert("POSTGRES_PORT".into(), closed);
    let error = build_and_stop(&unreachable).await.unwrap_err();
    assert!(error.contains("could not be reached"), "{error}");
    assert!(error.contains("POSTGRES_HOST and POSTGRES_PORT"), "{error}");

    for dump in ["Unexpected(", "DbError {", "Error {", "kind:"] {
        assert!(!error.contains(dump), "a Debug dump: {error}");
    }
}

/// With a bus configured, a relay login that may not read the outbox would
/// retry forever while every event stays pending: start-up refuses it and
/// names the setting. The relay's own login, or a login in both roles,
/// starts.
#[tokio::test]
async fn a_relay_login_that_may_not_read_the_outbox_is_refused() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let nats = [("NATS_URL", "nats://127.0.0.1:4222")];
    let error = build_and_stop(&env(&db, &db.app.user, &nats))
        .await
        .unwrap_err();
    assert!(
        error.contains("HUB_RELAY_PG_USER")
            && error.contains("central_hub_relay")
            && error.contains("--relay-user"),
        "{error}"
    );
    let relay = db.relay.user.as_str();
    build_and_stop(&env(
        &db,
        &db.app.user,
        &[nats[0], ("HUB_RELAY_PG_USER", relay)],
    ))
    .await
    .unwrap();
    // The single-login set-up.
    let admin = db.admin().await;
    admin
        .batch_execute(&format!("GRANT central_hub_relay TO {}", db.app.user))
        .await
        .unwrap();
    build_and_stop(&env(&db, &db.app.user, &nats))
        .await
        .unwrap();
}
