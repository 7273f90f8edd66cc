//! LocalAuthorityService: this server's X.509 CA and JWT keys as SPIRE's `localauthority`
//! commands drive them. Taint and revoke reach the whole cluster through the shared bundle.

use super::{SharedCore, ca_status};
use crate::ca::{AuthorityState, AuthorityStates, SlotKind};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::local_authority_service_server::LocalAuthorityService;
use tonic::{Request, Response, Status};

pub struct LocalAuthorityApi(pub SharedCore);

fn state_pb(s: AuthorityState) -> pb::AuthorityState {
    pb::AuthorityState {
        authority_id: s.authority_id,
        expires_at: s.expires_at,
        upstream_authority_subject_key_id: String::new(),
    }
}

fn states_pb(s: AuthorityStates) -> [Option<pb::AuthorityState>; 3] {
    [
        s.active.map(state_pb),
        s.prepared.map(state_pb),
        s.old.map(state_pb),
    ]
}

/// Ironpact's CA is its own root: there is no upstream authority to taint or revoke.
fn no_upstream(configured: bool) -> Status {
    if configured {
        // SPIRE taints and revokes an upstream CA that the plugin rotated; the disk plugin's
        // CA is the operator's files, which only the operator changes
        return Status::failed_precondition(
            "the UpstreamAuthority \"disk\" CA is the operator's files, not rotated by the server: \
             to replace it, add the new root to bundle_file_path, restart every server, then switch \
             cert_file_path/key_file_path and restart again",
        );
    }
    Status::failed_precondition(
        "no upstream authority is configured: this server's X.509 CA is self-signed; use \
         `localauthority x509 taint|revoke` for its own authorities",
    )
}

impl LocalAuthorityApi {
    /// After a change: the cache (and every open sync stream) sees the new bundle, this
    /// server's trust follows it, and after a taint or revoke its own SVID is re-signed by
    /// the active authority (it may have been signed by the one tainted or revoked).
    async fn settle(&self, kind: SlotKind, resign: bool) {
        self.0.changed().await;
        if let Err(e) = self.0.refresh_roots().await {
            tracing::warn!(error = %e, "reloading the trust bundle failed; the periodic refresh retries");
        }
        // only on taint and revoke: an activated authority may not have reached every agent
        // yet, and the server's SVID moves to it on its own schedule
        if kind == SlotKind::X509 && resign {
            self.0
                .server_svid_expiry
                .store(0, std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = self.0.renew_server_svid_if_due() {
                tracing::warn!(error = %e, "re-signing the server's SVID failed; the periodic renewal retries");
            }
        }
    }

    async fn states(&self, kind: SlotKind) -> [Option<pb::AuthorityState>; 3] {
        states_pb(self.0.ca.authority_states(kind).await)
    }
    async fn prepare(&self, kind: SlotKind) -> Result<Option<pb::AuthorityState>, Status> {
        let s = self.0.ca.prepare(kind).await.map_err(ca_status)?;
        self.settle(kind, false).await;
        Ok(Some(state_pb(s)))
    }
    async fn activate(
        &self,
        kind: SlotKind,
        id: &str,
    ) -> Result<Option<pb::AuthorityState>, Status> {
        let s = self.0.ca.activate(kind, id).await.map_err(ca_status)?;
        self.settle(kind, false).await;
        Ok(Some(state_pb(s)))
    }
    async fn taint(&self, kind: SlotKind, id: &str) -> Result<Option<pb::AuthorityState>, Status> {
        let s = self.0.ca.taint(kind, id).await.map_err(ca_status)?;
        self.settle(kind, true).await;
        Ok(Some(state_pb(s)))
    }
    async fn revoke(&self, kind: SlotKind, id: &str) -> Result<Option<pb::AuthorityState>, Status> {
        let s = self.0.ca.revoke(kind, id).await.map_err(ca_status)?;
        self.settle(kind, true).await;
        Ok(Some(state_pb(s)))
    }
}

#[tonic::async_trait]
impl LocalAuthorityService for LocalAuthorityApi {
    async fn get_jwt_authority_state(
        &self,
        _: Request<pb::GetJwtAuthorityStateRequest>,
    ) -> Result<Response<pb::GetJwtAuthorityStateResponse>, Status> {
        let [active, prepared, old] = self.states(SlotKind::Jwt).await;
        Ok(Response::new(pb::GetJwtAuthorityStateResponse {
            active,
            prepared,
            old,
        }))
    }
    async fn prepare_jwt_authority(
        &self,
        _: Request<pb::PrepareJwtAuthorityRequest>,
    ) -> Result<Response<pb::PrepareJwtAuthorityResponse>, Status> {
        Ok(Response::new(pb::PrepareJwtAuthorityResponse {
            prepared_authority: self.prepare(SlotKind::Jwt).await?,
        }))
    }
    async fn activate_jwt_authority(
        &self,
        req: Request<pb::ActivateJwtAuthorityRequest>,
    ) -> Result<Response<pb::ActivateJwtAuthorityResponse>, Status> {
        Ok(Response::new(pb::ActivateJwtAuthorityResponse {
            activated_authority: self
                .activate(SlotKind::Jwt, &req.get_ref().authority_id)
                .await?,
        }))
    }
    async fn taint_jwt_authority(
        &self,
        req: Request<pb::TaintJwtAuthorityRequest>,
    ) -> Result<Response<pb::TaintJwtAuthorityResponse>, Status> {
        Ok(Response::new(pb::TaintJwtAuthorityResponse {
            tainted_authority: self
                .taint(SlotKind::Jwt, &req.get_ref().authority_id)
                .await?,
        }))
    }
    async fn revoke_jwt_authority(
        &self,
        req: Request<pb::RevokeJwtAuthorityRequest>,
    ) -> Result<Response<pb::RevokeJwtAuthorityResponse>, Status> {
        Ok(Response::new(pb::RevokeJwtAuthorityResponse {
            revoked_authority: self
                .revoke(SlotKind::Jwt, &req.get_ref().authority_id)
                .await?,
        }))
    }

