//! A software TD quoting stack for tests and demonstrations: a test root CA, a PCK Platform CA
//! and PCK certificate carrying Intel's SGX extension (FMSPC, CPUSVN, PCESVN), a TCB signing
//! certificate, a quoting enclave whose report binds the attestation key, TD reports signed
//! like Intel's, and the collateral (TCB info, QE identity, CRLs) that matches them. Nothing
//! here chains to Intel: the server accepts these quotes only when its config pins the test
//! root, and then verifies them with exactly the production code.

use crate::collateral::{Collateral, QuoteCollateralV3};
use crate::error::{ErrorKind, TdxError, err};
use dcap_qvl::quote::{
    AuthData, AuthDataV3, AuthDataV4, CertificationData, Data, EnclaveReport, Header,
    QEReportCertificationData, Report, TDReport10,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use scale::Encode;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn sim(e: impl std::fmt::Display) -> TdxError {
    err(ErrorKind::Unparseable, format!("simulated TDX: {e}"))
}

/// What the simulated platform reports and its collateral says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPlatform {
    pub fmspc: [u8; 6],
    pub cpusvn: [u8; 16],
    pub pcesvn: u16,
    /// TEE_TCB_SVN of the TDX module (byte 0: module SVN; byte 1 stays 0: no module identity).
    pub tee_tcb_svn: [u8; 16],
    /// The status the collateral gives this platform's TCB level.
    pub tcb_status: String,
    pub advisories: Vec<String>,
}

impl Default for SimPlatform {
    fn default() -> Self {
        Self {
            fmspc: [0x00, 0x80, 0x6f, 0x05, 0x00, 0x00],
            cpusvn: [3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
            pcesvn: 13,
            tee_tcb_svn: [5, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            tcb_status: "UpToDate".into(),
            advisories: Vec::new(),
        }
    }
}

/// The simulated QE's identity (Intel's TD QE uses its own MRSIGNER and ISVPRODID 2).
const QE_MRSIGNER: [u8; 32] = [0x51; 32];
const QE_ISVPRODID: u16 = 2;
const QE_ISVSVN: u16 = 4;
const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Certificates (DER) and PKCS#8 keys of the test PKI. File names under a directory:
/// `root.pem` (what the server pins), `root.pk8`, `pck-ca.pem`, `pck-ca.pk8`, `pck.pem`,
/// `pck.pk8`, `tcb-signer.pem`, `tcb-signer.pk8`.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub root: CertAndKey,
    pub pck_ca: CertAndKey,
    pub pck: CertAndKey,
    pub tcb_signer: CertAndKey,
}

/// A certificate (DER) and its PKCS#8 key.
pub type CertAndKey = (Vec<u8>, Vec<u8>);

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d.push(DnType::OrganizationName, "ironpact test TDX PKI");
    d
}

fn at(t: i64) -> Result<OffsetDateTime, TdxError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(sim)
}

// --- the SGX extension of PCK certificates: a SEQUENCE of (OID, value) pairs in Intel's layout,
// encoded with the `der` crate.

/// One `SEQUENCE { OBJECT IDENTIFIER, value }` of Intel's SGX extension.
#[derive(der::Sequence)]
struct SgxPair {
    id: der::asn1::ObjectIdentifier,
    value: der::Any,
}

const SGX: [u64; 7] = [1, 2, 840, 113741, 1, 13, 1];
const SGX_OID: &str = "1.2.840.113741.1.13.1";

fn pair(tail: &str, value: impl der::Encode) -> Result<SgxPair, TdxError> {
    use der::Decode;
    Ok(SgxPair {
        id: der::asn1::ObjectIdentifier::new(&format!("{SGX_OID}.{tail}")).map_err(sim)?,
        value: der::Any::from_der(&value.to_der().map_err(sim)?).map_err(sim)?,
    })
}

fn octets(b: &[u8]) -> Result<der::asn1::OctetString, TdxError> {
    der::asn1::OctetString::new(b).map_err(sim)
}

