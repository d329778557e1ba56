//! The command-line options of `cargo xtask bench` and its `--help` text.

use std::time::Duration;

use anyhow::bail;

pub(crate) const USAGE: &str = "usage: cargo xtask bench [options]

options:
  --duration-secs N   length of the lookup and health phases (default 10)
  --runs N            fresh-server runs; the medians are reported (default 3)
  --connections N     concurrent keep-alive connections (default 64)
  --log-level LEVEL   RUST_LOG of the server (default info: the access log is measured)
  --pg-pool N         HUB_PG_POOL_SIZE of the PostgreSQL-mode server (default 16)
  --pg-writers N      HUB_PG_WRITERS (group commit) of the PostgreSQL-mode servers (default:
                      the server's, 2); the `pg reg 1/tx` server always has 0
  --postgres          fail if PostgreSQL cannot be reached (default: skip its phases)
  --skip-postgres     measure the embedded mode only
  --skip-events       skip the event phases (PostgreSQL mode with NATS and Kafka)
  --skip-fairness     skip the fairness phase (PostgreSQL mode: one tenant floods, another is timed)
  --skip-heartbeats   skip the heartbeat phases (every mode: lease renewals of the registered instances)
  --skip-limiter      skip the rate limiter's cost (lookups with limits on and off, embedded and
                      PostgreSQL+Dragonfly)
  --skip-request-metrics  skip the request metrics' cost (embedded lookups with
                      HUB_REQUEST_METRICS on and off, two servers, alternating 1 s slices,
                      --duration-secs slices per side)
  --skip-auth         skip the auth checks' cost (PostgreSQL-mode lookups of one tenant with the
                      env key, a database key made through the admin API, and JWTs, HS256 and
                      ES256; one server, alternating 1 s slices, --duration-secs slices each)
  --skip-watch        skip the watch phase (1,000 SSE streams over 100 tenants while registrations
                      arrive at --event-rate for --event-secs; embedded and PostgreSQL mode)
  --skip-dragonfly    leave out the PostgreSQL+Dragonfly mode of the heartbeat and limiter phases
  --skip-large-registry  skip the lookups over the larger registry (10,000 services: 100 tenants x
                      100 services, 100,000 instances), embedded and PostgreSQL mode; it costs two
                      more servers per run, 100,000 unmeasured registrations each (about 30 s in
                      PostgreSQL mode at 3,000-4,000 registrations/s) and two more
                      --duration-secs lookup phases
  --peers             also measure etcd (and r-nacos, if `rnacos` is on PATH) with the same load
                      generator in the same run: etcd from PATH (`apt-get install -y etcd-server`)
                      on a temporary data folder and free ports, fsync as shipped, through its
                      HTTP/JSON gateway (put, put with a lease, range); a missing peer is reported
                      and skipped
  --event-secs N      length of the fixed-rate event latency phase (default 10)
  --event-rate N      registrations/s of the event latency phase (default 1000)
  --quick             smoke test: 2 s phases (heartbeats and limiter too), 1 run, 2000 registrations,
                      3 s event latency phase

environment:
  HUB_BENCH_PG_ADMIN  libpq key=value connection of a role that may create databases
                      and roles (default: host=127.0.0.1 port=5432 user=postgres dbname=postgres);
                      each run creates a database hub_bench_<hex> and a login hub_bench_<hex>_app
                      and drops both at its end
  HUB_BENCH_DRAGONFLY host:port of the Dragonfly (or Redis) of the PostgreSQL+Dragonfly mode
                      (default 127.0.0.1:6379); the mode is skipped, and the report says so, when
                      it does not answer PING
  HUB_BENCH_DRAGONFLY_DB  its database number (HUB_DRAGONFLY_DB of the server; default 0); each
                      run uses tenants of its own and deletes their keys (hub:{bench-<hex>-*) at
                      its end

event phases (PostgreSQL mode only): NATS on nats://127.0.0.1:4222 must answer (else they are
skipped, and the report says why); a Kafka-compatible broker on 127.0.0.1:9092 is used, or a
Tansu broker is started as for `cargo xtask test`. Each run uses its own subject prefix, JetStream
stream and Kafka topic, deleted at its end";

pub(crate) const REGISTRATIONS: usize = 10_000;
pub(crate) const QUICK_REGISTRATIONS: usize = 2_000;
/// The event latency phase: its length (normal and `--quick`) and its rate.
pub(crate) const EVENT_SECS: usize = 10;
pub(crate) const QUICK_EVENT_SECS: usize = 3;
pub(crate) const EVENT_RATE: usize = 1_000;
pub(crate) const PG_ADMIN_ENV: &str = "HUB_BENCH_PG_ADMIN";
pub(crate) const PG_ADMIN_DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
pub(crate) const PG_POOL_DEFAULT: usize = 16;

