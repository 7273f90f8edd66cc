//! A software SEV-SNP "device" for tests and demos: a test ARK/ASK (RSA, RSA-PSS SHA-384) and
//! a VCEK (P-384) shaped like AMD's, and reports signed with that VCEK. Its reports pass
//! [`crate::verify`] only against roots that include its test ARK ([`SimulatedSnp::roots`]),
//! never against [`crate::AmdRoots::genuine`].
//!
//! The certificates are built with `x509-cert`'s types and signed with
//! `rsa::pss::SigningKey<Sha384>` (RSASSA-PSS, MGF1-SHA-384, salt 48, as AMD's chain).

use crate::report::{Product, REPORT_LEN, SIGNED_LEN, SigningKey};
use crate::roots::{AmdRoots, ProductRoots};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sha2::Sha384;
use std::str::FromStr;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::der::asn1::{BitString, GeneralizedTime, Ia5StringRef, OctetString, Utf8StringRef};
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, ObjectIdentifier,
    SubjectPublicKeyInfoOwned,
};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

#[derive(Debug, thiserror::Error)]
#[error("simulated SEV-SNP device: {0}")]
pub struct SimError(String);

fn e(m: impl std::fmt::Display) -> SimError {
    SimError(m.to_string())
}

fn time(unix: i64) -> Result<Time, SimError> {
    let secs = u64::try_from(unix).map_err(|_| e("times before 1970 are not supported"))?;
    Ok(Time::GeneralTime(
        GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs)).map_err(e)?,
    ))
}

fn name(cn: &str) -> Result<Name, SimError> {
    // RFC 4514 order: the last RDN is written first, so this encodes O then CN, as AMD's.
    Name::from_str(&format!("CN={cn},O=Advanced Micro Devices")).map_err(e)
}

/// An extension whose value is the DER of `value`.
fn ext(id: &str, value: &impl Encode) -> Result<Extension, SimError> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(id).map_err(e)?,
        critical: false,
        extn_value: OctetString::new(value.to_der().map_err(e)?).map_err(e)?,
    })
}

/// An RSA key (PKCS#8) able to sign AMD-style certificates and CRLs.
struct RsaSigner {
    key: rsa::pss::SigningKey<Sha384>,
    spki: SubjectPublicKeyInfoOwned,
    alg: AlgorithmIdentifierOwned,
}

impl RsaSigner {
    fn new(pkcs8: &[u8]) -> Result<Self, SimError> {
        let private = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(e)?;
        let spki_der = private.to_public_key().to_public_key_der().map_err(e)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(e)?;
        // The salt length defaults to the digest's (48 bytes for SHA-384).
        let key = rsa::pss::SigningKey::<Sha384>::new(private);
        let alg = key.signature_algorithm_identifier().map_err(e)?;
        Ok(Self { key, spki, alg })
    }

    /// The signature over `tbs` (DER) as a BIT STRING.
    fn sign(&self, tbs: &[u8]) -> Result<BitString, SimError> {
        let sig = self.key.sign_with_rng(&mut rsa::rand_core::OsRng, tbs);
        BitString::from_bytes(&sig.to_vec()).map_err(e)
    }

