//! The agent half's contract: what a base attestor presents (its payload, and answers to its
//! own challenges) and where TEE evidence comes from ([`crate::tee_source`]). The agent's
//! manager drives these without knowing which attestor it runs.

use crate::tee_source::{EvidenceError, EvidenceSource};
use std::fmt::Debug;
use std::sync::Arc;

/// Why the agent half could not produce what the server asks for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentAttestError {
    /// The join token is needed and none was given.
    #[error("no join token")]
    NoJoinToken,
    /// A service the payload comes from did not answer (IMDS): try again later.
    #[error("{attestor}: {message}")]
    Unavailable {
        attestor: &'static str,
        message: String,
    },
    /// This node cannot produce it (a key or certificate missing, unreadable, or wrong).
    #[error("{attestor}: {message}")]
    Local {
        attestor: &'static str,
        message: String,
    },
}

/// A base attestor's agent half.
#[async_trait::async_trait]
pub trait BaseAgent: Send + Sync {
    /// The AttestationData payload: `renew` for a renewal, `join_token` as the agent's
    /// configuration or command line gives it.
    async fn payload(
        &self,
        renew: bool,
        join_token: Option<&str>,
    ) -> Result<Vec<u8>, AgentAttestError>;

    /// How many of the server's challenges this attestor answers itself; they come before
    /// the TEE's (a composed attestor checks the base first).
    fn challenges(&self) -> usize {
        0
    }

    /// The answer to one of its challenges, bound to `spki`, the key the SVID will certify.
    fn answer(&self, _challenge: &[u8], _spki: &[u8]) -> Result<Vec<u8>, AgentAttestError> {
        Err(AgentAttestError::Local {
            attestor: "agent",
            message: "this attestor takes no challenge".into(),
        })
    }
}

/// A base attestor's agent configuration.
pub trait BaseAgentConfig: Debug + Send + Sync {
    fn build(&self) -> Result<Arc<dyn BaseAgent>, AgentAttestError>;
}

/// A TEE's agent configuration: where its evidence comes from.
pub trait TeeSourceConfig: Debug + Send + Sync + 'static {
    /// The TEE's attestor name (`sev_snp`, `tdx`).
    fn name(&self) -> &'static str;
    fn build(&self) -> Result<Arc<dyn EvidenceSource>, EvidenceError>;
    fn as_any(&self) -> &dyn std::any::Any;
}