fn sgx_extension(p: &SimPlatform) -> Result<Vec<u8>, TdxError> {
    use der::Encode;
    let mut tcb = Vec::new();
    for (i, svn) in p.cpusvn.iter().enumerate() {
        tcb.push(pair(&format!("2.{}", i + 1), u16::from(*svn))?);
    }
    tcb.push(pair("2.17", p.pcesvn)?);
    tcb.push(pair("2.18", octets(&p.cpusvn)?)?);
    let body = vec![
        pair("1", octets(&[0x1d; 16])?)?,
        pair("2", tcb)?,
        pair("3", octets(&[0, 0])?)?,
        pair("4", octets(&p.fmspc)?)?,
        // SGX type: ENUMERATED 0 (Standard)
        pair(
            "5",
            der::Any::new(der::Tag::Enumerated, [0u8]).map_err(sim)?,
        )?,
    ];
    body.to_der().map_err(sim)
}

impl TestPki {
    /// A new root, PCK chain and TCB signer, valid from `not_before` until `not_after`.
    pub fn generate(p: &SimPlatform, not_before: i64, not_after: i64) -> Result<Self, TdxError> {
        let new_key = || KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sim);
        let ca_params = |cn: &str| -> Result<CertificateParams, TdxError> {
            let mut c = CertificateParams::new(Vec::<String>::new()).map_err(sim)?;
            c.distinguished_name = dn(cn);
            c.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            c.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            c.not_before = at(not_before)?;
            c.not_after = at(not_after)?;
            Ok(c)
        };
        let leaf_params = |cn: &str| -> Result<CertificateParams, TdxError> {
            let mut c = ca_params(cn)?;
            c.is_ca = IsCa::ExplicitNoCa;
            c.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::ContentCommitment,
            ];
            Ok(c)
        };
        let root_key = new_key()?;
        let root_params = ca_params("ironpact test SGX Root CA")?;
        let root = root_params.self_signed(&root_key).map_err(sim)?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        let ca_key = new_key()?;
        let ca_p = ca_params("ironpact test SGX PCK Platform CA")?;
        let ca = ca_p.signed_by(&ca_key, &root_issuer).map_err(sim)?;
        let ca_issuer = Issuer::from_params(&ca_p, &ca_key);

        let pck_key = new_key()?;
        let mut pck_p = leaf_params("ironpact test SGX PCK Certificate")?;
        pck_p
            .custom_extensions
            .push(CustomExtension::from_oid_content(&SGX, sgx_extension(p)?));
        let pck = pck_p.signed_by(&pck_key, &ca_issuer).map_err(sim)?;

        let tcb_key = new_key()?;
        let tcb = leaf_params("ironpact test SGX TCB Signing")?
            .signed_by(&tcb_key, &root_issuer)
            .map_err(sim)?;
        Ok(Self {
            root: (root.der().to_vec(), root_key.serialize_der()),
            pck_ca: (ca.der().to_vec(), ca_key.serialize_der()),
            pck: (pck.der().to_vec(), pck_key.serialize_der()),
            tcb_signer: (tcb.der().to_vec(), tcb_key.serialize_der()),
        })
    }

    fn files(&self) -> [(&'static str, &CertAndKey); 4] {
        [
            ("root", &self.root),
            ("pck-ca", &self.pck_ca),
            ("pck", &self.pck),
            ("tcb-signer", &self.tcb_signer),
        ]
    }

    /// The PKI as named files (`root.pem`, `root.pk8`, `pck-ca.pem`, … `tcb-signer.pk8`): what
    /// a `pki_dir` of the simulated quoting stack holds. This crate does no I/O; the caller
    /// writes them.
    pub fn to_files(&self) -> Vec<(String, Vec<u8>)> {
        self.files()
            .iter()
            .flat_map(|(name, (cert, key))| {
                [
                    (format!("{name}.pem"), pem_cert(cert).into_bytes()),
                    (format!("{name}.pk8"), key.clone()),
                ]
            })
            .collect()
    }

    /// The PKI from the files [`TestPki::to_files`] names; `read(file name)` gives a file's
    /// bytes or says why it cannot.
    pub fn from_files(read: impl Fn(&str) -> Result<Vec<u8>, String>) -> Result<Self, TdxError> {
        let pair = |name: &str| -> Result<CertAndKey, TdxError> {
            let cert = read(&format!("{name}.pem")).map_err(sim)?;
            let cert = pem::parse(&cert)
                .map_err(|e| sim(format!("{name}.pem: {e}")))?
                .into_contents();
            let key = read(&format!("{name}.pk8")).map_err(sim)?;
            Ok((cert, key))
        };
        Ok(Self {
            root: pair("root")?,
            pck_ca: pair("pck-ca")?,
            pck: pair("pck")?,
            tcb_signer: pair("tcb-signer")?,
        })
    }

    /// The chain a quote carries: PCK, Platform CA, root.
    pub fn pck_chain_pem(&self) -> String {
        [&self.pck.0, &self.pck_ca.0, &self.root.0]
            .iter()
            .map(|c| pem_cert(c))
            .collect()
    }
}

