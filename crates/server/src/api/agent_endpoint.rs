//! The agent API, served over TLS: node attestation (one stream, with challenges), SVID
//! renewal, a pushed stream of authorized entries and bundles, and SVID signing for entries.
//!
//! Every call but AttestAgent identifies the caller by its client SVID (already chained to
//! the trust domain by the TLS layer) and checks it against the attested-agent record: the
//! agent must exist, not be banned, and present its current SVID.

use super::convert::{bundle_pb, entry_pb};
use super::{SharedCore, ca_status, ds_status};
use crate::attest::{AttestError, Challenger, Evidence};
use crate::cache::AgentView;
use ironpact_datastore::{AgentRecord, Entry};
use ironpact_proto::agent::v2 as pb;
use ironpact_proto::agent::v2::agent_api_server::AgentApi;
use ironpact_proto::agent_state;
use ironpact_spiffe::SpiffeId;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

/// How long an agent has to answer a challenge or send its first message.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries of one sync message (page) stay under this many bytes; the agent accepts up to
/// [`ironpact_proto::SYNC_MESSAGE_LIMIT`], so one entry as large as the admin API takes fits.
const PAGE_BYTES: usize = 1 << 20;

pub struct AgentEndpoint(pub SharedCore);

type AttestStream = Pin<Box<dyn Stream<Item = Result<pb::AttestAgentResponse, Status>> + Send>>;
type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncAuthorizedResponse, Status>> + Send>>;

/// The fields a refusal found differing from the policy, as a JSON array for the log line.
fn differences(e: &AttestError) -> String {
    serde_json::to_string(e.differences()).unwrap_or_else(|_| "[]".into())
}

pub(super) fn attest_status(e: AttestError) -> Status {
    if e.is_client_error() {
        Status::invalid_argument(e.to_string())
    } else if e.is_refusal() {
        Status::permission_denied(e.to_string())
    } else if let AttestError::Datastore(d) = e {
        ds_status(d)
    } else {
        // challenge timeouts, KDS/PCS outages: nothing was judged, the agent retries
        Status::unavailable(e.to_string())
    }
}

/// Challenges travel on the attestation stream itself.
struct StreamChallenger<'a> {
    tx: &'a mpsc::Sender<Result<pb::AttestAgentResponse, Status>>,
    inbound: &'a mut Streaming<pb::AttestAgentRequest>,
}

#[tonic::async_trait]
impl Challenger for StreamChallenger<'_> {
    async fn challenge(&mut self, data: Vec<u8>) -> Result<Vec<u8>, AttestError> {
        self.tx
            .send(Ok(pb::AttestAgentResponse {
                step: Some(pb::attest_agent_response::Step::Challenge(data)),
            }))
            .await
            .map_err(|_| AttestError::Challenge("agent went away".into()))?;
        let msg = tokio::time::timeout(STEP_TIMEOUT, self.inbound.message())
            .await
            .map_err(|_| AttestError::Challenge("no answer within 60 s".into()))?
            .map_err(|e| AttestError::Challenge(e.message().to_string()))?
            .ok_or_else(|| AttestError::Challenge("agent closed the stream".into()))?;
        match msg.step {
            Some(pb::attest_agent_request::Step::ChallengeResponse(r)) => Ok(r),
            _ => Err(AttestError::Malformed(
                "expected a challenge response".into(),
            )),
        }
    }
}

impl AgentEndpoint {
    /// The attested agent behind this request's client certificate, which must be in good
    /// standing (see [`standing`]); `renewing` lets a suspended agent in to try again.
    pub(super) async fn caller<T>(
        &self,
        req: &Request<T>,
        renewing: bool,
    ) -> Result<AgentRecord, Status> {
        Ok(self.caller_with_serial(req, renewing).await?.0)
    }

    /// [`Self::caller`] and the serial of the SVID it presented: the current one, or the one
    /// the last renewal replaced while the agent has not used the new one yet (that renewal's
    /// answer may never have reached it).
    pub(super) async fn caller_with_serial<T>(
        &self,
        req: &Request<T>,
        renewing: bool,
    ) -> Result<(AgentRecord, String), Status> {
        let certs = req
            .extensions()
            .get::<ironpact_tls::PeerCerts>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this call needs the agent's SVID as TLS client certificate",
                )
            })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let info = ironpact_spiffe::x509::CertInfo::parse(leaf)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let id = info
            .uri_sans
            .first()
            .and_then(|u| SpiffeId::parse(u).ok())
            .ok_or_else(|| Status::unauthenticated("client certificate carries no SPIFFE ID"))?;
        // the cache answers when it holds this SVID's serial; a miss (attested or renewed on
        // another server a moment ago) and every renewal ask the datastore
        let mut rec = match self.0.cache.agent(id.as_str()) {
            Some(r)
                if !renewing
                    && r.serial_number == info.serial_hex
                    && r.previous_serial.is_empty() =>
            {
                standing(&id, Ok(r.as_ref().clone()), renewing)?
            }
            _ => standing(&id, self.0.ds.get_agent(&id).await, renewing)?,
        };
        if rec.serial_number == info.serial_hex {
            if !rec.previous_serial.is_empty() {
                // the first use of the renewed SVID retires the one it replaced
                // best effort: a datastore outage must not fail the agent's own request (the
                // next call tries again)
                match self.0.ds.confirm_agent_serial(&id, &info.serial_hex).await {
                    Ok(true) => self.0.changed().await,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(agent_id = %id, error = %e, "could not retire the agent's previous SVID yet")
                    }
                }
                rec.previous_serial.clear();
            }
        } else if rec.previous_serial.is_empty() || rec.previous_serial != info.serial_hex {
            return Err(Status::permission_denied(format!(
                "{id} presented an SVID that is not its current one; attest again"
            )));
        }
        Ok((rec, info.serial_hex))
    }

    /// What the agent may see, from the cache; an agent the datastore knows but the cache not
    /// yet (attested through another server a moment ago) makes the cache catch up once.
    async fn authorized_for(&self, agent: &AgentRecord) -> Result<Arc<AgentView>, Status> {
        view_of(&self.0, agent.spiffe_id.as_str()).await
    }
}

