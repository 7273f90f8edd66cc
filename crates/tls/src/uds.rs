//! Binding the Unix sockets of the server and agent (admin API, Workload API) without trusting
//! what another local user may have prepared: the socket's directory is created by us, or must
//! already be ours and not writable by anyone else (nor may any directory above it let another
//! user rename it away); a socket that answers belongs to a live process and is never removed.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Why a socket could not be bound; each message names the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    #[error(
        "{dir} is owned by uid {owner}, not by this process (uid {me}): another user could replace the socket; remove the directory or choose another socket path"
    )]
    ForeignDirectory { dir: String, owner: u32, me: u32 },
    #[error(
        "{dir} is writable by other users (mode {mode:o}): they could replace the socket; chmod go-w {dir} or choose another socket path"
    )]
    OpenDirectory { dir: String, mode: u32 },
    #[error("{path} exists and is not a socket: remove it or choose another socket path")]
    NotASocket { path: String },
    #[error(
        "{path} is already in use by pid {pid}: stop that process or choose another socket path"
    )]
    InUse { path: String, pid: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks `dir` (which exists) and every directory above it: `dir` must be ours and writable by
/// nobody else; an ancestor must be ours or root's, and if others may write to it, sticky (as
/// `/tmp`), so nobody else can rename what we put there.
fn check_directories(dir: &Path) -> Result<(), SocketError> {
    let me = euid();
    let canonical = std::fs::canonicalize(dir).map_err(io(dir))?;
    for (i, a) in canonical.ancestors().enumerate() {
        let own = i == 0;
        let m = std::fs::metadata(a).map_err(io(a))?;
        let mode = m.permissions().mode() & 0o7777;
        if m.uid() != me && (own || m.uid() != 0) {
            return Err(SocketError::ForeignDirectory {
                dir: a.display().to_string(),
                owner: m.uid(),
                me,
            });
        }
        if mode & 0o022 != 0 && (own || mode & 0o1000 == 0) {
            return Err(SocketError::OpenDirectory {
                dir: a.display().to_string(),
                mode,
            });
        }
    }
    Ok(())
}

/// Creates the missing directories down to `dir` as 0755, whatever the umask: they only lead
/// to the socket's own directory, which every user whose workloads connect must traverse.
fn create_parents(dir: &Path) -> Result<(), SocketError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(io(d))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(d)(e)),
        }
    }
    Ok(())
}

/// Creates `dir` with `mode` when missing (missing parents 0755), then checks it.
fn prepare_directory(dir: &Path, mode: u32) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_parents(parent)?;
            }
            match std::fs::DirBuilder::new().mode(mode).create(dir) {
                // the umask (systemd's UMask=0077, say) narrowed the mode asked for: a
                // Workload API directory must still let every user's workloads in
                Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io(dir))?,
                // another process created it meanwhile: it is checked like any existing one
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(dir)(e)),
            }
        }
        Err(e) => return Err(io(dir)(e)),
    }
    check_directories(dir)
}

/// The pid holding a connection to a live socket at `path`, or `None` when nothing answers.
fn live_owner(path: &Path) -> Option<String> {
    let s = std::os::unix::net::UnixStream::connect(path).ok()?;
    let pid = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.pid().to_string())
        .unwrap_or_else(|_| "(unknown)".into());
    Some(pid)
}

/// Binds a listening socket at `path`: its directory created with `dir_mode` (or checked, see
/// the module doc), a stale socket from a crashed run replaced, a live one refused, and the
/// socket given `socket_mode`. Must run inside a tokio runtime.
pub fn bind(
    path: &Path,
    dir_mode: u32,
    socket_mode: u32,
) -> Result<tokio::net::UnixListener, SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_directory(dir, dir_mode)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(SocketError::NotASocket {
                    path: path.display().to_string(),
                });
            }
            if let Some(pid) = live_owner(path) {
                return Err(SocketError::InUse {
                    path: path.display().to_string(),
                    pid,
                });
            }
            std::fs::remove_file(path).map_err(io(path))?;
            tracing::info!(path = %path.display(), "removed a stale socket (nothing answered on it)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let l = tokio::net::UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
        .map_err(io(path))?;
    Ok(l)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_open_directories_and_live_sockets() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("d/api.sock");
        let l = bind(&sock, 0o700, 0o600).unwrap();
        let mode = std::fs::metadata(t.path().join("d"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // a second bind while the first listens: refused, the live socket stays
        let e = bind(&sock, 0o700, 0o600).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
        drop(l);
        // a stale socket (nobody listens) is replaced
        let _l = bind(&sock, 0o700, 0o600).unwrap();
        // a group/other-writable directory is refused
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&open.join("x.sock"), 0o700, 0o600).unwrap_err();
        assert!(matches!(e, SocketError::OpenDirectory { .. }), "{e}");
        // a regular file where the socket goes is not removed
        let f = t.path().join("d/file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            bind(&f, 0o700, 0o600).unwrap_err(),
            SocketError::NotASocket { .. }
        ));
        assert!(f.exists());
    }
}
