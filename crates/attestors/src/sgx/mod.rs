//! `sgx`: enclave workloads. An SGX enclave asks its agent for a nonce (the server's), quotes
//! with REPORT_DATA = SHA-512("ironpact-sgx-v1" ‖ nonce ‖ SPKI of its CSR) and sends quote and
//! CSR; the agent relays them with the unix selectors of the calling process; the *server*
//! verifies the quote here and signs SVIDs for the CSR's key for the entries the enclave's
//! selectors match.
//!
//! Why the server verifies, not the agent: SGX's threat model does not trust the host an
//! enclave runs on, and the agent is part of that host. If the agent judged the quote, a
//! compromised host could get the enclave's identity issued to a key outside the enclave; with
//! the server judging, an enclave entry's SVID is only ever signed for a key a verified quote
//! binds, whatever the agent says. The server also already runs the DCAP verifier and the
//! PCS/PCCS collateral store of the `tdx` attestor (the same code; its own settings and
//! cache), so no agent needs PCCS access. What the agent contributes (the unix selectors of the caller) is what only it can
//! see; an entry that names them trusts the agent for them, as every workload entry does.
//!
//! - [`SgxConfig`]: the server's `WorkloadAttestor "sgx"` plugin_data (policy and collateral);
//! - [`EnclaveVerifier::appraise`]: quote → verified, judged [`Enclave`] (selectors, claims);
//! - [`judge`]: the policy applied to a verified quote, shared with `verify`-style callers.

use crate::registry::BuildError;
use crate::tdx::pcs::CollateralStore;
use crate::tdx::{CollateralSettings, collateral_settings, collateral_store};
use crate::{AttestError, Difference, PolicyCell, Refusal, RefusalKind};
use ironpact_config::hcl::{ConfigError, Section};
use ironpact_snp::policy::hex_list_short;
use ironpact_spiffe::Selector;
use ironpact_spiffe::claims::{AttestationClaims, Measurement};
use ironpact_tdx::{ErrorKind, Quote, Verified};
use std::sync::Arc;
use tracing::{info, warn};

/// The REPORT_DATA domain: an enclave's quote for ironpact binds this, the nonce and its key.
pub const DOMAIN: &[u8] = b"ironpact-sgx-v1";
pub const NONCE_LEN: usize = 32;

/// SHA-512("ironpact-sgx-v1" ‖ nonce ‖ DER SubjectPublicKeyInfo of the CSR's key): the 64
/// bytes an enclave writes to `/dev/attestation/user_report_data` before it reads its quote.
pub fn report_data(nonce: &[u8], spki_der: &[u8]) -> [u8; 64] {
    ironpact_tdx::binding::bind(DOMAIN, nonce, spki_der)
}

/// What an enclave must show, beyond its entries' selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgxPolicy {
    /// TCB statuses accepted (Intel's names). Default: `UpToDate` only.
    pub allowed_tcb_statuses: Vec<String>,
    /// Advisory IDs that refuse a platform whatever its status.
    pub denied_advisories: Vec<String>,
    /// Seconds past the collateral's nextUpdate during which it is still used (0: none).
    pub collateral_grace_seconds: i64,
    /// Debug enclaves (their memory is open to the host) are refused unless this is set.
    pub allow_debug: bool,
    /// The lowest ISV SVN admitted (an enclave's security version).
    pub min_isv_svn: u16,
    /// MRSIGNER and MRENCLAVE allow-lists for every enclave this server serves; empty: any
    /// (entries still select enclaves by `sgx:mrenclave` / `sgx:mrsigner`).
    pub mrsigners: Vec<[u8; 32]>,
    pub mrenclaves: Vec<[u8; 32]>,
}

impl Default for SgxPolicy {
    fn default() -> Self {
        Self {
            allowed_tcb_statuses: vec!["UpToDate".into()],
            denied_advisories: Vec::new(),
            collateral_grace_seconds: 0,
            allow_debug: false,
            min_isv_svn: 0,
            mrsigners: Vec::new(),
            mrenclaves: Vec::new(),
        }
    }
}

/// The server's `WorkloadAttestor "sgx"` plugin_data.
#[derive(Debug, Clone)]
pub struct SgxConfig {
    pub policy: SgxPolicy,
    pub collateral: CollateralSettings,
}

fn list32(s: &Section<'_>, key: &str) -> Result<Vec<[u8; 32]>, ConfigError> {
    Ok(crate::tee_source::hex_list(s, key, 32)?
        .into_iter()
        .filter_map(|b| b.try_into().ok())
        .collect())
}

