//! The closed set of TDX verification failures, each with a stable kind.

use std::fmt;

/// Stable error kinds, in the order checks run (the first failure is reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The quote (or collateral) cannot be read: truncated, wrong lengths, unknown version.
    Unparseable,
    /// The PCK certificate chain does not lead to the pinned root, is expired or revoked.
    UntrustedChain,
    /// The QE report is not signed by the PCK key, or does not bind the attestation key.
    BadQeReportSignature,
    /// The quote's header and body are not signed by the attestation key.
    BadSignature,
    /// TCB info, QE identity or a CRL is not signed by Intel's TCB signing or CA keys.
    BadCollateralSignature,
    /// The collateral is outside its issueDate..nextUpdate window at the time of evaluation.
    CollateralExpired,
    /// The collateral is for another platform (FMSPC) or another TEE type.
    FmspcMismatch,
    /// No TCB level of the collateral matches the platform's (or the QE's) SVNs.
    TcbLevelNotFound,
    /// The TCB status (or an advisory ID) is not allowed by the policy.
    TcbStatusNotAllowed,
    /// The TD was launched with the DEBUG attribute (or profiling) and the policy forbids it.
    DebugTd,
    /// Other TD attributes or XFAM bits the policy (or Intel's appraisal rules) refuse.
    TdAttributesNotAllowed,
    /// MRTD, an RTMR, MRSEAM, MRCONFIGID or MROWNER is not in its allow-list.
    MeasurementNotAllowed,
    /// The TDX module's SVN is below the policy's minimum.
    TcbTooLow,
    /// REPORT_DATA is not what the challenge expects (replay, or another key).
    ReportDataMismatch,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unparseable => "unparseable",
            ErrorKind::UntrustedChain => "untrusted_chain",
            ErrorKind::BadQeReportSignature => "bad_qe_report_signature",
            ErrorKind::BadSignature => "bad_signature",
            ErrorKind::BadCollateralSignature => "bad_collateral_signature",
            ErrorKind::CollateralExpired => "collateral_expired",
            ErrorKind::FmspcMismatch => "fmspc_mismatch",
            ErrorKind::TcbLevelNotFound => "tcb_level_not_found",
            ErrorKind::TcbStatusNotAllowed => "tcb_status_not_allowed",
            ErrorKind::DebugTd => "debug_td",
            ErrorKind::TdAttributesNotAllowed => "td_attributes_not_allowed",
            ErrorKind::MeasurementNotAllowed => "measurement_not_allowed",
            ErrorKind::TcbTooLow => "tcb_too_low",
            ErrorKind::ReportDataMismatch => "report_data_mismatch",
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
pub struct TdxError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TdxError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> TdxError {
    TdxError::new(kind, message)
}
