//! Version 1 of the agent API, served for agents of earlier releases beside v2. Every call
//! but SyncAuthorized takes and returns v2's messages (the same on the wire) and goes to the
//! v2 endpoint; the sync stream's pages are v2's, converted to v1's Entry and Bundle here.
//! Remove this module with v1, once no agent of an earlier release is left.

use super::agent_endpoint::{AgentEndpoint, legacy_snapshot, sync_stream, update_pages};
use ironpact_proto::agent::v1;
use ironpact_proto::agent::v1::agent_api_server::AgentApi as AgentApiV1;
use ironpact_proto::agent::v2;
use ironpact_proto::agent::v2::agent_api_server::AgentApi as _;
use ironpact_proto::server::v1 as types;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The v1 service over the same core as [`AgentEndpoint`].
pub struct AgentEndpointV1(pub AgentEndpoint);

type AttestStream = Pin<Box<dyn Stream<Item = Result<v2::AttestAgentResponse, Status>> + Send>>;
type SyncStream = Pin<Box<dyn Stream<Item = Result<v1::SyncAuthorizedResponse, Status>> + Send>>;

fn entry_v1(e: types::Entry) -> v1::Entry {
    v1::Entry {
        id: e.id,
        spiffe_id: e.spiffe_id,
        parent_id: e.parent_id,
        selectors: e.selectors,
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        federates_with: e.federates_with,
        dns_names: e.dns_names,
        hint: e.hint,
        revision_number: e.revision_number,
        admin: e.admin,
        downstream: e.downstream,
    }
}

fn bundle_v1(b: types::Bundle) -> v1::Bundle {
    v1::Bundle {
        trust_domain: b.trust_domain,
        x509_authorities: b.x509_authorities.into_iter().map(|c| c.asn1).collect(),
        jwt_authorities: b.jwt_authorities,
        refresh_hint: b.refresh_hint,
        sequence_number: b.sequence_number,
    }
}

/// One v2 sync page as v1 writes it.
pub(super) fn page_v1(p: v2::SyncAuthorizedResponse) -> v1::SyncAuthorizedResponse {
    v1::SyncAuthorizedResponse {
        entries: p.entries.into_iter().map(entry_v1).collect(),
        bundle: p.bundle.map(bundle_v1),
        federated_bundles: p.federated_bundles.into_iter().map(bundle_v1).collect(),
        revision: p.revision,
        full: p.full,
        more: p.more,
        removed_entry_ids: p.removed_entry_ids,
        federated_bundles_changed: p.federated_bundles_changed,
    }
}

#[tonic::async_trait]
impl AgentApiV1 for AgentEndpointV1 {
    type AttestAgentStream = AttestStream;
    type RenewAgentStream = AttestStream;
    type SyncAuthorizedStream = SyncStream;

    async fn attest_agent(
        &self,
        req: Request<Streaming<v2::AttestAgentRequest>>,
    ) -> Result<Response<Self::AttestAgentStream>, Status> {
        self.0.attest_agent(req).await
    }

    async fn renew_agent(
        &self,
        req: Request<Streaming<v2::AttestAgentRequest>>,
    ) -> Result<Response<Self::RenewAgentStream>, Status> {
        self.0.renew_agent(req).await
    }

    async fn sync_authorized(
        &self,
        req: Request<v1::SyncAuthorizedRequest>,
    ) -> Result<Response<Self::SyncAuthorizedStream>, Status> {
        let agent = self.0.caller(&req, false).await?;
        let core = self.0.0.clone();
        let stream = if req.get_ref().deltas {
            sync_stream(core, agent, |view, sent, full| {
                update_pages(view, sent, full)
                    .into_iter()
                    .map(page_v1)
                    .collect()
            })
        } else {
            // the earliest agents: the whole set in one message on every change
            sync_stream(core, agent, |view, sent, first| {
                legacy_snapshot(view, sent, first)
                    .into_iter()
                    .map(page_v1)
                    .collect()
            })
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn batch_new_x509svid(
        &self,
        req: Request<v2::BatchNewX509svidRequest>,
    ) -> Result<Response<v2::BatchNewX509svidResponse>, Status> {
        self.0.batch_new_x509svid(req).await
    }

    async fn new_jwtsvid(
        &self,
        req: Request<v2::NewJwtsvidRequest>,
    ) -> Result<Response<v2::NewJwtsvidResponse>, Status> {
        self.0.new_jwtsvid(req).await
    }
}
