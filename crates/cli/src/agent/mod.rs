//! `ironpact-agent`: `run`, `healthcheck` and the Workload API client commands under `api`,
//! with SPIRE's names and flags.

pub mod enclave;
mod helper;

use crate::common::{connect_uds, finish, fmt_time, init_logging, parse_duration, write_file};
use crate::server::Output;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use ironpact_agent::config::{AgentConfig, DEFAULT_SOCKET_PATH, Overrides};
use ironpact_proto::workload as pb;
use ironpact_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use serde_json::json;
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
    /// Validates a configuration file: reads every file it names, as `run` would.
    Validate(ValidateConfigArgs),
    /// Checks that the agent is up and holds an identity.
    Healthcheck(HealthArgs),
    /// Talks to the Workload API as a workload would.
    #[command(subcommand)]
    Api(ApiCmd),
    /// Gets or changes the running agent's log level (through its admin socket).
    #[command(subcommand)]
    Logger(crate::logger::LoggerCmd),
    /// Prints what the running agent holds: uptime, last sync, caches, its SVID (admin socket).
    #[command(subcommand)]
    Debug(crate::debug::DebugCmd),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Path to the agent configuration file.
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    config: PathBuf,
    /// Directory for the agent's data (overrides agent.data_dir).
    #[arg(long = "dataDir", visible_alias = "data-dir")]
    data_dir: Option<String>,
    /// A join token from `ironpact-server token generate`.
    #[arg(long = "joinToken", visible_alias = "join-token")]
    join_token: Option<String>,
    /// The server's address (overrides agent.server_address).
    #[arg(long = "serverAddress", visible_alias = "server-address")]
    server_address: Option<String>,
    /// The server's agent API port (overrides agent.server_port).
    #[arg(long = "serverPort", visible_alias = "server-port")]
    server_port: Option<u16>,
    /// Path of the Workload API socket (overrides agent.socket_path).
    #[arg(long = "socketPath", visible_alias = "socket-path")]
    socket_path: Option<String>,
    /// PEM file with the server's trust bundle (`ironpact-server bundle show`).
    #[arg(long = "trustBundle", visible_alias = "trust-bundle")]
    trust_bundle: Option<String>,
    /// Trust domain (overrides agent.trust_domain).
    #[arg(long = "trustDomain", visible_alias = "trust-domain")]
    trust_domain: Option<String>,
    /// DEBUG, INFO, WARN or ERROR (overrides agent.log_level).
    #[arg(long = "logLevel", visible_alias = "log-level")]
    log_level: Option<String>,
    /// text or json (overrides agent.log_format).
    #[arg(long = "logFormat", visible_alias = "log-format")]
    log_format: Option<String>,
    /// Append the log to this file instead of stderr (overrides agent.log_file).
    #[arg(long = "logFile", visible_alias = "log-file")]
    log_file: Option<String>,
    /// A file holding the join token (overrides agent.join_token_file; not with -joinToken).
    #[arg(long = "joinTokenFile", visible_alias = "join-token-file")]
    join_token_file: Option<String>,
    /// Expand $VAR and ${VAR} in the config file from the environment.
    #[arg(long = "expandEnv", visible_alias = "expand-env")]
    expand_env: bool,
    /// URL of the bootstrap trust bundle, downloaded at the first start (overrides
    /// agent.trust_bundle_url; https://, or http:// with trust_bundle_unix_socket).
    #[arg(long = "trustBundleUrl", visible_alias = "trust-bundle-url")]
    trust_bundle_url: Option<String>,
    /// SPIRE's bundles for unauthenticated callers: not in ironpact (the error says why).
    #[arg(long = "allowUnauthenticatedVerifiers")]
    allow_unauthenticated_verifiers: bool,
}

#[derive(Args, Debug, Clone)]
struct SocketArg {
    /// Path to the Workload API socket.
    #[arg(long = "socketPath", visible_alias = "socket-path", default_value = DEFAULT_SOCKET_PATH)]
    socket_path: PathBuf,
}

