//! Verification: what a quote proves by itself (PCK chain to the pinned root → QE report signed
//! by the PCK key → QE report binds the attestation key → quote signed by that key), and, with
//! collateral, the TCB status through dcap-qvl.
//!
//! What is ours on top of dcap-qvl: the collateral-free check (dcap-qvl's `verify` needs
//! collateral), a pinned root that tests can replace, a stable error kind for every failure
//! (dcap-qvl reports text; when it refuses, [`diagnose`] re-runs the checks in a fixed order
//! to name the first one that fails), the grace period for stale collateral, and the policy
//! (`policy.rs`). On success only dcap-qvl's work is done, so ours costs almost nothing.

use crate::collateral::Collateral;
use crate::error::{ErrorKind, TdxError, err};
use crate::quote::{Quote, Tee};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The Intel SGX Root CA (also the root of TDX attestation), as Intel publishes it.
pub const INTEL_ROOT_DER: &[u8] = include_bytes!("../roots/Intel_SGX_Root_CA.der");

/// The root every chain must end in: Intel's, or a test root a configuration pins explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    der: Vec<u8>,
}

impl Roots {
    pub fn intel() -> Self {
        Self {
            der: INTEL_ROOT_DER.to_vec(),
        }
    }

    /// A root from DER or PEM bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TdxError> {
        let der = match pem::parse(bytes) {
            Ok(p) if p.tag() == "CERTIFICATE" => p.into_contents(),
            _ => bytes.to_vec(),
        };
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| err(ErrorKind::Unparseable, format!("root certificate: {e}")))?;
        Ok(Self { der })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn is_intel(&self) -> bool {
        self.der == INTEL_ROOT_DER
    }
}

/// A quote that passed verification, with what the collateral said of its platform. Only this
/// module's verifiers make one (its fields are private), so holding a `Verified` means the
/// checks ran.
#[derive(Debug, Clone)]
pub struct Verified {
    quote: Quote,
    fmspc: [u8; 6],
    tcb_status: Option<String>,
    advisories: Vec<String>,
    collateral_next_update: Option<i64>,
}

impl Verified {
    pub fn quote(&self) -> &Quote {
        &self.quote
    }

    /// The platform model, from the PCK certificate.
    pub fn fmspc(&self) -> [u8; 6] {
        self.fmspc
    }

    /// dcap-qvl's converged TCB status (`UpToDate`, `SWHardeningNeeded`, …); `None` without
    /// collateral.
    pub fn tcb_status(&self) -> Option<&str> {
        self.tcb_status.as_deref()
    }

    /// Intel security advisories that apply to the platform.
    pub fn advisories(&self) -> &[String] {
        &self.advisories
    }

    /// The collateral's earliest nextUpdate (Unix seconds), when there was collateral.
    pub fn collateral_next_update(&self) -> Option<i64> {
        self.collateral_next_update
    }

    /// `(name, value)` pairs for `tdx:<name>:<value>` selectors (TDX quotes only).
    pub fn selectors(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(td) = self.quote.td() else {
            return out;
        };
        out.push(("mrtd".into(), hex::encode(td.mr_td)));
        for (i, r) in [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
            .iter()
            .enumerate()
        {
            out.push((format!("rtmr{i}"), hex::encode(r)));
        }
        out.push(("mrseam".into(), hex::encode(td.mr_seam)));
        if let Some(s) = &self.tcb_status {
            out.push(("tcb_status".into(), s.clone()));
        }
        out.push(("fmspc".into(), hex::encode(self.fmspc)));
        out.push(("attributes".into(), format!("debug:{}", self.quote.debug())));
        out.push(("mrconfigid".into(), hex::encode(td.mr_config_id)));
        out.push(("mrowner".into(), hex::encode(td.mr_owner)));
        out
    }
}

fn unix(now: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64))
}

fn when(t: i64) -> String {
    crate::collateral::format_time(t).unwrap_or_else(|| t.to_string())
}

/// DER certificates from PEM text.
fn pem_certs(what: &str, pem_text: &[u8]) -> Result<Vec<Vec<u8>>, TdxError> {
    // the PEM in quotes is often NUL-terminated
    let end = pem_text.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let certs: Vec<Vec<u8>> = pem::parse_many(&pem_text[..end])
        .map_err(|e| err(ErrorKind::Unparseable, format!("{what}: {e}")))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(err(
            ErrorKind::UntrustedChain,
            format!("{what}: no certificate"),
        ));
    }
    Ok(certs)
}

