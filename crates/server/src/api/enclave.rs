//! Enclave workloads, on the agent API: an agent relays an SGX enclave's request (Hello with
//! the caller's unix selectors, then quote and CSR); this server verifies the quote with the
//! `sgx` verifier and signs X509-SVIDs (and JWT-SVIDs when asked) for the CSR's key, for the
//! agent's authorized entries that name `sgx:` selectors and whose selectors all match.
//! Entries with `sgx:` selectors are signed here only: `BatchNewX509SVID` and `NewJWTSVID`
//! refuse them, so no agent can get an enclave's identity for a key of its own.

use super::SharedCore;
use super::agent_endpoint::{AgentEndpoint, attest_status, refuse_reserved};
use ironpact_attestors::AttestError;
use ironpact_datastore::Entry;
use ironpact_proto::enclave::v1 as pb;
use ironpact_spiffe::Selector;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

/// How long each step of the exchange may take (the enclave quotes in between).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Audiences per request, as the Workload API bounds them.
const MAX_AUDIENCES: usize = 16;
/// Selectors an agent may report for one caller (a user in many groups has many).
const MAX_SELECTORS: usize = 1024;
/// Enclave quotes verified at once, apart from node attestation's slots: enclaves (which any
/// local user of an agent's node can start) never starve nodes' renewals.
static ENCLAVE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

pub struct EnclaveEndpoint(pub SharedCore);

/// Whether `e` is an enclave entry: one that names an `sgx:` selector.
pub fn is_enclave_entry(e: &Entry) -> bool {
    e.selectors.iter().any(|s| s.kind == "sgx")
}

async fn next(
    inbound: &mut Streaming<pb::EnclaveRequest>,
    what: &str,
) -> Result<pb::enclave_request::Step, Status> {
    ironpact_proto::enclave::next_request(inbound, what, STEP_TIMEOUT).await
}

#[tonic::async_trait]
impl pb::enclave_attestation_server::EnclaveAttestation for EnclaveEndpoint {
    type AttestEnclaveStream = ReceiverStream<Result<pb::EnclaveResponse, Status>>;

