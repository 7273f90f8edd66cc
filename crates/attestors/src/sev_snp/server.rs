//! The `sev_snp` attestor: the server sends a fresh nonce; the agent answers with a report
//! whose REPORT_DATA binds that nonce and the key of its CSR, plus its VCEK/VLEK; the server
//! verifies the report to the configured AMD roots and judges it with its policy. Renewals
//! attest again (continuous attestation), so a policy change stops machines that no longer pass.

use crate::{
    AttestError, Challenger, Evidence, PolicyCell, RefusalKind, TeeAttestor, TeeConfig, TeeOutcome,
};
use ironpact_snp::binding::{NONCE_LEN, decode_evidence, report_data};
use ironpact_snp::{AmdRoots, Policy};
use ironpact_spiffe::Selector;

pub struct SevSnpAttestor {
    pub roots: AmdRoots,
    /// Replaceable at runtime; read at every attestation and renewal.
    pub policy: PolicyCell<Policy>,
    /// Fetches the VCEK when the evidence carries none.
    pub kds: Option<super::kds::KdsFetcher>,
    /// The product of reports that do not say (v2).
    pub product: Option<ironpact_snp::Product>,
    /// VCEK/VLEK certificates for evidence that carries none (read at each attestation, so
    /// certificates dropped in apply at once).
    pub certs_dir: Option<std::path::PathBuf>,
    /// Check AMD's CRL (via `kds`) for the ASK/ASVK and the VCEK/VLEK.
    pub check_crl: bool,
}

fn rejected(e: ironpact_snp::SnpError) -> AttestError {
    AttestError::Rejected(e.into())
}

fn untrusted_chain(message: String) -> AttestError {
    AttestError::rejected(
        RefusalKind::SevSnp(ironpact_snp::ErrorKind::UntrustedChain),
        message,
    )
}

/// A KDS failure: an outage is transient (nothing judged), anything else refuses the chain.
fn kds_failure(what: &str, e: super::kds::KdsError) -> AttestError {
    if e.is_transient() {
        AttestError::Unavailable(format!("AMD KDS: {e}"))
    } else {
        untrusted_chain(format!("{what}{e}"))
    }
}

/// The VCEK or VLEK for `report` among the files of `dir` (any names, DER or PEM), as
/// [`ironpact_snp::certs::select_endorsement`] picks it. Read at each call, so certificates
/// dropped in apply at once.
pub fn endorsement_in_dir(
    dir: &std::path::Path,
    report: &ironpact_snp::Report,
    product: Option<ironpact_snp::Product>,
) -> Option<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "sev_snp certs_dir cannot be read");
        return None;
    };
    let files: Vec<Vec<u8>> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    ironpact_snp::certs::select_endorsement(files.iter().map(Vec::as_slice), report, product)
}

impl SevSnpAttestor {
    /// The VCEK/VLEK for evidence that carries none: from `certs_dir`, else from the KDS
    /// (VCEKs only: a VLEK cannot be fetched).
    async fn find_endorsement(&self, report: &[u8], now: i64) -> Result<Vec<u8>, AttestError> {
        let parsed = ironpact_snp::Report::parse(report).map_err(rejected)?;
        if let Some(dir) = &self.certs_dir {
            let (d, r, product) = (dir.clone(), parsed.clone(), self.product);
            let found = tokio::task::spawn_blocking(move || endorsement_in_dir(&d, &r, product))
                .await
                .ok()
                .flatten();
            if let Some(c) = found {
                tracing::debug!(dir = %dir.display(), "VCEK/VLEK from certs_dir");
                return Ok(c);
            }
        }
        let where_ = match &self.certs_dir {
            Some(d) => format!(
                "nor does certs_dir {} hold one for this chip and TCB",
                d.display()
            ),
            None => "and no certs_dir is configured".into(),
        };
        match (&self.kds, parsed.signing_key()) {
            (Some(kds), ironpact_snp::SigningKey::Vcek) => kds
                .vcek(&parsed, self.product, now)
                .await
                .map_err(|e| kds_failure("", e)),
            (_, ironpact_snp::SigningKey::Vlek) => Err(untrusted_chain(format!(
                "the VLEK-signed evidence carries no VLEK, {where_} (a VLEK cannot be fetched from the KDS)"
            ))),
            _ => Err(untrusted_chain(format!(
                "the evidence carries no VCEK/VLEK, {where_}, and KDS fetching is off"
            ))),
        }
    }

