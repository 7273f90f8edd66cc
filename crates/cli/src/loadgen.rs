//! Simulated agents for load tests and benchmarks: each attests with a join token over real
//! TLS, holds a real SVID, keeps a real sync stream open and applies its pages and deltas
//! exactly as the protocol says, so a fleet of thousands fits in one process. They sign SVIDs
//! on request; they serve no workloads.

use anyhow::{Context, Result, anyhow, bail};
use ironpact_agent::manager::merge_page;
use ironpact_proto::agent::v2 as pb;
use ironpact_proto::agent::v2::agent_api_client::AgentApiClient;
use ironpact_proto::server::v1 as spb;
use ironpact_spiffe::SpiffeId;
use ironpact_tls::{SharedRoots, SvidCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::transport::Channel;

/// What a simulated agent holds from its sync stream.
#[derive(Debug, Default, Clone)]
pub struct SyncedView {
    /// Entries by ID (workload and alias entries, as sent).
    pub entries: BTreeMap<String, spb::Entry>,
    pub bundle: Option<spb::Bundle>,
    pub federated: Vec<spb::Bundle>,
    /// Complete updates applied.
    pub updates: u64,
    /// Bytes received on the stream.
    pub bytes: u64,
    /// The server cache revision of the last update.
    pub revision: u64,
}

impl SyncedView {
    /// Applies one complete update (pages already merged).
    pub fn apply(&mut self, u: pb::SyncAuthorizedResponse) {
        if u.full {
            self.entries.clear();
        }
        for id in &u.removed_entry_ids {
            self.entries.remove(id);
        }
        for e in u.entries {
            self.entries.insert(e.id.clone(), e);
        }
        if u.bundle.is_some() {
            self.bundle = u.bundle;
        }
        if u.full || u.federated_bundles_changed {
            self.federated = u.federated_bundles;
        }
        self.revision = u.revision;
        self.updates += 1;
    }
}

/// A simulated agent: attested, with its own key and SVID.
pub struct SimAgent {
    pub id: SpiffeId,
    client: AgentApiClient<Channel>,
    pub view: Arc<Mutex<SyncedView>>,
    /// Bumped after every applied update.
    pub updated: tokio::sync::watch::Sender<u64>,
    /// Set when the sync stream ended, with why.
    pub ended: Arc<Mutex<Option<String>>>,
}

fn csr() -> Result<(Vec<u8>, Vec<u8>)> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_der()))
}

impl SimAgent {
    /// Attests with `token` at `addr` (the server's agent API), trusting `roots`.
    pub async fn attest(addr: &str, roots: &[Vec<u8>], td: &str, token: &str) -> Result<Self> {
        let trust = Arc::new(SharedRoots::new(roots.to_vec()));
        let server_id = SpiffeId::parse(&format!("spiffe://{td}/spire/server"))?;
        let cell = Arc::new(SvidCell::default());
        // attestation runs without a client certificate; the SVID it yields is presented
        // on a connection of its own
        let attest_ch = ironpact_tls::channel(
            addr,
            ironpact_tls::client_config(trust.clone(), server_id.clone(), None)?,
        )?;
        let mut attest_client = AgentApiClient::new(attest_ch);
        let (csr, key) = csr()?;
        let req = pb::AttestAgentRequest {
            step: Some(pb::attest_agent_request::Step::Params(
                pb::attest_agent_request::Params {
                    data: Some(pb::AttestationData {
                        r#type: "join_token".into(),
                        payload: token.as_bytes().to_vec(),
                    }),
                    csr,
                },
            )),
        };
        let mut resp = attest_client
            .attest_agent(tokio_stream::iter(vec![req]))
            .await
            .map_err(|s| anyhow!("attestation refused: {}", s.message()))?
            .into_inner();
        let svid = match resp.message().await?.and_then(|m| m.step) {
            Some(pb::attest_agent_response::Step::Result(r)) => {
                r.svid.context("no SVID in the result")?
            }
            other => bail!("unexpected attestation answer {other:?}"),
        };
        cell.set(svid.cert_chain.clone(), &key)?;
        let ch = ironpact_tls::channel(
            addr,
            ironpact_tls::client_config(trust, server_id, Some(cell))?,
        )?;
        let client =
            AgentApiClient::new(ch).max_decoding_message_size(ironpact_proto::SYNC_MESSAGE_LIMIT);
        Ok(Self {
            id: SpiffeId::parse(&svid.id)?,
            client,
            view: Default::default(),
            updated: tokio::sync::watch::channel(0).0,
            ended: Default::default(),
        })
    }

