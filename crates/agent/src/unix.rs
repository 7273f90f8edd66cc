//! The `unix` workload attestor: who is calling, from the kernel's word (SO_PEERCRED,
//! SO_PEERGROUPS) and /proc.
//!
//! The caller is pinned when it connects ([`ProcessPin`]): a pidfd for the connecting process
//! (SO_PEERPIDFD, Linux 6.5+; on older kernels its start time), the executable it ran (device
//! and inode) and its supplementary groups. Every request re-checks that the same process is
//! alive (a live process keeps its PID, so with a pidfd no other process can answer for it;
//! without one, the start time tells a reused PID apart) and that the executable read is the
//! one it ran, so a process that connects and then execs an allowed binary (leaving a child
//! holding the connection) gets nothing bound to that binary. A peer already reaped when the
//! agent pins it, or one neither a pidfd nor a start time can tell apart, gets nothing. What
//! remains: a process that execs before the agent has accepted the connection is seen as the
//! binary it exec'd (a short window).

use ironpact_spiffe::Selector;
use sha2::{Digest, Sha256};
use std::io::Read;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadAttestError {
    #[error("caller's process {pid} could not be inspected: {reason}")]
    Proc { pid: i32, reason: String },
    #[error("caller's process {pid} exited or its PID was reused during attestation")]
    PidReused { pid: i32 },
    #[error("the caller's PID is unknown (not a Unix socket peer)")]
    NoPid,
    #[error(
        "caller's process {pid} runs another executable than when it connected (exec after connect): reconnect from the process that makes the request"
    )]
    ExecAfterConnect { pid: i32 },
}

/// What the agent took of the caller when it connected.
#[derive(Debug, Default)]
pub struct ProcessPin {
    /// A pidfd for the connecting process (SO_PEERPIDFD), where the kernel has it.
    pub pidfd: Option<std::os::fd::OwnedFd>,
    /// The process's start time (clock ticks since boot), from /proc.
    pub start_time: Option<u64>,
    /// Device and inode of the executable it ran.
    pub exe: Option<(u64, u64)>,
    /// Its supplementary groups when it connected (SO_PEERGROUPS), taken with the uid and
    /// gid the kernel reported then; `None` where the kernel has no SO_PEERGROUPS (they are
    /// then read from /proc at each request).
    pub groups: Option<Vec<u32>>,
    /// The peer was gone (reaped, its PID free for reuse) before it could be pinned: every
    /// request on this connection is refused.
    pub gone: bool,
}

/// SO_PEERPIDFD (Linux 6.5); defined here so older libc headers build too.
const SO_PEERPIDFD: libc::c_int = 77;

/// SO_PEERGROUPS (Linux 4.13), likewise.
const SO_PEERGROUPS: libc::c_int = 59;

/// The peer's supplementary groups as the kernel recorded them at connect.
fn peer_groups(fd: libc::c_int) -> Option<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, which holds that many.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Some(groups);
        }
        // ERANGE: `len` says how much it needs (NGROUPS_MAX is 65536)
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len()
        {
            return None;
        }
        groups.resize(n, 0);
    }
    None
}

