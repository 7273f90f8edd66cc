//! Node attestation on the server: the attestor trait every attestor implements, and what
//! an attestation yields. An attestor may challenge the agent (nonces for TEE evidence) and
//! sees the public key of the agent's CSR, so hardware evidence can be bound to that key.

mod join_token;
mod sev_snp;

pub use join_token::JoinTokenAttestor;
pub use sev_snp::SevSnpAttestor;

use ironpact_spiffe::{Selector, SpiffeId};

/// What an agent presented.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    pub payload: &'a [u8],
    /// DER SubjectPublicKeyInfo of the key the agent SVID will certify.
    pub csr_spki: &'a [u8],
    pub now: i64,
}

/// A node that attested successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// May attest again after eviction (fresh evidence each time).
    pub can_reattest: bool,
}

/// Why attestation failed; every variant becomes PermissionDenied or InvalidArgument.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("malformed attestation payload: {0}")]
    Malformed(String),
    #[error("join token does not exist or has already been used")]
    UnknownToken,
    #[error("join token expired at {expired_at}")]
    ExpiredToken { expired_at: i64 },
    #[error("attestation rejected: {0}")]
    Rejected(String),
    #[error("challenge failed: {0}")]
    Challenge(String),
    #[error("datastore: {0}")]
    Datastore(#[from] ironpact_datastore::Error),
}

impl AttestError {
    pub fn is_client_error(&self) -> bool {
        matches!(self, AttestError::Malformed(_))
    }
}

/// Sends a challenge to the agent and waits for its answer.
#[tonic::async_trait]
pub trait Challenger: Send {
    async fn challenge(&mut self, data: Vec<u8>) -> Result<Vec<u8>, AttestError>;
}

#[tonic::async_trait]
pub trait NodeAttestor: Send + Sync + 'static {
    /// The name agents use in AttestationData.type and the config block label.
    fn name(&self) -> &'static str;

    async fn attest(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError>;

    /// Whether renewing an agent SVID re-runs attestation (continuous attestation).
    fn reattest_on_renewal(&self) -> bool {
        false
    }
}