/// Reads the plugin_data:
///
/// ```hcl
/// allowed_tcb_statuses = ["UpToDate"]   denied_advisories = []   collateral_grace = "0s"
/// allow_debug = false   min_isv_svn = 0   mrsigners = []   mrenclaves = []
/// pcs_url = "https://pccs.example:8081"  and/or  collateral_dir = "/etc/ironpact/sgx"
/// collateral_cache_dir = "<data_dir>/sgx-collateral"   collateral_refresh = "24h"
/// test_root = "…"   # simulated quotes only
/// ```
pub fn config(d: &Section<'_>, data_dir: &std::path::Path) -> Result<SgxConfig, ConfigError> {
    let collateral = collateral_settings(d, data_dir, "sgx", "sgx-collateral")?;
    let dflt = SgxPolicy::default();
    let statuses = d
        .strings("allowed_tcb_statuses")?
        .unwrap_or(dflt.allowed_tcb_statuses);
    if let Some(bad) = statuses
        .iter()
        .find(|s| !ironpact_tdx::policy::TCB_STATUSES.contains(&s.as_str()))
    {
        return Err(d.err(
            d.line(),
            format!(
                "sgx.allowed_tcb_statuses: {bad:?} is not one of {}",
                ironpact_tdx::policy::TCB_STATUSES.join(", ")
            ),
        ));
    }
    let min_isv_svn = d.u16("min_isv_svn")?.map_or(0, |v| v.0);
    let policy = SgxPolicy {
        allowed_tcb_statuses: statuses,
        denied_advisories: d.strings("denied_advisories")?.unwrap_or_default(),
        collateral_grace_seconds: d
            .duration("collateral_grace")?
            .map_or(0, |g| g.as_secs() as i64),
        allow_debug: d.bool("allow_debug")?.unwrap_or(false),
        min_isv_svn,
        mrsigners: list32(d, "mrsigners")?,
        mrenclaves: list32(d, "mrenclaves")?,
    };
    Ok(SgxConfig { policy, collateral })
}

/// What a verified, admitted enclave is: its selectors and the claims its SVIDs carry.
#[derive(Debug, Clone)]
pub struct Enclave {
    pub mrenclave: [u8; 32],
    pub mrsigner: [u8; 32],
    pub selectors: Vec<Selector>,
    pub claims: AttestationClaims,
}

/// The server's verifier of enclave quotes.
pub struct EnclaveVerifier {
    pub policy: PolicyCell<SgxPolicy>,
    pub collateral: Arc<CollateralStore>,
}

fn rejected(e: ironpact_tdx::TdxError) -> AttestError {
    AttestError::Rejected(e.into())
}

fn refuse(kind: RefusalKind, message: String, differences: Vec<Difference>) -> AttestError {
    AttestError::Rejected(Refusal {
        differences,
        ..Refusal::new(kind, message)
    })
}

impl EnclaveVerifier {
    pub fn build(c: &SgxConfig, check_only: bool) -> Result<Self, BuildError> {
        let collateral = collateral_store("sgx", &c.collateral, check_only)?;
        if c.policy.allow_debug {
            warn!(
                "sgx: allow_debug is set: debug enclaves, whose memory the host can read, get SVIDs"
            );
        }
        info!(
            statuses = ?c.policy.allowed_tcb_statuses,
            min_isv_svn = c.policy.min_isv_svn,
            mrsigners = c.policy.mrsigners.len(),
            mrenclaves = c.policy.mrenclaves.len(),
            collateral_dir = ?c.collateral.collateral_dir,
            pcs_url = ?c.collateral.pcs_url,
            "sgx enclave verifier ready"
        );
        Ok(Self {
            policy: PolicyCell::new("sgx", c.policy.clone()),
            collateral,
        })
    }

