//! The agent's life with the server: attest (or reuse the stored SVID), hold one pushed sync
//! stream, sign SVIDs for entries in batches, renew its own SVID at half-life, and retry with
//! backoff while the server is away, serving what it already has.

use crate::config::AgentConfig;
use crate::state::{AgentEntry, CachedSvid, State};
use ironpact_proto::agent::v2 as pb;
use ironpact_proto::agent::v2::agent_api_client::AgentApiClient;
use ironpact_spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};
use ironpact_tls::{SharedRoots, SvidCell, TrustSource};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(
        "no stored agent SVID and no join token: pass -joinToken (from `ironpact-server token generate`)"
    )]
    NoJoinToken,
    #[error(
        "trust bundle {path}: {reason} (point -trustBundle at the output of `ironpact-server bundle show`)"
    )]
    Bundle { path: String, reason: String },
    #[error("server refused attestation: {0}")]
    Refused(String),
    #[error("the server evicted this agent: {0}")]
    Evicted(String),
    #[error(
        "this agent is banned: {0}; it stops (lift the ban with `ironpact-server agent evict -spiffeID <agent ID>`, then start it again)"
    )]
    Banned(String),
    #[error("the server asks this agent to attest afresh: {0}")]
    Reattest(String),
    #[error("server unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Local(String),
}

impl From<ironpact_attestors::agent::AgentAttestError> for AgentError {
    fn from(e: ironpact_attestors::agent::AgentAttestError) -> Self {
        use ironpact_attestors::agent::AgentAttestError as E;
        match e {
            E::NoJoinToken => AgentError::NoJoinToken,
            E::Unavailable { .. } => AgentError::Unavailable(e.to_string()),
            _ => AgentError::Local(e.to_string()),
        }
    }
}

/// Merges one sync message into the update being received (pages of one update carry
/// `more` but the last); returns the whole update once its last page is in.
pub fn merge_page(
    pending: &mut Option<pb::SyncAuthorizedResponse>,
    msg: pb::SyncAuthorizedResponse,
) -> Option<pb::SyncAuthorizedResponse> {
    let upd = match pending.take() {
        Some(mut acc) => {
            acc.entries.extend(msg.entries);
            acc.removed_entry_ids.extend(msg.removed_entry_ids);
            acc.bundle = msg.bundle.or(acc.bundle);
            if msg.federated_bundles_changed {
                acc.federated_bundles_changed = true;
                acc.federated_bundles = msg.federated_bundles;
            }
            acc.more = msg.more;
            acc.revision = msg.revision;
            acc
        }
        None => msg,
    };
    if upd.more {
        *pending = Some(upd);
        None
    } else {
        Some(upd)
    }
}

/// JWT-SVIDs kept per (entry, audience set); past this many, stale ones and then the half
/// expiring soonest are dropped, so a caller cycling through audiences cannot grow the agent.
const JWT_CACHE_MAX: usize = 10_000;

/// The agent's own SVID.
/// See [`Agent::gauges`].
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub last_sync: i64,
    pub entries: usize,
    pub x509_svids: usize,
    pub jwt_svids: usize,
    pub federated: usize,
    pub refused: bool,
    pub svid_expiry: Option<i64>,
    pub first_workload_expiry: Option<i64>,
}

#[derive(Clone)]
struct AgentSvid {
    id: SpiffeId,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    not_before: i64,
    expires_at: i64,
    /// The signing authority's ID (authority key ID, hex); tainted → renew now.
    authority_id: Option<String>,
}

/// A fresh key with its CSR and DER SubjectPublicKeyInfo (what evidence binds to).
struct NewKey {
    csr: Vec<u8>,
    key: Vec<u8>,
    spki: Vec<u8>,
}

/// (entry ID, sorted audience).
type JwtKey = (String, i64, Vec<String>);
/// (token, issued at, expires at).
type CachedJwt = (String, i64, i64);

