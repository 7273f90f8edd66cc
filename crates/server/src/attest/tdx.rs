//! The `tdx` TEE attestor: the server sends a fresh nonce; the agent answers with a TDX quote
//! whose REPORT_DATA is SHA-512("ironpact-tdx-v1" ‖ nonce ‖ its CSR key); the server verifies it
//! to the pinned root with current collateral and judges it with its policy. It completes a base
//! attestor (join_token, aws_iid): the base names the agent, and every renewal re-attests.

use super::{AttestError, Challenger, Evidence, TeeAttestor, TeeOutcome};
use ironpact_spiffe::Selector;
use ironpact_tdx::{Collateral, Policy, Quote, Roots};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub const NONCE_LEN: usize = 32;

pub struct TdxAttestor {
    pub roots: Roots,
    /// Replaceable at runtime; read at every attestation and renewal.
    pub policy: RwLock<Policy>,
    /// Collateral files (`collateral.json` shape, any name), read at each attestation so that
    /// fresh collateral dropped in applies at once.
    pub collateral_dir: PathBuf,
}

fn rejected(e: impl std::fmt::Display) -> AttestError {
    AttestError::Rejected(e.to_string())
}

/// The newest collateral in `dir` for this platform model and TEE.
pub fn collateral_in_dir(dir: &Path, fmspc: [u8; 6], tee: &str) -> Option<Collateral> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "tdx collateral_dir cannot be read");
        return None;
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let c = Collateral::from_json(&std::fs::read(e.path()).ok()?);
            if let Err(err) = &c {
                tracing::warn!(file = %e.path().display(), error = %err, "unreadable TDX collateral");
            }
            c.ok()
        })
        .filter(|c| c.fmspc == fmspc && c.tee == tee)
        .max_by_key(|c| c.next_update)
}

impl TdxAttestor {
    pub fn set_policy(&self, p: Policy) {
        if let Ok(mut g) = self.policy.write() {
            *g = p;
        }
    }
}

#[tonic::async_trait]
impl TeeAttestor for TdxAttestor {
    fn name(&self) -> &'static str {
        "tdx"
    }

    async fn appraise(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<TeeOutcome, AttestError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let answer = challenger.challenge(nonce.to_vec()).await?;
        let quote = Quote::parse(&answer).map_err(rejected)?;
        let fmspc = dcap_qvl_fmspc(&quote)?;
        let collateral = collateral_in_dir(&self.collateral_dir, fmspc, "TDX").ok_or_else(|| {
            AttestError::Rejected(format!(
                "collateral_expired: no TDX collateral for FMSPC {} in collateral_dir {}: put the platform's collateral.json there",
                hex::encode(fmspc),
                self.collateral_dir.display()
            ))
        })?;
        let mut policy = self.policy.read().map(|p| p.clone()).unwrap_or_default();
        let verified = ironpact_tdx::verify(
            &quote,
            &collateral,
            &self.roots,
            ev.now,
            policy.collateral_grace_seconds,
        )
        .map_err(rejected)?;
        policy.report_data = Some(ironpact_tdx::binding::report_data(&nonce, ev.csr_spki));
        policy.check(&verified).map_err(rejected)?;
        let td = verified
            .quote
            .td()
            .ok_or_else(|| AttestError::Rejected("not a TD quote".into()))?;
        let selectors = verified
            .selectors()
            .into_iter()
            .filter_map(|(k, v)| Selector::new("tdx", &format!("{k}:{v}")).ok())
            .collect();
        // a TD 1.0 quote names no launch; the quote's signed part identifies this appraisal
        let instance = hex::encode(&Sha256::digest(verified.quote.signed_bytes())[..16]);
        Ok(TeeOutcome {
            instance,
            measurement: hex::encode(td.mr_td),
            selectors,
        })
    }
}

/// The FMSPC the quote's PCK certificate names (collateral is per platform model).
fn dcap_qvl_fmspc(q: &Quote) -> Result<[u8; 6], AttestError> {
    dcap_qvl::intel::quote_fmspc(q.inner())
        .map_err(|e| AttestError::Rejected(format!("untrusted_chain: PCK certificate: {e:#}")))
}
