//! The `unix` workload attestor: who is calling, from the kernel's word (SO_PEERCRED) and
//! /proc. Guards against PID reuse by reading the process start time before and after.

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
    /// The caller's selectors.
    pub fn attest(&self, cred: PeerCred) -> Result<Vec<Selector>, WorkloadAttestError> {
        let pid = cred
            .pid
            .filter(|p| *p > 0)
            .ok_or(WorkloadAttestError::NoPid)?;
        let before = start_time(pid)?;
        let mut out = Vec::new();
        let mut push = |k: &str, v: String| {
            if let Ok(s) = Selector::new("unix", &format!("{k}:{v}")) {
                out.push(s);
            }
        };
        push("uid", cred.uid.to_string());
        if let Some(u) = user_name(cred.uid) {
            push("user", u);
        }
        push("gid", cred.gid.to_string());
        if let Some(g) = group_name(cred.gid) {
            push("group", g);
        }
        for g in supplementary_gids(pid)? {
            push("supplementary_gid", g.to_string());
            if let Some(name) = group_name(g) {
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
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                if self.workload_size_limit > 0 && size > self.workload_size_limit as u64 {
                    return Err(WorkloadAttestError::Proc {
                        pid,
                        reason: format!(
                            "executable is {size} bytes, over workload_size_limit {}",
                            self.workload_size_limit
                        ),
                    });
                }
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
                push("sha256", hex::encode(h.finalize()));
            }
        }
        if start_time(pid)? != before {
            return Err(WorkloadAttestError::PidReused { pid });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attests_this_process() {
        let pid = std::process::id() as i32;
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let a = UnixAttestor {
            discover_workload_path: true,
            workload_size_limit: 0,
        };
        let sels: Vec<String> = a
            .attest(PeerCred {
                pid: Some(pid),
                uid,
                gid,
            })
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
        let small = UnixAttestor {
            discover_workload_path: true,
            workload_size_limit: 10,
        };
        assert!(
            small
                .attest(PeerCred {
                    pid: Some(pid),
                    uid,
                    gid
                })
                .is_err()
        );
        assert!(
            a.attest(PeerCred {
                pid: None,
                uid,
                gid
            })
            .is_err()
        );
        assert!(
            a.attest(PeerCred {
                pid: Some(i32::MAX - 1),
                uid,
                gid
            })
            .is_err()
        );
    }
}