pub(super) async fn view_of(core: &SharedCore, agent_id: &str) -> Result<Arc<AgentView>, Status> {
    if let Some(v) = core.cache.view(agent_id, core.clock.now()) {
        return Ok(v);
    }
    core.changed().await;
    core.cache.view(agent_id, core.clock.now()).ok_or_else(|| {
        agent_state::status(
            agent_state::EVICTED,
            format!("{agent_id} is not an attested agent (evicted); attest again"),
        )
    })
}

/// Runs one attestation (or renewal, when `renewing` holds the caller's record).
/// The metrics' record of one attestation: counted once, by the step that decided it, or
/// at the end from the answer's status.
#[derive(Default)]
struct Counted {
    attestor: Option<&'static str>,
    done: bool,
}

impl Counted {
    fn record(&mut self, renewing: bool, outcome: &str, kind: &str) {
        if !self.done {
            self.done = true;
            crate::metrics::attestation(
                self.attestor.unwrap_or("unknown"),
                renewing,
                outcome,
                kind,
            );
        }
    }

    /// What no step recorded: a malformed request, a datastore or CA failure after the
    /// verdict, renewal evidence for another agent, a shutdown.
    fn finish(&mut self, renewing: bool, r: &Result<pb::attest_agent_response::Result, Status>) {
        let Err(st) = r else {
            return self.record(renewing, "accepted", "none");
        };
        let (outcome, kind) = match st.code() {
            tonic::Code::InvalidArgument => ("invalid", "invalid_request"),
            tonic::Code::PermissionDenied => ("refused", "permission_denied"),
            tonic::Code::FailedPrecondition => ("refused", "failed_precondition"),
            tonic::Code::NotFound => ("refused", "not_found"),
            tonic::Code::DeadlineExceeded => ("error", "deadline_exceeded"),
            tonic::Code::Unavailable => ("error", "unavailable"),
            _ => ("error", "internal"),
        };
        self.record(renewing, outcome, kind);
    }
}

