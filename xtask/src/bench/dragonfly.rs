//! The Dragonfly of `cargo xtask bench` (a Redis on 127.0.0.1:6379 stands in): where it is, whether it answers, the server's variables for it, and the deletion of a run's keys.
//!
//! The bench talks to it over a few lines of RESP on a blocking socket: it
//! only needs `PING`, `SELECT`, `SCAN` and `DEL`, and a blocking socket can be
//! used from `Drop`, which cannot await. Every key the server writes is
//! `hub:{tenant}:...` (see hub-store's `dragonfly::keys`), and each run of a
//! Dragonfly phase uses tenants of its own (`bench-<hex>-tNNN`), so
//! `hub:{bench-<hex>-*` finds exactly that run's keys and nothing else; the
//! bench never flushes a database.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::bench::console::{progress, report};
use crate::bench::options::Options;

const ENDPOINT_ENV: &str = "HUB_BENCH_DRAGONFLY";
const ENDPOINT_DEFAULT: &str = "127.0.0.1:6379";
const DB_ENV: &str = "HUB_BENCH_DRAGONFLY_DB";
/// Bound on connecting and on each reply: a Dragonfly that does not answer
/// is reported quickly instead of hanging the benchmark.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Keys asked for per `SCAN` call during the cleanup.
const SCAN_COUNT: &str = "1000";

/// Where the PostgreSQL+Dragonfly mode's servers find Dragonfly.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    /// `HUB_DRAGONFLY_DB` of the server, and the database the cleanup
    /// selects; `None` is the server's default (0).
    db: Option<u8>,
}

