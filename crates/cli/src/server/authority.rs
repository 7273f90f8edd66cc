//! `localauthority x509|jwt show|prepare|activate|taint|revoke` and `upstreamauthority
//! taint|revoke`, with SPIRE's flags, text output and `-output json` shape.

use super::{Output, SocketArg};
use crate::common::{fmt_time, status_err};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::local_authority_service_client::LocalAuthorityServiceClient;
use serde_json::{Map, Value, json};

#[derive(Subcommand, Debug)]
pub enum LocalAuthorityCmd {
    /// The server's X.509 CA authorities.
    #[command(subcommand)]
    X509(AuthorityCmd),
    /// The server's JWT signing authorities.
    #[command(subcommand)]
    Jwt(AuthorityCmd),
}

#[derive(Subcommand, Debug)]
pub enum AuthorityCmd {
    /// Shows the active, prepared and old authority.
    Show(Plain),
    /// Prepares a new authority now (published in the bundle before it signs).
    Prepare(Plain),
    /// Makes the prepared authority the active one.
    Activate(WithId),
    /// Marks the old authority tainted: every agent replaces what it signed at once.
    Taint(WithId),
    /// Removes a tainted authority from the bundle.
    Revoke(WithId),
}

#[derive(Args, Debug)]
pub struct Plain {
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct WithId {
    /// The authority's ID, as `show` prints it.
    #[arg(long = "authorityID")]
    authority_id: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Subcommand, Debug)]
pub enum UpstreamAuthorityCmd {
    /// SPIRE's upstream taint: ironpact's CA is its own root, so this says why it does not apply.
    Taint(Upstream),
    /// SPIRE's upstream revoke: ironpact's CA is its own root, so this says why it does not apply.
    Revoke(Upstream),
}

