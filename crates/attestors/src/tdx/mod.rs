//! `tdx`: Intel TDX quotes (DCAP), bound to the server's nonce and the agent's key. Stands
//! alone (`NodeAttestor "tdx"`) or completes a base attestor (`tdx { … }` in its plugin_data).
//!
//! - `server.rs`: the verifier (quote, PCK chain to Intel's root, collateral, policy);
//! - `policy.rs`: the policy as HCL; `pcs.rs`: collateral from Intel's PCS/a PCCS and from
//!   an operator's directory, cached and refreshed;
//! - `agent.rs`: where the agent's quotes come from (configfs-tsm, simulated);
//! - the REPORT_DATA binding is `ironpact_tdx::binding`, shared by both.

pub mod agent;
pub mod pcs;
pub mod policy;
pub mod server;

use crate::TeeAttestor;
use crate::registry::{Block, BuildCtx, BuildError, ParseCtx, Registration, TeeConfig};
use ironpact_config::hcl::{ConfigError, Section};
use server::TdxAttestor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

pub const REGISTRATION: Registration = Registration::Tee {
    name: "tdx",
    server: server_config,
    agent: agent::source,
};

/// `NodeAttestor "tdx"`'s plugin_data, or a `tdx { … }` block in a base's.
fn server_config(b: &Block<'_, '_>, ctx: &ParseCtx<'_>) -> Result<Arc<dyn TeeConfig>, ConfigError> {
    let d = b.require(
        "tdx",
        "an mrtds allow-list and pcs_url and/or collateral_dir",
    )?;
    Ok(Arc::new(config(d, ctx.data_dir)?))
}

/// A `tdx { … }` block: the policy, the root, where collateral comes from.
#[derive(Debug, Clone)]
pub struct TdxConfig {
    pub policy: ironpact_tdx::Policy,
    /// Trusted instead of the Intel SGX Root CA. Only for simulated quotes in tests and demos.
    pub test_root: Option<PathBuf>,
    /// Collateral JSON files (TCB info, QE identity, CRLs, issuer chains) put there by the
    /// operator; a file is parsed again when it changes.
    pub collateral_dir: Option<PathBuf>,
    /// Intel's PCS or a PCCS to fetch collateral from (`pcs_url`).
    pub pcs_url: Option<String>,
    /// Where fetched collateral is cached (`collateral_cache_dir`; default
    /// `<data_dir>/tdx-collateral`).
    pub cache_dir: PathBuf,
    /// Fetch again once cached collateral is this old or this near its nextUpdate
    /// (`collateral_refresh`, default 24h).
    pub refresh: Duration,
}

/// Where a DCAP verifier finds its root and collateral: the settings `tdx` and `sgx` share.
#[derive(Debug, Clone)]
pub struct CollateralSettings {
    pub test_root: Option<PathBuf>,
    pub collateral_dir: Option<PathBuf>,
    pub pcs_url: Option<String>,
    pub cache_dir: PathBuf,
    pub refresh: Duration,
}

/// `test_root`, `collateral_dir`, `pcs_url`, `collateral_cache_dir` (default
/// `<data_dir>/<cache_name>`) and `collateral_refresh` of a `who` block.
pub fn collateral_settings(
    d: &Section<'_>,
    data_dir: &std::path::Path,
    who: &str,
    cache_name: &str,
) -> Result<CollateralSettings, ConfigError> {
    let test_root = d.string("test_root")?.map(|v| PathBuf::from(v.0));
    let collateral_dir = d.string("collateral_dir")?.map(|v| PathBuf::from(v.0));
    let pcs_url = match d.string("pcs_url")? {
        Some((u, line)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
            return Err(d.err(
                line,
                format!("{who}.pcs_url {u:?} must be an http(s) URL, e.g. \"https://api.trustedservices.intel.com\" or your PCCS"),
            ));
        }
        other => other.map(|v| v.0),
    };
    if collateral_dir.is_none() && pcs_url.is_none() {
        return Err(d.err(
            d.line(),
            format!("{who} needs collateral: set pcs_url (Intel's PCS, \"https://api.trustedservices.intel.com\", or your PCCS) and/or collateral_dir (a directory of collateral JSON files)"),
        ));
    }
    let cache_dir = d
        .string("collateral_cache_dir")?
        .map(|v| PathBuf::from(v.0))
        .unwrap_or_else(|| data_dir.join(cache_name));
    let refresh = d
        .duration("collateral_refresh")?
        .unwrap_or(Duration::from_secs(24 * 3600));
    if refresh.is_zero() {
        return Err(d.err(
            d.line(),
            format!("{who}.collateral_refresh must be more than 0s (e.g. \"24h\")"),
        ));
    }
    Ok(CollateralSettings {
        test_root,
        collateral_dir,
        pcs_url,
        cache_dir,
        refresh,
    })
}

