//! The command line of `hub-server`: `--help`, `--version`, and nothing else; the server is configured by environment variables.

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the server.
    Serve,
    /// `-h` / `--help`: print [`USAGE`] and exit.
    Help,
    /// `-V` / `--version`: print the version and exit.
    Version,
}

/// An argument the command line does not know. Its text names the argument
/// and where the help is; the process exits with status 2 (as for any
/// command-line usage error) instead of starting a server the operator did
/// not ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown argument {0:?}: hub-server takes no arguments besides --help and --version (it is configured by environment variables; see hub-server --help)"
)]
pub struct UnknownArgument(pub String);

/// The text of `--help`.
pub const USAGE: &str = "\
central-hub server: a multi-tenant service registry.

usage: hub-server [--help | --version]

With no arguments it starts the server. Everything else is configured by
environment variables (all are listed in README.md, section Configuration):

  HUB_BIND                listen address (default 0.0.0.0:7000)
  CENTRAL_HUB_API_KEYS    comma-separated keys, each at least 16 characters:
                          KEY or KEY:* (operator), KEY:tenant1|tenant2 (bound)
  DISABLE_AUTH            true opens every endpoint (development only)
  POSTGRES_HOST           PostgreSQL host; unset runs the in-memory store
  POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD
  NATS_URL, KAFKA_BROKERS event buses (unset: none)
  DRAGONFLY_HOST          DragonflyDB host: rate limits shared by all replicas
  DRAGONFLY_PORT, DRAGONFLY_PASSWORD
  HUB_RATE_LIMIT_RPS, HUB_RATE_LIMIT_BURST  every tenant's budget (0: off)
  HUB_CONFIG              optional TOML file read before the environment
  RUST_LOG, HUB_LOG_FORMAT  log filter (info) and format (text or json)

options:
  -h, --help       print this text and exit
  -V, --version    print the version and exit";

/// Reads the arguments after the program name. The first one decides:
/// a help or version flag wins over anything after it, as in most tools.
pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, UnknownArgument> {
    match args.next() {
        None => Ok(Command::Serve),
        Some(arg) => match arg.as_str() {
            "-h" | "--help" => Ok(Command::Help),
            "-V" | "--version" => Ok(Command::Version),
            _ => Err(UnknownArgument(arg)),
        },
    }
}

/// The `--version` line.
pub fn version() -> String {
    format!("hub-server {}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn only_help_and_version_are_understood() {
        assert_eq!(parse(args(&[])).unwrap(), Command::Serve);
        assert_eq!(parse(args(&["--help"])).unwrap(), Command::Help);
        assert_eq!(parse(args(&["-h"])).unwrap(), Command::Help);
        assert_eq!(parse(args(&["--version"])).unwrap(), Command::Version);
        assert_eq!(parse(args(&["-V"])).unwrap(), Command::Version);
        let err = parse(args(&["--port", "80"])).unwrap_err();
        assert_eq!(err, UnknownArgument("--port".into()));
        assert!(err.to_string().contains("\"--port\""), "{err}");
        assert!(parse(args(&[""])).is_err());
    }
}