fn exe_id(pid: i32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Whether the process behind `pidfd` is still alive (signal 0 through the pidfd). A process of
/// another user answers EPERM to an agent without CAP_KILL: that is alive too; only ESRCH means
/// it has exited.
fn pidfd_alive(pidfd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with signal 0 only checks; the fd is owned and open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl ProcessPin {
    /// Pins the peer of `sock` (a connected Unix stream) as it is now.
    pub fn take(sock: &impl std::os::fd::AsRawFd, pid: Option<i32>) -> Self {
        use std::os::fd::FromRawFd;
        let mut fd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&raw mut fd).cast(),
                &raw mut len,
            )
        };
        // A kernel that knows SO_PEERPIDFD but has no pidfd for this peer has reaped it
        // already: its PID may name another process by now, so nothing of /proc is its.
        let reaped =
            r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOPROTOOPT);
        // SAFETY: on success the kernel returned a new pidfd that we now own.
        let pidfd = (r == 0 && fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let pid = pid.filter(|p| *p > 0);
        let mut pin = Self {
            // the start time tells a reused PID apart only where there is no pidfd
            start_time: if pidfd.is_some() || reaped {
                None
            } else {
                pid.and_then(|p| start_time(p).ok())
            },
            exe: pid.filter(|_| !reaped).and_then(exe_id),
            groups: peer_groups(sock.as_raw_fd()),
            pidfd,
            gone: reaped,
        };
        // what was read of /proc above is the peer's only if it was alive throughout
        if let Some(fd) = &pin.pidfd
            && !pidfd_alive(fd)
        {
            pin.gone = true;
        }
        pin
    }

    /// Pins `pid` as it is now, for a caller not pinned when it connected (no pidfd).
    fn now(pid: i32) -> Result<Self, WorkloadAttestError> {
        Ok(Self {
            pidfd: None,
            start_time: Some(start_time(pid)?),
            exe: exe_id(pid),
            groups: None,
            gone: false,
        })
    }

    /// Whether the process that connected is alive and is `pid` (not a reuse of its PID).
    fn same_process(&self, pid: i32) -> Result<(), WorkloadAttestError> {
        if self.gone {
            return Err(WorkloadAttestError::PidReused { pid });
        }
        if let Some(fd) = &self.pidfd {
            // a process holds its PID until it is reaped, so while the pidfd's process is
            // alive (or a zombie) the number names no other: the start time adds nothing
            return if pidfd_alive(fd) {
                Ok(())
            } else {
                Err(WorkloadAttestError::PidReused { pid })
            };
        }
        // neither a pidfd nor a start time: nothing tells the connecting process apart
        match self.start_time {
            Some(t) if start_time(pid)? == t => Ok(()),
            _ => Err(WorkloadAttestError::PidReused { pid }),
        }
    }

    /// Checks, at a request, that the caller is the process that connected and still runs the
    /// executable it ran then.
    pub fn check(&self, pid: i32) -> Result<(), WorkloadAttestError> {
        self.same_process(pid)?;
        // compared as they were read: an executable unreadable at connect (a non-dumpable
        // process) and readable now is a change too, not a check skipped
        if exe_id(pid) != self.exe {
            return Err(WorkloadAttestError::ExecAfterConnect { pid });
        }
        // the pid still names the process that connected (it was alive throughout)
        self.same_process(pid)
    }
}

/// Credentials the kernel reported for the socket peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct UnixAttestor {
    pub discover_workload_path: bool,
    pub workload_size_limit: i64,
    /// Executable digests already computed, shared by every clone.
    pub digests: DigestCache,
    /// User and group names looked up in the last [`NAME_TTL`], shared by every clone.
    names: NameCache,
}

impl UnixAttestor {
    pub fn new(discover_workload_path: bool, workload_size_limit: i64) -> Self {
        Self {
            discover_workload_path,
            workload_size_limit,
            digests: DigestCache::default(),
            names: NameCache::default(),
        }
    }
}

/// What identifies the content of an executable file without reading it: device, inode,
/// size, and the modification and status-change times to the nanosecond. Writing to the file
/// changes mtime and ctime; resetting mtime (utimes) changes ctime again, and no user can set
/// ctime; replacing it changes the inode. So a digest cached under this key is the digest of
/// the file as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Whether a file last changed at least [`SETTLED`] ago.
fn settled(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - m.ctime() >= SETTLED
}

/// Seconds since its last change before a file's digest is cached.
const SETTLED: i64 = 2;

/// SHA-256 digests of executables by [`FileKey`], so a thousand callers running one binary
/// hash it once. Bounded: past [`DIGEST_CACHE_MAX`] files it starts again empty.
#[derive(Debug, Clone, Default)]
pub struct DigestCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<FileKey, String>>>,
);

const DIGEST_CACHE_MAX: usize = 4096;

impl DigestCache {
    fn get(&self, k: &FileKey) -> Option<String> {
        self.0.lock().ok()?.get(k).cloned()
    }

