//! The `sev_snp` attestation protocol shared by agent and server: the evidence the agent
//! returns to a challenge, and how REPORT_DATA binds the server's nonce and the agent's key.

use crate::cert_table::CertTable;
use crate::error::{ErrorKind, SnpError};
use crate::report::REPORT_LEN;
use sha2::{Digest, Sha512};

/// Domain separation label for REPORT_DATA.
pub const LABEL: &[u8] = b"ironpact-sev-snp-v1";
/// Nonces are at least this long.
pub const NONCE_LEN: usize = 32;

/// REPORT_DATA = SHA-512(label ‖ nonce ‖ DER SubjectPublicKeyInfo of the agent's CSR key):
/// a report made for another nonce (replay) or another key (theft) does not match.
pub fn report_data(nonce: &[u8], spki_der: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(LABEL);
    h.update(nonce);
    h.update(spki_der);
    let mut out = [0u8; 64];
    out.copy_from_slice(&h.finalize());
    out
}

/// The answer to a challenge: the 0x4A0-byte report, then a certificate table carrying the
/// VCEK or VLEK (empty when the server is to fetch it).
pub fn encode_evidence(report: &[u8], table: &[u8]) -> Vec<u8> {
    [report, table].concat()
}

/// Splits evidence into the report and the endorsement certificate it carries, if any.
pub fn decode_evidence(evidence: &[u8]) -> Result<(&[u8], Option<Vec<u8>>), SnpError> {
    if evidence.len() < REPORT_LEN {
        return Err(SnpError::new(
            ErrorKind::Unparseable,
            format!(
                "evidence is {} bytes, shorter than a report",
                evidence.len()
            ),
        ));
    }
    let (report, rest) = evidence.split_at(REPORT_LEN);
    if rest.is_empty() {
        return Ok((report, None));
    }
    let table = CertTable::parse(rest)?;
    Ok((report, table.signing_cert().map(<[u8]>::to_vec)))
}
