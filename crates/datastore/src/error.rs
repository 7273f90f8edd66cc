//! Datastore errors; the server maps them to gRPC status codes.

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} already exists: {id}")]
    AlreadyExists { what: &'static str, id: String },
    #[error("unsupported database_type {0:?}: use \"sqlite3\" or \"postgres\"")]
    UnsupportedDatabase(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A datastore task ended without an answer (it panicked or was cancelled).
    #[error("internal datastore error: {0}")]
    Internal(String),
}

impl From<ironpact_spiffe::Error> for Error {
    fn from(e: ironpact_spiffe::Error) -> Self {
        Error::Corrupt(e.to_string())
    }
}