enum SessionEnd {
    /// The agent SVID was renewed: reconnect presenting the new one.
    Renewed,
    /// Evicted (an explicit answer): the stored SVID and key are useless; attest again.
    Evicted(String),
    /// Banned (an explicit answer): stop.
    Banned(String),
    /// The renewal's evidence names another agent (an explicit answer): attest afresh,
    /// keeping the current key and SVID until that succeeds.
    Reattest(String),
    /// Any other refusal (a re-attestation that did not pass): keep the key and the cached
    /// SVIDs, and try to renew again after a backoff.
    Refused(String),
    Unavailable(String),
}

/// What a status from the server means for this agent: only an explicit eviction or ban
/// answer (the agent-state metadata) costs it its key.
fn classify(s: &tonic::Status) -> AgentError {
    use ironpact_proto::agent_state;
    match (agent_state::of(s), s.code()) {
        (Some(agent_state::BANNED), _) => AgentError::Banned(s.message().to_string()),
        (Some(agent_state::REATTEST), _) => AgentError::Reattest(s.message().to_string()),
        (Some(_), _) => AgentError::Evicted(s.message().to_string()),
        (None, Code::PermissionDenied | Code::InvalidArgument) => {
            AgentError::Refused(format!("{} ({:?})", s.message(), s.code()))
        }
        // a server of an earlier release: it serves only ironpact.agent.v1
        (None, Code::Unimplemented) => AgentError::Unavailable(format!(
            "the server does not speak ironpact.agent.v2: upgrade the servers before the agents ({})",
            s.message()
        )),
        (None, _) => match ironpact_tls::tls_failure(s) {
            // the server's SVID does not chain to our bundle: a stale or wrong bundle file,
            // or another server at that address
            Some(why) => AgentError::Unavailable(format!(
                "cannot connect to the server: {why}: check that trust_bundle_path (or -trustBundle) holds this server's bundle (`ironpact-server bundle show`) and that server_address points at it"
            )),
            None => AgentError::Unavailable(format!("{} ({:?})", s.message(), s.code())),
        },
    }
}

/// Doubles `d` (up to 30 s) and returns the wait with ±25% jitter, so a fleet that lost its
/// server does not come back in lockstep.
fn next_backoff(d: &mut Duration) -> Duration {
    let wait = *d;
    *d = (*d * 2).min(Duration::from_secs(30));
    let jitter: f64 = rand::random::<f64>() * 0.5 + 0.75;
    wait.mul_f64(jitter)
}

pub struct Agent {
    pub cfg: AgentConfig,
    pub state: Arc<State>,
    roots: Arc<SharedRoots>,
    cell: Arc<SvidCell>,
    svid: RwLock<Option<AgentSvid>>,
    client: RwLock<Option<AgentApiClient<Channel>>>,
    jwt_cache: Mutex<HashMap<JwtKey, CachedJwt>>,
    server_id: SpiffeId,
    /// The base attestor's agent half (its payload and its own challenges), when there is one.
    base: Option<Arc<dyn ironpact_attestors::agent::BaseAgent>>,
    /// Where TEE evidence comes from, when this node presents any.
    evidence: Option<Arc<dyn ironpact_attestors::tee_source::EvidenceSource>>,
    /// Every "now" of the agent's timing (renewal, SVID and JWT-SVID lifetimes) comes from it.
    clock: Arc<dyn Clock>,
    /// When this agent started, and when a sync update last came in (unix seconds; 0: never):
    /// for `debug getinfo`.
    started: std::time::Instant,
    last_sync: std::sync::atomic::AtomicI64,
    /// Lazy entries (`-disableX509SVIDPrefetch`) a workload asked for, and when it last did.
    wanted: Mutex<HashMap<String, i64>>,
}

fn pem_certs(chain: &[Vec<u8>]) -> String {
    ironpact_spiffe::x509::certs_to_pem(chain.iter().map(Vec::as_slice))
}

mod attest;
mod jwt;
mod persist;
mod session;
mod sync;

