//! AMD's certificate revocation lists (KDS `/vcek/v1/{product}/crl`): signed by the ARK with
//! RSA-PSS SHA-384, listing revoked ASK/ASVK and VCEK/VLEK serial numbers.

use crate::certs::common_name;
use crate::error::{ErrorKind, SnpError};
use crate::roots::ProductRoots;
use x509_parser::prelude::*;
use x509_parser::revocation_list::CertificateRevocationList;

fn strip(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

/// Checks that `crl_der` is the ARK's current CRL and that none of `certs` is on it.
pub fn check_revocation(
    crl_der: &[u8],
    roots: &ProductRoots,
    certs: &[&[u8]],
    now: i64,
) -> Result<(), SnpError> {
    let untrusted = |m: String| SnpError::new(ErrorKind::UntrustedChain, m);
    let (_, crl) = CertificateRevocationList::from_der(crl_der)
        .map_err(|e| untrusted(format!("CRL does not parse: {e}")))?;
    let (_, ark) =
        X509Certificate::from_der(&roots.ark).map_err(|e| untrusted(format!("ARK: {e}")))?;
    let key = &ark.public_key().subject_public_key.data;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PSS_2048_8192_SHA384,
        key.as_ref(),
    )
    .verify(
        crl.tbs_cert_list.as_ref(),
        crl.signature_value.data.as_ref(),
    )
    .map_err(|_| untrusted(format!("the CRL is not signed by ARK-{}", roots.product)))?;
    let this = crl.last_update().timestamp();
    if now < this {
        return Err(untrusted(format!(
            "the CRL is not valid before {this} (now {now})"
        )));
    }
    if let Some(next) = crl.next_update().map(|t| t.timestamp())
        && now > next
    {
        return Err(SnpError::new(
            ErrorKind::ExpiredCert,
            format!("the CRL expired at {next} (now {now}): fetch a current one"),
        ));
    }
    for der in certs {
        let (_, c) =
            X509Certificate::from_der(der).map_err(|e| untrusted(format!("certificate: {e}")))?;
        let serial = strip(c.raw_serial());
        if crl
            .iter_revoked_certificates()
            .any(|r| strip(r.raw_serial()) == serial)
        {
            return Err(SnpError::new(
                ErrorKind::RevokedCert,
                format!(
                    "{} (serial {}) is revoked by AMD",
                    common_name(c.subject()).unwrap_or_default(),
                    hex::encode(c.raw_serial())
                ),
            ));
        }
    }
    Ok(())
}

/// [`check_revocation`] for a verified report: neither its VCEK/VLEK nor the ASK/ASVK above it
/// may be on the product's CRL.
pub fn check_verified(
    crl_der: &[u8],
    roots: &crate::roots::AmdRoots,
    v: &crate::verify::Verified,
    now: i64,
) -> Result<(), SnpError> {
    let pr = roots.for_product(v.product()).ok_or_else(|| {
        SnpError::new(
            ErrorKind::UntrustedChain,
            format!("no AMD roots configured for {}", v.product()),
        )
    })?;
    let parent = match v.signing_key() {
        crate::report::SigningKey::Vlek => pr.asvk.as_deref().ok_or_else(|| {
            SnpError::new(
                ErrorKind::UntrustedChain,
                format!("no ASVK configured for {}", v.product()),
            )
        })?,
        _ => pr.ask.as_slice(),
    };
    check_revocation(crl_der, pr, &[parent, &v.endorsement().der], now)
}
