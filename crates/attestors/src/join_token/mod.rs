//! `join_token`: a single-use, expiring token an operator generated (`token generate`). The
//! agent sends it as its payload once; renewals keep what it established. Takes any TEE
//! (`sev_snp { … }` or `tdx { … }` in its plugin_data).
//!
//! - `server.rs`: the token spent in the datastore, the agent ID;
//! - here: both halves' configuration (nothing beyond the TEE) and the agent half.

pub mod server;

use crate::agent::{AgentAttestError, BaseAgent, BaseAgentConfig};
use crate::registry::{BaseConfig, Block, BuildCtx, BuildError, ParseCtx, Registration};
use crate::{AttestError, Attested, Challenger, Evidence, NodeAttestor};
use ironpact_config::hcl::ConfigError;
use std::sync::Arc;

pub const REGISTRATION: Registration = Registration::Base {
    name: "join_token",
    server: server_config,
    agent: agent_config,
};

/// The server half's configuration: nothing of its own.
#[derive(Debug, Clone, Copy)]
pub struct JoinTokenConfig;

fn server_config(_: &Block<'_, '_>, _: &ParseCtx<'_>) -> Result<Arc<dyn BaseConfig>, ConfigError> {
    Ok(Arc::new(JoinTokenConfig))
}

impl BaseConfig for JoinTokenConfig {
    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn NodeAttestor>, BuildError> {
        // without a datastore (validate) the base is a stand-in: its TEE is still built
        Ok(match ctx.ds {
            Some(ds) => Arc::new(server::JoinTokenAttestor {
                ds: ds.clone(),
                trust_domain: ctx.trust_domain.clone(),
            }),
            None => Arc::new(Unopened),
        })
    }
}

/// The join_token attestor built without a datastore (`validate`): it attests nothing.
struct Unopened;

#[async_trait::async_trait]
impl NodeAttestor for Unopened {
    fn name(&self) -> &'static str {
        "join_token"
    }

    async fn attest(
        &self,
        _ev: Evidence<'_>,
        _challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        Err(AttestError::Unavailable("the datastore is not open".into()))
    }
}

/// The agent half: the token from `-joinToken` or `agent.join_token`, sent at the first
/// attestation only.
#[derive(Debug, Clone, Copy)]
pub struct JoinTokenAgent;

fn agent_config(_: &Block<'_, '_>) -> Result<Arc<dyn BaseAgentConfig>, ConfigError> {
    Ok(Arc::new(JoinTokenAgent))
}

impl BaseAgentConfig for JoinTokenAgent {
    fn build(&self) -> Result<Arc<dyn BaseAgent>, AgentAttestError> {
        Ok(Arc::new(JoinTokenAgent))
    }
}

#[async_trait::async_trait]
impl BaseAgent for JoinTokenAgent {
    async fn payload(
        &self,
        renew: bool,
        join_token: Option<&str>,
    ) -> Result<Vec<u8>, AgentAttestError> {
        if renew {
            // spent at the first attestation: the record keeps what it established
            return Ok(Vec::new());
        }
        join_token
            .map(|t| t.as_bytes().to_vec())
            .ok_or(AgentAttestError::NoJoinToken)
    }
}