/// The `tdx` block's settings and policy (`data_dir`: where the collateral cache goes by default).
pub fn config(d: &Section<'_>, data_dir: &std::path::Path) -> Result<TdxConfig, ConfigError> {
    let CollateralSettings {
        test_root,
        collateral_dir,
        pcs_url,
        cache_dir,
        refresh,
    } = collateral_settings(d, data_dir, "tdx", "tdx-collateral")?;
    let policy = policy::from_section(d)?;
    Ok(TdxConfig {
        policy,
        test_root,
        collateral_dir,
        pcs_url,
        cache_dir,
        refresh,
    })
}

impl TeeConfig for TdxConfig {
    fn name(&self) -> &'static str {
        "tdx"
    }

    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn TeeAttestor>, BuildError> {
        Ok(Arc::new(build(self, ctx)?))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Builds the `tdx` TEE attestor (standalone, or completing a base).
/// The collateral store `who` verifies with: the pinned root (Intel's, or a test root), the
/// operator's directory and/or a PCS/PCCS with its cache (`check_only`: create nothing).
pub fn collateral_store(
    who: &'static str,
    t: &CollateralSettings,
    check_only: bool,
) -> Result<Arc<pcs::CollateralStore>, BuildError> {
    let roots = match &t.test_root {
        Some(p) => {
            let bytes = crate::registry::read_config_file(
                who,
                "test_root",
                p,
                "write the simulated PKI with `ironpact-server fixtures tdx -dir DIR` (tests only), or remove test_root to trust Intel's root",
            )?;
            warn!(root = %p.display(), attestor = who, "trusting a TEST root: simulated quotes only, never production");
            ironpact_tdx::Roots::from_bytes(&bytes)
                .map_err(|e| BuildError::new(who, format!("{}: {e}", p.display())))?
        }
        None => ironpact_tdx::Roots::intel(),
    };
    if let Some(d) = &t.collateral_dir
        && !d.is_dir()
    {
        return Err(BuildError::new(
            who,
            format!(
                "collateral_dir {} is not a directory: create it and put your platforms' collateral JSON there",
                d.display()
            ),
        ));
    }
    let pcs = match &t.pcs_url {
        Some(url) => {
            let client =
                pcs::PcsClient::new(url).map_err(|e| BuildError::new(who, e.to_string()))?;
            // `validate` creates nothing: a cache directory that is missing is made by `run`
            if check_only {
                if t.cache_dir.exists() && !t.cache_dir.is_dir() {
                    return Err(BuildError::new(
                        who,
                        format!(
                            "collateral_cache_dir {} is a file: remove it or set another",
                            t.cache_dir.display()
                        ),
                    ));
                }
            } else {
                std::fs::create_dir_all(&t.cache_dir).map_err(|e| {
                    BuildError::new(
                        who,
                        format!(
                            "collateral_cache_dir {}: {e}: make it writable or set another",
                            t.cache_dir.display()
                        ),
                    )
                })?;
            }
            Some((client, t.cache_dir.clone(), pcs::Refresh::new(t.refresh)))
        }
        None => None,
    };
    Ok(Arc::new(pcs::CollateralStore::new(
        roots,
        t.collateral_dir.clone(),
        pcs,
    )))
}

fn build(t: &TdxConfig, ctx: &BuildCtx<'_>) -> Result<TdxAttestor, BuildError> {
    let collateral = collateral_store(
        "tdx",
        &CollateralSettings {
            test_root: t.test_root.clone(),
            collateral_dir: t.collateral_dir.clone(),
            pcs_url: t.pcs_url.clone(),
            cache_dir: t.cache_dir.clone(),
            refresh: t.refresh,
        },
        ctx.check_only(),
    )?;
    info!(
        mrtds = t.policy.mrtds.len(),
        statuses = ?t.policy.allowed_tcb_statuses,
        collateral_dir = ?t.collateral_dir,
        pcs_url = ?t.pcs_url,
        cache_dir = %t.cache_dir.display(),
        refresh = %ironpact_spiffe::duration::format(t.refresh),
        "tdx attestor ready"
    );
    Ok(TdxAttestor {
        policy: crate::PolicyCell::new("tdx", t.policy.clone()),
        collateral,
    })
}
