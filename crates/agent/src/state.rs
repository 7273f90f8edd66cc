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
}

impl CachedSvid {
    /// Renew at half-life, like the agent's own SVID.
    pub fn due(&self, now: i64) -> bool {
        now >= self.received_at + (self.expires_at - self.received_at) / 2
    }
}

#[derive(Debug, Default, Clone)]
pub struct View {
    pub bundle: Option<Bundle>,
    pub federated: BTreeMap<String, Bundle>,
    pub entries: Vec<AgentEntry>,
    pub svids: HashMap<String, CachedSvid>,
}

impl View {
    /// Entries whose selectors are all among the workload's.
    pub fn matching(&self, workload: &[Selector]) -> Vec<&AgentEntry> {
        self.entries
            .iter()
            .filter(|e| !e.selectors.is_empty() && e.selectors.iter().all(|s| workload.contains(s)))
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