    fn certificate(&self, tbs: TbsCertificate) -> Result<Vec<u8>, SimError> {
        let signature = self.sign(&tbs.to_der().map_err(e)?)?;
        Certificate {
            tbs_certificate: tbs,
            signature_algorithm: self.alg.clone(),
            signature,
        }
        .to_der()
        .map_err(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn tbs(
        &self,
        serial: u64,
        issuer: &str,
        subject: &str,
        (nb, na): (i64, i64),
        spki: SubjectPublicKeyInfoOwned,
        exts: Vec<Extension>,
    ) -> Result<TbsCertificate, SimError> {
        Ok(TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::from(serial),
            signature: self.alg.clone(),
            issuer: name(issuer)?,
            validity: Validity {
                not_before: time(nb)?,
                not_after: time(na)?,
            },
            subject: name(subject)?,
            subject_public_key_info: spki,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: (!exts.is_empty()).then_some(exts),
        })
    }
}

/// A new RSA-2048 key, PKCS#8 DER: an ARK, ASK or ASVK of a simulated chain.
pub fn rsa_pkcs8() -> Result<Vec<u8>, SimError> {
    use rsa::pkcs8::EncodePrivateKey;
    let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(e)?;
    Ok(k.to_pkcs8_der().map_err(e)?.as_bytes().to_vec())
}

/// A new P-384 key, PKCS#8 DER: a simulated VCEK or VLEK.
pub fn p384_pkcs8() -> Result<Vec<u8>, SimError> {
    EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .map(|d| d.as_ref().to_vec())
    .map_err(|_| e("cannot generate a P-384 key"))
}

/// TCB and identity the simulated platform reports.
#[derive(Debug, Clone)]
pub struct SimPlatform {
    pub product: Product,
    pub chip_id: [u8; 64],
    /// bl, tee, snp, ucode (Milan/Genoa layout).
    pub tcb: (u8, u8, u8, u8),
}

/// What the simulated guest was launched with.
#[derive(Debug, Clone)]
pub struct SimGuest {
    pub measurement: [u8; 48],
    pub policy: u64,
    pub vmpl: u32,
    pub report_id: [u8; 32],
    pub host_data: [u8; 32],
}

impl Default for SimGuest {
    fn default() -> Self {
        Self {
            measurement: [0x11; 48],
            policy: 0x30000,
            vmpl: 0,
            report_id: [0x22; 32],
            host_data: [0; 32],
        }
    }
}

/// The test chain and the VCEK (or VLEK) key.
pub struct SimulatedSnp {
    pub platform: SimPlatform,
    pub ark_der: Vec<u8>,
    /// The ASK, or the ASVK when the device signs with a VLEK.
    pub ask_der: Vec<u8>,
    /// The VCEK, or the VLEK when the device signs with one.
    pub vcek_der: Vec<u8>,
    pub signing_key: SigningKey,
    vcek: EcdsaKeyPair,
    ark: RsaSigner,
}

impl SimulatedSnp {
    /// Builds a chain from PKCS#8 keys: RSA ARK and ASK (2048 to 8192 bits), P-384 VCEK.
    /// Certificates are valid from `not_before` to `not_after`.
    pub fn new(
        platform: SimPlatform,
        ark_pkcs8: &[u8],
        ask_pkcs8: &[u8],
        vcek_pkcs8: &[u8],
        not_before: i64,
        not_after: i64,
    ) -> Result<Self, SimError> {
        Self::build(
            platform,
            [ark_pkcs8, ask_pkcs8, vcek_pkcs8],
            (not_before, not_after),
            SigningKey::Vcek,
        )
    }

    /// Like [`SimulatedSnp::new`], but signing as a cloud provider's VLEK under an ASVK
    /// (`asvk_pkcs8`), as AWS's SEV-SNP instances do. The VLEK has no hwID extension.
    pub fn new_vlek(
        platform: SimPlatform,
        ark_pkcs8: &[u8],
        asvk_pkcs8: &[u8],
        vlek_pkcs8: &[u8],
        not_before: i64,
        not_after: i64,
    ) -> Result<Self, SimError> {
        Self::build(
            platform,
            [ark_pkcs8, asvk_pkcs8, vlek_pkcs8],
            (not_before, not_after),
            SigningKey::Vlek,
        )
    }

