//! What the `x509pop` halves share: the payload (the node's certificate chain), the challenge
//! (a fresh nonce) and the message the node signs with its certificate's key, which also binds
//! the key of the agent's CSR (a relayed or replayed signature proves nothing for another key
//! or another nonce).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Bytes of the server's nonce.
pub const NONCE_LEN: usize = 32;
/// Certificates a payload may carry (the node's, then intermediates).
pub const MAX_CERTIFICATES: usize = 8;
/// Domain separation for what the node's key signs.
const CONTEXT: &[u8] = b"ironpact-x509pop-v1\0";

/// The AttestationData payload of `x509pop` (JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Payload {
    /// DER certificates, base64: the node's certificate first, then intermediates.
    pub certificates: Vec<String>,
}

impl Payload {
    pub fn new(chain: &[Vec<u8>]) -> Self {
        Self {
            certificates: chain.iter().map(|c| STANDARD.encode(c)).collect(),
        }
    }

    /// The DER certificates, or what is wrong with the payload.
    pub fn decode(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let p: Payload =
            serde_json::from_slice(bytes).map_err(|e| format!("x509pop payload: {e}"))?;
        if p.certificates.is_empty() {
            return Err("x509pop payload: no certificate".into());
        }
        if p.certificates.len() > MAX_CERTIFICATES {
            return Err(format!(
                "x509pop payload: {} certificates, at most {MAX_CERTIFICATES}",
                p.certificates.len()
            ));
        }
        p.certificates
            .iter()
            .map(|c| {
                STANDARD
                    .decode(c)
                    .map_err(|e| format!("x509pop certificate base64: {e}"))
            })
            .collect()
    }
}

/// What the node's key signs: the context, the server's nonce and the SubjectPublicKeyInfo of
/// the agent's CSR.
pub fn signed_message(nonce: &[u8], csr_spki: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 8 + nonce.len() + csr_spki.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(&(csr_spki.len() as u32).to_be_bytes());
    m.extend_from_slice(csr_spki);
    m
}

/// The SPIRE fingerprint of a certificate: SHA-1 of its DER, hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        der,
    ))
}
