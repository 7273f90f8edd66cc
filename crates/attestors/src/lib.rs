//! Node attestation, both halves: what the server verifies and what the agent presents.
//!
//! One folder per attestor holds its server half (`server.rs`), its agent half (`agent.rs`),
//! what they share (the wire payload, the nonce and key binding), its configuration on each
//! side and its registration (`mod.rs`). [`registry`] maps a `NodeAttestor` block name to
//! those; the server and the agent keep no attestor names. [`compose`] pairs any base attestor
//! with any TEE attestor, configured the same way for every pair.
//!
//! The traits here are the whole contract: a base attestor ([`NodeAttestor`]) names the agent;
//! a TEE attestor ([`TeeAttestor`]) judges fresh hardware evidence bound to the agent's key and
//! either stands alone or completes a base. An attestor may challenge the agent (nonces) and
//! sees the public key of the agent's CSR, so evidence can be bound to that key.

pub mod agent;
pub mod aws_iid;
pub mod compose;
mod fetch;
pub mod join_token;
pub mod registry;
pub mod sev_snp;
pub mod sgx;
pub mod tdx;
pub mod tee_source;
pub mod x509pop;

pub use aws_iid::server::AwsIidAttestor;
pub use compose::{Standalone, WithTee};
pub use join_token::server::JoinTokenAttestor;
pub use registry::{BaseConfig, BuildCtx, BuildError, ParseCtx, TeeConfig};
pub use sev_snp::server::SevSnpAttestor;
pub use tdx::server::TdxAttestor;

use ironpact_datastore::AgentRecord;
use ironpact_spiffe::claims::AttestationClaims;

use ironpact_spiffe::{Selector, SpiffeId, TrustDomain};

/// What an agent presented.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    pub payload: &'a [u8],
    /// DER SubjectPublicKeyInfo of the key the agent SVID will certify.
    pub csr_spki: &'a [u8],
    pub now: i64,
}

/// A node that attested successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// May attest again under the same ID (fresh evidence each time, from the same TEE
    /// instance when one is recorded).
    pub can_reattest: bool,
    /// The TEE instance the evidence came from, where it names one (SEV-SNP).
    pub tee_instance: Option<String>,
    /// What the TEE evidence proved, for the SVIDs of this node and its workloads; None for
    /// a node attested without TEE evidence.
    pub claims: Option<AttestationClaims>,
}

/// The stable kind of a refusal: what a log query, a test or a peer can match on. SEV-SNP and
/// TDX verdicts carry their verifier's own closed set of kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalKind {
    SevSnp(ironpact_snp::ErrorKind),
    Tdx(ironpact_tdx::ErrorKind),
    /// A base attestor's refusal, with the stable kind it names (`aws_iid` for an instance
    /// identity document that does not verify or is not allowed, `x509pop_chain`, …).
    Base(&'static str),
    /// The policy could not be read (a lock poisoned by a panic): refused, never a default.
    PolicyUnavailable,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::SevSnp(k) => k.as_str(),
            RefusalKind::Tdx(k) => k.as_str(),
            RefusalKind::Base(k) => k,
            RefusalKind::PolicyUnavailable => "policy_unavailable",
        }
    }
}

/// A node or its evidence judged and found wanting: the kind, what exactly differed from what
/// the policy allows, and what required the check (`sev_snp required by join_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    pub required_by: Option<String>,
    /// Each field that differed from the policy (also in `message`, in words); empty when the
    /// refusal is not a policy's (a bad signature, say) or the evidence was not bound to this
    /// challenge.
    pub differences: Vec<Difference>,
}

/// One field of the evidence the policy does not admit: its name (`measurement`,
/// `reported_tcb`, `rtmr2`, `reference.guest_svn` for an input of a measured launch that
/// differs from the policy's reference launch), the value seen and what the policy allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    pub field: String,
    pub seen: String,
    pub allowed: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            required_by: None,
            differences: Vec::new(),
        }
    }

    /// The verdict as one JSON object (`{"kind", "message", "differences": [{"field", "seen",
    /// "allowed"}]}`): what the server logs and keeps for `agent show`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "required_by": self.required_by,
            "message": self.message,
            "differences": self.differences,
        })
        .to_string()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.required_by {
            write!(f, "{r}: ")?;
        }
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl From<ironpact_snp::policy::Mismatch> for Difference {
    fn from(m: ironpact_snp::policy::Mismatch) -> Self {
        Difference {
            field: m.field.to_string(),
            seen: m.seen,
            allowed: m.allowed,
        }
    }
}

