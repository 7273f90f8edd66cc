//! Verification of a report against its VCEK/VLEK and AMD's roots at an explicit time.
//! Checks run in a fixed order and the first failure is returned, so a report with several
//! defects always gets the same, most fundamental, error.

use crate::certs::{Endorsement, validity, verify_rsa_pss};
use crate::error::{ErrorKind, SnpError};
use crate::report::{Product, Report, SigningKey, Tcb};
use crate::roots::{AmdRoots, ProductRoots};

/// A report whose chain, chip, TCB and signature checked out. Only this module's verifiers
/// make one (its fields are private), so holding a `Verified` means the checks ran.
#[derive(Debug, Clone)]
pub struct Verified {
    report: Report,
    product: Product,
    signing_key: SigningKey,
    reported_tcb: Tcb,
    endorsement: Endorsement,
}

fn err(kind: ErrorKind, m: impl Into<String>) -> SnpError {
    SnpError::new(kind, m)
}

/// Decides the product: the report's CPUID (v3+), the certificate's issuer, or the caller's
/// hint; any two that disagree are `wrong_product`.
fn product_of(
    report: Option<&Report>,
    end: &Endorsement,
    hint: Option<Product>,
) -> Result<Product, SnpError> {
    let from_report = report.and_then(Report::cpuid_product);
    let known: Vec<(&str, Product)> = [
        ("report CPUID", from_report),
        ("certificate issuer", end.product),
        ("configuration", hint),
    ]
    .into_iter()
    .filter_map(|(w, p)| p.map(|p| (w, p)))
    .collect();
    let Some(&(_, first)) = known.first() else {
        return Err(err(
            ErrorKind::UntrustedChain,
            "cannot tell the product (Milan, Genoa, Turin): configure it",
        ));
    };
    if let Some((w, other)) = known.iter().find(|(_, p)| *p != first) {
        return Err(err(
            ErrorKind::WrongProduct,
            format!("{} says {first} but the {w} says {other}", known[0].0),
        ));
    }
    Ok(first)
}

fn roots_for(roots: &AmdRoots, product: Product) -> Result<&ProductRoots, SnpError> {
    roots.for_product(product).ok_or_else(|| {
        err(
            ErrorKind::UntrustedChain,
            format!("no AMD roots configured for {product}"),
        )
    })
}

/// Chain and validity of an endorsement key under the product's roots.
fn check_chain(end: &Endorsement, roots: &ProductRoots, now: i64) -> Result<(), SnpError> {
    let parent = match end.kind {
        SigningKey::Vlek => roots.asvk.as_ref().ok_or_else(|| {
            err(
                ErrorKind::UntrustedChain,
                format!("no ASVK configured for {}", roots.product),
            )
        })?,
        _ => &roots.ask,
    };
    verify_rsa_pss(&end.der, parent)?;
    for (name, der) in [
        ("VCEK/VLEK", &end.der),
        ("ASK/ASVK", parent),
        ("ARK", &roots.ark),
    ] {
        let (nb, na) = validity(der)?;
        if now < nb || now > na {
            return Err(err(
                ErrorKind::ExpiredCert,
                format!("the {name} certificate is valid from {nb} to {na}, not at {now}"),
            ));
        }
    }
    Ok(())
}

/// Verifies only a VCEK/VLEK: its chain to the pinned roots and its validity at `now`.
pub fn verify_endorsement(
    cert: &[u8],
    roots: &AmdRoots,
    now: i64,
    hint: Option<Product>,
) -> Result<(Endorsement, Product), SnpError> {
    let end = Endorsement::parse(cert)?;
    let product = product_of(None, &end, hint)?;
    let pr = roots_for(roots, product)?;
    check_chain(&end, pr, now)?;
    Ok((end, product))
}

/// Verifies `report` with its VCEK or VLEK (`cert`, DER or PEM) at Unix time `now`, and refuses
/// a guest whose policy allows debugging.
pub fn verify(
    report: &[u8],
    cert: &[u8],
    roots: &AmdRoots,
    now: i64,
    hint: Option<Product>,
) -> Result<Verified, SnpError> {
    let v = verify_authentic(report, cert, roots, now, hint)?;
    if v.report.debug() {
        return Err(err(
            ErrorKind::DebugPolicy,
            "the guest policy allows debugging (bit 19): its memory is not confidential",
        ));
    }
    Ok(v)
}

