//! `ironpact-agent`: `run`, `healthcheck` and the Workload API client commands under `api`,
//! with SPIRE's names and flags.

use crate::common::{connect_uds, finish, fmt_time, init_logging, write_file};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use ironpact_agent::config::{AgentConfig, DEFAULT_SOCKET_PATH, Overrides};
use ironpact_proto::workload as pb;
use ironpact_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(
    name = "ironpact-agent",
    version,
    about = "SPIFFE agent: attests its node and serves the Workload API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the agent.
    Run(RunArgs),
    /// Checks that the agent is up and holds an identity.
    Healthcheck(SocketArg),
    /// Talks to the Workload API as a workload would.
    #[command(subcommand)]
    Api(ApiCmd),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    config: PathBuf,
    #[arg(long = "dataDir", visible_alias = "data-dir")]
    data_dir: Option<String>,
    /// A join token from `ironpact-server token generate`.
    #[arg(long = "joinToken", visible_alias = "join-token")]
    join_token: Option<String>,
    #[arg(long = "serverAddress", visible_alias = "server-address")]
    server_address: Option<String>,
    #[arg(long = "serverPort", visible_alias = "server-port")]
    server_port: Option<u16>,
    #[arg(long = "socketPath", visible_alias = "socket-path")]
    socket_path: Option<String>,
    /// PEM file with the server's trust bundle (`ironpact-server bundle show`).
    #[arg(long = "trustBundle", visible_alias = "trust-bundle")]
    trust_bundle: Option<String>,
    #[arg(long = "trustDomain", visible_alias = "trust-domain")]
    trust_domain: Option<String>,
    #[arg(long = "logLevel", visible_alias = "log-level")]
    log_level: Option<String>,
    #[arg(long = "expandEnv", visible_alias = "expand-env")]
    expand_env: bool,
}

#[derive(Args, Debug, Clone)]
struct SocketArg {
    /// Path to the Workload API socket.
    #[arg(long = "socketPath", visible_alias = "socket-path", default_value = DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
}

#[derive(Subcommand, Debug)]
enum ApiCmd {
    /// Fetches SVIDs.
    #[command(subcommand)]
    Fetch(FetchCmd),
    /// Validates a JWT-SVID.
    #[command(subcommand)]
    Validate(ValidateCmd),
    /// Prints every X509-SVID update the Workload API pushes.
    Watch(SocketArg),
}

#[derive(Subcommand, Debug)]
enum FetchCmd {
    /// X509-SVIDs and bundles.
    X509(X509Args),
    /// JWT-SVIDs for an audience.
    Jwt(JwtArgs),
}

#[derive(Subcommand, Debug)]
enum ValidateCmd {
    Jwt(ValidateArgs),
}

#[derive(Args, Debug)]
struct X509Args {
    /// Directory to write svid.N.pem, svid.N.key, bundle.N.pem, federated_bundle.N.M.pem.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    /// Seconds to wait for an answer.
    #[arg(long = "timeout", default_value = "5")]
    timeout: u64,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Args, Debug)]
struct JwtArgs {
    #[arg(long = "audience")]
    audience: Vec<String>,
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    #[arg(long = "timeout", default_value = "5")]
    timeout: u64,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    #[arg(long = "audience")]
    audience: Option<String>,
    #[arg(long = "svid")]
    svid: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

pub fn main() -> std::process::ExitCode {
    let cli: Cli = match crate::common::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !matches!(cli.cmd, Cmd::Run(_)) {
        crate::common::quiet_on_closed_pipe();
    }
    if let Cmd::Run(a) = cli.cmd {
        return finish(run(a));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return finish(Err(e.into())),
    };
    finish(rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(_) => Ok(()),
            Cmd::Healthcheck(s) => healthcheck(s).await,
            Cmd::Api(ApiCmd::Fetch(FetchCmd::X509(a))) => fetch_x509(a).await,
            Cmd::Api(ApiCmd::Fetch(FetchCmd::Jwt(a))) => fetch_jwt(a).await,
            Cmd::Api(ApiCmd::Validate(ValidateCmd::Jwt(a))) => validate_jwt(a).await,
            Cmd::Api(ApiCmd::Watch(s)) => watch(s).await,
        }
    }))
}

