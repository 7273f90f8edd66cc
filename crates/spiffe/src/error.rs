//! The one error type of this crate; each variant carries what explains it.

use thiserror::Error;

/// Everything that can go wrong in the pure SPIFFE layer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId { id: String, reason: IdProblem },
    #[error("invalid trust domain {td:?}: {reason}")]
    InvalidTrustDomain { td: String, reason: IdProblem },
    #[error("invalid selector {selector:?}: {reason}")]
    InvalidSelector {
        selector: String,
        reason: &'static str,
    },
    #[error("invalid duration {value:?}: {reason}")]
    InvalidDuration { value: String, reason: &'static str },
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("invalid JWT-SVID: {0}")]
    InvalidJwt(String),
}

/// Why a SPIFFE ID or trust domain was rejected (stable, testable reasons).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdProblem {
    #[error("it is empty")]
    Empty,
    #[error("scheme must be exactly \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain may only contain lowercase letters, digits, '.', '-' and '_'")]
    BadTrustDomainChar,
    #[error("path segments may only contain letters, digits, '.', '-' and '_'")]
    BadPathChar,
    #[error("path cannot contain empty segments")]
    EmptySegment,
    #[error("path cannot contain '.' or '..' segments")]
    DotSegment,
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    #[error("path must start with '/'")]
    PathNotAbsolute,
    #[error("it is longer than 2048 bytes")]
    TooLong,
}