pub use ironpact_spiffe::clock::{Clock, ManualClock, SystemClock};

/// What an agent reads and builds from its configuration before it starts.
struct Prepared {
    roots: Vec<Vec<u8>>,
    evidence: Option<Arc<dyn ironpact_attestors::tee_source::EvidenceSource>>,
    base: Option<Arc<dyn ironpact_attestors::agent::BaseAgent>>,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Arc<Self>, AgentError> {
        if ironpact_spiffe::clock::is_test_clock() {
            warn!(
                "TEST CLOCK: this test build runs on the shifted clock named by IRONPACT_TEST_CLOCK"
            );
        }
        Self::with_clock(cfg, ironpact_spiffe::clock::process_clock())
    }

    /// [`Agent::new`] reading time from `clock` (tests set it by hand).
    pub fn with_clock(cfg: AgentConfig, clock: Arc<dyn Clock>) -> Result<Arc<Self>, AgentError> {
        let server_id = cfg
            .trust_domain
            .id_with_path("/spire/server")
            .map_err(|e| AgentError::Local(e.to_string()))?;
        let Prepared {
            roots,
            evidence,
            base,
        } = Self::prepare(&cfg)?;
        let agent = Arc::new(Self {
            evidence,
            base,
            cfg,
            state: Arc::new(State::default()),
            roots: Arc::new(SharedRoots::new(roots)),
            cell: Arc::new(SvidCell::default()),
            svid: RwLock::new(None),
            client: RwLock::new(None),
            jwt_cache: Mutex::new(HashMap::new()),
            server_id,
            clock,
            started: std::time::Instant::now(),
            last_sync: std::sync::atomic::AtomicI64::new(0),
            wanted: Mutex::new(HashMap::new()),
        });
        agent.load_stored_svid()?;
        Ok(agent)
    }

    /// Reads and builds what `cfg` names (the trust bundle, the node attestor's evidence source
    /// and payload) as [`Agent::new`] does, creating nothing: `validate` runs it.
    pub fn check(cfg: &AgentConfig) -> Result<(), AgentError> {
        Self::prepare(cfg)?;
        // a node that has not attested yet needs its token (a token file is read then only)
        let stored = cfg
            .key_manager
            .stored_paths()
            .is_some_and(|(svid, _)| svid.exists());
        if let Some(src) = &cfg.join_token
            && !stored
        {
            src.token().map_err(AgentError::Local)?;
        }
        Ok(())
    }

    fn prepare(cfg: &AgentConfig) -> Result<Prepared, AgentError> {
        let cached = cfg.data_dir.join("bundle.pem");
        let roots = if cached.exists() {
            Self::read_bundle(&cached)?
        } else if let Some(p) = &cfg.trust_bundle_path {
            Self::read_bundle(p)?
        } else {
            Vec::new()
        };
        let evidence = cfg
            .node_attestor
            .tee
            .as_ref()
            .map(|t| t.build())
            .transpose()
            .map_err(|e| AgentError::Local(e.to_string()))?;
        let base = cfg
            .node_attestor
            .base
            .as_ref()
            .map(|b| b.build())
            .transpose()
            .map_err(AgentError::from)?;
        Ok(Prepared {
            roots,
            evidence,
            base,
        })
    }

    fn read_bundle(path: &std::path::Path) -> Result<Vec<Vec<u8>>, AgentError> {
        let err = |reason: String| AgentError::Bundle {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let certs = ironpact_spiffe::x509::certs_from_pem(&text).map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no certificates in it".into()));
        }
        Ok(certs)
    }

    /// The agent's clock (every "now" of its timing).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Records why the server refused this node (or that it no longer does).
    pub(super) fn set_refusal(&self, reason: Option<String>) {
        if self.state.read().refusal != reason {
            self.state.update(|v| v.refusal = reason);
        }
    }

