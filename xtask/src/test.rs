//! `cargo xtask test`: the one test command of the project (README and CI run exactly this).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::{cargo, kafka, run_step, schemathesis};
use anyhow::{Context, bail};

/// Crates hub-core must never depend on, directly or not: it is the domain,
/// and network, SQL and framework code belong to the adapter crates.
const FORBIDDEN_IN_CORE: [&str; 6] = [
    "actix-web",
    "tokio-postgres",
    "deadpool-postgres",
    "fred",
    "async-nats",
    "rskafka",
];

/// Crates hub-client must never depend on: it runs inside other services,
/// so no server code (actix-web, the hub's own server crates, the drivers)
/// and no aws-lc-sys (a C build; the `tls` feature uses ring).
const FORBIDDEN_IN_CLIENT: [&str; 8] = [
    "actix-web",
    "hub-http",
    "hub-store",
    "hub-bus",
    "tokio-postgres",
    "fred",
    "async-nats",
    "aws-lc-sys",
];

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    run_step("format", cargo().args(["fmt", "--all", "--check"]))?;
    run_step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    layering()?;
    client_layering()?;
    // hub-client's `tls` feature is off in the workspace build (see its
    // manifest), so it gets a lint and test run of its own.
    run_step(
        "hub-client with tls",
        cargo().args([
            "clippy",
            "-p",
            "hub-client",
            "--features",
            "tls",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    json_features()?;
    tests(extra)?;
    eprintln!("\nall checks passed");
    Ok(())
}

/// `cargo test --workspace` with a Kafka-compatible broker (see [`kafka`])
/// and schemathesis (see [`schemathesis`]; required under `CI=true`), then
/// the schemathesis tests on their own (they are `#[ignore]`d in the
/// parallel run, where their load made timing-bound tests fail), the output
/// passed through, ending with one summary line `tests: N passed, M failed`
/// over all test binaries (the last binary cargo runs is often a doc-test
/// run of zero tests, which would otherwise read as if nothing ran).
fn tests(extra: &[String]) -> anyhow::Result<()> {
    // Held until this function returns: dropping it stops a broker that this
    // run started, whether the tests passed or not.
    let broker = kafka::ensure()?;
    let schemathesis = match schemathesis::ensure().and_then(|dir| {
        schemathesis::check(&dir)?;
        Ok(dir)
    }) {
        Ok(dir) => {
            eprintln!(
                "schemathesis: {} in {}",
                schemathesis::VERSION,
                dir.display()
            );
            Some(dir)
        }
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            return Err(err.context("schemathesis is required under CI=true"));
        }
        Err(err) => {
            eprintln!("schemathesis: warning: {err:#}; its tests will say SKIPPED");
            None
        }
    };
    let mut env = broker.env();
    if let Some(dir) = &schemathesis {
        env.push((schemathesis::ENV, dir.display().to_string()));
    }
    let mut workspace = cargo();
    workspace
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .envs(env.iter().cloned());
    let (mut passed, mut failed) = cargo_test("tests", &mut workspace)?;
    if failed == 0 {
        // hub-client's unit tests again with its `tls` feature (off in the
        // workspace run), which adds the test that it speaks TLS.
        let mut tls = cargo();
        tls.args([
            "test",
            "--locked",
            "-p",
            "hub-client",
            "--features",
            "tls",
            "--lib",
        ]);
        let (p, f) = cargo_test("hub-client with tls", &mut tls)?;
        passed += p;
        failed += f;
    }
    if failed == 0 {
        let mut contract = cargo();
        contract
            .args(["test", "--locked", "-p", "hub-server", "--test", "it"])
            .args(["--", "--ignored", "schemathesis::"])
            .envs(env);
        let (p, f) = cargo_test("schemathesis", &mut contract)?;
        passed += p;
        failed += f;
    }
    writeln!(std::io::stdout(), "tests: {passed} passed, {failed} failed")?;
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Runs a `cargo test` command, passing its output through, and returns
/// `(passed, failed)` summed over its test binaries; an error if cargo
/// failed with no failed test counted (a build error, say).
fn cargo_test(name: &str, command: &mut Command) -> anyhow::Result<(u64, u64)> {
    command.stdout(Stdio::piped());
    eprintln!("\n==> {name}: {command:?}");
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("no stdout from cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
        writeln!(out, "{line}")?;
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("{name} failed ({status})");
    }
    Ok((passed, failed))
}

/// `(passed, failed)` of a line `test result: ok. 8 passed; 0 failed; ...`.
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    };
    Some((count("passed")?, count("failed")?))
}