    async fn get_x509_authority_state(
        &self,
        _: Request<pb::GetX509AuthorityStateRequest>,
    ) -> Result<Response<pb::GetX509AuthorityStateResponse>, Status> {
        let [active, prepared, old] = self.states(SlotKind::X509).await;
        Ok(Response::new(pb::GetX509AuthorityStateResponse {
            active,
            prepared,
            old,
        }))
    }
    async fn prepare_x509_authority(
        &self,
        _: Request<pb::PrepareX509AuthorityRequest>,
    ) -> Result<Response<pb::PrepareX509AuthorityResponse>, Status> {
        Ok(Response::new(pb::PrepareX509AuthorityResponse {
            prepared_authority: self.prepare(SlotKind::X509).await?,
        }))
    }
    async fn activate_x509_authority(
        &self,
        req: Request<pb::ActivateX509AuthorityRequest>,
    ) -> Result<Response<pb::ActivateX509AuthorityResponse>, Status> {
        Ok(Response::new(pb::ActivateX509AuthorityResponse {
            activated_authority: self
                .activate(SlotKind::X509, &req.get_ref().authority_id)
                .await?,
        }))
    }
    async fn taint_x509_authority(
        &self,
        req: Request<pb::TaintX509AuthorityRequest>,
    ) -> Result<Response<pb::TaintX509AuthorityResponse>, Status> {
        Ok(Response::new(pb::TaintX509AuthorityResponse {
            tainted_authority: self
                .taint(SlotKind::X509, &req.get_ref().authority_id)
                .await?,
        }))
    }
    async fn taint_x509_upstream_authority(
        &self,
        _: Request<pb::TaintX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::TaintX509UpstreamAuthorityResponse>, Status> {
        Err(no_upstream(self.0.cfg.upstream.is_some()))
    }
    async fn revoke_x509_authority(
        &self,
        req: Request<pb::RevokeX509AuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509AuthorityResponse>, Status> {
        Ok(Response::new(pb::RevokeX509AuthorityResponse {
            revoked_authority: self
                .revoke(SlotKind::X509, &req.get_ref().authority_id)
                .await?,
        }))
    }
    async fn revoke_x509_upstream_authority(
        &self,
        _: Request<pb::RevokeX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509UpstreamAuthorityResponse>, Status> {
        Err(no_upstream(self.0.cfg.upstream.is_some()))
    }
}
