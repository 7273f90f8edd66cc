//! `sev_snp`: AMD SEV-SNP attestation reports, bound to the server's nonce and the agent's key.
//! Stands alone (`NodeAttestor "sev_snp"`) or completes a base attestor (`sev_snp { … }` in
//! its plugin_data).
//!
//! - `server.rs`: the verifier (report, VCEK/VLEK chain to AMD's roots, policy, CRL);
//! - `policy.rs`: the policy as HCL; `kds.rs`: the AMD KDS client and its cache;
//! - `agent.rs`: where the agent's evidence comes from (configfs-tsm, /dev/sev-guest,
//!   simulated);
//! - the wire format and the REPORT_DATA binding are `ironpact_snp::binding`, shared by both.

pub mod agent;
pub mod kds;
pub mod policy;
pub mod server;

use crate::TeeAttestor;
use crate::registry::{Block, BuildCtx, BuildError, ParseCtx, Registration, TeeConfig};
use ironpact_config::hcl::{ConfigError, Section};
use server::SevSnpAttestor;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

pub const REGISTRATION: Registration = Registration::Tee {
    name: "sev_snp",
    server: server_config,
    agent: agent::source,
};

/// `NodeAttestor "sev_snp"`'s plugin_data, or a `sev_snp { … }` block in a base's.
fn server_config(b: &Block<'_, '_>, _: &ParseCtx<'_>) -> Result<Arc<dyn TeeConfig>, ConfigError> {
    let d = b.require("sev_snp", "a measurements allow-list")?;
    Ok(Arc::new(config(d)?))
}

fn fail(message: impl Into<String>) -> BuildError {
    BuildError::new("sev_snp", message)
}

/// The `sev_snp` attestor: its policy, and test roots when a simulated chain is to be trusted.
#[derive(Debug, Clone)]
pub struct SevSnpConfig {
    pub policy: ironpact_snp::Policy,
    /// Trusted instead of AMD's genuine roots. Only for simulated evidence in tests and demos.
    pub test_roots: Option<TestRoots>,
    /// Fetch a missing VCEK (and CRLs) from the AMD KDS at this base URL (None: never fetch).
    pub kds_base_url: Option<String>,
    /// The product of v2 reports, which do not say.
    pub product: Option<ironpact_snp::Product>,
    /// VCEK/VLEK certificates (DER or PEM, any file name) for evidence that carries none.
    pub certs_dir: Option<PathBuf>,
    /// Check AMD's CRL (from the KDS, cached until its nextUpdate) for every attestation.
    pub check_crl: bool,
}

