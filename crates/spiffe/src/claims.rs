//! Attestation claims: what the hardware proved about the machine (or enclave) an SVID was
//! issued to, carried in the SVID so that a peer can require it in the handshake.
//!
//! In an X509-SVID they are a non-critical extension, [`OID`] (under the `2.25` UUID arc, which
//! needs no registration), holding the DER of `AttestationClaims` as `docs/attestation-claims.md`
//! publishes it:
//!
//! ```text
//! AttestationClaims ::= SEQUENCE {
//!     version       INTEGER,            -- 1
//!     tee           UTF8String,         -- "sev_snp" | "tdx" | "sgx"
//!     measurements  SEQUENCE OF Measurement,
//!     tcbStatus     UTF8String,
//!     tcbVersion    UTF8String,
//!     debug         BOOLEAN,
//!     signingKey    UTF8String,         -- "vcek" | "vlek" | "pck"
//!     attestedAt    GeneralizedTime,
//!     policyDigest  OCTET STRING        -- SHA-256 of the policy the evidence passed
//! }
//! Measurement ::= SEQUENCE { name UTF8String, value OCTET STRING }
//! ```
//!
//! In a JWT-SVID they are the `tee` claim, the same fields as JSON ([`AttestationClaims::to_json`]).
//! [`from_certificate`] is the pure reader a peer uses; it bounds every size, so a hostile
//! certificate costs little.

use der::asn1::{GeneralizedTime, OctetString};
use der::{Decode, Encode, Sequence};
use serde::{Deserialize, Serialize};

/// `2.25.39663025565014710274981789313424090555` (UUID 1dd6d224-042f-43bf-80a8-fcdf75b2e5bb).
pub const OID: &str = "2.25.39663025565014710274981789313424090555";

/// The DER content bytes of [`OID`] (after the tag and length).
pub const OID_DER: &[u8] = &[
    0x69, 0xbb, 0xd6, 0xe9, 0x89, 0x80, 0xc2, 0xfa, 0x8e, 0xff, 0x80, 0xd4, 0xbf, 0x9b, 0xf7, 0xad,
    0xcb, 0xcb, 0x3b,
];

/// The JWT-SVID claim that carries them.
pub const JWT_CLAIM: &str = "tee";

const VERSION: u8 = 1;
const MAX_MEASUREMENTS: usize = 16;
const MAX_NAME: usize = 32;
const MAX_VALUE: usize = 64;
const MAX_TEXT: usize = 128;
/// More than any claims we write (about 600 bytes with every TDX register).
pub const MAX_DER: usize = 4096;

/// One named measurement: `measurement`, `host_data`, `id_key_digest`, `author_key_digest`
/// (SEV-SNP); `mrtd`, `rtmr0`…`rtmr3`, `mrseam` (TDX); `mrenclave`, `mrsigner` (SGX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    pub name: String,
    pub value: Vec<u8>,
}