/// How to print: pretty (text) or json.
#[derive(Args, Debug, Clone)]
struct OutputArg {
    /// How to print: pretty (text) or json (fetch and watch print the Workload API's messages,
    /// bytes in base64).
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

impl OutputArg {
    fn json(&self) -> bool {
        self.output == Output::Json
    }
}

#[derive(Args, Debug)]
struct ValidateConfigArgs {
    /// Path to the agent configuration file.
    #[arg(long = "config", default_value = "conf/agent/agent.conf")]
    config: PathBuf,
    /// Expand $VAR and ${VAR} in the config file from the environment.
    #[arg(long = "expandEnv", visible_alias = "expand-env")]
    expand_env: bool,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Args, Debug)]
struct HealthArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    flags: crate::common::HealthFlags,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Args, Debug)]
struct WatchArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Subcommand, Debug)]
enum ApiCmd {
    /// Fetches SVIDs: `fetch x509` (also bare `fetch`, as in SPIRE) or `fetch jwt`.
    Fetch(FetchArgs),
    /// Validates a JWT-SVID.
    #[command(subcommand)]
    Validate(ValidateCmd),
    /// Prints every X509-SVID update the Workload API pushes.
    Watch(WatchArgs),
    /// An SGX enclave's identity: a new key, a quote from -quoteDevice bound to the agent's
    /// nonce and that key, and the SVIDs the server signs for it, written to -write.
    Enclave(EnclaveArgs),
}

#[derive(Args, Debug)]
struct EnclaveArgs {
    /// The SGX runtime's attestation directory: user_report_data is written, quote read
    /// (Gramine's and Occlum's /dev/attestation).
    #[arg(
        long = "quoteDevice",
        visible_alias = "quote-device",
        default_value = "/dev/attestation"
    )]
    quote_device: PathBuf,
    /// Directory to write svid.N.pem, svid.N.key (the enclave's key, 0600), bundle.N.pem
    /// and, with -audience, jwt_svid.N.token.
    #[arg(long = "write")]
    write: PathBuf,
    /// Also get JWT-SVIDs for this audience; repeat for several.
    #[arg(long = "audience")]
    audience: Vec<String>,
    /// Keep running: at half the SVIDs' life, a new key and a fresh quote get new ones.
    #[arg(long = "watch")]
    watch: bool,
    /// The trust domain's bundle (PEM) as the enclave knows it (a file measured into it, e.g.
    /// a Gramine trusted file): SVIDs must chain to it, and it is what bundle.N.pem holds.
    /// Without it the bundle comes from the agent, that is from the host.
    #[arg(long = "trustBundle", visible_alias = "trust-bundle")]
    trust_bundle: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct FetchArgs {
    #[command(subcommand)]
    cmd: Option<FetchCmd>,
    /// `fetch` alone takes `fetch x509`'s flags
    #[command(flatten)]
    x509: X509Args,
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
    /// Validates a JWT-SVID for an audience, as a workload that received it would.
    Jwt(ValidateArgs),
}

#[derive(Args, Debug)]
struct X509Args {
    /// Directory to write svid.N.pem, svid.N.key, bundle.N.pem, federated_bundle.N.M.pem.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    /// How long to wait for an answer: seconds (5) or a duration (5s, 500ms).
    #[arg(long = "timeout", default_value = "5s")]
    timeout: String,
    /// Print nothing (with -write, only the files are written).
    #[arg(long = "silent")]
    silent: bool,
    /// With -write: keep running, and keep the files current on every rotation (replaced
    /// atomically), restarting or signalling the program that reads them.
    #[arg(long = "watch", requires = "write")]
    watch: bool,
    /// With -watch: run this command (with sh -c) once the files exist, and restart it on each
    /// change (or send it -signal).
    #[arg(long = "exec", requires = "watch")]
    exec: Option<String>,
    /// With -watch: the signal (HUP, USR1, …) sent on each change to the -exec program, or to
    /// the process in -pidFile, instead of a restart.
    #[arg(long = "signal", requires = "watch")]
    signal: Option<String>,
    /// With -watch and -signal: the file holding the PID of the program to signal (a daemon
    /// started elsewhere, such as nginx's pid file).
    #[arg(long = "pidFile", visible_alias = "pid-file", requires = "watch")]
    pid_file: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Args, Debug)]
