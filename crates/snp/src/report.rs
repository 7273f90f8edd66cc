//! The attestation report: a fixed 0x4A0-byte little-endian structure (SEV-SNP ABI, Table
//! "ATTESTATION_REPORT"), versions 2 to 5.

use crate::error::{ErrorKind, SnpError};
use std::fmt;

pub const REPORT_LEN: usize = 0x4A0;
/// The signature covers bytes [0, 0x2A0) for every version.
pub const SIGNED_LEN: usize = 0x2A0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Product {
    Milan,
    Genoa,
    Turin,
}

impl Product {
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "milan" => Some(Product::Milan),
            "genoa" => Some(Product::Genoa),
            "turin" => Some(Product::Turin),
            _ => None,
        }
    }

    /// From CPUID family/model (v3+ reports). Genoa-class parts include models 10h-1Fh and
    /// A0h-AFh (Siena, Bergamo); Turin is family 1Ah.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, _) => Some(Product::Turin),
            _ => None,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which key signed the report (key_info bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    Vcek,
    Vlek,
    None,
}

impl SigningKey {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningKey::Vcek => "vcek",
            SigningKey::Vlek => "vlek",
            SigningKey::None => "none",
        }
    }
}

/// Security patch levels of the platform's components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcb {
    /// Turin only.
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl Tcb {
    /// The components whose SPLs differ between `self` (a report's TCB) and `cert` (a
    /// certificate's), as (name, self, cert); fmc counts on Turin only.
    pub fn differences(&self, cert: &Tcb, product: Product) -> Vec<(&'static str, u8, u8)> {
        [
            ("bootloader", self.bootloader, cert.bootloader),
            ("tee", self.tee, cert.tee),
            ("snp", self.snp, cert.snp),
            ("microcode", self.microcode, cert.microcode),
        ]
        .into_iter()
        .chain(
            (product == Product::Turin)
                .then(|| ("fmc", self.fmc.unwrap_or(0), cert.fmc.unwrap_or(0))),
        )
        .filter(|(_, r, c)| r != c)
        .collect()
    }

    /// Decodes a TCB_VERSION for `product`: Milan/Genoa bytes bl=0, tee=1, snp=6, ucode=7;
    /// Turin fmc=0, bl=1, tee=2, snp=3, ucode=7.
    pub fn decode(raw: u64, product: Product) -> Self {
        let b = raw.to_le_bytes();
        match product {
            Product::Turin => Tcb {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
            _ => Tcb {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
        }
    }
}

/// A parsed report. Byte arrays are copied out; `raw` keeps the signed bytes.
#[derive(Clone)]
pub struct Report {
    pub raw: Vec<u8>,
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub sig_algo: u32,
    pub current_tcb: u64,
    pub platform_info: u64,
    pub key_info: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: u64,
    /// (family, model, stepping), v3 and later.
    pub cpuid: Option<(u8, u8, u8)>,
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    /// (major, minor, build).
    pub current_version: (u8, u8, u8),
    pub committed_version: (u8, u8, u8),
    pub launch_tcb: u64,
    /// (launch, current) mitigation vectors, v5 and later.
    pub mitigation_vectors: Option<(u64, u64)>,
    /// ECDSA P-384 R and S, big-endian (converted from the report's little-endian fields).
    pub sig_r: [u8; 48],
    pub sig_s: [u8; 48],
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version)
            .field("policy", &format_args!("{:#x}", self.policy))
            .field("measurement", &hex::encode(self.measurement))
            .field("reported_tcb", &format_args!("{:#x}", self.reported_tcb))
            .finish_non_exhaustive()
    }
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(arr(b, at))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(arr(b, at))
}

/// R or S: a 72-byte little-endian field of which the low 48 bytes are used.
fn sig_component(b: &[u8], at: usize) -> Result<[u8; 48], SnpError> {
    let field: [u8; 72] = arr(b, at);
    if field[48..].iter().any(|x| *x != 0) {
        return Err(SnpError::new(
            ErrorKind::BadSignature,
            "signature component is wider than 384 bits",
        ));
    }
    let mut be = [0u8; 48];
    for (i, v) in field[..48].iter().rev().enumerate() {
        be[i] = *v;
    }
    Ok(be)
}