#[derive(Args, Debug)]
pub struct Upstream {
    /// The upstream authority's subject key ID.
    #[arg(long = "subjectKeyID")]
    subject_key_id: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// SPIRE's protojson for an AuthorityState: proto names, int64 as a string, empty fields left out.
fn state_json(s: &pb::AuthorityState) -> Value {
    let mut m = Map::new();
    if !s.authority_id.is_empty() {
        m.insert("authority_id".into(), json!(s.authority_id));
    }
    if s.expires_at != 0 {
        m.insert("expires_at".into(), json!(s.expires_at.to_string()));
    }
    if !s.upstream_authority_subject_key_id.is_empty() {
        m.insert(
            "upstream_authority_subject_key_id".into(),
            json!(s.upstream_authority_subject_key_id),
        );
    }
    Value::Object(m)
}

fn state_text(s: &pb::AuthorityState) -> String {
    let mut out = format!(
        "  Authority ID: {}\n  Expires at: {}\n",
        s.authority_id,
        fmt_time(s.expires_at)
    );
    if !s.upstream_authority_subject_key_id.is_empty() {
        out += &format!(
            "  Upstream authority Subject Key ID: {}\n",
            s.upstream_authority_subject_key_id
        );
    }
    out
}

/// `show`: the three states, each a block, blank lines between.
fn show_output(label: &str, states: [(&str, Option<pb::AuthorityState>); 3], output: Output) {
    match output {
        Output::Json => {
            let mut m = Map::new();
            for (key, s) in &states {
                if let Some(s) = s {
                    m.insert((*key).into(), state_json(s));
                }
            }
            crate::protojson::print(&Value::Object(m));
        }
        Output::Pretty => {
            let blocks: Vec<String> = states
                .iter()
                .map(|(key, s)| {
                    let title = format!("{}{}", key[..1].to_uppercase(), &key[1..]);
                    match s {
                        Some(s) => format!("{title} {label} authority:\n{}", state_text(s)),
                        None => format!(
                            "{title} {label} authority:\n  No {key} {label} authority found\n"
                        ),
                    }
                })
                .collect();
            print!("{}", blocks.join("\n"));
        }
    }
}

/// One changed authority: `<Verb> <label> authority:` then its block, or `{"<key>": {...}}`.
fn one_output(
    verb: &str,
    label: &str,
    key: &str,
    s: Option<pb::AuthorityState>,
    output: Output,
) -> Result<()> {
    let s = s.context("the server returned no authority; report this as a bug")?;
    match output {
        Output::Json => crate::protojson::print(&json!({ key: state_json(&s) })),
        Output::Pretty => print!("{verb} {label} authority:\n{}", state_text(&s)),
    }
    Ok(())
}

fn required(id: Option<String>) -> Result<String> {
    match id {
        Some(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => bail!("an authority ID is required: pass -authorityID <id> (as `show` prints it)"),
    }
}

pub async fn local(cmd: LocalAuthorityCmd) -> Result<()> {
    let (jwt, cmd) = match cmd {
        LocalAuthorityCmd::X509(c) => (false, c),
        LocalAuthorityCmd::Jwt(c) => (true, c),
    };
    let label = if jwt { "JWT" } else { "X.509" };
    let socket = match &cmd {
        AuthorityCmd::Show(a) | AuthorityCmd::Prepare(a) => &a.socket,
        AuthorityCmd::Activate(a) | AuthorityCmd::Taint(a) | AuthorityCmd::Revoke(a) => &a.socket,
    };
    // the ID is checked before connecting, so a missing flag is named even with no server
    let id = match &cmd {
        AuthorityCmd::Activate(a) | AuthorityCmd::Taint(a) | AuthorityCmd::Revoke(a) => {
            required(a.authority_id.clone())?
        }
        _ => String::new(),
    };
    let mut c = LocalAuthorityServiceClient::new(socket.channel().await?);
    let what = |action: &str| format!("could not {action} {label} authority");
    match cmd {
        AuthorityCmd::Show(a) => {
            let (active, prepared, old) = if jwt {
                let r = c
                    .get_jwt_authority_state(pb::GetJwtAuthorityStateRequest {})
                    .await
                    .map_err(status_err)
                    .with_context(|| format!("could not get {label} authorities"))?
                    .into_inner();
                (r.active, r.prepared, r.old)
            } else {
                let r = c
                    .get_x509_authority_state(pb::GetX509AuthorityStateRequest {})
                    .await
                    .map_err(status_err)
                    .with_context(|| format!("could not get {label} authorities"))?
                    .into_inner();
                (r.active, r.prepared, r.old)
            };
            show_output(
                label,
                [("active", active), ("prepared", prepared), ("old", old)],
                a.output,
            );
            Ok(())
        }
        AuthorityCmd::Prepare(a) => {
            let s = if jwt {
                c.prepare_jwt_authority(pb::PrepareJwtAuthorityRequest {})
                    .await
                    .map_err(status_err)
                    .with_context(|| what("prepare"))?
                    .into_inner()
                    .prepared_authority
            } else {
                c.prepare_x509_authority(pb::PrepareX509AuthorityRequest {})
                    .await
                    .map_err(status_err)
                    .with_context(|| what("prepare"))?
                    .into_inner()
                    .prepared_authority
            };
            one_output("Prepared", label, "prepared_authority", s, a.output)
        }
        AuthorityCmd::Activate(a) => {
            let s = if jwt {
                c.activate_jwt_authority(pb::ActivateJwtAuthorityRequest { authority_id: id })
                    .await
                    .map_err(status_err)
                    .with_context(|| what("activate"))?
                    .into_inner()
                    .activated_authority
            } else {
                c.activate_x509_authority(pb::ActivateX509AuthorityRequest { authority_id: id })
                    .await
                    .map_err(status_err)
                    .with_context(|| what("activate"))?
                    .into_inner()
                    .activated_authority
            };
            one_output("Activated", label, "activated_authority", s, a.output)
        }
        AuthorityCmd::Taint(a) => {
            let s = if jwt {
                c.taint_jwt_authority(pb::TaintJwtAuthorityRequest { authority_id: id })
                    .await
                    .map_err(status_err)
                    .with_context(|| what("taint"))?
                    .into_inner()
                    .tainted_authority
            } else {
                c.taint_x509_authority(pb::TaintX509AuthorityRequest { authority_id: id })
                    .await
                    .map_err(status_err)
                    .with_context(|| what("taint"))?
                    .into_inner()
                    .tainted_authority
            };
            one_output("Tainted", label, "tainted_authority", s, a.output)
        }
        AuthorityCmd::Revoke(a) => {
            let s = if jwt {
                c.revoke_jwt_authority(pb::RevokeJwtAuthorityRequest { authority_id: id })
                    .await
                    .map_err(status_err)
                    .with_context(|| what("revoke"))?
                    .into_inner()
                    .revoked_authority
            } else {
                c.revoke_x509_authority(pb::RevokeX509AuthorityRequest { authority_id: id })
                    .await
                    .map_err(status_err)
                    .with_context(|| what("revoke"))?
                    .into_inner()
                    .revoked_authority
            };
            one_output("Revoked", label, "revoked_authority", s, a.output)
        }
    }
}

pub async fn upstream(cmd: UpstreamAuthorityCmd) -> Result<()> {
    let (taint, a) = match cmd {
        UpstreamAuthorityCmd::Taint(a) => (true, a),
        UpstreamAuthorityCmd::Revoke(a) => (false, a),
    };
    let ski = match a.subject_key_id {
        Some(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => bail!("a subject key ID is required: pass -subjectKeyID <id>"),
    };
    let mut c = LocalAuthorityServiceClient::new(a.socket.channel().await?);
    let ski = if taint {
        c.taint_x509_upstream_authority(pb::TaintX509UpstreamAuthorityRequest {
            subject_key_id: ski,
        })
        .await
        .map_err(status_err)
        .context("could not taint X.509 upstream authority")?
        .into_inner()
        .upstream_authority_subject_key_id
    } else {
        c.revoke_x509_upstream_authority(pb::RevokeX509UpstreamAuthorityRequest {
            subject_key_id: ski,
        })
        .await
        .map_err(status_err)
        .context("could not revoke X.509 upstream authority")?
        .into_inner()
        .upstream_authority_subject_key_id
    };
    let verb = if taint { "Tainted" } else { "Revoked" };
    match a.output {
        Output::Json => {
            crate::protojson::print(&json!({ "upstream_authority_subject_key_id": ski }))
        }
        Output::Pretty => println!("{verb} X.509 upstream authority\nSubject Key ID: {ski}"),
    }
    Ok(())
}
