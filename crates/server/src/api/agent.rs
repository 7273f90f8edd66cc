//! AgentService: attested agents (list, show, evict, ban) and join tokens.

use super::convert::{self, agent_pb};
use super::{SharedCore, ds_status, paginate};
use ironpact_datastore::{AgentRecord, Entry};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::agent_service_server::AgentService;
use ironpact_spiffe::{Selector, SpiffeId};
use std::collections::BTreeSet;
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

fn matches(f: &pb::AgentFilter, a: &AgentRecord) -> Result<bool, Status> {
    if !f.by_attestation_type.is_empty() && f.by_attestation_type != a.attestation_type {
        return Ok(false);
    }
    if f.by_banned.is_some_and(|b| b != a.banned)
        || f.by_can_reattest.is_some_and(|b| b != a.can_reattest)
    {
        return Ok(false);
    }
    if let Some(m) = &f.by_selector_match {
        let want: BTreeSet<Selector> = convert::selectors(&m.selectors)?.into_iter().collect();
        let have: BTreeSet<Selector> = a.selectors.iter().cloned().collect();
        if !convert::match_behavior(m.r#match)?.matches(&want, &have) {
            return Ok(false);
        }
    }
    Ok(true)
}

impl AgentApi {
    async fn filtered(&self, f: Option<&pb::AgentFilter>) -> Result<Vec<AgentRecord>, Status> {
        let all = self.0.ds.list_agents().await.map_err(ds_status)?;
        let Some(f) = f else { return Ok(all) };
        let mut out = Vec::new();
        for a in all {
            if matches(f, &a)? {
                out.push(a);
            }
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn count_agents(
        &self,
        req: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountAgentsResponse>, Status> {
        let n = self.filtered(req.get_ref().filter.as_ref()).await?.len();
        Ok(Response::new(pb::CountAgentsResponse {
            count: n.min(i32::MAX as usize) as i32,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let r = req.get_ref();
        let all = self.filtered(r.filter.as_ref()).await?;
        let (page, next) = paginate(all, |a| a.spiffe_id.to_string(), r.page_size, &r.page_token)?;
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
        self.0.changed();
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
        a.updated_at = self.0.clock.now();
        self.0.ds.update_agent(&a).await.map_err(ds_status)?;
        info!(agent_id = %id, "banned agent");
        self.0.changed();
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
            self.0.changed();
        }
        info!(expires_at, "created join token");
        Ok(Response::new(pb::JoinToken {
            value: token,
            expires_at,
        }))
    }
}
