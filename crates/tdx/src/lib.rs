//! Intel TDX (and SGX) DCAP quotes: parse, then verify to Intel's root with collateral, then
//! judge with a policy: the same three steps as `ironpact-snp`.
//!
//! [`quote::Quote::parse`] decodes v3/v4/v5 quotes (TD 1.0 and TD 1.5 bodies; SGX for
//! diagnostics) with dcap-qvl's decoder; [`verify::verify_quote`] checks what a quote proves
//! alone (PCK chain, QE report, attestation key, signature); [`verify::verify`] adds the
//! collateral (TCB info, QE identity, CRLs) through dcap-qvl's `QuoteVerifier` at an explicit
//! `now`; [`policy::Policy::check`] judges TCB status, measurements and attributes. No I/O:
//! quotes, collateral, roots and time are passed in (the fetcher lives in the server).

pub mod binding;
pub mod collateral;
pub mod error;
pub mod policy;
pub mod quote;
pub mod simulate;
pub mod verify;

pub use collateral::Collateral;
pub use error::{ErrorKind, TdxError};
pub use policy::Policy;
pub use quote::{Platform, Quote, Tee};
pub use verify::{Roots, Verified, verify, verify_quote};

/// Entry points for the fuzz targets in `fuzz/`: every parser must return, never panic.
#[doc(hidden)]
pub mod fuzz {
    /// A quote parse, every accessor, then the collateral-free checks against Intel's root.
    pub fn quote(data: &[u8]) {
        if let Ok(q) = crate::Quote::parse(data) {
            let _ = (q.rtmrs(), q.debug(), q.report_data(), q.pck_chain_pem());
            let _ = crate::verify_quote(&q, &crate::Roots::intel(), 1_750_000_000);
        }
    }

    /// Collateral JSON.
    pub fn collateral(data: &[u8]) {
        let _ = crate::Collateral::from_json(data);
    }
}
