//! A peer's server process (etcd, r-nacos): found on PATH, started in a temporary folder of its own, killed and the folder removed when dropped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::console::progress;
use crate::bench::cpu::{USER_HZ, process_ticks};
use crate::bench::names::random_hex;

/// How long a peer may take to answer after it started.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The file `name` in a folder of PATH, if there is one.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|folder| folder.join(name))
        .find(|candidate| candidate.is_file())
}

/// A temporary folder, removed when dropped (on the error paths too).
#[derive(Debug)]
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(peer: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("hub-bench-{peer}-{}", random_hex(6)?));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            progress(&format!(
                "warning: could not remove {} ({error}); remove it by hand",
                self.path.display()
            ));
        }
    }
}

/// A running peer. Declared before its folder in every struct that holds
/// both, so that the process is gone before its data is removed.
#[derive(Debug)]
pub(crate) struct PeerProcess {
    child: Child,
    name: &'static str,
    log_path: PathBuf,
}

impl PeerProcess {
    /// Starts `command` with its output in `log_path`, in `dir`.
    pub(crate) fn start(
        name: &'static str,
        mut command: Command,
        dir: &Path,
        log_path: &Path,
    ) -> anyhow::Result<Self> {
        let log =
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let child = command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name,
            log_path: log_path.to_owned(),
        })
    }

    /// CPU time the peer has used so far, in seconds (utime + stime).
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let ticks = process_ticks(&self.child.id().to_string())
            .with_context(|| format!("reading the CPU time of {}", self.name))?;
        Ok(ticks as f64 / USER_HZ)
    }

    /// Fails if the peer has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("checking on a peer")? {
            bail!(
                "{} exited unexpectedly ({status}); see {}",
                self.name,
                self.log_path.display()
            );
        }
        Ok(())
    }

    /// Polls `ready` until it says yes, the process exits, or the deadline
    /// passes.
    pub(crate) async fn wait_ready<F, Fut>(
        &mut self,
        addr: SocketAddr,
        ready: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: Future<Output = anyhow::Result<bool>>,
    {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.check_alive()?;
            let last = match ready(addr).await {
                Ok(true) => return Ok(()),
                Ok(false) => "not ready yet".to_owned(),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} on {addr} was not ready after {READY_DEADLINE:?} (last: {last}); see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // Nothing in flight is worth a graceful stop: the data goes away.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
