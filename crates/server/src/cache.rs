//! The server's in-memory view of what agents are served from: every registration entry
//! (indexed by parent ID, node aliases by selector), every attested agent and every bundle.
//!
//! Built in one pass at start-up, then kept current from the datastore's change log: each
//! refresh reads the rows logged after the last one seen (`id > last`) and re-reads only the
//! entries, agents and bundles they name. Sync streams and SVID signing read nothing else, so a
//! sync costs no datastore query; the datastore is read only when something changed.
//!
//! Change IDs become visible in commit order, not in ID order, when transactions run at once
//! (PostgreSQL sequences): a later ID can be seen before an earlier one commits. An ID passed
//! over is remembered as skipped and looked for again on every refresh until it appears (then
//! applied) or [`SKIP_BOUND`] passes (a rolled-back transaction leaves such holes for good).

use ironpact_datastore::{AgentRecord, ChangeKind, DataStore, Entry, Error};
use ironpact_spiffe::{Bundle, Selector, SpiffeId, TrustDomain};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a skipped change ID is looked for before it is taken for a rolled-back one.
pub const SKIP_BOUND: Duration = Duration::from_secs(120);
/// Change-log rows read per query.
const PAGE: usize = 5000;
/// More holes than this at once (a burst of failed transactions, or a log pruned under a
/// lagging server) and the cache reloads everything instead of tracking each.
const MAX_SKIPPED: usize = 20_000;
/// How far below the last ID a fresh cache looks for transactions still in flight.
const LOAD_LOOKBACK: i64 = 10_000;

#[derive(Default)]
struct Index {
    entries: HashMap<String, Arc<Entry>>,
    /// Parent SPIFFE ID → IDs of the entries it parents.
    by_parent: HashMap<String, HashSet<String>>,
    /// Selector → IDs of node-alias entries (parented by the server) holding it.
    alias_by_selector: HashMap<Selector, HashSet<String>>,
    agents: HashMap<String, Arc<AgentRecord>>,
    bundles: HashMap<String, Arc<Bundle>>,
}

impl Index {
    fn insert_entry(&mut self, server_id: &str, e: Entry) {
        self.remove_entry(server_id, &e.id);
        self.add_entry(server_id, e);
    }

    /// [`Self::insert_entry`] for an ID not in the index (the start-up load).
    fn add_entry(&mut self, server_id: &str, e: Entry) {
        let e = Arc::new(e);
        self.by_parent
            .entry(e.parent_id.to_string())
            .or_default()
            .insert(e.id.clone());
        if e.parent_id.as_str() == server_id {
            for s in &e.selectors {
                self.alias_by_selector
                    .entry(s.clone())
                    .or_default()
                    .insert(e.id.clone());
            }
        }
        self.entries.insert(e.id.clone(), e);
    }

    fn remove_entry(&mut self, server_id: &str, id: &str) {
        let Some(old) = self.entries.remove(id) else {
            return;
        };
        if let Some(set) = self.by_parent.get_mut(old.parent_id.as_str()) {
            set.remove(id);
            if set.is_empty() {
                self.by_parent.remove(old.parent_id.as_str());
            }
        }
        if old.parent_id.as_str() == server_id {
            for s in &old.selectors {
                if let Some(set) = self.alias_by_selector.get_mut(s) {
                    set.remove(id);
                    if set.is_empty() {
                        self.alias_by_selector.remove(s);
                    }
                }
            }
        }
    }
}

/// What one agent may see, read from the cache at one revision.
#[derive(Clone)]
pub struct AgentView {
    pub agent: Arc<AgentRecord>,
    /// Authorized entries, ordered by ID.
    pub entries: Vec<Arc<Entry>>,
    /// The server's own trust bundle.
    pub bundle: Option<Arc<Bundle>>,
    /// Bundles of the trust domains the entries federate with, ordered by trust domain.
    pub federated: Vec<Arc<Bundle>>,
    pub revision: u64,
}