    fn put(&self, k: FileKey, digest: String) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= DIGEST_CACHE_MAX {
                m.clear();
            }
            m.insert(k, digest);
        }
    }

    /// How many digests are held.
    pub fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn start_time(pid: i32) -> Result<u64, WorkloadAttestError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
        WorkloadAttestError::Proc {
            pid,
            reason: e.to_string(),
        }
    })?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    after
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| WorkloadAttestError::Proc {
            pid,
            reason: "unreadable /proc stat".into(),
        })
}

fn supplementary_gids(pid: i32) -> Result<Vec<u32>, WorkloadAttestError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
        WorkloadAttestError::Proc {
            pid,
            reason: e.to_string(),
        }
    })?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default())
}

/// How long a looked-up user or group name is used before it is looked up again (nscd keeps
/// them ten minutes by default). A lookup may go to the network (LDAP, sssd), so it is done
/// off the async workers; within this time a caller's names come from memory.
const NAME_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Past this many IDs the name cache starts again empty.
const NAME_CACHE_MAX: usize = 4096;

type NameMap = std::collections::HashMap<(bool, u32), (Option<String>, std::time::Instant)>;

/// User (`false`) and group (`true`) names by ID, each kept for [`NAME_TTL`].
#[derive(Debug, Clone, Default)]
struct NameCache(std::sync::Arc<std::sync::Mutex<NameMap>>);

impl NameCache {
    /// The name of user (or group) `id`: from the cache while fresh; otherwise looked up if
    /// `may_block`, and `None` (look it up off the async workers) if not.
    fn get(&self, group: bool, id: u32, may_block: bool) -> Option<Option<String>> {
        let now = std::time::Instant::now();
        // a poisoned lock is a miss (looked up again), never a verdict
        let cached = self.0.lock().ok().and_then(|m| {
            m.get(&(group, id))
                .filter(|(_, at)| now.duration_since(*at) < NAME_TTL)
                .map(|(name, _)| name.clone())
        });
        if let Some(name) = cached {
            return Some(name);
        }
        if !may_block {
            return None;
        }
        let name = if group { group_name(id) } else { user_name(id) };
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= NAME_CACHE_MAX {
                m.clear();
            }
            m.insert((group, id), (name.clone(), now));
        }
        Some(name)
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

impl UnixAttestor {
    /// The caller's selectors; with `pin`, only while the caller is the process that
    /// connected, running the executable it ran then.
    pub fn attest(
        &self,
        cred: PeerCred,
        pin: Option<&ProcessPin>,
    ) -> Result<Vec<Selector>, WorkloadAttestError> {
        // with blocking allowed every lookup is made, so there is always an answer
        self.attest_with(cred, pin, true)?
            .ok_or(WorkloadAttestError::Proc {
                pid: cred.pid.unwrap_or(0),
                reason: "attestation did not complete".into(),
            })
    }

    /// [`attest`](Self::attest) without anything that may block: reads of /proc only, names
    /// and the executable's digest from the caches. `None` when something is not cached
    /// (then [`attest`](Self::attest) it on a blocking thread).
    pub fn attest_cached(
        &self,
        cred: PeerCred,
        pin: Option<&ProcessPin>,
    ) -> Option<Result<Vec<Selector>, WorkloadAttestError>> {
        self.attest_with(cred, pin, false).transpose()
    }

