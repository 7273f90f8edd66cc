//! A DCAP quote: v3 (SGX), v4 and v5 (TDX, TD 1.0 and TD 1.5 bodies), decoded once by dcap-qvl's
//! decoder and kept with its bytes; the accessors name what attestation reads from it.

pub use dcap_qvl::quote::{AuthDataV3, EnclaveReport, Report, TDReport10};

use crate::error::{ErrorKind, TdxError, err};

/// Intel's quoting enclave vendor ID: the only QE whose quotes DCAP collateral speaks for.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = dcap_qvl::INTEL_QE_VENDOR_ID;
/// Certification data type 5: the PCK certificate chain (PEM) inside the quote.
pub const CERT_DATA_PCK_CHAIN: u16 = 5;

/// Which TEE produced the quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tee {
    Tdx,
    Sgx,
}

impl Tee {
    /// As TCB info names it (`id`): "TDX" or "SGX".
    pub fn name(self) -> &'static str {
        match self {
            Tee::Tdx => "TDX",
            Tee::Sgx => "SGX",
        }
    }
}

/// The platform model a quote comes from: what collateral is fetched and cached for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Platform {
    pub tee: Tee,
    pub fmspc: [u8; 6],
    /// The PCK CA: "platform" or "processor" (as the PCS `ca` parameter spells it).
    pub ca: &'static str,
}

/// The body's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// TD 1.0 report, 584 bytes (v4 quotes, v5 body type 2).
    Td10,
    /// TD 1.5 report, 648 bytes (v5 body type 3): adds TEE_TCB_SVN2 and MRSERVICETD.
    Td15,
    /// TD 1.5 report with service-TD extensions (v5 body type 4).
    Td15Ex,
    /// SGX enclave report, 384 bytes.
    Sgx,
}

impl BodyType {
    pub fn name(self) -> &'static str {
        match self {
            BodyType::Td10 => "TD10",
            BodyType::Td15 => "TD15",
            BodyType::Td15Ex => "TD15EX",
            BodyType::Sgx => "SGX",
        }
    }
}

/// A decoded quote. Bytes after the signature data (padding some quote providers add) are kept
/// but take no part in anything.
#[derive(Debug, Clone)]
pub struct Quote {
    raw: Vec<u8>,
    parsed: dcap_qvl::quote::Quote,
}

impl Quote {
    /// Decodes a quote; any structural fault (truncation, unknown version or body type, a length
    /// field that runs past the end) is `unparseable`.
    pub fn parse(bytes: &[u8]) -> Result<Self, TdxError> {
        if bytes.len() < 48 {
            return Err(err(
                ErrorKind::Unparseable,
                format!("{} bytes: shorter than a quote header (48)", bytes.len()),
            ));
        }
        let parsed = dcap_qvl::quote::Quote::parse(bytes)
            .map_err(|e| err(ErrorKind::Unparseable, format!("quote: {e:#}")))?;
        let tee_ok = match parsed.header.tee_type {
            0x81 => matches!(parsed.header.version, 4 | 5) && !parsed.report.is_sgx(),
            0x00 => parsed.report.is_sgx(),
            _ => false,
        };
        if !tee_ok {
            return Err(err(
                ErrorKind::Unparseable,
                format!(
                    "quote v{} with TEE type {:#x} and a {} body: not a combination DCAP defines",
                    parsed.header.version,
                    parsed.header.tee_type,
                    body_type(&parsed.report).name()
                ),
            ));
        }
        if parsed.header.attestation_key_type != 2 {
            return Err(err(
                ErrorKind::Unparseable,
                format!(
                    "attestation key type {}: only 2 (ECDSA P-256) exists",
                    parsed.header.attestation_key_type
                ),
            ));
        }
        Ok(Self {
            raw: bytes.to_vec(),
            parsed,
        })
    }