/// What the change-log rows read by one refresh name.
#[derive(Default)]
struct Touched {
    entries: BTreeSet<String>,
    agents: BTreeSet<String>,
    bundles: bool,
}

impl Touched {
    fn note(&mut self, c: ironpact_datastore::Change) {
        match c.kind {
            ChangeKind::Entry => {
                self.entries.insert(c.key);
            }
            ChangeKind::Agent => {
                self.agents.insert(c.key);
            }
            ChangeKind::Bundle => self.bundles = true,
        }
    }
}

struct Poll {
    last: i64,
    skipped: BTreeMap<i64, Instant>,
}

pub struct Cache {
    ds: DataStore,
    server_id: SpiffeId,
    trust_domain: TrustDomain,
    index: RwLock<Index>,
    poll: tokio::sync::Mutex<Poll>,
    revision: tokio::sync::watch::Sender<u64>,
    /// Datastore queries the cache has made (start-up load and refreshes): the only ones
    /// behind sync streams and SVID signing.
    queries: AtomicU64,
    /// Large views computed at the current revision, so a node's sync stream and its signing
    /// call after a change compute it once. Bounded; cleared when full.
    views: std::sync::Mutex<(u64, HashMap<String, Memo>)>,
}

/// What one full load read.
struct Snapshot {
    last: i64,
    recent: Vec<ironpact_datastore::Change>,
    entries: Vec<ironpact_datastore::Entry>,
    agents: Vec<ironpact_datastore::AgentRecord>,
    bundles: Vec<ironpact_datastore::BundleRecord>,
    entries_ms: u64,
    read_ms: u64,
}

struct Memo {
    view: Arc<AgentView>,
    /// Until when (Unix seconds, exclusive) no entry of the view expires.
    valid_until: i64,
}

/// Views with at least this many entries are kept for reuse.
const MEMO_MIN_ENTRIES: usize = 32;
const MEMO_MAX: usize = 4096;

impl Cache {
    /// Loads everything in one pass.
    pub async fn load(
        ds: DataStore,
        server_id: SpiffeId,
        trust_domain: TrustDomain,
    ) -> Result<Arc<Self>, Error> {
        let cache = Arc::new(Self {
            ds,
            server_id,
            trust_domain,
            index: RwLock::new(Index::default()),
            poll: tokio::sync::Mutex::new(Poll {
                last: 0,
                skipped: BTreeMap::new(),
            }),
            revision: tokio::sync::watch::channel(0).0,
            queries: AtomicU64::new(0),
            views: Default::default(),
        });
        let mut poll = cache.poll.lock().await;
        cache.reload(&mut poll).await?;
        drop(poll);
        Ok(cache)
    }

