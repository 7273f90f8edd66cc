//! Attestor composition: a base attestor (join_token, aws_iid, x509pop, …) that also requires
//! a TEE attestor (sev_snp, tdx), and a TEE attestor standing alone. The base names the agent; the TEE's fresh evidence,
//! bound to the agent's key, must pass its policy too; the selectors are the union. Because
//! the TEE evidence is fresh, the composed attestor re-checks it on every renewal.
//!
//! What it proves: the key the agent SVID certifies lives in a TEE that passes the policy *and*
//! the node holds the base's evidence. The base's evidence may be a copy (an instance identity
//! document is not a secret): so where the TEE names its instance (SEV-SNP's report ID) the
//! agent ID is bound to that instance at first attestation, and another VM presenting the same
//! document is refused (`instance_mismatch`) while the original agent keeps working. Where it
//! names none (TDX 1.0), the node attests once and needs eviction, as the base alone does.

use crate::{AttestError, Attested, Challenger, Evidence, NodeAttestor, TeeAttestor};
use ironpact_datastore::AgentRecord;
use ironpact_spiffe::TrustDomain;
use std::sync::Arc;

pub struct WithTee {
    pub base: Arc<dyn NodeAttestor>,
    pub tee: Arc<dyn TeeAttestor>,
}

impl WithTee {
    async fn complete(
        &self,
        mut a: Attested,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let t = self
            .tee
            .appraise(ev, challenger)
            .await
            .map_err(|e| match e {
                AttestError::Rejected(mut r) => {
                    r.required_by = Some(format!(
                        "{} required by {}",
                        self.tee.name(),
                        self.base.name()
                    ));
                    AttestError::Rejected(r)
                }
                other => other,
            })?;
        a.selectors.extend(self.base.tee_selectors(&t));
        a.selectors.extend(t.selectors);
        a.selectors.sort();
        a.selectors.dedup();
        // Fresh evidence from a named instance may attest again, from that instance only
        // (the endpoint compares it with the record). Evidence that names no instance (TDX
        // 1.0) cannot tell a copy of the base's credentials apart (a document, or a key file
        // copied into another TD of the same image): attest once, as the base.
        a.can_reattest = t.instance.is_some();
        a.tee_instance = t.instance;
        a.claims = Some(t.claims);
        Ok(a)
    }
}

#[async_trait::async_trait]
impl NodeAttestor for WithTee {
    fn name(&self) -> &'static str {
        self.base.name()
    }

    fn reattest_on_renewal(&self) -> bool {
        true
    }

    fn identity_follows_credentials(&self) -> bool {
        self.base.identity_follows_credentials()
    }

    async fn attest(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let a = self.base.attest(ev, challenger).await?;
        self.complete(a, ev, challenger).await
    }

    async fn renew(
        &self,
        rec: &AgentRecord,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let base = if self.base.single_use() {
            // a join token cannot be shown twice: the record keeps what it established
            let own = self.base.name();
            Attested {
                agent_id: rec.spiffe_id.clone(),
                selectors: rec
                    .selectors
                    .iter()
                    .filter(|s| s.kind == own && !s.value.starts_with("measurements:"))
                    .cloned()
                    .collect(),
                can_reattest: rec.can_reattest,
                tee_instance: None,
                claims: None,
            }
        } else {
            self.base.attest(ev, challenger).await?
        };
        self.complete(base, ev, challenger).await
    }
}

/// A TEE attestor standing alone (`NodeAttestor "sev_snp"`, `"tdx"`): the agent is
/// `spiffe://<td>/spire/agent/<tee>/<instance>`, every renewal brings fresh evidence.
pub struct Standalone {
    pub trust_domain: TrustDomain,
    pub tee: Arc<dyn TeeAttestor>,
}

#[async_trait::async_trait]
impl NodeAttestor for Standalone {
    fn name(&self) -> &'static str {
        self.tee.name()
    }

    fn reattest_on_renewal(&self) -> bool {
        true
    }

    async fn attest(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        self.tee
            .appraise(ev, challenger)
            .await?
            .standalone(&self.trust_domain, self.tee.name())
    }

    async fn renew(
        &self,
        rec: &AgentRecord,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        self.tee
            .renew_standalone(rec, &self.trust_domain, ev, challenger)
            .await
    }
}