    /// Opens the sync stream and applies what arrives until it ends (in a task).
    pub async fn start_sync(&self) -> Result<tokio::task::JoinHandle<()>> {
        let mut client = self.client.clone();
        let mut stream = client
            .sync_authorized(pb::SyncAuthorizedRequest {})
            .await
            .map_err(|s| anyhow!("sync refused: {}", s.message()))?
            .into_inner();
        let view = self.view.clone();
        let updated = self.updated.clone();
        let ended = self.ended.clone();
        Ok(tokio::spawn(async move {
            let mut pending = None;
            let why = loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        let n = prost::Message::encoded_len(&m) as u64;
                        if let Ok(mut v) = view.lock() {
                            v.bytes += n;
                        }
                        if let Some(u) = merge_page(&mut pending, m) {
                            if let Ok(mut v) = view.lock() {
                                v.apply(u);
                            }
                            updated.send_modify(|c| *c += 1);
                        }
                    }
                    Ok(None) => break "stream closed".to_string(),
                    Err(s) => break format!("{:?}: {}", s.code(), s.message()),
                };
            };
            if let Ok(mut e) = ended.lock() {
                *e = Some(why);
            }
            updated.send_modify(|c| *c += 1);
        }))
    }

    /// Waits until `pred` holds for the view (checked after each update).
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        pred: impl Fn(&SyncedView) -> bool,
    ) -> Result<Instant> {
        let mut rx = self.updated.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.view.lock().map(|v| pred(&v)).unwrap_or(false) {
                return Ok(Instant::now());
            }
            if let Some(why) = self.ended.lock().ok().and_then(|e| e.clone()) {
                bail!("{}: the sync stream ended: {why}", self.id);
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .map_err(|_| anyhow!("{}: not seen within {timeout:?}", self.id))??;
        }
    }

    /// Asks for X509-SVIDs for these entries (one batch); returns how many were signed.
    pub async fn sign(&self, entry_ids: &[String]) -> Result<usize> {
        let mut params = Vec::with_capacity(entry_ids.len());
        for id in entry_ids {
            params.push(pb::NewX509svidParams {
                entry_id: id.clone(),
                csr: csr()?.0,
            });
        }
        self.sign_prepared(params).await
    }

    /// [`Self::sign`] with CSRs made beforehand (so a benchmark times only the server).
    pub async fn sign_prepared(&self, params: Vec<pb::NewX509svidParams>) -> Result<usize> {
        let r = self
            .client
            .clone()
            .batch_new_x509svid(pb::BatchNewX509svidRequest { params })
            .await
            .map_err(|s| anyhow!("signing refused: {}", s.message()))?
            .into_inner();
        Ok(r.results.iter().filter(|r| r.code == 0).count())
    }

    /// A CSR for a fresh key (for [`Self::sign_prepared`]).
    pub fn new_csr() -> Result<Vec<u8>> {
        Ok(csr()?.0)
    }
}

/// The admin API of a server on its Unix socket.
pub struct Admin {
    pub entries: ironpact_proto::server::v1::entry_service_client::EntryServiceClient<Channel>,
    pub agents: ironpact_proto::server::v1::agent_service_client::AgentServiceClient<Channel>,
    pub bundles: ironpact_proto::server::v1::bundle_service_client::BundleServiceClient<Channel>,
}

impl Admin {
    pub async fn connect(socket: &Path) -> Result<Self> {
        let ch = crate::common::connect_uds(socket, "server", "-socketPath").await?;
        Ok(Self {
            entries: ironpact_proto::server::v1::entry_service_client::EntryServiceClient::new(
                ch.clone(),
            )
            .max_decoding_message_size(64 << 20),
            agents: ironpact_proto::server::v1::agent_service_client::AgentServiceClient::new(
                ch.clone(),
            )
            .max_decoding_message_size(64 << 20),
            bundles: ironpact_proto::server::v1::bundle_service_client::BundleServiceClient::new(
                ch,
            ),
        })
    }

    /// A join token valid for an hour.
    pub async fn join_token(&mut self) -> Result<String> {
        Ok(self
            .agents
            .create_join_token(spb::CreateJoinTokenRequest {
                ttl: 3600,
                agent_id: String::new(),
            })
            .await
            .map_err(|s| anyhow!("join token: {}", s.message()))?
            .into_inner()
            .value)
    }

    /// Creates entries in batches of 1,000; returns their IDs in order (every one must be
    /// created).
    pub async fn create_entries(&mut self, entries: Vec<spb::Entry>) -> Result<Vec<String>> {
        // the CLI's own batching (`entry create -data`): what is measured is what users get
        let r = crate::server::entry::create_in_batches(&mut self.entries, entries)
            .await
            .map_err(|e| anyhow!("create: {e}"))?;
        let mut ids = Vec::with_capacity(r.results.len());
        for res in r.results {
            let st = res.status.unwrap_or_default();
            if st.code != 0 {
                bail!("an entry was not created: {}", st.message);
            }
            ids.push(res.entry.map(|e| e.id).unwrap_or_default());
        }
        Ok(ids)
    }

    /// Every entry the datastore holds, by ID (paged).
    pub async fn all_entries(&mut self) -> Result<BTreeMap<String, spb::Entry>> {
        let mut out = BTreeMap::new();
        let mut token = String::new();
        loop {
            let r = self
                .entries
                .list_entries(spb::ListEntriesRequest {
                    filter: None,
                    page_size: 5000,
                    page_token: token,
                })
                .await
                .map_err(|s| anyhow!("list: {}", s.message()))?
                .into_inner();
            for e in r.entries {
                out.insert(e.id.clone(), e);
            }
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}

/// An entry for a workload of `parent` with one selector.
pub fn workload_entry(spiffe_id: &str, parent: &str, selector: &str) -> spb::Entry {
    let (t, v) = selector.split_once(':').unwrap_or(("unix", selector));
    spb::Entry {
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: vec![spb::Selector {
            r#type: t.into(),
            value: v.into(),
        }],
        ..Default::default()
    }
}
