//! The SQL datastore of the ironpact server: registration entries, attested agents, join
//! tokens, trust bundles and the CA journal, on embedded SQLite or shared PostgreSQL or
//! MySQL/MariaDB.
//!
//! One schema and one set of SQL statements serve the three dialects (sqlx's `Any` driver with
//! `$N` placeholders, which SQLite accepts too and which become `?` for MySQL); MySQL has its
//! own DDL for the same schema versions, and its own upsert and token-taking statements. Every multi-row change runs in a transaction.
//! It deliberately holds no caches and no business rules beyond uniqueness: the server
//! decides who may see what. Every write also appends to the change log (`changes`) in the
//! same transaction, from which servers keep their caches current.

mod error;
mod migrate;
mod model;
mod store;

pub use error::Error;
pub use model::{
    AgentFilter, AgentRecord, BundleRecord, EndpointProfile, Entry, EntryFilter,
    FederationRelationship, MatchBehavior, similarity_key,
};
pub use store::{
    Change, ChangeKind, ChangeListener, DataStore, Dialect, mysql_url, new_uuid, observe_latency,
};
