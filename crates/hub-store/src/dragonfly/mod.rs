//! The DragonflyDB (Redis protocol) client through `fred`, its settings, and the adapters on it (rate limits, heartbeat leases).
//!
//! The client connects in the background and reconnects forever: an
//! unreachable Dragonfly never stops start-up, and the adapters answer
//! "unavailable" at once while it is disconnected (their callers fall back).

pub mod keys;
mod leases;
mod probe;
mod ratelimit;

use std::fmt;
use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config, Pool, ReconnectPolicy, ServerConfig};

pub use leases::{CHUNK, DUE_CAP, DragonflyLeases};
pub use probe::DragonflyProbe;
pub use ratelimit::DragonflyLimiter;

/// How to reach Dragonfly (`DRAGONFLY_*` of the deployment guide, `HUB_DRAGONFLY_*`).
#[derive(Clone)]
pub struct DragonflyConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Logical database (`SELECT`), if not 0.
    pub db: Option<u8>,
    /// ACL user name (with `password`).
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<String>,
    /// Longest wait for one command before it counts as failed.
    pub command_timeout: Duration,
    /// TLS, if the server requires it.
    pub tls: Option<DragonflyTls>,
}

/// TLS to Dragonfly (rustls): the server's certificate is checked against
/// the system's roots, or only against `ca_file` when one is given, and
/// must name the host connected to.
#[derive(Debug, Clone, Default)]
pub struct DragonflyTls {
    /// PEM file of the certificate authorities to trust instead of the
    /// system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl DragonflyTls {
    fn connector(&self) -> Result<fred::types::config::TlsConnector, DragonflyConfigError> {
        use fred::rustls::pki_types::CertificateDer;
        use fred::rustls::pki_types::pem::PemObject;
        let mut roots = fred::rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                    DragonflyConfigError(format!("TLS CA file {}: {e}", path.display()))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        DragonflyConfigError(format!("TLS CA file {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        DragonflyConfigError(format!("TLS CA file {}: {e}", path.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(DragonflyConfigError(format!(
                        "TLS CA file {} holds no certificate",
                        path.display()
                    )));
                }
            }
            None => {
                let native = fred::rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    // A system root rustls cannot parse is skipped, as
                    // every TLS client does.
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = std::sync::Arc::new(fred::rustls::crypto::ring::default_provider());
        let config = fred::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DragonflyConfigError(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(config.into())
    }
}

impl fmt::Debug for DragonflyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DragonflyConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("command_timeout", &self.command_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A connected (or reconnecting) client, cheap to clone.
#[derive(Clone)]
pub struct Dragonfly {
    pool: Pool,
}

/// Connections to Dragonfly: commands go round robin over a few, so that
/// one connection's task does not carry every command of the process.
const POOL_SIZE: usize = 4;

impl fmt::Debug for Dragonfly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dragonfly")
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// The client could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[error("invalid Dragonfly settings: {0}")]
pub struct DragonflyConfigError(String);

impl Dragonfly {
    /// Builds the client and starts connecting in the background; returns at
    /// once, whether Dragonfly is reachable or not. Must run inside a Tokio
    /// runtime.
    pub fn connect(config: &DragonflyConfig) -> Result<Self, DragonflyConfigError> {
        let fred_config = Config {
            server: ServerConfig::new_centralized(config.host.clone(), config.port),
            username: config.username.clone(),
            password: config.password.clone(),
            database: config.db,
            tls: match &config.tls {
                Some(tls) => Some(tls.connector()?.into()),
                None => None,
            },
            // Commands sent while disconnected fail at once rather than wait
            // for a reconnection: the callers have a fallback.
            fail_fast: true,
            ..Config::default()
        };
        let timeout = config.command_timeout;
        let pool = Builder::from_config(fred_config)
            .with_connection_config(|c| {
                c.connection_timeout = timeout.max(Duration::from_millis(500));
                c.internal_command_timeout = timeout.max(Duration::from_millis(500));
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            // Forever (0 attempts = no maximum), 100 ms doubling to 5 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_pool(POOL_SIZE)
            .map_err(|e| DragonflyConfigError(e.to_string()))?;
        let _connections = pool.connect_pool();
        Ok(Self { pool })
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.pool.clients().iter().any(ClientLike::is_connected)
    }

    /// A connected client of the pool (round robin), if any is.
    pub(crate) fn client(&self) -> &Client {
        self.pool.next_connected()
    }
}