/// Everything [`verify`] checks except the debug bit, which a [`crate::policy::Policy`] judges.
pub fn verify_authentic(
    report: &[u8],
    cert: &[u8],
    roots: &AmdRoots,
    now: i64,
    hint: Option<Product>,
) -> Result<Verified, SnpError> {
    let report = Report::parse(report)?;
    let end = Endorsement::parse(cert)?;
    let key = report.signing_key();
    if key == SigningKey::None {
        return Err(err(
            ErrorKind::WrongKeyType,
            format!(
                "the report names no signing key (key_info {:#x})",
                report.key_info
            ),
        ));
    }
    if key != end.kind {
        return Err(err(
            ErrorKind::WrongKeyType,
            format!(
                "the report is signed by its {} but a {} was supplied",
                key.as_str().to_uppercase(),
                end.kind.as_str().to_uppercase()
            ),
        ));
    }
    let product = product_of(Some(&report), &end, hint)?;
    let pr = roots_for(roots, product)?;
    check_chain(&end, pr, now)?;
    if key == SigningKey::Vcek && !report.chip_id_masked() {
        let hw = end
            .hwid
            .as_deref()
            .ok_or_else(|| err(ErrorKind::WrongChipVcek, "the VCEK has no hwID extension"))?;
        if !report.chip_is(hw) {
            return Err(err(
                ErrorKind::WrongChipVcek,
                format!(
                    "the VCEK is for chip {} but the report comes from chip {}",
                    hex::encode(hw),
                    hex::encode(report.chip_id)
                ),
            ));
        }
    }
    let reported = Tcb::decode(report.reported_tcb, product);
    let cert = end.tcb;
    let mismatch: Vec<String> = reported
        .differences(&cert, product)
        .into_iter()
        .map(|(n, r, c)| format!("{n} {r} (report) vs {c} (certificate)"))
        .collect();
    if !mismatch.is_empty() {
        return Err(err(
            ErrorKind::TcbMismatch,
            format!(
                "reported TCB differs from the certificate's: {}",
                mismatch.join(", ")
            ),
        ));
    }
    let mut sig = [0u8; 96];
    sig[..48].copy_from_slice(&report.sig_r);
    sig[48..].copy_from_slice(&report.sig_s);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        &end.public_key,
    )
    .verify(report.signed_bytes(), &sig)
    .map_err(|_| {
        err(
            ErrorKind::BadSignature,
            "the report's signature does not verify with the certificate's key",
        )
    })?;
    Ok(Verified {
        product,
        signing_key: key,
        reported_tcb: reported,
        endorsement: end,
        report,
    })
}

impl Verified {
    pub fn report(&self) -> &Report {
        &self.report
    }

    pub fn product(&self) -> Product {
        self.product
    }

    pub fn signing_key(&self) -> SigningKey {
        self.signing_key
    }

    pub fn reported_tcb(&self) -> Tcb {
        self.reported_tcb
    }

    /// The VCEK or VLEK that signed the report.
    pub fn endorsement(&self) -> &Endorsement {
        &self.endorsement
    }

    /// The selectors a node attested with this report gets.
    pub fn selectors(&self) -> Vec<(String, String)> {
        let r = &self.report;
        let mut v = vec![
            ("measurement".to_string(), hex::encode(r.measurement)),
            (
                "product".to_string(),
                self.product.name().to_ascii_lowercase(),
            ),
            (
                "signing_key".to_string(),
                self.signing_key.as_str().to_string(),
            ),
            ("vmpl".to_string(), r.vmpl.to_string()),
            ("policy:debug".to_string(), r.debug().to_string()),
            ("policy:migrate_ma".to_string(), r.migrate_ma().to_string()),
            ("policy:smt".to_string(), r.smt_allowed().to_string()),
            ("host_data".to_string(), hex::encode(r.host_data)),
            ("family_id".to_string(), hex::encode(r.family_id)),
            ("image_id".to_string(), hex::encode(r.image_id)),
            ("guest_svn".to_string(), r.guest_svn.to_string()),
            ("id_key_digest".to_string(), hex::encode(r.id_key_digest)),
        ];
        if self.signing_key == SigningKey::Vcek && !r.chip_id_masked() {
            v.push(("chip_id".to_string(), hex::encode(r.chip_id)));
        }
        let t = self.reported_tcb;
        if let Some(f) = t.fmc {
            v.push(("tcb:fmc".to_string(), f.to_string()));
        }
        v.push(("tcb:bootloader".to_string(), t.bootloader.to_string()));
        v.push(("tcb:tee".to_string(), t.tee.to_string()));
        v.push(("tcb:snp".to_string(), t.snp.to_string()));
        v.push(("tcb:microcode".to_string(), t.microcode.to_string()));
        v
    }
}
