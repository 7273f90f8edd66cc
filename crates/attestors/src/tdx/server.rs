//! The `tdx` TEE attestor: the server sends a fresh nonce; the agent answers with a TDX quote
//! whose REPORT_DATA is SHA-512("ironpact-tdx-v1" ‖ nonce ‖ its CSR key); the server verifies it
//! to the pinned root with current collateral and judges it with its policy. It completes a base
//! attestor (join_token, aws_iid: the base names the agent), or stands alone as
//! `NodeAttestor "tdx"` ([`crate::Standalone`]). Every renewal re-attests.

use super::pcs::CollateralStore;
use crate::{
    AttestError, Attested, Challenger, Evidence, PolicyCell, RefusalKind, TeeAttestor, TeeConfig,
    TeeOutcome,
};
use ironpact_datastore::AgentRecord;
use ironpact_spiffe::Selector;
use ironpact_spiffe::TrustDomain;
use ironpact_tdx::{Policy, Quote};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const NONCE_LEN: usize = 32;

pub struct TdxAttestor {
    /// Replaceable at runtime; read at every attestation and renewal.
    pub policy: PolicyCell<Policy>,
    /// Collateral from the offline directory and/or the PCS/PCCS cache; it also holds the
    /// root quotes and collateral are verified to.
    pub collateral: Arc<CollateralStore>,
}

fn rejected(e: ironpact_tdx::TdxError) -> AttestError {
    AttestError::Rejected(e.into())
}

impl TdxAttestor {}

#[async_trait::async_trait]
impl TeeAttestor for TdxAttestor {
    fn name(&self) -> &'static str {
        "tdx"
    }

    fn requirement(&self) -> &'static str {
        "a fresh TDX quote"
    }

    fn reload_policy(&self, owner: &str, cfg: &dyn TeeConfig) -> bool {
        let Some(c) = cfg.as_any().downcast_ref::<super::TdxConfig>() else {
            return false;
        };
        tracing::info!(
            attestor = owner,
            mrtds = c.policy.mrtds.len(),
            "reloaded the tdx policy; it applies to the next attestation or renewal"
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
        let quote = Quote::parse(&answer).map_err(rejected)?;
        if quote.td().is_none() {
            return Err(AttestError::rejected(
                RefusalKind::Tdx(ironpact_tdx::ErrorKind::Unparseable),
                "an SGX quote, not a TD quote",
            ));
        }
        // Nothing is fetched or cached for a quote that does not chain to the pinned root:
        // the platform (FMSPC) it names is only believed once its PCK chain and signatures
        // check out, so an unauthenticated caller cannot make the server fetch for it.
        ironpact_tdx::verify_quote(&quote, self.collateral.roots(), ev.now).map_err(rejected)?;
        let platform = quote.platform().map_err(rejected)?;
        let collateral = self.collateral.get(&platform, ev.now).await.map_err(|e| {
            AttestError::Unavailable(format!(
                "{}: no usable TDX collateral for FMSPC {}: {}",
                e.kind.as_str(),
                hex::encode_upper(platform.fmspc),
                e.why
            ))
        })?;
        let mut policy = self.policy.current()?;
        let digest = crate::policy_digest(&policy);
        let verified = ironpact_tdx::verify(
            &quote,
            &collateral,
            self.collateral.roots(),
            ev.now,
            policy.collateral_grace_seconds,
        )
        .map_err(rejected)?;
        policy.report_data = Some(ironpact_tdx::binding::report_data(&nonce, ev.csr_spki));
        policy.check(&verified).map_err(|e| {
            crate::policy_refusal(
                RefusalKind::Tdx(e.kind),
                e.message,
                verified
                    .quote()
                    .td()
                    .is_some_and(|td| policy.report_data == Some(td.report_data)),
                || policy.diff(&verified).into_iter().map(Into::into).collect(),
            )
        })?;
        let td = verified.quote().td().ok_or_else(|| {
            AttestError::rejected(
                RefusalKind::Tdx(ironpact_tdx::ErrorKind::Unparseable),
                "not a TD quote",
            )
        })?;
        let selectors = verified
            .selectors()
            .into_iter()
            .filter_map(|(k, v)| Selector::new("tdx", &format!("{k}:{v}")).ok())
            .collect();
        // a TD 1.0 quote names no launch; the quote's signed part identifies this appraisal
        let appraisal = hex::encode(&Sha256::digest(verified.quote().signed_bytes())[..16]);
        let m = |name: &str, v: &[u8]| ironpact_spiffe::claims::Measurement {
            name: name.into(),
            value: v.to_vec(),
        };
        let claims = ironpact_spiffe::claims::AttestationClaims {
            tee: "tdx".into(),
            measurements: vec![
                m("mrtd", &td.mr_td),
                m("rtmr0", &td.rt_mr0),
                m("rtmr1", &td.rt_mr1),
                m("rtmr2", &td.rt_mr2),
                m("rtmr3", &td.rt_mr3),
                m("mrseam", &td.mr_seam),
            ],
            tcb_status: snake(verified.tcb_status().unwrap_or("unknown")),
            tcb_version: hex::encode(td.tee_tcb_svn),
            debug: verified.quote().debug(),
            signing_key: "pck".into(),
            attested_at: ev.now,
            policy_digest: digest,
        };
        Ok(TeeOutcome {
            instance: None,
            appraisal,
            measurement: hex::encode(td.mr_td),
            selectors,
            claims,
        })
    }

    /// A TD 1.0 quote names no launch (SEV-SNP has its report ID): nothing in the hardware
    /// tells two launches of the same image on the same host apart. So a standalone agent ID
    /// is minted from the first attestation (`/spire/agent/tdx/<128 bits of the quote's
    /// hash>`), like a join token's, and kept across renewals, each of which needs a fresh
    /// quote that passes the current policy from a TD with the same MRTD; an agent that loses
    /// its SVID attests again under a new ID. Workloads are registered under node aliases
    /// bound to `tdx:*` selectors, not to agent IDs.
    async fn renew_standalone(
        &self,
        rec: &AgentRecord,
        _trust_domain: &TrustDomain,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let t = self.appraise(ev, challenger).await?;
        let was = rec
            .selectors
            .iter()
            .find(|s| s.kind == "tdx" && s.value.starts_with("mrtd:"))
            .map(|s| s.value.trim_start_matches("mrtd:").to_string());
        if was.as_deref() != Some(t.measurement.as_str()) {
            return Err(AttestError::rejected(
                RefusalKind::Tdx(ironpact_tdx::ErrorKind::MeasurementNotAllowed),
                format!(
                    "the renewal quote comes from a TD with MRTD {}, but {} attested with MRTD {}: the agent's key is in another TD",
                    t.measurement,
                    rec.spiffe_id,
                    was.unwrap_or_else(|| "(none recorded)".into())
                ),
            ));
        }
        Ok(Attested {
            agent_id: rec.spiffe_id.clone(),
            selectors: t.selectors,
            can_reattest: true,
            tee_instance: None,
            claims: Some(t.claims),
        })
    }
}

