//! Logging setup: tracing-subscriber with `RUST_LOG` filtering and text or JSON output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Libraries kept at a level of their own unless `RUST_LOG` names them.
/// - `tokio_postgres` logs every statement with its parameters at debug:
///   tenant metadata and ids would land in the log of anyone who turns on
///   `RUST_LOG=debug` to look at the hub's own lines.
/// - `rskafka` warns at every attempt of its own connection retries (a
///   screenful a second while a broker is down); the publisher, the relay
///   and the start-up reports already say, once, that Kafka is unreachable.
///
/// Naming the crate in `RUST_LOG` (`tokio_postgres=debug`, `rskafka=info`)
/// brings their lines back.
const QUIET: [(&str, &str); 2] = [("tokio_postgres", "info"), ("rskafka", "error")];

/// The filter directives for a `RUST_LOG` value (`None` or blank: `info`),
/// with a [`QUIET`] directive added for each library it does not name.
/// A more specific target wins in `EnvFilter` whatever the order, so
/// `RUST_LOG=debug` still keeps `tokio_postgres` at `info`.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let mut directives = base.to_owned();
    for (target, level) in QUIET {
        if !base.contains(target) {
            directives.push_str(&format!(",{target}={level}"));
        }
    }
    directives
}

/// Installs the global subscriber. `RUST_LOG` sets the filter (default
/// `info`, see [`filter_directives`]; an unreadable value falls back to the
/// default). Colours only when stdout is a terminal. Returns an error if a
/// subscriber is already installed.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = EnvFilter::try_new(filter_directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives(None)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber failed: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Whether an event of `target` at `level` passes the filter built from
    /// `rust_log`, checked by dispatching one through a real subscriber.
    fn passes(rust_log: &str, target: &'static str, level: Level) -> bool {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        struct Seen(Arc<AtomicBool>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                _: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let seen = Arc::new(AtomicBool::new(false));
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::try_new(filter_directives(Some(rust_log))).unwrap())
            .with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // `tracing::event!` needs its target and level as constants.
            macro_rules! emit {
                ($t:literal) => {
                    match level {
                        Level::ERROR => tracing::error!(target: $t, "x"),
                        Level::WARN => tracing::warn!(target: $t, "x"),
                        Level::INFO => tracing::info!(target: $t, "x"),
                        Level::DEBUG => tracing::debug!(target: $t, "x"),
                        Level::TRACE => tracing::trace!(target: $t, "x"),
                    }
                };
            }
            match target {
                "tokio_postgres::query" => emit!("tokio_postgres::query"),
                "rskafka::connection" => emit!("rskafka::connection"),
                "hub_server" => emit!("hub_server"),
                other => panic!("no emitter for {other}"),
            }
        });
        seen.load(Ordering::SeqCst)
    }

    #[test]
    fn statement_logs_stay_off_unless_named() {
        // RUST_LOG=debug: the hub's own debug lines, but not the statements
        // and their parameters that tokio_postgres logs at debug.
        assert!(passes("debug", "hub_server", Level::DEBUG));
        assert!(!passes("debug", "tokio_postgres::query", Level::DEBUG));
        assert!(passes("debug", "tokio_postgres::query", Level::INFO));
        assert!(!passes("trace", "tokio_postgres::query", Level::TRACE));
        // Named explicitly, the operator gets what was asked for.
        assert!(passes(
            "info,tokio_postgres=debug",
            "tokio_postgres::query",
            Level::DEBUG
        ));
        assert!(passes(
            "tokio_postgres::query=trace",
            "tokio_postgres::query",
            Level::TRACE
        ));
    }

    #[test]
    fn kafka_client_retries_stay_quiet_unless_named() {
        assert!(!passes("info", "rskafka::connection", Level::WARN));
        assert!(passes("info", "rskafka::connection", Level::ERROR));
        assert!(passes("rskafka=warn", "rskafka::connection", Level::WARN));
    }

    #[test]
    fn directives_keep_the_given_filter() {
        assert_eq!(
            filter_directives(None),
            "info,tokio_postgres=info,rskafka=error"
        );
        assert_eq!(
            filter_directives(Some("  ")),
            "info,tokio_postgres=info,rskafka=error"
        );
        assert_eq!(
            filter_directives(Some("warn,tokio_postgres=debug")),
            "warn,tokio_postgres=debug,rskafka=error"
        );
    }
}