/// Verifies `certs` (leaf first) to the root at `now`; returns the leaf's public key point.
fn chain_to_root(
    what: &str,
    certs: &[Vec<u8>],
    roots: &Roots,
    now: i64,
    kind: ErrorKind,
) -> Result<Vec<u8>, TdxError> {
    let root = CertificateDer::from(roots.der());
    let anchor = webpki::anchor_from_trusted_cert(&root)
        .map_err(|e| err(ErrorKind::Unparseable, format!("root certificate: {e}")))?;
    let leaf = CertificateDer::from(certs[0].as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| err(kind, format!("{what} leaf certificate: {e}")))?;
    let intermediates: Vec<CertificateDer<'_>> = certs[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    ee.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &intermediates,
        unix(now),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| {
        let detail = match &e {
            webpki::Error::CertExpired { time, not_after } => format!(
                "a certificate expired at {} (evaluated at {})",
                when(not_after.as_secs() as i64),
                when(time.as_secs() as i64)
            ),
            webpki::Error::CertNotValidYet { time, not_before } => format!(
                "a certificate is valid only from {} (evaluated at {})",
                when(not_before.as_secs() as i64),
                when(time.as_secs() as i64)
            ),
            webpki::Error::UnknownIssuer => {
                if roots.is_intel() {
                    "does not chain to the Intel SGX Root CA".to_string()
                } else {
                    "does not chain to the configured test root".to_string()
                }
            }
            other => format!("{other:?}"),
        };
        err(kind, format!("{what}: {detail}"))
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| err(kind, format!("{what} leaf certificate: {e}")))?;
    Ok(cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

fn ecdsa_ok(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(msg, sig)
        .is_ok()
}

/// The PCK chain the quote carries (certification data type 5), or the collateral's.
fn pck_chain(quote: &Quote, collateral: Option<&Collateral>) -> Result<Vec<Vec<u8>>, TdxError> {
    if let Some(pem) = quote.pck_chain_pem() {
        return pem_certs("PCK chain", pem);
    }
    if let Some(pem) = collateral.and_then(|c| c.inner().pck_certificate_chain.as_deref()) {
        return pem_certs("PCK chain (collateral)", pem.as_bytes());
    }
    Err(err(
        ErrorKind::UntrustedChain,
        format!(
            "certification data type {} carries no PCK certificate chain and the collateral has none: \
             fetch the PCK certificate for this platform into the collateral's pck_certificate_chain",
            quote.cert_data_type()
        ),
    ))
}

/// What the quote proves by itself, at `now`: the PCK chain to the root, the QE report signed by
/// the PCK key, the QE report binding the attestation key and auth data, the quote signed by the
/// attestation key. Returns the platform's FMSPC.
pub fn check_quote(
    quote: &Quote,
    collateral: Option<&Collateral>,
    roots: &Roots,
    now: i64,
) -> Result<[u8; 6], TdxError> {
    if quote.qe_vendor_id() != crate::quote::INTEL_QE_VENDOR_ID {
        return Err(err(
            ErrorKind::UntrustedChain,
            format!(
                "QE vendor {}: not Intel's quoting enclave",
                hex::encode(quote.qe_vendor_id())
            ),
        ));
    }
    let certs = pck_chain(quote, collateral)?;
    let pck_key = chain_to_root("PCK chain", &certs, roots, now, ErrorKind::UntrustedChain)?;
    let auth = quote.auth();
    if !ecdsa_ok(&pck_key, &auth.qe_report, &auth.qe_report_signature) {
        return Err(err(
            ErrorKind::BadQeReportSignature,
            "the QE report is not signed by the PCK certificate's key",
        ));
    }
    let mut h = Sha256::new();
    h.update(auth.ecdsa_attestation_key);
    h.update(&auth.qe_auth_data.data);
    let expected = h.finalize();
    // the QE report's REPORT_DATA is its last 64 bytes: SHA-256(key ‖ auth data) ‖ zeros
    let report_data = &auth.qe_report[320..384];
    if report_data[..32] != expected[..] || report_data[32..].iter().any(|&b| b != 0) {
        return Err(err(
            ErrorKind::BadQeReportSignature,
            "the QE report does not bind the quote's attestation key (REPORT_DATA is not SHA-256(key ‖ auth data))",
        ));
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&auth.ecdsa_attestation_key);
    if !ecdsa_ok(&point, quote.signed_bytes(), &auth.ecdsa_signature) {
        return Err(err(
            ErrorKind::BadSignature,
            "the quote's header and body are not signed by its attestation key",
        ));
    }
    dcap_qvl::intel::parse_pck_extension(&certs[0])
        .map(|e| e.fmspc)
        .map_err(|e| {
            err(
                ErrorKind::UntrustedChain,
                format!("PCK certificate SGX extension: {e:#}"),
            )
        })
}

/// Verification without collateral: the quote's own checks; the TCB status stays unknown.
pub fn verify_quote(quote: &Quote, roots: &Roots, now: i64) -> Result<Verified, TdxError> {
    let fmspc = check_quote(quote, None, roots, now)?;
    Ok(Verified {
        quote: quote.clone(),
        fmspc,
        tcb_status: None,
        advisories: Vec::new(),
        collateral_next_update: None,
    })
}

/// Full verification at `now` with collateral (stale collateral is accepted for `grace`
/// seconds past its nextUpdate). The TCB status is reported, not judged: that is the policy's.
pub fn verify(
    quote: &Quote,
    collateral: &Collateral,
    roots: &Roots,
    now: i64,
    grace: i64,
) -> Result<Verified, TdxError> {
    let at = collateral.evaluation_time(now, grace);
    // dcap-qvl also refuses debug TDs; the policy judges those, with its own error kind
    let verifier = dcap_qvl::verify::QuoteVerifier::new(roots.der().to_vec()).allow_debug(true);
    match verifier.verify(quote.bytes(), collateral.inner(), at.max(0) as u64) {
        Ok(report) => Ok(Verified {
            quote: quote.clone(),
            // dcap-qvl matched the PCK certificate's FMSPC against the TCB info's
            fmspc: collateral.fmspc,
            tcb_status: Some(report.status),
            advisories: report.advisory_ids,
            collateral_next_update: Some(collateral.next_update),
        }),
        Err(e) => Err(diagnose(quote, collateral, roots, at, &format!("{e:#}"))),
    }
}

/// Names the first check that fails, in the order of [`ErrorKind`], after dcap-qvl refused
/// with `message`.
pub fn diagnose(
    quote: &Quote,
    collateral: &Collateral,
    roots: &Roots,
    now: i64,
    message: &str,
) -> TdxError {
    let fmspc = match check_quote(quote, Some(collateral), roots, now) {
        Ok(f) => f,
        Err(e) => return e,
    };
    if let Err(e) = check_collateral_signatures(collateral, roots, now) {
        return e;
    }
    if !collateral.current_at(now) {
        return err(
            ErrorKind::CollateralExpired,
            format!(
                "the collateral is valid from {} until {}, evaluated at {}: fetch fresh collateral",
                when(collateral.issued),
                when(collateral.next_update),
                when(now)
            ),
        );
    }
    let tee = match quote.tee() {
        Tee::Tdx => "TDX",
        Tee::Sgx => "SGX",
    };
    if collateral.tee != tee {
        return err(
            ErrorKind::FmspcMismatch,
            format!("a {tee} quote with {} TCB info", collateral.tee),
        );
    }
    if collateral.fmspc != fmspc {
        return err(
            ErrorKind::FmspcMismatch,
            format!(
                "the PCK certificate is for FMSPC {}, the TCB info for {}",
                hex::encode(fmspc),
                hex::encode(collateral.fmspc)
            ),
        );
    }
    err(classify(message), format!("dcap-qvl: {message}"))
}

/// dcap-qvl's refusal, when every check above passed.
fn classify(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if any(&["tcb status is invalid"]) {
        ErrorKind::TcbStatusNotAllowed
    } else if any(&[
        "no matching tcb level",
        "tdx module",
        "qe isvsvn",
        "no tcb levels",
    ]) {
        ErrorKind::TcbLevelNotFound
    } else if any(&[
        "fmspc",
        "non-tdx tcb info",
        "non-sgx tcb info",
        "qe identity id/version",
    ]) {
        ErrorKind::FmspcMismatch
    } else if any(&["expired", "in the future", "notvalidyet", "not valid yet"]) {
        ErrorKind::CollateralExpired
    } else if any(&["crl", "tcb_info", "qe_identity"]) {
        ErrorKind::BadCollateralSignature
    } else if any(&["debug mode", "profiling"]) {
        ErrorKind::DebugTd
    } else if any(&[
        "sept_ve_disable",
        "migration",
        "reserved bits",
        "servtd",
        "service td",
    ]) {
        ErrorKind::TdAttributesNotAllowed
    } else if any(&["qe report", "qe identity", "mrsigner", "isvprodid"]) {
        ErrorKind::BadQeReportSignature
    } else if any(&["isv enclave report signature"]) {
        ErrorKind::BadSignature
    } else if any(&["decode", "unsupported", "vendor"]) {
        ErrorKind::Unparseable
    } else {
        ErrorKind::UntrustedChain
    }
}

/// TCB info and QE identity signed by the leaf of their issuer chain, which leads to the root.
pub fn check_collateral_signatures(
    collateral: &Collateral,
    roots: &Roots,
    now: i64,
) -> Result<(), TdxError> {
    let c = collateral.inner();
    for (what, chain, body, sig) in [
        (
            "TCB info",
            &c.tcb_info_issuer_chain,
            &c.tcb_info,
            &c.tcb_info_signature,
        ),
        (
            "QE identity",
            &c.qe_identity_issuer_chain,
            &c.qe_identity,
            &c.qe_identity_signature,
        ),
    ] {
        let certs = pem_certs(&format!("{what} issuer chain"), chain.as_bytes())?;
        let key = chain_to_root(
            &format!("{what} issuer chain"),
            &certs,
            roots,
            now,
            ErrorKind::BadCollateralSignature,
        )
        .map_err(|e| {
            if e.message.contains("expired") || e.message.contains("valid only from") {
                err(ErrorKind::CollateralExpired, e.message)
            } else {
                e
            }
        })?;
        if !ecdsa_ok(&key, body.as_bytes(), sig) {
            return Err(err(
                ErrorKind::BadCollateralSignature,
                format!("the {what} is not signed by its issuer chain's key"),
            ));
        }
    }
    Ok(())
}
