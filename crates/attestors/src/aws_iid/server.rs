//! The `aws_iid` attestor: the agent sends its EC2 instance identity document and the PKCS#7
//! (CMS SignedData) signature AWS serves at `/latest/dynamic/instance-identity/rsa2048`; the
//! server verifies the signature with the AWS certificates configured for its regions, checks
//! the account allow-list, and names the agent
//! `spiffe://<td>/spire/agent/aws_iid/<account>/<region>/<instance>` as SPIRE does.
//!
//! The document alone proves where a VM is, not what it runs, and it never changes for an
//! instance: without hardware evidence an instance attests once (trust on first use) until it
//! is evicted. Combined with a TEE attestor (see `compose.rs`) it may attest again.
//!
//! CMS parsing is the `cms` crate's; the signature check is ours (ring), because `cms` 0.2 parses
//! but does not verify SignedData.

use super::protocol::IidPayload;
use crate::{AttestError, Attested, Challenger, Evidence, NodeAttestor, RefusalKind, TeeOutcome};
use der::{Decode, Encode};
use ironpact_spiffe::{Selector, TrustDomain};
use sha2::Digest;

/// The fields of the document we use.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IidDocument {
    pub account_id: String,
    pub region: String,
    pub instance_id: String,
    pub availability_zone: String,
    pub image_id: String,
}

pub struct AwsIidAttestor {
    pub trust_domain: TrustDomain,
    /// DER certificates whose keys may sign documents (AWS's per-region RSA-2048 certificates).
    pub certificates: Vec<Vec<u8>>,
    /// Accounts allowed to attest; empty means any.
    pub account_allowlist: Vec<String>,
}

const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_SHA256_RSA: &str = "1.2.840.113549.1.1.11";

fn bad(m: impl Into<String>) -> AttestError {
    AttestError::rejected(RefusalKind::Base("aws_iid"), m)
}

/// Verifies `pkcs7_der` (SignedData over `document`) with one of `certs`. Returns the index of
/// the certificate that verified.
pub fn verify_signature(
    document: &[u8],
    pkcs7_der: &[u8],
    certs: &[Vec<u8>],
) -> Result<usize, AttestError> {
    let ci = cms::content_info::ContentInfo::from_der(pkcs7_der)
        .map_err(|e| bad(format!("the signature is not PKCS#7: {e}")))?;
    if ci.content_type.to_string() != OID_SIGNED_DATA {
        return Err(bad(format!(
            "the signature is PKCS#7 {}, not SignedData",
            ci.content_type
        )));
    }
    let sd: cms::signed_data::SignedData = ci
        .content
        .decode_as()
        .map_err(|e| bad(format!("SignedData does not parse: {e}")))?;
    // The signed content, when embedded, must be the document the agent sent.
    if let Some(econtent) = &sd.encap_content_info.econtent
        && econtent.value() != document
    {
        return Err(bad(
            "the document differs from the one the signature carries (tampered document)",
        ));
    }
    let digest = sha2::Sha256::digest(document);
    let mut last = bad("the signature has no signer");
    for si in sd.signer_infos.0.iter() {
        if si.digest_alg.oid.to_string() != OID_SHA256 {
            last = bad(format!(
                "digest algorithm {} is not SHA-256",
                si.digest_alg.oid
            ));
            continue;
        }
        let alg = si.signature_algorithm.oid.to_string();
        if alg != OID_RSA && alg != OID_SHA256_RSA {
            last = bad(format!("signature algorithm {alg} is not RSA with SHA-256"));
            continue;
        }
        // With signed attributes, the signature covers their DER SET encoding and the
        // messageDigest attribute carries the document's hash.
        let signed: Vec<u8> = match &si.signed_attrs {
            Some(attrs) => {
                let md = attrs
                    .iter()
                    .find(|a| a.oid.to_string() == OID_MESSAGE_DIGEST)
                    .and_then(|a| a.values.iter().next())
                    .ok_or_else(|| bad("the signed attributes carry no messageDigest"))?;
                if md.value() != &digest[..] {
                    last = bad(
                        "the document's SHA-256 differs from the signed messageDigest (tampered document)",
                    );
                    continue;
                }
                attrs
                    .to_der()
                    .map_err(|e| bad(format!("signed attributes: {e}")))?
            }
            None => document.to_vec(),
        };
        for (i, cert) in certs.iter().enumerate() {
            let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) else {
                continue;
            };
            let key = &c.public_key().subject_public_key.data;
            if ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                key.as_ref(),
            )
            .verify(&signed, si.signature.as_bytes())
            .is_ok()
            {
                return Ok(i);
            }
        }
        last = bad(
            "the signature does not verify with any configured AWS certificate (certificates_path)",
        );
    }
    Err(last)
}

impl AwsIidAttestor {
    /// Checks the payload and returns the document it vouches for.
    pub fn check(&self, payload: &[u8]) -> Result<IidDocument, AttestError> {
        let p: IidPayload = serde_json::from_slice(payload)
            .map_err(|e| AttestError::Malformed(format!("aws_iid payload: {e}")))?;
        let sig = {
            use base64::Engine;
            let compact: String = p
                .signature_rsa2048
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| AttestError::Malformed(format!("aws_iid signature base64: {e}")))?
        };
        verify_signature(p.document.as_bytes(), &sig, &self.certificates)?;
        let doc: IidDocument = serde_json::from_str(&p.document).map_err(|e| {
            bad(format!(
                "the signed document is not an identity document: {e}"
            ))
        })?;
        let ok_part = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        for (name, v) in [
            ("accountId", &doc.account_id),
            ("region", &doc.region),
            ("instanceId", &doc.instance_id),
        ] {
            if !ok_part(v) {
                return Err(bad(format!("{name} {v:?} cannot be part of a SPIFFE ID")));
            }
        }
        if !self.account_allowlist.is_empty() && !self.account_allowlist.contains(&doc.account_id) {
            return Err(bad(format!(
                "account {} is not in account_allowlist",
                doc.account_id
            )));
        }
        Ok(doc)
    }
}

#[async_trait::async_trait]
impl NodeAttestor for AwsIidAttestor {
    fn name(&self) -> &'static str {
        "aws_iid"
    }

    async fn attest(
        &self,
        ev: Evidence<'_>,
        _: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let doc = self.check(ev.payload)?;
        let agent_id = self
            .trust_domain
            .id_with_path(&format!(
                "/spire/agent/aws_iid/{}/{}/{}",
                doc.account_id, doc.region, doc.instance_id
            ))
            .map_err(|e| AttestError::Malformed(e.to_string()))?;
        let selectors = [
            format!("az:{}", doc.availability_zone),
            format!("image:id:{}", doc.image_id),
            format!("instance:id:{}", doc.instance_id),
            format!("region:{}", doc.region),
            format!("account:{}", doc.account_id),
        ]
        .iter()
        .filter_map(|v| Selector::new("aws_iid", v).ok())
        .collect();
        Ok(Attested {
            agent_id,
            selectors,
            can_reattest: false,
            tee_instance: None,
            claims: None,
        })
    }

    fn tee_selectors(&self, tee: &TeeOutcome) -> Vec<Selector> {
        Selector::new("aws_iid", &format!("measurements:{}", tee.measurement))
            .into_iter()
            .collect()
    }
}
