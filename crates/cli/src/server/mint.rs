//! `token generate`, `x509 mint` and `jwt mint`.

use super::{Output, SocketArg};
use crate::common::{parse_ttl, status_err, write_file};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::agent_service_client::AgentServiceClient;
use ironpact_proto::server::v1::bundle_service_client::BundleServiceClient;
use ironpact_proto::server::v1::svid_service_client::SvidServiceClient;
use ironpact_spiffe::SpiffeId;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Generates a join token for one agent.
    Generate(TokenArgs),
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// A SPIFFE ID to register as an alias of the node that uses the token.
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    /// How long the token stays valid (seconds or a duration).
    #[arg(long = "ttl", default_value = "600")]
    ttl: String,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Subcommand, Debug)]
pub enum X509Cmd {
    /// Mints an X509-SVID with a freshly generated key.
    Mint(X509Args),
    /// Prints an X509-SVID in words: its SPIFFE ID, validity and the attestation claims it
    /// carries (what the hardware proved about the node it was issued to). Reads a file; no
    /// server needed, and no chain verified (a peer verifies it).
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The certificate (PEM, the first one is inspected; or DER).
    #[arg(long = "path")]
    path: PathBuf,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// `x509 inspect`: the certificate's SPIFFE ID, validity and attestation claims.
fn inspect(a: &InspectArgs) -> Result<()> {
    let bytes = std::fs::read(&a.path).with_context(|| {
        format!(
            "cannot read {}: pass -path <certificate file>",
            a.path.display()
        )
    })?;
    let der = match std::str::from_utf8(&bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN"))
    {
        Some(text) => ironpact_spiffe::x509::certs_from_pem(text)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{} holds no certificate", a.path.display()))?,
        None => bytes,
    };
    let info = ironpact_spiffe::x509::CertInfo::parse(&der)
        .map_err(|e| anyhow!("{}: not an X.509 certificate ({e})", a.path.display()))?;
    let claims = ironpact_spiffe::claims::from_certificate(&der).map_err(|e| {
        anyhow!(
            "{}: {e}: the certificate cannot be trusted to say what runs where",
            a.path.display()
        )
    })?;
    let fmt = crate::common::fmt_time;
    match a.output {
        Output::Json => {
            let out = json!({
                "spiffe_id": info.uri_sans.first(),
                "serial": info.serial_hex,
                "not_before": info.not_before,
                "not_after": info.not_after,
                "attestation_claims": claims.as_ref().map(ironpact_spiffe::claims::AttestationClaims::to_json),
            });
            println!("{out}");
        }
        Output::Pretty => {
            println!(
                "SPIFFE ID:\t\t{}\nSerial:\t\t\t{}\nValid after:\t\t{}\nValid until:\t\t{}",
                info.uri_sans.first().map_or("(none)", String::as_str),
                info.serial_hex,
                fmt(info.not_before),
                fmt(info.not_after)
            );
            match claims {
                Some(c) => print!(
                    "Attestation claims ({}; as the file says: this does not verify its chain, a peer must):\n{}",
                    ironpact_spiffe::claims::OID,
                    c.describe()
                ),
                None => println!(
                    "Attestation claims:\tnone (the node was not attested with TEE evidence)"
                ),
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct X509Args {
    /// The SPIFFE ID of the SVID.
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    /// TTL (seconds or a duration); the server default when absent.
    #[arg(long = "ttl")]
    ttl: Option<String>,
    /// A DNS name to include; repeat for several.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// Directory to write svid.pem, key.pem and bundle.pem to.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Subcommand, Debug)]
pub enum JwtCmd {
    /// Mints a JWT-SVID.
    Mint(JwtArgs),
}

#[derive(Args, Debug)]
pub struct JwtArgs {
    /// The SPIFFE ID of the JWT-SVID.
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    /// An audience; repeat for several.
    #[arg(long = "audience")]
    audience: Vec<String>,
    /// TTL (seconds or a duration); the server default when absent.
    #[arg(long = "ttl")]
    ttl: Option<String>,
    /// File to write the token to.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

pub async fn token(cmd: TokenCmd) -> Result<()> {
    let TokenCmd::Generate(a) = cmd;
    let ttl = parse_ttl("-ttl", &a.ttl)?;
    if ttl <= 0 {
        bail!("-ttl must be positive");
    }
    if let Some(id) = &a.spiffe_id {
        SpiffeId::parse(id)?;
    }
    let mut c = AgentServiceClient::new(a.socket.channel().await?);
    let t = c
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl,
            agent_id: a.spiffe_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    match a.output {
        Output::Json => crate::protojson::print(
            &json!({"value": t.value, "expires_at": crate::protojson::int64(t.expires_at)}),
        ),
        Output::Pretty => println!("Token: {}", t.value),
    }
    Ok(())
}

fn required_id(raw: &Option<String>) -> Result<SpiffeId> {
    let s = raw.as_deref().ok_or_else(|| {
        anyhow!("a SPIFFE ID is required: pass -spiffeID spiffe://<trust domain>/<path>")
    })?;
    Ok(SpiffeId::parse(s)?)
}

pub async fn x509(cmd: X509Cmd) -> Result<()> {
    let a = match cmd {
        X509Cmd::Mint(a) => a,
        X509Cmd::Inspect(a) => return inspect(&a),
    };
    let id = required_id(&a.spiffe_id)?;
    let ttl = a
        .ttl
        .as_deref()
        .map(|t| parse_ttl("-ttl", t))
        .transpose()?
        .unwrap_or(0);
    let key = rcgen::KeyPair::generate().context("generating a P-256 key")?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names.push(rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(id.to_string()).map_err(|e| anyhow!("{e}"))?,
    ));
    for d in &a.dns {
        params.subject_alt_names.push(rcgen::SanType::DnsName(
            rcgen::string::Ia5String::try_from(d.clone())
                .map_err(|e| anyhow!("invalid -dns {d:?}: {e}"))?,
        ));
    }
    let csr = params.serialize_request(&key).context("building the CSR")?;
    let ch = a.socket.channel().await?;
    let svid = SvidServiceClient::new(ch.clone())
        .mint_x509svid(pb::MintX509svidRequest {
            csr: csr.der().to_vec(),
            ttl,
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .svid
        .ok_or_else(|| anyhow!("server returned no SVID"))?;
    let bundle = super::bundle::from_pb(
        &BundleServiceClient::new(ch)
            .get_bundle(pb::GetBundleRequest {})
            .await
            .map_err(status_err)?
            .into_inner(),
    )?;
    let svid_pem = ironpact_spiffe::x509::certs_to_pem(svid.cert_chain.iter().map(Vec::as_slice));
    let key_pem = key.serialize_pem();
    let bundle_pem = bundle.to_pem();
    if let Some(dir) = &a.write {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_file(&dir.join("svid.pem"), svid_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join("bundle.pem"), bundle_pem.as_bytes(), 0o644)?;
    }
    match a.output {
        // as SPIRE: with -write, the lines saying where the files are, in either mode
        Output::Json if a.write.is_none() => {
            // SPIRE prints a Go struct here: DER in base64, fields in this order, in an array
            #[derive(serde::Serialize)]
            struct Minted {
                x509_svid: Vec<String>,
                private_key: String,
                root_cas: Vec<String>,
            }
            let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
            let out = Minted {
                x509_svid: svid.cert_chain.iter().map(|c| b64(c)).collect(),
                private_key: b64(key.serialized_der()),
                root_cas: bundle.x509_authorities.iter().map(|c| b64(c)).collect(),
            };
            println!("{}", crate::protojson::render_struct(&out)?);
        }
        Output::Json | Output::Pretty => {
            if let Some(dir) = &a.write {
                println!("X509-SVID written to {}", dir.join("svid.pem").display());
                println!("Private key written to {}", dir.join("key.pem").display());
                println!("Root CAs written to {}", dir.join("bundle.pem").display());
            } else {
                println!(
                    "X509-SVID:\n{svid_pem}\nPrivate key:\n{key_pem}\nRoot CAs:\n{bundle_pem}"
                );
            }
        }
    }
    Ok(())
}

pub async fn jwt(cmd: JwtCmd) -> Result<()> {
    let JwtCmd::Mint(a) = cmd;
    let id = required_id(&a.spiffe_id)?;
    if a.audience.is_empty() {
        bail!("at least one audience is required: pass -audience <name>");
    }
    let ttl = a
        .ttl
        .as_deref()
        .map(|t| parse_ttl("-ttl", t))
        .transpose()?
        .unwrap_or(0);
    let mut c = SvidServiceClient::new(a.socket.channel().await?);
    let svid = c
        .mint_jwtsvid(pb::MintJwtsvidRequest {
            id: id.to_string(),
            audience: a.audience.clone(),
            ttl,
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .svid
        .ok_or_else(|| anyhow!("server returned no SVID"))?;
    if let Some(p) = &a.write {
        write_file(p, svid.token.as_bytes(), 0o600)?;
    }
    match (&a.write, a.output) {
        (Some(p), _) => println!("JWT-SVID written to {}", p.display()),
        (None, Output::Json) => crate::protojson::print(&json!({"svid": {
            "token": svid.token,
            "id": crate::protojson::id(&svid.id),
            "expires_at": crate::protojson::int64(svid.expires_at),
            "issued_at": crate::protojson::int64(svid.issued_at),
            "hint": "",
        }})),
        (None, Output::Pretty) => println!("{}", svid.token),
    }
    Ok(())
}
