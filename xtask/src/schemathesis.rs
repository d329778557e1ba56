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

use crate::kafka::cache_dir;

/// The package and its pinned version (its CLI: `st run --help` of this version).
const PACKAGE: &str = "schemathesis";
pub const VERSION: &str = "4.32.5";
/// A file that only a complete install has.
const MARKER: &str = "schemathesis/cli/__init__.py";

/// The variable naming the install folder for the tests.
pub const ENV: &str = "HUB_TEST_SCHEMATHESIS";

/// The install folder, installing first if needed.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    let dir = cache.join(format!("{PACKAGE}-{VERSION}"));
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let tmp = cache.join(format!(".{PACKAGE}-{VERSION}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    eprintln!(
        "schemathesis: installing {PACKAGE}=={VERSION} and its dependencies into {}",
        dir.display()
    );
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--no-input", "--quiet"])
        .args(["--disable-pip-version-check", "--no-warn-script-location"])
        .arg("--target")
        .arg(&tmp)
        .arg(format!("{PACKAGE}=={VERSION}"))
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .status()
        .context("could not run `python3 -m pip` (schemathesis needs Python 3.9+ with pip)")?;
    if !status.success() || !tmp.join(MARKER).is_file() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("pip could not install {PACKAGE}=={VERSION} ({status})");
    }
    if let Err(err) = std::fs::rename(&tmp, &dir) {
        // Another run may have finished the same install first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(MARKER).is_file() {
            return Err(err).with_context(|| format!("moving the install to {}", dir.display()));
        }
    }
    Ok(dir)
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
