//! Binds a fresh quote to the attestation challenge and to the agent's key: REPORT_DATA =
//! SHA-512("ironpact-tdx-v1" ‖ nonce ‖ DER SubjectPublicKeyInfo of the agent's CSR key).

use sha2::{Digest, Sha512};

pub const DOMAIN: &[u8] = b"ironpact-tdx-v1";

pub fn report_data(nonce: &[u8], spki_der: &[u8]) -> [u8; 64] {
    bind(DOMAIN, nonce, spki_der)
}

/// SHA-512(`domain` ‖ nonce ‖ DER SubjectPublicKeyInfo): the binding of every DCAP quote
/// ironpact asks for (`domain` tells a TD's from an enclave's).
pub fn bind(domain: &[u8], nonce: &[u8], spki_der: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(domain);
    h.update(nonce);
    h.update(spki_der);
    h.finalize().into()
}
