//! `Settings`: layered configuration (defaults, optional `HUB_CONFIG` file, environment variables) built once at start.

use std::collections::HashMap;

use config::{Config, ConfigError, File, FileFormat};
use secrecy::SecretString;
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
}

/// Environment variables and the settings keys they set. The names are those
/// of the original deployment guide, honoured exactly.
const ENV_KEYS: [(&str, &str); 6] = [
    ("HUB_BIND", "server.bind"),
    ("HUB_LOG_FORMAT", "log.format"),
    ("CENTRAL_HUB_API_KEYS", "auth.api_keys"),
    ("DISABLE_AUTH", "auth.disabled"),
    ("HUB_REAP_INTERVAL_MS", "leases.reap_interval_ms"),
    ("HUB_SHUTDOWN_TIMEOUT_SECS", "server.shutdown_timeout_secs"),
];

/// Backend variables of DESIGN.md that this build cannot honour yet. Starting
/// in embedded mode while one is set would silently drop data the operator
/// expects to be durable, so the server refuses instead.
const UNSUPPORTED_BACKENDS: [&str; 4] = [
    "POSTGRES_HOST",
    "DRAGONFLY_HOST",
    "NATS_URL",
    "KAFKA_BROKERS",
];

impl Settings {
    /// Builds settings from built-in defaults, then the TOML file named by
    /// `HUB_CONFIG` (if set), then the environment variables in `env`.
    /// Tests pass their own map instead of touching the process environment.
    pub fn load(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        if let Some(name) = UNSUPPORTED_BACKENDS
            .iter()
            .find(|name| env.get(**name).is_some_and(|v| !v.is_empty()))
        {
            return Err(ConfigError::Message(format!(
                "{name} is set, but this build only has the embedded (in-memory) mode; unset {name} to run embedded"
            )));
        }
        let mut builder = Config::builder()
            .set_default("server.bind", "0.0.0.0:7000")?
            .set_default("server.shutdown_timeout_secs", 30)?
            .set_default("log.format", "text")?
            .set_default("auth.disabled", false)?
            .set_default("auth.api_keys", "")?
            .set_default("leases.reap_interval_ms", 1000)?;
        if let Some(path) = env.get("HUB_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(File::new(path, FileFormat::Toml).required(true));
        }
        for (var, key) in ENV_KEYS {
            if let Some(value) = env.get(var) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        if settings.leases.reap_interval_ms == 0 {
            return Err(ConfigError::Message(
                "leases.reap_interval_ms (HUB_REAP_INTERVAL_MS) must be at least 1".into(),
            ));
        }
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
    fn backends_not_yet_built_are_refused_not_ignored() {
        let err = Settings::load(&env(&[("POSTGRES_HOST", "db")])).unwrap_err();
        assert!(err.to_string().contains("POSTGRES_HOST"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Settings::load(&env(&[("CENTRAL_HUB_API_KEYS", "very-secret")])).unwrap();
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
