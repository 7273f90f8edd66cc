//! `api fetch x509 -write DIR -watch`: keeps a program that knows nothing of SPIFFE (nginx,
//! openssl, a database) on current SVID files, as spiffe-helper does for SPIRE users.
//!
//! It holds a FetchX509SVID stream open (the agent pushes every rotation; nothing polls),
//! replaces the files atomically when their content changes, and then restarts the program it
//! runs (`-exec CMD`), signals it (`-exec CMD -signal SIG`), or signals the process whose PID
//! a file holds (`-signal SIG -pidFile F`: a daemon such as nginx started by its service
//! manager). While the agent is away the files and the program stay as they are, and the
//! stream is opened again with a backoff. The helper stops when its program exits on its own
//! (its service manager sees that) and on SIGTERM/SIGINT, stopping the program too.

use super::{pem_of, split_ders, x509_stream};
use crate::common::write_file;
use anyhow::{Context, Result, anyhow, bail};
use ironpact_proto::workload as pb;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};

/// What to do after the files changed.
#[derive(Debug, Clone)]
pub enum Reload {
    /// Only keep the files current.
    Nothing,
    /// Run CMD (with `sh -c`), restart it on each change.
    Restart(String),
    /// Run CMD, send it SIG on each change.
    SignalChild(String, Signal),
    /// Send SIG to the PID in the file on each change.
    SignalPidFile(PathBuf, Signal),
}

impl Reload {
    /// From the flags: `-exec`, `-signal` and `-pidFile` as the helper combines them.
    pub fn from_flags(
        exec: Option<String>,
        signal: Option<String>,
        pid_file: Option<PathBuf>,
    ) -> Result<Self> {
        let sig = signal.as_deref().map(parse_signal).transpose()?;
        Ok(match (exec, sig, pid_file) {
            (None, None, None) => Reload::Nothing,
            (Some(c), None, None) => Reload::Restart(c),
            (Some(c), Some(s), None) => Reload::SignalChild(c, s),
            (None, Some(s), Some(p)) => Reload::SignalPidFile(p, s),
            (Some(_), _, Some(_)) => {
                bail!(
                    "-exec and -pidFile exclude each other: -exec runs the program, -pidFile names one started elsewhere"
                )
            }
            (None, Some(_), None) => {
                bail!("-signal needs the process to signal: add -pidFile FILE, or -exec CMD")
            }
            (None, None, Some(_)) => bail!("-pidFile goes with -signal SIG (e.g. -signal HUP)"),
        })
    }

    fn command(&self) -> Option<&str> {
        match self {
            Reload::Restart(c) | Reload::SignalChild(c, _) => Some(c),
            _ => None,
        }
    }
}

/// `HUP`, `SIGHUP` or `1`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let t = s.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("-signal {s}: no such signal number"));
    }
    let name = if t.starts_with("SIG") {
        t
    } else {
        format!("SIG{t}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow!("-signal {s}: not a signal name (HUP, USR1, TERM, …)"))
}

fn log(msg: impl std::fmt::Display) {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    eprintln!("{now} fetch x509 -watch: {msg}");
}

/// The directory the files go to: created 0700 when missing; an existing one must be this
/// user's and not writable by others (who could otherwise swap the files a server trusts).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::symlink_metadata(dir) {
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display())),
        Ok(m) if !m.is_dir() => bail!(
            "{} is not a directory: give -write a directory",
            dir.display()
        ),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => bail!(
            "{} is owned by uid {}, not by this user: use a directory of your own for -write",
            dir.display(),
            m.uid()
        ),
        Ok(m) if m.mode() & 0o022 != 0 => bail!(
            "{} is writable by other users, who could replace the files: chmod go-w it, or use another directory",
            dir.display()
        ),
        Ok(_) => Ok(()),
    }
}

/// The files of one response: (name, content, mode).
pub fn files_of(resp: &pb::X509svidResponse) -> Result<Vec<(String, Vec<u8>, u32)>> {
    let mut out = Vec::new();
    for (i, s) in resp.svids.iter().enumerate() {
        out.push((
            format!("svid.{i}.pem"),
            pem_of(&split_ders(&s.x509_svid)?).into_bytes(),
            0o644,
        ));
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone()));
        out.push((format!("svid.{i}.key"), key.into_bytes(), 0o600));
        out.push((
            format!("bundle.{i}.pem"),
            pem_of(&split_ders(&s.bundle)?).into_bytes(),
            0o644,
        ));
        let mut fed: Vec<_> = resp.federated_bundles.iter().collect();
        fed.sort();
        for (j, (_, ders)) in fed.iter().enumerate() {
            out.push((
                format!("federated_bundle.{i}.{j}.pem"),
                pem_of(&split_ders(ders)?).into_bytes(),
                0o644,
            ));
        }
    }
    Ok(out)
}

/// Writes the files whose content differs from what is on disk (each replaced atomically);
/// whether any did.
fn write_changed(dir: &Path, resp: &pb::X509svidResponse) -> Result<bool> {
    let mut changed = false;
    for (name, data, mode) in files_of(resp)? {
        let path = dir.join(&name);
        if std::fs::read(&path).is_ok_and(|old| old == data) {
            continue;
        }
        write_file(&path, &data, mode)?;
        changed = true;
    }
    Ok(changed)
}

fn summary(resp: &pb::X509svidResponse) -> String {
    resp.svids
        .first()
        .and_then(|s| split_ders(&s.x509_svid).ok())
        .and_then(|c| c.first().cloned())
        .and_then(|leaf| ironpact_spiffe::x509::CertInfo::parse(&leaf).ok())
        .map(|i| {
            format!(
                "{} (serial {}, valid until {})",
                i.uri_sans.first().cloned().unwrap_or_default(),
                i.serial_hex,
                crate::common::fmt_time(i.not_after)
            )
        })
        .unwrap_or_else(|| "no SVID".into())
}

