//! Typed records the datastore reads and writes, and the entry filters of the admin API.

use ironpact_spiffe::{Bundle, Selector, SpiffeId, TrustDomain};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// A registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the server default.
    pub x509_svid_ttl: i64,
    pub jwt_svid_ttl: i64,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    /// Unix seconds; 0 means never.
    pub expires_at: i64,
    pub dns_names: Vec<String>,
    pub revision_number: i64,
    pub store_svid: bool,
    /// Agents sign this entry's X509-SVID on a workload's first request, not ahead (SPIRE's
    /// `-disableX509SVIDPrefetch`).
    pub disable_x509_svid_prefetch: bool,
    /// This entry's SVIDs go without the attestation claims extension (and JWT `tee` claim)
    /// even when the agent's node was attested with TEE evidence.
    pub disable_attestation_claims: bool,
    pub hint: String,
    pub created_at: i64,
}

impl Entry {
    /// An entry with the given identity and selectors and every other field at its default
    /// (server default TTLs, no expiry, no DNS names, revision 0).
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Self {
            id: String::new(),
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            expires_at: 0,
            dns_names: Vec::new(),
            revision_number: 0,
            store_svid: false,
            disable_x509_svid_prefetch: false,
            disable_attestation_claims: false,
            hint: String::new(),
            created_at: 0,
        }
    }
}

/// Two entries with the same SPIFFE ID, parent and selector set are the same entry
/// (SPIRE refuses such duplicates with AlreadyExists too).
pub fn similarity_key(
    spiffe_id: &SpiffeId,
    parent_id: &SpiffeId,
    selectors: &[Selector],
) -> String {
    let set: BTreeSet<String> = selectors.iter().map(ToString::to_string).collect();
    let mut h = Sha256::new();
    h.update(spiffe_id.as_str());
    h.update([0]);
    h.update(parent_id.as_str());
    for s in set {
        h.update([0]);
        h.update(s);
    }
    hex::encode(h.finalize())
}

/// An attested agent (node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub spiffe_id: SpiffeId,
    pub attestation_type: String,
    pub serial_number: String,
    pub expires_at: i64,
    pub selectors: Vec<Selector>,
    pub banned: bool,
    pub can_reattest: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Why the last re-attestation was refused; empty when it passed. While it is set the
    /// agent gets nothing (no sync, no SVIDs) but may renew, so a node that passes again (a
    /// policy relaxed, a firmware fixed) comes back without an operator.
    pub attestation_error: String,
    /// The same refusal as structured data (JSON: its kind and each field that differed from
    /// the policy, with the value seen and the values allowed); empty when none.
    pub attestation_refusal: String,
    /// The TEE instance the agent first attested from (SEV-SNP: report ID, or the migration
    /// agent's); empty where the evidence names none. Re-attestation under this agent ID must
    /// come from the same instance.
    pub tee_instance: String,
    /// The serial of the SVID the last renewal replaced, while the agent has not yet presented
    /// the new one; empty otherwise. Until then the agent may still present it (the renewal's
    /// answer may never have reached it: a server died between commit and reply).
    pub previous_serial: String,
    /// What the agent's TEE evidence proved at its last attestation or renewal (the DER of
    /// `ironpact_spiffe::claims::AttestationClaims`); empty without TEE evidence.
    pub attestation_claims: Vec<u8>,
}

/// A bundle and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRecord {
    pub bundle: Bundle,
    pub updated_at: i64,
}

/// How a selector (or trust domain) set in a filter compares with an entry's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatchBehavior {
    /// The sets are equal.
    #[default]
    Exact,
    /// The entry's set is a subset of the filter's.
    Subset,
    /// The entry's set is a superset of the filter's.
    Superset,
    /// The sets share at least one element.
    Any,
}

impl MatchBehavior {
    pub fn matches<T: Ord>(self, filter: &BTreeSet<T>, have: &BTreeSet<T>) -> bool {
        match self {
            MatchBehavior::Exact => filter == have,
            MatchBehavior::Subset => have.is_subset(filter),
            MatchBehavior::Superset => have.is_superset(filter),
            MatchBehavior::Any => !filter.is_disjoint(have),
        }
    }
}