fn run(a: RunArgs) -> Result<()> {
    let ov = Overrides {
        data_dir: a.data_dir,
        join_token: a.join_token,
        server_address: a.server_address,
        server_port: a.server_port,
        socket_path: a.socket_path,
        trust_bundle: a.trust_bundle,
        trust_domain: a.trust_domain,
        log_level: a.log_level,
    };
    let cfg = AgentConfig::load(&a.config, a.expand_env, &ov)?;
    init_logging(&cfg.log_level, cfg.log_json);
    tracing::info!(config = %a.config.display(), trust_domain = %cfg.trust_domain, server = %format!("{}:{}", cfg.server_address, cfg.server_port), "starting ironpact-agent");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(ironpact_agent::run::run(
        cfg,
        crate::common::shutdown_signal(),
    ))?;
    Ok(())
}

async fn client(s: &SocketArg) -> Result<SpiffeWorkloadApiClient<Channel>> {
    let ch = connect_uds(&s.socket_path, "agent's Workload API", "-socketPath").await?;
    Ok(SpiffeWorkloadApiClient::new(ch))
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{} ({:?})", s.message(), s.code())
}

/// Splits concatenated DER certificates.
fn split_ders(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    use x509_parser::prelude::FromDer;
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::certificate::X509Certificate::from_der(bytes)
            .map_err(|e| anyhow!("bad certificate: {e}"))?;
        out.push(bytes[..bytes.len() - rest.len()].to_vec());
        bytes = rest;
    }
    Ok(out)
}

fn pem_of(ders: &[Vec<u8>]) -> String {
    ironpact_spiffe::x509::certs_to_pem(ders.iter().map(Vec::as_slice))
}

async fn first_x509(s: &SocketArg, timeout: u64) -> Result<pb::X509svidResponse> {
    let mut c = client(s).await?;
    let fut = async {
        let mut stream = c
            .fetch_x509svid(with_header(pb::X509svidRequest {}))
            .await
            .map_err(status)?
            .into_inner();
        stream
            .message()
            .await
            .map_err(status)?
            .ok_or_else(|| anyhow!("the agent closed the stream"))
    };
    tokio::time::timeout(Duration::from_secs(timeout), fut)
        .await
        .map_err(|_| {
            anyhow!(
                "no SVID within {timeout} s; is this workload registered? (-timeout waits longer)"
            )
        })?
}

fn describe(resp: &pb::X509svidResponse, started: Instant) -> Result<String> {
    let mut out = format!(
        "Received {} svid after {:?}\n",
        resp.svids.len(),
        started.elapsed()
    );
    for s in &resp.svids {
        let chain = split_ders(&s.x509_svid)?;
        let leaf = chain
            .first()
            .map(|c| ironpact_spiffe::x509::CertInfo::parse(c))
            .transpose()?;
        out.push_str(&format!("\nSPIFFE ID:\t\t{}\n", s.spiffe_id));
        if let Some(l) = leaf {
            out.push_str(&format!(
                "SVID Valid After:\t{}\nSVID Valid Until:\t{}\n",
                fmt_time(l.not_before),
                fmt_time(l.not_after)
            ));
        }
        if !s.hint.is_empty() {
            out.push_str(&format!("Hint:\t\t\t{}\n", s.hint));
        }
        for (i, ca) in split_ders(&s.bundle)?.iter().enumerate() {
            let info = ironpact_spiffe::x509::CertInfo::parse(ca)?;
            out.push_str(&format!(
                "CA #{} Valid After:\t{}\nCA #{} Valid Until:\t{}\n",
                i + 1,
                fmt_time(info.not_before),
                i + 1,
                fmt_time(info.not_after)
            ));
        }
    }
    Ok(out)
}

