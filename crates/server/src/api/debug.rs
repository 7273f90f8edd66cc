//! `debug getinfo` (SPIRE's server debug API) on the admin socket: uptime, what the cache
//! holds and the SVID the agent endpoint presents. Read from memory: nothing here queries
//! the datastore, so a monitoring loop costs the fleet nothing.

use super::SharedCore;
use ironpact_proto::debug::v1 as pb;
use tonic::{Request, Response, Status};

pub struct DebugApi(pub SharedCore, pub std::time::Instant);

#[tonic::async_trait]
impl pb::server_debug_server::ServerDebug for DebugApi {
    async fn get_info(
        &self,
        _: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
        let (agents, federated) = self.0.cache.counts();
        Ok(Response::new(pb::ServerInfo {
            svid_chain: self
                .0
                .server_svid
                .chain()
                .iter()
                .filter_map(|der| ironpact_spiffe::x509::CertInfo::parse(der).ok())
                .map(|c| pb::Cert {
                    id: c.uri_sans.first().cloned().unwrap_or_default(),
                    expires_at: c.not_after,
                    subject: c.subject,
                })
                .collect(),
            uptime: count(self.1.elapsed().as_secs()),
            agents_count: count(agents as u64),
            entries_count: count(self.0.cache.entry_count() as u64),
            federated_bundles_count: count(federated as u64),
        }))
    }
}
