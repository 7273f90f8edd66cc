//! The `tdx` agent half: where TDX quotes come from (configfs-tsm with provider `tdx_guest`,
//! or the simulated quoting stack of [`ironpact_tdx::simulate`] for tests and demos) and how
//! the source is configured. REPORT_DATA binds the server's nonce and the agent's key
//! ([`ironpact_tdx::binding`]).

use crate::agent::TeeSourceConfig;
use crate::registry::Block;
use crate::tee_source::{
    CONFIGFS_TSM_REPORT, ConfigfsTsm, EvidenceError, EvidenceSource, TsmTee, evidence_source,
    hex_array,
};
use ironpact_config::hcl::ConfigError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TDX: the quote alone (its PCK chain is inside).
pub const TSM_TDX: TsmTee = TsmTee {
    provider: "tdx_guest",
    article_name: "a TDX",
    report_data: ironpact_tdx::binding::report_data,
    aux: false,
    evidence: |quote, _| quote.to_vec(),
};

/// The simulated TD quoting stack (`ironpact_tdx::simulate`): quotes signed under the test PKI
/// in `pki_dir`, describing the configured TD.
pub struct SimulatedTdx {
    dev: ironpact_tdx::simulate::SimulatedTdx,
    td: ironpact_tdx::simulate::SimTd,
}

impl SimulatedTdx {
    pub fn load(pki_dir: &Path, td: ironpact_tdx::simulate::SimTd) -> Result<Self, EvidenceError> {
        let pki = ironpact_tdx::simulate::TestPki::from_files(|name| {
            std::fs::read(pki_dir.join(name))
                .map_err(|e| format!("{}/{name}: {e}", pki_dir.display()))
        })
        .map_err(|e| EvidenceError::Config(e.to_string()))?;
        let dev = ironpact_tdx::simulate::SimulatedTdx::new(
            &pki,
            ironpact_tdx::simulate::SimPlatform::default(),
        )
        .map_err(|e| EvidenceError::Config(e.to_string()))?;
        Ok(Self { dev, td })
    }
}

impl EvidenceSource for SimulatedTdx {
    fn name(&self) -> &'static str {
        "simulated-tdx"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
        self.dev
            .quote(&self.td, *report_data)
            .map_err(|e| EvidenceError::Device(e.to_string()))
    }

    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        ironpact_tdx::binding::report_data(nonce, spki)
    }
}

/// Where this node's TDX quotes come from.
#[derive(Debug, Clone)]
pub enum TdxSource {
    /// configfs-tsm with provider `tdx_guest` (Linux 6.7+).
    ConfigfsTsm(PathBuf),
    /// The software quoting stack of `ironpact_tdx::simulate`, with the test PKI in `pki_dir`.
    Simulated {
        pki_dir: PathBuf,
        td: Box<ironpact_tdx::simulate::SimTd>,
    },
}

impl TeeSourceConfig for TdxSource {
    fn name(&self) -> &'static str {
        "tdx"
    }

    fn build(&self) -> Result<Arc<dyn EvidenceSource>, EvidenceError> {
        Ok(match self {
            TdxSource::ConfigfsTsm(p) => Arc::new(ConfigfsTsm::with(p, &TSM_TDX)),
            TdxSource::Simulated { pki_dir, td } => {
                tracing::warn!(
                    "TDX quotes come from a SIMULATED quoting stack: for tests and demos only"
                );
                Arc::new(SimulatedTdx::load(pki_dir, (**td).clone())?)
            }
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `tdx { evidence_source = "configfs-tsm" | "simulated" … }` in a base attestor's
/// plugin_data, or the plugin_data of `NodeAttestor "tdx"` (none: configfs-tsm).
pub fn source(b: &Block<'_, '_>) -> Result<Arc<dyn TeeSourceConfig>, ConfigError> {
    let Some(d) = b.data else {
        return Ok(Arc::new(TdxSource::ConfigfsTsm(PathBuf::from(
            CONFIGFS_TSM_REPORT,
        ))));
    };
    let (source, configfs) = evidence_source(d)?;
    let src = match source.as_str() {
        "configfs-tsm" => TdxSource::ConfigfsTsm(configfs),
        "simulated" => {
            let s = d.section("simulated")?.ok_or_else(|| {
                d.err(
                    d.line(),
                    "evidence_source = \"simulated\" needs a simulated { pki_dir = … } block",
                )
            })?;
            let pki_dir = s
                .string("pki_dir")?
                .map(|v| PathBuf::from(v.0))
                .ok_or_else(|| {
                    s.err(
                        s.line(),
                        "simulated.pki_dir is required (the test PKI: pck.pem, pck.pk8, pck-ca.pem, root.pem …)",
                    )
                })?;
            let mut td =
                ironpact_tdx::simulate::SimTd::with_mrtd(hex_array(&s, "mrtd", [0x11; 48])?);
            td.debug = s.bool("debug")?.unwrap_or(false);
            s.finish()?;
            TdxSource::Simulated {
                pki_dir,
                td: Box::new(td),
            }
        }
        other => {
            return Err(d.err(
                d.line(),
                format!("evidence_source {other:?}: use \"configfs-tsm\" or \"simulated\""),
            ));
        }
    };
    Ok(Arc::new(src))
}
