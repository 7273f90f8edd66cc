//! AgentService: attested agents (list, show, evict, ban) and join tokens.

use super::convert::{self, agent_pb};
use super::{SharedCore, ds_status};
use ironpact_datastore::{AgentFilter, Entry};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::agent_service_server::AgentService;
use ironpact_spiffe::{Selector, SpiffeId};
use tonic::{Request, Response, Status};
use tracing::info;

pub struct AgentApi(pub SharedCore);

/// The SPIFFE ID an agent attested with join token `token` gets, as in SPIRE.
pub fn join_token_agent_id(
    td: &ironpact_spiffe::TrustDomain,
    token: &str,
) -> Result<SpiffeId, Status> {
    td.id_with_path(&format!("/spire/agent/join_token/{token}"))
        .map_err(|e| Status::internal(e.to_string()))
}

fn parse_agent_id(raw: &str) -> Result<SpiffeId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument(
            "id is required (the agent's SPIFFE ID)",
        ));
    }
    SpiffeId::parse(raw).map_err(|e| Status::invalid_argument(format!("invalid agent ID: {e}")))
}

fn filter(f: Option<&pb::AgentFilter>) -> Result<AgentFilter, Status> {
    let Some(f) = f else {
        return Ok(AgentFilter::default());
    };
    let by_selectors = match &f.by_selector_match {
        Some(m) if !m.selectors.is_empty() => Some((
            convert::selectors(&m.selectors)?,
            convert::match_behavior(m.r#match)?,
        )),
        Some(_) => {
            return Err(Status::invalid_argument(
                "invalid by_selector_match filter: at least one selector is required",
            ));
        }
        None => None,
    };
    Ok(AgentFilter {
        by_attestation_type: (!f.by_attestation_type.is_empty())
            .then(|| f.by_attestation_type.clone()),
        by_selectors,
        by_banned: f.by_banned,
        by_can_reattest: f.by_can_reattest,
        by_expires_before: (f.by_expires_before > 0).then_some(f.by_expires_before),
    })
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn count_agents(
        &self,
        req: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
        let f = filter(req.get_ref().filter.as_ref())?;
        let n = self.0.ds.count_agents(&f).await.map_err(ds_status)?;
        Ok(Response::new(pb::CountAgentsResponse {
            count: n.min(i32::MAX as u64) as i32,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let r = req.get_ref();
        let f = filter(r.filter.as_ref())?;
        if r.page_size < 0 {
            return Err(Status::invalid_argument("page_size cannot be negative"));
        }
        let (page, next) = self
            .0
            .ds
            .list_agents_page(&f, &r.page_token, r.page_size as usize)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.iter().map(agent_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_agent_id(&req.get_ref().id)?;
        let a = self.0.ds.get_agent(&id).await.map_err(ds_status)?;
        Ok(Response::new(agent_pb(&a)))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let id = parse_agent_id(&req.get_ref().id)?;
        self.0.ds.delete_agent(&id).await.map_err(ds_status)?;
        info!(agent_id = %id, "evicted agent");
        self.0.changed().await;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    async fn ban_agent(
        &self,
        req: Request<pb::BanAgentRequest>,
    ) -> Result<Response<pb::BanAgentResponse>, Status> {
        let id = parse_agent_id(&req.get_ref().id)?;
        let mut a = self.0.ds.get_agent(&id).await.map_err(ds_status)?;
        a.banned = true;
        a.serial_number.clear();
        a.previous_serial.clear();
        a.updated_at = self.0.clock.now();
        self.0.ds.update_agent(&a).await.map_err(ds_status)?;
        info!(agent_id = %id, "banned agent");
        self.0.changed().await;
        Ok(Response::new(pb::BanAgentResponse {}))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let r = req.get_ref();
        if r.ttl <= 0 {
            return Err(Status::invalid_argument(
                "ttl is required and must be positive (seconds)",
            ));
        }
        let td = &self.0.cfg.trust_domain;
        let alias = if r.agent_id.is_empty() {
            None
        } else {
            Some(convert::member_id("agent_id", &r.agent_id, td)?)
        };
        let bytes: [u8; 16] = rand::random();
        let h = hex::encode(bytes);
        let token = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        let expires_at = self.0.clock.now() + i64::from(r.ttl);
        self.0
            .ds
            .create_join_token(&token, expires_at)
            .await
            .map_err(ds_status)?;
        if let Some(alias) = alias {
            // As SPIRE does: register the given ID under the token's agent ID, so entries
            // parented by it are authorized on the node that uses this token.
            let agent_id = join_token_agent_id(td, &token)?;
            let selector = Selector::new("spiffe_id", agent_id.as_str())
                .map_err(|e| Status::internal(e.to_string()))?;
            let mut e = Entry::new(alias.clone(), agent_id.clone(), vec![selector]);
            e.created_at = self.0.clock.now();
            self.0.ds.create_entry(&e).await.map_err(ds_status)?;
            info!(alias = %alias, parent_id = %agent_id, "registered join token node alias");
            self.0.changed().await;
        }
        info!(expires_at, "created join token");
        Ok(Response::new(pb::JoinToken {
            value: token,
            expires_at,
        }))
    }
}