    fn build(
        platform: SimPlatform,
        [ark_pkcs8, ask_pkcs8, vcek_pkcs8]: [&[u8]; 3],
        (not_before, not_after): (i64, i64),
        signing_key: SigningKey,
    ) -> Result<Self, SimError> {
        let p = platform.product.name();
        let vlek = signing_key == SigningKey::Vlek;
        let ark = RsaSigner::new(ark_pkcs8)?;
        let ask = RsaSigner::new(ask_pkcs8)?;
        let rng = SystemRandom::new();
        let vcek = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            vcek_pkcs8,
            &rng,
        )
        .map_err(e)?;
        let ca = || {
            ext(
                "2.5.29.19",
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                },
            )
        };
        let ark_cn = format!("ARK-{p}");
        let ask_cn = if vlek {
            format!("SEV-VLEK-{p}")
        } else {
            format!("SEV-{p}")
        };
        let validity = (not_before, not_after);
        let ark_der = ark.certificate(ark.tbs(
            1,
            &ark_cn,
            &ark_cn,
            validity,
            ark.spki.clone(),
            vec![ca()?],
        )?)?;
        let ask_der = ark.certificate(ark.tbs(
            2,
            &ark_cn,
            &ask_cn,
            validity,
            ask.spki.clone(),
            vec![ca()?],
        )?)?;
        let (bl, tee, snp, ucode) = platform.tcb;
        let vcek_spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
                parameters: Some(Any::from(ObjectIdentifier::new_unwrap("1.3.132.0.34"))),
            },
            subject_public_key: BitString::from_bytes(vcek.public_key().as_ref()).map_err(e)?,
        };
        let mut exts = vec![
            ext("1.3.6.1.4.1.3704.1.1", &1u64)?,
            ext("1.3.6.1.4.1.3704.1.2", &Ia5StringRef::new(p).map_err(e)?)?,
            ext("1.3.6.1.4.1.3704.1.3.1", &u64::from(bl))?,
            ext("1.3.6.1.4.1.3704.1.3.2", &u64::from(tee))?,
            ext("1.3.6.1.4.1.3704.1.3.3", &u64::from(snp))?,
            ext("1.3.6.1.4.1.3704.1.3.8", &u64::from(ucode))?,
        ];
        let leaf_cn = if vlek {
            // The VLEK names its cloud provider (csp_id) instead of a chip.
            exts.push(ext(
                "1.3.6.1.4.1.3704.1.5",
                &Utf8StringRef::new("ironpact-test-csp").map_err(e)?,
            )?);
            "SEV-VLEK"
        } else {
            // hwID: the 64 raw bytes of the chip ID are the extension's value (no inner DER).
            exts.push(Extension {
                extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4"),
                critical: false,
                extn_value: OctetString::new(platform.chip_id.to_vec()).map_err(e)?,
            });
            "SEV-VCEK"
        };
        let vcek_der = ask.certificate(ask.tbs(0, &ask_cn, leaf_cn, validity, vcek_spki, exts)?)?;
        Ok(Self {
            platform,
            ark_der,
            ask_der,
            vcek_der,
            signing_key,
            vcek,
            ark,
        })
    }

    /// A CRL from the test ARK revoking `serials`, valid from `this_update` to `next_update`.
    pub fn crl(
        &self,
        serials: &[u64],
        this_update: i64,
        next_update: i64,
    ) -> Result<Vec<u8>, SimError> {
        let issuer = format!("ARK-{}", self.platform.product.name());
        let revoked = serials
            .iter()
            .map(|s| {
                Ok(RevokedCert {
                    serial_number: SerialNumber::from(*s),
                    revocation_date: time(this_update)?,
                    crl_entry_extensions: None,
                })
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let tbs = TbsCertList {
            version: Version::V2,
            signature: self.ark.alg.clone(),
            issuer: name(&issuer)?,
            this_update: time(this_update)?,
            next_update: Some(time(next_update)?),
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: None,
        };
        let signature = self.ark.sign(&tbs.to_der().map_err(e)?)?;
        CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: self.ark.alg.clone(),
            signature,
        }
        .to_der()
        .map_err(e)
    }

    /// Roots that trust this device's test ARK (and nothing else).
    pub fn roots(&self) -> Result<AmdRoots, SimError> {
        let asvk = (self.signing_key == SigningKey::Vlek).then(|| self.ask_der.clone());
        let pr = ProductRoots::new(
            self.platform.product,
            self.ark_der.clone(),
            self.ask_der.clone(),
            asvk,
        )
        .map_err(e)?;
        Ok(AmdRoots::custom(vec![pr]))
    }

    /// A signed report for `guest` carrying `report_data`.
    pub fn report(&self, guest: &SimGuest, report_data: &[u8; 64]) -> Result<Vec<u8>, SimError> {
        let mut r = vec![0u8; REPORT_LEN];
        let put = |r: &mut Vec<u8>, at: usize, b: &[u8]| r[at..at + b.len()].copy_from_slice(b);
        let (bl, tee, snp, ucode) = self.platform.tcb;
        let tcb = u64::from_le_bytes([bl, tee, 0, 0, 0, 0, snp, ucode]).to_le_bytes();
        put(&mut r, 0x00, &3u32.to_le_bytes());
        put(&mut r, 0x08, &guest.policy.to_le_bytes());
        put(&mut r, 0x30, &guest.vmpl.to_le_bytes());
        put(&mut r, 0x34, &1u32.to_le_bytes());
        // KEY_INFO: the signing key in bits 4:2 (0 VCEK, 1 VLEK).
        let key_info: u32 = if self.signing_key == SigningKey::Vlek {
            1 << 2
        } else {
            0
        };
        put(&mut r, 0x48, &key_info.to_le_bytes());
        put(&mut r, 0x38, &tcb);
        put(&mut r, 0x50, report_data);
        put(&mut r, 0x90, &guest.measurement);
        put(&mut r, 0xC0, &guest.host_data);
        put(&mut r, 0x140, &guest.report_id);
        put(&mut r, 0x180, &tcb);
        let (family, model) = match self.platform.product {
            Product::Milan => (0x19, 0x01),
            Product::Genoa => (0x19, 0x11),
            Product::Turin => (0x1A, 0x02),
        };
        put(&mut r, 0x188, &[family, model, 1]);
        put(&mut r, 0x1A0, &self.platform.chip_id);
        put(&mut r, 0x1E0, &tcb);
        put(&mut r, 0x1E8, &[3, 55, 1]);
        put(&mut r, 0x1EC, &[3, 55, 1]);
        put(&mut r, 0x1F0, &tcb);
        let sig = self
            .vcek
            .sign(&SystemRandom::new(), &r[..SIGNED_LEN])
            .map_err(e)?;
        let s = sig.as_ref();
        // R and S: big-endian from ring, little-endian in 72-byte fields in the report.
        let mut rr: Vec<u8> = s[..48].to_vec();
        rr.reverse();
        let mut ss: Vec<u8> = s[48..96].to_vec();
        ss.reverse();
        put(&mut r, 0x2A0, &rr);
        put(&mut r, 0x2E8, &ss);
        Ok(r)
    }
}
