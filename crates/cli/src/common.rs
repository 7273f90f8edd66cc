//! Shared CLI plumbing: connecting to an admin socket, gRPC errors as one-line messages,
//! TTL parsing, logging set-up and output helpers.

use anyhow::{Context, Result, anyhow};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to a gRPC server on a Unix socket.
pub async fn connect_uds(path: &Path, what: &str, flag_hint: &str) -> Result<Channel> {
    let p: PathBuf = path.to_path_buf();
    Endpoint::try_from("http://localhost")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.to_string());
            anyhow!(
                "cannot reach the {what} at {}: {cause}; is it running? If it listens elsewhere, pass {flag_hint}",
                path.display()
            )
        })
}

/// A gRPC status as one line: the server's message and the code.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    let msg = s.message().trim();
    anyhow!(
        "{} ({:?})",
        if msg.is_empty() {
            "request failed"
        } else {
            msg
        },
        s.code()
    )
}

/// Parses a TTL: whole seconds (`3600`, as SPIRE's flags take) or a Go duration (`1h`).
pub fn parse_ttl(flag: &str, raw: &str) -> Result<i32> {
    let secs = parse_duration(flag, raw)?.as_secs();
    i32::try_from(secs).map_err(|_| anyhow!("{flag} {raw:?} is too large"))
}

/// Parses a wait or timeout: whole seconds (`5`) or a Go duration (`1s`, `500ms`).
pub fn parse_duration(flag: &str, raw: &str) -> Result<std::time::Duration> {
    if raw.bytes().all(|b| b.is_ascii_digit()) && !raw.is_empty() {
        let secs = raw
            .parse::<u64>()
            .map_err(|e| anyhow!("{flag} {raw:?}: {e}"))?;
        return Ok(std::time::Duration::from_secs(secs));
    }
    ironpact_spiffe::duration::parse(raw)
        .map_err(|e| anyhow!("{flag}: {e}; give seconds (5) or a duration (5s, 500ms)"))
}

/// `healthcheck`'s flags, the same on server and agent (SPIRE's, and `-wait`).
#[derive(clap::Args, Debug)]
pub struct HealthFlags {
    /// Only check that the process answers, not that it is ready to serve.
    #[arg(long = "shallow")]
    pub shallow: bool,
    /// Print what is checked.
    #[arg(long = "verbose")]
    pub verbose: bool,
    /// Keep checking for up to this long (a duration such as 30s) until healthy: for scripts
    /// that start a process and go on once it serves.
    #[arg(long = "wait")]
    pub wait: Option<String>,
}

/// Runs `check` once, or (with `-wait`) every 200 ms until it passes or the wait is over;
/// then prints `healthy` (or `{"healthy": true}`). `what` names the process and its socket.
pub async fn healthcheck_loop<F, Fut>(
    flags: &HealthFlags,
    what: (&str, &Path),
    json: bool,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let wait = match &flags.wait {
        Some(w) => parse_duration("-wait", w)?,
        None => std::time::Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + wait;
    if flags.verbose {
        println!("Checking {} health at {}...", what.0, what.1.display());
    }
    loop {
        match check().await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    if json {
        println!("{}", serde_json::json!({"healthy": true}));
    } else {
        let mut name = what.0.to_string();
        if let Some(f) = name.get_mut(..1) {
            f.make_ascii_uppercase();
        }
        println!("{name} is healthy.");
    }
    Ok(())
}

/// Unix seconds as `2026-11-23 03:00:00 +0000 UTC`, like SPIRE's CLI.
pub fn fmt_time(unix: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Initialises tracing at `level` (`debug`, `info`, …) as text or JSON, on stderr or appended
/// to `file` (created 0640; a symlink there is refused); `source` adds each line's source file
/// and line. The level can then be changed at runtime through the admin socket's logger
/// service (`logger set`); RUST_LOG, when set, wins at start.
pub fn init_logging(level: &str, json: bool, file: Option<&Path>, source: bool) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, reload};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives(level)));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_file(source)
        .with_line_number(source);
    let output = match file {
        Some(path) => {
            let f = open_log_file(path)?;
            let fmt = fmt.with_ansi(false).with_writer(std::sync::Mutex::new(f));
            if json {
                fmt.json().boxed()
            } else {
                fmt.boxed()
            }
        }
        None => {
            // colour codes only for a person at a terminal, never into a pipe
            let fmt = fmt
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr);
            if json {
                fmt.json().boxed()
            } else {
                fmt.boxed()
            }
        }
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    ironpact_proto::logger::install(Box::new(LevelControl {
        handle,
        launch: level.to_ascii_lowercase(),
        current: std::sync::Mutex::new(level.to_ascii_lowercase()),
    }));
    Ok(())
}