impl TeeConfig for SevSnpConfig {
    fn name(&self) -> &'static str {
        "sev_snp"
    }

    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn TeeAttestor>, BuildError> {
        Ok(Arc::new(build(self, ctx)?))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `test_roots { product = "milan"  ark = "ark.pem"  ask = "ask.pem"  asvk = "asvk.pem" }`.
#[derive(Debug, Clone)]
pub struct TestRoots {
    pub product: ironpact_snp::Product,
    pub ark: PathBuf,
    pub ask: PathBuf,
    pub asvk: Option<PathBuf>,
}

/// The `sev_snp` attestor's settings and policy, from its plugin_data (or from a `sev_snp`
/// block nested in a base attestor's plugin_data).
pub fn config(d: &Section<'_>) -> Result<SevSnpConfig, ConfigError> {
    let test_roots = match d.section("test_roots")? {
        Some(t) => {
            let need = |k: &str| -> Result<(String, usize), ConfigError> {
                t.string(k)?
                    .ok_or_else(|| t.err(t.line(), format!("test_roots.{k} is required")))
            };
            let (product, pl) = need("product")?;
            let product = ironpact_snp::Product::from_name(&product).ok_or_else(|| {
                t.err(
                    pl,
                    format!("test_roots.product {product:?}: use milan, genoa or turin"),
                )
            })?;
            let ark = PathBuf::from(need("ark")?.0);
            let asvk = t.string("asvk")?.map(|v| PathBuf::from(v.0));
            // a VLEK-only test chain needs no ASK: the ASVK stands in for it
            let ask = match (t.string("ask")?, &asvk) {
                (Some((v, _)), _) => PathBuf::from(v),
                (None, Some(a)) => a.clone(),
                (None, None) => need("ask").map(|v| PathBuf::from(v.0))?,
            };
            t.finish()?;
            Some(TestRoots {
                product,
                ark,
                ask,
                asvk,
            })
        }
        None => None,
    };
    let fetch = d.bool("fetch_vcek")?.unwrap_or(true);
    let check_crl = d.bool("check_crl")?.unwrap_or(false);
    let base = d.string("kds_base_url")?.map(|v| v.0);
    if check_crl && !fetch {
        return Err(d.err(
            d.line(),
            "check_crl = true fetches AMD's CRL from the KDS: it needs fetch_vcek = true (and kds_base_url for a mirror)",
        ));
    }
    let kds_base_url = fetch.then(|| base.unwrap_or_else(|| kds::DEFAULT_BASE_URL.to_string()));
    let product = match d.string("product")? {
        None => None,
        Some((p, l)) => Some(
            ironpact_snp::Product::from_name(&p)
                .ok_or_else(|| d.err(l, format!("product {p:?}: use milan, genoa or turin")))?,
        ),
    };
    let certs_dir = d.string("certs_dir")?.map(|v| PathBuf::from(v.0));
    let policy = policy::from_section(d)?;
    Ok(SevSnpConfig {
        policy,
        test_roots,
        kds_base_url,
        product,
        certs_dir,
        check_crl,
    })
}

/// Builds a `sev_snp` attestor (standalone, or the TEE half of a composed one).
fn build(snp: &SevSnpConfig, ctx: &BuildCtx<'_>) -> Result<SevSnpAttestor, BuildError> {
    let roots = match &snp.test_roots {
        Some(t) => {
            let read = |key: &str, p: &std::path::Path| -> Result<Vec<u8>, BuildError> {
                let text = crate::registry::read_config_file(
                    "sev_snp",
                    &format!("test_roots.{key}"),
                    p,
                    "write the simulated chain with `ironpact-server fixtures snp -dir DIR` (tests only), or remove test_roots to trust AMD's roots",
                )?;
                ironpact_snp::certs::to_der(&text)
                    .map_err(|e| fail(format!("test_roots.{key} = {:?}: {e}", p.display())))
            };
            warn!(product = %t.product, ark = %t.ark.display(), "sev_snp trusts TEST roots: simulated evidence only, never production");
            let asvk = t.asvk.as_deref().map(|p| read("asvk", p)).transpose()?;
            let pr = ironpact_snp::roots::ProductRoots::new(
                t.product,
                read("ark", &t.ark)?,
                read("ask", &t.ask)?,
                asvk,
            )
            .map_err(|e| fail(format!("test roots: {e}")))?;
            ironpact_snp::AmdRoots::custom(vec![pr])
        }
        None => ironpact_snp::AmdRoots::genuine().map_err(|e| fail(e.to_string()))?,
    };
    let kds = match &snp.kds_base_url {
        Some(url) => Some(
            kds::KdsFetcher::new(url, ctx.data_dir.join("kds")).map_err(|e| fail(e.to_string()))?,
        ),
        None => None,
    };
    info!(
        measurements = snp.policy.measurements.len(),
        any = snp.policy.allow_any_measurement,
        check_crl = snp.check_crl,
        certs_dir = ?snp.certs_dir,
        "sev_snp attestor ready"
    );
    Ok(SevSnpAttestor {
        roots,
        policy: crate::PolicyCell::new("sev_snp", snp.policy.clone()),
        kds,
        product: snp.product,
        certs_dir: snp.certs_dir.clone(),
        check_crl: snp.check_crl,
    })
}
