//! The closed set of verification failures, each with a stable kind.

use std::fmt;

/// Stable error kinds, in the order checks run (the first failure is reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    Unparseable,
    UnsupportedVersion,
    UnsupportedSigAlgo,
    WrongKeyType,
    WrongProduct,
    UntrustedChain,
    ExpiredCert,
    RevokedCert,
    WrongChipVcek,
    TcbMismatch,
    BadSignature,
    DebugPolicy,
    ReportDataMismatch,
    MeasurementNotAllowed,
    TcbTooLow,
    VmplNotAllowed,
    PolicyViolation,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unparseable => "unparseable",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::UnsupportedSigAlgo => "unsupported_sig_algo",
            ErrorKind::WrongKeyType => "wrong_key_type",
            ErrorKind::WrongProduct => "wrong_product",
            ErrorKind::UntrustedChain => "untrusted_chain",
            ErrorKind::ExpiredCert => "expired_cert",
            ErrorKind::RevokedCert => "revoked_cert",
            ErrorKind::WrongChipVcek => "wrong_chip_vcek",
            ErrorKind::TcbMismatch => "tcb_mismatch",
            ErrorKind::BadSignature => "bad_signature",
            ErrorKind::DebugPolicy => "debug_policy",
            ErrorKind::ReportDataMismatch => "report_data_mismatch",
            ErrorKind::MeasurementNotAllowed => "measurement_not_allowed",
            ErrorKind::TcbTooLow => "tcb_too_low",
            ErrorKind::VmplNotAllowed => "vmpl_not_allowed",
            ErrorKind::PolicyViolation => "policy_violation",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with its kind and a message that says what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SnpError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SnpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
