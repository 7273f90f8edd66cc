//! The `sev_snp` attestor: the server sends a fresh nonce; the agent answers with a report
//! whose REPORT_DATA binds that nonce and the key of its CSR, plus its VCEK/VLEK; the server
//! verifies the report to the configured AMD roots and judges it with its policy. Renewals
//! attest again (continuous attestation), so a policy change stops machines that no longer pass.

use super::{AttestError, Attested, Challenger, Evidence, NodeAttestor};
use ironpact_snp::binding::{NONCE_LEN, decode_evidence, report_data};
use ironpact_snp::{AmdRoots, Policy};
use ironpact_spiffe::{Selector, TrustDomain};
use std::sync::RwLock;

pub struct SevSnpAttestor {
    pub trust_domain: TrustDomain,
    pub roots: AmdRoots,
    /// Replaceable at runtime; read at every attestation and renewal.
    pub policy: RwLock<Policy>,
    /// Fetches the VCEK when the evidence carries none.
    pub kds: Option<crate::kds::KdsFetcher>,
    /// The product of reports that do not say (v2).
    pub product: Option<ironpact_snp::Product>,
}

impl SevSnpAttestor {
    pub fn set_policy(&self, p: Policy) {
        if let Ok(mut g) = self.policy.write() {
            *g = p;
        }
    }
}

#[tonic::async_trait]
impl NodeAttestor for SevSnpAttestor {
    fn name(&self) -> &'static str {
        "sev_snp"
    }

    fn reattest_on_renewal(&self) -> bool {
        true
    }

    async fn attest(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let answer = challenger.challenge(nonce.to_vec()).await?;
        let (report, cert) =
            decode_evidence(&answer).map_err(|e| AttestError::Rejected(e.to_string()))?;
        let cert = match (cert, &self.kds) {
            (Some(c), _) => c,
            (None, Some(kds)) => {
                let parsed = ironpact_snp::Report::parse(report)
                    .map_err(|e| AttestError::Rejected(e.to_string()))?;
                if parsed.signing_key() != ironpact_snp::SigningKey::Vcek {
                    return Err(AttestError::Rejected(
                        "untrusted_chain: a VLEK-signed report must carry its VLEK (it cannot be fetched)".into(),
                    ));
                }
                kds.vcek(&parsed, self.product)
                    .await
                    .map_err(|e| AttestError::Rejected(format!("untrusted_chain: {e}")))?
            }
            (None, None) => {
                return Err(AttestError::Rejected(
                    "untrusted_chain: the evidence carries no VCEK/VLEK and KDS fetching is off"
                        .into(),
                ));
            }
        };
        let verified =
            ironpact_snp::verify_authentic(report, &cert, &self.roots, ev.now, self.product)
                .map_err(|e| AttestError::Rejected(e.to_string()))?;
        let mut policy = self.policy.read().map(|p| p.clone()).unwrap_or_default();
        policy.report_data = Some(report_data(&nonce, ev.csr_spki));
        policy
            .check(&verified)
            .map_err(|e| AttestError::Rejected(e.to_string()))?;
        let agent_id = self
            .trust_domain
            .id_with_path(&format!(
                "/spire/agent/sev_snp/{}",
                hex::encode(verified.report.report_id)
            ))
            .map_err(|e| AttestError::Malformed(e.to_string()))?;
        let selectors = verified
            .selectors()
            .into_iter()
            .filter_map(|(k, v)| Selector::new("sev_snp", &format!("{k}:{v}")).ok())
            .collect();
        Ok(Attested {
            agent_id,
            selectors,
            can_reattest: true,
        })
    }
}
