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

/// Whether `name` is one of the files the helper writes (`svid.N.pem`, `svid.N.key`,
/// `bundle.N.pem`, `federated_bundle.N.M.pem`).
fn ours(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["svid", n, "pem" | "key"] | ["bundle", n, "pem"] => digits(n),
        ["federated_bundle", n, m, "pem"] => digits(n) && digits(m),
        _ => false,
    }
}

/// Temporary copies a crash may have left (`.svid.0.key.<random>.tmp`: a private key too).
fn remove_leftovers(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"))
            && inner.rsplit_once('.').is_some_and(|(f, _)| ours(f))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes the set of files of `resp` when any differs from what is on disk: every new
/// content goes to a temporary file first (created new, never through a link), then all are
/// renamed into place and the directory synced, so a failure part-way leaves the old set
/// whole. Files of an earlier set that this one no longer has (an SVID or a federated bundle
/// gone) are removed. Whether anything changed.
pub(super) fn write_set(dir: &Path, resp: &pb::X509svidResponse) -> Result<bool> {
    let files = files_of(resp)?;
    let wanted: std::collections::HashSet<&str> = files.iter().map(|f| f.0.as_str()).collect();
    let stale: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| ours(n) && !wanted.contains(n.as_str()))
        .map(|n| dir.join(n))
        .collect();
    let changed: Vec<&(String, Vec<u8>, u32)> = files
        .iter()
        .filter(|(name, data, _)| !std::fs::read(dir.join(name)).is_ok_and(|old| old == *data))
        .collect();
    if changed.is_empty() && stale.is_empty() {
        return Ok(false);
    }
    let mut staged = Vec::new();
    for (name, data, mode) in &changed {
        match crate::common::stage_file(&dir.join(name), data, *mode) {
            Ok(tmp) => staged.push((tmp, dir.join(name))),
            Err(e) => {
                for (tmp, _) in &staged {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e);
            }
        }
    }
    for (tmp, path) in &staged {
        std::fs::rename(tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    for p in &stale {
        let _ = std::fs::remove_file(p);
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(true)
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

/// The program the helper runs, in its own process group; dropped, the group is sent
/// SIGTERM (the helper ending on an error must not leave it behind).
struct Program(Child);

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

fn spawn(cmd: &str) -> Result<Program> {
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
    Ok(Program(child))
}

/// Stops the program's process group: SIGTERM, then SIGKILL after 10 s.
async fn stop(p: &mut Program) {
    let child = &mut p.0;
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

/// The PID a daemon wrote to `path` (a positive number other than 1). The file is read only
/// if no one but this user or root could have written it (owned by one of them, not group- or
/// world-writable, not a link): otherwise anyone able to write it could make the helper
/// signal any process.
fn read_pid(path: &Path) -> Result<i32> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot read the PID file {}", path.display()))?;
    let m = f.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if (m.uid() != me && m.uid() != 0) || m.mode() & 0o022 != 0 {
        bail!(
            "the PID file {} is owned by uid {} or writable by others: not trusted (it must be this user's or root's, mode 644 or stricter)",
            path.display(),
            m.uid()
        );
    }
    let mut text = String::new();
    f.by_ref()
        .take(64)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the PID file {}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        _ => bail!("{} holds no PID: {:?}", path.display(), text.trim()),
    }
}

async fn child_exit(child: &mut Option<Program>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.0.wait().await,
        None => std::future::pending().await,
    }
}

/// How the wait for something to happen ended.
enum Event {
    Stop,
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// Runs until SIGTERM, SIGINT or SIGHUP, or until the program it runs exits on its own (an
/// error).
pub async fn watch(socket: &super::SocketArg, dir: &Path, reload: Reload) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    prepare_dir(dir)?;
    remove_leftovers(dir);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut child: Option<Program> = None;
    let mut backoff = Duration::from_millis(500);
    log(format!(
        "keeping {} current from {}",
        dir.display(),
        socket.socket_path.display()
    ));
    // what ends the helper, whatever it is waiting for
    macro_rules! or_stop {
        ($fut:expr) => {
            tokio::select! {
                r = $fut => Ok(r),
                _ = term.recv() => Err(Event::Stop),
                _ = int.recv() => Err(Event::Stop),
                _ = hup.recv() => Err(Event::Stop),
                s = child_exit(&mut child) => Err(Event::Exited(s)),
            }
        };
    }
    let end = 'outer: loop {
        // (re)open the stream; the program and the files stay as they are meanwhile
        let opened = async {
            let mut c = super::client(socket).await?;
            x509_stream(&mut c).await.map_err(super::status)
        };
        let mut stream = match or_stop!(opened) {
            Err(ev) => break ev,
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log(format!("no SVID stream: {e:#}; again in {backoff:?}"));
                if let Err(ev) = or_stop!(tokio::time::sleep(backoff)) {
                    break ev;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        loop {
            let m = match or_stop!(stream.message()) {
                Err(ev) => break 'outer ev,
                Ok(m) => m,
            };
            let resp = match m {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    log("the agent closed the stream; opening it again");
                    break;
                }
                Err(st) => {
                    log(format!(
                        "the stream ended: {} ({:?}); opening it again in {backoff:?}",
                        st.message(),
                        st.code()
                    ));
                    if let Err(ev) = or_stop!(tokio::time::sleep(backoff)) {
                        break 'outer ev;
                    }
                    break;
                }
            };
            backoff = Duration::from_millis(500);
            match write_set(dir, &resp) {
                Ok(true) => {
                    log(format!("wrote {}", summary(&resp)));
                    after_change(&reload, &mut child).await?;
                }
                // the files on disk are current (a restarted helper): the program still has
                // to be started
                Ok(false) => {
                    if child.is_none() && reload.command().is_some() {
                        after_change(&reload, &mut child).await?;
                    }
                }
                // the old set stays whole; the stream is opened again, which resends it
                Err(e) => {
                    log(format!(
                        "writing the files failed: {e:#}; the previous files stay, trying again in {backoff:?}"
                    ));
                    if let Err(ev) = or_stop!(tokio::time::sleep(backoff)) {
                        break 'outer ev;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    break;
                }
            }
        }
    };
    match end {
        Event::Stop => shutdown(&mut child).await,
        Event::Exited(s) => {
            // what it started in its group (a daemon that forked) goes with it
            if let Some(p) = child.as_mut() {
                stop(p).await;
            }
            exited(&reload, s)
        }
    }
}

async fn after_change(reload: &Reload, child: &mut Option<Program>) -> Result<()> {
    match reload {
        Reload::Nothing => {}
        Reload::Restart(cmd) => {
            if let Some(c) = child.as_mut() {
                log(format!("restarting {cmd:?} on the new files"));
                stop(c).await;
            }
            *child = Some(spawn(cmd)?);
        }
        Reload::SignalChild(cmd, sig) => match child.as_ref().and_then(|p| p.0.id()) {
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

async fn shutdown(child: &mut Option<Program>) -> Result<()> {
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
            "{cmd:?} exited on its own ({st}): the helper stops with it (run the program in the foreground, e.g. nginx -g 'daemon off;'); check the program's output"
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
    fn only_the_helpers_own_files_are_removed() {
        for n in [
            "svid.0.pem",
            "svid.12.key",
            "bundle.3.pem",
            "federated_bundle.0.1.pem",
        ] {
            assert!(ours(n), "{n}");
        }
        for n in [
            "nginx.conf",
            "svid.pem",
            "svid.a.key",
            "bundle.0.crt",
            ".svid.0.key",
        ] {
            assert!(!ours(n), "{n}");
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(".svid.0.key.00ff.tmp"), "k").unwrap();
        std::fs::write(t.path().join(".nginx.conf.00ff.tmp"), "c").unwrap();
        remove_leftovers(t.path());
        assert!(!t.path().join(".svid.0.key.00ff.tmp").exists());
        assert!(t.path().join(".nginx.conf.00ff.tmp").exists());
    }

    #[test]
    fn a_pid_file_others_could_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.pid");
        std::fs::write(&p, "4242\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_pid(&p).unwrap(), 4242);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            read_pid(&p)
                .unwrap_err()
                .to_string()
                .contains("not trusted")
        );
        let link = t.path().join("link.pid");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read_pid(&link).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&p, "1").unwrap();
        assert!(read_pid(&p).is_err());
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