    async fn attest_enclave(
        &self,
        req: Request<Streaming<pb::EnclaveRequest>>,
    ) -> Result<Response<Self::AttestEnclaveStream>, Status> {
        let agent = AgentEndpoint(self.0.clone()).caller(&req, false).await?;
        let Some(verifier) = self.0.sgx.clone() else {
            return Err(Status::failed_precondition(
                "this server verifies no enclaves: configure plugins { WorkloadAttestor \"sgx\" { plugin_data { … } } } on the server",
            ));
        };
        let core = self.0.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let r = tokio::select! {
                r = exchange(&core, &verifier, &agent, &mut inbound, &tx) => r,
                () = core.stopped() => Err(Status::unavailable("the server is shutting down; ask again")),
            };
            let r = r.map(|issued| pb::EnclaveResponse {
                step: Some(pb::enclave_response::Step::Issued(issued)),
            });
            let _ = tx.send(r).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn exchange(
    core: &SharedCore,
    verifier: &ironpact_attestors::sgx::EnclaveVerifier,
    agent: &ironpact_datastore::AgentRecord,
    inbound: &mut Streaming<pb::EnclaveRequest>,
    tx: &mpsc::Sender<Result<pb::EnclaveResponse, Status>>,
) -> Result<pb::Issued, Status> {
    let pb::enclave_request::Step::Hello(hello) = next(inbound, "Hello").await? else {
        return Err(Status::invalid_argument("the exchange starts with Hello"));
    };
    if hello.jwt_audience.len() > MAX_AUDIENCES || hello.jwt_audience.iter().any(String::is_empty) {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_AUDIENCES} non-empty JWT audiences"
        )));
    }
    if hello.workload_selectors.len() > MAX_SELECTORS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_SELECTORS} workload selectors"
        )));
    }
    let nonce: [u8; ironpact_attestors::sgx::NONCE_LEN] = rand::random();
    tx.send(Ok(pb::EnclaveResponse {
        step: Some(pb::enclave_response::Step::Nonce(nonce.to_vec())),
    }))
    .await
    .map_err(|_| Status::cancelled("the agent went away"))?;
    let pb::enclave_request::Step::Evidence(ev) = next(inbound, "quote and CSR").await? else {
        return Err(Status::invalid_argument(
            "Evidence (quote and CSR) follows the nonce",
        ));
    };
    let csr = ironpact_spiffe::x509::parse_csr(&ev.csr)
        .map_err(|e| Status::invalid_argument(format!("the enclave's CSR: {e}")))?;
    let now = core.clock.now();
    let slot = tokio::time::timeout(Duration::from_secs(5), ENCLAVE_SLOTS.acquire()).await;
    let Ok(Ok(_slot)) = slot else {
        return Err(Status::unavailable(
            "the server is busy verifying other enclaves; retry shortly",
        ));
    };
    let enclave = match verifier
        .appraise(&ev.quote, &nonce, &csr.spki_der, now)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            crate::metrics::attestation("sgx", false, e.outcome_str(), e.kind_str());
            warn!(
                agent_id = %agent.spiffe_id,
                kind = e.kind_str(),
                differences = %serde_json::to_string(e.differences()).unwrap_or_default(),
                error = %e,
                "enclave attestation failed"
            );
            return Err(attest_status(e));
        }
    };
    // what the agent says of the caller, but never an `sgx:` selector: those come from the
    // quote alone
    let mut have: HashSet<Selector> = hello
        .workload_selectors
        .iter()
        .filter(|s| s.r#type != "sgx")
        .filter_map(|s| Selector::new(&s.r#type, &s.value).ok())
        .collect();
    have.extend(enclave.selectors.iter().cloned());
    let view = super::agent_endpoint::view_of(core, agent.spiffe_id.as_str()).await?;
    let matching: Vec<&Arc<Entry>> = view
        .entries
        .iter()
        .filter(|e| is_enclave_entry(e) && e.selectors.iter().all(|s| have.contains(s)))
        .collect();
    let described: Vec<String> = enclave.selectors.iter().map(ToString::to_string).collect();
    if matching.is_empty() {
        crate::metrics::attestation("sgx", false, "refused", "no_matching_entry");
        let e = AttestError::rejected(
            ironpact_attestors::RefusalKind::Base("no_matching_entry"),
            format!(
                "no registration entry of {} admits this enclave ({}): register one with its sgx:mrenclave or sgx:mrsigner selector (and the caller's unix selectors), parented by this agent or its node alias",
                agent.spiffe_id,
                described.join(", ")
            ),
        );
        warn!(agent_id = %agent.spiffe_id, error = %e, "enclave attestation refused");
        return Err(attest_status(e));
    }
    let claims = if core.cfg.attestation_claims {
        Some(enclave.claims.to_der().map_err(|e| {
            Status::internal(format!("encoding the attestation claims failed: {e}"))
        })?)
    } else {
        None
    };
    let mut svids = Vec::with_capacity(matching.len());
    for e in matching {
        refuse_reserved(e)?;
        let ttl = match e.x509_svid_ttl {
            0 => core.cfg.default_x509_svid_ttl,
            n => Duration::from_secs(n as u64),
        };
        let own = claims.as_deref().filter(|_| !e.disable_attestation_claims);
        let issued = core
            .ca
            .sign_x509_svid_with(&e.spiffe_id, &csr.spki_der, &e.dns_names, ttl, own)
            .map_err(super::ca_status)?;
        let jwt_svid = if hello.jwt_audience.is_empty() {
            String::new()
        } else {
            let ttl = match e.jwt_svid_ttl {
                0 => core.cfg.default_jwt_svid_ttl,
                n => Duration::from_secs(n as u64),
            };
            let tee = own.map(|_| &enclave.claims);
            core.ca
                .sign_jwt_svid_with(&e.spiffe_id, &hello.jwt_audience, ttl, tee)
                .map_err(super::ca_status)?
                .0
        };
        svids.push(pb::EnclaveSvid {
            entry_id: e.id.clone(),
            spiffe_id: e.spiffe_id.to_string(),
            x509_svid: issued.chain.concat(),
            expires_at: issued.expires_at,
            jwt_svid,
            hint: e.hint.clone(),
        });
    }
    crate::metrics::attestation("sgx", false, "accepted", "none");
    info!(
        agent_id = %agent.spiffe_id,
        enclave = %described.join(" "),
        svids = svids.len(),
        "enclave attested; SVIDs signed for its key"
    );
    Ok(pb::Issued {
        svids,
        bundle: view
            .bundle
            .as_ref()
            .map(|b| b.x509_authorities.concat())
            .unwrap_or_default(),
        enclave_selectors: enclave
            .selectors
            .iter()
            .map(|s| pb::Selector {
                r#type: s.kind.clone(),
                value: s.value.clone(),
            })
            .collect(),
    })
}
