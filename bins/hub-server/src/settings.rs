//! `Settings`: layered configuration (defaults, optional `HUB_CONFIG` file, environment variables) built once at start.

use std::collections::HashMap;

use std::time::Duration;

use config::{Config, ConfigError, File, FileFormat};
use hub_core::TenantId;
use hub_core::ratelimit::{Quota, RatePolicy};
use hub_store::dragonfly::DragonflyConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Everything the server is configured with. Built once in `main` (or a test)
/// and passed down; there are no global settings.
#[derive(Debug, Deserialize)]
pub struct Settings {
    /// HTTP listener.
    pub server: ServerSettings,
    /// Log output.
    pub log: LogSettings,
    /// API keys.
    pub auth: AuthSettings,
    /// Lease reaper.
    pub leases: LeaseSettings,
    /// PostgreSQL, the source of truth (absent host = embedded mode).
    pub postgres: PostgresSettings,
    /// Event buses (NATS, Kafka) and the outbox relay.
    pub events: EventSettings,
    /// DragonflyDB (absent host = none: in-process limits only).
    pub dragonfly: DragonflySettings,
    /// Rate limits per tenant and per API key.
    pub rate_limits: RateLimitSettings,
    /// The infrastructure monitor.
    pub monitor: MonitorSettings,
    /// Tenants mode, bearer tokens and key-use sampling (issue 12, HTTP side).
    pub tenancy: TenancySettings,
    /// Usage per tenant (flush interval) and the admin audit's retention.
    pub usage: UsageSettings,
    /// Watch streams and blocking queries.
    pub watch: WatchSettings,
}

/// Usage per tenant per day, counted in memory and flushed to the tenant
/// directory, and how long admin audit rows are kept.
#[derive(Debug, Deserialize)]
pub struct UsageSettings {
    /// `HUB_USAGE_FLUSH_SECS`: seconds between two flushes of the counted
    /// usage (10); a crash loses at most this much, a graceful stop nothing.
    /// At least 1.
    pub flush_secs: u64,
    /// `HUB_AUDIT_RETENTION_DAYS`: days admin audit rows are kept (90),
    /// deleted tenants' included; older rows are pruned hourly. At least 1.
    pub audit_retention_days: u32,
}

/// How tenants are admitted and bearer tokens verified.
#[derive(Debug, Deserialize)]
pub struct TenancySettings {
    /// `HUB_TENANTS_MODE`: `open` (any valid tenant id, recorded on first
    /// use; the default) or `registered` (only tenants created through the
    /// admin API; others get 403 `unknown_tenant`).
    pub mode: String,
    /// `HUB_JWT_SECRET`: shared secret of HS256 bearer tokens (at least 32
    /// bytes); unset = no HS256.
    pub jwt_secret: Option<SecretString>,
    /// `HUB_JWT_JWKS_PATH`: a JWKS file of RS256/ES256 public keys,
    /// reloaded when it changes; unset = no RS256/ES256.
    pub jwt_jwks_path: Option<std::path::PathBuf>,
    /// `HUB_JWT_ISSUER`: the `iss` every token must carry; unset = not checked.
    pub jwt_issuer: Option<String>,
    /// `HUB_JWT_AUDIENCE`: an `aud` every token must carry; unset = not checked.
    pub jwt_audience: Option<String>,
    /// `HUB_JWT_TENANT_CLAIM`: the claim naming the token's tenants (a
    /// string or a list) (`tenant_id`).
    pub jwt_tenant_claim: String,
    /// `HUB_JWT_LEEWAY_SECS`: clock skew allowed on `exp` and `nbf` (30, at most 300).
    pub jwt_leeway_secs: u64,
    /// `HUB_KEY_USE_FLUSH_SECS`: how often the sampled `last_used_at` of
    /// keys is written (10).
    pub key_use_flush_secs: u64,
}

/// The shortest `HUB_JWT_SECRET`, in bytes: HS256 with less than its own
/// 256 bits of key material can be brute-forced offline from one token.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