    /// Drops workload X509-SVIDs past their NotAfter, every second, so that no stream or
    /// fetch hands one out and open streams learn of it. Runs until the process ends.
    pub async fn expire_svids(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = self.clock.now();
            let expired = self
                .state
                .read()
                .svids
                .values()
                .filter(|s| s.expires_at <= now)
                .count();
            if expired > 0 {
                self.state
                    .update(|v| v.svids.retain(|_, s| s.expires_at > now));
                warn!(
                    count = expired,
                    "workload SVIDs expired before they could be renewed; no longer served"
                );
            }
        }
    }

    /// What `debug getinfo` prints (SPIRE's agent debug API): uptime, the last sync, what
    /// the caches hold, and this agent's own SVID chain.
    pub fn debug_info(&self) -> ironpact_proto::debug::v1::AgentInfo {
        let chain = self
            .svid
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.chain.clone()))
            .unwrap_or_default();
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        ironpact_proto::debug::v1::AgentInfo {
            svid_chain: chain
                .iter()
                .filter_map(|der| ironpact_spiffe::x509::CertInfo::parse(der).ok())
                .map(|c| ironpact_proto::debug::v1::Cert {
                    id: c.uri_sans.first().cloned().unwrap_or_default(),
                    expires_at: c.not_after,
                    subject: c.subject,
                })
                .collect(),
            uptime: count(self.started.elapsed().as_secs() as usize),
            last_sync_success: self.last_sync.load(std::sync::atomic::Ordering::Relaxed),
            cached_x509_svids_count: count(self.state.read().svids.len()),
            cached_jwt_svids_count: count(self.jwt_cache.lock().map(|c| c.len()).unwrap_or(0)),
            cached_svidstore_x509_svids_count: 0,
        }
    }

    /// What the metrics' gauges show, read from memory.
    pub fn gauges(&self) -> Gauges {
        let v = self.state.read();
        Gauges {
            last_sync: self.last_sync.load(std::sync::atomic::Ordering::Relaxed),
            entries: v.entries().len(),
            x509_svids: v.svids.len(),
            jwt_svids: self.jwt_cache.lock().map(|c| c.len()).unwrap_or(0),
            federated: v.federated.len(),
            refused: v.refusal.is_some(),
            svid_expiry: self
                .svid
                .read()
                .ok()
                .and_then(|g| g.as_ref().map(|s| s.expires_at)),
            first_workload_expiry: v.svids.values().map(|s| s.expires_at).min(),
        }
    }

    pub fn agent_id(&self) -> Option<SpiffeId> {
        self.svid
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.id.clone()))
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.cfg.server_address, self.cfg.server_port)
    }

    fn client(&self) -> Result<AgentApiClient<Channel>, AgentError> {
        if let Some(c) = self.client.read().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        let ch = self.channel()?;
        let c =
            AgentApiClient::new(ch).max_decoding_message_size(ironpact_proto::SYNC_MESSAGE_LIMIT);
        if let Ok(mut g) = self.client.write() {
            *g = Some(c.clone());
        }
        Ok(c)
    }

    /// The server's enclave attestation service, on a connection of its own (an enclave
    /// exchange is rare: one per enclave and SVID half-life), authenticated with this agent's
    /// SVID.
    pub fn enclave_client(
        &self,
    ) -> Result<
        ironpact_proto::enclave::v1::enclave_attestation_client::EnclaveAttestationClient<Channel>,
        tonic::Status,
    > {
        if self.roots.x509_roots().is_empty() {
            return Err(tonic::Status::unavailable(
                "the agent has no trust bundle yet (it has not attested): retry shortly",
            ));
        }
        let ch = self
            .channel()
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(
            ironpact_proto::enclave::v1::enclave_attestation_client::EnclaveAttestationClient::new(
                ch,
            ),
        )
    }

    /// A TLS channel to the server that presents this agent's SVID.
    fn channel(&self) -> Result<Channel, AgentError> {
        let cfg = if self.roots.x509_roots().is_empty() && self.cfg.insecure_bootstrap {
            // insecure bootstrap: the first session brings the bundle the agent then pins
            // (see `apply`); every connection after that verifies the server against it
            ironpact_tls::client_config_insecure(self.server_id.clone(), Some(self.cell.clone()))
        } else {
            ironpact_tls::client_config(
                self.roots.clone(),
                self.server_id.clone(),
                Some(self.cell.clone()),
            )
        }
        .map_err(|e| AgentError::Local(e.to_string()))?;
        ironpact_tls::channel(&self.addr(), cfg).map_err(|e| AgentError::Local(e.to_string()))
    }

    fn drop_client(&self) {
        if let Ok(mut c) = self.client.write() {
            *c = None;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    /// An agent whose server is a closed port, reading time from `clock`.
    fn agent(clock: Arc<ManualClock>) -> (Arc<Agent>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
agent {{
    data_dir = "{d}"
    server_address = "127.0.0.1"
    server_port = "1"
    socket_path = "{d}/agent.sock"
    trust_domain = "example.org"
    insecure_bootstrap = true
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
}}
"#,
            d = dir.path().display()
        );
        let cfg = AgentConfig::parse("test.conf", &text, false, &Default::default()).unwrap();
        (Agent::with_clock(cfg, clock).unwrap(), dir)
    }

    /// An agent SVID issued at `issued` for `ttl` seconds (NotBefore backdated, as the server
    /// does).
    fn svid(issued: i64, ttl: i64) -> AgentSvid {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/spire/agent/join_token/t"
                .try_into()
                .unwrap(),
        )];
        let cert = p.self_signed(&key).unwrap();
        AgentSvid {
            id: SpiffeId::parse("spiffe://example.org/spire/agent/join_token/t").unwrap(),
            chain: vec![cert.der().to_vec()],
            key: key.serialize_der(),
            not_before: issued - ironpact_spiffe::x509::BACKDATE_SECS,
            expires_at: issued + ttl,
            authority_id: None,
        }
    }

    #[test]
    fn the_agent_renews_at_half_life_from_issuance_and_knows_when_it_expired() {
        let clock = Arc::new(ManualClock::new(T0));
        let (a, _dir) = agent(clock.clone());
        assert!(!a.renewal_due(), "no SVID: nothing to renew");
        a.install_svid(svid(T0, 3600), false);
        assert_eq!(a.agent_id().unwrap().path(), "/spire/agent/join_token/t");
        clock.set(T0 + 1799);
        assert!(!a.renewal_due());
        // half of the life from issuance, not from the backdated NotBefore
        clock.set(T0 + 1800);
        assert!(a.renewal_due());
        assert!(!a.svid_expired());
        clock.set(T0 + 3600);
        assert!(a.svid_expired());
        a.forget_svid();
        assert!(a.agent_id().is_none() && !a.renewal_due() && !a.svid_expired());
    }

    fn entry(id: &str, revision: i64) -> Arc<AgentEntry> {
        Arc::new(AgentEntry {
            lazy: false,
            id: id.into(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{id}")).unwrap(),
            selectors: vec![Selector::new("unix", "uid:1").unwrap()],
            federates_with: vec![],
            hint: String::new(),
            revision,
            dns_names: vec![],
        })
    }

    fn cached(received_at: i64, expires_at: i64, revision: i64) -> Arc<CachedSvid> {
        Arc::new(CachedSvid {
            spiffe_id: SpiffeId::parse("spiffe://example.org/x").unwrap(),
            chain: vec![],
            key_pkcs8: vec![],
            received_at,
            expires_at,
            revision,
            authority_id: None,
        })
    }

    #[test]
    fn workload_svids_are_due_when_missing_stale_or_past_half_life() {
        let clock = Arc::new(ManualClock::new(T0));
        let (a, _dir) = agent(clock);
        a.state.update(|v| {
            v.set_entries(vec![entry("a", 1), entry("b", 1), entry("c", 2)]);
            // a: fresh; b: for an older revision; c: none
            v.svids.insert("a".into(), cached(T0, T0 + 3600, 1));
            v.svids.insert("b".into(), cached(T0, T0 + 3600, 0));
        });
        let due = |t| -> Vec<String> { a.due_entries(t).iter().map(|e| e.id.clone()).collect() };
        assert_eq!(due(T0), ["b", "c"]);
        assert_eq!(due(T0 + 1799), ["b", "c"]);
        assert_eq!(due(T0 + 1800), ["a", "b", "c"]);
        // a bundle marking a's authority tainted makes a due at once
        a.state.update(|v| {
            let mut s = (*cached(T0, T0 + 3600, 1)).clone();
            s.authority_id = Some("aa".into());
            v.svids.insert("a".into(), Arc::new(s));
            let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
            b.x509_tainted.insert("bb".into());
            v.bundle = Some(b);
        });
        assert_eq!(due(T0), ["b", "c"], "another authority's taint");
        a.state.update(|v| {
            if let Some(b) = v.bundle.as_mut() {
                b.x509_tainted.insert("aa".into());
            }
        });
        assert_eq!(due(T0), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_jwt_svid_is_served_from_the_cache_until_half_its_life() {
        let clock = Arc::new(ManualClock::new(T0));
        let (a, _dir) = agent(clock.clone());
        let aud = vec!["b".to_string(), "a".to_string()];
        a.jwt_cache.lock().unwrap().insert(
            ("e1".into(), 3, vec!["a".into(), "b".into()]),
            ("token".into(), T0, T0 + 300),
        );
        // the audience set in any order is the same key
        let (tok, _) = a.jwt_svid("e1", 3, &aud).await.unwrap();
        assert_eq!(tok, "token");
        // another revision of the entry is not served the old token
        let e = a.jwt_svid("e1", 4, &aud).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        clock.set(T0 + 149);
        assert_eq!(a.jwt_svid("e1", 3, &aud).await.unwrap().0, "token");
        // at half-life the server is asked (here: nobody listens)
        clock.set(T0 + 150);
        let e = a.jwt_svid("e1", 3, &aud).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    }

    #[test]
    fn only_explicit_answers_cost_the_key_and_an_old_server_is_named() {
        use ironpact_proto::agent_state;
        let st = |s: tonic::Status| classify(&s);
        assert!(matches!(
            st(agent_state::status(agent_state::BANNED, "b")),
            AgentError::Banned(_)
        ));
        assert!(matches!(
            st(agent_state::status(agent_state::EVICTED, "e")),
            AgentError::Evicted(_)
        ));
        assert!(matches!(
            st(tonic::Status::permission_denied("no")),
            AgentError::Refused(_)
        ));
        for s in [
            tonic::Status::unavailable("down"),
            tonic::Status::deadline_exceeded("slow"),
            tonic::Status::internal("db"),
        ] {
            assert!(matches!(st(s), AgentError::Unavailable(_)));
        }
        let e = st(tonic::Status::unimplemented("unknown service"));
        assert!(
            matches!(&e, AgentError::Unavailable(m) if m.contains("upgrade the servers before the agents")),
            "{e}"
        );
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_a_quarter_of_jitter() {
        let mut d = Duration::from_secs(1);
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(next_backoff(&mut d));
        }
        let base = [1, 2, 4, 8, 16, 30, 30, 30];
        for (w, b) in waits.iter().zip(base) {
            let b = Duration::from_secs(b);
            assert!(
                *w >= b.mul_f64(0.75) && *w <= b.mul_f64(1.25),
                "{w:?} for {b:?}"
            );
        }
        // a fleet does not wait in lockstep
        let mut spread = std::collections::HashSet::new();
        for _ in 0..20 {
            spread.insert(next_backoff(&mut Duration::from_secs(8)).as_millis());
        }
        assert!(spread.len() > 10, "{spread:?}");
    }
}