    /// Reads everything again; the change log position is taken first, so whatever commits
    /// meanwhile is read again by the next refresh (applying a change twice is harmless).
    async fn reload(&self, poll: &mut Poll) -> Result<(), Error> {
        let t = Instant::now();
        // A read replica, when configured, takes this load (the heaviest read there is); the
        // change log is followed on the primary from the position the replica had, so what
        // the replica lagged behind arrives with the next refresh. A replica that fails is
        // passed over for the primary: lag or an outage there costs time, never the load.
        // Only the first load: a later one (after holes in the change log) must not go back
        // to a state older than what the cache already serves, which a lagging replica could.
        let first_load = *self.revision.borrow() == 0;
        let (snap, source) = if first_load && self.ds.has_replica() {
            match self.replica_snapshot().await {
                Ok(s) => (s, "replica"),
                Err(e) => {
                    warn!(error = %e, "reading the entry cache from the read replica failed; reading it from the primary");
                    (Self::read_snapshot(&self.ds).await?, "primary")
                }
            }
        } else {
            (Self::read_snapshot(&self.ds).await?, "primary")
        };
        let Snapshot {
            last,
            recent,
            entries,
            agents,
            bundles,
            entries_ms,
            read_ms,
        } = snap;
        let seen: HashSet<i64> = recent.iter().map(|c| c.id).collect();
        let now = Instant::now();
        poll.skipped = ((last - LOAD_LOOKBACK).max(0) + 1..=last)
            .filter(|id| !seen.contains(id))
            .map(|id| (id, now))
            .collect();
        self.queries.fetch_add(5, Ordering::Relaxed);
        let mut idx = Index::default();
        let (n_entries, n_agents) = (entries.len(), agents.len());
        let server = self.server_id.as_str().to_string();
        idx.entries.reserve(entries.len());
        for e in entries {
            idx.add_entry(&server, e);
        }
        for a in agents {
            idx.agents.insert(a.spiffe_id.to_string(), Arc::new(a));
        }
        for b in bundles {
            idx.bundles
                .insert(b.bundle.trust_domain.to_string(), Arc::new(b.bundle));
        }
        if let Ok(mut i) = self.index.write() {
            *i = idx;
            // bumped under the lock: a view read with the new revision holds the new data
            self.revision.send_modify(|r| *r += 1);
        }
        poll.last = last;
        info!(
            entries = n_entries,
            agents = n_agents,
            change_id = last,
            entries_ms,
            read_ms,
            source,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "loaded the entry cache"
        );
        Ok(())
    }

    /// A full load from the read replica, usable only if the primary still holds every change
    /// after the replica's position (a replica further behind than the change log is kept
    /// would hide the pruned changes for good).
    async fn replica_snapshot(&self) -> Result<Snapshot, Error> {
        let snap = Self::read_snapshot(self.ds.snapshot_source()).await?;
        let first = self.ds.first_change_id().await?;
        if first > snap.last + 1 {
            return Err(Error::ReadReplica(format!(
                "the replica is at change {}, but the primary's change log starts at {first}: \
                 it lags further than the log is kept",
                snap.last
            )));
        }
        Ok(snap)
    }

    /// Everything a full load reads, from one datastore: the change log position first.
    async fn read_snapshot(ds: &DataStore) -> Result<Snapshot, Error> {
        let last = ds.last_change_id().await?;
        // transactions still in flight below `last` show up as holes
        let recent = ds
            .changes_after((last - LOAD_LOOKBACK).max(0), LOAD_LOOKBACK as usize)
            .await?;
        let t_read = Instant::now();
        let entries = ds.list_all_entries().await?;
        let entries_ms = t_read.elapsed().as_millis() as u64;
        let agents = ds.list_agents().await?;
        let bundles = ds.list_bundles().await?;
        let read_ms = t_read.elapsed().as_millis() as u64;
        Ok(Snapshot {
            last,
            recent,
            entries,
            agents,
            bundles,
            entries_ms,
            read_ms,
        })
    }

