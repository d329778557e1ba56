//! Test support (feature `testing`): the shared NATS and Kafka brokers or a loud skip, and private nats-server and Tansu broker processes that tests stop and restart.
//!
//! Brokers are reached as `NATS_URL` (default `nats://127.0.0.1:4222`) and
//! `HUB_TEST_KAFKA` (default `127.0.0.1:9092`); the Tansu binary for private
//! Kafka brokers comes from `HUB_TEST_TANSU_BIN`, which `cargo xtask test`
//! sets. Outside CI a missing broker skips the test with a `SKIPPED` line on
//! stderr; with `CI=true` it fails the test. Nothing here is for production
//! code; it panics freely, like test code.

#![allow(clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether tests must fail rather than skip when a service is missing.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Panics under CI, else says SKIPPED on stderr; for `let ... else { return }`.
fn missing<T>(test: &str, what: String) -> Option<T> {
    if under_ci() {
        panic!("{test}: {what} (CI=true: a missing backend fails the test)");
    }
    eprintln!("SKIPPED {test}: {what}; set CI=true to fail instead");
    None
}

/// The shared NATS server's URL (`NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A client of the shared NATS server, or `None` after SKIPPED.
pub async fn nats_client(test: &str) -> Option<async_nats::Client> {
    let url = nats_url();
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url.as_str());
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(err)) => missing(test, format!("NATS at {url} is unreachable ({err})")),
        Err(_) => missing(test, format!("NATS at {url} is unreachable (timed out)")),
    }
}

/// The shared Kafka-compatible broker's address, or `None` after SKIPPED.
pub fn kafka(test: &str) -> Option<String> {
    let addr = std::env::var("HUB_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let reachable = addr
        .parse::<SocketAddr>()
        .map_err(|err| err.to_string())
        .and_then(|sock| {
            TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(|e| e.to_string())
        });
    match reachable {
        Ok(_) => Some(addr),
        Err(why) => missing(
            test,
            format!("Kafka broker at {addr} (HUB_TEST_KAFKA) is unreachable ({why})"),
        ),
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(child: &mut Option<Child>, port: u16, what: &str, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(c) = child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            *child = None;
            return Err(io::Error::other(format!(
                "{what} exited with {status} before listening on {addr}; see {}",
                log.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{what} did not listen on {addr} within 20 s; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A private broker process on its own port, killed on drop; `restart`
/// brings it back on the same port (a nats-server keeps its JetStream
/// directory; a Tansu broker with memory storage starts empty).
#[derive(Debug)]
pub struct BrokerProcess {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BrokerProcess {
    /// A private nats-server with JetStream (storage in a temporary
    /// directory) on a free port; `None` after SKIPPED if it cannot start.
    pub fn nats(test: &str) -> Option<BrokerProcess> {
        Self::nats_with_config(test, "")
    }

    /// Like [`BrokerProcess::nats`], with `config` (nats-server's config
    /// file syntax, e.g. `max_payload: 1024`) as its config file.
    pub fn nats_with_config(test: &str, config: &str) -> Option<BrokerProcess> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("hub-test-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = Vec::new();
        if !config.is_empty() {
            let file = dir.join("nats-server.conf");
            std::fs::write(&file, config).unwrap();
            args.push("-c".to_owned());
            args.push(file.to_string_lossy().into_owned());
        }
        args.extend([
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-js".to_owned(),
            "-sd".to_owned(),
            dir.to_string_lossy().into_owned(),
        ]);
        let mut broker = BrokerProcess {
            what: "nats-server",
            program: PathBuf::from("nats-server"),
            args,
            port,
            log: dir.with_extension("log"),
            child: None,
            _dir: Some(TempDir(dir)),
        };
        match broker.spawn() {
            Ok(()) => Some(broker),
            Err(err) => missing(test, format!("cannot start nats-server ({err})")),
        }
    }

    /// A private Tansu broker (memory storage) of `HUB_TEST_TANSU_BIN` on a
    /// free port; `None` after SKIPPED when the variable is unset.
    pub fn tansu(test: &str) -> Option<BrokerProcess> {
        Self::tansu_with_schemas(test, &[])
    }

    /// Like [`BrokerProcess::tansu`], with a schema registry holding
    /// `schemas` (`(topic, JSON schema)` each): Tansu refuses a record of
    /// such a topic that its schema does not accept with `INVALID_RECORD`.
    pub fn tansu_with_schemas(test: &str, schemas: &[(&str, &str)]) -> Option<BrokerProcess> {
        let bin = match std::env::var_os("HUB_TEST_TANSU_BIN") {
            Some(bin) if !bin.is_empty() => PathBuf::from(bin),
            _ => {
                return missing(
                    test,
                    "HUB_TEST_TANSU_BIN is unset (`cargo xtask test` sets it)".to_owned(),
                );
            }
        };
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut broker = BrokerProcess {
            what: "tansu",
            program: bin,
            args: [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]
            .map(str::to_owned)
            .to_vec(),
            port,
            log: std::env::temp_dir().join(format!("hub-test-tansu-{port}.log")),
            child: None,
            _dir: None,
        };
        if !schemas.is_empty() {
            let dir = std::env::temp_dir().join(format!("hub-test-tansu-schemas-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            for (topic, schema) in schemas {
                std::fs::write(dir.join(format!("{topic}.json")), schema).unwrap();
            }
            broker.args.push("--schema-registry".to_owned());
            broker.args.push(format!("file://{}", dir.display()));
            broker._dir = Some(TempDir(dir));
        }
        broker.spawn().unwrap();
        Some(broker)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // From `/`: Tansu reads a `file://` schema registry's path relative
        // to its working directory, so an absolute path works only from
        // there. Every other path given to the brokers is absolute.
        let child = Command::new(&self.program)
            .current_dir("/")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let result = wait_listening(&mut self.child, self.port, self.what, &self.log);
        if result.is_err() {
            kill(&mut self.child);
        }
        result
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the broker and waits for it to exit.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