impl Report {
    pub fn parse(bytes: &[u8]) -> Result<Self, SnpError> {
        if bytes.len() != REPORT_LEN {
            return Err(SnpError::new(
                ErrorKind::Unparseable,
                format!(
                    "a report is {REPORT_LEN:#x} bytes, this is {:#x}",
                    bytes.len()
                ),
            ));
        }
        let b = bytes;
        let version = u32_at(b, 0);
        if !(2..=5).contains(&version) {
            return Err(SnpError::new(
                ErrorKind::UnsupportedVersion,
                format!("report version {version} (supported: 2 to 5)"),
            ));
        }
        let sig_algo = u32_at(b, 0x34);
        if sig_algo != 1 {
            return Err(SnpError::new(
                ErrorKind::UnsupportedSigAlgo,
                format!(
                    "signature algorithm {sig_algo} (only 1, ECDSA P-384 with SHA-384, exists)"
                ),
            ));
        }
        let cpuid = (version >= 3).then(|| (b[0x188], b[0x189], b[0x18A]));
        let mitigation_vectors = (version >= 5).then(|| (u64_at(b, 0x1F8), u64_at(b, 0x200)));
        Ok(Report {
            raw: b.to_vec(),
            version,
            guest_svn: u32_at(b, 0x04),
            policy: u64_at(b, 0x08),
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl: u32_at(b, 0x30),
            sig_algo,
            current_tcb: u64_at(b, 0x38),
            platform_info: u64_at(b, 0x40),
            key_info: u32_at(b, 0x48),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xC0),
            id_key_digest: arr(b, 0xE0),
            author_key_digest: arr(b, 0x110),
            report_id: arr(b, 0x140),
            report_id_ma: arr(b, 0x160),
            reported_tcb: u64_at(b, 0x180),
            cpuid,
            chip_id: arr(b, 0x1A0),
            committed_tcb: u64_at(b, 0x1E0),
            current_version: (b[0x1EA], b[0x1E9], b[0x1E8]),
            committed_version: (b[0x1EE], b[0x1ED], b[0x1EC]),
            launch_tcb: u64_at(b, 0x1F0),
            mitigation_vectors,
            sig_r: sig_component(b, 0x2A0).unwrap_or([0; 48]),
            sig_s: sig_component(b, 0x2E8).unwrap_or([0; 48]),
        })
    }

    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info >> 2) & 0x7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            _ => SigningKey::None,
        }
    }

    /// Whether a VCEK's hwID (64 bytes, or 8 on Turin) names this report's chip: its bytes
    /// begin the chip ID and the rest of the chip ID is zero.
    pub fn chip_is(&self, hwid: &[u8]) -> bool {
        let n = hwid.len().min(64);
        !hwid.is_empty()
            && self.chip_id[..n] == hwid[..n]
            && self.chip_id[n..].iter().all(|b| *b == 0)
    }

    /// key_info bit 1: the chip ID is masked (all zeros).
    pub fn chip_id_masked(&self) -> bool {
        self.key_info & 0b10 != 0
    }

    /// Guest policy bit 19.
    pub fn debug(&self) -> bool {
        self.policy & (1 << 19) != 0
    }

    /// Guest policy bit 16: SMT allowed.
    pub fn smt_allowed(&self) -> bool {
        self.policy & (1 << 16) != 0
    }

    /// Guest policy bit 18: a migration agent may be associated.
    pub fn migrate_ma(&self) -> bool {
        self.policy & (1 << 18) != 0
    }

    /// Guest policy bit 20: single socket only.
    pub fn single_socket(&self) -> bool {
        self.policy & (1 << 20) != 0
    }

    /// The product the report names through CPUID (v3+), if it does.
    pub fn cpuid_product(&self) -> Option<Product> {
        self.cpuid.and_then(|(f, m, _)| Product::from_cpuid(f, m))
    }

    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN.min(self.raw.len())]
    }
}
