//! rustls verifiers for peers that require proof of what their peer runs on: the peer's SVID
//! must chain to the trust source, carry an allowed SPIFFE ID, *and* attestation claims
//! (`ironpact_spiffe::claims`) that pass a [`ClaimsPolicy`]. A refusal fails the handshake and
//! names the field that differed (`attestation claim measurement is …, allowed: …`).
//!
//! For rustls users directly, and for `spiffe-rustls` users: build the rustls config with
//! these verifiers and the SVID from the Workload API (see `crates/cli/examples/mtls.rs`).

use crate::{TrustSource, now_secs, rejected};
use ironpact_spiffe::SpiffeId;
use ironpact_spiffe::claims::{ClaimsPolicy, from_certificate};
use rustls::DistinguishedName;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use std::fmt;
use std::sync::Arc;

/// The checks both sides make: chain, SPIFFE ID among `allowed` (any when empty), claims.
fn check(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &dyn TrustSource,
    allowed: &[SpiffeId],
    policy: &ClaimsPolicy,
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let mut chain: Vec<&[u8]> = vec![end_entity.as_ref()];
    chain.extend(intermediates.iter().map(|c| c.as_ref()));
    // the roots of the trust domain the certificate claims, and only those
    let claimed = ironpact_spiffe::x509::CertInfo::parse(end_entity.as_ref())
        .ok()
        .and_then(|i| i.uri_sans.first().and_then(|u| SpiffeId::parse(u).ok()))
        .ok_or_else(|| rejected("the peer's certificate carries no SPIFFE ID".into()))?;
    let anchors = roots.x509_roots_for(&claimed.trust_domain());
    let id = ironpact_spiffe::x509::verify_svid_chain(&chain, &anchors, now_secs(now))
        .map_err(|e| rejected(e.to_string()))?;
    if !allowed.is_empty() && !allowed.contains(&id) {
        return Err(rejected(format!(
            "peer {id} is not one of the allowed SPIFFE IDs"
        )));
    }
    // a malformed, doubled or critical extension is refused, never ignored
    let claims =
        from_certificate(end_entity.as_ref()).map_err(|e| rejected(format!("{id}: {e}")))?;
    policy.check(claims.as_ref()).map_err(|why| {
        tracing::warn!(peer = %id, reason = %why, "peer refused: its attestation claims do not pass the policy");
        rejected(format!("{id}: {why}"))
    })?;
    Ok(id)
}

/// Server side: requires a client SVID with one of `allowed` IDs and passing claims.
pub struct AttestedClientVerifier {
    roots: Arc<dyn TrustSource>,
    allowed: Vec<SpiffeId>,
    policy: ClaimsPolicy,
    provider: Arc<CryptoProvider>,
}

impl AttestedClientVerifier {
    pub fn new(roots: Arc<dyn TrustSource>, allowed: Vec<SpiffeId>, policy: ClaimsPolicy) -> Self {
        Self {
            roots,
            allowed,
            policy,
            provider: crate::provider(),
        }
    }
}

impl fmt::Debug for AttestedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedClientVerifier")
            .field("allowed", &self.allowed)
            .field("policy", &self.policy)
            .finish()
    }
}

impl ClientCertVerifier for AttestedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check(
            end_entity,
            intermediates,
            self.roots.as_ref(),
            &self.allowed,
            &self.policy,
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    provider_signatures!();
}

/// Client side: requires the server's SVID to be `expected` with passing claims.
pub struct AttestedServerVerifier {
    roots: Arc<dyn TrustSource>,
    expected: SpiffeId,
    policy: ClaimsPolicy,
    provider: Arc<CryptoProvider>,
}

impl AttestedServerVerifier {
    pub fn new(roots: Arc<dyn TrustSource>, expected: SpiffeId, policy: ClaimsPolicy) -> Self {
        Self {
            roots,
            expected,
            policy,
            provider: crate::provider(),
        }
    }
}

impl fmt::Debug for AttestedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedServerVerifier")
            .field("expected", &self.expected)
            .field("policy", &self.policy)
            .finish()
    }
}

impl ServerCertVerifier for AttestedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check(
            end_entity,
            intermediates,
            self.roots.as_ref(),
            std::slice::from_ref(&self.expected),
            &self.policy,
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    provider_signatures!();
}