fn pem_cert(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn signer(pk8: &[u8]) -> Result<EcdsaKeyPair, TdxError> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8, &SystemRandom::new())
        .map_err(|e| sim(format!("key: {e}")))
}

fn sign(key: &EcdsaKeyPair, msg: &[u8]) -> Result<[u8; 64], TdxError> {
    let sig = key.sign(&SystemRandom::new(), msg).map_err(sim)?;
    sig.as_ref().try_into().map_err(sim)
}

/// The TD a simulated quote describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTd {
    pub mrtd: [u8; 48],
    pub rtmrs: [[u8; 48]; 4],
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrseam: [u8; 48],
    pub debug: bool,
}

impl SimTd {
    pub fn with_mrtd(mrtd: [u8; 48]) -> Self {
        Self {
            mrtd,
            rtmrs: [[0x11; 48], [0x22; 48], [0x33; 48], [0; 48]],
            mrconfigid: [0; 48],
            mrowner: [0; 48],
            mrseam: [0x5e; 48],
            debug: false,
        }
    }
}

/// The SGX enclave a simulated quote describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEnclave {
    pub mrenclave: [u8; 32],
    pub mrsigner: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub debug: bool,
}

/// An enclave's ATTRIBUTES: INIT and MODE64BIT (DEBUG, bit 1, when `debug`), XFRM x87/SSE/AVX
/// and the AVX-512 states, as production enclaves have them.
fn enclave_attributes(debug: bool) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = if debug { 0x07 } else { 0x05 };
    a[8] = 0xe7;
    a
}

/// A quoting stack on one platform: its PCK chain and key, and an attestation key of its own.
pub struct SimulatedTdx {
    chain_pem: String,
    pck_key: EcdsaKeyPair,
    attestation_key: EcdsaKeyPair,
    platform: SimPlatform,
}

impl SimulatedTdx {
    pub fn new(pki: &TestPki, platform: SimPlatform) -> Result<Self, TdxError> {
        let rng = SystemRandom::new();
        let ak =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(sim)?;
        Ok(Self {
            chain_pem: pki.pck_chain_pem(),
            pck_key: signer(&pki.pck.1)?,
            attestation_key: signer(ak.as_ref())?,
            platform,
        })
    }

    /// A v3 SGX quote over `enclave` with `report_data`, signed as Intel's SGX QE signs:
    /// what `/dev/attestation/quote` gives an enclave under Gramine or Occlum.
    pub fn sgx_quote(
        &self,
        enclave: &SimEnclave,
        report_data: [u8; 64],
    ) -> Result<Vec<u8>, TdxError> {
        let (ak, auth_data, qe, qe_sig) = self.qe_report()?;
        let report = EnclaveReport {
            cpu_svn: self.platform.cpusvn,
            misc_select: 0,
            reserved1: [0; 28],
            attributes: enclave_attributes(enclave.debug),
            mr_enclave: enclave.mrenclave,
            reserved2: [0; 32],
            mr_signer: enclave.mrsigner,
            reserved3: [0; 96],
            isv_prod_id: enclave.isv_prod_id,
            isv_svn: enclave.isv_svn,
            reserved4: [0; 60],
            report_data,
        };
        let quote = dcap_qvl::quote::Quote {
            header: Header {
                version: 3,
                attestation_key_type: 2,
                tee_type: 0,
                qe_svn: QE_ISVSVN,
                pce_svn: self.platform.pcesvn,
                qe_vendor_id: dcap_qvl::INTEL_QE_VENDOR_ID,
                user_data: [0; 20],
            },
            report: Report::SgxEnclave(report),
            auth_data: AuthData::V3(AuthDataV3 {
                ecdsa_signature: [0; 64],
                ecdsa_attestation_key: ak,
                qe_report: qe,
                qe_report_signature: qe_sig,
                qe_auth_data: Data::new(auth_data),
                certification_data: self.pck_chain(),
            }),
        };
        self.signed(quote, 384)
    }