impl TenancySettings {
    /// The tenants mode.
    pub fn tenants_mode(&self) -> Result<hub_http::TenantsMode, ConfigError> {
        hub_http::TenantsMode::parse(&self.mode).map_err(|e| {
            ConfigError::Message(format!("HUB_TENANTS_MODE is invalid: {}", e.message()))
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.tenants_mode()?;
        if let Some(secret) = &self.jwt_secret
            && secret.expose_secret().len() < MIN_JWT_SECRET_BYTES
        {
            return Err(ConfigError::Message(format!(
                "HUB_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long (e.g. `openssl rand -hex 32`)"
            )));
        }
        let claim = self.jwt_tenant_claim.trim();
        if claim.is_empty() || claim.len() > 100 {
            return Err(ConfigError::Message(
                "HUB_JWT_TENANT_CLAIM must be a claim name of 1-100 characters".into(),
            ));
        }
        if self.jwt_leeway_secs > 300 {
            return Err(ConfigError::Message(
                "HUB_JWT_LEEWAY_SECS must be at most 300 (a larger skew means a clock to fix)"
                    .into(),
            ));
        }
        if self.key_use_flush_secs == 0 || self.key_use_flush_secs > 3600 {
            return Err(ConfigError::Message(
                "HUB_KEY_USE_FLUSH_SECS must be between 1 and 3600".into(),
            ));
        }
        Ok(())
    }
}

/// Watch streams (`GET /api/v1/discovery/watch`) and blocking queries.
#[derive(Debug, Deserialize)]
pub struct WatchSettings {
    /// `HUB_WATCH_KEEPALIVE_SECS`: a `: keep-alive` comment on idle streams
    /// this often, so that proxies keep them open (15).
    pub keepalive_secs: u64,
    /// `HUB_WATCH_HISTORY`: events kept in memory per tenant for replay
    /// (64: 100 tenants of 64 events of about 0.6 KiB each, a few MiB). In embedded mode they are all a watch can resume from; in
    /// PostgreSQL mode older ones are read from `coordination_history`.
    pub history: usize,
    /// `HUB_WATCH_BUFFER`: revisions queued per stream before a reader too
    /// slow for them is cut off with `lagged` (1024).
    pub buffer: usize,
    /// `HUB_WATCH_MAX_PER_TENANT`: open watch streams per tenant (1000).
    pub max_per_tenant: u32,
    /// `HUB_WATCH_MAX_PER_KEY`: open watch streams per API key (1000).
    pub max_per_key: u32,
    /// `HUB_BLOCKING_MAX_WAIT_SECS`: the longest a blocking query waits
    /// (600; the default wait is 300 s or this, whichever is shorter).
    pub max_wait_secs: u64,
}

impl WatchSettings {
    /// The hub configuration these settings give.
    pub fn config(&self) -> hub_core::watch::WatchConfig {
        hub_core::watch::WatchConfig {
            history: self.history,
            buffer: self.buffer,
            max_per_tenant: self.max_per_tenant,
            max_per_key: self.max_per_key,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.keepalive_secs == 0
            || self.buffer == 0
            || self.max_per_tenant == 0
            || self.max_per_key == 0
            || self.max_wait_secs == 0
        {
            return Err(ConfigError::Message(
                "HUB_WATCH_KEEPALIVE_SECS, HUB_WATCH_BUFFER, HUB_WATCH_MAX_PER_TENANT, HUB_WATCH_MAX_PER_KEY and HUB_BLOCKING_MAX_WAIT_SECS must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The infrastructure monitor: how often each configured backend is checked
/// and how long one check may take before the backend counts as down.
#[derive(Debug, Deserialize)]
pub struct MonitorSettings {
    /// `HUB_MONITOR_INTERVAL_MS`: time between checks (10000).
    pub interval_ms: u64,
    /// `HUB_MONITOR_TIMEOUT_MS`: how long one check may take (2000); at
    /// most the interval, so that a round of checks ends before the next
    /// one is due and a change shows within two intervals.
    pub timeout_ms: u64,
}

impl MonitorSettings {
    /// Time between checks.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// How long one check may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// DragonflyDB (Redis protocol) settings: `DRAGONFLY_*` of the deployment
/// guide, plus `HUB_DRAGONFLY_*`. Port and database stay text here so that a
/// malformed value is reported with its variable's name
/// ([`DragonflySettings::client_config`]).
#[derive(Debug, Deserialize)]
pub struct DragonflySettings {
    /// `DRAGONFLY_HOST`: host name or address; unset or empty = no Dragonfly.
    pub host: Option<String>,
    /// `DRAGONFLY_PORT` (6379).
    pub port: String,
    /// `DRAGONFLY_PASSWORD`.
    pub password: Option<SecretString>,
    /// `HUB_DRAGONFLY_USERNAME`: ACL user (with the password).
    pub username: Option<String>,
    /// `HUB_DRAGONFLY_DB`: logical database 0-255 (0).
    pub db: Option<String>,
    /// `HUB_DRAGONFLY_TIMEOUT_MS`: longest wait for one command before the
    /// caller falls back (250).
    pub timeout_ms: u64,
    /// `HUB_DRAGONFLY_TLS=true`: connect with TLS (as does a
    /// `rediss://host[:port]` in `DRAGONFLY_HOST`).
    pub tls: bool,
    /// `HUB_DRAGONFLY_TLS_CA_FILE`: PEM file of the certificate authorities
    /// to trust instead of the system's (implies TLS).
    pub tls_ca_file: Option<String>,
}

impl DragonflySettings {
    /// The client's settings, `None` without `DRAGONFLY_HOST`, or an error
    /// naming the variable that is malformed.
    pub fn client_config(&self) -> Result<Option<DragonflyConfig>, ConfigError> {
        let Some(raw) = self.host.as_deref().filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        // `rediss://host[:port]` (TLS) and `redis://host[:port]` are
        // accepted; a port there wins over DRAGONFLY_PORT.
        let (scheme_tls, rest) = match raw.split_once("://") {
            Some(("rediss", rest)) => (true, rest),
            Some(("redis", rest)) => (false, rest),
            // Any other scheme: refused below (a NUL is never a host).
            Some(_) => (false, "\0"),
            None => (false, raw),
        };
        let (host, url_port) = match rest.rsplit_once(':') {
            Some((h, p)) if raw.contains("://") && !h.contains(':') => (h, Some(p)),
            _ => (rest, None),
        };
        if host.is_empty() || host.contains(['/', '@', '\0']) || host.contains(char::is_whitespace)
        {
            return Err(ConfigError::Message(format!(
                "DRAGONFLY_HOST must be a host name or address, or rediss://host[:port] for TLS \
                 (got {raw:?}; no user, password or path in it: use DRAGONFLY_PASSWORD and \
                 HUB_DRAGONFLY_USERNAME, HUB_DRAGONFLY_DB)"
            )));
        }
        let port_text = url_port.unwrap_or(self.port.as_str());
        let port: u16 = port_text.trim().parse().map_err(|_| {
            ConfigError::Message(format!(
                "DRAGONFLY_PORT must be a port number 1-65535 (got {port_text:?})"
            ))
        })?;
        let ca_file = self
            .tls_ca_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(std::path::PathBuf::from);
        if let Some(file) = &ca_file
            && !file.is_file()
        {
            return Err(ConfigError::Message(format!(
                "HUB_DRAGONFLY_TLS_CA_FILE must name a readable PEM file (got {:?})",
                file.display()
            )));
        }
        let tls = (scheme_tls || self.tls || ca_file.is_some())
            .then_some(hub_store::dragonfly::DragonflyTls { ca_file });
        let db = match self.db.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            None => None,
            Some(d) => Some(d.parse::<u8>().map_err(|_| {
                ConfigError::Message(format!(
                    "HUB_DRAGONFLY_DB must be a database number 0-255 (got {d:?})"
                ))
            })?),
        };
        if port == 0 || self.timeout_ms == 0 {
            return Err(ConfigError::Message(
                "DRAGONFLY_PORT and HUB_DRAGONFLY_TIMEOUT_MS must be at least 1".into(),
            ));
        }
        Ok(Some(DragonflyConfig {
            host: host.to_owned(),
            port,
            db,
            username: self.username.clone().filter(|u| !u.is_empty()),
            password: self
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .filter(|p| !p.is_empty()),
            command_timeout: Duration::from_millis(self.timeout_ms),
            tls,
        }))
    }
}

/// Rate limits (GCRA): a request needs room in its tenant's budget and in
/// its API key's budget within that tenant. A rate of 0 turns a budget off.
#[derive(Debug, Deserialize)]
pub struct RateLimitSettings {
    /// `HUB_RATE_LIMIT_RPS`: every tenant's sustained requests per second
    /// (20,000; 0 = no tenant limit).
    pub rps: u32,
    /// `HUB_RATE_LIMIT_BURST`: requests a tenant may send at once (40,000).
    pub burst: u32,
    /// `HUB_RATE_LIMIT_KEY_RPS`: every API key's requests per second within
    /// a tenant (20,000; 0 = no key limit).
    pub key_rps: u32,
    /// `HUB_RATE_LIMIT_KEY_BURST`: an API key's burst (40,000).
    pub key_burst: u32,
    /// Config file only: `[rate_limits.tenants.acme] rate = 500, burst = 1000`.
    #[serde(default)]
    pub tenants: HashMap<String, TenantRateLimit>,
}

/// One tenant's budget, replacing the default.
#[derive(Debug, Deserialize, Clone, Copy)]
pub struct TenantRateLimit {
    /// Requests per second (0 = no limit for this tenant).
    pub rate: u32,
    /// Requests at once.
    pub burst: u32,
}

impl RateLimitSettings {
    /// The policy, or an error naming the setting that is inconsistent.
    pub fn policy(&self) -> Result<RatePolicy, ConfigError> {
        let quota = |rate: u32, burst: u32, name: &str| {
            if rate > 0 && burst == 0 {
                Err(ConfigError::Message(format!(
                    "{name}: a burst of 0 would refuse every request; give at least 1 (or a rate of 0 to turn the limit off)"
                )))
            } else {
                Ok(Quota { rate, burst })
            }
        };
        let mut overrides = HashMap::new();
        for (name, limit) in &self.tenants {
            let tenant = TenantId::parse(name.as_str()).map_err(|e| {
                ConfigError::Message(format!(
                    "rate_limits.tenants.{name}: not a tenant id: {}",
                    e.message()
                ))
            })?;
            let setting = format!("rate_limits.tenants.{name}.burst");
            overrides.insert(tenant, quota(limit.rate, limit.burst, &setting)?);
        }
        Ok(RatePolicy {
            tenant: quota(self.rps, self.burst, "HUB_RATE_LIMIT_BURST")?,
            key: quota(self.key_rps, self.key_burst, "HUB_RATE_LIMIT_KEY_BURST")?,
            overrides,
        })
    }
}

/// Event buses and the outbox (DESIGN.md §8).
#[derive(Debug, Deserialize)]
pub struct EventSettings {
    /// `NATS_URL`: comma-separated servers; unset or empty = no NATS.
    pub nats_url: Option<String>,
    /// `NATS_USER` (with `NATS_PASSWORD`).
    pub nats_user: Option<String>,
    /// `NATS_PASSWORD`.
    pub nats_password: Option<SecretString>,
    /// `NATS_TOKEN`: token authentication instead of user and password.
    pub nats_token: Option<SecretString>,
    /// `HUB_NATS_SUBJECT_PREFIX`: first subject token (`hub`).
    pub nats_subject_prefix: String,
    /// `HUB_NATS_STREAM`: the JetStream stream (`HUB_REGISTRY`).
    pub nats_stream: String,
    /// `HUB_NATS_STREAM_MAX_AGE_SECS`: how long the stream keeps events
    /// when this server creates it (7 days).
    pub nats_stream_max_age_secs: u64,
    /// `KAFKA_BROKERS`: comma-separated `host:port`; unset or empty = no Kafka.
    pub kafka_brokers: Option<String>,
    /// `HUB_KAFKA_TOPIC` (`hub.registry.events`).
    pub kafka_topic: String,
    /// `HUB_KAFKA_PARTITIONS`: partitions of the topic when this server
    /// creates it (6); an existing topic keeps its own.
    pub kafka_partitions: i32,
    /// `HUB_OUTBOX_RETENTION_SECS`: how long an event stays in the outbox
    /// after it was written, once every bus has it (1 day).
    pub outbox_retention_secs: u64,
    /// `HUB_OUTBOX_POLL_MS`: how often an idle relay looks for events
    /// written through other replicas (20 ms).
    pub outbox_poll_ms: u64,
    /// `HUB_OUTBOX_BATCH`: most events a relay publishes at once (256).
    pub outbox_batch: u32,
    /// `HUB_REPLICA_ID`: this replica's name in the `hub-origin` header
    /// (default: a random UUID per start).
    pub replica_id: Option<String>,
    /// `HUB_EMBEDDED_EVENT_QUEUE`: events an embedded-mode publisher holds
    /// while its bus is unreachable before it drops the newest (10,000).
    pub embedded_event_queue: usize,
}

/// PostgreSQL settings (`POSTGRES_*` of the deployment guide, plus `HUB_PG_*`).
#[derive(Debug, Deserialize)]
pub struct PostgresSettings {
    /// `POSTGRES_HOST`; unset or empty runs the embedded in-memory store.
    pub host: Option<String>,
    /// `POSTGRES_PORT`.
    pub port: u16,
    /// `POSTGRES_DB`.
    pub db: String,
    /// `POSTGRES_USER`: the login the server acts as; must not be a superuser
    /// nor have BYPASSRLS.
    pub user: String,
    /// `POSTGRES_PASSWORD`.
    pub password: Option<SecretString>,
    /// `HUB_RELAY_PG_USER`: the login the outbox relay acts as (reading
    /// every tenant's events, marking, setting aside, pruning); a member of
    /// `central_hub_relay`. Unset or empty: `POSTGRES_USER`, which must then
    /// be a member of both group roles (a single-login set-up).
    pub relay_user: Option<String>,
    /// `HUB_RELAY_PG_PASSWORD`: its password. Unset: `POSTGRES_PASSWORD`
    /// when the relay uses `POSTGRES_USER`, else none.
    pub relay_password: Option<SecretString>,
    /// `HUB_PG_POOL_SIZE`: connections in the pool.
    pub pool_size: usize,
    /// `HUB_PG_STATEMENT_TIMEOUT_MS`: longest statement and longest wait for a
    /// connection; beyond it requests get 503 `store_unavailable`. Every
    /// call also has a client-side deadline of this plus 1 s, which holds
    /// when PostgreSQL does not answer at all.
    pub statement_timeout_ms: u64,
    /// `HUB_PG_TENANT_MAX_CONNECTIONS`: pooled connections one tenant's
    /// requests may hold at once (unset or 0: a quarter of the pool, at
    /// least 1). Past it the tenant's requests queue, then get 503.
    pub tenant_max_connections: usize,
    /// `HUB_PG_WRITERS`: transactions of grouped registrations and lease
    /// renewals in flight at once (group commit; each holds a pooled
    /// connection while it runs; at most `HUB_PG_POOL_SIZE` - 1, so lookups
    /// always find a connection). 0: every change commits on its own.
    pub writers: usize,
    /// `HUB_PG_WRITE_BATCH`: most changes one grouped transaction carries
    /// (at most a quarter of them of one tenant). 1: no grouping.
    pub write_batch: usize,
    /// `HUB_MIGRATE_ON_START=true` applies pending migrations at start (the
    /// server's role then needs to own the schema: development setups).
    pub migrate_on_start: bool,
    /// `HUB_ALLOW_RLS_BYPASS=true` lets the server start as a superuser or
    /// BYPASSRLS role (development only; warned at every start).
    pub allow_rls_bypass: bool,
    /// `HUB_PG_STARTUP_TIMEOUT_SECS`: how long start-up keeps retrying an
    /// unreachable database before giving up.
    pub startup_timeout_secs: u64,
    /// `HUB_LOOKUP_CACHE_MS`: how long a service lookup may be answered from
    /// memory while the change listener is not connected (changes made
    /// through this replica show at once; through another, within this
    /// time). 0 turns the cache off.
    pub lookup_cache_ms: u64,
    /// `HUB_LOOKUP_CACHE_LISTEN_MS`: how long a service lookup may be
    /// answered from memory while the change listener is connected (every
    /// change of every replica then drops the answer as it commits): a
    /// safety bound (60000). 0 runs no listener (`HUB_LOOKUP_CACHE_MS`
    /// always applies). At least `HUB_LOOKUP_CACHE_MS`, at most 3600000.
    pub lookup_cache_listen_ms: u64,
    /// `HUB_LOOKUP_CACHE_ENTRIES`: services whose lookups are cached at
    /// most (50000); past it a sixteenth is evicted. At least 1.
    pub lookup_cache_entries: usize,
    /// `HUB_METRICS_RETENTION_DAYS`: days of heartbeat metrics
    /// (`health_metrics`) kept; older rows are pruned in batches (7). 0
    /// keeps them forever.
    pub metrics_retention_days: u32,
}

/// HTTP listener settings.
#[derive(Debug, Deserialize)]
pub struct ServerSettings {
    /// `HUB_BIND`, default `0.0.0.0:7000`. Port 0 picks a free port.
    pub bind: String,
    /// Seconds in-flight requests get to finish at shutdown.
    pub shutdown_timeout_secs: u64,
    /// HTTP worker threads; `None` = one per core.
    pub workers: Option<usize>,
    /// `HUB_BODY_TIMEOUT_SECS`: how long a request body may take to arrive
    /// in full before the request gets 408 and its connection is closed.
    pub body_timeout_secs: u64,
    /// `HUB_REQUEST_METRICS` (`on`, default, or `off`): whether requests are
    /// counted and timed for the dashboard and `/metrics` (off only to
    /// measure what they cost: `cargo xtask bench`).
    pub request_metrics: bool,
    /// `HUB_METRICS_MAX_TENANTS` (100): tenants with figures and Prometheus
    /// labels of their own; later tenants are pooled under `other`.
    pub metrics_max_tenants: usize,
}

/// Log format (`HUB_LOG_FORMAT`). The level comes from `RUST_LOG`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Log settings.
#[derive(Debug, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Authentication settings.
#[derive(Debug, Deserialize)]
pub struct AuthSettings {
    /// `DISABLE_AUTH=true` opens every endpoint (development only).
    pub disabled: bool,
    /// `CENTRAL_HUB_API_KEYS`: `KEY` or `KEY:tenant1|tenant2`, comma-separated.
    pub api_keys: SecretString,
}

/// Lease reaper settings.
#[derive(Debug, Deserialize)]
pub struct LeaseSettings {
    /// How often expired leases are looked for, in milliseconds.
    pub reap_interval_ms: u64,
    /// `HUB_METRICS_SAMPLE_SECS`: with Dragonfly, heartbeat metrics are kept
    /// there and written to PostgreSQL at most once per instance per this
    /// many seconds (60).
    pub metrics_sample_secs: u64,
    /// `HUB_MASS_EXPIRY_RATIO`: share of a tenant's instances whose leases
    /// must run out at one pass to hold their removal (0.5; 1 turns the
    /// protection off).
    pub mass_expiry_ratio: f64,
    /// `HUB_MASS_EXPIRY_MIN`: fewest run-out instances that count (5).
    pub mass_expiry_min: usize,
    /// `HUB_MASS_EXPIRY_GRACE_SECS`: how long after its lease ran out a held
    /// instance is removed anyway (900).
    pub mass_expiry_grace_secs: u64,
}

impl LeaseSettings {
    /// The mass-expiry rule these settings give.
    pub fn mass_expiry(&self) -> hub_core::MassExpiry {
        hub_core::MassExpiry::new(
            self.mass_expiry_ratio,
            self.mass_expiry_min,
            chrono::Duration::seconds(
                i64::try_from(self.mass_expiry_grace_secs).unwrap_or(i64::MAX / 1_000_000),
            ),
        )
    }
}

/// Environment variables and the settings keys they set. The names are those
/// of the original deployment guide, honoured exactly.
const ENV_KEYS: &[(&str, &str)] = &[
    ("NATS_URL", "events.nats_url"),
    ("NATS_USER", "events.nats_user"),
    ("NATS_PASSWORD", "events.nats_password"),
    ("NATS_TOKEN", "events.nats_token"),
    ("HUB_NATS_SUBJECT_PREFIX", "events.nats_subject_prefix"),
    ("HUB_NATS_STREAM", "events.nats_stream"),
    (
        "HUB_NATS_STREAM_MAX_AGE_SECS",
        "events.nats_stream_max_age_secs",
    ),
    ("KAFKA_BROKERS", "events.kafka_brokers"),
    ("HUB_KAFKA_TOPIC", "events.kafka_topic"),
    ("HUB_KAFKA_PARTITIONS", "events.kafka_partitions"),
    ("HUB_OUTBOX_RETENTION_SECS", "events.outbox_retention_secs"),
    ("HUB_OUTBOX_POLL_MS", "events.outbox_poll_ms"),
    ("HUB_OUTBOX_BATCH", "events.outbox_batch"),
    ("HUB_REPLICA_ID", "events.replica_id"),
    ("HUB_EMBEDDED_EVENT_QUEUE", "events.embedded_event_queue"),
    ("HUB_WORKERS", "server.workers"),
    ("HUB_LOOKUP_CACHE_MS", "postgres.lookup_cache_ms"),
    (
        "HUB_LOOKUP_CACHE_LISTEN_MS",
        "postgres.lookup_cache_listen_ms",
    ),
    ("HUB_LOOKUP_CACHE_ENTRIES", "postgres.lookup_cache_entries"),
    (
        "HUB_METRICS_RETENTION_DAYS",
        "postgres.metrics_retention_days",
    ),
    ("POSTGRES_HOST", "postgres.host"),
    ("POSTGRES_PORT", "postgres.port"),
    ("POSTGRES_DB", "postgres.db"),
    ("POSTGRES_USER", "postgres.user"),
    ("POSTGRES_PASSWORD", "postgres.password"),
    ("HUB_RELAY_PG_USER", "postgres.relay_user"),
    ("HUB_RELAY_PG_PASSWORD", "postgres.relay_password"),
    ("HUB_PG_POOL_SIZE", "postgres.pool_size"),
    (
        "HUB_PG_STATEMENT_TIMEOUT_MS",
        "postgres.statement_timeout_ms",
    ),
    (
        "HUB_PG_TENANT_MAX_CONNECTIONS",
        "postgres.tenant_max_connections",
    ),
    ("HUB_PG_WRITERS", "postgres.writers"),
    ("HUB_PG_WRITE_BATCH", "postgres.write_batch"),
    ("HUB_MIGRATE_ON_START", "postgres.migrate_on_start"),
    ("HUB_ALLOW_RLS_BYPASS", "postgres.allow_rls_bypass"),
    (
        "HUB_PG_STARTUP_TIMEOUT_SECS",
        "postgres.startup_timeout_secs",
    ),
    ("HUB_BIND", "server.bind"),
    ("HUB_LOG_FORMAT", "log.format"),
    ("CENTRAL_HUB_API_KEYS", "auth.api_keys"),
    ("DISABLE_AUTH", "auth.disabled"),
    ("HUB_REAP_INTERVAL_MS", "leases.reap_interval_ms"),
    ("HUB_METRICS_SAMPLE_SECS", "leases.metrics_sample_secs"),
    ("HUB_MASS_EXPIRY_RATIO", "leases.mass_expiry_ratio"),
    ("HUB_MASS_EXPIRY_MIN", "leases.mass_expiry_min"),
    (
        "HUB_MASS_EXPIRY_GRACE_SECS",
        "leases.mass_expiry_grace_secs",
    ),
    ("HUB_SHUTDOWN_TIMEOUT_SECS", "server.shutdown_timeout_secs"),
    ("HUB_BODY_TIMEOUT_SECS", "server.body_timeout_secs"),
    ("HUB_REQUEST_METRICS", "server.request_metrics"),
    ("HUB_METRICS_MAX_TENANTS", "server.metrics_max_tenants"),
    ("DRAGONFLY_HOST", "dragonfly.host"),
    ("DRAGONFLY_PORT", "dragonfly.port"),
    ("DRAGONFLY_PASSWORD", "dragonfly.password"),
    ("HUB_DRAGONFLY_USERNAME", "dragonfly.username"),
    ("HUB_DRAGONFLY_DB", "dragonfly.db"),
    ("HUB_DRAGONFLY_TIMEOUT_MS", "dragonfly.timeout_ms"),
    ("HUB_DRAGONFLY_TLS", "dragonfly.tls"),
    ("HUB_DRAGONFLY_TLS_CA_FILE", "dragonfly.tls_ca_file"),
    ("HUB_RATE_LIMIT_RPS", "rate_limits.rps"),
    ("HUB_RATE_LIMIT_BURST", "rate_limits.burst"),
    ("HUB_RATE_LIMIT_KEY_RPS", "rate_limits.key_rps"),
    ("HUB_RATE_LIMIT_KEY_BURST", "rate_limits.key_burst"),
    ("HUB_MONITOR_INTERVAL_MS", "monitor.interval_ms"),
    ("HUB_MONITOR_TIMEOUT_MS", "monitor.timeout_ms"),
    ("HUB_TENANTS_MODE", "tenancy.mode"),
    ("HUB_JWT_SECRET", "tenancy.jwt_secret"),
    ("HUB_JWT_JWKS_PATH", "tenancy.jwt_jwks_path"),
    ("HUB_JWT_ISSUER", "tenancy.jwt_issuer"),
    ("HUB_JWT_AUDIENCE", "tenancy.jwt_audience"),
    ("HUB_JWT_TENANT_CLAIM", "tenancy.jwt_tenant_claim"),
    ("HUB_JWT_LEEWAY_SECS", "tenancy.jwt_leeway_secs"),
    ("HUB_KEY_USE_FLUSH_SECS", "tenancy.key_use_flush_secs"),
    ("HUB_USAGE_FLUSH_SECS", "usage.flush_secs"),
    ("HUB_AUDIT_RETENTION_DAYS", "usage.audit_retention_days"),
    ("HUB_WATCH_KEEPALIVE_SECS", "watch.keepalive_secs"),
    ("HUB_WATCH_HISTORY", "watch.history"),
    ("HUB_WATCH_BUFFER", "watch.buffer"),
    ("HUB_WATCH_MAX_PER_TENANT", "watch.max_per_tenant"),
    ("HUB_WATCH_MAX_PER_KEY", "watch.max_per_key"),
    ("HUB_BLOCKING_MAX_WAIT_SECS", "watch.max_wait_secs"),
];

impl Settings {
    /// Builds settings from built-in defaults, then the TOML file named by
    /// `HUB_CONFIG` (if set), then the environment variables in `env`.
    /// Tests pass their own map instead of touching the process environment.
    pub fn load(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = Config::builder()
            .set_default("server.bind", "0.0.0.0:7000")?
            .set_default("server.shutdown_timeout_secs", 30)?
            .set_default("server.body_timeout_secs", 10)?
            .set_default("server.request_metrics", true)?
            .set_default("server.metrics_max_tenants", 100)?
            .set_default("log.format", "text")?
            .set_default("auth.disabled", false)?
            .set_default("auth.api_keys", "")?
            .set_default("leases.reap_interval_ms", 1000)?
            .set_default("leases.metrics_sample_secs", 60)?
            .set_default("leases.mass_expiry_ratio", 0.5)?
            .set_default("leases.mass_expiry_min", 5)?
            .set_default("leases.mass_expiry_grace_secs", 900)?
            .set_default("postgres.port", 5432)?
            .set_default("postgres.db", "central_hub")?
            .set_default("postgres.user", "central_hub")?
            .set_default("postgres.pool_size", 16)?
            .set_default("postgres.statement_timeout_ms", 5000)?
            .set_default("postgres.tenant_max_connections", 0)?
            .set_default("postgres.writers", 2)?
            .set_default("postgres.write_batch", 256)?
            .set_default("postgres.migrate_on_start", false)?
            .set_default("postgres.allow_rls_bypass", false)?
            .set_default("postgres.startup_timeout_secs", 60)?
            .set_default("postgres.lookup_cache_ms", 500)?
            .set_default("postgres.lookup_cache_listen_ms", 60_000)?
            .set_default("postgres.lookup_cache_entries", 50_000)?
            .set_default("postgres.metrics_retention_days", 7)?
            .set_default("events.nats_subject_prefix", "hub")?
            .set_default("events.nats_stream", "HUB_REGISTRY")?
            .set_default("events.nats_stream_max_age_secs", 7 * 24 * 60 * 60)?
            .set_default("events.kafka_topic", "hub.registry.events")?
            .set_default("events.kafka_partitions", 6)?
            .set_default("events.outbox_retention_secs", 24 * 60 * 60)?
            .set_default("events.outbox_poll_ms", 20)?
            .set_default("events.outbox_batch", 256)?
            .set_default("events.embedded_event_queue", 10_000)?
            .set_default("dragonfly.port", "6379")?
            .set_default("dragonfly.timeout_ms", 250)?
            .set_default("dragonfly.tls", false)?
            .set_default("rate_limits.rps", 20_000)?
            .set_default("rate_limits.burst", 40_000)?
            .set_default("rate_limits.key_rps", 20_000)?
            .set_default("rate_limits.key_burst", 40_000)?
            .set_default("monitor.interval_ms", 10_000)?
            .set_default("monitor.timeout_ms", 2_000)?
            .set_default("tenancy.mode", "open")?
            .set_default("tenancy.jwt_tenant_claim", "tenant_id")?
            .set_default("tenancy.jwt_leeway_secs", 30)?
            .set_default("tenancy.key_use_flush_secs", 10)?
            .set_default("usage.flush_secs", 10)?
            .set_default("usage.audit_retention_days", 90)?
            .set_default("watch.keepalive_secs", 15)?
            .set_default("watch.history", 64)?
            .set_default("watch.buffer", 1024)?
            .set_default("watch.max_per_tenant", 1000)?
            .set_default("watch.max_per_key", 1000)?
            .set_default("watch.max_wait_secs", 600)?;
        if let Some(path) = env.get("HUB_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(File::new(path, FileFormat::Toml).required(true));
        }
        for &(var, key) in ENV_KEYS {
            if let Some(value) = env.get(var) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        if settings.postgres.lookup_cache_ms > 1000 {
            return Err(ConfigError::Message(
                "HUB_LOOKUP_CACHE_MS must be at most 1000: a change must reach every replica within 1 s"
                    .into(),
            ));
        }
        let listen_ms = settings.postgres.lookup_cache_listen_ms;
        if listen_ms != 0 && !(settings.postgres.lookup_cache_ms..=3_600_000).contains(&listen_ms) {
            return Err(ConfigError::Message(
                "HUB_LOOKUP_CACHE_LISTEN_MS must be 0 (no change listener) or between HUB_LOOKUP_CACHE_MS and 3600000"
                    .into(),
            ));
        }
        if settings.postgres.lookup_cache_entries == 0 {
            return Err(ConfigError::Message(
                "HUB_LOOKUP_CACHE_ENTRIES must be at least 1 (HUB_LOOKUP_CACHE_MS=0 turns the cache off)"
                    .into(),
            ));
        }
        if settings.postgres.pool_size == 0 || settings.postgres.statement_timeout_ms == 0 {
            return Err(ConfigError::Message(
                "HUB_PG_POOL_SIZE and HUB_PG_STATEMENT_TIMEOUT_MS must be at least 1".into(),
            ));
        }
        if settings.postgres.write_batch == 0 {
            return Err(ConfigError::Message(
                "HUB_PG_WRITE_BATCH must be at least 1 (1 commits every change on its own)".into(),
            ));
        }
        let events = &settings.events;
        if events.kafka_partitions < 1
            || events.outbox_poll_ms == 0
            || events.outbox_batch == 0
            || events.embedded_event_queue == 0
        {
            return Err(ConfigError::Message(
                "HUB_KAFKA_PARTITIONS, HUB_OUTBOX_POLL_MS, HUB_OUTBOX_BATCH and HUB_EMBEDDED_EVENT_QUEUE must be at least 1".into(),
            ));
        }
        if settings.server.body_timeout_secs == 0 {
            return Err(ConfigError::Message(
                "HUB_BODY_TIMEOUT_SECS must be at least 1".into(),
            ));
        }
        if settings.server.metrics_max_tenants == 0 {
            return Err(ConfigError::Message(
                "HUB_METRICS_MAX_TENANTS must be at least 1".into(),
            ));
        }
        settings.watch.check()?;
        settings.dragonfly.client_config()?;
        settings.rate_limits.policy()?;
        if settings.leases.reap_interval_ms == 0 {
            return Err(ConfigError::Message(
                "leases.reap_interval_ms (HUB_REAP_INTERVAL_MS) must be at least 1".into(),
            ));
        }
        let leases = &settings.leases;
        if leases.metrics_sample_secs == 0 {
            return Err(ConfigError::Message(
                "HUB_METRICS_SAMPLE_SECS must be at least 1".into(),
            ));
        }
        if !(leases.mass_expiry_ratio > 0.0 && leases.mass_expiry_ratio <= 1.0) {
            return Err(ConfigError::Message(format!(
                "HUB_MASS_EXPIRY_RATIO must be a share above 0 and at most 1 (1 turns the protection off; got {})",
                leases.mass_expiry_ratio
            )));
        }
        let monitor = &settings.monitor;
        if monitor.interval_ms == 0
            || monitor.timeout_ms == 0
            || monitor.timeout_ms > monitor.interval_ms
        {
            return Err(ConfigError::Message(format!(
                "HUB_MONITOR_INTERVAL_MS and HUB_MONITOR_TIMEOUT_MS must be at least 1, the timeout at most the interval (got {} and {})",
                monitor.interval_ms, monitor.timeout_ms
            )));
        }
        if settings.usage.flush_secs == 0 || settings.usage.audit_retention_days == 0 {
            return Err(ConfigError::Message(
                "HUB_USAGE_FLUSH_SECS and HUB_AUDIT_RETENTION_DAYS must be at least 1".into(),
            ));
        }
        if leases.mass_expiry_grace_secs > 366 * 24 * 60 * 60 {
            return Err(ConfigError::Message(
                "HUB_MASS_EXPIRY_GRACE_SECS must be at most a year (31622400)".into(),
            ));
        }
        settings.tenancy.validate()?;
        Ok(settings)
    }

    /// Settings from the process environment.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::load(&std::env::vars().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let s = Settings::load(&env(&[])).unwrap();
        assert_eq!(s.server.bind, "0.0.0.0:7000");
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(!s.auth.disabled);
        assert_eq!(s.auth.api_keys.expose_secret(), "");
        assert_eq!(s.leases.reap_interval_ms, 1000);
        assert_eq!(s.server.body_timeout_secs, 10);
    }

    #[test]
    fn tenancy_settings_default_and_refuse_bad_values() {
        let s = Settings::load(&env(&[])).unwrap();
        assert_eq!(
            s.tenancy.tenants_mode().unwrap(),
            hub_http::TenantsMode::Open
        );
        assert_eq!(s.tenancy.jwt_tenant_claim, "tenant_id");
        assert_eq!(s.tenancy.jwt_leeway_secs, 30);
        assert_eq!(s.tenancy.key_use_flush_secs, 10);
        assert!(s.tenancy.jwt_secret.is_none());
        let s = Settings::load(&env(&[("HUB_TENANTS_MODE", "registered")])).unwrap();
        assert_eq!(
            s.tenancy.tenants_mode().unwrap(),
            hub_http::TenantsMode::Registered
        );
        for (var, value) in [
            ("HUB_TENANTS_MODE", "closed"),
            ("HUB_JWT_SECRET", "short"),
            ("HUB_JWT_TENANT_CLAIM", " "),
            ("HUB_JWT_LEEWAY_SECS", "301"),
            ("HUB_KEY_USE_FLUSH_SECS", "0"),
        ] {
            let err = Settings::load(&env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
        let secret = "0123456789abcdef0123456789abcdef";
        let s = Settings::load(&env(&[("HUB_JWT_SECRET", secret)])).unwrap();
        assert!(!format!("{:?}", s.tenancy).contains(secret));
    }

    #[test]
    fn request_metrics_switch_and_tenant_cap() {
        let s = Settings::load(&env(&[])).unwrap();
        assert!(s.server.request_metrics);
        assert_eq!(s.server.metrics_max_tenants, 100);
        let s = Settings::load(&env(&[
            ("HUB_REQUEST_METRICS", "off"),
            ("HUB_METRICS_MAX_TENANTS", "2"),
        ]))
        .unwrap();
        assert!(!s.server.request_metrics);
        assert_eq!(s.server.metrics_max_tenants, 2);
        let err = Settings::load(&env(&[("HUB_METRICS_MAX_TENANTS", "0")])).unwrap_err();
        assert!(err.to_string().contains("HUB_METRICS_MAX_TENANTS"), "{err}");
    }

    #[test]
    fn body_timeout_is_set_and_never_zero() {
        let s = Settings::load(&env(&[("HUB_BODY_TIMEOUT_SECS", "3")])).unwrap();
        assert_eq!(s.server.body_timeout_secs, 3);
        let err = Settings::load(&env(&[("HUB_BODY_TIMEOUT_SECS", "0")])).unwrap_err();
        assert!(err.to_string().contains("HUB_BODY_TIMEOUT_SECS"), "{err}");
    }

    #[test]
    fn environment_variables_override_with_their_documented_names() {
        let s = Settings::load(&env(&[
            ("HUB_BIND", "127.0.0.1:0"),
            ("HUB_LOG_FORMAT", "json"),
            ("DISABLE_AUTH", "true"),
            ("CENTRAL_HUB_API_KEYS", "k1,k2:t1"),
        ]))
        .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:0");
        assert_eq!(s.log.format, LogFormat::Json);
        assert!(s.auth.disabled);
        assert_eq!(s.auth.api_keys.expose_secret(), "k1,k2:t1");
    }

    #[test]
    fn file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("hub-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("central-hub.toml");
        std::fs::write(
            &path,
            "[server]\nbind = \"127.0.0.1:7100\"\n[leases]\nreap_interval_ms = 250\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::load(&env(&[("HUB_CONFIG", p)])).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:7100");
        assert_eq!(s.leases.reap_interval_ms, 250);
        let s = Settings::load(&env(&[("HUB_CONFIG", p), ("HUB_BIND", "127.0.0.1:7200")])).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:7200");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Settings::load(&env(&[("HUB_LOG_FORMAT", "xml")])).is_err());
        assert!(Settings::load(&env(&[("DISABLE_AUTH", "maybe")])).is_err());
        assert!(Settings::load(&env(&[("HUB_REAP_INTERVAL_MS", "0")])).is_err());
        assert!(Settings::load(&env(&[("HUB_CONFIG", "/nonexistent/hub.toml")])).is_err());
    }

    #[test]
    fn monitor_variables_defaults_and_refusals() {
        let d = Settings::load(&env(&[])).unwrap().monitor;
        assert_eq!(d.interval(), Duration::from_secs(10));
        assert_eq!(d.timeout(), Duration::from_secs(2));
        let s = Settings::load(&env(&[
            ("HUB_MONITOR_INTERVAL_MS", "200"),
            ("HUB_MONITOR_TIMEOUT_MS", "150"),
        ]))
        .unwrap()
        .monitor;
        assert_eq!((s.interval_ms, s.timeout_ms), (200, 150));
        for pairs in [
            [
                ("HUB_MONITOR_INTERVAL_MS", "0"),
                ("HUB_MONITOR_TIMEOUT_MS", "0"),
            ],
            [
                ("HUB_MONITOR_INTERVAL_MS", "100"),
                ("HUB_MONITOR_TIMEOUT_MS", "0"),
            ],
            [
                ("HUB_MONITOR_INTERVAL_MS", "100"),
                ("HUB_MONITOR_TIMEOUT_MS", "101"),
            ],
            [
                ("HUB_MONITOR_INTERVAL_MS", "-5"),
                ("HUB_MONITOR_TIMEOUT_MS", "1"),
            ],
        ] {
            let error = Settings::load(&env(&pairs)).unwrap_err().to_string();
            assert!(
                error.contains("monitor") || error.contains("MONITOR"),
                "{pairs:?}: {error}"
            );
        }
    }

    #[test]
    fn lease_variables_defaults_and_refusals() {
        let d = Settings::load(&env(&[])).unwrap().leases;
        assert_eq!(d.metrics_sample_secs, 60);
        assert_eq!(d.mass_expiry(), hub_core::MassExpiry::default());
        let s = Settings::load(&env(&[
            ("HUB_METRICS_SAMPLE_SECS", "5"),
            ("HUB_MASS_EXPIRY_RATIO", "0.8"),
            ("HUB_MASS_EXPIRY_MIN", "3"),
            ("HUB_MASS_EXPIRY_GRACE_SECS", "120"),
        ]))
        .unwrap()
        .leases;
        assert_eq!(s.metrics_sample_secs, 5);
        let policy = s.mass_expiry();
        assert_eq!((policy.ratio, policy.min), (0.8, 3));
        assert_eq!(policy.grace, chrono::Duration::seconds(120));
        for (var, bad) in [
            ("HUB_METRICS_SAMPLE_SECS", "0"),
            ("HUB_MASS_EXPIRY_RATIO", "0"),
            ("HUB_MASS_EXPIRY_RATIO", "1.5"),
            ("HUB_MASS_EXPIRY_RATIO", "NaN"),
            ("HUB_MASS_EXPIRY_MIN", "-1"),
            ("HUB_MASS_EXPIRY_GRACE_SECS", "99999999999"),
        ] {
            let error = Settings::load(&env(&[(var, bad)])).unwrap_err().to_string();
            assert!(
                error.contains(var) || error.contains("mass_expiry"),
                "{var}={bad}: {error}"
            );
        }
    }

    #[test]
    fn dragonfly_variables_of_the_guide() {
        let s = Settings::load(&env(&[])).unwrap();
        assert!(s.dragonfly.client_config().unwrap().is_none());
        let s = Settings::load(&env(&[
            ("DRAGONFLY_HOST", "cache.internal"),
            ("DRAGONFLY_PORT", "6380"),
            ("DRAGONFLY_PASSWORD", "df-secret"),
            ("HUB_DRAGONFLY_USERNAME", "hub"),
            ("HUB_DRAGONFLY_DB", "3"),
        ]))
        .unwrap();
        let c = s.dragonfly.client_config().unwrap().unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.db),
            ("cache.internal", 6380, Some(3))
        );
        assert_eq!(c.username.as_deref(), Some("hub"));
        assert_eq!(c.password.as_deref(), Some("df-secret"));
        assert_eq!(c.command_timeout, Duration::from_millis(250));
        assert!(!format!("{s:?}").contains("df-secret"));
        assert!(!format!("{c:?}").contains("df-secret"));
        // A malformed setting stops start-up naming its variable.
        for (var, value) in [
            ("DRAGONFLY_PORT", "sixty"),
            ("DRAGONFLY_PORT", "70000"),
            ("HUB_DRAGONFLY_DB", "256"),
            ("DRAGONFLY_HOST", "rediss://user:pw@cache:6379"),
            ("DRAGONFLY_HOST", "rediss://cache:6379/0"),
            ("DRAGONFLY_HOST", "http://cache"),
            ("DRAGONFLY_HOST", "rediss://cache:port"),
            ("HUB_DRAGONFLY_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ] {
            let pairs = if var == "DRAGONFLY_HOST" {
                vec![(var, value)]
            } else {
                vec![("DRAGONFLY_HOST", "cache"), (var, value)]
            };
            let err = Settings::load(&env(&pairs)).unwrap_err().to_string();
            let named =
                err.contains(var) || (var == "DRAGONFLY_HOST" && err.contains("DRAGONFLY_PORT"));
            assert!(named, "{var}={value}: {err}");
        }
        // TLS: by URL (its port wins) or by variable; plain by default.
        let tls = |pairs: &[(&str, &str)]| {
            let c = Settings::load(&env(pairs))
                .unwrap()
                .dragonfly
                .client_config()
                .unwrap()
                .unwrap();
            (c.host, c.port, c.tls.is_some())
        };
        assert_eq!(
            tls(&[
                ("DRAGONFLY_HOST", "rediss://cache.internal:6390"),
                ("DRAGONFLY_PORT", "1")
            ]),
            ("cache.internal".to_owned(), 6390, true)
        );
        assert_eq!(
            tls(&[("DRAGONFLY_HOST", "rediss://cache.internal")]),
            ("cache.internal".to_owned(), 6379, true)
        );
        assert_eq!(
            tls(&[("DRAGONFLY_HOST", "redis://cache.internal:6391")]),
            ("cache.internal".to_owned(), 6391, false)
        );
        assert_eq!(
            tls(&[("DRAGONFLY_HOST", "cache"), ("HUB_DRAGONFLY_TLS", "true")]),
            ("cache".to_owned(), 6379, true)
        );
        assert_eq!(
            tls(&[("DRAGONFLY_HOST", "10.0.0.5")]),
            ("10.0.0.5".to_owned(), 6379, false)
        );
    }

    #[test]
    fn rate_limit_defaults_variables_and_tenant_overrides() {
        let s = Settings::load(&env(&[])).unwrap();
        let p = s.rate_limits.policy().unwrap();
        assert_eq!(
            p.tenant,
            Quota {
                rate: 20_000,
                burst: 40_000
            }
        );
        assert_eq!(
            p.key,
            Quota {
                rate: 20_000,
                burst: 40_000
            }
        );
        let s = Settings::load(&env(&[
            ("HUB_RATE_LIMIT_RPS", "0"),
            ("HUB_RATE_LIMIT_KEY_RPS", "5"),
            ("HUB_RATE_LIMIT_KEY_BURST", "7"),
        ]))
        .unwrap();
        let p = s.rate_limits.policy().unwrap();
        assert_eq!(p.tenant.rate, 0);
        assert_eq!(p.key, Quota { rate: 5, burst: 7 });
        let err = Settings::load(&env(&[("HUB_RATE_LIMIT_BURST", "0")])).unwrap_err();
        assert!(err.to_string().contains("HUB_RATE_LIMIT_BURST"), "{err}");

        let dir = std::env::temp_dir().join(format!("hub-rl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.toml");
        std::fs::write(
            &path,
            "[rate_limits.tenants.acme]\nrate = 500\nburst = 1000\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::load(&env(&[("HUB_CONFIG", p)])).unwrap();
        let policy = s.rate_limits.policy().unwrap();
        assert_eq!(
            policy.overrides.get(&TenantId::parse("acme").unwrap()),
            Some(&Quota {
                rate: 500,
                burst: 1000
            })
        );
        std::fs::write(
            &path,
            "[rate_limits.tenants.\"a b\"]\nrate = 1\nburst = 1\n",
        )
        .unwrap();
        let err = Settings::load(&env(&[("HUB_CONFIG", p)])).unwrap_err();
        assert!(err.to_string().contains("rate_limits.tenants.a b"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn event_variables() {
        let s = Settings::load(&env(&[])).unwrap();
        assert_eq!(s.events.nats_url, None);
        assert_eq!(s.events.kafka_brokers, None);
        assert_eq!(s.events.kafka_topic, "hub.registry.events");
        assert_eq!(s.events.kafka_partitions, 6);
        assert_eq!(s.events.nats_subject_prefix, "hub");
        let s = Settings::load(&env(&[
            ("NATS_URL", "nats://a:4222,nats://b:4222"),
            ("NATS_PASSWORD", "nats-secret"),
            ("KAFKA_BROKERS", "k1:9092"),
            ("HUB_KAFKA_PARTITIONS", "12"),
            ("HUB_OUTBOX_RETENTION_SECS", "60"),
        ]))
        .unwrap();
        assert_eq!(
            s.events.nats_url.as_deref(),
            Some("nats://a:4222,nats://b:4222")
        );
        assert_eq!(s.events.kafka_brokers.as_deref(), Some("k1:9092"));
        assert_eq!(s.events.kafka_partitions, 12);
        assert_eq!(s.events.outbox_retention_secs, 60);
        assert!(!format!("{s:?}").contains("nats-secret"));
        assert!(Settings::load(&env(&[("HUB_KAFKA_PARTITIONS", "0")])).is_err());
        assert!(Settings::load(&env(&[("HUB_OUTBOX_BATCH", "0")])).is_err());
    }

    #[test]
    fn postgres_variables_of_the_guide() {
        let s = Settings::load(&env(&[])).unwrap();
        assert_eq!(s.postgres.host, None);
        let s = Settings::load(&env(&[
            ("POSTGRES_HOST", "db.internal"),
            ("POSTGRES_PORT", "6543"),
            ("POSTGRES_DB", "hub"),
            ("POSTGRES_USER", "hub_app"),
            ("POSTGRES_PASSWORD", "pw-secret"),
            ("HUB_MIGRATE_ON_START", "true"),
        ]))
        .unwrap();
        assert_eq!(s.postgres.host.as_deref(), Some("db.internal"));
        assert_eq!(s.postgres.port, 6543);
        assert_eq!(s.postgres.db, "hub");
        assert_eq!(s.postgres.user, "hub_app");
        assert!(s.postgres.migrate_on_start);
        assert!(!s.postgres.allow_rls_bypass);
        assert!(!format!("{s:?}").contains("pw-secret"));
        assert!(Settings::load(&env(&[("POSTGRES_PORT", "99999")])).is_err());
        assert_eq!(
            s.postgres.tenant_max_connections, 0,
            "0: a quarter of the pool"
        );
        let s = Settings::load(&env(&[("HUB_PG_TENANT_MAX_CONNECTIONS", "3")])).unwrap();
        assert_eq!(s.postgres.tenant_max_connections, 3);
        assert_eq!(s.postgres.lookup_cache_ms, 500);
        assert!(Settings::load(&env(&[("HUB_LOOKUP_CACHE_MS", "1001")])).is_err());
        assert!(Settings::load(&env(&[("HUB_LOOKUP_CACHE_MS", "0")])).is_ok());
        assert_eq!(s.postgres.lookup_cache_listen_ms, 60_000);
        assert_eq!(s.postgres.lookup_cache_entries, 50_000);
        let s = Settings::load(&env(&[
            ("HUB_LOOKUP_CACHE_LISTEN_MS", "5000"),
            ("HUB_LOOKUP_CACHE_ENTRIES", "200000"),
        ]))
        .unwrap();
        assert_eq!(s.postgres.lookup_cache_listen_ms, 5000);
        assert_eq!(s.postgres.lookup_cache_entries, 200_000);
        let s = Settings::load(&env(&[("HUB_LOOKUP_CACHE_LISTEN_MS", "0")])).unwrap();
        assert_eq!(s.postgres.lookup_cache_listen_ms, 0, "0: no listener");
        for bad in [
            // Shorter than the fallback TTL, longer than an hour, not a number.
            [
                ("HUB_LOOKUP_CACHE_LISTEN_MS", "499"),
                ("HUB_LOOKUP_CACHE_MS", "500"),
            ],
            [
                ("HUB_LOOKUP_CACHE_LISTEN_MS", "3600001"),
                ("HUB_LOOKUP_CACHE_MS", "500"),
            ],
            [
                ("HUB_LOOKUP_CACHE_LISTEN_MS", "-1"),
                ("HUB_LOOKUP_CACHE_MS", "500"),
            ],
            [
                ("HUB_LOOKUP_CACHE_ENTRIES", "0"),
                ("HUB_LOOKUP_CACHE_MS", "500"),
            ],
        ] {
            assert!(Settings::load(&env(&bad)).is_err(), "{bad:?}");
        }
        assert!(
            Settings::load(&env(&[
                ("HUB_LOOKUP_CACHE_LISTEN_MS", "1000"),
                ("HUB_LOOKUP_CACHE_MS", "1000")
            ]))
            .is_ok()
        );
        assert_eq!(s.postgres.relay_user, None);
        let s = Settings::load(&env(&[
            ("HUB_RELAY_PG_USER", "hub_relay"),
            ("HUB_RELAY_PG_PASSWORD", "relay-secret"),
        ]))
        .unwrap();
        assert_eq!(s.postgres.relay_user.as_deref(), Some("hub_relay"));
        assert_eq!(
            s.postgres
                .relay_password
                .as_ref()
                .map(|p| p.expose_secret()),
            Some("relay-secret")
        );
        assert!(!format!("{s:?}").contains("relay-secret"));
        assert_eq!(s.postgres.metrics_retention_days, 7);
        let s = Settings::load(&env(&[("HUB_METRICS_RETENTION_DAYS", "30")])).unwrap();
        assert_eq!(s.postgres.metrics_retention_days, 30);
        assert!(Settings::load(&env(&[("HUB_METRICS_RETENTION_DAYS", "-1")])).is_err());
    }

    #[test]
    fn usage_flush_and_audit_retention() {
        let s = Settings::load(&env(&[])).unwrap();
        assert_eq!(s.usage.flush_secs, 10);
        assert_eq!(s.usage.audit_retention_days, 90);
        let s = Settings::load(&env(&[
            ("HUB_USAGE_FLUSH_SECS", "2"),
            ("HUB_AUDIT_RETENTION_DAYS", "30"),
        ]))
        .unwrap();
        assert_eq!((s.usage.flush_secs, s.usage.audit_retention_days), (2, 30));
        for bad in [
            ("HUB_USAGE_FLUSH_SECS", "0"),
            ("HUB_AUDIT_RETENTION_DAYS", "0"),
        ] {
            assert!(Settings::load(&env(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Settings::load(&env(&[("CENTRAL_HUB_API_KEYS", "very-secret")])).unwrap();
        assert!(!format!("{s:?}").contains("very-secret"));
    }

    #[test]
    fn watch_settings_have_documented_defaults_and_refuse_zero() {
        let s = Settings::load(&env(&[])).unwrap();
        let w = &s.watch;
        assert_eq!(
            (
                w.keepalive_secs,
                w.history,
                w.buffer,
                w.max_per_tenant,
                w.max_per_key,
                w.max_wait_secs
            ),
            (15, 64, 1024, 1000, 1000, 600)
        );
        let s = Settings::load(&env(&[
            ("HUB_WATCH_HISTORY", "0"),
            ("HUB_WATCH_MAX_PER_KEY", "7"),
        ]))
        .unwrap();
        assert_eq!((s.watch.history, s.watch.max_per_key), (0, 7));
        for var in [
            "HUB_WATCH_KEEPALIVE_SECS",
            "HUB_WATCH_BUFFER",
            "HUB_WATCH_MAX_PER_TENANT",
            "HUB_WATCH_MAX_PER_KEY",
            "HUB_BLOCKING_MAX_WAIT_SECS",
        ] {
            assert!(Settings::load(&env(&[(var, "0")])).is_err(), "{var}=0");
        }
    }
}