async fn fetch_x509(a: X509Args) -> Result<()> {
    let started = Instant::now();
    let resp = first_x509(&a.socket, a.timeout).await?;
    print!("{}", describe(&resp, started)?);
    if let Some(dir) = &a.write {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, s) in resp.svids.iter().enumerate() {
            write_file(
                &dir.join(format!("svid.{i}.pem")),
                pem_of(&split_ders(&s.x509_svid)?).as_bytes(),
                0o644,
            )?;
            let key = pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone()));
            write_file(&dir.join(format!("svid.{i}.key")), key.as_bytes(), 0o600)?;
            write_file(
                &dir.join(format!("bundle.{i}.pem")),
                pem_of(&split_ders(&s.bundle)?).as_bytes(),
                0o644,
            )?;
            let mut fed: Vec<_> = resp.federated_bundles.iter().collect();
            fed.sort();
            for (j, (_, ders)) in fed.iter().enumerate() {
                write_file(
                    &dir.join(format!("federated_bundle.{i}.{j}.pem")),
                    pem_of(&split_ders(ders)?).as_bytes(),
                    0o644,
                )?;
            }
        }
        println!("\nWriting SVIDs to {}", dir.display());
    }
    Ok(())
}

async fn fetch_jwt(a: JwtArgs) -> Result<()> {
    if a.audience.is_empty() {
        bail!("an audience is required: pass -audience <name>");
    }
    let mut c = client(&a.socket).await?;
    let req = pb::JwtsvidRequest {
        audience: a.audience.clone(),
        spiffe_id: a.spiffe_id.clone().unwrap_or_default(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(a.timeout),
        c.fetch_jwtsvid(with_header(req)),
    )
    .await
    .map_err(|_| anyhow!("no answer within {} s", a.timeout))?
    .map_err(status)?
    .into_inner();
    for s in &resp.svids {
        println!("token({}):\n\t{}", s.spiffe_id, s.svid);
    }
    let mut stream = c
        .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
        .await
        .map_err(status)?
        .into_inner();
    if let Some(b) = stream.message().await.map_err(status)? {
        let mut keys: Vec<_> = b.bundles.iter().collect();
        keys.sort();
        for (td, jwks) in keys {
            println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
        }
    }
    Ok(())
}

async fn validate_jwt(a: ValidateArgs) -> Result<()> {
    let audience = a
        .audience
        .clone()
        .ok_or_else(|| anyhow!("an audience is required: pass -audience <name>"))?;
    let svid = a
        .svid
        .clone()
        .ok_or_else(|| anyhow!("the token is required: pass -svid <JWT-SVID>"))?;
    let mut c = client(&a.socket).await?;
    let r = c
        .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest { audience, svid }))
        .await
        .map_err(status)?
        .into_inner();
    println!("SVID is valid.\nSPIFFE ID : {}", r.spiffe_id);
    if let Some(claims) = r.claims {
        let mut keys: Vec<_> = claims.fields.keys().cloned().collect();
        keys.sort();
        println!("Claims    : {}", keys.join(", "));
    }
    Ok(())
}

async fn watch(s: SocketArg) -> Result<()> {
    let started = Instant::now();
    let mut c = client(&s).await?;
    let mut stream = c
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .map_err(status)?
        .into_inner();
    while let Some(resp) = stream.message().await.map_err(status)? {
        println!("{}", describe(&resp, started)?);
    }
    Ok(())
}

async fn healthcheck(s: SocketArg) -> Result<()> {
    use ironpact_proto::health::v1::health_check_response::ServingStatus;
    let ch = connect_uds(&s.socket_path, "agent's Workload API", "-socketPath")
        .await
        .map_err(|e| anyhow!("agent is unhealthy: {e:#}"))?;
    let r = ironpact_proto::health::v1::health_client::HealthClient::new(ch)
        .check(ironpact_proto::health::v1::HealthCheckRequest::default())
        .await
        .map_err(|e| anyhow!("agent is unhealthy: {}", e.message()))?;
    if r.get_ref().status != ServingStatus::Serving as i32 {
        if let Some(why) = r
            .metadata()
            .get(ironpact_agent::run::UNHEALTHY_REASON)
            .and_then(|v| v.to_str().ok())
        {
            bail!("agent is unhealthy: {why} (see its log and `ironpact-server agent show`)");
        }
        bail!("agent is unhealthy: it has not attested or synced yet (see its log)");
    }
    println!("Agent is healthy.");
    Ok(())
}
