//! The admin API (gRPC on the server's Unix socket), modelled on SPIRE's v1 server APIs.
//! Datastore and CA errors become gRPC statuses here and nowhere else.

mod agent;
pub mod agent_endpoint;
mod agent_v1;
mod bundle;
pub mod convert;
pub mod debug;
pub mod enclave;
mod entry;
mod health;
mod localauthority;
mod svid;
mod trustdomain;

use crate::ca::{CaError, CaManager};
use crate::clock::Clock;
use crate::config::ServerConfig;
use ironpact_datastore::DataStore;
use ironpact_proto::server::v1 as pb;
use std::sync::Arc;
use tonic::{Code, Status};

pub use agent::AgentApi;
pub use agent_endpoint::AgentEndpoint;
pub use agent_v1::AgentEndpointV1;
pub use bundle::BundleApi;
pub use entry::EntryApi;
pub use health::HealthApi;
pub use localauthority::LocalAuthorityApi;
pub use svid::SvidApi;
pub use trustdomain::TrustDomainApi;

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
    /// Entries, agents and bundles in memory, kept current from the datastore's change log:
    /// what agents are served from.
    pub cache: Arc<crate::cache::Cache>,
    /// The trust domain's current X.509 authorities, for verifying agents' SVIDs.
    pub roots: Arc<ironpact_tls::SharedRoots>,
    /// The SVID the agent endpoint presents (`spiffe://<td>/spire/server`).
    pub server_svid: Arc<ironpact_tls::SvidCell>,
    pub server_svid_expiry: std::sync::atomic::AtomicI64,
    pub attestors: std::collections::HashMap<&'static str, Arc<dyn crate::attest::NodeAttestor>>,
    /// The TEE attestors (standalone or completing a base), by the NodeAttestor block that
    /// owns them: a SIGHUP reloads their policies.
    pub tees: Vec<(&'static str, Arc<dyn crate::attest::TeeAttestor>)>,
    /// Set once the server is shutting down: open streams end with Unavailable, so agents
    /// reconnect (to another server of the cluster, or to this one once restarted).
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// A cache refresh is scheduled and has not started reading yet (see [`Core::changed_soon`]).
    pub refresh_pending: std::sync::atomic::AtomicBool,
    /// Attestations (and renewals) verified at once: evidence checks and KDS/PCS fetches for
    /// unauthenticated callers are bounded; the rest wait briefly, then get Unavailable.
    pub attest_slots: tokio::sync::Semaphore,
    /// The `sgx` enclave verifier, with `WorkloadAttestor "sgx"` configured.
    pub sgx: Option<Arc<ironpact_attestors::sgx::EnclaveVerifier>>,
}

/// How many attestations run at once (each is a few milliseconds of CPU and may wait on a
/// KDS/PCS fetch); a fleet re-attesting together queues behind them.
pub const ATTEST_CONCURRENCY: usize = 64;

impl Core {
    /// Resolves once the server is shutting down.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Brings the cache up to date after a write of this server, so that the next call (and
    /// every open sync stream) sees it; writes of other servers arrive by the periodic refresh.
    pub async fn changed(&self) {
        if let Err(e) = self.cache.refresh().await {
            tracing::warn!(error = %e, "refreshing the entry cache failed; the periodic refresh retries");
        }
    }

    /// Schedules a cache refresh without waiting for it: for entry writes, whose callers need
    /// no read-your-write through the agent endpoint, so a bulk load does not wait on the
    /// cache between batches. Refreshes are coalesced: one that has not started reading yet
    /// covers every write committed before it does. (Agent writes, evictions and bans, use
    /// [`Core::changed`]: when the call returns, the cache already refuses the agent.)
    pub fn changed_soon(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.refresh_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let core = self.clone();
        tokio::spawn(async move {
            core.refresh_pending.store(false, Ordering::SeqCst);
            core.changed().await;
        });
    }

    /// `spiffe://<td>/spire/server`.
    pub fn server_id(&self) -> ironpact_spiffe::SpiffeId {
        self.cfg
            .trust_domain
            .id_with_path("/spire/server")
            .unwrap_or_else(|_| self.cfg.trust_domain.id())
    }

    /// Reloads the X.509 authorities agents are verified against from the stored bundle.
    pub async fn refresh_roots(&self) -> Result<(), ironpact_datastore::Error> {
        if let Some(rec) = self.ds.get_bundle(&self.cfg.trust_domain).await? {
            self.roots.set(rec.bundle.x509_authorities);
        }
        Ok(())
    }

    /// Mints a fresh SVID for the agent endpoint when none is held or half its life is gone.
    pub fn renew_server_svid_if_due(&self) -> Result<bool, CaError> {
        use std::sync::atomic::Ordering;
        let now = self.clock.now();
        let expiry = self.server_svid_expiry.load(Ordering::SeqCst);
        let ttl = self.cfg.default_x509_svid_ttl.as_secs() as i64;
        if expiry != 0 && now < expiry - ttl / 2 {
            return Ok(false);
        }
        let key = ironpact_spiffe::PrivateKey::generate(ironpact_spiffe::KeyType::EcP256)?;
        let issued = self.ca.sign_x509_svid(
            &self.server_id(),
            &key.spki_der(),
            &[],
            self.cfg.default_x509_svid_ttl,
        )?;
        self.server_svid
            .set(issued.chain, key.pkcs8_der())
            .map_err(|e| CaError::Journal(format!("server SVID: {e}")))?;
        self.server_svid_expiry
            .store(issued.expires_at, Ordering::SeqCst);
        tracing::info!(expires_at = issued.expires_at, serial = %issued.serial_hex, "renewed the server SVID");
        Ok(true)
    }
}

pub type SharedCore = Arc<Core>;

pub(crate) fn ds_status(e: ironpact_datastore::Error) -> Status {
    use ironpact_datastore::Error as E;
    match e {
        E::NotFound { .. } => Status::not_found(e.to_string()),
        E::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        E::TooLong(_) => Status::invalid_argument(e.to_string()),
        other => {
            tracing::error!(error = %other, "datastore failure");
            let msg = format!("datastore failure: {other}");
            // an unreachable or busy database is an outage, not a verdict: callers retry
            if matches!(other, E::Db(_)) {
                Status::unavailable(msg)
            } else {
                Status::internal(msg)
            }
        }
    }
}

pub(crate) fn ca_status(e: CaError) -> Status {
    match e {
        CaError::Spiffe(s) => Status::invalid_argument(s.to_string()),
        CaError::Refused(r) => {
            use crate::ca::AuthorityRefusal as R;
            tracing::warn!(error = %r, "local authority request refused");
            match r {
                R::NoAuthorityId(_) => Status::invalid_argument(r.to_string()),
                R::Unknown { .. } => Status::not_found(r.to_string()),
                _ => Status::failed_precondition(r.to_string()),
            }
        }
        other => {
            tracing::error!(error = %other, "CA failure");
            Status::internal(format!("CA failure: {other}"))
        }
    }
}

/// A per-item result status for batch calls.
/// A trust domain named in a request that must be another than the server's own (a
/// federated bundle's, a federation relationship's).
pub(crate) fn other_trust_domain(
    own: &ironpact_spiffe::TrustDomain,
    raw: &str,
) -> Result<ironpact_spiffe::TrustDomain, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("trust_domain is required"));
    }
    let td = ironpact_spiffe::TrustDomain::new(raw)
        .map_err(|e| Status::invalid_argument(format!("invalid trust_domain: {e}")))?;
    if &td == own {
        return Err(Status::invalid_argument(format!(
            "{td} is the server's own trust domain, not a federated one"
        )));
    }
    Ok(td)
}

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