    fn attest_with(
        &self,
        cred: PeerCred,
        pin: Option<&ProcessPin>,
        may_block: bool,
    ) -> Result<Option<Vec<Selector>>, WorkloadAttestError> {
        let pid = cred
            .pid
            .filter(|p| *p > 0)
            .ok_or(WorkloadAttestError::NoPid)?;
        let taken;
        let pin = match pin {
            Some(p) => {
                // fail fast, before reading anything of another process (a reused PID)
                p.same_process(pid)?;
                p
            }
            None => {
                taken = ProcessPin::now(pid)?;
                &taken
            }
        };
        // set where the opened executable was compared with the pin
        let mut exe_checked = false;
        let mut out = Vec::new();
        let mut push = |k: &str, v: String| {
            if let Ok(s) = Selector::new("unix", &format!("{k}:{v}")) {
                out.push(s);
            }
        };
        push("uid", cred.uid.to_string());
        let Some(user) = self.names.get(false, cred.uid, may_block) else {
            return Ok(None);
        };
        if let Some(u) = user {
            push("user", u);
        }
        push("gid", cred.gid.to_string());
        let Some(group) = self.names.get(true, cred.gid, may_block) else {
            return Ok(None);
        };
        if let Some(g) = group {
            push("group", g);
        }
        let groups = match &pin.groups {
            Some(g) => g.clone(),
            None => supplementary_gids(pid)?,
        };
        for g in groups {
            push("supplementary_gid", g.to_string());
            let Some(name) = self.names.get(true, g, may_block) else {
                return Ok(None);
            };
            if let Some(name) = name {
                push("supplementary_group", name);
            }
        }
        if self.discover_workload_path {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
                WorkloadAttestError::Proc {
                    pid,
                    reason: format!("executable path: {e}"),
                }
            })?;
            push("path", exe.display().to_string());
            if self.workload_size_limit >= 0 {
                // Read through /proc/<pid>/exe: the very file the process runs, even if the
                // path has since been replaced.
                let mut f = std::fs::File::open(format!("/proc/{pid}/exe")).map_err(|e| {
                    WorkloadAttestError::Proc {
                        pid,
                        reason: format!("executable: {e}"),
                    }
                })?;
                let meta = f.metadata().map_err(|e| WorkloadAttestError::Proc {
                    pid,
                    reason: format!("executable: {e}"),
                })?;
                // the file read below is the executable the caller ran when pinned: an exec
                // before this open shows here; one after it leaves what is read (path and
                // file, both read before) as the pinned executable's
                {
                    use std::os::unix::fs::MetadataExt;
                    if pin.exe != Some((meta.dev(), meta.ino())) {
                        return Err(WorkloadAttestError::ExecAfterConnect { pid });
                    }
                }
                exe_checked = true;
                let size = meta.len();
                if self.workload_size_limit > 0 && size > self.workload_size_limit as u64 {
                    return Err(WorkloadAttestError::Proc {
                        pid,
                        reason: format!(
                            "executable is {size} bytes, over workload_size_limit {}",
                            self.workload_size_limit
                        ),
                    });
                }
                let key = FileKey::of(&meta);
                let digest = match self.digests.get(&key) {
                    Some(d) => d,
                    None if !may_block => return Ok(None),
                    None => {
                        let mut h = Sha256::new();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = f.read(&mut buf).map_err(|e| WorkloadAttestError::Proc {
                                pid,
                                reason: format!("hashing: {e}"),
                            })?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                        let d = hex::encode(h.finalize());
                        // cached only if the file did not change while it was read, and last
                        // changed long enough ago that a change now gets another ctime (the
                        // kernel's timestamps are as coarse as its clock tick)
                        if f.metadata()
                            .is_ok_and(|m| FileKey::of(&m) == key && settled(&m))
                        {
                            self.digests.put(key, d.clone());
                        }
                        d
                    }
                };
                push("sha256", digest);
            }
        }
        // what was read above belongs to the pinned process (not a reuse of its PID), running
        // the executable it ran when pinned (checked at the executable's open when it was read)
        if exe_checked {
            pin.same_process(pid)?;
        } else {
            pin.check(pid)?;
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_digest_is_keyed_by_what_any_change_alters() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("exe");
        std::fs::write(&p, b"version one").unwrap();
        let fresh = std::fs::metadata(&p).unwrap();
        assert!(!settled(&fresh), "a file changed just now is not cached");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let old = std::fs::metadata(&p).unwrap();
        assert!(settled(&old));
        let k1 = FileKey::of(&old);
        // same size, other content
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all(b"version two")
            .unwrap();
        let k2 = FileKey::of(&std::fs::metadata(&p).unwrap());
        assert_ne!(k1, k2);
        // replaced by another file
        std::fs::write(dir.path().join("new"), b"version one").unwrap();
        std::fs::rename(dir.path().join("new"), &p).unwrap();
        assert_ne!(k2, FileKey::of(&std::fs::metadata(&p).unwrap()));
        let c = DigestCache::default();
        c.put(k1, "d1".into());
        assert_eq!(c.get(&k1).as_deref(), Some("d1"));
        assert_eq!(c.get(&k2), None);
    }