    /// Verifies `quote` to the pinned root with current collateral, then judges it: bound to
    /// `nonce` and `spki`, and admitted by the policy. Collateral that cannot be had now is
    /// `Unavailable` (the enclave retries), never a refusal.
    pub async fn appraise(
        &self,
        quote: &[u8],
        nonce: &[u8],
        spki: &[u8],
        now: i64,
    ) -> Result<Enclave, AttestError> {
        let quote = Quote::parse(quote).map_err(rejected)?;
        let Some(r) = quote.enclave() else {
            return Err(AttestError::rejected(
                RefusalKind::Tdx(ErrorKind::Unparseable),
                "a TD quote, not an SGX enclave quote",
            ));
        };
        // the cheapest check first: a replayed quote (a genuine one anybody may hold) or one
        // for another key costs no signature check, collateral lookup or DCAP verification
        if r.report_data != report_data(nonce, spki) {
            return Err(report_data_mismatch());
        }
        // the platform the quote names is believed (and fetched for) only once its chain and
        // signatures check out
        ironpact_tdx::verify_quote(&quote, self.collateral.roots(), now).map_err(rejected)?;
        let platform = quote.platform().map_err(rejected)?;
        let collateral = self.collateral.get(&platform, now).await.map_err(|e| {
            AttestError::Unavailable(format!(
                "{}: no usable SGX collateral for FMSPC {}: {}",
                e.kind.as_str(),
                hex::encode_upper(platform.fmspc),
                e.why
            ))
        })?;
        let policy = self.policy.current()?;
        let verified = ironpact_tdx::verify(
            &quote,
            &collateral,
            self.collateral.roots(),
            now,
            policy.collateral_grace_seconds,
        )
        .map_err(rejected)?;
        judge(&policy, &verified, Some(report_data(nonce, spki)), now)
    }
}

fn report_data_mismatch() -> AttestError {
    AttestError::rejected(
        RefusalKind::Tdx(ErrorKind::ReportDataMismatch),
        "the quote's REPORT_DATA is not SHA-512(\"ironpact-sgx-v1\" ‖ this exchange's nonce ‖ the CSR's key): a replayed quote, or one made for another key",
    )
}

