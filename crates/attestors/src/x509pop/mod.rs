//! `x509pop`: a node proves it holds the key of a certificate an operator CA issued (SPIRE's
//! X.509 proof of possession). Agent ID `spiffe://<td>/spire/agent/x509pop/<fingerprint>`
//! (or `agent_path_template`), selectors `x509pop:subject:cn:…`, `x509pop:ca:fingerprint:…`,
//! `x509pop:serialnumber:…`, `x509pop:san:dns:…`, `x509pop:san:uri:…`. Takes any TEE
//! (`sev_snp { … }` or `tdx { … }` in its plugin_data), which then binds the identity to the
//! machine's hardware as well.
//!
//! - `protocol.rs`: the payload, the nonce, the signed message, the fingerprint;
//! - `server.rs`: chain to the CA bundle, proof of possession, agent ID and selectors;
//! - `agent.rs`: the certificate and key files, the signature;
//! - `template.rs`: `agent_path_template`.

pub mod agent;
pub mod protocol;
pub mod server;
pub mod template;

use crate::NodeAttestor;
use crate::agent::{AgentAttestError, BaseAgent, BaseAgentConfig};
use crate::registry::{BaseConfig, Block, BuildCtx, BuildError, ParseCtx, Registration};
use ironpact_config::hcl::ConfigError;
use std::path::PathBuf;
use std::sync::Arc;
use template::AgentPathTemplate;

pub const REGISTRATION: Registration = Registration::Base {
    name: "x509pop",
    server: server_config,
    agent: agent_config,
};

/// `NodeAttestor "x509pop"` on the server (SPIRE's names).
#[derive(Debug, Clone)]
pub struct X509PopConfig {
    /// PEM files of the CAs node certificates must chain to (`ca_bundle_path`, `ca_bundle_paths`).
    pub ca_bundle_paths: Vec<PathBuf>,
    pub agent_path_template: AgentPathTemplate,
}

fn server_config(b: &Block<'_, '_>, _: &ParseCtx<'_>) -> Result<Arc<dyn BaseConfig>, ConfigError> {
    let d = b.require(
        "x509pop",
        "ca_bundle_path (the CA that issues node certificates)",
    )?;
    // as SPIRE: one of the two, not both
    let ca_bundle_paths: Vec<PathBuf> = match (
        d.string("ca_bundle_path")?,
        d.strings("ca_bundle_paths")?,
    ) {
        (Some((_, l)), Some(_)) => {
            return Err(d.err(
                l,
                "set ca_bundle_path or ca_bundle_paths, not both (put every file in ca_bundle_paths)",
            ));
        }
        (Some((p, _)), None) => vec![PathBuf::from(p)],
        (None, Some(v)) => v.into_iter().map(PathBuf::from).collect(),
        (None, None) => Vec::new(),
    };
    if ca_bundle_paths.is_empty() {
        return Err(d.err(
            d.line(),
            "x509pop needs ca_bundle_path (or ca_bundle_paths): PEM files of the CAs that issue node certificates",
        ));
    }
    let agent_path_template = match d.string("agent_path_template")? {
        None => AgentPathTemplate::default(),
        Some((t, l)) => AgentPathTemplate::parse(&t).map_err(|e| d.err(l, e))?,
    };
    Ok(Arc::new(X509PopConfig {
        ca_bundle_paths,
        agent_path_template,
    }))
}

impl BaseConfig for X509PopConfig {
    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn NodeAttestor>, BuildError> {
        let mut roots = Vec::new();
        for p in &self.ca_bundle_paths {
            let fail = |e: String| BuildError::new("x509pop", format!("{}: {e}", p.display()));
            let text = crate::registry::read_config_file(
                "x509pop",
                "ca_bundle_path",
                p,
                "point it at the PEM certificates of the CA that issues your nodes' certificates",
            )?;
            let certs = ironpact_spiffe::x509::certs_from_pem(&String::from_utf8_lossy(&text))
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail(
                    "holds no PEM certificate: put the CA certificate(s) that issue node certificates there".into(),
                ));
            }
            roots.extend(certs);
        }
        tracing::info!(
            cas = roots.len(),
            bundles = self.ca_bundle_paths.len(),
            "x509pop attestor ready"
        );
        let a = server::X509PopAttestor::new(
            ctx.trust_domain.clone(),
            roots,
            self.agent_path_template.clone(),
        )
        .map_err(|e| BuildError::new("x509pop", e))?;
        Ok(Arc::new(a))
    }
}

fn agent_config(b: &Block<'_, '_>) -> Result<Arc<dyn BaseAgentConfig>, ConfigError> {
    let d = b.require(
        "x509pop",
        "private_key_path and certificate_path (the node's key and certificate)",
    )?;
    let need = |k: &str| -> Result<PathBuf, ConfigError> {
        d.string(k)?
            .map(|v| PathBuf::from(v.0))
            .ok_or_else(|| d.err(d.line(), format!("x509pop.{k} is required")))
    };
    Ok(Arc::new(agent::X509PopAgentConfig {
        private_key_path: need("private_key_path")?,
        certificate_path: need("certificate_path")?,
        intermediates_path: d.string("intermediates_path")?.map(|v| PathBuf::from(v.0)),
    }))
}

impl BaseAgentConfig for agent::X509PopAgentConfig {
    fn build(&self) -> Result<Arc<dyn BaseAgent>, AgentAttestError> {
        Ok(Arc::new(agent::X509PopAgent::new(self.clone())?))
    }
}
