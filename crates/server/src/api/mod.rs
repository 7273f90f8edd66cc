//! The admin API (gRPC on the server's Unix socket), modelled on SPIRE's v1 server APIs.
//! Datastore and CA errors become gRPC statuses here and nowhere else.

mod agent;
mod bundle;
pub mod convert;
mod entry;
mod health;
mod svid;

use crate::ca::{CaError, CaManager};
use crate::clock::Clock;
use crate::config::ServerConfig;
use ironpact_datastore::DataStore;
use ironpact_proto::server::v1 as pb;
use std::sync::Arc;
use tonic::{Code, Status};

pub use agent::AgentApi;
pub use bundle::BundleApi;
pub use entry::EntryApi;
pub use health::HealthApi;
pub use svid::SvidApi;

/// Largest number of items one batch call may carry.
pub const MAX_BATCH: usize = 1000;
/// Largest request message, in bytes.
pub const MAX_MESSAGE: usize = 4 << 20;

/// What every API handler shares.
pub struct Core {
    pub cfg: ServerConfig,
    pub ds: DataStore,
    pub ca: CaManager,
    pub clock: Arc<dyn Clock>,
}

pub type SharedCore = Arc<Core>;

pub(crate) fn ds_status(e: ironpact_datastore::Error) -> Status {
    use ironpact_datastore::Error as E;
    match e {
        E::NotFound { .. } => Status::not_found(e.to_string()),
        E::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        other => {
            tracing::error!(error = %other, "datastore failure");
            Status::internal(format!("datastore failure: {other}"))
        }
    }
}

pub(crate) fn ca_status(e: CaError) -> Status {
    match e {
        CaError::Spiffe(s) => Status::invalid_argument(s.to_string()),
        other => {
            tracing::error!(error = %other, "CA failure");
            Status::internal(format!("CA failure: {other}"))
        }
    }
}

/// A per-item result status for batch calls.
pub(crate) fn item_status(s: &Status) -> pb::Status {
    pb::Status {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}

pub(crate) fn ok_status() -> pb::Status {
    pb::Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

pub(crate) fn check_batch(n: usize) -> Result<(), Status> {
    if n > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "{n} items in one batch is more than the limit of {MAX_BATCH}; split the request"
        )));
    }
    Ok(())
}

/// Pages a sorted list by the key of its last returned item.
pub(crate) fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<T>, String), Status> {
    if page_size < 0 {
        return Err(Status::invalid_argument("page_size cannot be negative"));
    }
    let mut items: Vec<T> = if page_token.is_empty() {
        items
    } else {
        items
            .into_iter()
            .filter(|i| key(i).as_str() > page_token)
            .collect()
    };
    if page_size == 0 || items.len() <= page_size as usize {
        return Ok((items, String::new()));
    }
    items.truncate(page_size as usize);
    let next = items.last().map(&key).unwrap_or_default();
    Ok((items, next))
}
