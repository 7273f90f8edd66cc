//! `bundle show|list|set|delete|count`.

use super::{Output, SocketArg};
use crate::common::status_err;
use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::bundle_service_client::BundleServiceClient;
use ironpact_spiffe::{Bundle, JwtAuthority, TrustDomain};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Prints the server's own trust bundle.
    Show(ShowArgs),
    /// Lists federated bundles.
    List(ListArgs),
    /// Creates or replaces a federated bundle.
    Set(SetArgs),
    /// Deletes a federated bundle.
    Delete(DeleteArgs),
    /// Counts bundles: the server's own and the federated ones.
    Count(CountArgs),
}

#[derive(Args, Debug)]
pub struct CountArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Pem,
    Spiffe,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// pem (X.509 authorities) or spiffe (the SPIFFE bundle JWKS).
    #[arg(long = "format", value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only the bundle of this trust domain.
    #[arg(long = "id")]
    id: Option<String>,
    /// How to print each bundle: pem or spiffe (a JWKS, as SPIFFE bundles are exchanged).
    #[arg(long = "format", value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The federated trust domain (e.g. spiffe://other.org or other.org).
    #[arg(long = "id")]
    id: Option<String>,
    /// File with the bundle; standard input when absent.
    #[arg(long = "path")]
    path: Option<PathBuf>,
    /// The format of -path (or stdin): pem or spiffe (a JWKS, as SPIFFE bundles are exchanged).
    #[arg(long = "format", value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The federated trust domain to delete.
    #[arg(long = "id")]
    id: Option<String>,
    /// Entries that federate with it: restrict (refuse while there are any), dissociate (drop
    /// the trust domain from them) or delete (delete them).
    #[arg(long = "mode", value_enum, default_value_t)]
    mode: DeleteMode,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeleteMode {
    #[default]
    Restrict,
    Delete,
    Dissociate,
}

pub fn from_pb(p: &pb::Bundle) -> Result<Bundle> {
    let mut b = Bundle::new(TrustDomain::new(&p.trust_domain)?);
    b.x509_authorities = p.x509_authorities.iter().map(|c| c.asn1.clone()).collect();
    b.jwt_authorities = p
        .jwt_authorities
        .iter()
        .map(|k| JwtAuthority {
            key_id: k.key_id.clone(),
            public_key_der: k.public_key.clone(),
            expires_at: k.expires_at,
        })
        .collect();
    b.refresh_hint = p.refresh_hint.max(0) as u64;
    b.sequence = p.sequence_number;
    Ok(b)
}

/// A bundle as SPIRE's `spire.api.types.Bundle` prints with `-output json`.
pub fn bundle_json(p: &pb::Bundle) -> serde_json::Value {
    use crate::protojson::{bytes, int64};
    serde_json::json!({
        "trust_domain": p.trust_domain,
        "x509_authorities": p.x509_authorities.iter().map(|c| serde_json::json!({
            "asn1": bytes(&c.asn1),
            "tainted": c.tainted,
        })).collect::<Vec<_>>(),
        "jwt_authorities": p.jwt_authorities.iter().map(|k| serde_json::json!({
            "public_key": bytes(&k.public_key),
            "key_id": k.key_id,
            "expires_at": int64(k.expires_at),
            "tainted": k.tainted,
        })).collect::<Vec<_>>(),
        "refresh_hint": int64(p.refresh_hint),
        "sequence_number": p.sequence_number.to_string(),
    })
}

fn render(b: &Bundle, format: Format) -> Result<String> {
    Ok(match format {
        Format::Pem => b.to_pem(),
        Format::Spiffe => b.to_jwks_string()? + "\n",
    })
}

