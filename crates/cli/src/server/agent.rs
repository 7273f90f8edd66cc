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
    /// Deletes the records of agents whose SVID expired long ago (SPIRE's `agent purge`).
    Purge(PurgeArgs),
}

#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// How long ago the SVID must have expired (a duration; SPIRE's default 720h).
    #[arg(
        long = "expiredFor",
        visible_alias = "expired-for",
        default_value = "720h"
    )]
    expired_for: String,
    /// List what would be purged without deleting anything.
    #[arg(long = "dryRun", visible_alias = "dry-run")]
    dry_run: bool,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
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
    /// Only agents whose SVID expires before this time (RFC 3339, or SPIRE's
    /// "2006-01-02 15:04:05 -0700 -07").
    #[arg(long = "expiresBefore", visible_alias = "expires-before")]
    expires_before: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
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
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// An agent as SPIRE's `spire.api.types.Agent` prints with `-output json` (and, beyond it,
/// the last attestation refusal when there is one).
fn agent_json(a: &pb::Agent) -> Value {
    use crate::protojson::{id, int64};
    let mut v = json!({
        "id": id(&a.id),
        "attestation_type": a.attestation_type,
        "x509svid_serial_number": a.x509svid_serial_number,
        "x509svid_expires_at": int64(a.x509svid_expires_at),
        "selectors": a.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "banned": a.banned,
        "can_reattest": a.can_reattest,
    });
    if !a.attestation_error.is_empty() {
        v["attestation_error"] = json!(a.attestation_error);
    }
    if let Some(r) = &a.attestation_refusal {
        v["attestation_refusal"] = json!({
            "kind": r.kind,
            "message": r.message,
            "differences": r.differences.iter().map(|d| json!({
                "field": d.field,
                "seen": d.seen,
                "allowed": d.allowed,
            })).collect::<Vec<_>>(),
        });
    }
    v
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
    if let Some(r) = &a.attestation_refusal {
        println!("Refusal kind      : {}", r.kind);
        for d in &r.differences {
            println!("Differs           : {}", d.field);
            println!("  seen            : {}", d.seen);
            println!("  allowed         : {}", d.allowed);
        }
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
        by_expires_before: a
            .expires_before
            .as_deref()
            .map(|t| parse_time("-expiresBefore", t))
            .transpose()?
            .unwrap_or(0),
    })
}

/// A point in time as RFC 3339 (`2026-12-06T10:00:00Z`) or as SPIRE prints and takes it
/// (`2026-12-06 10:00:00 +0000 UTC`, `2006-01-02 15:04:05 -0700 -07`): Unix seconds.
fn parse_time(flag: &str, raw: &str) -> Result<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    // SPIRE's Go layout: date, time, numeric offset, then a zone name we do not need
    let mut parts = raw.split_whitespace();
    let (date, clock, offset) = (parts.next(), parts.next(), parts.next());
    if let (Some(d), Some(c), Some(o)) = (date, clock, offset) {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
        );
        if let Ok(t) = time::OffsetDateTime::parse(&format!("{d} {c} {o}"), &fmt) {
            return Ok(t.unix_timestamp());
        }
    }
    anyhow::bail!(
        "{flag} {raw:?}: give a time as 2026-12-06T10:00:00Z or \"2026-12-06 10:00:00 +0000 UTC\""
    )
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
            let c = AgentServiceClient::new(a.socket.channel().await?);
            let agents = list_all(&c, filter(&a)?).await?;
            match a.output {
                Output::Json => crate::protojson::print(&json!({
                    "agents": agents.iter().map(agent_json).collect::<Vec<_>>(),
                    "next_page_token": "",
                })),
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
                Output::Json => crate::protojson::print(&json!({"count": n})),
                Output::Pretty => println!("{n} attested agent{}", if n == 1 { "" } else { "s" }),
            }
        }
        AgentCmd::Purge(a) => purge(a).await?,
        AgentCmd::Show(a) => {
            let id = required_id(&a, "show")?;
            let mut c = AgentServiceClient::new(a.socket.channel().await?);
            let ag = c
                .get_agent(pb::GetAgentRequest { id })
                .await
                .map_err(status_err)?
                .into_inner();
            match a.output {
                Output::Json => crate::protojson::print(&agent_json(&ag)),
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

/// Every agent `filter` passes, a page of 500 at a time.
async fn list_all(
    c: &AgentServiceClient<tonic::transport::Channel>,
    filter: pb::AgentFilter,
) -> Result<Vec<pb::Agent>> {
    super::all_pages(|page_token| {
        let (mut c, filter) = (c.clone(), Some(filter.clone()));
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
    .await
}

/// Lists the agents whose SVID expired more than `-expiredFor` ago (by the server's filter,
/// a page at a time) and deletes their records, or only lists them with `-dryRun`.
async fn purge(a: PurgeArgs) -> Result<()> {
    let age = crate::common::parse_duration("-expiredFor", &a.expired_for)?;
    let before = time::OffsetDateTime::now_utc().unix_timestamp() - age.as_secs() as i64;
    let c = AgentServiceClient::new(a.socket.channel().await?);
    let filter = pb::AgentFilter {
        by_expires_before: before,
        ..Default::default()
    };
    let expired = list_all(&c, filter).await?;
    let mut purged = Vec::new();
    let mut failed = Vec::new();
    if !a.dry_run {
        let mut c = c.clone();
        for ag in &expired {
            match c
                .delete_agent(pb::DeleteAgentRequest { id: ag.id.clone() })
                .await
            {
                Ok(_) => purged.push(ag.id.clone()),
                Err(s) => failed.push((ag.id.clone(), s.message().to_string())),
            }
        }
    }
    match a.output {
        Output::Json => {
            // SPIRE prints this one from a Go struct: fields in order, `error` only on failure
            #[derive(serde::Serialize)]
            struct Purged<'a> {
                agent_id: &'a str,
                deleted: bool,
                #[serde(skip_serializing_if = "Option::is_none")]
                error: Option<&'a str>,
            }
            #[derive(serde::Serialize)]
            struct Out<'a> {
                expired_agents: Vec<Purged<'a>>,
            }
            let out = Out {
                expired_agents: expired
                    .iter()
                    .map(|x| Purged {
                        agent_id: &x.id,
                        deleted: purged.contains(&x.id),
                        error: failed
                            .iter()
                            .find(|(id, _)| *id == x.id)
                            .map(|(_, why)| why.as_str()),
                    })
                    .collect(),
            };
            println!("{}", crate::protojson::render_struct(&out)?);
        }
        Output::Pretty => {
            if expired.is_empty() {
                println!("No agents to purge.");
            } else if a.dry_run {
                println!(
                    "Found {} expired agent{}:
",
                    expired.len(),
                    if expired.len() == 1 { "" } else { "s" }
                );
                for x in &expired {
                    println!("SPIFFE ID         : {}", x.id);
                }
            } else {
                println!("Agents purged:");
                for id in &purged {
                    println!("SPIFFE ID         : {id}");
                }
            }
        }
    }
    if let Some((id, why)) = failed.first() {
        anyhow::bail!(
            "{} of {} expired agents were not purged (first: {id}: {why}); run the command again",
            failed.len(),
            expired.len()
        );
    }
    Ok(())
}
