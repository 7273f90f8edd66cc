//! `debug getinfo` on a running server or agent (SPIRE's command): uptime, what it holds and
//! its own SVID chain, through its admin socket.

use crate::protojson::{id, int64};
use crate::server::Output;
use anyhow::Result;
use clap::{Args, Subcommand};
use ironpact_proto::debug::v1 as pb;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DebugCmd {
    /// Prints debug information: uptime, counts and the process's own SVID chain.
    Getinfo(DebugArgs),
}

#[derive(Args, Debug)]
pub struct DebugArgs {
    /// Path to the process's admin socket.
    #[arg(long = "socketPath", visible_alias = "socket-path")]
    socket_path: Option<PathBuf>,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// Which process the admin socket belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Agent,
}

fn chain_json(chain: &[pb::Cert]) -> Value {
    chain
        .iter()
        .map(|c| {
            let mut v = json!({"expires_at": int64(c.expires_at), "subject": c.subject});
            if !c.id.is_empty() {
                v["id"] = id(&c.id);
            }
            v
        })
        .collect()
}

fn chain_text(chain: &[pb::Cert]) -> String {
    let mut out = String::new();
    if !chain.is_empty() {
        out.push_str("  SVID Chain:\n");
    }
    for (i, c) in chain.iter().enumerate() {
        let id = if c.id.is_empty() { "(none)" } else { &c.id };
        out.push_str(&format!(
            "    [{i}] SPIFFE ID:  {id}\n        Subject:    {}\n        Expires At: {}\n",
            c.subject,
            rfc3339(c.expires_at)
        ));
    }
    out
}

/// RFC 3339 in UTC (`2026-12-06T05:42:21Z`), as SPIRE prints these times.
fn rfc3339(unix: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Go's duration text for whole seconds (`1h2m3s`, `45s`), as SPIRE prints the uptime.
fn go_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

pub async fn exec(cmd: DebugCmd, side: Side, default: &str, what: &str) -> Result<()> {
    let DebugCmd::Getinfo(a) = cmd;
    let path = a
        .socket_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(default));
    let ch = crate::common::connect_uds(&path, what, "-socketPath").await?;
    match side {
        Side::Server => {
            let r = pb::server_debug_client::ServerDebugClient::new(ch)
                .get_info(pb::GetInfoRequest {})
                .await
                .map_err(crate::common::status_err)?
                .into_inner();
            match a.output {
                Output::Json => crate::protojson::print(&json!({
                    "svid_chain": chain_json(&r.svid_chain),
                    "uptime": r.uptime,
                    "agents_count": r.agents_count,
                    "entries_count": r.entries_count,
                    "federated_bundles_count": r.federated_bundles_count,
                })),
                Output::Pretty => print!(
                    "Server Debug Info:\n  Uptime:                  {}\n  Registered Agents:       {}\n  Registration Entries:    {}\n  Federated Bundles:       {}\n{}",
                    go_duration(r.uptime.into()),
                    r.agents_count,
                    r.entries_count,
                    r.federated_bundles_count,
                    chain_text(&r.svid_chain)
                ),
            }
        }
        Side::Agent => {
            let r = pb::agent_debug_client::AgentDebugClient::new(ch)
                .get_info(pb::GetInfoRequest {})
                .await
                .map_err(crate::common::status_err)?
                .into_inner();
            match a.output {
                Output::Json => crate::protojson::print(&json!({
                    "svid_chain": chain_json(&r.svid_chain),
                    "uptime": r.uptime,
                    "last_sync_success": int64(r.last_sync_success),
                    "cached_x509_svids_count": r.cached_x509_svids_count,
                    "cached_jwt_svids_count": r.cached_jwt_svids_count,
                    "cached_svidstore_x509_svids_count": r.cached_svidstore_x509_svids_count,
                })),
                Output::Pretty => print!(
                    "Agent Debug Info:\n  Uptime:                          {}\n  Last Sync Success:               {}\n  Cached X.509 SVIDs:              {}\n  Cached JWT SVIDs:                {}\n  Cached SVID Store X.509 SVIDs:   {}\n{}",
                    go_duration(r.uptime.into()),
                    if r.last_sync_success == 0 {
                        "(never)".to_string()
                    } else {
                        rfc3339(r.last_sync_success)
                    },
                    r.cached_x509_svids_count,
                    r.cached_jwt_svids_count,
                    r.cached_svidstore_x509_svids_count,
                    chain_text(&r.svid_chain)
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_reads_as_go_prints_it() {
        assert_eq!(super::go_duration(45), "45s");
        assert_eq!(super::go_duration(62), "1m2s");
        assert_eq!(super::go_duration(3723), "1h2m3s");
        assert_eq!(super::go_duration(3600), "1h0m0s");
    }
}
