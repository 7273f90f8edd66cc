//! `agent list|show|evict|ban|count`.

use super::{Output, SocketArg};
use crate::common::{fmt_time, status_err};
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::agent_service_client::AgentServiceClient;
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Lists attested agents.
    List(ListArgs),
    /// Shows one attested agent.
    Show(IdArgs),
    /// Evicts an agent: it loses its identity and may attest again.
    Evict(IdArgs),
    /// Bans an agent: it loses its identity and may not attest again until evicted.
    Ban(IdArgs),
    /// Counts attested agents.
    Count(ListArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only agents attested with this attestor (e.g. join_token).
    #[arg(long = "attestationType", visible_alias = "attestation-type")]
    attestation_type: Option<String>,
    /// Only agents with this selector; repeat for several.
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// How -selector matches: exact, subset, superset or any.
    #[arg(
        long = "matchSelectorsOn",
        visible_alias = "match-selectors-on",
        default_value = "superset"
    )]
    match_selectors: String,
    /// Only banned (true) or not banned (false) agents.
    #[arg(long = "banned")]
    banned: Option<bool>,
    /// Only agents that can (true) or cannot (false) attest again by themselves.
    #[arg(long = "canReattest", visible_alias = "can-reattest")]
    can_reattest: Option<bool>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The agent's SPIFFE ID.
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t)]
    output: Output,
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "id": a.id,
        "attestation_type": a.attestation_type,
        "x509svid_serial_number": a.x509svid_serial_number,
        "x509svid_expires_at": a.x509svid_expires_at,
        "selectors": a.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "banned": a.banned,
        "can_reattest": a.can_reattest,
        "attestation_error": a.attestation_error,
    })
}

fn print_agent(a: &pb::Agent, with_selectors: bool) {
    println!("SPIFFE ID         : {}", a.id);
    println!("Attestation type  : {}", a.attestation_type);
    println!("Expiration time   : {}", fmt_time(a.x509svid_expires_at));
    println!("Serial number     : {}", a.x509svid_serial_number);
    println!("Can re-attest     : {}", a.can_reattest);
    if a.banned {
        println!("Banned            : true");
    }
    if !a.attestation_error.is_empty() {
        println!("Attestation error : {}", a.attestation_error);
    }
    if with_selectors {
        for s in &a.selectors {
            println!("Selectors         : {}:{}", s.r#type, s.value);
        }
    }
    println!();
}

fn filter(a: &ListArgs) -> Result<pb::AgentFilter> {
    let sels = super::selectors_pb(&a.selectors)?;
    let m = super::match_pb("-matchSelectorsOn", &a.match_selectors)?;
    Ok(pb::AgentFilter {
        by_attestation_type: a.attestation_type.clone().unwrap_or_default(),
        by_selector_match: (!sels.is_empty()).then_some(pb::SelectorMatch {
            selectors: sels,
            r#match: m,
        }),
        by_banned: a.banned,
        by_can_reattest: a.can_reattest,
    })
}

fn required_id(a: &IdArgs, verb: &str) -> Result<String> {
    let id = a.spiffe_id.clone().ok_or_else(|| {
        anyhow!(
            "the agent to {verb} is required: pass -spiffeID <agent SPIFFE ID> (see `agent list`)"
        )
    })?;
    ironpact_spiffe::SpiffeId::parse(&id)?;
    Ok(id)
}

pub async fn exec(cmd: AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::List(a) => {
            let f = filter(&a)?;
            let c = AgentServiceClient::new(a.socket.channel().await?);
            let agents = super::all_pages(|page_token| {
                let (mut c, filter) = (c.clone(), Some(f.clone()));
                async move {
                    let r = c
                        .list_agents(pb::ListAgentsRequest {
                            filter,
                            page_size: 500,
                            page_token,
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    Ok((r.agents, r.next_page_token))
                }
            })
            .await?;
            match a.output {
                Output::Json => println!(
                    "{}",
                    json!({"agents": agents.iter().map(agent_json).collect::<Vec<_>>()})
                ),
                Output::Pretty => {
                    if agents.is_empty() {
                        println!("No attested agents found");
                    } else {
                        let n = agents.len();
                        println!(
                            "Found {n} attested agent{}:\n",
                            if n == 1 { "" } else { "s" }
                        );
                        for ag in &agents {
                            print_agent(ag, false);
                        }
                    }
                }
            }
        }
        AgentCmd::Count(a) => {
            let f = filter(&a)?;
            let mut c = AgentServiceClient::new(a.socket.channel().await?);
            let n = c
                .count_agents(pb::CountAgentsRequest { filter: Some(f) })
                .await
                .map_err(status_err)?
                .into_inner()
                .count;
            match a.output {
                Output::Json => println!("{}", json!({"count": n})),
                Output::Pretty => println!("{n} attested agent{}", if n == 1 { "" } else { "s" }),
            }
        }
        AgentCmd::Show(a) => {
            let id = required_id(&a, "show")?;
            let mut c = AgentServiceClient::new(a.socket.channel().await?);
            let ag = c
                .get_agent(pb::GetAgentRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            match a.output {
                Output::Json => println!("{}", agent_json(&ag)),
                Output::Pretty => {
                    println!("Found an attested agent given its SPIFFE ID\n");
                    print_agent(&ag, true);
                }
            }
        }
        AgentCmd::Evict(a) => {
            let id = required_id(&a, "evict")?;
            let mut c = AgentServiceClient::new(a.socket.channel().await?);
            c.delete_agent(pb::DeleteAgentRequest { id })
                .await
                .map_err(status_err)?;
            match a.output {
                Output::Json => println!("{{}}"),
                Output::Pretty => println!("Agent evicted successfully"),
            }
        }
        AgentCmd::Ban(a) => {
            let id = required_id(&a, "ban")?;
            let mut c = AgentServiceClient::new(a.socket.channel().await?);
            c.ban_agent(pb::BanAgentRequest { id })
                .await
                .map_err(status_err)?;
            match a.output {
                Output::Json => println!("{{}}"),
                Output::Pretty => println!("Agent banned successfully"),
            }
        }
    }
    Ok(())
}
