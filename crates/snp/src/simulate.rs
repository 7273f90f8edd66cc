//! A software SEV-SNP "device" for tests and demos: a test ARK/ASK (RSA, RSA-PSS SHA-384) and
//! a VCEK (P-384) shaped like AMD's, and reports signed with that VCEK. Its reports pass
//! [`crate::verify`] only against roots that include its test ARK ([`SimulatedSnp::roots`]),
//! never against [`crate::AmdRoots::genuine`].
//!
//! The certificates are written by hand (a few DER helpers below) because no X.509 crate we
//! use can sign with RSASSA-PSS SHA-384, which AMD's chain uses and the verifier requires.

use crate::report::{Product, REPORT_LEN, SIGNED_LEN, SigningKey};
use crate::roots::{AmdRoots, ProductRoots};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};

#[derive(Debug, thiserror::Error)]
#[error("simulated SEV-SNP device: {0}")]
pub struct SimError(String);

fn e(m: impl std::fmt::Display) -> SimError {
    SimError(m.to_string())
}

// ---- minimal DER writer
fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(body);
    out
}
fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}
fn int_bytes(v: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = v.iter().copied().skip_while(|x| *x == 0).collect();
    if b.is_empty() || b[0] & 0x80 != 0 {
        b.insert(0, 0);
    }
    tlv(0x02, &b)
}
fn int(v: u64) -> Vec<u8> {
    int_bytes(&v.to_be_bytes())
}
fn oid(dotted: &str) -> Vec<u8> {
    let n: Vec<u64> = dotted.split('.').filter_map(|x| x.parse().ok()).collect();
    let mut body = vec![(n[0] * 40 + n[1]) as u8];
    for &v in &n[2..] {
        let mut chunk = vec![(v & 0x7f) as u8];
        let mut x = v >> 7;
        while x > 0 {
            chunk.push(((x & 0x7f) as u8) | 0x80);
            x >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    }
    tlv(0x06, &body)
}
fn explicit(n: u8, body: Vec<u8>) -> Vec<u8> {
    tlv(0xA0 | n, &body)
}
fn name(cn: &str) -> Vec<u8> {
    seq(&[
        tlv(
            0x31,
            &seq(&[oid("2.5.4.10"), tlv(0x0C, b"Advanced Micro Devices")]),
        ),
        tlv(0x31, &seq(&[oid("2.5.4.3"), tlv(0x0C, cn.as_bytes())])),
    ])
}
fn time(unix: i64) -> Vec<u8> {
    let t = ::time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(::time::OffsetDateTime::UNIX_EPOCH);
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    tlv(0x18, s.as_bytes())
}
fn sha384_alg() -> Vec<u8> {
    seq(&[oid("2.16.840.1.101.3.4.2.2")])
}
/// RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48.
fn pss_alg() -> Vec<u8> {
    seq(&[
        oid("1.2.840.113549.1.1.10"),
        seq(&[
            explicit(0, sha384_alg()),
            explicit(1, seq(&[oid("1.2.840.113549.1.1.8"), sha384_alg()])),
            explicit(2, int(48)),
        ]),
    ])
}
fn ext(id: &str, value: Vec<u8>) -> Vec<u8> {
    seq(&[oid(id), tlv(0x04, &value)])
}

/// An RSA key (PKCS#8) able to sign AMD-style certificates.
struct RsaSigner {
    pair: RsaKeyPair,
    spki: Vec<u8>,
}

impl RsaSigner {
    fn new(pkcs8: &[u8]) -> Result<Self, SimError> {
        let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(e)?;
        let pkcs1 = pair.public().as_ref().to_vec();
        let spki = seq(&[
            seq(&[oid("1.2.840.113549.1.1.1"), tlv(0x05, &[])]),
            tlv(0x03, &[&[0u8][..], &pkcs1].concat()),
        ]);
        Ok(Self { pair, spki })
    }

    fn certificate(&self, tbs: Vec<u8>) -> Result<Vec<u8>, SimError> {
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PSS_SHA384,
                &SystemRandom::new(),
                &tbs,
                &mut sig,
            )
            .map_err(e)?;
        Ok(seq(&[
            tbs,
            pss_alg(),
            tlv(0x03, &[&[0u8][..], &sig].concat()),
        ]))
    }
}

fn tbs(
    serial: u64,
    issuer: &str,
    subject: &str,
    nb: i64,
    na: i64,
    spki: &[u8],
    exts: Vec<Vec<u8>>,
) -> Vec<u8> {
    let mut parts = vec![
        explicit(0, int(2)),
        int(serial),
        pss_alg(),
        name(issuer),
        seq(&[time(nb), time(na)]),
        name(subject),
        spki.to_vec(),
    ];
    if !exts.is_empty() {
        parts.push(explicit(3, seq(&exts)));
    }
    seq(&parts)
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
        let ca = || ext("2.5.29.19", seq(&[tlv(0x01, &[0xff])]));
        let ark_cn = format!("ARK-{p}");
        let ask_cn = if vlek {
            format!("SEV-VLEK-{p}")
        } else {
            format!("SEV-{p}")
        };
        let ark_der = ark.certificate(tbs(
            1,
            &ark_cn,
            &ark_cn,
            not_before,
            not_after,
            &ark.spki,
            vec![ca()],
        ))?;
        let ask_der = ark.certificate(tbs(
            2,
            &ark_cn,
            &ask_cn,
            not_before,
            not_after,
            &ask.spki,
            vec![ca()],
        ))?;
        let (bl, tee, snp, ucode) = platform.tcb;
        let point = vcek.public_key().as_ref().to_vec();
        let vcek_spki = seq(&[
            seq(&[oid("1.2.840.10045.2.1"), oid("1.3.132.0.34")]),
            tlv(0x03, &[&[0u8][..], &point].concat()),
        ]);
        let mut exts = vec![
            ext("1.3.6.1.4.1.3704.1.1", int(1)),
            ext("1.3.6.1.4.1.3704.1.2", tlv(0x16, p.as_bytes())),
            ext("1.3.6.1.4.1.3704.1.3.1", int(u64::from(bl))),
            ext("1.3.6.1.4.1.3704.1.3.2", int(u64::from(tee))),
            ext("1.3.6.1.4.1.3704.1.3.3", int(u64::from(snp))),
            ext("1.3.6.1.4.1.3704.1.3.8", int(u64::from(ucode))),
        ];
        let leaf_cn = if vlek {
            // The VLEK names its cloud provider (csp_id) instead of a chip.
            exts.push(ext("1.3.6.1.4.1.3704.1.5", tlv(0x0c, b"ironpact-test-csp")));
            "SEV-VLEK"
        } else {
            exts.push(ext("1.3.6.1.4.1.3704.1.4", platform.chip_id.to_vec()));
            "SEV-VCEK"
        };
        let vcek_der = ask.certificate(tbs(
            0, &ask_cn, leaf_cn, not_before, not_after, &vcek_spki, exts,
        ))?;
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
        let mut parts = vec![
            int(1),
            pss_alg(),
            name(&issuer),
            time(this_update),
            time(next_update),
        ];
        if !serials.is_empty() {
            parts.push(seq(&serials
                .iter()
                .map(|s| seq(&[int(*s), time(this_update)]))
                .collect::<Vec<_>>()));
        }
        self.ark.certificate(seq(&parts))
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