/// The filter for `level`, with the chatty transport crates held at WARN.
fn directives(level: &str) -> String {
    format!("{level},h2=warn,tower=warn,hyper=warn,sqlx=warn")
}

/// `logger set|reset` on a running process: swaps the subscriber's filter.
struct LevelControl {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    launch: String,
    current: std::sync::Mutex<String>,
}

impl ironpact_proto::logger::LogControl for LevelControl {
    fn current(&self) -> String {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|_| self.launch.clone())
    }

    fn launch(&self) -> String {
        self.launch.clone()
    }

    fn set(&self, level: &str) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::new(directives(level));
        self.handle
            .modify(|f| *f = filter)
            .map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.current.lock() {
            *c = level.to_string();
        }
        tracing::warn!(level, "log level changed");
        Ok(())
    }
}

/// The log file, appended to: created 0640; it must be a regular file of this user (not a
/// symlink, FIFO or device, nor someone else's), and is narrowed to 0640 if others could write
/// (and so forge lines in) it.
fn open_log_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::ELOOP) {
                "it is a symbolic link: point log_file (-logFile) at the file itself".to_string()
            } else {
                format!("{e}: create its directory, or pick another log_file (-logFile)")
            };
            anyhow::anyhow!("cannot open the log file {}: {why}", path.display())
        })?;
    let m = f.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.is_file() || m.uid() != me {
        anyhow::bail!(
            "the log file {} is not a regular file of this user (uid {me}): remove it, or pick another log_file (-logFile)",
            path.display()
        );
    }
    if m.mode() & 0o137 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    }
    Ok(f)
}

/// Writes a file with the given mode, replacing it atomically.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = stage_file(path, data, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Writes `data` (with `mode`, synced) to a new temporary file beside `path` and returns its
/// name, for the caller to rename over `path`. A fresh name, created new and never through a
/// link: nothing planted in the directory beforehand (a symlink named like our temporary file)
/// can receive a private key. On failure nothing is left behind.
pub fn stage_file(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = f.write_all(data).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
    }
    Ok(tmp)
}

/// Runs a CLI body and turns its outcome into an exit code, printing errors on one line.
pub fn finish(r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // one line, unless it is a list meant to be read line by line
            let msg = match e.downcast_ref::<Report>() {
                Some(r) => r.0.clone(),
                None => format!("{e:#}").replace('\n', " "),
            };
            eprintln!("Error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses argv (after SPIRE's single-dash rewrite); help and version exit 0, errors print one
/// line and exit 1. A command group given no subcommand (the bare binary, `entry`) prints its
/// help and exits 1.
pub fn parse_args<T: clap::Parser>() -> Result<T, std::process::ExitCode> {
    use clap::error::ErrorKind;
    let argv = crate::spire_argv(std::env::args());
    let parsed = help_on_bare_groups(T::command())
        .try_get_matches_from(argv)
        .and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(c) => Ok(c),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp) => {
            print!("{}", spire_help(&e.render().to_string()));
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e) if matches!(e.kind(), ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            eprint!("{}", spire_help(&e.render().to_string()));
            Err(std::process::ExitCode::FAILURE)
        }
        Err(e) => {
            // clap's own message names the flag; keep it to one line plus the usage hint.
            let text = spire_help(&e.render().to_string());
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("Error: {first} (see -h for usage)");
            Err(std::process::ExitCode::FAILURE)
        }
    }
}

