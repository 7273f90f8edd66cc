//! `logger get|set|reset` on a running server or agent (SPIRE's commands): the process's log
//! level, through its admin socket.

use crate::server::Output;
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use ironpact_proto::logger::v1 as pb;
use ironpact_proto::logger::v1::logger_service_client::LoggerServiceClient;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum LoggerCmd {
    /// Prints the current log level and the one the process started with.
    Get(LoggerArgs),
    /// Sets the log level until the next `logger reset` or restart.
    Set(SetArgs),
    /// Puts the log level back to the one the process started with.
    Reset(LoggerArgs),
}

#[derive(Args, Debug)]
pub struct LoggerArgs {
    /// Path to the process's admin socket.
    #[arg(long = "socketPath", visible_alias = "socket-path")]
    socket_path: Option<PathBuf>,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The new level: debug, info, warn or error.
    #[arg(long = "level")]
    level: Option<String>,
    #[command(flatten)]
    common: LoggerArgs,
}

/// Runs a logger command against the admin socket at `-socketPath`, or `default` (`what`
/// names the process for messages).
pub async fn exec(cmd: LoggerCmd, default: &str, what: &str) -> Result<()> {
    let (args, call) = match &cmd {
        LoggerCmd::Get(a) => (a, 0),
        LoggerCmd::Set(s) => (&s.common, 1),
        LoggerCmd::Reset(a) => (a, 2),
    };
    let path = args
        .socket_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(default));
    let ch = crate::common::connect_uds(&path, what, "-socketPath").await?;
    let mut c = LoggerServiceClient::new(ch);
    let r = match call {
        0 => c.get_logger(pb::GetLoggerRequest {}).await,
        1 => {
            let level = match &cmd {
                LoggerCmd::Set(s) => s.level.clone(),
                _ => None,
            }
            .ok_or_else(|| anyhow!("the level is required: pass -level debug|info|warn|error"))?;
            c.set_log_level(pb::SetLogLevelRequest { new_level: level })
                .await
        }
        _ => c.reset_log_level(pb::ResetLogLevelRequest {}).await,
    }
    .map_err(crate::common::status_err)?
    .into_inner();
    match args.output {
        Output::Json => crate::protojson::print(
            &serde_json::json!({"current_level": r.current_level, "launch_level": r.launch_level}),
        ),
        Output::Pretty => println!(
            "Logger Level : {}\nLaunch Level : {}",
            r.current_level.to_ascii_lowercase(),
            r.launch_level.to_ascii_lowercase()
        ),
    }
    Ok(())
}