    #[test]
    fn attests_this_process() {
        let pid = std::process::id() as i32;
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let a = UnixAttestor::new(true, 0);
        let sels: Vec<String> = a
            .attest(
                PeerCred {
                    pid: Some(pid),
                    uid,
                    gid,
                },
                None,
            )
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(sels.contains(&format!("unix:uid:{uid}")), "{sels:?}");
        assert!(sels.contains(&format!("unix:gid:{gid}")), "{sels:?}");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(
            sels.contains(&format!("unix:path:{}", exe.display())),
            "{sels:?}"
        );
        let digest = hex::encode(Sha256::digest(std::fs::read(&exe).unwrap()));
        assert!(sels.contains(&format!("unix:sha256:{digest}")), "{sels:?}");
        let small = UnixAttestor::new(true, 10);
        assert!(
            small
                .attest(
                    PeerCred {
                        pid: Some(pid),
                        uid,
                        gid
                    },
                    None
                )
                .is_err()
        );
        assert!(
            a.attest(
                PeerCred {
                    pid: None,
                    uid,
                    gid
                },
                None
            )
            .is_err()
        );
        assert!(
            a.attest(
                PeerCred {
                    pid: Some(i32::MAX - 1),
                    uid,
                    gid
                },
                None
            )
            .is_err()
        );
    }

    #[test]
    fn the_cached_path_answers_only_from_what_is_cached() {
        let me = PeerCred {
            pid: Some(std::process::id() as i32),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        // names not looked up yet: nothing without blocking
        let a = UnixAttestor::new(false, -1);
        assert!(a.attest_cached(me, None).is_none());
        let full = a.attest(me, None).unwrap();
        assert_eq!(a.attest_cached(me, None).unwrap().unwrap(), full);
        // with digests: answered without blocking only once the executable's digest is held
        let d = UnixAttestor::new(true, 0);
        let full = d.attest(me, None).unwrap();
        match d.attest_cached(me, None) {
            Some(r) => {
                assert_eq!(d.digests.len(), 1);
                assert_eq!(r.unwrap(), full);
            }
            None => assert!(d.digests.is_empty(), "the test binary changed just now"),
        }
        // a process that is gone is refused on this path too
        let gone = PeerCred {
            pid: Some(i32::MAX - 1),
            ..me
        };
        assert!(a.attest_cached(gone, None).unwrap().is_err());
    }

    #[test]
    fn a_pin_holds_the_peers_groups_as_proc_shows_them() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let pid = std::process::id() as i32;
        let pin = ProcessPin::take(&a, Some(pid));
        assert_eq!(
            pin.groups.as_deref(),
            Some(&supplementary_gids(pid).unwrap()[..])
        );
        assert!(pin.pidfd.is_some(), "this kernel has SO_PEERPIDFD");
        pin.check(pid).unwrap();
    }

    #[test]
    fn a_peer_reaped_before_it_is_pinned_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // a process that connects and exits, reaped before the connection is accepted
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let (conn, _) = l.accept().unwrap();
        let pid = {
            use std::os::fd::AsRawFd;
            let mut c = libc::ucred {
                pid: 0,
                uid: 0,
                gid: 0,
            };
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `c`, a ucred.
            let r = unsafe {
                libc::getsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERCRED,
                    (&raw mut c).cast(),
                    &raw mut len,
                )
            };
            assert_eq!(r, 0);
            c.pid
        };
        let pin = ProcessPin::take(&conn, Some(pid));
        assert!(pin.gone, "{pin:?}");
        assert!(matches!(
            pin.check(pid),
            Err(WorkloadAttestError::PidReused { .. })
        ));
        let a = UnixAttestor::new(false, -1);
        let cred = PeerCred {
            pid: Some(pid),
            uid: 0,
            gid: 0,
        };
        assert!(a.attest(cred, Some(&pin)).is_err());
        assert!(a.attest_cached(cred, Some(&pin)).unwrap().is_err());
        // a pin with neither a pidfd nor a start time tells nothing apart: refused too
        let blind = ProcessPin::default();
        assert!(blind.check(std::process::id() as i32).is_err());
    }
}
