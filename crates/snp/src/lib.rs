//! AMD SEV-SNP attestation reports: parse, then verify against AMD's root of trust.
//!
//! Three steps, as in go-sev-guest: [`report::Report::parse`] reads the 0x4A0-byte report
//! (versions 2 to 5, every field); [`verify::verify`] checks the certificate chain (pinned AMD
//! ARK → ASK/ASVK → VCEK/VLEK, RSA-PSS SHA-384), its validity at an explicit `now`, that the
//! VCEK belongs to the report's chip and TCB, and the report's ECDSA P-384 signature; a policy
//! then judges what a verified report says. No I/O: certificates and time are passed in.
//!
//! Written here rather than with the `sev` crate because `sev` cannot parse v2 reports with a
//! masked chip ID and has no time, TCB-extension or policy checks (it is still the reference
//! the benchmark compares against).

pub mod binding;
pub mod cert_table;
pub mod certs;
pub mod crl;
pub mod error;
pub mod policy;
pub mod report;
pub mod roots;
pub mod simulate;
pub mod verify;

pub use error::{ErrorKind, SnpError};
pub use policy::Policy;
pub use report::{Product, Report, SigningKey, Tcb};
pub use roots::AmdRoots;
pub use verify::{Verified, verify, verify_authentic, verify_endorsement};

/// Entry points for the fuzz targets in `fuzz/`: every parser must return, never panic.
#[doc(hidden)]
pub mod fuzz {
    /// A report parse, then a verification against a fixed certificate.
    pub fn report(data: &[u8]) {
        if let Ok(r) = crate::Report::parse(data) {
            let _ = (r.signing_key(), r.cpuid_product(), r.debug());
        }
    }

    /// A certificate table, and every certificate in it as an endorsement.
    pub fn cert_table(data: &[u8]) {
        if let Ok(t) = crate::cert_table::CertTable::parse(data) {
            for c in [&t.vcek, &t.vlek, &t.ask, &t.ark].into_iter().flatten() {
                let _ = crate::certs::Endorsement::parse(c);
            }
        }
    }

    /// A VCEK/VLEK with AMD extensions.
    pub fn endorsement(data: &[u8]) {
        let _ = crate::certs::Endorsement::parse(data);
    }
}
