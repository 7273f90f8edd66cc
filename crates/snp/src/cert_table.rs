//! The certificate table of an extended report (SNP_GET_EXT_REPORT's certs buffer) and of
//! configfs-tsm's `auxblob`: 24-byte entries {GUID, offset u32 LE, length u32 LE}, ended by
//! an all-zero GUID; offsets are from the start of the table. GUIDs are compared in their
//! RFC 4122 string byte order. Entries may hold DER or PEM.

use crate::error::{ErrorKind, SnpError};

pub const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
pub const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
pub const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
pub const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";

const ENTRY: usize = 24;
/// Far more entries than any table has; bounds the work on hostile input.
const MAX_ENTRIES: usize = 64;

/// The certificates a table carries, as DER.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertTable {
    pub ark: Option<Vec<u8>>,
    pub ask: Option<Vec<u8>>,
    pub vcek: Option<Vec<u8>>,
    pub vlek: Option<Vec<u8>>,
    /// Entries with GUIDs this table does not know, as (GUID string, bytes).
    pub other: Vec<(String, Vec<u8>)>,
}

fn guid_string(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn bad(m: impl Into<String>) -> SnpError {
    SnpError::new(ErrorKind::Unparseable, m)
}

/// Converts a PEM entry to DER; DER passes through.
fn der_of(bytes: &[u8]) -> Result<Vec<u8>, SnpError> {
    let trimmed = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&bytes[..0], |i| &bytes[i..]);
    if trimmed.starts_with(b"-----BEGIN") {
        return ::pem::parse(trimmed)
            .map(::pem::Pem::into_contents)
            .map_err(|e| bad(format!("PEM entry: {e}")));
    }
    // DER: trim trailing zero padding after the outer SEQUENCE.
    match (bytes.first(), bytes.get(1)) {
        (Some(0x30), Some(&l)) => {
            let (len, hdr) = if l < 0x80 {
                (l as usize, 2)
            } else {
                let n = (l & 0x7f) as usize;
                if n == 0 || n > 4 || bytes.len() < 2 + n {
                    return Err(bad("certificate entry has a bad DER length"));
                }
                (
                    bytes[2..2 + n]
                        .iter()
                        .fold(0usize, |a, b| (a << 8) | *b as usize),
                    2 + n,
                )
            };
            let end = hdr
                .checked_add(len)
                .filter(|e| *e <= bytes.len())
                .ok_or_else(|| bad("certificate entry is truncated"))?;
            Ok(bytes[..end].to_vec())
        }
        _ => Err(bad("certificate entry is neither DER nor PEM")),
    }
}

impl CertTable {
    pub fn parse(buf: &[u8]) -> Result<Self, SnpError> {
        let mut t = CertTable::default();
        for i in 0..=MAX_ENTRIES {
            let at = i * ENTRY;
            let e = buf
                .get(at..at + ENTRY)
                .ok_or_else(|| bad("certificate table ends without its zero entry"))?;
            let guid = &e[..16];
            if guid.iter().all(|b| *b == 0) {
                return Ok(t);
            }
            if i == MAX_ENTRIES {
                break;
            }
            let off = u32::from_le_bytes([e[16], e[17], e[18], e[19]]) as usize;
            let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as usize;
            let body = off
                .checked_add(len)
                .and_then(|end| buf.get(off..end))
                .ok_or_else(|| {
                    bad(format!(
                        "certificate entry {i} points outside the table ({off}+{len} > {})",
                        buf.len()
                    ))
                })?;
            let id = guid_string(guid);
            match id.as_str() {
                GUID_ARK => t.ark = Some(der_of(body)?),
                GUID_ASK => t.ask = Some(der_of(body)?),
                GUID_VCEK => t.vcek = Some(der_of(body)?),
                GUID_VLEK => t.vlek = Some(der_of(body)?),
                _ => t.other.push((id, body.to_vec())),
            }
        }
        Err(bad(format!(
            "certificate table has more than {MAX_ENTRIES} entries"
        )))
    }

    /// Builds a table (for evidence sources that produce one).
    pub fn build(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let header = (entries.len() + 1) * ENTRY;
        let mut out = Vec::new();
        let mut body = Vec::new();
        for (guid, bytes) in entries {
            let g: Vec<u8> = hex::decode(guid.replace('-', "")).unwrap_or_else(|_| vec![0; 16]);
            out.extend_from_slice(&g);
            out.extend_from_slice(&((header + body.len()) as u32).to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
        }
        out.extend_from_slice(&[0u8; ENTRY]);
        out.extend_from_slice(&body);
        out
    }

    /// The VCEK or VLEK the table carries.
    pub fn signing_cert(&self) -> Option<&[u8]> {
        self.vcek.as_deref().or(self.vlek.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_bad_tables() {
        let der = [0x30, 0x03, 0x02, 0x01, 0x05];
        let mut padded = der.to_vec();
        padded.extend_from_slice(&[0, 0, 0]);
        let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.to_vec()));
        let t = CertTable::build(&[
            (GUID_VCEK, &padded),
            (GUID_ASK, pem.as_bytes()),
            ("00000000-0000-0000-0000-000000000001", b"x"),
        ]);
        let p = CertTable::parse(&t).unwrap();
        assert_eq!(p.vcek.as_deref(), Some(&der[..]));
        assert_eq!(p.ask.as_deref(), Some(&der[..]));
        assert_eq!(p.other.len(), 1);
        assert_eq!(p.signing_cert(), Some(&der[..]));
        // truncations, bad offsets, no terminator
        for n in [0, 10, 24, 48, t.len() - 1] {
            assert!(CertTable::parse(&t[..n]).is_err(), "cut at {n}");
        }
        let mut evil = t.clone();
        evil[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(CertTable::parse(&evil).is_err());
        let endless = vec![1u8; 24 * 70];
        assert!(CertTable::parse(&endless).is_err());
        assert_eq!(CertTable::parse(&[0u8; 24]).unwrap(), CertTable::default());
    }
}
