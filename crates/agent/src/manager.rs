//! The agent's life with the server: attest (or reuse the stored SVID), hold one pushed sync
//! stream, sign SVIDs for entries in batches, renew its own SVID at half-life, and retry with
//! backoff while the server is away, serving what it already has.

use crate::config::{AgentConfig, AgentKeyManager};
use crate::config::{SevSnpSource, TdxSource, TeeSource};
use crate::state::{AgentEntry, CachedSvid, State};
use ironpact_proto::agent::v1 as pb;
use ironpact_proto::agent::v1::agent_api_client::AgentApiClient;
use ironpact_spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};
use ironpact_tls::{SharedRoots, SvidCell, TrustSource};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
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
    #[error("server unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Local(String),
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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The agent's own SVID.
#[derive(Clone)]
struct AgentSvid {
    id: SpiffeId,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    not_before: i64,
    expires_at: i64,
}

/// A fresh key with its CSR and DER SubjectPublicKeyInfo (what evidence binds to).
struct NewKey {
    csr: Vec<u8>,
    key: Vec<u8>,
    spki: Vec<u8>,
}

/// (entry ID, sorted audience).
type JwtKey = (String, Vec<String>);
/// (token, issued at, expires at).
type CachedJwt = (String, i64, i64);

enum SessionEnd {
    /// The agent SVID was renewed: reconnect presenting the new one.
    Renewed,
    /// Evicted (an explicit answer): the stored SVID and key are useless; attest again.
    Evicted(String),
    /// Banned (an explicit answer): stop.
    Banned(String),
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
        (Some(_), _) => AgentError::Evicted(s.message().to_string()),
        (None, Code::PermissionDenied | Code::InvalidArgument) => {
            AgentError::Refused(format!("{} ({:?})", s.message(), s.code()))
        }
        (None, _) => AgentError::Unavailable(format!("{} ({:?})", s.message(), s.code())),
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
    /// SEV-SNP evidence, when this node attests with `sev_snp`.
    evidence: Option<Arc<dyn crate::evidence::EvidenceSource>>,
    /// The instance metadata service, when this node attests with `aws_iid`.
    imds: Option<crate::imds::Imds>,
}