struct JwtArgs {
    /// An audience the JWT-SVID is for; repeat for several.
    #[arg(long = "audience")]
    audience: Vec<String>,
    /// Only the JWT-SVID of this SPIFFE ID (when the caller has several).
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    /// How long to wait for an answer: seconds (5) or a duration (5s, 500ms).
    #[arg(long = "timeout", default_value = "5s")]
    timeout: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// The audience the JWT-SVID must carry.
    #[arg(long = "audience")]
    audience: Option<String>,
    /// The JWT-SVID (token) to validate.
    #[arg(long = "svid")]
    svid: Option<String>,
    /// How long to wait for an answer: seconds (5) or a duration (5s, 500ms).
    #[arg(long = "timeout", default_value = "5s")]
    timeout: String,
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    out: OutputArg,
}

/// The command tree, as `main` parses it (for the help checks).
pub fn command() -> clap::Command {
    crate::common::help_on_bare_groups(<Cli as clap::CommandFactory>::command())
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
            Cmd::Healthcheck(a) => healthcheck(a).await,
            Cmd::Validate(a) => validate_config(a),
            Cmd::Debug(c) => {
                crate::debug::exec(
                    c,
                    crate::debug::Side::Agent,
                    ironpact_agent::config::DEFAULT_ADMIN_SOCKET_PATH,
                    "agent's admin socket (admin_socket_path)",
                )
                .await
            }
            Cmd::Logger(c) => {
                crate::logger::exec(
                    c,
                    ironpact_agent::config::DEFAULT_ADMIN_SOCKET_PATH,
                    "agent's admin socket (admin_socket_path)",
                )
                .await
            }
            Cmd::Api(ApiCmd::Fetch(f)) => match f.cmd {
                Some(FetchCmd::X509(a)) => fetch_x509(a).await,
                Some(FetchCmd::Jwt(a)) => fetch_jwt(a).await,
                None => fetch_x509(f.x509).await,
            },
            Cmd::Api(ApiCmd::Validate(ValidateCmd::Jwt(a))) => validate_jwt(a).await,
            Cmd::Api(ApiCmd::Watch(a)) => watch(a).await,
            Cmd::Api(ApiCmd::Enclave(a)) => enclave_identity(a).await,
        }
    }))
}

