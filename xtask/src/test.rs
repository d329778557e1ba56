//! `cargo xtask test`: the one test command of the project (README and CI run exactly this).

use crate::{cargo, run_step};
use anyhow::bail;

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
    run_step(
        "tests",
        cargo()
            .args(["test", "--workspace", "--locked"])
            .args(extra),
    )?;
    eprintln!("\nall checks passed");
    Ok(())
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