pub async fn exec(cmd: BundleCmd) -> Result<()> {
    match cmd {
        BundleCmd::Show(a) => {
            let mut c = BundleServiceClient::new(a.socket.channel().await?);
            let p = c
                .get_bundle(pb::GetBundleRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match a.output {
                Output::Json => crate::protojson::print(&bundle_json(&p)),
                Output::Pretty => print!("{}", render(&from_pb(&p)?, a.format)?),
            }
        }
        BundleCmd::Count(a) => {
            let mut c = BundleServiceClient::new(a.socket.channel().await?);
            // the server's own bundle, and the federated ones (a handful: one per peer)
            c.get_bundle(pb::GetBundleRequest {})
                .await
                .map_err(status_err)?;
            let federated = c
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .bundles
                .len();
            let n = federated + 1;
            match a.output {
                Output::Json => crate::protojson::print(&serde_json::json!({"count": n})),
                Output::Pretty => println!("{n} bundle{}", if n == 1 { "" } else { "s" }),
            }
        }
        BundleCmd::List(a) => {
            let mut c = BundleServiceClient::new(a.socket.channel().await?);
            let bundles: Vec<pb::Bundle> = match &a.id {
                Some(id) => {
                    let td = TrustDomain::new(id)?;
                    vec![
                        c.get_federated_bundle(pb::GetFederatedBundleRequest {
                            trust_domain: td.to_string(),
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner(),
                    ]
                }
                None => {
                    c.list_federated_bundles(pb::ListFederatedBundlesRequest {})
                        .await
                        .map_err(status_err)?
                        .into_inner()
                        .bundles
                }
            };
            let parsed = bundles.iter().map(from_pb).collect::<Result<Vec<_>>>()?;
            match a.output {
                // with -id, SPIRE prints the one bundle; without, the list response
                Output::Json if a.id.is_some() => {
                    crate::protojson::print(&bundle_json(&bundles[0]))
                }
                Output::Json => crate::protojson::print(&serde_json::json!({
                    "bundles": bundles.iter().map(bundle_json).collect::<Vec<_>>(),
                    "next_page_token": "",
                })),
                // with -id, the bundle alone (as SPIRE prints it, ready for a file)
                Output::Pretty if a.id.is_some() => print!("{}", render(&parsed[0], a.format)?),
                Output::Pretty => {
                    if parsed.is_empty() {
                        println!("No federated bundles found");
                    }
                    for b in &parsed {
                        println!("****************************************");
                        println!("* {}", b.trust_domain);
                        println!("****************************************");
                        print!("{}", render(b, a.format)?);
                        println!();
                    }
                }
            }
        }
        BundleCmd::Set(a) => {
            let id = a.id.clone().ok_or_else(|| {
                anyhow!("the trust domain is required: pass -id spiffe://<trust domain>")
            })?;
            let td = TrustDomain::new(&id)?;
            let text = match &a.path {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read bundle file {}", p.display()))?,
                None => std::io::read_to_string(std::io::stdin())
                    .context("cannot read the bundle from standard input")?,
            };
            let b = match a.format {
                Format::Pem => Bundle::from_pem(td, &text)?,
                Format::Spiffe => Bundle::from_jwks(td, text.as_bytes())?,
            };
            let mut c = BundleServiceClient::new(a.socket.channel().await?);
            let r = c
                .batch_set_federated_bundle(pb::BatchSetFederatedBundleRequest {
                    bundle: vec![ironpact_server::api::convert::bundle_pb(&b)],
                })
                .await
                .map_err(status_err)?
                .into_inner();
            super::item_ok(r.results.first().and_then(|r| r.status.as_ref()))?;
            match a.output {
                Output::Json => crate::protojson::print(
                    &serde_json::json!({"results": r.results.iter().map(|x| {
                    let s = x.status.clone().unwrap_or_default();
                    let mut v = serde_json::json!({"status": crate::protojson::status(s.code, &s.message)});
                    if let Some(b) = &x.bundle {
                        v["bundle"] = bundle_json(b);
                    }
                    v
                }).collect::<Vec<_>>()}),
                ),
                Output::Pretty => println!("bundle set."),
            }
        }
        BundleCmd::Delete(a) => {
            use pb::batch_delete_federated_bundle_request::Mode;
            let id = a.id.clone().ok_or_else(|| {
                anyhow!("the trust domain is required: pass -id spiffe://<trust domain>")
            })?;
            let td = TrustDomain::new(&id)?;
            let mut c = BundleServiceClient::new(a.socket.channel().await?);
            let r = c
                .batch_delete_federated_bundle(pb::BatchDeleteFederatedBundleRequest {
                    trust_domains: vec![td.to_string()],
                    mode: match a.mode {
                        DeleteMode::Restrict => Mode::Restrict,
                        DeleteMode::Delete => Mode::Delete,
                        DeleteMode::Dissociate => Mode::Dissociate,
                    } as i32,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            super::item_ok(r.results.first().and_then(|r| r.status.as_ref()))?;
            match a.output {
                Output::Json => crate::protojson::print(
                    &serde_json::json!({"results": r.results.iter().map(|x| {
                    let s = x.status.clone().unwrap_or_default();
                    serde_json::json!({
                        "status": crate::protojson::status(s.code, &s.message),
                        "trust_domain": x.trust_domain,
                    })
                }).collect::<Vec<_>>()}),
                ),
                Output::Pretty => println!("bundle deleted."),
            }
        }
    }
    Ok(())
}