    /// Applies what the change log holds since the last refresh; returns whether anything
    /// changed. Concurrent callers wait for one another (the second sees the first's work).
    pub async fn refresh(&self) -> Result<bool, Error> {
        let mut poll = self.poll.lock().await;
        // worked on copies: the position moves only once what it covers is applied, so a
        // query that fails midway loses nothing (the next refresh reads it all again)
        let mut last = poll.last;
        let mut skipped = poll.skipped.clone();
        let mut touched = Touched::default();
        let now = Instant::now();
        // holes first: a transaction that committed since
        if !skipped.is_empty() {
            let ids: Vec<i64> = skipped.keys().copied().collect();
            self.queries.fetch_add(1, Ordering::Relaxed);
            for c in self.ds.changes_by_id(&ids).await? {
                skipped.remove(&c.id);
                touched.note(c);
            }
            if skipped
                .values()
                .any(|seen| now.duration_since(*seen) >= SKIP_BOUND)
            {
                // most likely a rolled-back transaction; but it may be a change this server
                // can no longer read (a log pruned while it was cut off, a commit held up for
                // minutes): reading everything again is the one answer that is right for all
                warn!(
                    holes = skipped.len(),
                    "change-log IDs did not appear within the bound; reloading the whole cache"
                );
                self.reload(&mut poll).await?;
                return Ok(true);
            }
        }
        loop {
            self.queries.fetch_add(1, Ordering::Relaxed);
            let page = self.ds.changes_after(last, PAGE).await?;
            let n = page.len();
            for c in page {
                if c.id > last + 1 {
                    if skipped.len() + (c.id - last - 1) as usize > MAX_SKIPPED {
                        warn!(
                            from = last,
                            to = c.id,
                            "too many holes in the change log; reloading the whole cache"
                        );
                        self.reload(&mut poll).await?;
                        return Ok(true);
                    }
                    for id in last + 1..c.id {
                        skipped.insert(id, now);
                    }
                }
                last = last.max(c.id);
                touched.note(c);
            }
            if n < PAGE {
                break;
            }
        }
        let Touched {
            entries,
            agents,
            bundles,
        } = touched;
        if entries.is_empty() && agents.is_empty() && !bundles {
            poll.last = last;
            poll.skipped = skipped;
            return Ok(false);
        }
        let entry_ids: Vec<String> = entries.into_iter().collect();
        let agent_ids: Vec<String> = agents.into_iter().collect();
        let fresh_entries = self.ds.get_entries(&entry_ids).await?;
        let fresh_agents = self.ds.get_agents(&agent_ids).await?;
        let fresh_bundles = if bundles {
            Some(self.ds.list_bundles().await?)
        } else {
            None
        };
        self.queries.fetch_add(
            entry_ids.len().div_ceil(300) as u64
                + agent_ids.len().div_ceil(300) as u64
                + u64::from(bundles),
            Ordering::Relaxed,
        );
        let server = self.server_id.as_str().to_string();
        if let Ok(mut idx) = self.index.write() {
            let found: HashSet<&str> = fresh_entries.iter().map(|e| e.id.as_str()).collect();
            for id in entry_ids.iter().filter(|i| !found.contains(i.as_str())) {
                idx.remove_entry(&server, id);
            }
            for e in fresh_entries {
                idx.insert_entry(&server, e);
            }
            let found: HashSet<String> = fresh_agents
                .iter()
                .map(|a| a.spiffe_id.to_string())
                .collect();
            for id in agent_ids.iter().filter(|i| !found.contains(*i)) {
                idx.agents.remove(id);
            }
            for a in fresh_agents {
                idx.agents.insert(a.spiffe_id.to_string(), Arc::new(a));
            }
            if let Some(bs) = fresh_bundles {
                idx.bundles = bs
                    .into_iter()
                    .map(|b| (b.bundle.trust_domain.to_string(), Arc::new(b.bundle)))
                    .collect();
            }
            self.revision.send_modify(|r| *r += 1);
        }
        poll.last = last;
        poll.skipped = skipped;
        tracing::debug!(
            entries = entry_ids.len(),
            agents = agent_ids.len(),
            bundles,
            queries_total = self.queries(),
            "applied change-log rows to the cache"
        );
        Ok(true)
    }

    /// The current revision; it grows with every applied change.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Datastore queries made so far by the cache.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The last change-log ID applied, and how many holes are being looked for.
    pub async fn position(&self) -> (i64, usize) {
        let p = self.poll.lock().await;
        (p.last, p.skipped.len())
    }

    pub fn agent(&self, id: &str) -> Option<Arc<AgentRecord>> {
        self.index.read().ok()?.agents.get(id).cloned()
    }