impl Endpoint {
    fn from_env() -> anyhow::Result<Self> {
        let addr = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| ENDPOINT_DEFAULT.to_owned());
        let (host, port) = addr
            .rsplit_once(':')
            .with_context(|| format!("{ENDPOINT_ENV} must be host:port (got {addr:?})"))?;
        let port = port
            .parse()
            .with_context(|| format!("{ENDPOINT_ENV}: {port:?} is not a port number"))?;
        let db = match std::env::var(DB_ENV) {
            Ok(db) if !db.trim().is_empty() => Some(
                db.trim()
                    .parse()
                    .with_context(|| format!("{DB_ENV} must be a number 0-255 (got {db:?})"))?,
            ),
            _ => None,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            db,
        })
    }

    fn describe(&self) -> String {
        match self.db {
            Some(db) => format!("{}:{} database {db}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The server's variables for this Dragonfly.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DRAGONFLY_HOST", self.host.clone()),
            ("DRAGONFLY_PORT", self.port.to_string()),
        ];
        if let Some(db) = self.db {
            env.push(("HUB_DRAGONFLY_DB", db.to_string()));
        }
        env
    }

    /// A connection with the database selected.
    fn connect(&self) -> anyhow::Result<Resp> {
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))?;
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut resp = Resp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        if let Some(db) = self.db {
            resp.command(&["SELECT", &db.to_string()])?;
        }
        Ok(resp)
    }

    /// Connects and asks for `PING`, to learn whether the mode can run.
    fn probe(&self) -> anyhow::Result<()> {
        match self.connect()?.command(&["PING"])? {
            Reply::Simple(pong) if pong == "PONG" => Ok(()),
            other => bail!("PING answered {other:?}"),
        }
    }

    /// Script calls (`EVAL` and `EVALSHA`) the server has counted since it
    /// started, from `INFO commandstats` (`cmdstat_evalsha:calls=N,...`); a
    /// command never called has no line and counts 0.
    pub(crate) fn script_calls(&self) -> anyhow::Result<u64> {
        let reply = self.connect()?.command(&["INFO", "commandstats"])?;
        let Reply::Bulk(info) = reply else {
            bail!("INFO answered {reply:?}");
        };
        let mut calls = 0;
        for line in info.lines() {
            let Some((name, fields)) = line.split_once(':') else {
                continue;
            };
            if !matches!(
                name.to_ascii_lowercase().as_str(),
                "cmdstat_eval" | "cmdstat_evalsha"
            ) {
                continue;
            }
            let count = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .with_context(|| format!("no calls= in {line:?}"))?;
            calls += count
                .parse::<u64>()
                .with_context(|| format!("calls= is not a number in {line:?}"))?;
        }
        Ok(calls)
    }

    /// Deletes every key of the tenants named `{tenants}NNN`; returns how
    /// many there were.
    fn delete_keys(&self, tenants: &str) -> anyhow::Result<usize> {
        let mut resp = self.connect()?;
        let pattern = format!("hub:{{{tenants}*");
        let mut cursor = "0".to_owned();
        let mut deleted = 0;
        loop {
            let reply = resp.command(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", SCAN_COUNT])?;
            let Reply::Array(mut parts) = reply else {
                bail!("SCAN answered {reply:?}");
            };
            let (Some(Reply::Array(keys)), Some(Reply::Bulk(next))) = (parts.pop(), parts.pop())
            else {
                bail!("SCAN answered an array of an unexpected shape");
            };
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|key| match key {
                    Reply::Bulk(key) => Some(key),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                let mut command = vec!["DEL"];
                command.extend(keys.iter().map(String::as_str));
                if let Reply::Integer(n) = resp.command(&command)? {
                    deleted += usize::try_from(n).unwrap_or(0);
                }
            }
            if next == "0" {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Whether the PostgreSQL+Dragonfly mode can run: `None` means it does not,
/// and the report says why.
pub(crate) async fn endpoint(options: &Options, postgres: bool) -> Option<Endpoint> {
    if !options.heartbeats && !options.limiter {
        return None;
    }
    if !options.dragonfly {
        report("dragonfly: skipped (--skip-dragonfly)\n");
        return None;
    }
    if !postgres {
        report("dragonfly: skipped (the PostgreSQL+Dragonfly mode needs PostgreSQL)\n");
        return None;
    }
    let endpoint = match Endpoint::from_env() {
        Ok(endpoint) => endpoint,
        Err(error) => {
            report(&format!(
                "dragonfly: SKIPPED, {ENDPOINT_ENV} is not usable: {error:#}\n"
            ));
            return None;
        }
    };
    let probe = endpoint.clone();
    match tokio::task::spawn_blocking(move || probe.probe()).await {
        Ok(Ok(())) => {
            report(&format!(
                "dragonfly: {} ({ENDPOINT_ENV}, {DB_ENV}); the PostgreSQL+Dragonfly mode uses tenants \
                 of its own per run (bench-<hex>-tNNN) and deletes their keys at its end\n",
                endpoint.describe()
            ));
            Some(endpoint)
        }
        Ok(Err(error)) => {
            report(&format!(
                "dragonfly: SKIPPED, nothing answers PING on {} ({ENDPOINT_ENV} or its default): {error:#}; \
                 the PostgreSQL+Dragonfly mode does not run\n",
                endpoint.describe()
            ));
            None
        }
        Err(error) => {
            report(&format!("dragonfly: SKIPPED, the probe failed: {error}\n"));
            None
        }
    }
}

/// The keys of one run's tenants, deleted when this is dropped (on the
/// error paths too). Drop it after the server, or the server could write
/// some again.
#[derive(Debug)]
pub(crate) struct RunKeys {
    endpoint: Endpoint,
    tenants: String,
}

impl RunKeys {
    pub(crate) fn new(endpoint: &Endpoint, tenants: &str) -> Self {
        Self {
            endpoint: endpoint.clone(),
            tenants: tenants.to_owned(),
        }
    }
}

impl Drop for RunKeys {
    fn drop(&mut self) {
        match self.endpoint.delete_keys(&self.tenants) {
            Ok(deleted) => progress(&format!(
                "  dragonfly: deleted {deleted} key(s) of hub:{{{}*",
                self.tenants
            )),
            Err(error) => progress(&format!(
                "warning: could not delete the keys hub:{{{}* from Dragonfly ({error:#}); \
                 delete them by hand",
                self.tenants
            )),
        }
    }
}

/// A RESP2 connection: commands out as arrays of bulk strings, replies in.
#[derive(Debug)]
struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A RESP2 reply; bulk strings are read as UTF-8 (lossily), which the keys
/// and answers the bench deals with are.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Integer(i64),
    /// A bulk string; the null bulk string is read as an empty one.
    Bulk(String),
    /// An array; the null array is read as an empty one.
    Array(Vec<Reply>),
}

impl Resp {
    fn command(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            let _ = write!(out, "${}\r\n{arg}\r\n", arg.len());
        }
        self.writer
            .write_all(out.as_bytes())
            .context("sending a command to Dragonfly")?;
        self.reply()
            .with_context(|| format!("reading the answer to {}", args.first().unwrap_or(&"?")))
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the connection was closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at_checked(1).context("an empty reply line")?;
        let number = || {
            rest.parse::<i64>()
                .with_context(|| format!("{rest:?} is not a number"))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => bail!("Dragonfly answered an error: {rest}"),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Bulk(String::new()));
                };
                // The string and its closing CRLF.
                let mut bytes = vec![0; len + 2];
                self.reader.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Ok(Reply::Bulk(String::from_utf8_lossy(&bytes).into_owned()))
            }
            "*" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Array(Vec::new()));
                };
                let items = (0..len)
                    .map(|_| self.reply())
                    .collect::<anyhow::Result<_>>()?;
                Ok(Reply::Array(items))
            }
            other => bail!("an unexpected reply type {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::names::random_hex;

    /// The endpoint of the machine's Redis, or `None` (said on stderr) when
    /// it does not answer outside CI; with `CI=true` that fails.
    fn reachable() -> Option<Endpoint> {
        let endpoint = Endpoint::from_env().unwrap();
        match endpoint.probe() {
            Ok(()) => Some(endpoint),
            Err(error) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "Redis is not reachable ({error:#}) and CI=true"
                );
                eprintln!("SKIPPED: Redis not reachable: {error:#}");
                None
            }
        }
    }

    fn exists(endpoint: &Endpoint, key: &str) -> bool {
        match endpoint
            .connect()
            .unwrap()
            .command(&["EXISTS", key])
            .unwrap()
        {
            Reply::Integer(n) => n == 1,
            other => panic!("EXISTS answered {other:?}"),
        }
    }

    /// Dropping a run's `RunKeys` deletes the keys of its tenants, however
    /// many `SCAN` pages they take, and leaves another run's keys and other
    /// tenants' keys alone.
    #[test]
    fn run_keys_delete_their_tenants_keys_and_no_other() {
        let Some(endpoint) = reachable() else {
            return;
        };
        let ours = format!("bench-{}-t", random_hex(4).unwrap());
        let theirs = format!("bench-{}-t", random_hex(4).unwrap());
        let mut resp = endpoint.connect().unwrap();
        // An expiry on every key, so that a failed test leaves nothing behind.
        let set = |resp: &mut Resp, key: &str| {
            resp.command(&["SET", key, "1", "PX", "60000"]).unwrap();
        };
        let count = 2500;
        for i in 0..count {
            set(
                &mut resp,
                &format!("hub:{{{ours}{:03}}}:rl:tenant", i % 100),
            );
            set(
                &mut resp,
                &format!("hub:{{{ours}{:03}}}:lease:{i}", i % 100),
            );
        }
        let neighbours = [
            format!("hub:{{{theirs}000}}:rl:tenant"),
            format!("hub:{{acme-{}}}:rl:tenant", random_hex(4).unwrap()),
        ];
        for key in &neighbours {
            set(&mut resp, key);
        }
        drop(RunKeys::new(&endpoint, &ours));
        assert!(!exists(&endpoint, &format!("hub:{{{ours}000}}:rl:tenant")));
        assert!(!exists(&endpoint, &format!("hub:{{{ours}099}}:lease:2499")));
        assert!(!exists(&endpoint, &format!("hub:{{{ours}042}}:lease:42")));
        for key in &neighbours {
            assert!(exists(&endpoint, key), "{key} was deleted");
            resp.command(&["DEL", key]).unwrap();
        }
    }
}
