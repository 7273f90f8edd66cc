//! The `x509pop` server half: the node's certificate must chain to the configured CA bundle
//! (checked before anything else happens), then the node signs a fresh nonce and the agent's
//! CSR key with that certificate's key. Agent ID `spiffe://<td>/spire/agent/<template>`
//! (default `x509pop/<SHA-1 fingerprint>`), as SPIRE names it. Each attestation and renewal
//! checks the chain again, so an expired or distrusted certificate stops renewals.

use super::protocol::{NONCE_LEN, Payload, fingerprint, signed_message};
use super::template::{AgentPathTemplate, Values};
use crate::{AttestError, Attested, Challenger, Evidence, NodeAttestor, RefusalKind};
use ironpact_spiffe::{Selector, TrustDomain};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use std::time::Duration;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Refusal kinds (`RefusalKind::Base`): the node certificate or a certificate of its chain is
/// outside its validity period.
pub const EXPIRED: &str = "x509pop_expired";
/// The chain does not lead to the CA bundle (another CA, a broken signature, a non-CA issuer).
pub const UNTRUSTED_CHAIN: &str = "x509pop_untrusted_chain";
/// The certificate may not be used for this (no digitalSignature key usage, a wrong EKU).
pub const KEY_USAGE: &str = "x509pop_key_usage";
/// The proof of possession does not verify with the certificate's key (a replayed or forged
/// signature, another key).
pub const SIGNATURE: &str = "x509pop_signature";
/// The agent ID template cannot be filled from this certificate.
pub const AGENT_PATH: &str = "x509pop_agent_path";

fn refused(kind: &'static str, message: impl Into<String>) -> AttestError {
    AttestError::rejected(RefusalKind::Base(kind), message)
}

/// The signature schemes a node key may prove possession with (each tied to its key type).
static POP_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
];

pub struct X509PopAttestor {
    trust_domain: TrustDomain,
    /// The trusted CA certificates (DER) and their trust anchors, in the same order.
    roots: Vec<Vec<u8>>,
    anchors: Vec<TrustAnchor<'static>>,
    template: AgentPathTemplate,
}

/// What a verified chain says about the node.
#[derive(Debug, Clone)]
pub struct Verified {
    /// SHA-1 fingerprints of the intermediates and the root the chain used.
    pub ca_fingerprints: Vec<String>,
    /// The node certificate's subject, escaped for messages.
    pub subject: String,
    /// Its subject common name (the last, as Go reads it), empty when it has none.
    pub common_name: String,
    /// Its serial number as SPIRE prints it.
    pub serial_hex: String,
    /// Its SPIRE SAN selectors, (key, value) of `x509pop://<td>/<key>/<value>` URI SANs.
    pub san: Vec<(String, String)>,
}

