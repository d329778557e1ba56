//! The binary as an operator meets it: `--help`, `--version`, unknown arguments, and what start-up prints when PostgreSQL or a broker is not there.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hub_store::testing::TestDb;
use serde_json::{Value, json};

use crate::process::ServerProcess;

/// Runs the binary with `args` and a clean environment plus `env`; fails
/// if it has not exited within 20 s (an ignored `--help` starts a server
/// that never would).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub-server"))
        .args(args)
        .env_clear()
        .env("HUB_BIND", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "hub-server {args:?} still running after 20 s; stdout: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version_print_and_exit() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.contains("usage: hub-server"), "{stdout}");
        assert!(stdout.contains("CENTRAL_HUB_API_KEYS"), "{stdout}");
        assert!(!stdout.contains("listening"), "no server: {stdout}");
    }
    for flag in ["--version", "-V"] {
        let out = run(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert_eq!(
            text(&out.stdout).trim(),
            format!("hub-server {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn unknown_arguments_are_a_usage_error_naming_them() {
    for args in [&["--port", "8080"][..], &["serve"], &["--help-me"]] {
        let out = run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("{:?}", args[0])), "{stderr}");
        assert!(stderr.contains("--help"), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing started: {out:?}");
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_missing_role_is_one_sentence_with_the_next_step_before_any_broker() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (port, kafka, nats) = (
        db.app.port.to_string(),
        format!("127.0.0.1:{}", closed_port()),
        format!("nats://127.0.0.1:{}", closed_port()),
    );
    let out = run(
        &[],
        &[
            ("POSTGRES_HOST", &db.app.host),
            ("POSTGRES_PORT", &port),
            ("POSTGRES_DB", &db.app.dbname),
            ("POSTGRES_USER", "central_hub_nobody"),
            ("HUB_PG_STARTUP_TIMEOUT_SECS", "5"),
            ("CENTRAL_HUB_API_KEYS", "cli-test-operator-key"),
            ("KAFKA_BROKERS", &kafka),
            ("NATS_URL", &nats),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("no role \"central_hub_nobody\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("cargo xtask migrate --app-user central_hub_nobody"),
        "the next step: {stderr}"
    );
    for dump in ["Unexpected(", "DbError {", "Error {", "kind:"] {
        assert!(!stderr.contains(dump), "a Debug dump: {stderr}");
    }
    // PostgreSQL is checked before any broker is contacted.
    let all = format!("{stdout}{stderr}").to_lowercase();
    assert!(!all.contains("kafka"), "{all}");
    assert!(!all.contains("nats"), "{all}");
}

#[tokio::test]
async fn a_broker_that_is_down_at_start_is_one_warning_not_a_flood() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (port, kafka, nats) = (
        db.app.port.to_string(),
        format!("127.0.0.1:{}", closed_port()),
        format!("nats://127.0.0.1:{}", closed_port()),
    );
    let mut server = ServerProcess::start(&[
        ("POSTGRES_HOST", &db.app.host),
        ("POSTGRES_PORT", &port),
        ("POSTGRES_DB", &db.app.dbname),
        ("POSTGRES_USER", &db.app.user),
        ("HUB_RELAY_PG_USER", &db.relay.user),
        ("CENTRAL_HUB_API_KEYS", "cli-test-operator-key"),
        ("KAFKA_BROKERS", &kafka),
        ("NATS_URL", &nats),
    ]);
    let addr = server.wait_listening();
    // Changes whose events the relays then try to deliver.
    let client = reqwest::Client::new();
    for i in 0..5 {
        let r = client
            .post(format!("http://{addr}/api/v1/discovery/register"))
            .header("X-API-Key", "cli-test-operator-key")
            .json(&json!({"service_name": format!("svc{i}"), "host": "10.0.0.1", "port": 80}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    }
    // Three seconds of a broker being down: the original printed some 20
    // pairs of lines in the first two.
    server.read_for(Duration::from_secs(3));
    // The infrastructure monitor says once that each bus is down; the
    // rest is the events' own reporting.
    let is_monitor = |v: &Value| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("monitor: "))
    };
    let warnings = |bus: &str, monitor: bool| -> Vec<&Value> {
        server
            .seen
            .iter()
            .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
            .filter(|v| v.to_string().to_lowercase().contains(bus))
            .filter(|v| is_monitor(v) == monitor)
            .collect()
    };
    for bus in ["kafka", "nats"] {
        let lines = warnings(bus, false);
        assert!(
            !lines.is_empty() && lines.len() <= 2,
            "{bus}: {} warnings: {lines:#?}",
            lines.len()
        );
        let monitor = warnings(bus, true);
        assert_eq!(monitor.len(), 1, "{bus}: the monitor's lines: {monitor:#?}");
        assert_eq!(monitor[0]["message"], format!("monitor: {bus} is down"));
    }
    // Still serving.
    let r = client
        .get(format!("http://{addr}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
}
