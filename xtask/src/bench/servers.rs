//! A hub-server child process on a free loopback port: started with a cleared environment, polled until ready, killed when dropped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::load::get_status;
use crate::bench::names::API_KEY;

pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A hub-server child process, killed when dropped so that no error path
/// leaves it running.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) log_path: PathBuf,
}

impl Server {
    /// `env` comes on top of what every mode gets; it selects the store.
    pub(crate) fn start(
        binary: &Path,
        log_path: &Path,
        log_level: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log =
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        // A cleared environment keeps the developer's variables out of the
        // measurement; in particular a POSTGRES_HOST of the developer would
        // turn the embedded run into a PostgreSQL one. The log goes to a file
        // so that a terminal cannot become the bottleneck.
        let child = Command::new(binary)
            .env_clear()
            .env("HUB_BIND", addr.to_string())
            .env("CENTRAL_HUB_API_KEYS", API_KEY)
            .env("RUST_LOG", log_level)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            addr,
            log_path: log_path.to_owned(),
        })
    }

    /// Polls `GET path` until it answers 200, the process exits, or the
    /// deadline passes.
    pub(crate) async fn wait_ready(&mut self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.check_alive()?;
            let last_error = match get_status(self.addr, path).await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("status {status}"),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "hub-server on {} was not ready after {READY_DEADLINE:?} (last: {last_error}); see {}",
                    self.addr,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the server has exited, which would make every later figure
    /// meaningless.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("checking on hub-server")? {
            bail!(
                "hub-server exited unexpectedly ({status}); see {}",
                self.log_path.display()
            );
        }
        Ok(())
    }

    /// `VmHWM` of the server: the peak resident set size since it started.
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = read_proc_status(self.child.id())?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .context("no VmHWM line in /proc/<pid>/status")?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse()
            .with_context(|| format!("VmHWM is not a number of kB: {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The benchmark is over for this server, so there is nothing in flight
        // worth a graceful shutdown; errors mean it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn read_proc_status(pid: u32) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// A port nobody listens on right now. The listener is dropped before the
/// server binds, which leaves a small window for a race that loopback
/// benchmarks can live with.
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    listener.local_addr().context("reading the free port")
}
