//! Binds a fresh quote to the attestation challenge and to the agent's key: REPORT_DATA =
//! SHA-512("ironpact-tdx-v1" ‖ nonce ‖ DER SubjectPublicKeyInfo of the agent's CSR key).

use sha2::{Digest, Sha512};

pub const DOMAIN: &[u8] = b"ironpact-tdx-v1";

pub fn report_data(nonce: &[u8], spki_der: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(DOMAIN);
    h.update(nonce);
    h.update(spki_der);
    h.finalize().into()
}
