//! `ironpact-server`: `run`, `validate`, `healthcheck` and the admin subcommands, with
//! SPIRE's command and flag names.

mod agent;
mod authority;
mod bundle;
pub mod entry;
mod federation;
mod fixtures;
mod mint;
mod policy;
mod run;
mod verify;

use crate::common::{connect_uds, finish};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use ironpact_server::config::DEFAULT_SOCKET_PATH;
use std::path::PathBuf;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(
    name = "ironpact-server",
    version,
    about = "SPIFFE server with hardware-attested nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the server.
    Run(run::RunArgs),
    /// Validates a configuration file.
    Validate(run::ValidateArgs),
    /// Checks that the server is up and healthy.
    Healthcheck(run::HealthArgs),
    /// Manages registration entries.
    #[command(subcommand)]
    Entry(entry::EntryCmd),
    /// Manages attested agents.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Manages trust bundles.
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Manages federation relationships with other trust domains.
    #[command(subcommand)]
    Federation(federation::FederationCmd),
    /// Manages this server's X.509 CA and JWT signing authorities.
    #[command(subcommand, name = "localauthority")]
    LocalAuthority(authority::LocalAuthorityCmd),
    /// Manages upstream authorities (ironpact's CA is self-signed: says so).
    #[command(subcommand, name = "upstreamauthority")]
    UpstreamAuthority(authority::UpstreamAuthorityCmd),
    /// Manages join tokens.
    #[command(subcommand)]
    Token(mint::TokenCmd),
    /// Mints X509-SVIDs.
    #[command(subcommand)]
    X509(mint::X509Cmd),
    /// Mints JWT-SVIDs.
    #[command(subcommand)]
    Jwt(mint::JwtCmd),
    /// Verifies attestation evidence offline and prints the verdict as JSON.
    #[command(subcommand)]
    Verify(verify::VerifyCmd),
    /// Writes TEE policy blocks from known-good evidence.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Writes simulated SEV-SNP or TDX test keys and collateral (TEST ONLY: no hardware needed).
    #[command(subcommand)]
    Fixtures(fixtures::FixturesCmd),
    /// Gets or changes the running server's log level.
    #[command(subcommand)]
    Logger(crate::logger::LoggerCmd),
    /// Prints what the running server holds: uptime, agents, entries, its SVID.
    #[command(subcommand)]
    Debug(crate::debug::DebugCmd),
}

/// Where the admin API listens.
#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// Path to the server's admin API socket.
    #[arg(long = "socketPath", visible_alias = "socket-path", default_value = DEFAULT_SOCKET_PATH)]
    pub socket_path: PathBuf,
}

impl SocketArg {
    pub async fn channel(&self) -> Result<Channel> {
        connect_uds(&self.socket_path, "server admin API", "-socketPath").await
    }
}

/// Selector types ironpact's attestors produce: the unix workload attestor and the node
/// attestors, and `spiffe_id` (the server's alias entries for join-token nodes).
const SELECTOR_TYPES: &[&str] = &["unix", "sev_snp", "tdx", "aws_iid", "x509pop", "spiffe_id"];
/// Keys of the unix workload attestor, often written without their `unix:` type.
const UNIX_KEYS: &[&str] = &[
    "uid",
    "gid",
    "user",
    "group",
    "path",
    "sha256",
    "supplementary_gid",
    "supplementary_group",
];

/// A warning for a selector whose type no attestor of ironpact produces (such an entry never
/// matches a workload here), with the likely fix. `None` for the known types.
pub(crate) fn selector_warning(sel: &ironpact_spiffe::Selector) -> Option<String> {
    if SELECTOR_TYPES.contains(&sel.kind.as_str()) {
        return None;
    }
    let hint = if UNIX_KEYS.contains(&sel.kind.as_str()) {
        format!("did you mean -selector unix:{}:{}?", sel.kind, sel.value)
    } else {
        format!("ironpact's attestors produce {}", SELECTOR_TYPES.join(", "))
    };
    Some(format!(
        "selector \"{}:{}\": no attestor of ironpact produces type \"{}\", so it matches nothing here; {hint}",
        sel.kind, sel.value, sel.kind
    ))
}