fn run(a: RunArgs) -> Result<()> {
    use ironpact_config::hcl::{Side, unsupported_reason};
    if a.allow_unauthenticated_verifiers {
        bail!(
            "-allowUnauthenticatedVerifiers is SPIRE's and not in ironpact: {}",
            unsupported_reason(Side::Agent, "allow_unauthenticated_verifiers")
                .unwrap_or("remove it")
        );
    }
    let ov = Overrides {
        data_dir: a.data_dir,
        join_token: a.join_token,
        server_address: a.server_address,
        server_port: a.server_port,
        socket_path: a.socket_path,
        trust_bundle: a.trust_bundle,
        trust_bundle_url: a.trust_bundle_url,
        trust_domain: a.trust_domain,
        log_level: a.log_level,
        log_format: a.log_format,
        log_file: a.log_file,
        join_token_file: a.join_token_file,
    };
    let cfg = AgentConfig::load(&a.config, a.expand_env, &ov)?;
    init_logging(
        &cfg.log_level,
        cfg.log_json,
        cfg.log_file.as_deref(),
        cfg.log_source_location,
    )?;
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

fn validate_config(a: ValidateConfigArgs) -> Result<()> {
    let cfg = crate::common::validate_file(&a.config, |file, text| {
        AgentConfig::parse(file, text, a.expand_env, &Overrides::default())
    })?;
    ironpact_agent::manager::Agent::check(&cfg)
        .map_err(|e| anyhow!("{e} ({})", a.config.display()))?;
    if a.out.json() {
        println!("{}", json!({"valid": true}));
    } else {
        println!("ironpact agent configuration file is valid.");
    }
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

/// `api enclave`: attests the enclave and writes its SVIDs; with -watch, again at each
/// half-life (a failure is retried every 5 s while the SVIDs held are still valid).
async fn enclave_identity(a: EnclaveArgs) -> Result<()> {
    let device = enclave::QuoteDevice {
        dir: a.quote_device.clone(),
    };
    helper::prepare_dir(&a.write)?;
    let trusted = match &a.trust_bundle {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read -trustBundle {}", p.display()))?;
            let roots = ironpact_spiffe::x509::certs_from_pem(&text)
                .map_err(|e| anyhow!("-trustBundle {}: {e}", p.display()))?;
            if roots.is_empty() {
                bail!(
                    "-trustBundle {} holds no certificate: write the trust domain's bundle there (ironpact-server bundle show)",
                    p.display()
                );
            }
            Some(roots)
        }
        None => {
            eprintln!(
                "api enclave: no -trustBundle: the bundle written comes from the agent, that is from the host; pass the trust domain's bundle measured into the enclave to trust no host"
            );
            None
        }
    };
    let mut valid_until = 0i64;
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let got = enclave::attest(
            &a.socket.socket_path,
            &device,
            &a.audience,
            trusted.as_deref(),
        )
        .await;
        let (resp, jwts, expires) = match got {
            Ok(g) => g,
            Err(e) if a.watch && now < valid_until => {
                eprintln!("api enclave: renewal failed, retrying in 5 s: {e:#}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        helper::write_set(&a.write, &resp)?;
        for (i, (_, token)) in jwts.iter().enumerate() {
            write_file(
                &a.write.join(format!("jwt_svid.{i}.token")),
                token.as_bytes(),
                0o600,
            )?;
        }
        // tokens of entries that no longer match go
        for i in jwts.len()..64 {
            let _ = std::fs::remove_file(a.write.join(format!("jwt_svid.{i}.token")));
        }
        if a.out.json() {
            // one line per issue (with -watch, per renewal)
            println!(
                "{}",
                json!({
                    "svids": resp.svids.iter().map(|s| s.spiffe_id.clone()).collect::<Vec<_>>(),
                    "expires_at": expires,
                    "jwt_svids": jwts.len(),
                    "dir": a.write.display().to_string(),
                })
            );
        } else {
            for s in &resp.svids {
                println!(
                    "{} for this enclave's key, valid until {} (files in {})",
                    s.spiffe_id,
                    fmt_time(expires),
                    a.write.display()
                );
            }
        }
        if !a.watch {
            return Ok(());
        }
        valid_until = expires;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let wait = ((expires - now) / 2).max(1) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// A FetchX509SVID stream, as a workload opens it.
async fn x509_stream(
    c: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<tonic::Streaming<pb::X509svidResponse>, tonic::Status> {
    Ok(c.fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await?
        .into_inner())
}

/// The Workload API's "not yet" (no entry matches this caller, for now): worth asking again,
/// unlike a refused node's answer.
fn no_identity_yet(st: &tonic::Status) -> bool {
    st.code() == tonic::Code::PermissionDenied
        && st.message().contains(ironpact_agent::workload::NO_IDENTITY)
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

/// The first X509-SVID response. A workload with no identity yet ("no identity issued": its
/// entry still on its way, or the agent still attesting) is asked again until `timeout`; any
/// other answer (a refused node's) is returned at once.
async fn first_x509(s: &SocketArg, timeout: &str) -> Result<pb::X509svidResponse> {
    let wait = parse_duration("-timeout", timeout)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut c = client(s).await?;
    let mut last = None;
    let fut = async {
        loop {
            let attempt = async { x509_stream(&mut c).await?.message().await };
            match attempt.await {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => bail!("the agent closed the stream"),
                // only "not yet": a refused node's answer is final and returned at once
                Err(st) if no_identity_yet(&st) => {
                    last = Some(st);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(st) => return Err(status(st)),
            }
        }
    };
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => r,
        Err(_) => match last {
            Some(st) => Err(anyhow!(
                "no SVID within {timeout}: {} ({:?}); is this workload registered? (-timeout waits longer)",
                st.message(),
                st.code()
            )),
            None => Err(anyhow!(
                "no SVID within {timeout}; is this workload registered? (-timeout waits longer)"
            )),
        },
    }
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
        // what the hardware proved about this node, when its attestation had TEE evidence
        if let Some(leaf) = chain.first() {
            match ironpact_spiffe::claims::from_certificate(leaf) {
                Ok(Some(c)) => {
                    out.push_str("Attestation claims:\n");
                    out.push_str(&c.describe());
                }
                Ok(None) => {}
                Err(e) => out.push_str(&format!("Attestation claims:\t{e}\n")),
            }
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
    if a.watch {
        let reload = helper::Reload::from_flags(a.exec, a.signal, a.pid_file)?;
        let dir = a.write.as_deref().unwrap_or(std::path::Path::new("."));
        return helper::watch(&a.socket, dir, reload).await;
    }
    let started = Instant::now();
    let resp = first_x509(&a.socket, &a.timeout).await?;
    if a.silent {
    } else if a.out.json() {
        crate::protojson::print(&x509_json(&resp));
    } else {
        print!("{}", describe(&resp, started)?);
    }
    if let Some(dir) = &a.write {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // the same files, named as SPIRE names them, as `-watch` keeps current
        for (name, data, mode) in helper::files_of(&resp)? {
            write_file(&dir.join(name), &data, mode)?;
        }
        if !a.out.json() && !a.silent {
            println!("\nWriting SVIDs to {}", dir.display());
        }
    }
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An X509SVIDResponse in protojson's shape (proto field names, bytes in base64).
fn x509_json(resp: &pb::X509svidResponse) -> serde_json::Value {
    let fed: serde_json::Map<String, serde_json::Value> = resp
        .federated_bundles
        .iter()
        .map(|(td, b)| (td.clone(), json!(b64(b))))
        .collect();
    json!({
        "svids": resp.svids.iter().map(|s| json!({
            "spiffe_id": s.spiffe_id,
            "x509_svid": b64(&s.x509_svid),
            "x509_svid_key": b64(&s.x509_svid_key),
            "bundle": b64(&s.bundle),
            "hint": s.hint,
        })).collect::<Vec<_>>(),
        "crl": resp.crl.iter().map(|c| b64(c)).collect::<Vec<_>>(),
        "federated_bundles": fed,
    })
}

/// Each -audience may hold several, comma-separated (as SPIRE splits them).
fn audiences(raw: &[String]) -> Vec<String> {
    raw.iter()
        .flat_map(|a| a.split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

async fn fetch_jwt(a: JwtArgs) -> Result<()> {
    let audience = audiences(&a.audience);
    if audience.is_empty() {
        bail!("an audience is required: pass -audience <name>");
    }
    let wait = parse_duration("-timeout", &a.timeout)?;
    let mut c = client(&a.socket).await?;
    let req = pb::JwtsvidRequest {
        audience,
        spiffe_id: a.spiffe_id.clone().unwrap_or_default(),
    };
    let resp = tokio::time::timeout(wait, c.fetch_jwtsvid(with_header(req)))
        .await
        .map_err(|_| anyhow!("no answer within {} (-timeout waits longer)", a.timeout))?
        .map_err(status)?
        .into_inner();
    let mut stream = c
        .fetch_jwt_bundles(with_header(pb::JwtBundlesRequest {}))
        .await
        .map_err(status)?
        .into_inner();
    let bundles = stream.message().await.map_err(status)?;
    let mut keys: Vec<_> = bundles.iter().flat_map(|b| b.bundles.iter()).collect();
    keys.sort();
    if a.out.json() {
        let svids: Vec<_> = resp
            .svids
            .iter()
            .map(|s| json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
            .collect();
        let b: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|(td, jwks)| ((*td).clone(), json!(b64(jwks))))
            .collect();
        crate::protojson::print(&json!([{"svids": svids}, {"bundles": b}]));
        return Ok(());
    }
    for s in &resp.svids {
        println!("token({}):\n\t{}", s.spiffe_id, s.svid);
    }
    for (td, jwks) in keys {
        println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
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
    let wait = parse_duration("-timeout", &a.timeout)?;
    let mut c = client(&a.socket).await?;
    let r = tokio::time::timeout(
        wait,
        c.validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest { audience, svid })),
    )
    .await
    .map_err(|_| anyhow!("no answer within {} (-timeout waits longer)", a.timeout))?
    .map_err(status)?
    .into_inner();
    if a.out.json() {
        let claims = r.claims.as_ref().map(struct_json).unwrap_or_default();
        crate::protojson::print(&json!({"spiffe_id": r.spiffe_id, "claims": claims}));
        return Ok(());
    }
    println!("SVID is valid.\nSPIFFE ID : {}", r.spiffe_id);
    if let Some(claims) = r.claims {
        let mut keys: Vec<_> = claims.fields.keys().cloned().collect();
        keys.sort();
        println!("Claims    : {}", keys.join(", "));
    }
    Ok(())
}

/// A protobuf Struct as JSON: what the Workload API's claims were before they were packed.
fn struct_json(s: &prost_types::Struct) -> serde_json::Value {
    fn value(v: &prost_types::Value) -> serde_json::Value {
        use prost_types::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::NumberValue(n)) => crate::protojson::number(*n),
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Prints every update until the stream ends or Ctrl-C. A workload with no identity yet is
/// not an end: it waits for one (asking again every second), as SPIRE's `api watch` does.
async fn watch(a: WatchArgs) -> Result<()> {
    let started = Instant::now();
    let mut c = client(&a.socket).await?;
    let mut waiting = false;
    loop {
        let attempt = async {
            let mut stream = x509_stream(&mut c).await?;
            while let Some(resp) = stream.message().await? {
                if a.out.json() {
                    crate::protojson::print(&x509_json(&resp));
                } else {
                    println!(
                        "{}",
                        describe(&resp, started)
                            .map_err(|e| tonic::Status::internal(e.to_string()))?
                    );
                }
            }
            Ok::<(), tonic::Status>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(st) if no_identity_yet(&st) => {
                if !waiting {
                    eprintln!(
                        "No identity issued to this workload yet; waiting for one (Ctrl-C ends)"
                    );
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(st) => return Err(status(st)),
        }
    }
}

async fn healthcheck(a: HealthArgs) -> Result<()> {
    crate::common::healthcheck_loop(
        &a.flags,
        ("agent", &a.socket.socket_path),
        a.out.json(),
        || check_once(&a),
    )
    .await
}

async fn check_once(a: &HealthArgs) -> Result<()> {
    use ironpact_proto::health::v1::health_check_response::ServingStatus;
    let ch = connect_uds(&a.socket.socket_path, "agent's Workload API", "-socketPath")
        .await
        .map_err(|e| anyhow!("agent is unhealthy: {e:#}"))?;
    if a.flags.shallow {
        return Ok(());
    }
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
    Ok(())
}