impl X509PopAttestor {
    /// An attestor trusting `roots` (DER CA certificates).
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<Vec<u8>>,
        template: AgentPathTemplate,
    ) -> Result<Self, String> {
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(i, der)| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map(|a| a.to_owned())
                    .map_err(|e| {
                        format!("CA certificate {} cannot be a trust anchor: {e:?}", i + 1)
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
            template,
        })
    }

    /// Decodes a payload and checks its chain against the CA bundle at `now`: what an
    /// unauthenticated node can make the server parse before any challenge (fuzzed).
    pub fn check_payload(
        &self,
        payload: &[u8],
        now: i64,
    ) -> Result<(Vec<Vec<u8>>, Verified), AttestError> {
        let chain = Payload::decode(payload).map_err(AttestError::Malformed)?;
        let Some((leaf_der, intermediates)) = chain.split_first() else {
            return Err(AttestError::Malformed(
                "x509pop payload: no certificate".into(),
            ));
        };
        let (_, leaf) = X509Certificate::from_der(leaf_der)
            .map_err(|e| AttestError::Malformed(format!("x509pop certificate: {e}")))?;
        let v = self.verify_chain(&leaf, leaf_der, intermediates, now)?;
        Ok((chain, v))
    }

    /// Checks `leaf` (with `intermediates`) against the CA bundle at `now` (rustls-webpki:
    /// each certificate's validity, constraints and extended key usage, then the path to a
    /// CA of the bundle; the error it reports is the one of the most promising path), then
    /// what SPIRE requires of the node's certificate.
    fn verify_chain(
        &self,
        leaf: &X509Certificate<'_>,
        leaf_der: &[u8],
        intermediates: &[Vec<u8>],
        now: i64,
    ) -> Result<Verified, AttestError> {
        let subject = subject_of(leaf);
        let ee_der = CertificateDer::from(leaf_der);
        let ee = webpki::EndEntityCert::try_from(&ee_der)
            .map_err(|e| AttestError::Malformed(format!("x509pop certificate: {e:?}")))?;
        let inter: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
        let (nb, na) = (
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        );
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &inter,
                time,
                NodeEku,
                None,
                None,
            )
            .map_err(|e| match e {
                #[allow(deprecated)] // what NodeEku returns
                webpki::Error::RequiredEkuNotFound => refused(
                    KEY_USAGE,
                    format!("a certificate of the chain of {subject} has an extended key usage without clientAuth or serverAuth"),
                ),
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }
                    if now > na =>
                {
                    refused(
                        EXPIRED,
                        format!(
                            "the node certificate {subject} expired at {}",
                            leaf.validity().not_after
                        ),
                    )
                }
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }
                    if now < nb =>
                {
                    refused(
                        EXPIRED,
                        format!(
                            "the node certificate {subject} is valid only from {}",
                            leaf.validity().not_before
                        ),
                    )
                }
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    refused(
                        EXPIRED,
                        format!("a CA certificate of the chain of {subject} is outside its validity period ({e:?})"),
                    )
                }
                other => refused(
                    UNTRUSTED_CHAIN,
                    format!(
                        "the node certificate {subject} does not chain to the CA bundle ({other:?}): issue it from a CA in ca_bundle_path(s), and send its intermediates"
                    ),
                ),
            })?;
        // SPIRE's rule: the node's certificate must allow digital signatures
        match leaf.key_usage() {
            Ok(Some(ku)) if ku.value.digital_signature() => {}
            Ok(_) => {
                return Err(refused(
                    KEY_USAGE,
                    format!(
                        "the node certificate {subject} lacks the digitalSignature key usage: issue it with keyUsage = digitalSignature"
                    ),
                ));
            }
            Err(e) => {
                return Err(AttestError::Malformed(format!(
                    "x509pop certificate key usage: {e}"
                )));
            }
        }
        let mut ca_fingerprints: Vec<String> = path
            .intermediate_certificates()
            .map(|c| fingerprint(c.der().as_ref()))
            .collect();
        let anchor = path.anchor();
        if let Some(i) = self.anchors.iter().position(|a| {
            a.subject.as_ref() == anchor.subject.as_ref()
                && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
        }) && let Some(root) = self.roots.get(i)
        {
            ca_fingerprints.push(fingerprint(root));
        }
        let common_name = leaf
            .subject()
            .iter_common_name()
            .last()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_string();
        // SPIRE's SAN selectors: a URI SAN x509pop://<trust domain>/<key>/<value> is
        // san:<key>:<value>; other SANs make none
        let san = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => san_selector(u, self.trust_domain.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Verified {
            ca_fingerprints,
            subject,
            common_name,
            serial_hex: serial_hex(leaf),
            san,
        })
    }
}

/// The extended key usages a node certificate may carry (none at all is fine): clientAuth (it
/// authenticates to the server), serverAuth (host certificates often carry only that) or
/// anyExtendedKeyUsage. A certificate meant only for, say, code signing is not a node's.
struct NodeEku;

impl webpki::ExtendedKeyUsageValidator for NodeEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        // id-kp-serverAuth, id-kp-clientAuth (1.3.6.1.5.5.7.3.1 and .2), anyExtendedKeyUsage
        const ALLOWED: [&[u8]; 3] = [
            &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01],
            &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02],
            &[0x55, 0x1d, 0x25, 0x00],
        ];
        let mut any = false;
        for id in iter {
            let id = id?;
            if ALLOWED.iter().any(|a| id == webpki::KeyPurposeId::new(a)) {
                return Ok(());
            }
            any = true;
        }
        if any {
            #[allow(deprecated)] // the context variant cannot be built outside webpki
            return Err(webpki::Error::RequiredEkuNotFound);
        }
        Ok(())
    }
}

/// The certificate's subject for messages: quoted and escaped (it is attacker input until the
/// chain is verified) and cut at 160 characters.
fn subject_of(cert: &X509Certificate<'_>) -> String {
    let s = cert.subject().to_string();
    let cut: String = s.chars().take(160).collect();
    format!("{cut:?}")
}

