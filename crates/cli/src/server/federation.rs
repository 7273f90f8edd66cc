//! `federation create|update|delete|list|show|refresh` (SPIRE's commands): relationships with
//! other trust domains, whose bundles the server fetches from their bundle endpoints.

use super::bundle::{Format, bundle_json};
use super::{Output, SocketArg};
use crate::common::status_err;
use crate::protojson;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::trust_domain_service_client::TrustDomainServiceClient;
use ironpact_spiffe::{Bundle, TrustDomain};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum FederationCmd {
    /// Creates a relationship with another trust domain (its bundle endpoint).
    Create(RelationshipArgs),
    /// Replaces a relationship made with `create`.
    Update(RelationshipArgs),
    /// Deletes a relationship (the peer's bundle stays: `bundle delete`).
    Delete(IdArgs),
    /// Lists every relationship, the config file's included.
    List(ListArgs),
    /// Shows one relationship.
    Show(ShowArgs),
    /// Fetches a peer's bundle now and says how it went.
    Refresh(IdArgs),
}

#[derive(Args, Debug)]
pub struct RelationshipArgs {
    /// The trust domain to federate with (example.org).
    #[arg(long = "trustDomain", visible_alias = "trust-domain")]
    trust_domain: Option<String>,
    /// The peer's bundle endpoint (https://…).
    #[arg(long = "bundleEndpointURL", visible_alias = "bundle-endpoint-url")]
    url: Option<String>,
    /// How the endpoint is authenticated: https_spiffe or https_web.
    #[arg(
        long = "bundleEndpointProfile",
        visible_alias = "bundle-endpoint-profile"
    )]
    profile: Option<String>,
    /// https_spiffe: the SPIFFE ID the endpoint presents (spiffe://<td>/spire/server).
    #[arg(long = "endpointSpiffeID", visible_alias = "endpoint-spiffe-id")]
    endpoint_spiffe_id: Option<String>,
    /// The peer's current bundle, to start from (https_spiffe needs one).
    #[arg(
        long = "trustDomainBundlePath",
        visible_alias = "trust-domain-bundle-path"
    )]
    bundle_path: Option<PathBuf>,
    /// The format of -trustDomainBundlePath: pem or spiffe.
    #[arg(long = "trustDomainBundleFormat", value_enum, default_value_t)]
    bundle_format: Format,
    /// A JSON file of relationships, as `federation list -output json` prints them ('-':
    /// standard input); excludes the flags above.
    #[arg(long = "data")]
    data: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The peer's trust domain (example.org or spiffe://example.org).
    #[arg(long = "id")]
    id: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The peer's trust domain (example.org).
    #[arg(long = "trustDomain", visible_alias = "trust-domain")]
    trust_domain: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// A relationship as SPIRE's `spire.api.types.FederationRelationship` prints (the profile a
/// oneof: `https_web: {}` or `https_spiffe: {endpoint_spiffe_id}`).
fn relationship_json(r: &pb::FederationRelationship) -> Value {
    let mut v = json!({
        "trust_domain": r.trust_domain,
        "bundle_endpoint_url": r.bundle_endpoint_url,
    });
    match r.bundle_endpoint_profile.as_str() {
        "https_spiffe" => {
            v["https_spiffe"] = json!({"endpoint_spiffe_id": r.endpoint_spiffe_id});
        }
        _ => v["https_web"] = json!({}),
    }
    if let Some(b) = &r.trust_domain_bundle {
        v["trust_domain_bundle"] = bundle_json(b);
    }
    v
}

fn print_relationship(r: &pb::FederationRelationship) {
    println!("Trust domain              : {}", r.trust_domain);
    println!("Bundle endpoint URL       : {}", r.bundle_endpoint_url);
    println!("Bundle endpoint profile   : {}", r.bundle_endpoint_profile);
    if r.bundle_endpoint_profile == "https_spiffe" {
        println!("Endpoint SPIFFE ID        : {}", r.endpoint_spiffe_id);
    }
    if r.from_config {
        println!("Set in                    : the server's config file");
    }
    println!();
}

/// `example.org` or `spiffe://example.org`.
fn td_name(raw: &str) -> Result<String> {
    Ok(TrustDomain::new(raw)?.to_string())
}

/// A Bundle message from its protojson (`trust_domain_bundle` in a -data file).
fn bundle_from_json(v: &Value, td: &str) -> Result<pb::Bundle> {
    let b64 = |s: &Value, what: &str| -> Result<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap_or_default())
            .with_context(|| format!("trust_domain_bundle: {what} is not base64"))
    };
    let int = |s: &Value| -> i64 {
        s.as_i64()
            .or_else(|| s.as_str().and_then(|t| t.parse().ok()))
            .unwrap_or(0)
    };
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    Ok(pb::Bundle {
        trust_domain: td.to_string(),
        x509_authorities: list("x509_authorities")
            .iter()
            .map(|c| {
                Ok(pb::X509Certificate {
                    asn1: b64(&c["asn1"], "asn1")?,
                    tainted: c["tainted"].as_bool().unwrap_or(false),
                })
            })
            .collect::<Result<_>>()?,
        jwt_authorities: list("jwt_authorities")
            .iter()
            .map(|k| {
                Ok(pb::JwtKey {
                    public_key: b64(&k["public_key"], "public_key")?,
                    key_id: k["key_id"].as_str().unwrap_or_default().to_string(),
                    expires_at: int(&k["expires_at"]),
                    tainted: k["tainted"].as_bool().unwrap_or(false),
                })
            })
            .collect::<Result<_>>()?,
        refresh_hint: int(&v["refresh_hint"]),
        sequence_number: int(&v["sequence_number"]).max(0) as u64,
    })
}

