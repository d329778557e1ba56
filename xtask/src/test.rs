//! `cargo xtask test`: the one test command of the project (README and CI run exactly this).

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use crate::{cargo, kafka, run_step};
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
    tests(extra)?;
    eprintln!("\nall checks passed");
    Ok(())
}

/// `cargo test --workspace` with a Kafka-compatible broker (see [`kafka`]),
/// its output passed through, ending with one summary line
/// `tests: N passed, M failed` over all test binaries (the last binary cargo
/// runs is often a doc-test run of zero tests, which would otherwise read as
/// if nothing ran).
fn tests(extra: &[String]) -> anyhow::Result<()> {
    // Held until this function returns: dropping it stops a broker that this
    // run started, whether the tests passed or not.
    let broker = kafka::ensure()?;
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .envs(broker.env())
        .stdout(Stdio::piped());
    eprintln!("\n==> tests: {command:?}");
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
    writeln!(out, "tests: {passed} passed, {failed} failed")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::parse_result;

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
}