/// `x509pop://<trust_domain>/<key>/<value>` as (key, value): the scheme and host compared
/// without case, a query or fragment dropped, the path percent-decoded.
fn san_selector(uri: &str, trust_domain: &str) -> Option<(String, String)> {
    let (scheme, rest) = uri.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("x509pop") {
        return None;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (host, path) = rest.split_once('/')?;
    if !host.eq_ignore_ascii_case(trust_domain) {
        return None;
    }
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?
        .into_owned();
    let (key, value) = path.split_once('/')?;
    (!key.is_empty() && !value.is_empty()).then(|| (key.to_string(), value.to_string()))
}

/// The serial number as SPIRE prints it (`%x` of the number: hex, no leading zeros).
fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let h = hex::encode(cert.raw_serial());
    let t = h.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

#[async_trait::async_trait]
impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &'static str {
        "x509pop"
    }

    /// Every renewal shows the certificate and a fresh signature again: a certificate that
    /// expired, or whose CA left the bundle, stops renewals.
    fn reattest_on_renewal(&self) -> bool {
        true
    }

    /// A node certificate renewed on disk has a new fingerprint, so a new agent ID.
    fn identity_follows_credentials(&self) -> bool {
        true
    }

    async fn attest(
        &self,
        ev: Evidence<'_>,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        // the chain first: an untrusted certificate gets no challenge
        let (chain, verified) = self.check_payload(ev.payload, ev.now)?;
        let leaf_der = &chain[0];

        let nonce: [u8; NONCE_LEN] = rand::random();
        let signature = challenger.challenge(nonce.to_vec()).await?;
        let msg = signed_message(&nonce, ev.csr_spki);
        let ee_der = CertificateDer::from(leaf_der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&ee_der)
            .map_err(|e| AttestError::Malformed(format!("x509pop certificate: {e:?}")))?;
        if !POP_ALGS
            .iter()
            .any(|alg| ee.verify_signature(*alg, &msg, &signature).is_ok())
        {
            return Err(refused(
                SIGNATURE,
                format!(
                    "the proof of possession does not verify with the key of {} (a signature over another nonce or CSR key, or made by another key)",
                    verified.subject
                ),
            ));
        }

        let fp = fingerprint(leaf_der);
        let (cn, serial) = (&verified.common_name, &verified.serial_hex);
        let path = self
            .template
            .render(&Values {
                plugin_name: "x509pop",
                fingerprint: &fp,
                trust_domain: self.trust_domain.as_str(),
                common_name: cn,
                serial_number_hex: serial,
            })
            .map_err(|e| refused(AGENT_PATH, e))?;
        let agent_id = self
            .trust_domain
            .id_with_path(&format!("/spire/agent/{}", path.trim_start_matches('/')))
            .map_err(|e| {
                refused(
                    AGENT_PATH,
                    format!("agent_path_template gave {path:?}: {e}"),
                )
            })?;

        let mut values = Vec::new();
        if !cn.is_empty() {
            values.push(format!("subject:cn:{cn}"));
        }
        for f in &verified.ca_fingerprints {
            values.push(format!("ca:fingerprint:{f}"));
        }
        values.push(format!("serialnumber:{serial}"));
        for (key, value) in &verified.san {
            values.push(format!("san:{key}:{value}"));
        }
        let mut selectors: Vec<Selector> = values
            .iter()
            .filter_map(|v| Selector::new("x509pop", v).ok())
            .collect();
        selectors.sort();
        selectors.dedup();
        tracing::debug!(agent_id = %agent_id, fingerprint = %fp, "x509pop: chain and proof of possession verified");
        Ok(Attested {
            agent_id,
            selectors,
            can_reattest: true,
            tee_instance: None,
            claims: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::san_selector;

    #[test]
    fn san_selectors_read_spire_uris_only() {
        let td = "example.org";
        let sel = |u: &str| san_selector(u, td);
        assert_eq!(
            sel("x509pop://example.org/datacenter/dc1"),
            Some(("datacenter".into(), "dc1".into()))
        );
        assert_eq!(
            sel("X509POP://Example.org/env/prod%20a?x=1#f"),
            Some(("env".into(), "prod a".into()))
        );
        for other in [
            "x509pop://other.org/datacenter/dc1",
            "spiffe://example.org/datacenter/dc1",
            "x509pop://example.org/datacenter",
            "x509pop://example.org//dc1",
            "x509pop://example.org/k/",
        ] {
            assert_eq!(sel(other), None, "{other}");
        }
    }
}