async fn attest_flow(
    core: &SharedCore,
    inbound: &mut Streaming<pb::AttestAgentRequest>,
    tx: &mpsc::Sender<Result<pb::AttestAgentResponse, Status>>,
    renewing: Option<AgentRecord>,
    counted: &mut Counted,
) -> Result<pb::attest_agent_response::Result, Status> {
    let first = tokio::time::timeout(STEP_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no attestation parameters within 60 s"))??
        .ok_or_else(|| {
            Status::invalid_argument("stream closed before the attestation parameters")
        })?;
    let Some(pb::attest_agent_request::Step::Params(params)) = first.step else {
        return Err(Status::invalid_argument(
            "the first message must carry the attestation parameters",
        ));
    };
    let data = params
        .data
        .ok_or_else(|| Status::invalid_argument("attestation data is required"))?;
    let csr = ironpact_spiffe::x509::parse_csr(&params.csr)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let attestor = core
        .attestors
        .get(data.r#type.as_str())
        .cloned()
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "node attestor {:?} is not configured on this server (configured: {})",
                data.r#type,
                core.attestors
                    .keys()
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    counted.attestor = Some(attestor.name());
    let now = core.clock.now();
    let ev = Evidence {
        payload: &data.payload,
        csr_spki: &csr.spki_der,
        now,
    };
    let attested = match &renewing {
        Some(rec) if rec.attestation_type != data.r#type => {
            return Err(Status::invalid_argument(format!(
                "agent attested with {:?} cannot renew with {:?}",
                rec.attestation_type, data.r#type
            )));
        }
        _ => {
            let mut ch = StreamChallenger { tx, inbound };
            let result = match &renewing {
                Some(rec) => attestor.renew(rec, ev, &mut ch).await,
                None => attestor.attest(ev, &mut ch).await,
            };
            let a = match result {
                Ok(a) => a,
                Err(e) => {
                    counted.record(renewing.is_some(), e.outcome_str(), e.kind_str());
                    if let Some(rec) = &renewing {
                        return Err(renewal_failed(core, rec, e, now).await);
                    }
                    warn!(
                        attestor = attestor.name(),
                        kind = e.kind_str(),
                        differences = %differences(&e),
                        error = %e,
                        "node attestation failed"
                    );
                    return Err(attest_status(e));
                }
            };
            if let Some(rec) = &renewing {
                if rec.spiffe_id != a.agent_id {
                    let msg = format!(
                        "renewal evidence is for {}, not {}",
                        a.agent_id, rec.spiffe_id
                    );
                    // evidence that may attest again (a node certificate renewed on disk, with
                    // a new fingerprint): the agent attests afresh as that identity, where
                    // bans, instance checks and the rest apply; this renewal grants nothing
                    if attestor.identity_follows_credentials() {
                        info!(agent_id = %rec.spiffe_id, now = %a.agent_id, "renewal evidence names another agent; asking the agent to attest afresh");
                        return Err(agent_state::status(
                            agent_state::REATTEST,
                            format!("{msg}: attest afresh"),
                        ));
                    }
                    counted.record(true, "refused", "another_agents_evidence");
                    return Err(Status::permission_denied(msg));
                }
                // A renewal is made with the agent's current key: a new instance here is the
                // same agent after a reboot (its key kept on disk), recorded below.
                if let Some(i) = &a.tee_instance
                    && !rec.tee_instance.is_empty()
                    && *i != rec.tee_instance
                {
                    info!(agent_id = %rec.spiffe_id, was = %rec.tee_instance, now = %i, "the agent renewed from a new TEE instance (relaunched with its key)");
                }
            }
            a
        }
    };
    let existing = match core.ds.get_agent(&attested.agent_id).await {
        Ok(r) => Some(r),
        // evicted while this renewal was being judged: the eviction stands
        Err(ironpact_datastore::Error::NotFound { .. }) if renewing.is_some() => {
            return Err(evicted_meanwhile(&attested.agent_id));
        }
        Err(ironpact_datastore::Error::NotFound { .. }) => None,
        Err(e) => return Err(ds_status(e)),
    };
    let is_renewal = renewing.is_some();
    let mut refused = |kind: &str| counted.record(is_renewal, "refused", kind);
    if existing.as_ref().is_some_and(|r| r.banned) {
        refused("banned");
        warn!(agent_id = %attested.agent_id, "banned agent tried to attest");
        return Err(agent_state::status(
            agent_state::BANNED,
            format!("agent {} is banned", attested.agent_id),
        ));
    }
    // An agent ID is its attestor's: another attestor's evidence (an operator template that
    // happens to produce it) does not take it over.
    if renewing.is_none()
        && let Some(r) = &existing
        && r.attestation_type != attestor.name()
    {
        refused("another_attestors_id");
        warn!(agent_id = %attested.agent_id, attestor = attestor.name(), was = %r.attestation_type, "attestation under another attestor's agent ID refused");
        return Err(Status::permission_denied(format!(
            "{} was attested with {:?}, not {:?}: evict it first (ironpact-server agent evict -spiffeID {})",
            attested.agent_id,
            r.attestation_type,
            attestor.name(),
            attested.agent_id
        )));
    }
    // Re-attestation under an existing agent ID must come from the TEE instance that first
    // attested: a copy of the base's evidence (an identity document) in another VM that passes
    // the same policy must not take the ID over. The existing agent is left as it is.
    if renewing.is_none()
        && let Some(r) = &existing
        && let Err(e) = same_instance(r, &attested)
    {
        refused(e.kind_str());
        warn!(agent_id = %attested.agent_id, attestor = attestor.name(), error = %e, "re-attestation from another TEE instance refused");
        return Err(attest_status(e));
    }
    // Trust on first use: evidence that never changes (an instance identity document) attests
    // once; the node must be evicted before it can attest again.
    if renewing.is_none() && existing.as_ref().is_some_and(|r| !r.can_reattest) {
        refused("already_attested");
        warn!(agent_id = %attested.agent_id, attestor = attestor.name(), "attestation data already used");
        return Err(Status::permission_denied(format!(
            "{} has already attested with this {} evidence and cannot attest again: evict it first (ironpact-server agent evict -spiffeID {})",
            attested.agent_id,
            attestor.name(),
            attested.agent_id
        )));
    }
    // what the TEE evidence proved travels in the agent's SVID (and its workloads')
    let claims_der = match attested
        .claims
        .as_ref()
        .filter(|_| core.cfg.attestation_claims)
    {
        Some(c) => Some(c.to_der().map_err(|e| {
            Status::internal(format!("encoding the attestation claims failed: {e}"))
        })?),
        None => None,
    };
    let issued = core
        .ca
        .sign_x509_svid_with(
            &attested.agent_id,
            &csr.spki_der,
            &[],
            core.cfg.agent_ttl.unwrap_or(core.cfg.default_x509_svid_ttl),
            claims_der.as_deref(),
        )
        .map_err(ca_status)?;
    let rec = AgentRecord {
        spiffe_id: attested.agent_id.clone(),
        attestation_type: attestor.name().to_string(),
        serial_number: issued.serial_hex.clone(),
        expires_at: issued.expires_at,
        selectors: attested.selectors.clone(),
        banned: false,
        can_reattest: attested.can_reattest,
        created_at: existing.as_ref().map_or(now, |r| r.created_at),
        updated_at: now,
        attestation_error: String::new(),
        attestation_refusal: String::new(),
        tee_instance: recorded_instance(existing.as_ref(), &attested, renewing.is_some()),
        previous_serial: renewing
            .as_ref()
            .map(|was| was.previous_serial.clone())
            .unwrap_or_default(),
        attestation_claims: claims_der.clone().unwrap_or_default(),
    };
    match (&renewing, &existing) {
        // a renewal replaces the record only if it is still the one the caller presented: an
        // eviction, ban or other renewal meanwhile is never undone
        (Some(was), _) => match if was.previous_serial == was.serial_number {
            core.ds
                .update_agent_if_current(&rec, &was.serial_number)
                .await
        } else {
            // renewed with the SVID the last renewal replaced (its answer was lost): only
            // while that one is still accepted, so an SVID the agent has retired by using its
            // successor never comes back, however long this renewal took
            warn!(
                agent_id = %rec.spiffe_id,
                presented = %was.previous_serial,
                current = %was.serial_number,
                "renewal with the agent's previous SVID (the last renewal's answer did not reach it, or a copy of that SVID is in use)"
            );
            core.ds
                .update_agent_if_previous(&rec, &was.serial_number, &was.previous_serial)
                .await
        } {
            Err(ironpact_datastore::Error::NotFound { .. }) => {
                return Err(evicted_meanwhile(&rec.spiffe_id));
            }
            r => r.map_err(ds_status)?,
        },
        (None, Some(_)) => core.ds.update_agent(&rec).await.map_err(ds_status)?,
        (None, None) => core.ds.create_agent(&rec).await.map_err(ds_status)?,
    }
    core.changed().await;
    info!(
        agent_id = %rec.spiffe_id,
        attestor = attestor.name(),
        serial = %rec.serial_number,
        renewal = renewing.is_some(),
        "agent attested"
    );
    Ok(pb::attest_agent_response::Result {
        svid: Some(ironpact_proto::server::v1::X509svid {
            id: rec.spiffe_id.to_string(),
            cert_chain: issued.chain,
            expires_at: issued.expires_at,
        }),
        reattestable: rec.can_reattest,
    })
}

/// An agent's standing, from the lookup of its record: evicted (no record) and banned answers
/// carry the agent-state marker (the only ones on which an agent deletes its key); a suspended
/// agent (its re-attestation was refused) gets nothing but, when `renewing`, may try again.
fn standing(
    id: &SpiffeId,
    found: Result<AgentRecord, ironpact_datastore::Error>,
    renewing: bool,
) -> Result<AgentRecord, Status> {
    let rec = match found {
        Ok(r) => r,
        Err(ironpact_datastore::Error::NotFound { .. }) => {
            return Err(agent_state::status(
                agent_state::EVICTED,
                format!("{id} is not an attested agent (evicted); attest again"),
            ));
        }
        Err(e) => return Err(ds_status(e)),
    };
    if rec.banned {
        return Err(agent_state::status(
            agent_state::BANNED,
            format!("agent {id} is banned"),
        ));
    }
    let suspended = rec.serial_number.is_empty() || !rec.attestation_error.is_empty();
    if suspended && !renewing {
        return Err(Status::permission_denied(format!(
            "agent {id} failed re-attestation: {}; it gets nothing until a renewal passes",
            rec.attestation_error
        )));
    }
    Ok(rec)
}

/// An entry holding a reserved ID (written before such entries were refused, or straight into
/// the database) never gets an SVID through an agent: only the server holds `/spire/server`.
/// An enclave entry (`sgx:` selectors) is signed only for a key a verified quote binds
/// (AttestEnclave), never for a CSR or token an agent asks for on its own.
fn refuse_enclave(e: &Entry) -> Result<(), Status> {
    if super::enclave::is_enclave_entry(e) {
        warn!(entry_id = %e.id, spiffe_id = %e.spiffe_id, "refused to sign an enclave entry outside an enclave attestation");
        return Err(Status::permission_denied(format!(
            "entry {:?} selects an SGX enclave: its SVIDs are signed only for the key of a verified quote (the enclave API)",
            e.id
        )));
    }
    Ok(())
}

pub(super) fn refuse_reserved(e: &Entry) -> Result<(), Status> {
    if e.spiffe_id.is_reserved() {
        warn!(entry_id = %e.id, spiffe_id = %e.spiffe_id, "refused to sign for an entry with a reserved SPIFFE ID");
        return Err(Status::permission_denied(format!(
            "entry {:?} names {}, which is reserved for the server and agents",
            e.id, e.spiffe_id
        )));
    }
    Ok(())
}

/// The answer to a renewal whose agent was evicted, banned or renewed by another stream while
/// it was being judged: what the operator did stands, and the agent attests again if it may.
fn evicted_meanwhile(id: &SpiffeId) -> Status {
    warn!(agent_id = %id, "the agent was evicted or banned while its renewal was judged; nothing written");
    agent_state::status(
        agent_state::EVICTED,
        format!("{id} was evicted or changed while this renewal was judged; attest again"),
    )
}

/// The TEE instance to record: a renewal (made with the agent's key) records where it came
/// from; otherwise the instance already recorded stays (a re-attestation was checked against
/// it), or this attestation's becomes the first.
fn recorded_instance(
    existing: Option<&AgentRecord>,
    a: &crate::attest::Attested,
    renewal: bool,
) -> String {
    let recorded = existing
        .map(|r| r.tee_instance.as_str())
        .filter(|i| !i.is_empty());
    match (renewal, recorded, &a.tee_instance) {
        (true, _, Some(new)) => new.clone(),
        (_, Some(old), _) => old.to_string(),
        (_, None, new) => new.clone().unwrap_or_default(),
    }
}

/// Whether `a` comes from the TEE instance `rec` recorded (any, when none is recorded).
fn same_instance(rec: &AgentRecord, a: &crate::attest::Attested) -> Result<(), AttestError> {
    if rec.tee_instance.is_empty() {
        return Ok(());
    }
    match &a.tee_instance {
        Some(i) if *i == rec.tee_instance => Ok(()),
        other => Err(AttestError::InstanceMismatch {
            agent_id: rec.spiffe_id.to_string(),
            recorded: rec.tee_instance.clone(),
            presented: other.clone().unwrap_or_else(|| "(none)".into()),
        }),
    }
}

/// A renewal that did not pass. A refusal (evidence or policy) suspends the agent: it gets
/// nothing until a renewal passes, and `agent show` says why. A transient failure (challenge
/// timeout, KDS/PCS or datastore outage) changes nothing: the agent keeps its SVID and retries.
async fn renewal_failed(core: &SharedCore, rec: &AgentRecord, e: AttestError, now: i64) -> Status {
    if e.is_refusal() && rec.previous_serial != rec.serial_number {
        // presented with the replaced SVID: refused, but a holder of that one cannot
        // suspend the agent that uses the current one
        warn!(agent_id = %rec.spiffe_id, error = %e, "re-attestation with the agent's previous SVID refused");
    } else if e.is_refusal() {
        warn!(
            agent_id = %rec.spiffe_id,
            kind = e.kind_str(),
            differences = %differences(&e),
            error = %e,
            "re-attestation refused; the agent is suspended until it passes"
        );
        // only the suspension is written, and only onto the record the caller presented: an
        // eviction or ban made while it was judged stays as it is
        match core
            .ds
            .suspend_agent(
                &rec.spiffe_id,
                &rec.serial_number,
                &e.to_string(),
                &e.refusal_json(),
                now,
            )
            .await
        {
            Ok(true) => core.changed().await,
            Ok(false) => {}
            Err(d) => warn!(error = %d, "could not record the failed re-attestation"),
        }
    } else {
        warn!(agent_id = %rec.spiffe_id, error = %e, "renewal could not be judged now; the agent stays as it is");
    }
    attest_status(e)
}

fn attest_stream(
    core: SharedCore,
    mut inbound: Streaming<pb::AttestAgentRequest>,
    renewing: Option<AgentRecord>,
) -> AttestStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let slot = tokio::time::timeout(Duration::from_secs(5), core.attest_slots.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            warn!("too many attestations at once; asking the agent to retry");
            let _ = tx
                .send(Err(Status::unavailable(
                    "the server is busy attesting other nodes; retry shortly",
                )))
                .await;
            return;
        };
        let is_renewal = renewing.is_some();
        let mut counted = Counted::default();
        let r = tokio::select! {
            r = attest_flow(&core, &mut inbound, &tx, renewing, &mut counted) => r,
            () = core.stopped() => Err(Status::unavailable("the server is shutting down; attest again")),
        };
        counted.finish(is_renewal, &r);
        let msg = r.map(|res| pb::AttestAgentResponse {
            step: Some(pb::attest_agent_response::Step::Result(res)),
        });
        let _ = tx.send(msg).await;
    });
    Box::pin(ReceiverStream::new(rx))
}