/// Intel's TCB status (`UpToDate`, `SWHardeningNeeded`, `TDRelaunchAdvised`) in snake case
/// (`up_to_date`, `sw_hardening_needed`, `td_relaunch_advised`): a run of capitals is one word.
pub(crate) fn snake(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::new();
    for (i, ch) in c.iter().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            let prev_lower = c[i - 1].is_ascii_lowercase();
            let next_lower = c.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if prev_lower || (c[i - 1].is_ascii_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn intels_statuses_in_snake_case() {
        for (from, to) in [
            ("UpToDate", "up_to_date"),
            ("SWHardeningNeeded", "sw_hardening_needed"),
            (
                "ConfigurationAndSWHardeningNeeded",
                "configuration_and_sw_hardening_needed",
            ),
            (
                "OutOfDateConfigurationNeeded",
                "out_of_date_configuration_needed",
            ),
            ("TDRelaunchAdvised", "td_relaunch_advised"),
            ("Revoked", "revoked"),
        ] {
            assert_eq!(snake(from), to);
        }
    }
    use crate::NodeAttestor;
    use ironpact_tdx::simulate::{SimPlatform, SimTd, SimulatedTdx, TestPki, collateral};

    const NOW: i64 = 1_790_000_000;
    const DAY: i64 = 86_400;

    /// Answers the nonce with a quote from `td`, bound to the CSR key.
    struct Td<'a> {
        dev: &'a SimulatedTdx,
        td: SimTd,
        spki: &'a [u8],
    }

    #[async_trait::async_trait]
    impl Challenger for Td<'_> {
        async fn challenge(&mut self, nonce: Vec<u8>) -> Result<Vec<u8>, AttestError> {
            let rd = ironpact_tdx::binding::report_data(&nonce, self.spki);
            Ok(self.dev.quote(&self.td, rd).unwrap())
        }
    }

    fn setup(dir: &std::path::Path) -> (crate::Standalone, SimulatedTdx) {
        let p = SimPlatform::default();
        let pki = TestPki::generate(&p, NOW - 100 * DAY, NOW + 100 * DAY).unwrap();
        let c = collateral(&pki, &p, NOW - DAY, NOW + 29 * DAY).unwrap();
        std::fs::write(dir.join("c.json"), c.to_json()).unwrap();
        let roots = ironpact_tdx::Roots::from_bytes(&pki.root.0).unwrap();
        let policy = Policy {
            mrtds: vec![[1; 48], [2; 48]],
            ..Policy::default()
        };
        let tee = Arc::new(TdxAttestor {
            collateral: Arc::new(CollateralStore::new(roots, Some(dir.to_path_buf()), None)),
            policy: PolicyCell::new("tdx", policy),
        });
        let a = crate::Standalone {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            tee,
        };
        (a, SimulatedTdx::new(&pki, p).unwrap())
    }

    #[tokio::test]
    async fn standalone_agents_keep_their_id_only_in_the_same_td() {
        let dir = tempfile::tempdir().unwrap();
        let (a, dev) = setup(dir.path());
        let spki = b"the agent's key".to_vec();
        let ev = Evidence {
            payload: &[],
            csr_spki: &spki,
            now: NOW,
        };
        let td = |m: u8| Td {
            dev: &dev,
            td: SimTd::with_mrtd([m; 48]),
            spki: &spki,
        };
        let first = a.attest(ev, &mut td(1)).await.unwrap();
        assert!(
            first
                .agent_id
                .to_string()
                .starts_with("spiffe://example.org/spire/agent/tdx/")
        );
        assert!(first.can_reattest && a.reattest_on_renewal());
        let second = a.attest(ev, &mut td(1)).await.unwrap();
        assert_ne!(
            first.agent_id, second.agent_id,
            "each attestation is a new agent"
        );

        let rec = AgentRecord {
            spiffe_id: first.agent_id.clone(),
            attestation_type: "tdx".into(),
            serial_number: "01".into(),
            expires_at: NOW + 60,
            selectors: first.selectors.clone(),
            banned: false,
            can_reattest: true,
            created_at: NOW,
            updated_at: NOW,
            attestation_error: String::new(),
            attestation_refusal: String::new(),
            tee_instance: String::new(),
            previous_serial: String::new(),
            attestation_claims: Vec::new(),
        };
        let renewed = a.renew(&rec, ev, &mut td(1)).await.unwrap();
        assert_eq!(renewed.agent_id, first.agent_id);
        // another allowed TD holding this agent's key: refused
        let e = a.renew(&rec, ev, &mut td(2)).await.unwrap_err();
        assert!(
            e.to_string().contains("measurement_not_allowed")
                && e.to_string().contains("another TD"),
            "{e}"
        );
        // a TD the policy does not allow: refused by the policy
        let e = a.renew(&rec, ev, &mut td(3)).await.unwrap_err();
        assert!(e.to_string().contains("measurement_not_allowed"), "{e}");
        // no collateral: refused with the kind and where it looked
        std::fs::remove_file(dir.path().join("c.json")).unwrap();
        let e = a.attest(ev, &mut td(1)).await.unwrap_err();
        assert!(
            e.to_string().contains("collateral_expired")
                && e.to_string().contains("none in collateral_dir"),
            "{e}"
        );
    }

    /// A quote that does not chain to the pinned root never makes the server fetch collateral
    /// for the platform it names (nor cache anything for it): it is refused first.
    #[tokio::test]
    async fn an_unverified_quote_makes_no_collateral_fetch() {
        use crate::tdx::pcs::{PcsClient, Refresh};
        let dir = tempfile::tempdir().unwrap();
        let p = SimPlatform::default();
        let pinned = TestPki::generate(&p, NOW - 100 * DAY, NOW + 100 * DAY).unwrap();
        let other = TestPki::generate(&p, NOW - 100 * DAY, NOW + 100 * DAY).unwrap();
        // a PCS stand-in that serves nothing: it only counts connections
        let pcs = ironpact_testkit::http::Emulator::start().unwrap();
        let url = pcs.url().to_string();
        let roots = ironpact_tdx::Roots::from_bytes(&pinned.root.0).unwrap();
        let store = CollateralStore::new(
            roots,
            None,
            Some((
                PcsClient::new(&url).unwrap(),
                dir.path().to_path_buf(),
                Refresh::new(std::time::Duration::from_secs(DAY as u64)),
            )),
        );
        let tee = TdxAttestor {
            collateral: Arc::new(store),
            policy: PolicyCell::new(
                "tdx",
                Policy {
                    mrtds: vec![[1; 48]],
                    ..Policy::default()
                },
            ),
        };
        let spki = b"the agent's key".to_vec();
        let ev = Evidence {
            payload: &[],
            csr_spki: &spki,
            now: NOW,
        };
        let dev = SimulatedTdx::new(&other, p).unwrap();
        let mut td = Td {
            dev: &dev,
            td: SimTd::with_mrtd([1; 48]),
            spki: &spki,
        };
        let e = tee.appraise(ev, &mut td).await.unwrap_err();
        assert!(
            e.is_refusal() && e.to_string().contains("untrusted_chain"),
            "{e}"
        );
        assert_eq!(pcs.connections(), 0, "the PCS was asked");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "something was cached"
        );
    }
}
