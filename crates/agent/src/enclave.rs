//! The enclave identity API on the Workload API socket (beside the SPIFFE Workload API, which
//! is unchanged): an SGX enclave sends Hello, gets the server's nonce, sends its quote and
//! CSR, and gets SVIDs signed for its own key. This agent only relays: it adds the unix
//! selectors of the calling process (pinned when it connected, as for the Workload API) and
//! never sees a private key; the server verifies the quote (see `ironpact_attestors::sgx`
//! for why it is the server).

use crate::workload::{WorkloadApi, check_header};
use ironpact_proto::enclave::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

/// How long the enclave has for each of its steps (quoting included).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// A quote with its PCK chain is a few KiB; a CSR less.
pub const MAX_MESSAGE: usize = 64 << 10;

/// Exchanges relayed at once: each holds a connection to the server, and any local user may
/// start one.
static RELAYS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

pub struct EnclaveApi(pub Arc<WorkloadApi>);

async fn from_enclave(
    inbound: &mut Streaming<pb::EnclaveRequest>,
    what: &str,
) -> Result<pb::enclave_request::Step, Status> {
    ironpact_proto::enclave::next_request(inbound, what, STEP_TIMEOUT).await
}

async fn from_server(
    down: &mut Streaming<pb::EnclaveResponse>,
    what: &str,
) -> Result<pb::enclave_response::Step, Status> {
    match tokio::time::timeout(STEP_TIMEOUT * 2, down.message()).await {
        Err(_) => Err(Status::unavailable(format!(
            "the server sent no {what} within 60 s"
        ))),
        Ok(Err(s)) => Err(s),
        Ok(Ok(None)) => Err(Status::unavailable(format!(
            "the server ended the exchange before the {what}"
        ))),
        Ok(Ok(Some(m))) => m.step.ok_or_else(|| {
            Status::internal(format!(
                "the server sent an empty message instead of the {what}"
            ))
        }),
    }
}

#[tonic::async_trait]
impl pb::enclave_identity_server::EnclaveIdentity for EnclaveApi {
    type AttestStream = ReceiverStream<Result<pb::EnclaveResponse, Status>>;

    async fn attest(
        &self,
        req: Request<Streaming<pb::EnclaveRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        check_header(&req)?;
        let slot = RELAYS.try_acquire().map_err(|_| {
            Status::resource_exhausted(
                "too many enclave exchanges at once on this agent; retry shortly",
            )
        })?;
        let selectors = self.0.attest_caller(&req).await?;
        let mut stopping = self.0.stopping.clone();
        let agent = self.0.agent.clone();
        let mut inbound = req.into_inner();
        let pb::enclave_request::Step::Hello(mut hello) =
            from_enclave(&mut inbound, "Hello").await?
        else {
            return Err(Status::invalid_argument("the exchange starts with Hello"));
        };
        // the caller's selectors are this agent's to state, never the caller's
        hello.workload_selectors = selectors
            .iter()
            .map(|s| pb::Selector {
                r#type: s.kind.clone(),
                value: s.value.clone(),
            })
            .collect();
        let (up, up_rx) = mpsc::channel(2);
        up.send(pb::EnclaveRequest {
            step: Some(pb::enclave_request::Step::Hello(hello)),
        })
        .await
        .map_err(|_| Status::internal("relay closed"))?;
        let mut down = agent
            .enclave_client()?
            .attest_enclave(ReceiverStream::new(up_rx))
            .await?
            .into_inner();
        let nonce = match from_server(&mut down, "nonce").await? {
            pb::enclave_response::Step::Nonce(n) => n,
            _ => return Err(Status::internal("the server answered Hello with SVIDs")),
        };
        let (tx, rx) = mpsc::channel(2);
        let _ = tx
            .send(Ok(pb::EnclaveResponse {
                step: Some(pb::enclave_response::Step::Nonce(nonce)),
            }))
            .await;
        tokio::spawn(async move {
            let _slot = slot;
            let relay = async {
                let pb::enclave_request::Step::Evidence(ev) =
                    from_enclave(&mut inbound, "quote and CSR").await?
                else {
                    return Err(Status::invalid_argument(
                        "Evidence (quote and CSR) follows the nonce",
                    ));
                };
                up.send(pb::EnclaveRequest {
                    step: Some(pb::enclave_request::Step::Evidence(ev)),
                })
                .await
                .map_err(|_| Status::unavailable("the server ended the exchange"))?;
                match from_server(&mut down, "SVIDs").await? {
                    pb::enclave_response::Step::Issued(i) => Ok(i),
                    _ => Err(Status::internal("the server sent a second nonce")),
                }
            };
            let r = tokio::select! {
                r = relay => r,
                _ = stopping.wait_for(|s| *s) => Err(Status::unavailable("the agent is shutting down")),
            };
            match &r {
                Ok(i) => debug!(svids = i.svids.len(), "enclave SVIDs relayed"),
                Err(s) => {
                    warn!(code = ?s.code(), error = %s.message(), "enclave attestation failed")
                }
            }
            let _ = tx
                .send(r.map(|i| pb::EnclaveResponse {
                    step: Some(pb::enclave_response::Step::Issued(i)),
                }))
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