impl From<ironpact_tdx::policy::Mismatch> for Difference {
    fn from(m: ironpact_tdx::policy::Mismatch) -> Self {
        Difference {
            field: m.field,
            seen: m.seen,
            allowed: m.allowed,
        }
    }
}

impl From<ironpact_snp::SnpError> for Refusal {
    fn from(e: ironpact_snp::SnpError) -> Self {
        Refusal::new(RefusalKind::SevSnp(e.kind), e.message)
    }
}

/// A TEE policy's refusal of `kind`, naming every field the policy does not admit
/// (`diff`, empty when none) when the evidence is `bound` to this challenge: the refusal the
/// agent logs, `agent show` keeps and the server logs names them all (in words and as
/// fields), while a replayed report (anyone may hold one) learns nothing of the policy.
pub(crate) fn policy_refusal(
    kind: RefusalKind,
    message: String,
    bound: bool,
    diff: impl FnOnce() -> Vec<Difference>,
) -> AttestError {
    let differences = if bound { diff() } else { Vec::new() };
    let message = if differences.is_empty() {
        message
    } else {
        let words: Vec<String> = differences
            .iter()
            .map(|d| format!("{} {} (allowed: {})", d.field, d.seen, d.allowed))
            .collect();
        format!("{message}; differs from the policy: {}", words.join("; "))
    };
    AttestError::Rejected(Refusal {
        differences,
        ..Refusal::new(kind, message)
    })
}

impl From<ironpact_tdx::TdxError> for Refusal {
    fn from(e: ironpact_tdx::TdxError) -> Self {
        Refusal::new(RefusalKind::Tdx(e.kind), e.message)
    }
}

/// Why attestation failed. Refusals (the node or its evidence is not acceptable) become
/// PermissionDenied, and on renewal invalidate the agent; transient failures (a challenge
/// that timed out, a KDS/PCS or datastore outage) become Unavailable and change nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("malformed attestation payload: {0}")]
    Malformed(String),
    #[error("join token does not exist or has already been used")]
    UnknownToken,
    #[error("join token expired at {expired_at}")]
    ExpiredToken { expired_at: i64 },
    #[error("attestation rejected: {0}")]
    Rejected(Refusal),
    #[error(
        "instance_mismatch: {agent_id} attested from TEE instance {recorded}; this evidence comes from instance {presented} (another VM holding a copy of its identity document?); the existing agent is kept: evict it first if this node replaces it"
    )]
    InstanceMismatch {
        agent_id: String,
        recorded: String,
        presented: String,
    },
    #[error("challenge failed: {0}")]
    Challenge(String),
    /// A service the verdict depends on could not answer (AMD KDS, Intel PCS): nothing was
    /// judged, try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("datastore: {0}")]
    Datastore(#[from] ironpact_datastore::Error),
}

impl AttestError {
    pub fn is_client_error(&self) -> bool {
        matches!(self, AttestError::Malformed(_))
    }

    /// A policy lock poisoned by a panic while it was replaced: refuse, never fall back to a
    /// default policy.
    pub fn poisoned_policy(tee: &str) -> Self {
        AttestError::Rejected(Refusal::new(
            RefusalKind::PolicyUnavailable,
            format!("the {tee} policy lock is poisoned; restart the server"),
        ))
    }

    /// A refusal of `kind`.
    pub fn rejected(kind: RefusalKind, message: impl Into<String>) -> Self {
        AttestError::Rejected(Refusal::new(kind, message))
    }

    /// A refusal as one JSON object (see [`Refusal::to_json`]; a refusal that is not a
    /// policy's has no differences).
    pub fn refusal_json(&self) -> String {
        match self {
            AttestError::Rejected(r) => r.to_json(),
            other => serde_json::json!({
                "kind": other.kind_str(),
                "message": other.to_string(),
                "differences": [],
            })
            .to_string(),
        }
    }

    /// The fields that differed from the policy, when this is a policy's refusal.
    pub fn differences(&self) -> &[Difference] {
        match self {
            AttestError::Rejected(r) => &r.differences,
            _ => &[],
        }
    }

