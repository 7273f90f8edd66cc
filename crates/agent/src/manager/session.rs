//! The agent's life as a state machine: attest, hold a session (sync and renewal), and on
//! its end renew, re-attest, back off or stop, by what the server said.

use super::*;

impl Agent {
    pub(super) fn renewal_due(&self) -> bool {
        let tainted = self
            .state
            .read()
            .bundle
            .as_ref()
            .map(|b| b.x509_tainted.clone());
        self.svid
            .read()
            .ok()
            .and_then(|g| {
                g.as_ref().map(|s| {
                    if let (Some(t), Some(id)) = (&tainted, &s.authority_id)
                        && t.contains(id)
                    {
                        return true;
                    }
                    // half-life from issuance: NotBefore is backdated for clock skew, and
                    // counting from it would renew short-lived SVIDs without pause
                    let issued =
                        (s.not_before + ironpact_spiffe::x509::BACKDATE_SECS).min(s.expires_at);
                    self.clock.now() >= issued + (s.expires_at - issued) / 2
                })
            })
            .unwrap_or(false)
    }

    pub(super) async fn session(&self) -> SessionEnd {
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return SessionEnd::Unavailable(e.to_string()),
        };
        let classify = |s: tonic::Status| Self::end_of(classify(&s));
        let mut sync = match client.sync_authorized(pb::SyncAuthorizedRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(s) => return classify(s),
        };
        info!(server = %self.addr(), "connected; syncing entries");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut pending = None;
        loop {
            tokio::select! {
                msg = sync.message() => match msg {
                    Ok(Some(m)) => {
                        self.apply(&mut pending, m);
                        if pending.is_some() {
                            continue;
                        }
                        if let Err(e) = self.sign_due().await {
                            warn!(error = %e, "signing workload SVIDs failed; will retry");
                        }
                    }
                    Ok(None) => return SessionEnd::Unavailable("sync stream closed".into()),
                    Err(s) => return classify(s),
                },
                _ = tick.tick() => {
                    if self.renewal_due() {
                        return match self.renew().await {
                            Ok(()) => SessionEnd::Renewed,
                            Err(e) => {
                                if let AgentError::Refused(m) = &e {
                                    crate::metrics::attestation(
                                        true,
                                        Some(&crate::state::refusal_kind(m)),
                                    );
                                }
                                Self::end_of(e)
                            }
                        };
                    }
                    if let Err(e) = self.sign_due().await {
                        warn!(error = %e, "signing workload SVIDs failed; will retry");
                    }
                }
            }
        }
    }

    pub(super) fn end_of(e: AgentError) -> SessionEnd {
        match e {
            AgentError::Evicted(m) => SessionEnd::Evicted(m),
            AgentError::Banned(m) => SessionEnd::Banned(m),
            AgentError::Reattest(m) => SessionEnd::Reattest(m),
            AgentError::Refused(m) => SessionEnd::Refused(m),
            other => SessionEnd::Unavailable(other.to_string()),
        }
    }

    /// Whether the agent's own SVID has expired (it can no longer authenticate to renew).
    pub(super) fn svid_expired(&self) -> bool {
        self.svid
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|s| self.clock.now() >= s.expires_at))
            .unwrap_or(false)
    }

    /// Runs until the process ends, or until the server bans this agent (`Err(Banned)`):
    /// attestation, sync, renewal, with jittered backoff on failures. The key is deleted only
    /// on an explicit eviction or ban answer; outages and refusals keep it and the cached
    /// SVIDs, which are served meanwhile.
    pub async fn run(self: Arc<Self>) -> Result<(), AgentError> {
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.agent_id().is_some() && self.svid_expired() {
                warn!("the agent SVID expired before it could be renewed; attesting again");
                self.forget_svid();
                self.drop_client();
            }
            if self.agent_id().is_none() {
                match self.attest().await {
                    Ok(()) => backoff = Duration::from_secs(1),
                    Err(AgentError::Banned(m)) => return Err(self.banned(m)),
                    Err(e) => {
                        if let AgentError::Refused(m) = &e {
                            crate::metrics::attestation(
                                false,
                                Some(&crate::state::refusal_kind(m)),
                            );
                            self.set_refusal(Some(m.clone()));
                        }
                        let wait = next_backoff(&mut backoff);
                        error!(error = %e, retry_in = ?wait, "attestation failed");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            // a refused agent renews after a pause; what that renewal ends in is handled here too
            let mut end = self.session().await;
            loop {
                match end {
                    SessionEnd::Renewed => backoff = Duration::from_secs(1),
                    SessionEnd::Evicted(reason) => {
                        warn!(%reason, "the server evicted this agent; deleting its key and attesting again");
                        self.forget_svid();
                        self.drop_client();
                    }
                    SessionEnd::Banned(reason) => return Err(self.banned(reason)),
                    SessionEnd::Reattest(reason) => {
                        info!(%reason, "attesting afresh under the identity the node now presents");
                        self.drop_client();
                        match self.attest().await {
                            Ok(()) => backoff = Duration::from_secs(1),
                            Err(AgentError::Banned(m)) => return Err(self.banned(m)),
                            Err(e) => {
                                if let AgentError::Refused(m) = &e {
                                    crate::metrics::attestation(
                                        false,
                                        Some(&crate::state::refusal_kind(m)),
                                    );
                                    self.set_refusal(Some(m.clone()));
                                }
                                // the current SVID stays: renewal is tried again after a pause
                                let wait = next_backoff(&mut backoff);
                                warn!(error = %e, retry_in = ?wait, "attesting afresh failed; keeping the current key and SVIDs");
                                tokio::time::sleep(wait).await;
                            }
                        }
                    }
                    SessionEnd::Refused(reason) => {
                        self.set_refusal(Some(reason.clone()));
                        let wait = next_backoff(&mut backoff);
                        warn!(%reason, retry_in = ?wait, "the server refused this agent; keeping its key and cached SVIDs, renewing again after a pause");
                        self.drop_client();
                        tokio::time::sleep(wait).await;
                        if self.svid_expired() {
                            // nothing left to renew with: attest again (below)
                            break;
                        }
                        end = match self.renew().await {
                            Ok(()) => {
                                info!("renewal passed again; the agent is back in service");
                                SessionEnd::Renewed
                            }
                            Err(e) => Self::end_of(e),
                        };
                        continue;
                    }
                    SessionEnd::Unavailable(reason) => {
                        let wait = next_backoff(&mut backoff);
                        warn!(%reason, retry_in = ?wait, "lost the server; serving cached SVIDs meanwhile");
                        self.drop_client();
                        tokio::time::sleep(wait).await;
                    }
                }
                break;
            }
        }
    }

    pub(super) fn banned(&self, reason: String) -> AgentError {
        let e = AgentError::Banned(reason);
        // SPIRE's line, which operators' alerts grep for
        error!(error = %e, "Agent is banned: removing SVID and shutting down");
        self.forget_svid();
        self.drop_client();
        e
    }
}