/// Parses `type:value` flags into API selectors; a type no attestor produces gets a warning.
pub(crate) fn selectors_pb(raw: &[String]) -> Result<Vec<ironpact_proto::server::v1::Selector>> {
    raw.iter()
        .map(|s| {
            let sel = ironpact_spiffe::Selector::parse(s)?;
            if let Some(w) = selector_warning(&sel) {
                eprintln!("Warning: {w}");
            }
            Ok(ironpact_proto::server::v1::Selector {
                r#type: sel.kind,
                value: sel.value,
            })
        })
        .collect()
}

/// Parses a `-match…On` flag.
pub(crate) fn match_pb(flag: &str, raw: &str) -> Result<i32> {
    use ironpact_proto::server::v1::MatchBehavior as M;
    Ok(match raw {
        "exact" => M::MatchExact,
        "subset" => M::MatchSubset,
        "superset" => M::MatchSuperset,
        "any" => M::MatchAny,
        other => anyhow::bail!("{flag} {other:?} is not one of exact, subset, superset, any"),
    } as i32)
}

/// Fetches every page of a paginated list; `fetch` gets the page token and returns
/// the page's items and the next token ("" at the end).
pub(crate) async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String)>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// Turns the status of a batch call's single item into a result.
pub(crate) fn item_ok(status: Option<&ironpact_proto::server::v1::Status>) -> Result<()> {
    match status {
        Some(s) if s.code != 0 => {
            anyhow::bail!("{} ({:?})", s.message, tonic::Code::from_i32(s.code))
        }
        Some(_) => Ok(()),
        None => anyhow::bail!("the server returned no status for the request"),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// Text (SPIRE's `pretty`, also spelled `prettyprint`).
    #[default]
    #[value(alias = "prettyprint")]
    Pretty,
    Json,
}

/// The command tree, as `main` parses it (for the help checks).
pub fn command() -> clap::Command {
    crate::common::help_on_bare_groups(<Cli as clap::CommandFactory>::command())
}

/// Entry point of the `ironpact-server` binary.
pub fn main() -> std::process::ExitCode {
    let cli: Cli = match crate::common::parse_args() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !matches!(cli.cmd, Cmd::Run(_)) {
        crate::common::quiet_on_closed_pipe();
    }
    if let Cmd::Run(a) = cli.cmd {
        return finish(run::run(a));
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
            Cmd::Validate(a) => run::validate(a),
            Cmd::Healthcheck(a) => run::healthcheck(a).await,
            Cmd::Entry(c) => entry::exec(c).await,
            Cmd::Agent(c) => agent::exec(c).await,
            Cmd::Bundle(c) => bundle::exec(c).await,
            Cmd::Federation(c) => federation::exec(c).await,
            Cmd::LocalAuthority(c) => authority::local(c).await,
            Cmd::UpstreamAuthority(c) => authority::upstream(c).await,
            Cmd::Token(c) => mint::token(c).await,
            Cmd::X509(c) => mint::x509(c).await,
            Cmd::Jwt(c) => mint::jwt(c).await,
            Cmd::Verify(c) => verify::exec(c),
            Cmd::Policy(c) => policy::exec(c),
            Cmd::Fixtures(c) => fixtures::exec(c),
            Cmd::Logger(c) => crate::logger::exec(c, DEFAULT_SOCKET_PATH, "server admin API").await,
            Cmd::Debug(c) => {
                crate::debug::exec(
                    c,
                    crate::debug::Side::Server,
                    DEFAULT_SOCKET_PATH,
                    "server admin API",
                )
                .await
            }
        }
    }))
}