/// `cargo tree -i CRATE` fails when CRATE is not in hub-core's graph, which
/// is what we want; success means hub-core reaches it.
fn layering() -> anyhow::Result<()> {
    eprintln!("\n==> layering: hub-core must not depend on {FORBIDDEN_IN_CORE:?}");
    // Positive control: a crate hub-core does use must be found, or the check
    // itself is broken (an outdated lock file, say) and proves nothing.
    let control = cargo()
        .args([
            "tree",
            "--locked",
            "-p",
            "hub-core",
            "-e",
            "normal,build",
            "-i",
            "serde",
        ])
        .output()?;
    if !control.status.success() {
        bail!(
            "layering check is broken: `cargo tree -i serde` failed: {}",
            String::from_utf8_lossy(&control.stderr)
        );
    }
    let mut offenders = Vec::new();
    for krate in FORBIDDEN_IN_CORE {
        let output = cargo()
            .args([
                "tree",
                "--locked",
                "-p",
                "hub-core",
                "-e",
                "normal,build",
                "-i",
                krate,
            ])
            .output()?;
        if output.status.success() {
            offenders.push(krate);
        }
    }
    if !offenders.is_empty() {
        bail!("hub-core depends on {offenders:?}: move that code to an adapter crate");
    }
    Ok(())
}

/// Like [`layering`] for hub-client, with its `tls` feature on (the
/// largest graph it can have).
fn client_layering() -> anyhow::Result<()> {
    eprintln!("\n==> layering: hub-client must not depend on {FORBIDDEN_IN_CLIENT:?}");
    let tree = |krate: &str| {
        cargo()
            .args([
                "tree",
                "--locked",
                "-p",
                "hub-client",
                "--features",
                "tls",
                "-e",
                "normal,build",
                "-i",
                krate,
            ])
            .output()
    };
    // Positive control, as in `layering`: a crate it does use is found.
    let control = tree("rustls")?;
    if !control.status.success() {
        bail!(
            "layering check is broken: `cargo tree -p hub-client -i rustls` failed: {}",
            String::from_utf8_lossy(&control.stderr)
        );
    }
    let mut offenders = Vec::new();
    for krate in FORBIDDEN_IN_CLIENT {
        if tree(krate)?.status.success() {
            offenders.push(krate);
        }
    }
    if !offenders.is_empty() {
        bail!("hub-client depends on {offenders:?}: the client must carry no server code");
    }
    Ok(())
}

/// serde_json features the exact round trip depends on (docs/ARCHITECTURE.md,
/// "Input and exact round trip"): `float_roundtrip` must be on, so that the
/// plain-notation numbers PostgreSQL prints read back as the same doubles;
/// `arbitrary_precision` and `preserve_order` must stay off, since either
/// would change how both stores compare and print metadata. Features are
/// unified across the workspace, so a new dependency could switch one on
/// without any change to our own manifests: this check catches that.
fn json_features() -> anyhow::Result<()> {
    eprintln!(
        "\n==> serde_json features: float_roundtrip on, arbitrary_precision and preserve_order off"
    );
    let output = cargo()
        .args([
            "tree",
            "--workspace",
            "--locked",
            "-e",
            "features",
            "-i",
            "serde_json",
        ])
        .output()?;
    if !output.status.success() {
        bail!(
            "`cargo tree -e features -i serde_json` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    check_json_features(&String::from_utf8_lossy(&output.stdout)).map_err(anyhow::Error::msg)
}

/// The verdict of [`json_features`] on the output of `cargo tree -e features`.
fn check_json_features(tree: &str) -> Result<(), String> {
    let enabled = |feature: &str| tree.contains(&format!("serde_json feature \"{feature}\""));
    if !enabled("float_roundtrip") {
        return Err("serde_json's float_roundtrip feature is off: PostgreSQL-mode reads would no longer return the numbers that were written".into());
    }
    let unwanted: Vec<&str> = ["arbitrary_precision", "preserve_order"]
        .into_iter()
        .filter(|f| enabled(f))
        .collect();
    if !unwanted.is_empty() {
        return Err(format!(
            "serde_json features {unwanted:?} are on (`cargo tree -e features -i serde_json` shows who enables them): the two stores would no longer answer alike"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_json_features, parse_result};

    #[test]
    fn parses_cargo_test_summaries() {
        assert_eq!(
            parse_result(
                "test result: ok. 22 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"
            ),
            Some((22, 0))
        );
        assert_eq!(
            parse_result("test result: FAILED. 18 passed; 3 failed; 0 ignored"),
            Some((18, 3))
        );
        assert_eq!(parse_result("running 3 tests"), None);
    }

    #[test]
    fn json_features_need_float_roundtrip_and_refuse_the_others() {
        let ok = "serde_json v1.0.1\n├── serde_json feature \"default\"\n├── serde_json feature \"float_roundtrip\"\n";
        assert!(check_json_features(ok).is_ok());
        let off = "serde_json v1.0.1\n├── serde_json feature \"default\"\n";
        assert!(check_json_features(off).is_err());
        let extra = format!("{ok}├── serde_json feature \"arbitrary_precision\"\n");
        assert!(
            check_json_features(&extra)
                .unwrap_err()
                .contains("arbitrary_precision")
        );
    }
}
