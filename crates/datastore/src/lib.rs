//! The SQL datastore of the ironpact server: registration entries, attested agents, join
//! tokens, trust bundles and the CA journal, on embedded SQLite or shared PostgreSQL.
//!
//! One schema and one set of SQL statements serve both dialects (sqlx's `Any` driver with
//! `$N` placeholders, which SQLite accepts too). Every multi-row change runs in a transaction.
//! It deliberately holds no caches and no business rules beyond uniqueness: the server
//! decides who may see what. Every write also appends to the change log (`changes`) in the
//! same transaction, from which servers keep their caches current.

mod error;
mod migrate;
mod model;
mod store;

pub use error::Error;
pub use model::{
    AgentFilter, AgentRecord, BundleRecord, Entry, EntryFilter, MatchBehavior, similarity_key,
};
pub use store::{Change, ChangeKind, DataStore, Dialect, new_uuid};