/// The relationships a create or update asks for: from -data, or from the flags.
fn requested(a: &RelationshipArgs) -> Result<Vec<pb::FederationRelationship>> {
    if let Some(src) = &a.data {
        if a.trust_domain.is_some()
            || a.url.is_some()
            || a.profile.is_some()
            || a.bundle_path.is_some()
        {
            bail!(
                "-data and relationship flags exclude each other: put every relationship in the file"
            );
        }
        let text = if src == "-" {
            std::io::read_to_string(std::io::stdin())
                .context("cannot read -data from standard input")?
        } else {
            std::fs::read_to_string(src).with_context(|| format!("cannot read -data file {src}"))?
        };
        let v: Value = serde_json::from_str(&text).with_context(|| {
            format!("-data {src} is not JSON (see `federation list -output json`)")
        })?;
        let items = v["federation_relationships"].as_array().ok_or_else(|| {
            anyhow!("-data {src}: expected {{\"federation_relationships\": [ … ]}}")
        })?;
        return items
            .iter()
            .map(|r| {
                let td = td_name(r["trust_domain"].as_str().unwrap_or_default())?;
                let (profile, endpoint) = if r.get("https_spiffe").is_some() {
                    (
                        "https_spiffe",
                        r["https_spiffe"]["endpoint_spiffe_id"]
                            .as_str()
                            .unwrap_or_default(),
                    )
                } else if r.get("https_web").is_some() {
                    ("https_web", "")
                } else {
                    bail!("-data: relationship {td} has neither https_spiffe nor https_web");
                };
                Ok(pb::FederationRelationship {
                    bundle_endpoint_url: r["bundle_endpoint_url"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    bundle_endpoint_profile: profile.into(),
                    endpoint_spiffe_id: endpoint.into(),
                    trust_domain_bundle: match r.get("trust_domain_bundle") {
                        Some(b) if !b.is_null() => Some(bundle_from_json(b, &td)?),
                        _ => None,
                    },
                    trust_domain: td,
                    from_config: false,
                })
            })
            .collect();
    }
    let td = td_name(a.trust_domain.as_deref().ok_or_else(|| {
        anyhow!("the trust domain is required: pass -trustDomain <name> (e.g. example.org)")
    })?)?;
    let url = a.url.clone().ok_or_else(|| {
        anyhow!("the bundle endpoint is required: pass -bundleEndpointURL https://<host>:<port>")
    })?;
    let profile = a.profile.clone().ok_or_else(|| {
        anyhow!("the endpoint profile is required: pass -bundleEndpointProfile https_spiffe (with -endpointSpiffeID) or https_web")
    })?;
    if profile == "https_spiffe" && a.endpoint_spiffe_id.is_none() {
        bail!(
            "https_spiffe needs the endpoint's ID: pass -endpointSpiffeID spiffe://{td}/spire/server"
        );
    }
    let bundle = match &a.bundle_path {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read -trustDomainBundlePath {}", p.display()))?;
            let b = match a.bundle_format {
                Format::Pem => Bundle::from_pem(TrustDomain::new(&td)?, &text)?,
                Format::Spiffe => Bundle::from_jwks(TrustDomain::new(&td)?, text.as_bytes())?,
            };
            Some(ironpact_server::api::convert::bundle_pb(&b))
        }
    };
    Ok(vec![pb::FederationRelationship {
        trust_domain: td,
        bundle_endpoint_url: url,
        bundle_endpoint_profile: profile,
        endpoint_spiffe_id: a.endpoint_spiffe_id.clone().unwrap_or_default(),
        trust_domain_bundle: bundle,
        from_config: false,
    }])
}

fn results_json(results: &[(Option<pb::Status>, Option<&pb::FederationRelationship>)]) -> Value {
    json!({"results": results.iter().map(|(s, r)| {
        let s = s.clone().unwrap_or_default();
        let mut v = json!({"status": protojson::status(s.code, &s.message)});
        if let Some(r) = r {
            v["federation_relationship"] = relationship_json(r);
        }
        v
    }).collect::<Vec<_>>()})
}