/// Applies `policy` to a verified SGX quote, which must carry `expected` REPORT_DATA when given
/// (a fresh nonce and the CSR's key). A refusal's message (what the enclave is told) names its
/// kind and each field that differs with the value seen; what the policy allows is in its
/// differences only, for the server's log: any local process can bind a quote to an exchange,
/// so being bound proves nothing that would entitle it to read the policy.
pub fn judge(
    policy: &SgxPolicy,
    v: &Verified,
    expected: Option<[u8; 64]>,
    now: i64,
) -> Result<Enclave, AttestError> {
    let Some(r) = v.quote().enclave() else {
        return Err(AttestError::rejected(
            RefusalKind::Tdx(ErrorKind::Unparseable),
            "not an SGX enclave quote",
        ));
    };
    if let Some(want) = expected
        && r.report_data != want
    {
        return Err(report_data_mismatch());
    }
    let debug = v.quote().debug();
    let status = v.tcb_status().unwrap_or("unknown (no collateral)");
    let mut diff = Vec::new();
    let mut add = |field: &str, seen: String, allowed: String| {
        diff.push(Difference {
            field: field.into(),
            seen,
            allowed,
        })
    };
    if debug && !policy.allow_debug {
        add("debug", "true".into(), "false".into());
    }
    if !policy.allowed_tcb_statuses.iter().any(|a| a == status) {
        add(
            "tcb_status",
            status.into(),
            policy.allowed_tcb_statuses.join(", "),
        );
    }
    if let Some(a) = v
        .advisories()
        .iter()
        .find(|a| policy.denied_advisories.contains(a))
    {
        add("advisory", a.clone(), "not in denied_advisories".into());
    }
    if r.isv_svn < policy.min_isv_svn {
        add(
            "isv_svn",
            r.isv_svn.to_string(),
            format!("at least {}", policy.min_isv_svn),
        );
    }
    if !policy.mrsigners.is_empty() && !policy.mrsigners.contains(&r.mr_signer) {
        add(
            "mrsigner",
            hex::encode(r.mr_signer),
            hex_list_short(&policy.mrsigners),
        );
    }
    if !policy.mrenclaves.is_empty() && !policy.mrenclaves.contains(&r.mr_enclave) {
        add(
            "mrenclave",
            hex::encode(r.mr_enclave),
            hex_list_short(&policy.mrenclaves),
        );
    }
    if let Some(first) = diff.first() {
        let kind = match first.field.as_str() {
            "debug" => RefusalKind::Base("debug_enclave"),
            "tcb_status" | "advisory" => RefusalKind::Tdx(ErrorKind::TcbStatusNotAllowed),
            "isv_svn" => RefusalKind::Tdx(ErrorKind::TcbTooLow),
            _ => RefusalKind::Tdx(ErrorKind::MeasurementNotAllowed),
        };
        let words: Vec<String> = diff
            .iter()
            .map(|d| format!("{} {}", d.field, d.seen))
            .collect();
        let lead = match first.field.as_str() {
            "debug" => "a debug enclave (its memory is open to the host)".to_string(),
            _ => format!("enclave {} refused", hex::encode(r.mr_enclave)),
        };
        return Err(refuse(
            kind,
            format!(
                "{lead}; not admitted by the server's policy: {} (the server's log says what it allows)",
                words.join("; ")
            ),
            diff,
        ));
    }
    let sel = |k: &str, v: String| Selector::new("sgx", &format!("{k}:{v}")).ok();
    let selectors = [
        sel("mrenclave", hex::encode(r.mr_enclave)),
        sel("mrsigner", hex::encode(r.mr_signer)),
        sel("isv_prod_id", r.isv_prod_id.to_string()),
        sel("isv_svn", r.isv_svn.to_string()),
        sel("debug", debug.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let claims = AttestationClaims {
        tee: "sgx".into(),
        measurements: vec![
            Measurement {
                name: "mrenclave".into(),
                value: r.mr_enclave.to_vec(),
            },
            Measurement {
                name: "mrsigner".into(),
                value: r.mr_signer.to_vec(),
            },
        ],
        tcb_status: crate::tdx::server::snake(status),
        tcb_version: format!(
            "cpusvn={},isv_prod_id={},isv_svn={}",
            hex::encode(r.cpu_svn),
            r.isv_prod_id,
            r.isv_svn
        ),
        debug,
        signing_key: "pck".into(),
        attested_at: now,
        policy_digest: crate::policy_digest(policy),
    };
    Ok(Enclave {
        mrenclave: r.mr_enclave,
        mrsigner: r.mr_signer,
        selectors,
        claims,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ironpact_tdx::{Collateral, Roots};

    /// The real SGX quotes under ../shared/vectors/sgx verify through this attestor's path
    /// (the DCAP verifier, then `judge`) with their collateral, at the time their case names.
    #[test]
    fn real_sgx_quotes_verify_through_the_enclave_path() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/sgx");
        let Ok(cases) = std::fs::read_dir(&dir) else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "vectors missing"
            );
            eprintln!("SKIPPED: no vectors at {}", dir.display());
            return;
        };
        let mut seen = 0;
        for case in cases {
            let case = case.unwrap().path();
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
            let Ok(coll) = std::fs::read(case.join("collateral.json")) else {
                continue;
            };
            let quote = Quote::parse(&std::fs::read(case.join("quote.bin")).unwrap()).unwrap();
            let collateral = Collateral::from_json(&coll).unwrap();
            let at = time::OffsetDateTime::parse(
                meta["evaluate_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
            .unix_timestamp();
            let expected = meta["expected"].as_str().unwrap();
            let verified = ironpact_tdx::verify(&quote, &collateral, &Roots::intel(), at, 0);
            let Some(status) = expected.strip_prefix("valid:") else {
                assert!(verified.is_err(), "{}", case.display());
                continue;
            };
            let verified = verified.unwrap();
            assert_eq!(verified.tcb_status(), Some(status));
            // the default policy admits UpToDate only, and says what it saw
            let e = judge(&SgxPolicy::default(), &verified, None, at).unwrap_err();
            assert_eq!(e.kind_str(), "tcb_status_not_allowed", "{e}");
            assert_eq!(e.differences()[0].seen, status);
            // a policy that accepts that status admits it, with the case's identity
            let policy = SgxPolicy {
                allowed_tcb_statuses: vec![status.into()],
                ..SgxPolicy::default()
            };
            let ok = judge(&policy, &verified, None, at).unwrap();
            assert_eq!(
                hex::encode(ok.mrenclave),
                meta["mrenclave"].as_str().unwrap()
            );
            assert_eq!(hex::encode(ok.mrsigner), meta["mrsigner"].as_str().unwrap());
            let sels: Vec<String> = ok.selectors.iter().map(|s| s.to_string()).collect();
            assert!(
                sels.contains(&format!("sgx:isv_prod_id:{}", meta["isv_prod_id"])),
                "{sels:?}"
            );
            assert!(sels.contains(&"sgx:debug:false".to_string()), "{sels:?}");
            assert_eq!(ok.claims.tee, "sgx");
            // a nonce it does not bind: refused before anything else is said
            let e = judge(&policy, &verified, Some([0; 64]), at).unwrap_err();
            assert_eq!(e.kind_str(), "report_data_mismatch", "{e}");
            assert!(e.differences().is_empty());
            // a minimum ISV SVN above its own
            let strict = SgxPolicy {
                min_isv_svn: 9,
                ..policy.clone()
            };
            let e = judge(&strict, &verified, None, at).unwrap_err();
            assert_eq!(e.kind_str(), "tcb_too_low", "{e}");
            seen += 1;
        }
        assert!(seen > 0, "no valid SGX vector with collateral");
    }
}