/// Command-line options after `--quick` and the explicit flags are applied.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) duration: Duration,
    pub(crate) runs: usize,
    pub(crate) connections: usize,
    pub(crate) registrations: usize,
    pub(crate) log_level: String,
    pub(crate) postgres: PgMode,
    pub(crate) pg_pool: usize,
    /// `--pg-writers`: HUB_PG_WRITERS of the PostgreSQL-mode servers.
    pub(crate) pg_writers: Option<usize>,
    /// The libpq string of `HUB_BENCH_PG_ADMIN`, or the default.
    pub(crate) pg_admin: String,
    /// Whether the event phases run (not `--skip-events`).
    pub(crate) events: bool,
    /// Whether the fairness phase runs (not `--skip-fairness`).
    pub(crate) fairness: bool,
    /// Whether the heartbeat phases run (not `--skip-heartbeats`).
    pub(crate) heartbeats: bool,
    /// Whether the rate limiter's cost is measured (not `--skip-limiter`).
    pub(crate) limiter: bool,
    /// Whether the request metrics' cost is measured (not `--skip-request-metrics`).
    pub(crate) request_metrics: bool,
    /// Whether the auth checks' cost is measured (not `--skip-auth`).
    pub(crate) auth: bool,
    /// Whether the PostgreSQL+Dragonfly mode may run (not `--skip-dragonfly`).
    pub(crate) dragonfly: bool,
    /// Whether the lookups over the larger registry run (not `--skip-large-registry`).
    pub(crate) large_registry: bool,
    /// Whether the watch phase runs (not `--skip-watch`).
    pub(crate) watch: bool,
    /// Whether the peers (etcd, r-nacos) are measured (`--peers`).
    pub(crate) peers: bool,
    /// Length of the fixed-rate event latency phase.
    pub(crate) event_duration: Duration,
    /// Registrations per second of the event latency phase.
    pub(crate) event_rate: usize,
}

/// Whether the PostgreSQL phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgMode {
    /// Run them if PostgreSQL answers, and say so if it does not.
    Auto,
    /// Run them, and fail if PostgreSQL does not answer (`--postgres`).
    Require,
    /// Do not run them (`--skip-postgres`).
    Skip,
}

impl Options {
    /// `Ok(None)` means help was asked for.
    pub(crate) fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        let mut quick = false;
        let mut duration_secs = None;
        let mut runs = None;
        let mut connections = None;
        let mut log_level = None;
        let mut pg_pool = None;
        let mut pg_writers = None;
        let mut require_postgres = false;
        let mut skip_postgres = false;
        let mut skip_events = false;
        let mut skip_fairness = false;
        let mut skip_heartbeats = false;
        let mut skip_limiter = false;
        let mut skip_request_metrics = false;
        let mut skip_auth = false;
        let mut skip_dragonfly = false;
        let mut skip_large_registry = false;
        let mut skip_watch = false;
        let mut peers = false;
        let mut event_secs = None;
        let mut event_rate = None;
        // Both `--flag value` and `--flag=value` are accepted.
        let mut flags = crate::args::Flags::new(args, USAGE);
        while let Some((flag, inline)) = flags.next_flag() {
            let mut value = || flags.value(flag, inline);
            match flag {
                "--duration-secs" => duration_secs = Some(positive(flag, &value()?)?),
                "--runs" => runs = Some(positive(flag, &value()?)?),
                "--connections" => connections = Some(positive(flag, &value()?)?),
                "--log-level" => log_level = Some(value()?),
                "--pg-pool" => pg_pool = Some(positive(flag, &value()?)?),
                "--pg-writers" => pg_writers = Some(positive(flag, &value()?)?),
                "--postgres" => require_postgres = true,
                "--skip-postgres" => skip_postgres = true,
                "--skip-events" => skip_events = true,
                "--skip-fairness" => skip_fairness = true,
                "--skip-heartbeats" => skip_heartbeats = true,
                "--skip-limiter" => skip_limiter = true,
                "--skip-request-metrics" => skip_request_metrics = true,
                "--skip-auth" => skip_auth = true,
                "--skip-dragonfly" => skip_dragonfly = true,
                "--skip-large-registry" => skip_large_registry = true,
                "--skip-watch" => skip_watch = true,
                "--peers" => peers = true,
                "--event-secs" => event_secs = Some(positive(flag, &value()?)?),
                "--event-rate" => event_rate = Some(positive(flag, &value()?)?),
                "--quick" => quick = true,
                "--help" | "-h" => return Ok(None),
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        let postgres = match (require_postgres, skip_postgres) {
            (true, true) => bail!("--postgres and --skip-postgres contradict each other"),
            (true, false) => PgMode::Require,
            (false, true) => PgMode::Skip,
            (false, false) => PgMode::Auto,
        };
        let pg_admin = std::env::var(PG_ADMIN_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| PG_ADMIN_DEFAULT.to_owned());
        let duration_secs = duration_secs.unwrap_or(if quick { 2 } else { 10 });
        let event_secs = event_secs.unwrap_or(if quick { QUICK_EVENT_SECS } else { EVENT_SECS });
        Ok(Some(Self {
            duration: Duration::from_secs(u64::try_from(duration_secs)?),
            runs: runs.unwrap_or(if quick { 1 } else { 3 }),
            connections: connections.unwrap_or(64),
            registrations: if quick {
                QUICK_REGISTRATIONS
            } else {
                REGISTRATIONS
            },
            log_level: log_level.unwrap_or_else(|| "info".to_owned()),
            postgres,
            pg_pool: pg_pool.unwrap_or(PG_POOL_DEFAULT),
            pg_writers,
            pg_admin,
            events: !skip_events,
            fairness: !skip_fairness,
            heartbeats: !skip_heartbeats,
            limiter: !skip_limiter,
            request_metrics: !skip_request_metrics,
            auth: !skip_auth,
            dragonfly: !skip_dragonfly,
            large_registry: !skip_large_registry,
            watch: !skip_watch,
            peers,
            event_duration: Duration::from_secs(u64::try_from(event_secs)?),
            event_rate: event_rate.unwrap_or(EVENT_RATE),
        }))
    }
}

pub(crate) fn positive(flag: &str, value: &str) -> anyhow::Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} must be a positive whole number (got {value:?})"),
    }
}