/// Prints a batch's results and fails when any item did (after printing them all).
fn finish_batch(
    verb: &str,
    output: Output,
    results: Vec<(Option<pb::Status>, Option<pb::FederationRelationship>)>,
    asked: &[pb::FederationRelationship],
) -> Result<()> {
    let view: Vec<_> = results
        .iter()
        .zip(asked)
        .map(|((s, r), a)| (s.clone(), r.as_ref().or(Some(a))))
        .collect();
    match output {
        Output::Json => protojson::print(&results_json(&view)),
        Output::Pretty => {
            for (s, r) in &view {
                let s = s.clone().unwrap_or_default();
                if s.code == 0 {
                    if let Some(r) = r {
                        print_relationship(r);
                    }
                } else if let Some(r) = r {
                    eprintln!(
                        "FAILED to {verb} the relationship with {}: {}",
                        r.trust_domain, s.message
                    );
                }
            }
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(s, _)| {
            s.as_ref()
                .filter(|s| s.code != 0)
                .map(|s| s.message.clone())
        })
        .collect();
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} relationships were not {verb}d: {first}",
            failed.len(),
            results.len()
        );
    }
    Ok(())
}

/// `create` or `update`: the relationships asked for, sent as one batch, each result printed.
async fn write(a: RelationshipArgs, create: bool) -> Result<()> {
    let asked = requested(&a)?;
    let mut c = TrustDomainServiceClient::new(a.socket.channel().await?);
    let relationships = asked.clone();
    let results: Vec<_> = if create {
        c.batch_create_federation_relationship(pb::BatchCreateFederationRelationshipRequest {
            federation_relationships: relationships,
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .results
        .into_iter()
        .map(|x| (x.status, x.federation_relationship))
        .collect()
    } else {
        c.batch_update_federation_relationship(pb::BatchUpdateFederationRelationshipRequest {
            federation_relationships: relationships,
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .results
        .into_iter()
        .map(|x| (x.status, x.federation_relationship))
        .collect()
    };
    finish_batch(
        if create { "create" } else { "update" },
        a.output,
        results,
        &asked,
    )
}

pub async fn exec(cmd: FederationCmd) -> Result<()> {
    match cmd {
        FederationCmd::Create(a) => write(a, true).await?,
        FederationCmd::Update(a) => write(a, false).await?,
        FederationCmd::Delete(a) => {
            let td = td_name(a.id.as_deref().ok_or_else(|| {
                anyhow!("the trust domain is required: pass -id <trust domain>")
            })?)?;
            let mut c = TrustDomainServiceClient::new(a.socket.channel().await?);
            let r = c
                .batch_delete_federation_relationship(
                    pb::BatchDeleteFederationRelationshipRequest {
                        trust_domains: vec![td.clone()],
                    },
                )
                .await
                .map_err(status_err)?
                .into_inner();
            if a.output == Output::Json {
                protojson::print(&json!({"results": r.results.iter().map(|x| {
                    let s = x.status.clone().unwrap_or_default();
                    json!({"status": protojson::status(s.code, &s.message), "trust_domain": x.trust_domain})
                }).collect::<Vec<_>>()}));
            }
            super::item_ok(r.results.first().and_then(|x| x.status.as_ref()))?;
            if a.output == Output::Pretty {
                println!("Federation relationship with {td} deleted.");
            }
        }
        FederationCmd::List(a) => {
            let mut c = TrustDomainServiceClient::new(a.socket.channel().await?);
            let rels = c
                .list_federation_relationships(pb::ListFederationRelationshipsRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .federation_relationships;
            match a.output {
                Output::Json => protojson::print(&json!({
                    "federation_relationships": rels.iter().map(relationship_json).collect::<Vec<_>>(),
                    "next_page_token": "",
                })),
                Output::Pretty => {
                    let n = rels.len();
                    println!(
                        "Found {n} federation relationship{}\n",
                        if n == 1 { "" } else { "s" }
                    );
                    for r in &rels {
                        print_relationship(r);
                    }
                }
            }
        }
        FederationCmd::Show(a) => {
            let td = td_name(a.trust_domain.as_deref().ok_or_else(|| {
                anyhow!("the trust domain is required: pass -trustDomain <name>")
            })?)?;
            let mut c = TrustDomainServiceClient::new(a.socket.channel().await?);
            let r = c
                .get_federation_relationship(pb::GetFederationRelationshipRequest {
                    trust_domain: td,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match a.output {
                Output::Json => protojson::print(&relationship_json(&r)),
                Output::Pretty => {
                    println!(
                        "Found a federation relationship with trust domain {}\n",
                        r.trust_domain
                    );
                    print_relationship(&r);
                }
            }
        }
        FederationCmd::Refresh(a) => {
            let td = td_name(a.id.as_deref().ok_or_else(|| {
                anyhow!("the trust domain is required: pass -id <trust domain>")
            })?)?;
            let mut c = TrustDomainServiceClient::new(a.socket.channel().await?);
            let r = c
                .refresh_bundle(pb::RefreshBundleRequest {
                    trust_domain: td.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match a.output {
                Output::Json => protojson::print(&protojson::status(0, "OK")),
                Output::Pretty => println!(
                    "Bundle refreshed: {} (sequence {})",
                    if r.changed { "updated" } else { "unchanged" },
                    r.sequence_number
                ),
            }
        }
    }
    Ok(())
}
