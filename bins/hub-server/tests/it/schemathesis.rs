//! schemathesis against `/openapi.json` of a running server, on both stores: generated requests (valid and invalid) never get a 5xx, and every answer matches the document.
//!
//! schemathesis is a Python tool; `cargo xtask test` installs a pinned
//! version once into the cache folder and names it in
//! `HUB_TEST_SCHEMATHESIS`. Without it the test fails under `CI=true` and
//! says SKIPPED otherwise. The run is bounded (examples per operation, a
//! fixed seed), so it is reproducible and takes seconds, not minutes.
//!
//! The two tests are `#[ignore]`d in the parallel run: schemathesis keeps a
//! core busy for its whole run, and beside it the timing-bound tests of the
//! suite (lease expiry within a deadline, many clients at once) failed on a
//! 2-core machine. `cargo xtask test` runs them on their own right after
//! (`cargo test -p hub-server --test it -- --ignored schemathesis::`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::support::{Backend, OPERATOR_KEY, spawn_app_with};

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "80";
/// The seed: the same run every time.
const SEED: &str = "20261201";

/// The install folder of schemathesis (`HUB_TEST_SCHEMATHESIS`), or `None`
/// after SKIPPED; panics under CI.
#[allow(clippy::print_stderr)] // a skip is told on stderr, as the other tests do
fn install(test: &str) -> Option<PathBuf> {
    match std::env::var_os("HUB_TEST_SCHEMATHESIS") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => {
            let what = "HUB_TEST_SCHEMATHESIS is unset (`cargo xtask test` installs schemathesis and sets it)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {what} (CI=true: a missing tool fails the test)");
            }
            eprintln!("SKIPPED {test}: {what}; set CI=true to fail instead");
            None
        }
    }
}

#[allow(clippy::print_stderr)] // the run's duration, for the record
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch(backend: Backend) {
    let test = format!("schemathesis ({backend:?})");
    let Some(dir) = install(&test) else {
        return;
    };
    // Blocking queries wait at most 1 s here: an `index` at or above the
    // current revision would otherwise hold a request past the timeout.
    let Some(app) = spawn_app_with(backend, &[("HUB_BLOCKING_MAX_WAIT_SECS", "1")], None).await
    else {
        return;
    };
    let spec = app.url("/openapi.json");
    let report = std::env::temp_dir().join(format!(
        "hub-schemathesis-{}-{backend:?}",
        std::process::id()
    ));
    // schemathesis keeps a cache of the failures it found in `.schemathesis/`
    // of its working folder and replays them on the next run: a fresh folder
    // per run keeps runs independent (and the source tree clean).
    std::fs::create_dir_all(&report).unwrap();
    let mut command = Command::new("python3");
    command
        .current_dir(&report)
        .args(["-m", "schemathesis.cli", "run", &spec])
        .args(["--header", &format!("X-API-Key: {OPERATOR_KEY}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        // The watch stream never ends, so no response of it can be checked
        // whole; tests/it/watch.rs covers it.
        .args(["--exclude-operation-id", "watch"])
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        .args(["--report", "junit", "--report-dir", "."])
        .env("PYTHONPATH", &dir)
        // No telemetry, no update check: the run talks to the server only.
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{test}: could not run python3: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "{test}: {:.1} s, exit {}",
        started.elapsed().as_secs_f64(),
        output.status
    );
    assert!(
        output.status.success(),
        "{test} failed ({}); junit report in {}\n{stdout}\n{stderr}",
        output.status,
        report.display()
    );
    // It did test every operation: a run that tested nothing passes too.
    let summary = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("Tested:"))
        .unwrap_or_else(|| panic!("{test}: no summary in\n{stdout}"));
    let tested: usize = summary
        .split(':')
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{test}: unreadable summary {summary:?}"));
    assert_eq!(
        tested,
        hub_http::routes::endpoints().len() - 1,
        "{test}: {summary}\n{stdout}"
    );
    let _ = std::fs::remove_dir_all(&report);
}

mod embedded {
    #[tokio::test]
    #[ignore = "run on its own by `cargo xtask test` (see the module)"]
    async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
        super::schemathesis_finds_no_server_error_and_no_schema_mismatch(
            crate::support::Backend::Embedded,
        )
        .await
    }
}

mod postgres {
    #[tokio::test]
    #[ignore = "run on its own by `cargo xtask test` (see the module)"]
    async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
        super::schemathesis_finds_no_server_error_and_no_schema_mismatch(
            crate::support::Backend::Postgres,
        )
        .await
    }
}