/// Every command that only groups subcommands prints its help when given none.
pub fn help_on_bare_groups(cmd: clap::Command) -> clap::Command {
    // (a command that also runs without a subcommand, as `api fetch`, is not a bare group)
    let cmd = if cmd.has_subcommands() && !cmd.is_args_conflicts_with_subcommands_set() {
        cmd.arg_required_else_help(true)
    } else {
        cmd
    };
    cmd.mut_subcommands(help_on_bare_groups)
}

/// How flags are spelled in help, as in SPIRE's docs and ours.
const SPELLING: &str = "Flags take one dash or two (-spiffeID, --spiffeID); the kebab-case aliases take two (--spiffe-id).";

/// clap's help with flags spelled as SPIRE's docs and ours write them: `--spiffeID` becomes
/// `-spiffeID`; kebab-case aliases (`--spiffe-id`) keep their two dashes; a note on the
/// spellings ends a help page.
pub fn spire_help(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + SPELLING.len() + 2);
    let mut i = 0;
    while i < b.len() {
        let flag_start = b[i] == b'-'
            && b.get(i + 1) == Some(&b'-')
            && b.get(i + 2).is_some_and(u8::is_ascii_alphabetic)
            && (i == 0 || matches!(b[i - 1], b' ' | b'[' | b'(' | b',' | b'`' | b'\'' | b'\n'));
        if flag_start {
            let end = (i + 2..b.len())
                .find(|&j| !(b[j].is_ascii_alphanumeric() || b[j] == b'-'))
                .unwrap_or(b.len());
            let name = &text[i + 2..end];
            out.push_str(if name.contains('-') { "--" } else { "-" });
            out.push_str(name);
            i = end;
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    if text.contains("Options:") {
        out = format!("{}\n\n{SPELLING}\n", out.trim_end());
    }
    out
}

/// For the short-lived commands (everything but `run`): a closed stdout (`… | head`) ends the
/// process quietly, as it does any Unix tool, instead of a panic with exit code 101. Rust
/// ignores SIGPIPE so that servers see EPIPE as an error; `run` keeps that.
pub fn quiet_on_closed_pipe() {
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is the
    // default disposition every process starts with.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
}

/// Resolves on SIGINT or SIGTERM, logging which.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("terminated; shutting down"),
    }
}

/// Reads a configuration file as `validate` does: every problem at once (see
/// `hcl::all_problems`), each with its file:line and fix, or the configuration.
pub fn validate_file<T>(
    path: &std::path::Path,
    parse: impl Fn(&str, &str) -> Result<T, ironpact_config::hcl::ConfigError>,
) -> Result<T> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!("{file}: cannot read the config file: {e} (pass its path with -config)")
    })?;
    let (mut problems, complete) =
        ironpact_config::hcl::all_problems(&file, &text, |t| parse(&file, t));
    match problems.len() {
        0 => parse(&file, &text).map_err(Into::into),
        1 => Err(problems.remove(0).into()),
        n => {
            problems.sort_by_key(|p| p.line);
            let mut msg = format!("{file}: {n} problems, each below with its line and the fix:");
            for p in &problems {
                msg.push_str(&format!("\n  {p}"));
            }
            if !complete {
                msg.push_str(
                    "\n  (later checks depend on these: run validate again once they are fixed)",
                );
            }
            Err(Report(msg).into())
        }
    }
}

/// An error printed as written, one item per line (the first line says what it is).
#[derive(Debug)]
pub struct Report(pub String);

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Report {}
