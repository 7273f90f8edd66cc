//! Datastore errors; the server maps them to gRPC status codes.

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} already exists: {id}")]
    AlreadyExists { what: &'static str, id: String },
    #[error("unsupported database_type {0:?}: use \"sqlite3\", \"postgres\" or \"mysql\"")]
    UnsupportedDatabase(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A value longer than its column takes (MySQL's key-size limits; see docs/server.md).
    #[error("value too long for the datastore: {0}")]
    TooLong(String),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// A read replica (`ro_connection_string`) that cannot serve this datastore.
    #[error("ro_connection_string: {0}")]
    ReadReplica(String),
    /// A datastore task ended without an answer (it panicked or was cancelled).
    #[error("internal datastore error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // MySQL's ER_DATA_TOO_LONG, SQLSTATE 22001 elsewhere
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "1406" || c == "22001") => {
                Error::TooLong(d.message().to_string())
            }
            _ => Error::Db(e),
        }
    }
}

impl From<ironpact_spiffe::Error> for Error {
    fn from(e: ironpact_spiffe::Error) -> Self {
        Error::Corrupt(e.to_string())
    }
}