/// What a TEE attestation established, as it travels in SVIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationClaims {
    /// `sev_snp`, `tdx` or `sgx`.
    pub tee: String,
    pub measurements: Vec<Measurement>,
    /// The TCB verdict: `up_to_date` (SEV-SNP: at or above the policy's minimum), or Intel's
    /// TCB status in snake case (`up_to_date`, `sw_hardening_needed`, `out_of_date`, …).
    pub tcb_status: String,
    /// The TCB version the evidence reports (SEV-SNP: `bl=…,tee=…,snp=…,ucode=…[,fmc=…]`;
    /// TDX: the TEE TCB SVN in hex).
    pub tcb_version: String,
    pub debug: bool,
    /// `vcek`, `vlek` or `pck`.
    pub signing_key: String,
    /// When the evidence was appraised (Unix seconds).
    pub attested_at: i64,
    /// SHA-256 of the policy the evidence passed.
    pub policy_digest: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimsError {
    #[error("attestation claims: not DER of AttestationClaims: {0}")]
    Malformed(String),
    #[error("attestation claims: version {0} is not understood (1 is)")]
    Version(u64),
    #[error("attestation claims: {0} is too large")]
    TooLarge(&'static str),
    #[error("attestation claims: the certificate does not parse: {0}")]
    Certificate(String),
    #[error("attestation claims: the extension is present twice")]
    Duplicate,
    #[error("attestation claims: the extension must not be critical")]
    Critical,
}

#[derive(Sequence)]
struct MeasurementDer {
    name: String,
    value: OctetString,
}

#[derive(Sequence)]
struct ClaimsDer {
    version: u8,
    tee: String,
    measurements: Vec<MeasurementDer>,
    tcb_status: String,
    tcb_version: String,
    debug: bool,
    signing_key: String,
    attested_at: GeneralizedTime,
    policy_digest: OctetString,
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), ClaimsError> {
    if s.len() > max {
        return Err(ClaimsError::TooLarge(what));
    }
    Ok(())
}

impl AttestationClaims {
    /// The value of a measurement by name.
    pub fn measurement(&self, name: &str) -> Option<&[u8]> {
        self.measurements
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value.as_slice())
    }

    fn check(&self) -> Result<(), ClaimsError> {
        if self.measurements.len() > MAX_MEASUREMENTS {
            return Err(ClaimsError::TooLarge("the measurement list"));
        }
        for m in &self.measurements {
            check_text("a measurement name", &m.name, MAX_NAME)?;
            if m.value.len() > MAX_VALUE {
                return Err(ClaimsError::TooLarge("a measurement value"));
            }
        }
        check_text("tee", &self.tee, MAX_TEXT)?;
        check_text("tcbStatus", &self.tcb_status, MAX_TEXT)?;
        check_text("tcbVersion", &self.tcb_version, MAX_TEXT)?;
        check_text("signingKey", &self.signing_key, MAX_TEXT)?;
        if self.policy_digest.len() > MAX_VALUE {
            return Err(ClaimsError::TooLarge("policyDigest"));
        }
        Ok(())
    }

    /// The DER of `AttestationClaims`.
    pub fn to_der(&self) -> Result<Vec<u8>, ClaimsError> {
        self.check()?;
        let bad = |e: der::Error| ClaimsError::Malformed(e.to_string());
        let secs = u64::try_from(self.attested_at)
            .map_err(|_| ClaimsError::Malformed("attestedAt before 1970".into()))?;
        let d = ClaimsDer {
            version: VERSION,
            tee: self.tee.clone(),
            measurements: self
                .measurements
                .iter()
                .map(|m| {
                    Ok(MeasurementDer {
                        name: m.name.clone(),
                        value: OctetString::new(m.value.clone()).map_err(bad)?,
                    })
                })
                .collect::<Result<_, ClaimsError>>()?,
            tcb_status: self.tcb_status.clone(),
            tcb_version: self.tcb_version.clone(),
            debug: self.debug,
            signing_key: self.signing_key.clone(),
            attested_at: GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
                .map_err(bad)?,
            policy_digest: OctetString::new(self.policy_digest.clone()).map_err(bad)?,
        };
        d.to_der().map_err(bad)
    }

    /// Reads the DER of `AttestationClaims` (strict DER, nothing after it, sizes bounded).
    pub fn from_der(der_bytes: &[u8]) -> Result<Self, ClaimsError> {
        if der_bytes.len() > MAX_DER {
            return Err(ClaimsError::TooLarge("the extension"));
        }
        let d =
            ClaimsDer::from_der(der_bytes).map_err(|e| ClaimsError::Malformed(e.to_string()))?;
        if d.version != VERSION {
            return Err(ClaimsError::Version(u64::from(d.version)));
        }
        let c = Self {
            tee: d.tee,
            measurements: d
                .measurements
                .into_iter()
                .map(|m| Measurement {
                    name: m.name,
                    value: m.value.into_bytes(),
                })
                .collect(),
            tcb_status: d.tcb_status,
            tcb_version: d.tcb_version,
            debug: d.debug,
            signing_key: d.signing_key,
            attested_at: i64::try_from(d.attested_at.to_unix_duration().as_secs())
                .map_err(|_| ClaimsError::Malformed("attestedAt out of range".into()))?,
            policy_digest: d.policy_digest.into_bytes(),
        };
        c.check()?;
        Ok(c)
    }

    /// The JWT-SVID `tee` claim: the same fields, measurements as hex by name.
    pub fn to_json(&self) -> serde_json::Value {
        let measurements: serde_json::Map<String, serde_json::Value> = self
            .measurements
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    serde_json::Value::String(hex::encode(&m.value)),
                )
            })
            .collect();
        serde_json::to_value(JsonClaims {
            r#type: self.tee.clone(),
            measurements,
            tcb_status: self.tcb_status.clone(),
            tcb_version: self.tcb_version.clone(),
            debug: self.debug,
            signing_key: self.signing_key.clone(),
            attested_at: self.attested_at,
            policy_digest: hex::encode(&self.policy_digest),
        })
        .unwrap_or_default()
    }

    /// Reads the JWT-SVID `tee` claim back.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ClaimsError> {
        let j: JsonClaims =
            serde_json::from_value(v.clone()).map_err(|e| ClaimsError::Malformed(e.to_string()))?;
        let hex_of = |s: &str| hex::decode(s).map_err(|e| ClaimsError::Malformed(e.to_string()));
        let c = Self {
            tee: j.r#type,
            measurements: j
                .measurements
                .iter()
                .map(|(k, v)| {
                    let h = v.as_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                        ClaimsError::Malformed(format!("measurement {k} is not a hex string"))
                    })?;
                    Ok(Measurement {
                        name: k.clone(),
                        value: hex_of(h)?,
                    })
                })
                .collect::<Result<_, ClaimsError>>()?,
            tcb_status: j.tcb_status,
            tcb_version: j.tcb_version,
            debug: j.debug,
            signing_key: j.signing_key,
            attested_at: j.attested_at,
            policy_digest: hex_of(&j.policy_digest)?,
        };
        c.check()?;
        Ok(c)
    }

    /// The claims in words, one per line (`x509 inspect`, `api fetch x509`).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "TEE:\t\t\t{}\nTCB:\t\t\t{} ({})\nDebug:\t\t\t{}\nSigning key:\t\t{}\nAttested at:\t\t{}\nPolicy digest:\t\t{}\n",
            self.tee.escape_debug(),
            self.tcb_status.escape_debug(),
            self.tcb_version.escape_debug(),
            self.debug,
            self.signing_key.escape_debug(),
            time::OffsetDateTime::from_unix_timestamp(self.attested_at)
                .ok()
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .unwrap_or_else(|| self.attested_at.to_string()),
            hex::encode(&self.policy_digest),
        );
        for m in &self.measurements {
            out.push_str(&format!(
                "{}:\t{}\n",
                m.name.escape_debug(),
                hex::encode(&m.value)
            ));
        }
        out
    }
}