    /// AMD's CRL: neither the ASK/ASVK nor the VCEK/VLEK may be revoked.
    async fn check_revocation(
        &self,
        v: &ironpact_snp::Verified,
        now: i64,
    ) -> Result<(), AttestError> {
        let kds = self
            .kds
            .as_ref()
            .ok_or_else(|| untrusted_chain("check_crl needs the KDS (fetch_vcek)".into()))?;
        let crl = kds
            .crl(v.product(), v.signing_key(), now)
            .await
            .map_err(|e| kds_failure("no CRL: ", e))?;
        ironpact_snp::crl::check_verified(&crl, &self.roots, v, now).map_err(rejected)
    }
}

#[async_trait::async_trait]
impl TeeAttestor for SevSnpAttestor {
    fn name(&self) -> &'static str {
        "sev_snp"
    }

    fn requirement(&self) -> &'static str {
        "fresh SEV-SNP evidence"
    }

    fn reload_policy(&self, owner: &str, cfg: &dyn TeeConfig) -> bool {
        let Some(c) = cfg.as_any().downcast_ref::<super::SevSnpConfig>() else {
            return false;
        };
        tracing::info!(
            attestor = owner,
            measurements = c.policy.measurements.len(),
            "reloaded the sev_snp policy; it applies to the next attestation or renewal"
        );
        self.policy.set(c.policy.clone());
        true
    }

    async fn appraise(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<TeeOutcome, AttestError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let answer = challenger.challenge(nonce.to_vec()).await?;
        let (report, cert) = decode_evidence(&answer).map_err(rejected)?;
        let cert = match cert {
            Some(c) => c,
            None => self.find_endorsement(report, ev.now).await?,
        };
        let verified =
            ironpact_snp::verify_authentic(report, &cert, &self.roots, ev.now, self.product)
                .map_err(rejected)?;
        if self.check_crl {
            self.check_revocation(&verified, ev.now).await?;
        }
        let mut policy = self.policy.current()?;
        let digest = crate::policy_digest(&policy);
        let digest_policy_has_min_tcb = policy.min_reported_tcb.is_some();
        policy.report_data = Some(report_data(&nonce, ev.csr_spki));
        policy.check(&verified).map_err(|e| {
            crate::policy_refusal(
                RefusalKind::SevSnp(e.kind),
                e.message,
                policy.report_data == Some(verified.report().report_data),
                || policy.diff(&verified).into_iter().map(Into::into).collect(),
            )
        })?;
        let selectors = verified
            .selectors()
            .into_iter()
            .filter_map(|(k, v)| Selector::new("sev_snp", &format!("{k}:{v}")).ok())
            .collect();
        // A VM moved by a migration agent keeps the MA's report ID; others are named by their
        // own (REPORT_ID_MA is all ones, or zero, when there is no migration agent).
        let ma = verified.report().report_id_ma;
        let instance = if ma.iter().all(|&b| b == 0xff) || ma.iter().all(|&b| b == 0) {
            hex::encode(verified.report().report_id)
        } else {
            format!("ma-{}", hex::encode(ma))
        };
        let r = verified.report();
        let tcb = verified.reported_tcb();
        let m = |name: &str, v: &[u8]| ironpact_spiffe::claims::Measurement {
            name: name.into(),
            value: v.to_vec(),
        };
        let claims = ironpact_spiffe::claims::AttestationClaims {
            tee: "sev_snp".into(),
            measurements: vec![
                m("measurement", &r.measurement),
                m("host_data", &r.host_data),
                m("id_key_digest", &r.id_key_digest),
                m("author_key_digest", &r.author_key_digest),
            ],
            // the reported TCB is at or above the policy's minimum; "unchecked" when the
            // policy sets none (a peer requiring meets_policy then refuses)
            tcb_status: if digest_policy_has_min_tcb {
                "meets_policy".into()
            } else {
                "unchecked".into()
            },
            tcb_version: match tcb.fmc {
                Some(f) => format!(
                    "fmc={f},bl={},tee={},snp={},ucode={}",
                    tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
                ),
                None => format!(
                    "bl={},tee={},snp={},ucode={}",
                    tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
                ),
            },
            debug: r.debug(),
            signing_key: verified.signing_key().as_str().into(),
            attested_at: ev.now,
            policy_digest: digest,
        };
        Ok(TeeOutcome {
            appraisal: instance.clone(),
            instance: Some(instance),
            measurement: hex::encode(r.measurement),
            selectors,
            claims,
        })
    }
}