    /// The bytes as given (including any trailing padding).
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Header and body: what the attestation key signs (the v5 body type and size included).
    pub fn signed_bytes(&self) -> &[u8] {
        // parse() decoded at least this much
        &self.raw[..self.parsed.signed_length().min(self.raw.len())]
    }

    pub fn version(&self) -> u16 {
        self.parsed.header.version
    }

    pub fn tee(&self) -> Tee {
        if self.parsed.report.is_sgx() {
            Tee::Sgx
        } else {
            Tee::Tdx
        }
    }

    pub fn body_type(&self) -> BodyType {
        body_type(&self.parsed.report)
    }

    pub fn qe_vendor_id(&self) -> [u8; 16] {
        self.parsed.header.qe_vendor_id
    }

    /// The TD report (TD 1.0 fields; TD 1.5 bodies start with the same fields).
    pub fn td(&self) -> Option<&TDReport10> {
        self.parsed.report.as_td10()
    }

    /// MRSERVICETD of a TD 1.5 body.
    pub fn mr_service_td(&self) -> Option<[u8; 48]> {
        self.parsed.report.as_td15().map(|r| r.mr_service_td)
    }

    /// The SGX enclave report of an SGX quote.
    pub fn enclave(&self) -> Option<&EnclaveReport> {
        self.parsed.report.as_sgx()
    }

    pub fn report_data(&self) -> [u8; 64] {
        match &self.parsed.report {
            Report::SgxEnclave(r) => r.report_data,
            other => other.as_td10().map(|r| r.report_data).unwrap_or([0; 64]),
        }
    }

    /// The RTMRs of a TD, in order.
    pub fn rtmrs(&self) -> Option<[[u8; 48]; 4]> {
        self.td().map(|t| [t.rt_mr0, t.rt_mr1, t.rt_mr2, t.rt_mr3])
    }

    /// TD attributes bit 0 (TUD.DEBUG), or the SGX enclave's DEBUG attribute (bit 1).
    pub fn debug(&self) -> bool {
        match (self.td(), self.enclave()) {
            (Some(t), _) => t.td_attributes[0] & 0x01 != 0,
            (None, Some(e)) => e.attributes[0] & 0x02 != 0,
            (None, None) => false,
        }
    }

    /// Signature, attestation key, QE report and certification data, in the v3 shape for
    /// every version.
    pub fn auth(&self) -> AuthDataV3 {
        self.parsed.auth_data.clone().into_v3()
    }

    /// The innermost certification data type (5 = PCK chain; 2, 3 = encrypted PPID; 4 = PCK leaf).
    pub fn cert_data_type(&self) -> u16 {
        self.parsed.inner_cert_type()
    }

    /// The PEM PCK chain of certification data type 5.
    pub fn pck_chain_pem(&self) -> Option<&[u8]> {
        self.parsed.raw_cert_chain().ok()
    }

    /// What collateral is looked up by: the TEE, the FMSPC and the PCK CA that issued the PCK
    /// certificate (read from the certificate, not checked: verification does that).
    pub fn platform(&self) -> Result<Platform, TdxError> {
        let fmspc = dcap_qvl::intel::quote_fmspc(&self.parsed)
            .map_err(|e| err(ErrorKind::UntrustedChain, format!("PCK certificate: {e:#}")))?;
        let ca = dcap_qvl::intel::quote_ca(&self.parsed)
            .map_err(|e| err(ErrorKind::UntrustedChain, format!("PCK certificate: {e:#}")))?;
        Ok(Platform {
            tee: self.tee(),
            fmspc,
            ca: ca.as_id_str(),
        })
    }

    /// dcap-qvl's own view, for what the verifier hands to it.
    pub fn inner(&self) -> &dcap_qvl::quote::Quote {
        &self.parsed
    }
}

fn body_type(r: &Report) -> BodyType {
    match r {
        Report::SgxEnclave(_) => BodyType::Sgx,
        Report::TD10(_) => BodyType::Td10,
        Report::TD15(_) => BodyType::Td15,
        Report::TD15Ex(_) => BodyType::Td15Ex,
    }
}
