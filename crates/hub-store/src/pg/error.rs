//! Translation of tokio-postgres and pool errors into hub-core's `RegistryError`.

use deadpool_postgres::PoolError;
use hub_core::RegistryError;
pub(crate) use hub_core::error_chain as chain;
use tokio_postgres::error::SqlState;

/// An error inside a tenant-scoped transaction.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// From the database or the connection.
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    /// A statement on a transaction that was already ended (a bug).
    #[error("statement on a finished transaction")]
    Finished,
    /// A stored row that breaks the domain rules.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// PostgreSQL did not answer a call within the client-side deadline
    /// (the connection was closed, not reused).
    #[error(
        "PostgreSQL did not answer within {0:?} (HUB_PG_STATEMENT_TIMEOUT_MS plus a margin); \
         the connection was closed"
    )]
    Deadline(std::time::Duration),
}

/// Whether the transaction was rolled back by the server because of a
/// serialization failure or a deadlock: its outcome is known (nothing
/// happened), so running it again is safe.
pub(crate) fn is_retryable(error: &DbError) -> bool {
    let DbError::Pg(error) = error else {
        return false;
    };
    matches!(
        error.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Whether the error means the database cannot be reached or did not answer
/// in time (the caller gets 503 and may retry; a write's outcome is unknown).
fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if is_conversion(error) {
        return false;
    }
    match error.code() {
        None => true, // No SQLSTATE: an I/O or protocol failure of the connection.
        Some(code) => {
            let class = &code.code()[..2];
            class == "08" // connection exception
                || class == "57" // operator intervention: shutdown, cancel (statement timeout)
                || class == "53" // insufficient resources (too many connections, disk full)
        }
    }
}

/// Whether the error is a conversion on this side of the connection: a
/// stored value that cannot be read into its Rust type (a row written behind
/// the API's back, say), a parameter that cannot be sent, or a result of the
/// wrong shape. Such errors carry no SQLSTATE either, but the database is
/// fine: reporting them as "store unavailable" sent operators looking at a
/// healthy PostgreSQL. tokio-postgres exposes no error kind, so they are told
/// apart by their (stable) messages.
pub(crate) fn is_conversion(error: &tokio_postgres::Error) -> bool {
    if error.code().is_some() {
        return false;
    }
    let text = error.to_string();
    [
        "error deserializing column",
        "error serializing parameter",
        "invalid column",
        "query returned an unexpected number of",
        "expected ",
    ]
    .iter()
    .any(|prefix| text.starts_with(prefix))
}

/// An error of a scoped transaction as the registry reports it.
pub(crate) fn from_db(error: DbError) -> RegistryError {
    match error {
        DbError::Pg(e) => from_pg(e),
        DbError::Finished => RegistryError::Unexpected(Box::new(DbError::Finished)),
        DbError::Registry(e) => e,
        deadline @ DbError::Deadline(_) => RegistryError::Unavailable {
            component: "store",
            source: Box::new(deadline),
        },
    }
}

/// A database error as the registry reports it.
pub(crate) fn from_pg(error: tokio_postgres::Error) -> RegistryError {
    if is_unavailable(&error) {
        return RegistryError::Unavailable {
            component: "store",
            source: Box::new(error),
        };
    }
    if matches!(error.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
    {
        return RegistryError::Conflict(
            "the change collided with concurrent changes too often; retry it".into(),
        );
    }
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return RegistryError::Conflict("the record already exists".into());
    }
    RegistryError::Unexpected(Box::new(error))
}

/// A pool error (no connection could be had in time, or opening one failed).
pub(crate) fn from_pool(error: PoolError) -> RegistryError {
    match error {
        PoolError::Backend(e) => from_pg(e),
        other => RegistryError::Unavailable {
            component: "store",
            source: Box::new(other),
        },
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testing::TestDb;

    /// A stored value that cannot be read is no outage: before, it was
    /// reported as "store unavailable" (503), sending operators to a healthy
    /// database.
    #[tokio::test]
    async fn a_value_that_cannot_be_read_is_not_store_unavailable() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let client = TestDb::connect(&db.app).await;
        let row = client
            .query_one(r#"SELECT '{"x": 1e400}'::jsonb"#, &[])
            .await
            .unwrap();
        let error = row.try_get::<_, serde_json::Value>(0).unwrap_err();
        assert!(is_conversion(&error));
        let reported = from_pg(error);
        assert!(
            matches!(reported, RegistryError::Unexpected(_)),
            "{reported:?}"
        );
        assert!(chain(&reported).contains("error deserializing column 0"));
        // A closed connection still is.
        drop(client);
        let gone = TestDb::connect(&db.app).await;
        let pid: i32 = gone
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let killer = db.admin().await;
        let _ = killer
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await;
        let after = gone.simple_query("SELECT 1").await.unwrap_err();
        assert!(matches!(from_pg(after), RegistryError::Unavailable { .. }));
    }
}