    /// A short, stable name of what failed (the refusal's kind, or the kind of failure), for
    /// metrics labels and logs: one of a fixed set.
    pub fn kind_str(&self) -> &'static str {
        match self {
            AttestError::Malformed(_) => "malformed",
            AttestError::UnknownToken => "unknown_token",
            AttestError::ExpiredToken { .. } => "expired_token",
            AttestError::Rejected(r) => r.kind.as_str(),
            AttestError::InstanceMismatch { .. } => "instance_mismatch",
            AttestError::Challenge(_) => "challenge",
            AttestError::Unavailable(_) => "unavailable",
            AttestError::Datastore(_) => "datastore",
        }
    }

    /// "refused" (a verdict), "invalid" (a malformed request) or "error" (nothing judged).
    pub fn outcome_str(&self) -> &'static str {
        if self.is_refusal() {
            "refused"
        } else if self.is_client_error() {
            "invalid"
        } else {
            "error"
        }
    }

    /// The node or its evidence was judged and found wanting: only these invalidate an agent
    /// on renewal. Timeouts, outages and datastore errors are not verdicts.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AttestError::Rejected(_)
                | AttestError::UnknownToken
                | AttestError::ExpiredToken { .. }
                | AttestError::InstanceMismatch { .. }
        )
    }
}

/// A TEE attestor's policy: read at every appraisal, replaced whole on reload (SIGHUP).
pub struct PolicyCell<P> {
    tee: &'static str,
    lock: std::sync::RwLock<P>,
}

impl<P: Clone> PolicyCell<P> {
    pub fn new(tee: &'static str, policy: P) -> Self {
        Self {
            tee,
            lock: std::sync::RwLock::new(policy),
        }
    }

    /// The policy in force. A lock poisoned by a panic while it was replaced refuses: never a
    /// default policy.
    pub fn current(&self) -> Result<P, AttestError> {
        self.lock
            .read()
            .map(|p| p.clone())
            .map_err(|_| AttestError::poisoned_policy(self.tee))
    }

    pub fn set(&self, policy: P) {
        if let Ok(mut g) = self.lock.write() {
            *g = policy;
        }
    }
}

/// Sends a challenge to the agent and waits for its answer.
#[async_trait::async_trait]
pub trait Challenger: Send {
    async fn challenge(&mut self, data: Vec<u8>) -> Result<Vec<u8>, AttestError>;
}

/// What a TEE attestor established from fresh hardware evidence bound to the agent's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeeOutcome {
    /// Stable for one VM launch, unique across VMs (SEV-SNP: the report ID, or the migration
    /// agent's), hex; `None` where the evidence names no launch (TDX 1.0 quotes).
    pub instance: Option<String>,
    /// Unique to this appraisal's evidence: the agent ID of a standalone attestor whose
    /// evidence names no instance.
    pub appraisal: String,
    /// The launch measurement, hex.
    pub measurement: String,
    /// `sev_snp:*` (or later `tdx:*`) selectors.
    pub selectors: Vec<Selector>,
    /// What the evidence proved, as SVIDs carry it.
    pub claims: AttestationClaims,
}

/// SHA-256 of a policy as the server holds it (its Debug rendering, without the per-attestation
/// REPORT_DATA): the attestation claims' `policyDigest`, which changes when the policy does.
pub fn policy_digest(policy: &impl std::fmt::Debug) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(format!("{policy:?}").as_bytes()).to_vec()
}

/// A TEE attestor: challenges the agent for fresh evidence and judges it with its policy.
/// It can stand alone (its own agent IDs) or complete a base attestor (see [`WithTee`]) through [`Standalone`].
#[async_trait::async_trait]
pub trait TeeAttestor: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// What it requires of a node, for the log ("a fresh TDX quote").
    fn requirement(&self) -> &'static str;

    /// Takes the policy of `cfg`, this attestor's block in a re-read configuration (SIGHUP),
    /// and logs it for the NodeAttestor block `owner`; roots and caches stay. False when `cfg`
    /// is another TEE's block.
    fn reload_policy(&self, owner: &str, cfg: &dyn TeeConfig) -> bool;

    /// Whether [`TeeAttestor::tick`] has work: keeping something fresh that an attestation
    /// would otherwise wait for (TDX collateral from a PCS).
    fn ticks(&self) -> bool {
        false
    }

    /// Called every second when [`TeeAttestor::ticks`]: refreshes what is due.
    async fn tick(&self, _now: i64) {}

    async fn appraise(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<TeeOutcome, AttestError>;

    /// Renews `rec`, an agent this attestor named standing alone: by default fresh evidence
    /// names it again (its instance); a TEE whose evidence names no instance keeps the
    /// recorded ID and checks what it can (TDX: the same MRTD).
    async fn renew_standalone(
        &self,
        rec: &AgentRecord,
        trust_domain: &TrustDomain,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let _ = rec;
        self.appraise(ev, challenger)
            .await?
            .standalone(trust_domain, self.name())
    }
}