fn pem_certs(chain: &[Vec<u8>]) -> String {
    ironpact_spiffe::x509::certs_to_pem(chain.iter().map(Vec::as_slice))
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let server_id = cfg
            .trust_domain
            .id_with_path("/spire/server")
            .map_err(|e| AgentError::Local(e.to_string()))?;
        let cached = cfg.data_dir.join("bundle.pem");
        let roots = if cached.exists() {
            Self::read_bundle(&cached)?
        } else if let Some(p) = &cfg.trust_bundle_path {
            Self::read_bundle(p)?
        } else {
            Vec::new()
        };
        let evidence: Option<Arc<dyn crate::evidence::EvidenceSource>> = match cfg
            .node_attestor
            .tee()
        {
            None => None,
            Some(TeeSource::SevSnp(SevSnpSource::ConfigfsTsm(p))) => {
                Some(Arc::new(crate::evidence::ConfigfsTsm::new(p)))
            }
            Some(TeeSource::SevSnp(SevSnpSource::SevGuest { vmpl })) => {
                Some(Arc::new(crate::evidence::SevGuestDevice { vmpl }))
            }
            Some(TeeSource::SevSnp(SevSnpSource::Simulated(c))) => {
                warn!("SEV-SNP evidence comes from a SIMULATED device: for tests and demos only");
                Some(Arc::new(
                    crate::evidence::Simulated::load(&c).map_err(AgentError::Local)?,
                ))
            }
            Some(TeeSource::Tdx(TdxSource::ConfigfsTsm(p))) => {
                Some(Arc::new(crate::evidence::ConfigfsTsm::tdx(p)))
            }
            Some(TeeSource::Tdx(TdxSource::Simulated { pki_dir, td })) => {
                warn!("TDX quotes come from a SIMULATED quoting stack: for tests and demos only");
                Some(Arc::new(
                    crate::evidence::SimulatedTdx::load(&pki_dir, *td)
                        .map_err(AgentError::Local)?,
                ))
            }
        };
        let imds = match &cfg.node_attestor {
            crate::config::NodeAttestorConfig::AwsIid { imds, .. } => {
                Some(crate::imds::Imds::new(imds.clone()).map_err(AgentError::Local)?)
            }
            _ => None,
        };
        let agent = Arc::new(Self {
            evidence,
            imds,
            cfg,
            state: Arc::new(State::default()),
            roots: Arc::new(SharedRoots::new(roots)),
            cell: Arc::new(SvidCell::default()),
            svid: RwLock::new(None),
            client: RwLock::new(None),
            jwt_cache: Mutex::new(HashMap::new()),
            server_id,
        });
        agent.load_stored_svid();
        Ok(agent)
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

    fn key_dir(&self) -> Option<PathBuf> {
        match &self.cfg.key_manager {
            AgentKeyManager::Disk { directory } => Some(directory.clone()),
            AgentKeyManager::Memory => None,
        }
    }

    fn write_private(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reuses the SVID from a previous run while it is valid and chains to the bundle.
    fn load_stored_svid(&self) {
        let Some(dir) = self.key_dir() else { return };
        let (cert, key) = (dir.join("agent_svid.pem"), dir.join("agent_key.pem"));
        let (Ok(c), Ok(k)) = (
            std::fs::read_to_string(&cert),
            std::fs::read_to_string(&key),
        ) else {
            return;
        };
        let Ok(chain) = ironpact_spiffe::x509::certs_from_pem(&c) else {
            return;
        };
        let Ok(key) = pem::parse(k.as_bytes()).map(pem::Pem::into_contents) else {
            return;
        };
        let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        match ironpact_spiffe::x509::verify_svid_chain(&refs, &self.roots.x509_roots(), now() + 30)
        {
            Ok(id) => {
                let info = chain
                    .first()
                    .and_then(|c| ironpact_spiffe::x509::CertInfo::parse(c).ok());
                if let Some(info) = info {
                    info!(agent_id = %id, expires_at = info.not_after, "reusing the stored agent SVID");
                    self.install_svid(
                        AgentSvid {
                            id,
                            chain,
                            key,
                            not_before: info.not_before,
                            expires_at: info.not_after,
                        },
                        false,
                    );
                }
            }
            Err(e) => info!(reason = %e, "stored agent SVID is not usable; attesting again"),
        }
    }

    fn install_svid(&self, s: AgentSvid, persist: bool) {
        if let Err(e) = self.cell.set(s.chain.clone(), &s.key) {
            error!(error = %e, "cannot use the agent SVID for TLS");
            return;
        }
        if persist && let Some(dir) = self.key_dir() {
            let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", s.key.clone()));
            let r = Self::write_private(&dir.join("agent_key.pem"), key_pem.as_bytes(), 0o600)
                .and_then(|()| {
                    Self::write_private(
                        &dir.join("agent_svid.pem"),
                        pem_certs(&s.chain).as_bytes(),
                        0o644,
                    )
                });
            if let Err(e) = r {
                warn!(error = %e, dir = %dir.display(), "cannot store the agent SVID; a restart will need a new attestation");
            }
        }
        if let Ok(mut g) = self.svid.write() {
            *g = Some(s);
        }
        if let Ok(mut c) = self.client.write() {
            *c = None;
        }
    }

    fn forget_svid(&self) {
        self.cell.clear();
        if let Ok(mut g) = self.svid.write() {
            *g = None;
        }
        if let Some(dir) = self.key_dir() {
            let _ = std::fs::remove_file(dir.join("agent_svid.pem"));
            let _ = std::fs::remove_file(dir.join("agent_key.pem"));
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
        let cfg = ironpact_tls::client_config(
            self.roots.clone(),
            self.server_id.clone(),
            Some(self.cell.clone()),
        )
        .map_err(|e| AgentError::Local(e.to_string()))?;
        let ch = ironpact_tls::channel(&self.addr(), cfg)
            .map_err(|e| AgentError::Local(e.to_string()))?;
        let c =
            AgentApiClient::new(ch).max_decoding_message_size(ironpact_proto::SYNC_MESSAGE_LIMIT);
        if let Ok(mut g) = self.client.write() {
            *g = Some(c.clone());
        }
        Ok(c)
    }

    fn csr() -> Result<(Vec<u8>, Vec<u8>), AgentError> {
        let c = Self::csr_with_spki()?;
        Ok((c.csr, c.key))
    }

    /// A CSR, its PKCS#8 key and the DER SubjectPublicKeyInfo (what evidence binds to).
    fn csr_with_spki() -> Result<NewKey, AgentError> {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().map_err(|e| AgentError::Local(e.to_string()))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| AgentError::Local(e.to_string()))?;
        Ok(NewKey {
            csr: csr.der().to_vec(),
            key: key.serialize_der(),
            spki: key.subject_public_key_info(),
        })
    }

    fn attestor_kind(&self) -> &'static str {
        self.cfg.node_attestor.name()
    }

    /// What the base attestor presents: the join token (first attestation only), the
    /// instance identity document, or nothing (SEV-SNP alone answers challenges).
    async fn payload(&self, renew: bool) -> Result<Vec<u8>, AgentError> {
        use crate::config::NodeAttestorConfig as N;
        match (&self.cfg.node_attestor, &self.imds) {
            (N::JoinToken { .. }, _) if !renew => Ok(self
                .cfg
                .join_token
                .clone()
                .ok_or(AgentError::NoJoinToken)?
                .into_bytes()),
            (N::AwsIid { .. }, Some(imds)) => imds
                .identity()
                .await
                .map_err(|e| AgentError::Unavailable(format!("aws_iid: {e}"))),
            _ => Ok(Vec::new()),
        }
    }

    /// One attestation (or renewal) exchange on `client`, answering challenges with evidence
    /// bound to the nonce and to `spki`, the key the SVID will certify.
    async fn attestation(
        &self,
        client: &mut AgentApiClient<Channel>,
        payload: Vec<u8>,
        csr: Vec<u8>,
        spki: Vec<u8>,
        renew: bool,
    ) -> Result<pb::X509svid, AgentError> {
        let first = pb::AttestAgentRequest {
            step: Some(pb::attest_agent_request::Step::Params(
                pb::attest_agent_request::Params {
                    data: Some(pb::AttestationData {
                        r#type: self.attestor_kind().into(),
                        payload,
                    }),
                    csr,
                },
            )),
        };
        let status = |s: tonic::Status| classify(&s);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(first)
            .await
            .map_err(|_| AgentError::Local("attestation stream closed".into()))?;
        let req = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut resp = if renew {
            client.renew_agent(req).await.map_err(status)?.into_inner()
        } else {
            client.attest_agent(req).await.map_err(status)?.into_inner()
        };
        loop {
            match resp.message().await.map_err(status)?.and_then(|m| m.step) {
                Some(pb::attest_agent_response::Step::Result(r)) => {
                    return r
                        .svid
                        .ok_or_else(|| AgentError::Refused("server returned no SVID".into()));
                }
                Some(pb::attest_agent_response::Step::Challenge(nonce)) => {
                    let src = self.evidence.clone().ok_or_else(|| {
                        AgentError::Refused(
                            "the server asks for TEE evidence, but this agent has no evidence source: add sev_snp { evidence_source = … } or tdx { evidence_source = … } to its NodeAttestor plugin_data"
                                .into(),
                        )
                    })?;
                    let rd = src.report_data(&nonce, &spki);
                    let source = src.name();
                    let evidence = tokio::task::spawn_blocking(move || src.evidence(&rd))
                        .await
                        .map_err(|e| AgentError::Local(e.to_string()))?
                        .map_err(|e| AgentError::Local(format!("{source} evidence: {e}")))?;
                    debug!(
                        bytes = evidence.len(),
                        "answering the server's challenge with TEE evidence"
                    );
                    let msg = pb::AttestAgentRequest {
                        step: Some(pb::attest_agent_request::Step::ChallengeResponse(evidence)),
                    };
                    tx.send(msg)
                        .await
                        .map_err(|_| AgentError::Unavailable("attestation stream closed".into()))?;
                }
                None => {
                    return Err(AgentError::Unavailable(
                        "attestation stream ended early".into(),
                    ));
                }
            }
        }
    }

    fn svid_from(pb_svid: pb::X509svid, key: Vec<u8>) -> Result<AgentSvid, AgentError> {
        let id = SpiffeId::parse(&pb_svid.id).map_err(|e| AgentError::Refused(e.to_string()))?;
        let info = pb_svid
            .cert_chain
            .first()
            .and_then(|c| ironpact_spiffe::x509::CertInfo::parse(c).ok())
            .ok_or_else(|| AgentError::Refused("server returned an unreadable SVID".into()))?;
        Ok(AgentSvid {
            id,
            chain: pb_svid.cert_chain,
            key,
            not_before: info.not_before,
            expires_at: info.not_after,
        })
    }

    async fn attest(&self) -> Result<(), AgentError> {
        let payload = self.payload(false).await?;
        let cfg = if self.roots.x509_roots().is_empty() && self.cfg.insecure_bootstrap {
            ironpact_tls::client_config_insecure(self.server_id.clone())
        } else {
            ironpact_tls::client_config(self.roots.clone(), self.server_id.clone(), None)
        }
        .map_err(|e| AgentError::Local(e.to_string()))?;
        let ch = ironpact_tls::channel(&self.addr(), cfg)
            .map_err(|e| AgentError::Local(e.to_string()))?;
        let mut client = AgentApiClient::new(ch);
        let NewKey { csr, key, spki } = Self::csr_with_spki()?;
        info!(server = %self.addr(), attestor = self.attestor_kind(), "attesting this node");
        let svid = Self::svid_from(
            self.attestation(&mut client, payload, csr, spki, false)
                .await?,
            key,
        )?;
        info!(agent_id = %svid.id, expires_at = svid.expires_at, "node attested");
        self.install_svid(svid, true);
        Ok(())
    }

    async fn renew(&self) -> Result<(), AgentError> {
        let mut client = self.client()?;
        let NewKey { csr, key, spki } = Self::csr_with_spki()?;
        let svid = Self::svid_from(
            self.attestation(&mut client, self.payload(true).await?, csr, spki, true)
                .await?,
            key,
        )?;
        info!(agent_id = %svid.id, expires_at = svid.expires_at, "renewed the agent SVID");
        self.install_svid(svid, true);
        Ok(())
    }

    /// Takes one sync message; applies the update once its last page is in. A full update
    /// replaces what the agent holds; a delta adds, changes and removes entries.
    fn apply(
        &self,
        pending: &mut Option<pb::SyncAuthorizedResponse>,
        msg: pb::SyncAuthorizedResponse,
    ) {
        let Some(upd) = merge_page(pending, msg) else {
            return;
        };
        let to_bundle = |b: &pb::Bundle| -> Option<Bundle> {
            let mut out = Bundle::new(TrustDomain::new(&b.trust_domain).ok()?);
            out.x509_authorities = b.x509_authorities.clone();
            out.jwt_authorities = b
                .jwt_authorities
                .iter()
                .map(|k| JwtAuthority {
                    key_id: k.key_id.clone(),
                    public_key_der: k.public_key.clone(),
                    expires_at: k.expires_at,
                })
                .collect();
            out.refresh_hint = b.refresh_hint.max(0) as u64;
            out.sequence = b.sequence_number;
            Some(out)
        };
        let bundle = upd.bundle.as_ref().and_then(to_bundle);
        if let Some(b) = &bundle {
            self.roots.set(b.x509_authorities.clone());
            let path = self.cfg.data_dir.join("bundle.pem");
            if let Err(e) = Self::write_private(&path, b.to_pem().as_bytes(), 0o644) {
                warn!(error = %e, path = %path.display(), "cannot store the trust bundle");
            }
        }
        let server = self.server_id.as_str();
        let changed: Vec<AgentEntry> = upd
            .entries
            .iter()
            .filter(|e| e.parent_id != server)
            .filter_map(|e| {
                Some(AgentEntry {
                    id: e.id.clone(),
                    spiffe_id: SpiffeId::parse(&e.spiffe_id).ok()?,
                    selectors: e
                        .selectors
                        .iter()
                        .filter_map(|s| Selector::new(&s.r#type, &s.value).ok())
                        .collect(),
                    federates_with: e
                        .federates_with
                        .iter()
                        .filter_map(|t| TrustDomain::new(t).ok())
                        .collect(),
                    hint: e.hint.clone(),
                    revision: e.revision_number,
                    dns_names: e.dns_names.clone(),
                })
            })
            .collect();
        // alias entries (parented by the server) are not served, but a delta naming one
        // still removes any workload entry of that ID
        let gone: HashSet<&str> = upd
            .removed_entry_ids
            .iter()
            .map(String::as_str)
            .chain(
                upd.entries
                    .iter()
                    .filter(|e| e.parent_id == server)
                    .map(|e| e.id.as_str()),
            )
            .collect();
        debug!(
            full = upd.full,
            changed = changed.len(),
            removed = upd.removed_entry_ids.len(),
            revision = upd.revision,
            "applied a sync update"
        );
        let federated: Option<BTreeMap<String, Bundle>> =
            (upd.full || upd.federated_bundles_changed).then(|| {
                upd.federated_bundles
                    .iter()
                    .filter_map(to_bundle)
                    .map(|b| (b.trust_domain.to_string(), b))
                    .collect()
            });
        self.state.update(|v| {
            if bundle.is_some() {
                v.bundle = bundle;
            }
            if let Some(f) = federated {
                v.federated = f;
            }
            // an SVID stays only for an entry whose content is what it was signed for (an
            // ID deleted and created again starts at the same revision with other fields)
            for e in &changed {
                let prev = v
                    .entries()
                    .binary_search_by(|p| p.id.as_str().cmp(e.id.as_str()))
                    .ok()
                    .and_then(|i| v.entries().get(i));
                if prev.is_none_or(|p| **p != *e) {
                    v.svids.remove(&e.id);
                }
            }
            let mut by_id: BTreeMap<String, Arc<AgentEntry>> = if upd.full {
                BTreeMap::new()
            } else {
                v.entries()
                    .iter()
                    .filter(|e| !gone.contains(e.id.as_str()))
                    .map(|e| (e.id.clone(), e.clone()))
                    .collect()
            };
            for e in changed {
                by_id.insert(e.id.clone(), Arc::new(e));
            }
            v.svids
                .retain(|id, s| by_id.get(id).is_some_and(|e| e.revision == s.revision));
            v.set_entries(by_id.into_values().collect());
        });
    }

    /// Signs SVIDs for entries that have none, whose entry changed, or past half-life.
    async fn sign_due(&self) -> Result<usize, AgentError> {
        let t = now();
        // taken out of the view, which is not held across the calls below: an update meanwhile
        // would otherwise have to copy it
        let due: Vec<Arc<AgentEntry>> = {
            let view = self.state.read();
            view.entries()
                .iter()
                .filter(|e| {
                    view.svids
                        .get(&e.id)
                        .is_none_or(|s| s.revision != e.revision || s.due(t))
                })
                .cloned()
                .collect()
        };
        if due.is_empty() {
            return Ok(0);
        }
        let mut client = self.client()?;
        let mut signed = 0;
        for batch in due.chunks(500) {
            let mut keys = HashMap::new();
            let mut params = Vec::new();
            for e in batch {
                let (csr, key) = Self::csr()?;
                keys.insert(e.id.clone(), (key, e.revision));
                params.push(pb::NewX509svidParams {
                    entry_id: e.id.clone(),
                    csr,
                });
            }
            let resp = client
                .batch_new_x509svid(pb::BatchNewX509svidRequest { params })
                .await
                .map_err(|s| AgentError::Unavailable(s.message().to_string()))?
                .into_inner();
            let mut fresh = Vec::new();
            for r in resp.results {
                match (r.code, r.svid, keys.remove(&r.entry_id)) {
                    (0, Some(svid), Some((key, revision))) => {
                        let Some(info) = svid
                            .cert_chain
                            .first()
                            .and_then(|c| ironpact_spiffe::x509::CertInfo::parse(c).ok())
                        else {
                            continue;
                        };
                        let Ok(id) = SpiffeId::parse(&svid.id) else {
                            continue;
                        };
                        fresh.push((
                            r.entry_id,
                            CachedSvid {
                                spiffe_id: id,
                                chain: svid.cert_chain,
                                key_pkcs8: key,
                                received_at: t,
                                expires_at: info.not_after,
                                revision,
                            },
                        ));
                    }
                    (code, _, _) => {
                        warn!(entry_id = %r.entry_id, code, message = %r.message, "server did not sign an SVID")
                    }
                }
            }
            signed += fresh.len();
            self.state.update(|v| {
                for (id, s) in fresh {
                    v.svids.insert(id, Arc::new(s));
                }
            });
        }
        if signed > 0 {
            info!(count = signed, "received workload SVIDs");
        }
        Ok(signed)
    }

    /// A JWT-SVID for `entry_id`, cached until half of its life is gone.
    pub async fn jwt_svid(
        &self,
        entry_id: &str,
        audience: &[String],
    ) -> Result<(String, String), tonic::Status> {
        let mut aud = audience.to_vec();
        aud.sort();
        let key = (entry_id.to_string(), aud);
        let t = now();
        if let Some((tok, iat, exp)) = self
            .jwt_cache
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
            && t < iat + (exp - iat) / 2
        {
            return Ok((tok, String::new()));
        }
        let mut client = self
            .client()
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r = client
            .new_jwtsvid(pb::NewJwtsvidRequest {
                entry_id: entry_id.to_string(),
                audience: audience.to_vec(),
            })
            .await?
            .into_inner();
        if let Ok(mut c) = self.jwt_cache.lock() {
            if c.len() >= JWT_CACHE_MAX {
                // past half-life a token is minted again anyway; then the soonest to expire
                c.retain(|_, v| t < v.1 + (v.2 - v.1) / 2);
                if c.len() >= JWT_CACHE_MAX {
                    let mut exps: Vec<i64> = c.values().map(|v| v.2).collect();
                    exps.sort_unstable();
                    let cut = exps[exps.len() / 2];
                    c.retain(|_, v| v.2 > cut);
                }
            }
            c.insert(key, (r.token.clone(), r.issued_at, r.expires_at));
        }
        Ok((r.token, r.spiffe_id))
    }

    fn renewal_due(&self) -> bool {
        self.svid
            .read()
            .ok()
            .and_then(|g| {
                g.as_ref().map(|s| {
                    // half-life from issuance: NotBefore is backdated for clock skew, and
                    // counting from it would renew short-lived SVIDs without pause
                    let issued =
                        (s.not_before + ironpact_spiffe::x509::BACKDATE_SECS).min(s.expires_at);
                    now() >= issued + (s.expires_at - issued) / 2
                })
            })
            .unwrap_or(false)
    }

    async fn session(&self) -> SessionEnd {
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return SessionEnd::Unavailable(e.to_string()),
        };
        let classify = |s: tonic::Status| Self::end_of(classify(&s));
        let mut sync = match client
            .sync_authorized(pb::SyncAuthorizedRequest { deltas: true })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return classify(s),
        };
        info!(server = %self.addr(), "connected; syncing entries");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut pending = None;
        loop {
            tokio::select! {
                msg = sync.message() => match msg {
                    Ok(Some(m)) => {
                        self.apply(&mut pending, m);
                        if pending.is_some() {
                            continue;
                        }
                        if let Err(e) = self.sign_due().await {
                            warn!(error = %e, "signing workload SVIDs failed; will retry");
                        }
                    }
                    Ok(None) => return SessionEnd::Unavailable("sync stream closed".into()),
                    Err(s) => return classify(s),
                },
                _ = tick.tick() => {
                    if self.renewal_due() {
                        return match self.renew().await {
                            Ok(()) => SessionEnd::Renewed,
                            Err(e) => Self::end_of(e),
                        };
                    }
                    if let Err(e) = self.sign_due().await {
                        warn!(error = %e, "signing workload SVIDs failed; will retry");
                    }
                }
            }
        }
    }

    fn end_of(e: AgentError) -> SessionEnd {
        match e {
            AgentError::Evicted(m) => SessionEnd::Evicted(m),
            AgentError::Banned(m) => SessionEnd::Banned(m),
            AgentError::Refused(m) => SessionEnd::Refused(m),
            other => SessionEnd::Unavailable(other.to_string()),
        }
    }

    /// Whether the agent's own SVID has expired (it can no longer authenticate to renew).
    fn svid_expired(&self) -> bool {
        self.svid
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|s| now() >= s.expires_at))
            .unwrap_or(false)
    }

    fn drop_client(&self) {
        if let Ok(mut c) = self.client.write() {
            *c = None;
        }
    }

    /// Runs until the process ends, or until the server bans this agent (`Err(Banned)`):
    /// attestation, sync, renewal, with jittered backoff on failures. The key is deleted only
    /// on an explicit eviction or ban answer; outages and refusals keep it and the cached
    /// SVIDs, which are served meanwhile.
    pub async fn run(self: Arc<Self>) -> Result<(), AgentError> {
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.agent_id().is_some() && self.svid_expired() {
                warn!("the agent SVID expired before it could be renewed; attesting again");
                self.forget_svid();
                self.drop_client();
            }
            if self.agent_id().is_none() {
                match self.attest().await {
                    Ok(()) => backoff = Duration::from_secs(1),
                    Err(AgentError::Banned(m)) => return Err(self.banned(m)),
                    Err(e) => {
                        let wait = next_backoff(&mut backoff);
                        error!(error = %e, retry_in = ?wait, "attestation failed");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            // a refused agent renews after a pause; what that renewal ends in is handled here too
            let mut end = self.session().await;
            loop {
                match end {
                    SessionEnd::Renewed => backoff = Duration::from_secs(1),
                    SessionEnd::Evicted(reason) => {
                        warn!(%reason, "the server evicted this agent; deleting its key and attesting again");
                        self.forget_svid();
                        self.drop_client();
                    }
                    SessionEnd::Banned(reason) => return Err(self.banned(reason)),
                    SessionEnd::Refused(reason) => {
                        let wait = next_backoff(&mut backoff);
                        warn!(%reason, retry_in = ?wait, "the server refused this agent; keeping its key and cached SVIDs, renewing again after a pause");
                        self.drop_client();
                        tokio::time::sleep(wait).await;
                        if self.svid_expired() {
                            // nothing left to renew with: attest again (below)
                            break;
                        }
                        end = match self.renew().await {
                            Ok(()) => {
                                info!("renewal passed again; the agent is back in service");
                                SessionEnd::Renewed
                            }
                            Err(e) => Self::end_of(e),
                        };
                        continue;
                    }
                    SessionEnd::Unavailable(reason) => {
                        let wait = next_backoff(&mut backoff);
                        warn!(%reason, retry_in = ?wait, "lost the server; serving cached SVIDs meanwhile");
                        self.drop_client();
                        tokio::time::sleep(wait).await;
                    }
                }
                break;
            }
        }
    }

    fn banned(&self, reason: String) -> AgentError {
        let e = AgentError::Banned(reason);
        error!(error = %e, "banned by the server: stopping");
        self.forget_svid();
        self.drop_client();
        e
    }
}