/// What a sync stream has sent (the view of its last update, shared with the cache), to
/// send only what changed.
#[derive(Default)]
pub(super) struct Sent(Option<Arc<AgentView>>);

/// The messages of one update from `sent` to `view` (the full set when `full`); empty when
/// nothing the agent sees changed. Entries and removed IDs are paged under [`PAGE_BYTES`];
/// bundles ride on the last page. Both entry lists are ordered by ID: one merge finds what
/// changed.
pub(super) fn update_pages(
    view: &Arc<AgentView>,
    sent: &mut Sent,
    full: bool,
) -> Vec<pb::SyncAuthorizedResponse> {
    let (no_entries, no_bundles) = (Vec::new(), Vec::new());
    let (sent_entries, sent_bundle, sent_federated) = match &sent.0 {
        Some(v) => (&v.entries, v.bundle.clone(), &v.federated),
        None => (&no_entries, None, &no_bundles),
    };
    let bundle_changed = full || sent_bundle != view.bundle;
    let federated_changed = full || *sent_federated != view.federated;
    let mut upserts: Vec<&Arc<Entry>> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    if full {
        upserts.extend(view.entries.iter());
    } else {
        let (mut old, mut new) = (
            sent_entries.iter().peekable(),
            view.entries.iter().peekable(),
        );
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(o), None) => {
                    removed.push(o.id.clone());
                    old.next();
                }
                (None, Some(n)) => {
                    upserts.push(n);
                    new.next();
                }
                (Some(o), Some(n)) => match o.id.cmp(&n.id) {
                    std::cmp::Ordering::Less => {
                        removed.push(o.id.clone());
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        upserts.push(n);
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        // content, not only the revision: an ID deleted and created again
                        // starts at revision 0 with other fields
                        if !Arc::ptr_eq(o, n) && **o != **n {
                            upserts.push(n);
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
    }
    if !full && upserts.is_empty() && removed.is_empty() && !bundle_changed && !federated_changed {
        return Vec::new();
    }
    let mut pages = vec![pb::SyncAuthorizedResponse {
        full,
        revision: view.revision,
        ..Default::default()
    }];
    let mut size = 0usize;
    let mut room = |pages: &mut Vec<pb::SyncAuthorizedResponse>, n: usize| {
        if size > 0 && size + n > PAGE_BYTES {
            pages.push(pb::SyncAuthorizedResponse {
                full,
                revision: view.revision,
                ..Default::default()
            });
            size = 0;
        }
        size += n;
    };
    for e in upserts {
        let m = entry_pb(e);
        room(&mut pages, prost::Message::encoded_len(&m) + 8);
        if let Some(p) = pages.last_mut() {
            p.entries.push(m);
        }
    }
    for id in removed {
        room(&mut pages, id.len() + 4);
        if let Some(p) = pages.last_mut() {
            p.removed_entry_ids.push(id);
        }
    }
    let n = pages.len();
    for (i, p) in pages.iter_mut().enumerate() {
        p.more = i + 1 < n;
    }
    if let Some(last) = pages.last_mut() {
        if bundle_changed {
            last.bundle = view.bundle.as_deref().map(bundle_pb);
        }
        if federated_changed {
            last.federated_bundles_changed = true;
            last.federated_bundles = view.federated.iter().map(|b| bundle_pb(b)).collect();
        }
    }
    sent.0 = Some(view.clone());
    pages
}

/// An agent of an earlier release (its request does not ask for deltas) gets what it
/// understands: the whole set in one message whenever anything it sees changed.
pub(super) fn legacy_snapshot(
    view: &Arc<AgentView>,
    sent: &mut Sent,
    first: bool,
) -> Option<pb::SyncAuthorizedResponse> {
    if !first && update_pages(view, sent, false).is_empty() {
        return None;
    }
    sent.0 = Some(view.clone());
    Some(pb::SyncAuthorizedResponse {
        entries: view.entries.iter().map(|e| entry_pb(e)).collect(),
        bundle: view.bundle.as_deref().map(bundle_pb),
        federated_bundles: view.federated.iter().map(|b| bundle_pb(b)).collect(),
        revision: view.revision,
        full: true,
        more: false,
        removed_entry_ids: Vec::new(),
        federated_bundles_changed: true,
    })
}

/// When the next of these entries expires (and must leave the agent's view), if any does.
fn next_expiry(view: &AgentView, now: i64) -> Option<i64> {
    view.entries
        .iter()
        .map(|e| e.expires_at)
        .filter(|&t| t > now)
        .min()
}

/// The sync stream of `agent`: `pages` turns each new view into the messages that bring the
/// agent from what was sent to it (empty when nothing it sees changed).
pub(super) fn sync_stream<M: Send + 'static>(
    core: SharedCore,
    agent: AgentRecord,
    mut pages: impl FnMut(&Arc<AgentView>, &mut Sent, bool) -> Vec<M> + Send + 'static,
) -> ReceiverStream<Result<M, Status>> {
    let mut revisions = core.cache.subscribe();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let id = agent.spiffe_id.to_string();
        let mut sent = Sent::default();
        let mut full = true;
        loop {
            revisions.borrow_and_update();
            let now = core.clock.now();
            let checked = view_of(&core, &id).await.and_then(|v| {
                standing(&agent.spiffe_id, Ok(v.agent.as_ref().clone()), false).map(|_| v)
            });
            let view = match checked {
                Ok(v) => v,
                Err(s) => {
                    info!(agent_id = %id, reason = %s.message(), "closing agent sync stream");
                    let _ = tx.send(Err(s)).await;
                    break;
                }
            };
            for page in pages(&view, &mut sent, full) {
                if tx.send(Ok(page)).await.is_err() {
                    return;
                }
            }
            full = false;
            // an entry that expires leaves the view without a change in the log
            let until_expiry = next_expiry(&view, now).map_or(Duration::from_secs(3600), |t| {
                Duration::from_secs((t - now).max(1) as u64)
            });
            drop(view);
            tokio::select! {
                r = revisions.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
                () = core.stopped() => {
                    let _ = tx.send(Err(Status::unavailable("the server is shutting down; reconnect"))).await;
                    break;
                }
                _ = tokio::time::sleep(until_expiry) => {}
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl AgentApi for AgentEndpoint {
    type AttestAgentStream = AttestStream;
    type RenewAgentStream = AttestStream;
    type SyncAuthorizedStream = SyncStream;

    async fn attest_agent(
        &self,
        req: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        Ok(Response::new(attest_stream(
            self.0.clone(),
            req.into_inner(),
            None,
        )))
    }

    async fn renew_agent(
        &self,
        req: Request<Streaming<pb::AttestAgentRequest>>,
    ) -> Result<Response<Self::RenewAgentStream>, Status> {
        let (mut rec, presented) = self.caller_with_serial(&req, true).await?;
        // what the agent holds now stays acceptable until it uses the SVID this renewal
        // makes (carried to the new record as its previous serial)
        rec.previous_serial = presented;
        Ok(Response::new(attest_stream(
            self.0.clone(),
            req.into_inner(),
            Some(rec),
        )))
    }

    async fn sync_authorized(
        &self,
        req: Request<pb::SyncAuthorizedRequest>,
    ) -> Result<Response<Self::SyncAuthorizedStream>, Status> {
        let agent = self.caller(&req, false).await?;
        Ok(Response::new(Box::pin(sync_stream(
            self.0.clone(),
            agent,
            update_pages,
        ))))
    }

    async fn batch_new_x509svid(
        &self,
        req: Request<pb::BatchNewX509svidRequest>,
    ) -> Result<Response<pb::BatchNewX509svidResponse>, Status> {
        let agent = self.caller(&req, false).await?;
        let params = &req.get_ref().params;
        super::check_batch(params.len())?;
        let view = self.authorized_for(&agent).await?;
        let entries: HashMap<&str, &Arc<Entry>> =
            view.entries.iter().map(|e| (e.id.as_str(), e)).collect();
        // the claims the agent's last attestation established go into its workloads' SVIDs
        let claims = Some(agent.attestation_claims.as_slice())
            .filter(|c| !c.is_empty() && self.0.cfg.attestation_claims)
            .filter(|c| {
                // what the datastore holds is read back before a peer has to trust it
                let ok = ironpact_spiffe::claims::AttestationClaims::from_der(c).is_ok();
                if !ok {
                    warn!(agent_id = %agent.spiffe_id, "the agent's stored attestation claims do not parse; its workloads' SVIDs go without");
                }
                ok
            });
        let mut results = Vec::with_capacity(params.len());
        for p in params {
            let r = (|| {
                let e = entries.get(p.entry_id.as_str()).ok_or_else(|| {
                    Status::permission_denied(format!(
                        "entry {:?} is not authorized for this agent",
                        p.entry_id
                    ))
                })?;
                refuse_reserved(e)?;
                refuse_enclave(e)?;
                let csr = ironpact_spiffe::x509::parse_csr(&p.csr)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let ttl = match e.x509_svid_ttl {
                    0 => self.0.cfg.default_x509_svid_ttl,
                    n => Duration::from_secs(n as u64),
                };
                let issued = self
                    .0
                    .ca
                    .sign_x509_svid_with(
                        &e.spiffe_id,
                        &csr.spki_der,
                        &e.dns_names,
                        ttl,
                        claims.filter(|_| !e.disable_attestation_claims),
                    )
                    .map_err(ca_status)?;
                Ok::<_, Status>(ironpact_proto::server::v1::X509svid {
                    id: e.spiffe_id.to_string(),
                    cert_chain: issued.chain,
                    expires_at: issued.expires_at,
                })
            })();
            results.push(match r {
                Ok(svid) => pb::batch_new_x509svid_response::Result {
                    code: 0,
                    message: String::new(),
                    svid: Some(svid),
                    entry_id: p.entry_id.clone(),
                },
                Err(s) => pb::batch_new_x509svid_response::Result {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    svid: None,
                    entry_id: p.entry_id.clone(),
                },
            });
        }
        Ok(Response::new(pb::BatchNewX509svidResponse { results }))
    }

    async fn new_jwtsvid(
        &self,
        req: Request<pb::NewJwtsvidRequest>,
    ) -> Result<Response<pb::NewJwtsvidResponse>, Status> {
        let agent = self.caller(&req, false).await?;
        let r = req.get_ref();
        if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "at least one non-empty audience is required",
            ));
        }
        let view = self.authorized_for(&agent).await?;
        let e = view
            .entries
            .iter()
            .find(|e| e.id == r.entry_id)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "entry {:?} is not authorized for this agent",
                    r.entry_id
                ))
            })?;
        refuse_reserved(e)?;
        refuse_enclave(e)?;
        let ttl = match e.jwt_svid_ttl {
            0 => self.0.cfg.default_jwt_svid_ttl,
            n => Duration::from_secs(n as u64),
        };
        // a workload of a TEE-attested node: its JWT-SVID says so (the `tee` claim)
        let tee = if agent.attestation_claims.is_empty()
            || !self.0.cfg.attestation_claims
            || e.disable_attestation_claims
        {
            None
        } else {
            ironpact_spiffe::claims::AttestationClaims::from_der(&agent.attestation_claims).ok()
        };
        let (token, iat, exp) = self
            .0
            .ca
            .sign_jwt_svid_with(&e.spiffe_id, &r.audience, ttl, tee.as_ref())
            .map_err(ca_status)?;
        Ok(Response::new(pb::NewJwtsvidResponse {
            token,
            spiffe_id: e.spiffe_id.to_string(),
            expires_at: exp,
            issued_at: iat,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ironpact_spiffe::{Bundle, Selector, TrustDomain};

    fn entry(i: usize, rev: i64, selector_bytes: usize) -> Arc<Entry> {
        let mut e = Entry::new(
            SpiffeId::parse(&format!("spiffe://td/w{i}")).unwrap(),
            SpiffeId::parse("spiffe://td/agent").unwrap(),
            vec![Selector::new("k", &"v".repeat(selector_bytes.max(1))).unwrap()],
        );
        e.id = format!("{i:06}");
        e.revision_number = rev;
        Arc::new(e)
    }

    fn view(entries: Vec<Arc<Entry>>, bundle_seq: u64) -> Arc<AgentView> {
        let mut b = Bundle::new(TrustDomain::new("td").unwrap());
        b.sequence = bundle_seq;
        Arc::new(AgentView {
            agent: Arc::new(crate::cache::tests::agent("spiffe://td/agent", &[])),
            entries,
            bundle: Some(Arc::new(b)),
            federated: vec![],
            revision: 1,
        })
    }

    #[test]
    fn a_full_update_is_paged_under_the_limit_and_deltas_carry_only_changes() {
        // 3,000 entries of ~1 KiB: about 3 MiB, more than one page
        let all: Vec<Arc<Entry>> = (0..3000).map(|i| entry(i, 0, 1000)).collect();
        let mut sent = Sent::default();
        let pages = update_pages(&view(all.clone(), 1), &mut sent, true);
        assert!(pages.len() >= 3, "{} pages", pages.len());
        for (i, p) in pages.iter().enumerate() {
            assert!(p.full);
            assert_eq!(p.more, i + 1 < pages.len());
            assert!(prost::Message::encoded_len(p) <= PAGE_BYTES + 4096);
            // the bundle rides on the last page only
            assert_eq!(p.bundle.is_some(), i + 1 == pages.len());
        }
        assert_eq!(pages.iter().map(|p| p.entries.len()).sum::<usize>(), 3000);

        // nothing changed: nothing sent
        assert!(update_pages(&view(all.clone(), 1), &mut sent, false).is_empty());

        // one entry changed, one removed, one added: a single small message
        let mut next = all.clone();
        next[10] = entry(10, 1, 1000);
        next.remove(20);
        next.push(entry(5000, 0, 10));
        let pages = update_pages(&view(next.clone(), 1), &mut sent, false);
        assert_eq!(pages.len(), 1);
        let d = &pages[0];
        assert!(!d.full && !d.more && d.bundle.is_none() && !d.federated_bundles_changed);
        let ids: Vec<&str> = d.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["000010", "005000"]);
        assert_eq!(d.removed_entry_ids, ["000020"]);
        assert!(prost::Message::encoded_len(d) < 2000);

        // a new bundle alone
        let pages = update_pages(&view(next.clone(), 2), &mut sent, false);
        assert_eq!(pages.len(), 1);
        assert!(pages[0].entries.is_empty() && pages[0].bundle.is_some());

        // an ID deleted and created again (same revision, other content) is sent again
        let mut again = next.clone();
        let mut reborn = (*again[0]).clone();
        reborn.spiffe_id = SpiffeId::parse("spiffe://td/someone-else").unwrap();
        again[0] = Arc::new(reborn);
        let pages = update_pages(&view(again.clone(), 2), &mut sent, false);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].entries.len(), 1);
        assert_eq!(pages[0].entries[0].spiffe_id, "spiffe://td/someone-else");

        // an agent of an earlier release gets whole snapshots, and only on change
        let mut legacy = Sent::default();
        let first = legacy_snapshot(&view(again.clone(), 2), &mut legacy, true).unwrap();
        assert!(first.full && !first.more && first.entries.len() == again.len());
        assert!(legacy_snapshot(&view(again.clone(), 2), &mut legacy, false).is_none());
        again.pop();
        let next = legacy_snapshot(&view(again.clone(), 2), &mut legacy, false).unwrap();
        assert_eq!(next.entries.len(), again.len());
        assert!(next.removed_entry_ids.is_empty());
    }

    #[test]
    fn one_entry_larger_than_a_page_still_goes_alone() {
        let all = vec![entry(1, 0, 10), entry(2, 0, 3 << 20), entry(3, 0, 10)];
        let mut sent = Sent::default();
        let pages = update_pages(&view(all, 1), &mut sent, true);
        assert_eq!(pages.len(), 3);
        assert!(
            pages
                .iter()
                .all(|p| prost::Message::encoded_len(p) < ironpact_proto::SYNC_MESSAGE_LIMIT)
        );
    }
}