impl TeeOutcome {
    /// What a TEE attestor standing alone yields: the agent is
    /// `spiffe://<td>/spire/agent/<tee>/<instance>`, and may attest again (fresh evidence).
    pub fn standalone(
        self,
        trust_domain: &TrustDomain,
        tee: &str,
    ) -> Result<Attested, AttestError> {
        let name = self.instance.as_deref().unwrap_or(&self.appraisal);
        let agent_id = trust_domain
            .id_with_path(&format!("/spire/agent/{tee}/{name}"))
            .map_err(|e| AttestError::Malformed(e.to_string()))?;
        Ok(Attested {
            agent_id,
            selectors: self.selectors,
            can_reattest: true,
            tee_instance: self.instance,
            claims: Some(self.claims),
        })
    }
}

#[async_trait::async_trait]
pub trait NodeAttestor: Send + Sync + 'static {
    /// The name agents use in AttestationData.type and the config block label.
    fn name(&self) -> &'static str;

    async fn attest(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError>;

    /// Whether renewing an agent SVID re-runs attestation (continuous attestation).
    fn reattest_on_renewal(&self) -> bool {
        false
    }

    /// Whether the evidence works once only (join tokens): a composed attestor then keeps the
    /// base's identity from the agent's record on renewal instead of checking it again.
    fn single_use(&self) -> bool {
        false
    }

    /// Whether the agent ID follows credentials the node renews on its own (a node
    /// certificate's fingerprint): a renewal whose evidence names another agent then means
    /// "new credentials", and the agent is told to attest afresh as that identity (where bans
    /// and the first-attestation rules apply) instead of being refused until its SVID expires.
    fn identity_follows_credentials(&self) -> bool {
        false
    }

    /// Selectors this base attestor adds when a TEE completed it (`aws_iid:measurements:…`).
    fn tee_selectors(&self, _tee: &TeeOutcome) -> Vec<Selector> {
        Vec::new()
    }

    /// Renews `rec`'s SVID: attests again when this attestor re-checks on renewal, otherwise
    /// keeps what the record holds.
    async fn renew(
        &self,
        rec: &AgentRecord,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        if self.reattest_on_renewal() {
            return self.attest(ev, challenger).await;
        }
        Ok(Attested {
            agent_id: rec.spiffe_id.clone(),
            selectors: rec.selectors.clone(),
            can_reattest: rec.can_reattest,
            tee_instance: Some(rec.tee_instance.clone()).filter(|i| !i.is_empty()),
            claims: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_kind_and_reads_as_before() {
        let snp = ironpact_snp::SnpError::new(
            ironpact_snp::ErrorKind::MeasurementNotAllowed,
            "measurement ab is not in the allow-list",
        );
        let mut r = Refusal::from(snp);
        assert_eq!(
            r.kind,
            RefusalKind::SevSnp(ironpact_snp::ErrorKind::MeasurementNotAllowed)
        );
        assert_eq!(
            AttestError::Rejected(r.clone()).to_string(),
            "attestation rejected: measurement_not_allowed: measurement ab is not in the allow-list"
        );
        r.required_by = Some("sev_snp required by join_token".into());
        assert_eq!(
            r.to_string(),
            "sev_snp required by join_token: measurement_not_allowed: measurement ab is not in the allow-list"
        );
        let e = AttestError::poisoned_policy("tdx");
        assert!(e.is_refusal());
        assert!(
            e.to_string()
                .contains("policy_unavailable: the tdx policy lock"),
            "{e}"
        );
        let aws = AttestError::rejected(RefusalKind::Base("aws_iid"), "account 1 is not allowed");
        assert_eq!(
            aws.to_string(),
            "attestation rejected: aws_iid: account 1 is not allowed"
        );
    }
}
