//! schemathesis for `cargo xtask test`: a pinned version from PyPI, installed once (with its dependencies) into the user's cache folder.
//!
//! The test `schemathesis::*` in hub-server's integration tests runs it
//! against `/openapi.json` of a running server; this module only makes sure
//! it is installed and tells the tests where (`HUB_TEST_SCHEMATHESIS`, the
//! folder to put on `PYTHONPATH`). Like the Tansu broker of [`crate::kafka`],
//! pip installs into a temporary folder that is renamed into place only when
//! complete, so an interrupted install is never trusted later.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::pip;

/// The package and its pinned version (its CLI: `st run --help` of this version).
const PACKAGE: &str = "schemathesis";
pub const VERSION: &str = "4.32.5";
/// A file that only a complete install has.
const MARKER: &str = "schemathesis/cli/__init__.py";

/// The variable naming the install folder for the tests.
pub const ENV: &str = "HUB_TEST_SCHEMATHESIS";

/// The install folder, installing first if needed.
pub fn ensure() -> anyhow::Result<PathBuf> {
    pip::install_once(
        &pip::Package {
            name: PACKAGE,
            version: VERSION,
            marker: MARKER,
            with_deps: true,
            what: "and its dependencies, for the API contract tests",
        },
        |_| Ok(()),
    )
}

/// Checks that the installed version runs (`python3 -m schemathesis.cli --version`).
pub fn check(dir: &Path) -> anyhow::Result<()> {
    let output = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .env("PYTHONPATH", dir)
        .stdin(Stdio::null())
        .output()
        .context("could not run python3")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !text.contains(VERSION) {
        bail!(
            "schemathesis in {} does not run ({}): {}{}",
            dir.display(),
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