    /// The certification data quotes carry: the PCK chain, PEM.
    fn pck_chain(&self) -> CertificationData {
        CertificationData {
            cert_type: crate::quote::CERT_DATA_PCK_CHAIN,
            body: Data::new(self.chain_pem.as_bytes().to_vec()),
        }
    }

    /// `quote` signed by the attestation key over its header and `body_len` bytes of body.
    fn signed(
        &self,
        mut quote: dcap_qvl::quote::Quote,
        body_len: usize,
    ) -> Result<Vec<u8>, TdxError> {
        let unsigned = quote.encode();
        let sig = sign(&self.attestation_key, &unsigned[..48 + body_len])?;
        match &mut quote.auth_data {
            AuthData::V3(a) => a.ecdsa_signature = sig,
            AuthData::V4(a) => a.ecdsa_signature = sig,
        }
        Ok(quote.encode())
    }

    /// The quoting enclave's report binding the attestation key, signed by the PCK key: the
    /// key, the QE auth data, the report and its signature.
    #[allow(clippy::type_complexity)]
    fn qe_report(&self) -> Result<([u8; 64], Vec<u8>, [u8; 384], [u8; 64]), TdxError> {
        let ak: [u8; 64] = self.attestation_key.public_key().as_ref()[1..]
            .try_into()
            .map_err(sim)?;
        let auth_data = vec![0u8; 32];
        let mut qe = [0u8; 384];
        qe[..16].copy_from_slice(&self.platform.cpusvn);
        qe[48..64].copy_from_slice(&QE_ATTRIBUTES);
        qe[64..96].copy_from_slice(&[0x0e; 32]); // MRENCLAVE
        qe[128..160].copy_from_slice(&QE_MRSIGNER);
        qe[256..258].copy_from_slice(&QE_ISVPRODID.to_le_bytes());
        qe[258..260].copy_from_slice(&QE_ISVSVN.to_le_bytes());
        let mut h = Sha256::new();
        h.update(ak);
        h.update(&auth_data);
        qe[320..352].copy_from_slice(&h.finalize());
        let qe_sig = sign(&self.pck_key, &qe)?;
        Ok((ak, auth_data, qe, qe_sig))
    }

    /// A v4 TDX quote over `td` with `report_data`, signed as Intel's TD QE signs.
    pub fn quote(&self, td: &SimTd, report_data: [u8; 64]) -> Result<Vec<u8>, TdxError> {
        let (ak, auth_data, qe, qe_sig) = self.qe_report()?;
        let mut td_attributes = [0u8; 8];
        td_attributes[3] = 0x10; // SEPT_VE_DISABLE, as production TDs set it
        if td.debug {
            td_attributes[0] = 0x01;
        }
        let report = TDReport10 {
            tee_tcb_svn: self.platform.tee_tcb_svn,
            mr_seam: td.mrseam,
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes,
            xfam: [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0],
            mr_td: td.mrtd,
            mr_config_id: td.mrconfigid,
            mr_owner: td.mrowner,
            mr_owner_config: [0; 48],
            rt_mr0: td.rtmrs[0],
            rt_mr1: td.rtmrs[1],
            rt_mr2: td.rtmrs[2],
            rt_mr3: td.rtmrs[3],
            report_data,
        };
        let quote = dcap_qvl::quote::Quote {
            header: Header {
                version: 4,
                attestation_key_type: 2,
                tee_type: 0x81,
                qe_svn: QE_ISVSVN,
                pce_svn: self.platform.pcesvn,
                qe_vendor_id: dcap_qvl::INTEL_QE_VENDOR_ID,
                user_data: [0; 20],
            },
            report: Report::TD10(report),
            auth_data: AuthData::V4(AuthDataV4 {
                ecdsa_signature: [0; 64],
                ecdsa_attestation_key: ak,
                certification_data: CertificationData {
                    cert_type: 6,
                    body: Data::new(Vec::new()),
                },
                qe_report_data: QEReportCertificationData {
                    qe_report: qe,
                    qe_report_signature: qe_sig,
                    qe_auth_data: Data::new(auth_data),
                    certification_data: self.pck_chain(),
                },
            }),
        };
        self.signed(quote, 584)
    }
}

fn rfc3339(t: i64) -> Result<String, TdxError> {
    at(t)?.format(&Rfc3339).map_err(sim)
}

