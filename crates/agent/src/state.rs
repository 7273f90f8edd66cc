//! What the agent knows: bundles and entries from the server's last snapshot, and the
//! X509-SVIDs it holds for those entries. Readers wait on a change counter.

use ironpact_spiffe::{Bundle, Selector, SpiffeId, TrustDomain};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub federates_with: Vec<TrustDomain>,
    pub hint: String,
    pub revision: i64,
    pub dns_names: Vec<String>,
    /// Signed when a workload first asks, not ahead (`-disableX509SVIDPrefetch`).
    pub lazy: bool,
}

/// An X509-SVID the agent holds for an entry.
#[derive(Debug, Clone)]
pub struct CachedSvid {
    pub spiffe_id: SpiffeId,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    /// When the agent received it (NotBefore is backdated, so it would skew rotation).
    pub received_at: i64,
    pub expires_at: i64,
    /// The entry revision it was issued for.
    pub revision: i64,
    /// The signing authority's ID (the leaf's authority key ID, hex): a bundle that marks it
    /// tainted makes the SVID due at once.
    pub authority_id: Option<String>,
}

impl CachedSvid {
    /// Renew at half-life, like the agent's own SVID.
    pub fn due(&self, now: i64) -> bool {
        now >= self.received_at + (self.expires_at - self.received_at) / 2
    }

    /// Signed by an authority the bundle marks tainted.
    pub fn tainted(&self, bundle: Option<&Bundle>) -> bool {
        match (bundle, &self.authority_id) {
            (Some(b), Some(id)) => b.x509_tainted.contains(id),
            _ => false,
        }
    }
}

/// The agent's view. Entries and SVIDs are shared (`Arc`), so copying a view (an update while
/// a reader holds the old one) copies pointers, not certificates.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub bundle: Option<Bundle>,
    pub federated: BTreeMap<String, Bundle>,
    entries: Vec<Arc<AgentEntry>>,
    /// A selector's hash → positions in `entries` of the entries holding it (a hash, not the
    /// selector: rebuilding the index copies no strings; a collision only adds a candidate,
    /// which the match then checks in full).
    by_selector: HashMap<u64, Vec<usize>>,
    pub svids: HashMap<String, Arc<CachedSvid>>,
    /// Why the server refused this node at its last renewal or attestation (cleared when one
    /// passes): a workload whose SVIDs lapsed meanwhile is told so.
    pub refusal: Option<String>,
}

/// The kind of a server refusal (`attestation rejected: <kind>: …` → `<kind>`), safe to tell
/// any local workload: the details (agent ID, evidence, instance IDs) stay in the agent's log
/// and its owner-only admin socket.
pub fn refusal_kind(reason: &str) -> String {
    let after = reason
        .split_once("attestation rejected: ")
        .map_or("", |(_, rest)| rest);
    let kind: String = after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if kind.is_empty() {
        "refused".into()
    } else {
        kind
    }
}

impl View {
    /// The entries, ordered by ID.
    pub fn entries(&self) -> &[Arc<AgentEntry>] {
        &self.entries
    }

    /// Replaces the entries (ordered by ID) and rebuilds the selector index.
    pub fn set_entries(&mut self, entries: Vec<Arc<AgentEntry>>) {
        let mut by_selector: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for s in &e.selectors {
                by_selector.entry(selector_hash(s)).or_default().push(i);
            }
        }
        self.entries = entries;
        self.by_selector = by_selector;
    }

    /// Entries whose selectors are all among the workload's, in ID order. Only entries sharing
    /// a selector with the workload are looked at.
    pub fn matching(&self, workload: &[Selector]) -> Vec<&AgentEntry> {
        let mut idx: Vec<usize> = workload
            .iter()
            .filter_map(|s| self.by_selector.get(&selector_hash(s)))
            .flatten()
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .filter_map(|i| self.entries.get(i))
            .filter(|e| !e.selectors.is_empty() && e.selectors.iter().all(|s| workload.contains(s)))
            .map(AsRef::as_ref)
            .collect()
    }

    /// Bundles of the trust domains `entries` federate with.
    pub fn federated_for(&self, entries: &[&AgentEntry]) -> Vec<&Bundle> {
        let mut tds: Vec<&str> = entries
            .iter()
            .flat_map(|e| e.federates_with.iter().map(TrustDomain::as_str))
            .collect();
        tds.sort_unstable();
        tds.dedup();
        tds.iter()
            .filter_map(|td| self.federated.get(*td))
            .collect()
    }
}

fn selector_hash(s: &Selector) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub struct State {
    /// Readers take the current view (an `Arc`, no copy); an update copies it only while a
    /// reader still holds the old one.
    view: RwLock<Arc<View>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            view: RwLock::new(Arc::new(View::default())),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl State {
    pub fn read(&self) -> Arc<View> {
        self.view.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// Applies `f` and wakes every waiting stream.
    pub fn update(&self, f: impl FnOnce(&mut View)) {
        if let Ok(mut v) = self.view.write() {
            f(Arc::make_mut(&mut v));
        }
        self.changes.send_modify(|c| *c += 1);
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: &str, sels: &[&str]) -> Arc<AgentEntry> {
        Arc::new(AgentEntry {
            lazy: false,
            id: id.into(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://td/{id}")).unwrap(),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            federates_with: vec![],
            hint: String::new(),
            revision: 0,
            dns_names: vec![],
        })
    }

    #[test]
    fn matching_uses_the_index_and_needs_every_selector() {
        let mut v = View::default();
        v.set_entries(vec![
            entry("a", &["unix:uid:1"]),
            entry("b", &["unix:uid:1", "unix:gid:2"]),
            entry("c", &["unix:uid:2"]),
            entry("d", &["unix:gid:2"]),
            entry("e", &[]),
        ]);
        let w = |s: &[&str]| -> Vec<Selector> {
            s.iter().map(|x| Selector::parse(x).unwrap()).collect()
        };
        let ids = |m: Vec<&AgentEntry>| m.into_iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(v.matching(&w(&["unix:uid:1"]))), ["a"]);
        assert_eq!(
            ids(v.matching(&w(&["unix:gid:2", "unix:uid:1"]))),
            ["a", "b", "d"]
        );
        assert!(v.matching(&w(&["unix:uid:9"])).is_empty());
        assert!(v.matching(&[]).is_empty());
    }
}
