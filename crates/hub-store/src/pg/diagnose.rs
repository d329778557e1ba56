//! Why a connection to PostgreSQL failed, in the terms an operator acts on: start-up turns each kind into one plain sentence with the next step.
//!
//! The driver's errors stay in this crate: callers get a [`ConnectProblem`],
//! whose text is the server's own message (never a Debug dump of the driver's
//! types), and decide what to tell the operator.

use hub_core::RegistryError;
use hub_core::error_chain as chain;
use tokio_postgres::error::SqlState;

/// What went wrong while connecting, as far as an operator can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectProblem {
    /// Nothing usable answered at the host and port (refused, unknown host,
    /// no answer in time), or the server cannot take connections right now
    /// (starting up, too many connections). It may come up: worth a retry.
    Unreachable(String),
    /// The login role (`POSTGRES_USER`) does not exist.
    NoSuchRole,
    /// The database (`POSTGRES_DB`) does not exist.
    NoSuchDatabase,
    /// The server refused the password. Under password authentication it
    /// says the same for a role that does not exist.
    PasswordRefused,
    /// The server asks for a password and none was given.
    PasswordMissing,
    /// The server's `pg_hba.conf` lets this login not in from here; the text
    /// is the server's message.
    NotAllowed(String),
    /// Anything else; the text is the server's or the driver's message.
    Other(String),
}

impl ConnectProblem {
    /// Whether waiting may fix it (the database may still be starting).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// Classifies an error of [`migrate::role_check`](super::migrate::role_check)
/// (or any other first connection) by the SQLSTATE the server sent, or, with
/// none, as a failure to reach it.
pub fn diagnose(error: &RegistryError) -> ConnectProblem {
    let source: &(dyn std::error::Error + Send + Sync + 'static) = match error {
        RegistryError::Unavailable { source, .. } | RegistryError::Unexpected(source) => {
            source.as_ref()
        }
        other => return ConnectProblem::Other(other.to_string()),
    };
    let Some(pg) = source.downcast_ref::<tokio_postgres::Error>() else {
        return ConnectProblem::Other(chain(source));
    };
    let Some(db) = pg.as_db_error() else {
        let text = chain(pg);
        // tokio-postgres reports a password the server asked for and the
        // configuration lacks as a configuration error, not a server one.
        if text.contains("password missing") {
            return ConnectProblem::PasswordMissing;
        }
        return ConnectProblem::Unreachable(text);
    };
    let code = db.code();
    if *code == SqlState::INVALID_PASSWORD {
        ConnectProblem::PasswordRefused
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        ConnectProblem::NoSuchDatabase
    } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        // 28000 is both "role does not exist" and a pg_hba.conf rejection;
        // only the message tells them apart.
        if db.message().starts_with("role ") && db.message().ends_with("does not exist") {
            ConnectProblem::NoSuchRole
        } else {
            ConnectProblem::NotAllowed(db.message().to_owned())
        }
    } else if *code == SqlState::CANNOT_CONNECT_NOW || *code == SqlState::TOO_MANY_CONNECTIONS {
        ConnectProblem::Unreachable(db.message().to_owned())
    } else {
        ConnectProblem::Other(db.message().to_owned())
    }
}
