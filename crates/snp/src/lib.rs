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

pub mod certs;
pub mod error;
pub mod policy;
pub mod report;
pub mod roots;
pub mod verify;

pub use error::{ErrorKind, SnpError};
pub use policy::Policy;
pub use report::{Product, Report, SigningKey, Tcb};
pub use roots::AmdRoots;
pub use verify::{Verified, verify, verify_authentic, verify_endorsement};