    pub fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.index.read().ok()?.entries.get(id).cloned()
    }

    /// The trust domain's own bundle as the cache holds it.
    pub fn own_bundle(&self) -> Option<Arc<Bundle>> {
        self.index
            .read()
            .ok()?
            .bundles
            .get(self.trust_domain.as_str())
            .cloned()
    }

    /// The entries that federate with `td` (a scan of the cached entries, for the rare admin
    /// call that deletes a federated bundle; nothing on an agent's path uses it).
    pub fn entries_federating_with(&self, td: &TrustDomain) -> Vec<Arc<Entry>> {
        let Ok(i) = self.index.read() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Entry>> = i
            .entries
            .values()
            .filter(|e| e.federates_with.contains(td))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn entry_count(&self) -> usize {
        self.index.read().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// Agents, and bundles of other trust domains, as the cache holds them now.
    pub fn counts(&self) -> (usize, usize) {
        self.index
            .read()
            .map(|i| {
                let own = i.bundles.contains_key(self.trust_domain.as_str());
                (i.agents.len(), i.bundles.len() - usize::from(own))
            })
            .unwrap_or((0, 0))
    }

    /// What `agent_id` may see now, or `None` when the cache holds no such agent. Entries:
    /// those parented by the agent, by a node alias that applies to it (an entry parented by
    /// the server whose selectors are all among the agent's) and, recursively, by any entry
    /// already authorized; expired entries are left out. Costs time in what the agent sees,
    /// not in the size of the table.
    pub fn view(&self, agent_id: &str, now: i64) -> Option<Arc<AgentView>> {
        let revision = self.revision();
        if let Ok(m) = self.views.lock()
            && let Some(memo) = m.1.get(agent_id)
            && memo.view.revision == revision
            && now < memo.valid_until
        {
            return Some(memo.view.clone());
        }
        let idx = self.index.read().ok()?;
        // read under the index lock: the view below is of exactly this revision
        let revision = self.revision();
        let agent = idx.agents.get(agent_id)?.clone();
        let live = |e: &Entry| e.expires_at == 0 || e.expires_at > now;
        let server = self.server_id.as_str();
        let have: HashSet<&Selector> = agent.selectors.iter().collect();
        let mut out: Vec<Arc<Entry>> = Vec::new();
        let mut seen_entries: HashSet<&str> = HashSet::new();
        let mut frontier: Vec<&str> = vec![agent_id];
        // aliases: candidates share a selector with the agent
        for s in &agent.selectors {
            for id in idx.alias_by_selector.get(s).into_iter().flatten() {
                let Some(alias) = idx.entries.get(id) else {
                    continue;
                };
                if live(alias)
                    && !alias.selectors.is_empty()
                    && alias.selectors.iter().all(|s| have.contains(s))
                    && seen_entries.insert(alias.id.as_str())
                {
                    out.push(alias.clone());
                    frontier.push(alias.spiffe_id.as_str());
                }
            }
        }
        let mut seen_ids: HashSet<&str> = frontier.iter().copied().collect();
        while let Some(parent) = frontier.pop() {
            if parent == server {
                continue;
            }
            for id in idx.by_parent.get(parent).into_iter().flatten() {
                let Some(e) = idx.entries.get(id) else {
                    continue;
                };
                if !live(e) || !seen_entries.insert(e.id.as_str()) {
                    continue;
                }
                out.push(e.clone());
                if seen_ids.insert(e.spiffe_id.as_str()) {
                    frontier.push(e.spiffe_id.as_str());
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let wanted: BTreeSet<&str> = out
            .iter()
            .flat_map(|e| e.federates_with.iter().map(TrustDomain::as_str))
            .collect();
        let federated = wanted
            .iter()
            .filter(|td| **td != self.trust_domain.as_str())
            .filter_map(|td| idx.bundles.get(*td).cloned())
            .collect();
        let view = Arc::new(AgentView {
            bundle: idx.bundles.get(self.trust_domain.as_str()).cloned(),
            agent,
            entries: out,
            federated,
            revision,
        });
        drop(idx);
        if view.entries.len() >= MEMO_MIN_ENTRIES
            && let Ok(mut m) = self.views.lock()
        {
            // views of older revisions are of no use again
            if m.0 != view.revision {
                if m.0 > view.revision {
                    return Some(view);
                }
                m.1.clear();
                m.0 = view.revision;
            }
            if m.1.len() >= MEMO_MAX {
                m.1.clear();
            }
            let valid_until = view
                .entries
                .iter()
                .map(|e| e.expires_at)
                .filter(|&t| t > now)
                .min()
                .unwrap_or(i64::MAX);
            m.1.insert(
                agent_id.to_string(),
                Memo {
                    view: view.clone(),
                    valid_until,
                },
            );
        }
        Some(view)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    fn e(id: &str, spiffe: &str, parent: &str, sels: &[&str]) -> Entry {
        let mut e = Entry::new(
            SpiffeId::parse(spiffe).unwrap(),
            SpiffeId::parse(parent).unwrap(),
            sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
        );
        e.id = id.into();
        e
    }

    /// A join-token agent record with `sels` (shared with the agent endpoint's tests).
    pub(crate) fn agent(id: &str, sels: &[&str]) -> AgentRecord {
        AgentRecord {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            attestation_type: "join_token".into(),
            serial_number: "01".into(),
            expires_at: 0,
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            banned: false,
            can_reattest: false,
            created_at: 0,
            updated_at: 0,
            attestation_error: String::new(),
            attestation_refusal: String::new(),
            tee_instance: String::new(),
            previous_serial: String::new(),
            attestation_claims: Vec::new(),
        }
    }

    async fn cache_with(entries: Vec<Entry>, agents: Vec<AgentRecord>) -> (Arc<Cache>, DataStore) {
        let dir = tempfile::tempdir().unwrap();
        let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap();
        std::mem::forget(dir);
        for e in &entries {
            ds.create_entry(e).await.unwrap();
        }
        for a in &agents {
            ds.create_agent(a).await.unwrap();
        }
        let td = TrustDomain::new("td").unwrap();
        let cache = Cache::load(
            ds.clone(),
            SpiffeId::parse("spiffe://td/spire/server").unwrap(),
            td,
        )
        .await
        .unwrap();
        (cache, ds)
    }

    fn ids(v: &AgentView) -> Vec<String> {
        v.entries.iter().map(|e| e.id.clone()).collect()
    }

    #[tokio::test]
    async fn direct_alias_nested_expired_and_cycles() {
        let agent_id = "spiffe://td/spire/agent/join_token/t";
        let mut expired = e("x", "spiffe://td/old", agent_id, &["unix:uid:3"]);
        expired.expires_at = 10;
        let (cache, _ds) = cache_with(
            vec![
                e("1", "spiffe://td/w1", agent_id, &["unix:uid:1"]),
                e(
                    "2",
                    "spiffe://td/node-a",
                    "spiffe://td/spire/server",
                    &["sev_snp:measurement:aa"],
                ),
                e("3", "spiffe://td/w2", "spiffe://td/node-a", &["unix:uid:2"]),
                e(
                    "4",
                    "spiffe://td/node-b",
                    "spiffe://td/spire/server",
                    &["sev_snp:measurement:bb"],
                ),
                e("5", "spiffe://td/w3", "spiffe://td/node-b", &["unix:uid:2"]),
                e("6", "spiffe://td/w4", "spiffe://td/w2", &["unix:uid:4"]),
                e(
                    "7",
                    "spiffe://td/other",
                    "spiffe://td/spire/agent/join_token/other",
                    &["unix:uid:1"],
                ),
                e("8", "spiffe://td/c1", "spiffe://td/w4", &["k:1"]),
                e("9", "spiffe://td/w2", "spiffe://td/c1", &["k:2"]),
                expired,
            ],
            vec![
                agent(agent_id, &["sev_snp:measurement:aa", "x:y"]),
                agent("spiffe://td/spire/agent/join_token/none", &[]),
            ],
        )
        .await;
        let v = cache.view(agent_id, 100).unwrap();
        assert_eq!(ids(&v), ["1", "2", "3", "6", "8", "9"]);
        let v = cache.view(agent_id, 5).unwrap();
        assert_eq!(ids(&v), ["1", "2", "3", "6", "8", "9", "x"]);
        let v = cache
            .view("spiffe://td/spire/agent/join_token/none", 100)
            .unwrap();
        assert!(v.entries.is_empty());
        assert!(cache.view("spiffe://td/spire/agent/nobody", 100).is_none());
    }

    #[tokio::test]
    async fn refresh_applies_changes_and_finds_holes() {
        let agent_id = "spiffe://td/spire/agent/join_token/t";
        let (cache, ds) = cache_with(
            vec![e("1", "spiffe://td/w1", agent_id, &["unix:uid:1"])],
            vec![agent(agent_id, &["k:v"])],
        )
        .await;
        let r0 = cache.revision();
        assert!(!cache.refresh().await.unwrap());
        let created = ds
            .create_entry(&e("", "spiffe://td/w2", agent_id, &["unix:uid:2"]))
            .await
            .unwrap();
        let mut moved = cache.entry("1").unwrap().as_ref().clone();
        moved.parent_id = SpiffeId::parse("spiffe://td/elsewhere").unwrap();
        ds.update_entry(&moved).await.unwrap();
        assert!(cache.refresh().await.unwrap());
        assert!(cache.revision() > r0);
        assert_eq!(
            ids(&cache.view(agent_id, 0).unwrap()),
            vec![created.id.clone()]
        );
        // an alias appears and the agent sees through it
        ds.create_entry(&e(
            "a",
            "spiffe://td/alias",
            "spiffe://td/spire/server",
            &["k:v"],
        ))
        .await
        .unwrap();
        ds.create_entry(&e(
            "b",
            "spiffe://td/wa",
            "spiffe://td/alias",
            &["unix:uid:9"],
        ))
        .await
        .unwrap();
        cache.refresh().await.unwrap();
        let mut want = vec!["a".to_string(), "b".into(), created.id.clone()];
        want.sort();
        assert_eq!(ids(&cache.view(agent_id, 0).unwrap()), want);
        // eviction removes the agent
        ds.delete_agent(&SpiffeId::parse(agent_id).unwrap())
            .await
            .unwrap();
        cache.refresh().await.unwrap();
        assert!(cache.view(agent_id, 0).is_none());
        // a hole: an ID passed over while its transaction was in flight is applied once it
        // is visible; one that never appears is dropped after the bound
        let (last, holes) = cache.position().await;
        assert_eq!(holes, 0);
        let late = ds
            .create_entry(&e("", "spiffe://td/late", "spiffe://td/p", &["k:1"]))
            .await
            .unwrap();
        let after = ds
            .create_entry(&e("", "spiffe://td/after", "spiffe://td/p", &["k:2"]))
            .await
            .unwrap();
        {
            // the reader saw `after` (last + 2) but not `late` (last + 1)
            let mut p = cache.poll.lock().await;
            p.last = last + 2;
            p.skipped.insert(last + 1, Instant::now());
        }
        assert!(cache.entry(&late.id).is_none() && cache.entry(&after.id).is_none());
        assert!(cache.refresh().await.unwrap());
        assert!(
            cache.entry(&late.id).is_some(),
            "the late change was applied"
        );
        assert!(
            cache.entry(&after.id).is_none(),
            "not read again: the reader had it"
        );
        assert_eq!(cache.position().await, (last + 2, 0));
        // a hole that never appears within the bound: everything is read again
        cache.poll.lock().await.skipped.insert(
            last + 1_000_000,
            Instant::now().checked_sub(SKIP_BOUND * 2).unwrap(),
        );
        assert!(cache.refresh().await.unwrap());
        assert!(cache.entry(&after.id).is_some(), "reloaded");
        assert_eq!(cache.position().await, (last + 2, 0));
    }
}
