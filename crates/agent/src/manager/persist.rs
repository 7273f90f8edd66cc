//! The agent SVID and key on disk: stored atomically and privately, reused at start-up while
//! valid, deleted only on an explicit eviction or ban.

use super::*;

impl Agent {
    pub(super) fn write_private(
        path: &std::path::Path,
        data: &[u8],
        mode: u32,
    ) -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reuses the SVID from a previous run while it is valid and chains to the bundle. An
    /// explicit join token for another identity is an error, never silently passed over.
    pub(super) fn load_stored_svid(&self) -> Result<(), AgentError> {
        let Some((cert, key_path)) = self.cfg.key_manager.stored_paths() else {
            return Ok(());
        };
        let (Ok(c), Ok(k)) = (
            std::fs::read_to_string(&cert),
            std::fs::read_to_string(&key_path),
        ) else {
            return Ok(());
        };
        let Ok(chain) = ironpact_spiffe::x509::certs_from_pem(&c) else {
            return Ok(());
        };
        let Ok(key) = pem::parse(k.as_bytes()).map(pem::Pem::into_contents) else {
            return Ok(());
        };
        let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        match ironpact_spiffe::x509::verify_svid_chain(
            &refs,
            &self.roots.x509_roots(),
            self.clock.now() + 30,
        ) {
            Ok(id) => {
                // a token file that is gone once the agent attested is not a conflict
                if let Some(token) = self.cfg.join_token.as_ref().and_then(|s| s.token().ok())
                    && let Ok(wanted) = self
                        .cfg
                        .trust_domain
                        .id_with_path(&format!("/spire/agent/join_token/{token}"))
                    && wanted != id
                {
                    return Err(AgentError::Local(format!(
                        "a join token was given for {wanted}, but this agent already holds the \
                         identity {id} ({}): to keep {id}, start without the join token; to \
                         attest with the new token, delete {} and {} first",
                        cert.display(),
                        cert.display(),
                        key_path.display()
                    )));
                }
                let info = chain
                    .first()
                    .and_then(|c| ironpact_spiffe::x509::CertInfo::parse(c).ok());
                if let Some(info) = info {
                    info!(agent_id = %id, expires_at = info.not_after, "reusing the stored agent SVID");
                    self.install_svid(
                        AgentSvid {
                            id,
                            chain,
                            key,
                            not_before: info.not_before,
                            expires_at: info.not_after,
                            authority_id: info.authority_key_id,
                        },
                        false,
                    );
                }
            }
            Err(e) => info!(reason = %e, "stored agent SVID is not usable; attesting again"),
        }
        Ok(())
    }

    pub(super) fn install_svid(&self, s: AgentSvid, persist: bool) {
        if let Err(e) = self.cell.set(s.chain.clone(), &s.key) {
            error!(error = %e, "cannot use the agent SVID for TLS");
            return;
        }
        if persist && let Some((svid_path, key_path)) = self.cfg.key_manager.stored_paths() {
            let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", s.key.clone()));
            let r = Self::write_private(&key_path, key_pem.as_bytes(), 0o600).and_then(|()| {
                Self::write_private(&svid_path, pem_certs(&s.chain).as_bytes(), 0o644)
            });
            if let Err(e) = r {
                warn!(error = %e, path = %svid_path.display(), "cannot store the agent SVID; a restart will need a new attestation");
            }
        }
        if let Ok(mut g) = self.svid.write() {
            *g = Some(s);
        }
        if let Ok(mut c) = self.client.write() {
            *c = None;
        }
    }

    pub(super) fn forget_svid(&self) {
        self.cell.clear();
        if let Ok(mut g) = self.svid.write() {
            *g = None;
        }
        if let Some((svid_path, key_path)) = self.cfg.key_manager.stored_paths() {
            let _ = std::fs::remove_file(svid_path);
            let _ = std::fs::remove_file(key_path);
        }
    }
}
