//! AMD endorsement certificates: VCEK/VLEK and their AMD extensions (SPLs, hwID, product),
//! and RSA-PSS (SHA-384, MGF1-SHA-384, salt 48) signatures between AMD certificates.

use crate::error::{ErrorKind, SnpError};
use crate::report::{Product, SigningKey, Tcb};
use x509_parser::prelude::*;

const OID_PRODUCT: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// What a VCEK or VLEK says about itself.
#[derive(Debug, Clone)]
pub struct Endorsement {
    pub der: Vec<u8>,
    pub kind: SigningKey,
    /// From the issuer's common name (`SEV-Milan`, `SEV-VLEK-Genoa`, …).
    pub product: Option<Product>,
    pub tcb: Tcb,
    /// Raw hwID bytes (64 on Milan/Genoa, 8 on Turin); None for a VLEK.
    pub hwid: Option<Vec<u8>>,
    pub not_before: i64,
    pub not_after: i64,
    /// Uncompressed P-384 point.
    pub public_key: Vec<u8>,
}

fn untrusted(m: impl Into<String>) -> SnpError {
    SnpError::new(ErrorKind::UntrustedChain, m)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SnpError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| untrusted(format!("certificate does not parse: {e}")))
}

pub fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// An SPL: a DER INTEGER (a value of 128 or more has a leading zero byte).
fn spl(v: &[u8]) -> Option<u8> {
    let (tag, len, rest) = (*v.first()?, *v.get(1)? as usize, v.get(2..)?);
    if tag != 0x02 || len == 0 || rest.len() != len {
        return None;
    }
    let digits: Vec<u8> = rest.iter().copied().skip_while(|b| *b == 0).collect();
    match digits.len() {
        0 => Some(0),
        1 => Some(digits[0]),
        _ => None,
    }
}

/// The hwID: raw bytes in extnValue, or (in some hand-made fixtures) wrapped in an OCTET STRING.
fn hwid(v: &[u8]) -> Vec<u8> {
    if v.len() >= 2
        && v[0] == 0x04
        && v[1] as usize == v.len() - 2
        && (v.len() - 2 == 64 || v.len() - 2 == 8)
    {
        return v[2..].to_vec();
    }
    v.to_vec()
}

/// Reads an issuer CN such as `SEV-Milan` or `SEV-VLEK-Turin`.
fn product_and_kind(issuer_cn: &str) -> (Option<Product>, Option<SigningKey>) {
    if let Some(p) = issuer_cn.strip_prefix("SEV-VLEK-") {
        (Product::from_name(p), Some(SigningKey::Vlek))
    } else if let Some(p) = issuer_cn.strip_prefix("SEV-") {
        (Product::from_name(p), Some(SigningKey::Vcek))
    } else {
        (None, None)
    }
}

impl Endorsement {
    /// Parses a VCEK or VLEK (DER or PEM).
    pub fn parse(bytes: &[u8]) -> Result<Self, SnpError> {
        let der = to_der(bytes)?;
        let cert = parse(&der)?;
        let issuer = common_name(cert.issuer()).unwrap_or_default();
        let (product, kind) = product_and_kind(&issuer);
        let kind = kind.ok_or_else(|| {
            untrusted(format!(
                "issuer {issuer:?} is not an AMD SEV signing key (ASK/ASVK)"
            ))
        })?;
        let mut tcb = Tcb::default();
        let mut hw = None;
        let mut ext_product = None;
        for ext in cert.extensions() {
            let oid = ext.oid.to_id_string();
            let v = ext.value;
            let get = |name: &str| {
                spl(v).ok_or_else(|| untrusted(format!("{name} extension is not a small INTEGER")))
            };
            match oid.as_str() {
                OID_BL => tcb.bootloader = get("blSPL")?,
                OID_TEE => tcb.tee = get("teeSPL")?,
                OID_SNP => tcb.snp = get("snpSPL")?,
                OID_UCODE => tcb.microcode = get("ucodeSPL")?,
                OID_FMC => tcb.fmc = Some(get("fmcSPL")?),
                OID_HWID => hw = Some(hwid(v)),
                OID_PRODUCT => {
                    // An IA5String (sometimes with a stepping suffix, e.g. "Milan-B0").
                    let s = String::from_utf8_lossy(v.get(2..).unwrap_or_default()).to_string();
                    ext_product = s.split('-').next().and_then(Product::from_name);
                }
                _ => {}
            }
        }
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        Ok(Endorsement {
            kind,
            product: product.or(ext_product),
            tcb,
            hwid: hw,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            public_key,
            der,
        })
    }
}

