//! `run`, `validate` and `healthcheck`.

use super::{Output, SocketArg};
use crate::common::init_logging;
use anyhow::{Result, anyhow};
use clap::Args;
use ironpact_proto::health::v1::HealthCheckRequest;
use ironpact_proto::health::v1::health_check_response::ServingStatus;
use ironpact_proto::health::v1::health_client::HealthClient;
use ironpact_server::config::{LogFormat, Overrides, ServerConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Path to the server configuration file.
    #[arg(long = "config", default_value = "conf/server/server.conf")]
    config: PathBuf,
    /// Directory for the server's data (overrides server.data_dir).
    #[arg(long = "dataDir", visible_alias = "data-dir")]
    data_dir: Option<String>,
    /// Path of the admin API socket (overrides server.socket_path).
    #[arg(long = "socketPath", visible_alias = "socket-path")]
    socket_path: Option<String>,
    /// IP address to bind the agent API to (overrides server.bind_address).
    #[arg(long = "bindAddress", visible_alias = "bind-address")]
    bind_address: Option<String>,
    /// Port of the agent API (overrides server.bind_port).
    #[arg(long = "serverPort", visible_alias = "server-port")]
    server_port: Option<u16>,
    /// Trust domain (overrides server.trust_domain).
    #[arg(long = "trustDomain", visible_alias = "trust-domain")]
    trust_domain: Option<String>,
    /// DEBUG, INFO, WARN or ERROR (overrides server.log_level).
    #[arg(long = "logLevel", visible_alias = "log-level")]
    log_level: Option<String>,
    /// text or json (overrides server.log_format).
    #[arg(long = "logFormat", visible_alias = "log-format")]
    log_format: Option<String>,
    /// Append the log to this file instead of stderr (overrides server.log_file).
    #[arg(long = "logFile", visible_alias = "log-file")]
    log_file: Option<String>,
    /// Expand $VAR and ${VAR} in the config file from the environment.
    #[arg(long = "expandEnv", visible_alias = "expand-env")]
    expand_env: bool,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Path to the server configuration file.
    #[arg(long = "config", default_value = "conf/server/server.conf")]
    config: PathBuf,
    /// Expand $VAR and ${VAR} in the config file from the environment.
    #[arg(long = "expandEnv", visible_alias = "expand-env")]
    expand_env: bool,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    flags: crate::common::HealthFlags,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

pub fn run(a: RunArgs) -> Result<()> {
    let ov = Overrides {
        data_dir: a.data_dir,
        socket_path: a.socket_path,
        bind_address: a.bind_address,
        server_port: a.server_port,
        trust_domain: a.trust_domain,
        log_level: a.log_level,
        log_format: a.log_format,
        log_file: a.log_file,
    };
    let cfg = ServerConfig::load(&a.config, a.expand_env, &ov)?;
    let ov = ov.clone();
    init_logging(
        &cfg.log_level,
        cfg.log_format == LogFormat::Json,
        cfg.log_file.as_deref(),
        cfg.log_source_location,
    )?;
    tracing::info!(config = %a.config.display(), trust_domain = %cfg.trust_domain, data_dir = %cfg.data_dir.display(), "starting ironpact-server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (path, expand) = (a.config.clone(), a.expand_env);
    let reload: ironpact_server::run::Reload =
        Box::new(move || ServerConfig::load(&path, expand, &ov));
    rt.block_on(ironpact_server::run::run_with_reload(
        cfg,
        crate::common::shutdown_signal(),
        Some(reload),
    ))?;
    Ok(())
}

pub fn validate(a: ValidateArgs) -> Result<()> {
    let cfg = crate::common::validate_file(&a.config, |file, text| {
        ServerConfig::parse(file, text, a.expand_env, &Overrides::default())
    })?;
    let warnings = cfg.warnings();
    // the attestors are built as `run` builds them: the files they read must be there
    ironpact_server::run::build_attestors(&cfg, None)
        .map_err(|e| anyhow!("{e} ({})", a.config.display()))?;
    // and the upstream CA's files, as `run` reads them
    if let Some(u) = &cfg.upstream {
        ironpact_server::ca::Upstream::load(
            &u.cert_file,
            &u.key_file,
            u.bundle_file.as_deref(),
            ironpact_spiffe::clock::process_clock().now(),
        )
            .map_err(|e| {
                anyhow!(
                    "UpstreamAuthority \"disk\": {e} (fix cert_file_path, key_file_path or bundle_file_path in {})",
                    a.config.display()
                )
            })?;
    }
    if a.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"valid": true, "warnings": warnings})
        );
        return Ok(());
    }
    for w in warnings {
        eprintln!("Warning: {w}");
    }
    println!("ironpact server configuration file is valid.");
    Ok(())
}

pub async fn healthcheck(a: HealthArgs) -> Result<()> {
    crate::common::healthcheck_loop(
        &a.flags,
        ("server", &a.socket.socket_path),
        a.output == Output::Json,
        || check_once(&a),
    )
    .await
}

async fn check_once(a: &HealthArgs) -> Result<()> {
    let ch = a
        .socket
        .channel()
        .await
        .map_err(|e| anyhow!("server is unhealthy: {e:#}"))?;
    if !a.flags.shallow {
        let r = HealthClient::new(ch)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|s| anyhow!("server is unhealthy: {}", s.message()))?;
        if r.get_ref().status != ServingStatus::Serving as i32 {
            return Err(anyhow!(
                "server is unhealthy: its datastore or CA is not ready (see the server log)"
            ));
        }
    }
    Ok(())
}
