//! `aws_iid`: AWS EC2 instance identity documents, signed by AWS (PKCS#7 RSA-2048). Agent ID
//! `spiffe://<td>/spire/agent/aws_iid/<account>/<region>/<instance>` as SPIRE names it. A
//! document is not a secret: require a TEE (`sev_snp { … }` or `tdx { … }` in its
//! plugin_data) to bind the identity to the machine.
//!
//! - `protocol.rs`: the payload both halves share;
//! - `server.rs`: the signature and document checks;
//! - `agent.rs`: IMDSv2, where the agent gets the document.

pub mod agent;
pub mod protocol;
pub mod server;

use crate::NodeAttestor;
use crate::agent::{AgentAttestError, BaseAgent, BaseAgentConfig};
use crate::registry::{BaseConfig, Block, BuildCtx, BuildError, ParseCtx, Registration};
use ironpact_config::hcl::ConfigError;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::info;

pub const REGISTRATION: Registration = Registration::Base {
    name: "aws_iid",
    server: server_config,
    agent: agent_config,
};

/// `NodeAttestor "aws_iid"` on the server.
#[derive(Debug, Clone)]
pub struct AwsIidConfig {
    /// PEM file of the AWS certificates (RSA-2048, per region) that sign documents.
    pub certificates_path: PathBuf,
    /// Accounts allowed to attest; empty: any.
    pub account_allowlist: Vec<String>,
}

fn server_config(b: &Block<'_, '_>, _: &ParseCtx<'_>) -> Result<Arc<dyn BaseConfig>, ConfigError> {
    let d = b.require(
        "aws_iid",
        "certificates_path (the AWS certificates that sign instance identity documents)",
    )?;
    let certificates_path = d
        .string("certificates_path")?
        .map(|v| PathBuf::from(v.0))
        .ok_or_else(|| d.err(d.line(), "aws_iid.certificates_path is required: a PEM file of the AWS RSA-2048 certificates of your regions"))?;
    let account_allowlist = d.strings("account_allowlist")?.unwrap_or_default();
    Ok(Arc::new(AwsIidConfig {
        certificates_path,
        account_allowlist,
    }))
}

impl BaseConfig for AwsIidConfig {
    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn NodeAttestor>, BuildError> {
        let path = self.certificates_path.display();
        let fail = |e: String| BuildError::new("aws_iid", format!("{path}: {e}"));
        let pem = crate::registry::read_config_file(
            "aws_iid",
            "certificates_path",
            &self.certificates_path,
            "point it at AWS's public certificate(s) for your regions (PEM)",
        )?;
        let certificates = ironpact_spiffe::x509::certs_from_pem(&String::from_utf8_lossy(&pem))
            .map_err(|e| fail(e.to_string()))?;
        if certificates.is_empty() {
            return Err(BuildError::new(
                "aws_iid",
                format!("{path} holds no PEM certificate"),
            ));
        }
        info!(certificates = certificates.len(), accounts = ?self.account_allowlist, "aws_iid attestor ready");
        Ok(Arc::new(server::AwsIidAttestor {
            trust_domain: ctx.trust_domain.clone(),
            certificates,
            account_allowlist: self.account_allowlist.clone(),
        }))
    }
}

fn agent_config(b: &Block<'_, '_>) -> Result<Arc<dyn BaseAgentConfig>, ConfigError> {
    let mut imds = agent::ImdsConfig::default();
    if let Some(d) = b.data {
        if let Some((v, _)) = d.string("ec2_metadata_endpoint")? {
            imds.endpoint = v;
        }
        if let Some(t) = d.duration("timeout")? {
            imds.timeout = t;
        }
    }
    Ok(Arc::new(imds))
}

impl BaseAgentConfig for agent::ImdsConfig {
    fn build(&self) -> Result<Arc<dyn BaseAgent>, AgentAttestError> {
        let imds = agent::Imds::new(self.clone()).map_err(|message| AgentAttestError::Local {
            attestor: "aws_iid",
            message,
        })?;
        Ok(Arc::new(imds))
    }
}

#[async_trait::async_trait]
impl BaseAgent for agent::Imds {
    /// The document, at every attestation and renewal.
    async fn payload(&self, _renew: bool, _: Option<&str>) -> Result<Vec<u8>, AgentAttestError> {
        self.identity()
            .await
            .map_err(|message| AgentAttestError::Unavailable {
                attestor: "aws_iid",
                message,
            })
    }
}