/// Accepts DER, or PEM text holding one certificate.
pub fn to_der(bytes: &[u8]) -> Result<Vec<u8>, SnpError> {
    if bytes.starts_with(b"-----BEGIN") {
        let p = ::pem::parse(bytes).map_err(|e| untrusted(format!("PEM: {e}")))?;
        return Ok(p.into_contents());
    }
    Ok(bytes.to_vec())
}

/// Checks that `issuer_der` signed `subject_der` with RSASSA-PSS SHA-384 (salt 48).
pub fn verify_rsa_pss(subject_der: &[u8], issuer_der: &[u8]) -> Result<(), SnpError> {
    let subject = parse(subject_der)?;
    let issuer = parse(issuer_der)?;
    let key = &issuer.public_key().subject_public_key.data;
    let pk = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PSS_2048_8192_SHA384,
        key.as_ref(),
    );
    pk.verify(
        subject.tbs_certificate.as_ref(),
        subject.signature_value.data.as_ref(),
    )
    .map_err(|_| {
        untrusted(format!(
            "{:?} is not signed by {:?}",
            common_name(subject.subject()).unwrap_or_default(),
            common_name(issuer.subject()).unwrap_or_default()
        ))
    })
}

/// Picks, among `candidates` (DER or PEM; unparseable ones are skipped), the VCEK or VLEK
/// that can vouch for `report`: the signing-key kind the report names, for a VCEK the report's
/// chip, and the report's TCB. Nothing is trusted here: the verifier still checks the chain.
pub fn select_endorsement<'a>(
    candidates: impl IntoIterator<Item = &'a [u8]>,
    report: &crate::report::Report,
    hint: Option<Product>,
) -> Option<Vec<u8>> {
    let kind = report.signing_key();
    candidates.into_iter().find_map(|c| {
        let e = Endorsement::parse(c).ok()?;
        let product = report.cpuid_product().or(hint).or(e.product)?;
        let same_tcb = Tcb::decode(report.reported_tcb, product)
            .differences(&e.tcb, product)
            .is_empty();
        let same_chip = match (kind, &e.hwid) {
            (SigningKey::Vcek, Some(hw)) => report.chip_id_masked() || report.chip_is(hw),
            (SigningKey::Vcek, None) => false,
            _ => true,
        };
        (e.kind == kind && same_tcb && same_chip).then_some(e.der)
    })
}

/// Validity window of a certificate (Unix seconds).
pub fn validity(der: &[u8]) -> Result<(i64, i64), SnpError> {
    let c = parse(der)?;
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spl_integers() {
        assert_eq!(spl(&[0x02, 0x01, 0x04]), Some(4));
        assert_eq!(spl(&[0x02, 0x02, 0x00, 0xa9]), Some(169));
        assert_eq!(spl(&[0x02, 0x01, 0x00]), Some(0));
        assert_eq!(spl(&[0x02, 0x02, 0x01, 0x00]), None);
        assert_eq!(spl(&[0x04, 0x01, 0x04]), None);
        assert_eq!(spl(&[0x02]), None);
        assert_eq!(spl(&[]), None);
    }

    #[test]
    fn hwid_forms() {
        let raw = vec![7u8; 64];
        assert_eq!(hwid(&raw), raw);
        let mut wrapped = vec![0x04, 0x40];
        wrapped.extend_from_slice(&raw);
        assert_eq!(hwid(&wrapped), raw);
    }
}