fn spawn(cmd: &str) -> Result<Child> {
    // its own process group: a restart stops the program and whatever it started
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    log(format!(
        "started {cmd:?} (pid {})",
        child.id().unwrap_or_default()
    ));
    Ok(child)
}

/// Stops the program's process group: SIGTERM, then SIGKILL after 10 s.
async fn stop(child: &mut Child) {
    let Some(pid) = child.id() else { return };
    let pgid = Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        log(format!("pid {pid} did not stop within 10 s: killing it"));
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

fn signal_pid(pid: i32, sig: Signal, what: &str) {
    match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) => log(format!("sent {sig} to {what} (pid {pid})")),
        Err(e) => log(format!("could not send {sig} to {what} (pid {pid}): {e}")),
    }
}

/// The PID a daemon wrote to `path` (a positive number other than 1).
fn read_pid(path: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the PID file {}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        _ => bail!("{} holds no PID: {:?}", path.display(), text.trim()),
    }
}

async fn child_exit(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Runs until SIGTERM/SIGINT, or until the program it runs exits on its own (an error).
pub async fn watch(socket: &super::SocketArg, dir: &Path, reload: Reload) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    prepare_dir(dir)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut child: Option<Child> = None;
    let mut backoff = Duration::from_millis(500);
    log(format!(
        "keeping {} current from {}",
        dir.display(),
        socket.socket_path.display()
    ));
    loop {
        // (re)open the stream; the program and the files stay as they are meanwhile
        let opened = async {
            let mut c = super::client(socket).await?;
            x509_stream(&mut c).await.map_err(super::status)
        };
        let mut stream = tokio::select! {
            r = opened => match r {
                Ok(s) => s,
                Err(e) => {
                    log(format!("no SVID stream: {e:#}; again in {backoff:?}"));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = term.recv() => return shutdown(&mut child).await,
                        _ = int.recv() => return shutdown(&mut child).await,
                        s = child_exit(&mut child) => return exited(&reload, s),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
            _ = term.recv() => return shutdown(&mut child).await,
            _ = int.recv() => return shutdown(&mut child).await,
        };
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(resp)) => {
                        backoff = Duration::from_millis(500);
                        if !write_changed(dir, &resp)? {
                            continue;
                        }
                        log(format!("wrote {}", summary(&resp)));
                        after_change(&reload, &mut child).await?;
                    }
                    Ok(None) => {
                        log("the agent closed the stream; opening it again");
                        break;
                    }
                    Err(st) => {
                        log(format!("the stream ended: {} ({:?}); opening it again", st.message(), st.code()));
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                },
                _ = term.recv() => return shutdown(&mut child).await,
                _ = int.recv() => return shutdown(&mut child).await,
                s = child_exit(&mut child) => return exited(&reload, s),
            }
        }
    }
}

async fn after_change(reload: &Reload, child: &mut Option<Child>) -> Result<()> {
    match reload {
        Reload::Nothing => {}
        Reload::Restart(cmd) => {
            if let Some(c) = child.as_mut() {
                log(format!("restarting {cmd:?} on the new files"));
                stop(c).await;
            }
            *child = Some(spawn(cmd)?);
        }
        Reload::SignalChild(cmd, sig) => match child.as_ref().and_then(Child::id) {
            Some(pid) => signal_pid(pid as i32, *sig, cmd),
            None => *child = Some(spawn(cmd)?),
        },
        Reload::SignalPidFile(path, sig) => match read_pid(path) {
            Ok(pid) => signal_pid(pid, *sig, &path.display().to_string()),
            // the daemon may not have started yet: it reads the current files when it does
            Err(e) => log(format!("{e:#}: nothing signalled")),
        },
    }
    Ok(())
}

async fn shutdown(child: &mut Option<Child>) -> Result<()> {
    if let Some(c) = child.as_mut() {
        log("stopping: stopping the program too");
        stop(c).await;
    } else {
        log("stopping");
    }
    Ok(())
}

fn exited(reload: &Reload, s: std::io::Result<std::process::ExitStatus>) -> Result<()> {
    let cmd = reload.command().unwrap_or_default();
    match s {
        Ok(st) => Err(anyhow!(
            "{cmd:?} exited on its own ({st}): the helper stops with it; check the program's output"
        )),
        Err(e) => Err(anyhow!("waiting for {cmd:?} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_combine_as_documented() {
        assert!(matches!(
            Reload::from_flags(None, None, None).unwrap(),
            Reload::Nothing
        ));
        assert!(matches!(
            Reload::from_flags(Some("nginx".into()), None, None).unwrap(),
            Reload::Restart(_)
        ));
        assert!(matches!(
            Reload::from_flags(Some("nginx".into()), Some("hup".into()), None).unwrap(),
            Reload::SignalChild(_, Signal::SIGHUP)
        ));
        assert!(matches!(
            Reload::from_flags(None, Some("SIGUSR1".into()), Some("/run/x.pid".into())).unwrap(),
            Reload::SignalPidFile(_, Signal::SIGUSR1)
        ));
        let e = Reload::from_flags(None, Some("HUP".into()), None).unwrap_err();
        assert!(e.to_string().contains("-pidFile"), "{e}");
        let e = Reload::from_flags(Some("x".into()), None, Some("/p".into())).unwrap_err();
        assert!(e.to_string().contains("exclude"), "{e}");
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(parse_signal("1").unwrap(), Signal::SIGHUP);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("svids");
        prepare_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_dir(&d).unwrap_err();
        assert!(e.to_string().contains("writable by other users"), "{e}");
    }
}