/// Filters of ListAgents / CountAgents; `None` means not filtered.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    pub by_attestation_type: Option<String>,
    pub by_selectors: Option<(Vec<Selector>, MatchBehavior)>,
    pub by_banned: Option<bool>,
    pub by_can_reattest: Option<bool>,
    /// Only agents whose SVID expires before this Unix time.
    pub by_expires_before: Option<i64>,
}

/// Filters of ListEntries / CountEntries; `None` means not filtered.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub by_spiffe_id: Option<SpiffeId>,
    pub by_parent_id: Option<SpiffeId>,
    pub by_selectors: Option<(Vec<Selector>, MatchBehavior)>,
    pub by_federates_with: Option<(Vec<TrustDomain>, MatchBehavior)>,
    pub by_hint: Option<String>,
    pub by_downstream: Option<bool>,
}

impl EntryFilter {
    pub fn matches(&self, e: &Entry) -> bool {
        if self
            .by_spiffe_id
            .as_ref()
            .is_some_and(|id| *id != e.spiffe_id)
            || self
                .by_parent_id
                .as_ref()
                .is_some_and(|id| *id != e.parent_id)
            || self.by_hint.as_ref().is_some_and(|h| *h != e.hint)
            || self.by_downstream.is_some_and(|d| d != e.downstream)
        {
            return false;
        }
        if let Some((sel, how)) = &self.by_selectors {
            let want: BTreeSet<&Selector> = sel.iter().collect();
            let have: BTreeSet<&Selector> = e.selectors.iter().collect();
            if !how.matches(&want, &have) {
                return false;
            }
        }
        if let Some((tds, how)) = &self.by_federates_with {
            let want: BTreeSet<&TrustDomain> = tds.iter().collect();
            let have: BTreeSet<&TrustDomain> = e.federates_with.iter().collect();
            if !how.matches(&want, &have) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn match_behaviours() {
        let s = |v: &[i32]| v.iter().copied().collect::<BTreeSet<_>>();
        assert!(MatchBehavior::Exact.matches(&s(&[1, 2]), &s(&[2, 1])));
        assert!(!MatchBehavior::Exact.matches(&s(&[1]), &s(&[1, 2])));
        assert!(MatchBehavior::Subset.matches(&s(&[1, 2, 3]), &s(&[1, 2])));
        assert!(!MatchBehavior::Subset.matches(&s(&[1]), &s(&[1, 2])));
        assert!(MatchBehavior::Superset.matches(&s(&[1]), &s(&[1, 2])));
        assert!(MatchBehavior::Any.matches(&s(&[3, 2]), &s(&[1, 2])));
        assert!(!MatchBehavior::Any.matches(&s(&[3]), &s(&[1, 2])));
    }

    #[test]
    fn similarity_ignores_selector_order() {
        let id = SpiffeId::parse("spiffe://td/a").unwrap();
        let p = SpiffeId::parse("spiffe://td/p").unwrap();
        let a = Selector::parse("unix:uid:1").unwrap();
        let b = Selector::parse("unix:gid:1").unwrap();
        assert_eq!(
            similarity_key(&id, &p, &[a.clone(), b.clone()]),
            similarity_key(&id, &p, &[b, a.clone()])
        );
        assert_ne!(
            similarity_key(&id, &p, std::slice::from_ref(&a)),
            similarity_key(&p, &id, &[a])
        );
    }
}

/// How a federated trust domain's bundle endpoint is authenticated (SPIFFE Federation's
/// endpoint profiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// WebPKI: the endpoint's certificate chains to a public (or configured) root and names
    /// the URL's host.
    HttpsWeb,
    /// The endpoint presents an SVID of the peer's trust domain, chaining to the peer's
    /// current bundle, with this SPIFFE ID.
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
}

impl EndpointProfile {
    pub fn name(&self) -> &'static str {
        match self {
            EndpointProfile::HttpsWeb => "https_web",
            EndpointProfile::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}

/// A federation relationship: where a peer trust domain's bundle is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRelationship {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint_url: String,
    pub profile: EndpointProfile,
}