/// Collateral for `platform` issued at `issued`, current until `next_update`, signed by the
/// test PKI's TCB signer, with (empty) CRLs from the root and the Platform CA.
pub fn collateral(
    pki: &TestPki,
    platform: &SimPlatform,
    issued: i64,
    next_update: i64,
) -> Result<Collateral, TdxError> {
    collateral_for(crate::Tee::Tdx, pki, platform, issued, next_update)
}

/// Collateral for SGX quotes of `platform` (TCB info `SGX`, QE identity `QE`), as
/// [`collateral`] makes it for TD quotes.
pub fn sgx_collateral(
    pki: &TestPki,
    platform: &SimPlatform,
    issued: i64,
    next_update: i64,
) -> Result<Collateral, TdxError> {
    collateral_for(crate::Tee::Sgx, pki, platform, issued, next_update)
}

fn collateral_for(
    tee: crate::Tee,
    pki: &TestPki,
    platform: &SimPlatform,
    issued: i64,
    next_update: i64,
) -> Result<Collateral, TdxError> {
    let comps = |svns: &[u8]| -> Vec<serde_json::Value> {
        svns.iter().map(|s| serde_json::json!({"svn": s})).collect()
    };
    let tdx = tee == crate::Tee::Tdx;
    let mut tcb = serde_json::json!({
        "sgxtcbcomponents": comps(&platform.cpusvn),
        "pcesvn": platform.pcesvn,
    });
    if tdx {
        tcb["tdxtcbcomponents"] = serde_json::json!(comps(&platform.tee_tcb_svn));
    }
    let mut level = serde_json::json!({
        "tcb": tcb,
        "tcbDate": rfc3339(issued - 86_400)?,
        "tcbStatus": platform.tcb_status,
    });
    if !platform.advisories.is_empty() {
        level["advisoryIDs"] = serde_json::json!(platform.advisories);
    }
    let mut tcb_info = serde_json::json!({
        "id": tee.name(),
        "version": 3,
        "issueDate": rfc3339(issued)?,
        "nextUpdate": rfc3339(next_update)?,
        "fmspc": hex::encode_upper(platform.fmspc),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tcbLevels": [level],
    });
    if tdx {
        tcb_info["tdxModule"] = serde_json::json!({
            "mrsigner": "00".repeat(48),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        });
    }
    let tcb_info = tcb_info.to_string();
    let qe_identity = serde_json::json!({
        "id": if tdx { "TD_QE" } else { "QE" },
        "version": 2,
        "issueDate": rfc3339(issued)?,
        "nextUpdate": rfc3339(next_update)?,
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": hex::encode_upper(QE_ATTRIBUTES),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": hex::encode_upper(QE_MRSIGNER),
        "isvprodid": QE_ISVPRODID,
        "tcbLevels": [{"tcb": {"isvsvn": QE_ISVSVN}, "tcbDate": rfc3339(issued - 86_400)?, "tcbStatus": "UpToDate"}],
    })
    .to_string();
    let tcb_key = signer(&pki.tcb_signer.1)?;
    let crl = |issuer: &CertAndKey| -> Result<Vec<u8>, TdxError> {
        let key = KeyPair::try_from(issuer.1.as_slice()).map_err(sim)?;
        let der = rustls_pki_types::CertificateDer::from(issuer.0.as_slice());
        let iss = Issuer::from_ca_cert_der(&der, key).map_err(sim)?;
        let list = CertificateRevocationListParams {
            this_update: at(issued)?,
            next_update: at(next_update)?,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(list.signed_by(&iss).map_err(sim)?.der().to_vec())
    };
    let issuer_chain = |leaf: &[u8]| pem_cert(leaf) + &pem_cert(&pki.root.0);
    Collateral::new(QuoteCollateralV3 {
        pck_crl_issuer_chain: issuer_chain(&pki.pck_ca.0),
        root_ca_crl: crl(&pki.root)?,
        pck_crl: crl(&pki.pck_ca)?,
        tcb_info_issuer_chain: issuer_chain(&pki.tcb_signer.0),
        tcb_info_signature: sign(&tcb_key, tcb_info.as_bytes())?.to_vec(),
        tcb_info,
        qe_identity_issuer_chain: issuer_chain(&pki.tcb_signer.0),
        qe_identity_signature: sign(&tcb_key, qe_identity.as_bytes())?.to_vec(),
        qe_identity,
        pck_certificate_chain: None,
    })
}
