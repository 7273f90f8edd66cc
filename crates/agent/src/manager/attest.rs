//! Attestation and renewal: a fresh key and CSR, the base attestor's payload, and TEE
//! evidence bound to the server's nonce and to that key.

use super::*;

impl Agent {
    pub(super) fn csr() -> Result<(Vec<u8>, Vec<u8>), AgentError> {
        let c = Self::csr_with_spki()?;
        Ok((c.csr, c.key))
    }

    /// A CSR, its PKCS#8 key and the DER SubjectPublicKeyInfo (what evidence binds to).
    pub(super) fn csr_with_spki() -> Result<NewKey, AgentError> {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().map_err(|e| AgentError::Local(e.to_string()))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| AgentError::Local(e.to_string()))?;
        Ok(NewKey {
            csr: csr.der().to_vec(),
            key: key.serialize_der(),
            spki: key.subject_public_key_info(),
        })
    }

    pub(super) fn attestor_kind(&self) -> &'static str {
        self.cfg.node_attestor.name
    }

    /// What the base attestor presents (the join token at the first attestation, the
    /// instance identity document, the node certificate), or nothing (a TEE alone answers
    /// challenges).
    pub(super) async fn payload(&self, renew: bool) -> Result<Vec<u8>, AgentError> {
        match &self.base {
            Some(b) => {
                // the token (from its file, if it is one) is read only for a first attestation
                let token = match (&self.cfg.join_token, renew) {
                    (Some(src), false) => Some(src.token().map_err(AgentError::Local)?),
                    _ => None,
                };
                Ok(b.payload(renew, token.as_deref()).await?)
            }
            None => Ok(Vec::new()),
        }
    }

    /// One attestation (or renewal) exchange on `client`, answering challenges with evidence
    /// bound to the nonce and to `spki`, the key the SVID will certify.
    pub(super) async fn attestation(
        &self,
        client: &mut AgentApiClient<Channel>,
        payload: Vec<u8>,
        csr: Vec<u8>,
        spki: Vec<u8>,
        renew: bool,
    ) -> Result<ironpact_proto::server::v1::X509svid, AgentError> {
        let first = pb::AttestAgentRequest {
            step: Some(pb::attest_agent_request::Step::Params(
                pb::attest_agent_request::Params {
                    data: Some(pb::AttestationData {
                        r#type: self.attestor_kind().into(),
                        payload,
                    }),
                    csr,
                },
            )),
        };
        let status = |s: tonic::Status| classify(&s);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(first)
            .await
            .map_err(|_| AgentError::Local("attestation stream closed".into()))?;
        let req = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut answered = 0usize;
        let mut resp = if renew {
            client.renew_agent(req).await.map_err(status)?.into_inner()
        } else {
            client.attest_agent(req).await.map_err(status)?.into_inner()
        };
        loop {
            match resp.message().await.map_err(status)?.and_then(|m| m.step) {
                Some(pb::attest_agent_response::Step::Result(r)) => {
                    return r
                        .svid
                        .ok_or_else(|| AgentError::Refused("server returned no SVID".into()));
                }
                Some(pb::attest_agent_response::Step::Challenge(nonce)) => {
                    // the base attestor's own challenges come first, then the TEE's
                    let base_answers = self.base.as_ref().filter(|b| answered < b.challenges());
                    answered += 1;
                    let evidence = if let Some(b) = base_answers {
                        b.answer(&nonce, &spki)?
                    } else {
                        let src = self.evidence.clone().ok_or_else(|| {
                            AgentError::Refused(
                                "the server asks for TEE evidence, but this agent has no evidence source: add sev_snp { evidence_source = … } or tdx { evidence_source = … } to its NodeAttestor plugin_data"
                                    .into(),
                            )
                        })?;
                        let rd = src.report_data(&nonce, &spki);
                        let source = src.name();
                        tokio::task::spawn_blocking(move || src.evidence(&rd))
                            .await
                            .map_err(|e| AgentError::Local(e.to_string()))?
                            .map_err(|e| AgentError::Local(format!("{source} evidence: {e}")))?
                    };
                    debug!(bytes = evidence.len(), "answering the server's challenge");
                    let msg = pb::AttestAgentRequest {
                        step: Some(pb::attest_agent_request::Step::ChallengeResponse(evidence)),
                    };
                    tx.send(msg)
                        .await
                        .map_err(|_| AgentError::Unavailable("attestation stream closed".into()))?;
                }
                None => {
                    return Err(AgentError::Unavailable(
                        "attestation stream ended early".into(),
                    ));
                }
            }
        }
    }

    pub(super) fn svid_from(
        pb_svid: ironpact_proto::server::v1::X509svid,
        key: Vec<u8>,
    ) -> Result<AgentSvid, AgentError> {
        let id = SpiffeId::parse(&pb_svid.id).map_err(|e| AgentError::Refused(e.to_string()))?;
        let info = pb_svid
            .cert_chain
            .first()
            .and_then(|c| ironpact_spiffe::x509::CertInfo::parse(c).ok())
            .ok_or_else(|| AgentError::Refused("server returned an unreadable SVID".into()))?;
        Ok(AgentSvid {
            id,
            chain: pb_svid.cert_chain,
            key,
            not_before: info.not_before,
            expires_at: info.not_after,
            authority_id: info.authority_key_id,
        })
    }

    /// An attestation (or renewal) exchange for a fresh key: the agent SVID it yields.
    async fn with_new_key(
        &self,
        client: &mut AgentApiClient<Channel>,
        payload: Vec<u8>,
        renew: bool,
    ) -> Result<AgentSvid, AgentError> {
        let NewKey { csr, key, spki } = Self::csr_with_spki()?;
        let svid = self.attestation(client, payload, csr, spki, renew).await?;
        Self::svid_from(svid, key)
    }

    pub(super) async fn attest(&self) -> Result<(), AgentError> {
        let payload = self.payload(false).await?;
        let cfg = if self.roots.x509_roots().is_empty() && self.cfg.insecure_bootstrap {
            ironpact_tls::client_config_insecure(self.server_id.clone(), None)
        } else {
            ironpact_tls::client_config(self.roots.clone(), self.server_id.clone(), None)
        }
        .map_err(|e| AgentError::Local(e.to_string()))?;
        let ch = ironpact_tls::channel(&self.addr(), cfg)
            .map_err(|e| AgentError::Local(e.to_string()))?;
        let mut client = AgentApiClient::new(ch);
        info!(server = %self.addr(), attestor = self.attestor_kind(), "attesting this node");
        let svid = self.with_new_key(&mut client, payload, false).await?;
        info!(agent_id = %svid.id, expires_at = svid.expires_at, "node attested");
        crate::metrics::attestation(false, None);
        self.install_svid(svid, true);
        self.set_refusal(None);
        Ok(())
    }

    pub(super) async fn renew(&self) -> Result<(), AgentError> {
        let mut client = self.client()?;
        let payload = self.payload(true).await?;
        let svid = self.with_new_key(&mut client, payload, true).await?;
        info!(agent_id = %svid.id, expires_at = svid.expires_at, "renewed the agent SVID");
        crate::metrics::attestation(true, None);
        self.install_svid(svid, true);
        self.set_refusal(None);
        Ok(())
    }
}