#[derive(Serialize, Deserialize)]
struct JsonClaims {
    r#type: String,
    measurements: serde_json::Map<String, serde_json::Value>,
    tcb_status: String,
    tcb_version: String,
    debug: bool,
    signing_key: String,
    attested_at: i64,
    policy_digest: String,
}

/// What a peer requires of the attestation claims of the SVID it is shown: any of the listed
/// values for each field that lists some. Written `tee=sev_snp;measurement=HEX|HEX;tcb=up_to_date;debug=false`
/// ([`ClaimsPolicy::parse`]); an empty policy still requires claims to be present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimsPolicy {
    /// Allowed TEE types (`sev_snp`, `tdx`, `sgx`).
    pub tee: Vec<String>,
    /// Per measurement name (`measurement`, `mrtd`, `rtmr0`, …), the allowed values.
    pub measurements: Vec<(String, Vec<Vec<u8>>)>,
    /// Allowed TCB verdicts (`up_to_date`, `meets_policy`, …).
    pub tcb_status: Vec<String>,
    /// Whether a debug TEE is acceptable (no by default).
    pub allow_debug: bool,
    /// Allowed signing key types (`vcek`, `vlek`, `pck`).
    pub signing_key: Vec<String>,
}

impl ClaimsPolicy {
    /// `key=value|value;key=value…` with keys `tee`, `tcb`, `debug`, `signing_key`, and any
    /// measurement name with hex values.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = Self::default();
        for part in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: write key=value (e.g. tee=sev_snp)"))?;
            let values: Vec<String> = v.split('|').map(|x| x.trim().to_string()).collect();
            if values.iter().any(String::is_empty) {
                return Err(format!(
                    "{part:?}: an empty value would match nothing meaningful: list values, or leave {k} out"
                ));
            }
            match k.trim() {
                "tee" => p.tee = values,
                "tcb" | "tcb_status" => p.tcb_status = values,
                "signing_key" => p.signing_key = values,
                "debug" => {
                    p.allow_debug = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("debug={v:?}: write debug=true or debug=false"))?;
                }
                name => {
                    let hexes = values
                        .iter()
                        .map(|h| hex::decode(h).map_err(|e| format!("{name}={h:?}: not hex ({e})")))
                        .collect::<Result<Vec<_>, _>>()?;
                    p.measurements.push((name.to_string(), hexes));
                }
            }
        }
        Ok(p)
    }

    /// Whether `claims` pass; the refusal names the field, the value seen and what is allowed.
    pub fn check(&self, claims: Option<&AttestationClaims>) -> Result<(), String> {
        let Some(c) = claims else {
            return Err(
                "the SVID carries no attestation claims (its node was not attested with TEE evidence)"
                    .into(),
            );
        };
        let one_of = |field: &str, seen: &str, allowed: &[String]| {
            if allowed.is_empty() || allowed.iter().any(|a| a == seen) {
                Ok(())
            } else {
                Err(format!(
                    "attestation claim {field} is {seen:?}, allowed: {}",
                    allowed.join(", ")
                ))
            }
        };
        one_of("tee", &c.tee, &self.tee)?;
        one_of("tcb_status", &c.tcb_status, &self.tcb_status)?;
        one_of("signing_key", &c.signing_key, &self.signing_key)?;
        if c.debug && !self.allow_debug {
            return Err("attestation claim debug is true: a debug TEE is not allowed".into());
        }
        for (name, allowed) in &self.measurements {
            let Some(seen) = c.measurement(name) else {
                return Err(format!(
                    "attestation claims have no {name} (the {} TEE does not report one)",
                    c.tee
                ));
            };
            if !allowed.iter().any(|a| a.as_slice() == seen) {
                return Err(format!(
                    "attestation claim {name} is {}, allowed: {}",
                    hex::encode(seen),
                    allowed
                        .iter()
                        .map(hex::encode)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The attestation claims a certificate carries: None when it has no such extension; an error
/// when the extension is there but malformed, critical or doubled (a peer requiring claims
/// must then refuse, not ignore).
pub fn from_certificate(cert_der: &[u8]) -> Result<Option<AttestationClaims>, ClaimsError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| ClaimsError::Certificate(e.to_string()))?;
    let mut found = None;
    for ext in cert.extensions() {
        if ext.oid.as_bytes() != OID_DER {
            continue;
        }
        if found.is_some() {
            return Err(ClaimsError::Duplicate);
        }
        if ext.critical {
            return Err(ClaimsError::Critical);
        }
        found = Some(AttestationClaims::from_der(ext.value)?);
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn sample() -> AttestationClaims {
        AttestationClaims {
            tee: "sev_snp".into(),
            measurements: vec![
                Measurement {
                    name: "measurement".into(),
                    value: vec![0x11; 48],
                },
                Measurement {
                    name: "host_data".into(),
                    value: vec![0; 32],
                },
            ],
            tcb_status: "up_to_date".into(),
            tcb_version: "bl=4,tee=0,snp=24,ucode=219".into(),
            debug: false,
            signing_key: "vcek".into(),
            attested_at: 1_790_000_000,
            policy_digest: vec![7; 32],
        }
    }

    #[test]
    fn the_oid_bytes_are_the_documented_oid() {
        assert_eq!(OID_DER[0], 2 * 40 + 25);
        let arc = OID_DER[1..]
            .iter()
            .fold(0u128, |acc, b| (acc << 7) | u128::from(b & 0x7f));
        assert_eq!(format!("2.25.{arc}"), OID);
        // the last byte ends the arc, the others continue it
        assert!(OID_DER[1..OID_DER.len() - 1].iter().all(|b| b & 0x80 != 0));
        assert_eq!(OID_DER[OID_DER.len() - 1] & 0x80, 0);
    }

    #[test]
    fn der_and_json_round_trip_and_refuse_bad_input() {
        let c = sample();
        let der = c.to_der().unwrap();
        assert_eq!(AttestationClaims::from_der(&der).unwrap(), c);
        // JSON keeps measurements by name (their order depends on serde_json's features)
        let by_name = |mut x: AttestationClaims| {
            x.measurements.sort_by(|a, b| a.name.cmp(&b.name));
            x
        };
        assert_eq!(
            by_name(AttestationClaims::from_json(&c.to_json()).unwrap()),
            by_name(c.clone())
        );
        // truncated, trailing bytes, another version, oversized
        assert!(AttestationClaims::from_der(&der[..der.len() - 1]).is_err());
        let mut longer = der.clone();
        longer.push(0);
        assert!(AttestationClaims::from_der(&longer).is_err());
        let mut v2 = der.clone();
        // SEQUENCE, length (one or two bytes), INTEGER 1: the version byte follows 02 01
        let at = v2.windows(3).position(|w| w == [2, 1, 1]).unwrap();
        v2[at + 2] = 2;
        assert_eq!(
            AttestationClaims::from_der(&v2).unwrap_err(),
            ClaimsError::Version(2)
        );
        let mut big = c.clone();
        big.measurements[0].value = vec![0; 65];
        assert!(matches!(big.to_der(), Err(ClaimsError::TooLarge(_))));
        assert!(matches!(
            AttestationClaims::from_der(&vec![0x30; MAX_DER + 1]),
            Err(ClaimsError::TooLarge(_))
        ));
        assert!(c.describe().contains("measurement:\t1111"));
    }

    #[test]
    fn a_claims_policy_names_what_differs() {
        let c = sample();
        let ok = ClaimsPolicy::parse(&format!(
            "tee=sev_snp|tdx; measurement={}; tcb=meets_policy|up_to_date; debug=false",
            hex::encode([0x11; 48])
        ))
        .unwrap();
        assert_eq!(ok.check(Some(&c)), Ok(()));
        assert!(
            ok.check(None)
                .unwrap_err()
                .contains("no attestation claims")
        );
        let wrong =
            ClaimsPolicy::parse(&format!("measurement={}", hex::encode([0x22; 48]))).unwrap();
        let e = wrong.check(Some(&c)).unwrap_err();
        assert!(
            e.contains("measurement is 1111") && e.contains("allowed: 2222"),
            "{e}"
        );
        let e = ClaimsPolicy::parse("tee=tdx")
            .unwrap()
            .check(Some(&c))
            .unwrap_err();
        assert!(e.contains("tee is \"sev_snp\", allowed: tdx"), "{e}");
        let mut debug = c.clone();
        debug.debug = true;
        assert!(ClaimsPolicy::default().check(Some(&debug)).is_err());
        let e = ClaimsPolicy::parse("mrtd=00")
            .unwrap()
            .check(Some(&c))
            .unwrap_err();
        assert!(e.contains("no mrtd"), "{e}");
        assert!(ClaimsPolicy::parse("measurement=zz").is_err());
        assert!(ClaimsPolicy::parse("debug=maybe").is_err());
        assert!(ClaimsPolicy::parse("tee").is_err());
        assert!(ClaimsPolicy::parse("tee=").is_err());
        assert!(ClaimsPolicy::parse("measurement=|00").is_err());
        let mut j = c.to_json();
        j["measurements"]["measurement"] = serde_json::json!(1);
        assert!(AttestationClaims::from_json(&j).is_err());
    }
}
