//! X.509 profiles: the trust domain's CA certificate, X509-SVIDs, CSR parsing and
//! certificate inspection. Signing is pure: key, times and serial are passed in.

use crate::error::Error;
use crate::id::{SpiffeId, TrustDomain};
use crate::keys::PrivateKey;
use ::time::OffsetDateTime;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use x509_parser::prelude::*;

/// How far NotBefore is backdated, to absorb clock skew between machines.
pub const BACKDATE_SECS: i64 = 10;

/// Subject of CA certificates (`ca_subject` in the server config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    pub country: Vec<String>,
    pub organization: Vec<String>,
    pub common_name: String,
}

impl Default for CaSubject {
    fn default() -> Self {
        Self {
            country: vec!["US".into()],
            organization: vec!["SPIFFE".into()],
            common_name: String::new(),
        }
    }
}

/// A verified certificate signing request: what the requester proved to hold.
#[derive(Debug, Clone)]
pub struct Csr {
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub spki_der: Vec<u8>,
    pub uri_sans: Vec<String>,
    pub dns_names: Vec<String>,
}

/// Parses a DER PKCS#10 request and checks its self-signature.
pub fn parse_csr(der: &[u8]) -> Result<Csr, Error> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::MalformedCsr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::MalformedCsr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|e| Error::MalformedCsr(format!("signature does not verify: {e}")))?;
    let mut uri_sans = Vec::new();
    let mut dns_names = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uri_sans.push((*u).to_string()),
                        GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(Csr {
        spki_der: csr.certification_request_info.subject_pki.raw.to_vec(),
        uri_sans,
        dns_names,
    })
}

/// Returns a random positive 128-bit serial number.
pub fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    let rng = ring::rand::SystemRandom::new();
    // Invariant-free fallback: if the OS RNG failed we keep zeros and force bits below,
    // but ring's fill only fails when the OS has no entropy source at all.
    let _ = ring::rand::SecureRandom::fill(&rng, &mut s);
    s[0] &= 0x7f;
    s[0] |= 0x40;
    s
}

fn dt(unix: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| Error::InvalidCertificate(format!("time out of range: {e}")))
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, Error> {
    rcgen::string::Ia5String::try_from(s.to_string())
        .map_err(|e| Error::InvalidCertificate(format!("{s:?} is not IA5: {e}")))
}

/// Builds and self-signs a CA certificate for `td`.
pub fn self_signed_ca(
    key: &PrivateKey,
    td: &TrustDomain,
    subject: &CaSubject,
    serial: [u8; 16],
    not_before: i64,
    not_after: i64,
) -> Result<Vec<u8>, Error> {
    let params = ca_params(td, subject, serial, not_before, not_after)?;
    let cert = params
        .self_signed(key.rcgen())
        .map_err(|e| Error::Signing(e.to_string()))?;
    Ok(cert.der().to_vec())
}

/// Builds a CA certificate for `td` signed by `upstream` (an operator's CA: SPIRE's
/// UpstreamAuthority). NotAfter is capped at the upstream certificate's.
pub fn intermediate_ca(
    key: &PrivateKey,
    td: &TrustDomain,
    subject: &CaSubject,
    serial: [u8; 16],
    not_before: i64,
    not_after: i64,
    upstream: &CaIssuer,
) -> Result<Vec<u8>, Error> {
    let mut params = ca_params(
        td,
        subject,
        serial,
        not_before,
        not_after.min(upstream.not_after()),
    )?;
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(key.rcgen(), &upstream.issuer)
        .map_err(|e| Error::Signing(e.to_string()))?;
    Ok(cert.der().to_vec())
}

/// Whether a certificate is its own issuer (a root), by name and signature.
pub fn is_self_signed(der: &[u8]) -> bool {
    X509Certificate::from_der(der)
        .is_ok_and(|(_, c)| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
}

fn ca_params(
    td: &TrustDomain,
    subject: &CaSubject,
    serial: [u8; 16],
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for c in &subject.country {
        dn.push(DnType::CountryName, c.as_str());
    }
    for o in &subject.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if !subject.common_name.is_empty() {
        dn.push(DnType::CommonName, subject.common_name.as_str());
    }
    // serialNumber attribute keeps subjects of successive CAs distinct, as SPIRE does.
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), hex::encode(serial));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.subject_alt_names = vec![SanType::URI(ia5(td.id().as_str())?)];
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.not_before = dt(not_before)?;
    p.not_after = dt(not_after)?;
    Ok(p)
}

/// What the CA needs to issue: its certificate and a ready signer.
pub struct CaIssuer {
    cert_der: Vec<u8>,
    not_after: i64,
    issuer: Issuer<'static, KeyPair>,
    /// The same key, to sign again an SVID whose claims OID was put in after rcgen signed it
    /// (see [`put_claims_oid`]).
    signer: KeyPair,
}

impl std::fmt::Debug for CaIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaIssuer")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Parameters of one X509-SVID.
#[derive(Debug, Clone)]
pub struct SvidRequest<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub spki_der: &'a [u8],
    pub dns_names: &'a [String],
    pub serial: [u8; 16],
    /// Issuance time; NotBefore is backdated by [`BACKDATE_SECS`].
    pub now: i64,
    pub ttl_secs: i64,
    /// The DER of the attestation claims to carry (see [`crate::claims`]), if any.
    pub claims: Option<&'a [u8]>,
}

/// rcgen writes OID arcs as u64, and the claims OID's arc (a UUID under 2.25) is 128 bits;
/// no maintained Rust X.509 builder writes arcs that large (rcgen/yasna: u64, x509-cert and
/// const-oid: u32). So the extension is written under this placeholder OID, whose DER is as
/// long as the real one's, and [`put_claims_oid`] swaps the bytes and signs the TBS again.
const PLACEHOLDER_ARCS: [u64; 4] = [2, 25, 0x7ead_beef_face_feed, 0x7ead_beef_face_feed];

/// DER content bytes of an OID given as arcs (the first two folded into one byte, then base
/// 128 with continuation bits).
fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &a in &arcs[2..] {
        let mut groups = vec![(a & 0x7f) as u8];
        let mut v = a >> 7;
        while v > 0 {
            groups.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        groups.reverse();
        out.extend(groups);
    }
    out
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// (header length, content length) of the DER element at the start of `b`.
fn der_header(b: &[u8]) -> Result<(usize, usize), Error> {
    let bad = || Error::InvalidCertificate("re-signing: not DER".into());
    let first = *b.get(1).ok_or_else(bad)?;
    if first < 0x80 {
        return Ok((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return Err(bad());
    }
    let len = b
        .get(2..2 + n)
        .ok_or_else(bad)?
        .iter()
        .fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
    Ok((2 + n, len))
}

/// Swaps the placeholder OID for [`crate::claims::OID`] in a certificate rcgen signed, and
/// signs its TBSCertificate again with `signer` (the algorithm rcgen used: the signature
/// algorithm field is kept as it is).
fn put_claims_oid(cert: &[u8], signer: &KeyPair) -> Result<Vec<u8>, Error> {
    use rcgen::SigningKey;
    let bad = |m: &str| Error::InvalidCertificate(format!("re-signing: {m}"));
    let placeholder = oid_content(&PLACEHOLDER_ARCS);
    let real = crate::claims::OID_DER;
    if placeholder.len() != real.len() {
        return Err(bad("placeholder and claims OID differ in length"));
    }
    let (outer_h, outer_len) = der_header(cert)?;
    let body = cert
        .get(outer_h..outer_h + outer_len)
        .ok_or_else(|| bad("truncated"))?;
    let (tbs_h, tbs_len) = der_header(body)?;
    let mut tbs = body
        .get(..tbs_h + tbs_len)
        .ok_or_else(|| bad("truncated TBS"))?
        .to_vec();
    let rest = &body[tbs_h + tbs_len..];
    let (alg_h, alg_len) = der_header(rest)?;
    let alg = rest
        .get(..alg_h + alg_len)
        .ok_or_else(|| bad("truncated algorithm"))?;
    let mut tagged = vec![0x06, placeholder.len() as u8];
    tagged.extend(&placeholder);
    let at: Vec<usize> = tbs
        .windows(tagged.len())
        .enumerate()
        .filter(|(_, w)| *w == tagged.as_slice())
        .map(|(i, _)| i)
        .collect();
    let [at] = at.as_slice() else {
        return Err(bad("the placeholder OID is not there exactly once"));
    };
    tbs[at + 2..at + 2 + real.len()].copy_from_slice(real);
    let sig = signer
        .sign(&tbs)
        .map_err(|e| Error::Signing(e.to_string()))?;
    let mut bits = vec![0x03];
    bits.extend(der_len(sig.len() + 1));
    bits.push(0);
    bits.extend(sig);
    let mut content = tbs;
    content.extend(alg);
    content.extend(bits);
    let mut out = vec![0x30];
    out.extend(der_len(content.len()));
    out.extend(content);
    Ok(out)
}

impl CaIssuer {
    /// Builds a signer from the CA certificate and its private key, checking they match.
    pub fn new(cert_der: &[u8], key: &PrivateKey) -> Result<Self, Error> {
        let info = CertInfo::parse(cert_der)?;
        if info.spki_der != key.spki_der() {
            return Err(Error::InvalidKey(
                "CA private key does not match the CA certificate".into(),
            ));
        }
        let pair =
            KeyPair::from_pkcs8_der_and_sign_algo(&key.pkcs8_der().into(), key.rcgen().algorithm())
                .map_err(|e| Error::InvalidKey(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.to_vec().into(), pair)
            .map_err(|e| Error::InvalidCertificate(e.to_string()))?;
        let signer =
            KeyPair::from_pkcs8_der_and_sign_algo(&key.pkcs8_der().into(), key.rcgen().algorithm())
                .map_err(|e| Error::InvalidKey(e.to_string()))?;
        Ok(Self {
            cert_der: cert_der.to_vec(),
            not_after: info.not_after,
            issuer,
            signer,
        })
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Issues an X509-SVID per the SPIFFE X509-SVID standard. NotAfter is capped at the CA's.
    pub fn issue_svid(&self, req: &SvidRequest<'_>) -> Result<Vec<u8>, Error> {
        if req.ttl_secs <= 0 {
            return Err(Error::InvalidCertificate(
                "SVID TTL must be positive".into(),
            ));
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIRE");
        if let Some(first) = req.dns_names.first() {
            dn.push(DnType::CommonName, first.as_str());
        }
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut sans = vec![SanType::URI(ia5(req.spiffe_id.as_str())?)];
        for d in req.dns_names {
            sans.push(SanType::DnsName(ia5(d)?));
        }
        p.subject_alt_names = sans;
        p.serial_number = Some(SerialNumber::from_slice(&req.serial));
        p.use_authority_key_identifier_extension = true;
        p.not_before = dt(req.now - BACKDATE_SECS)?;
        p.not_after = dt((req.now.saturating_add(req.ttl_secs)).min(self.not_after))?;
        if let Some(claims) = req.claims {
            p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
                &PLACEHOLDER_ARCS,
                claims.to_vec(),
            )];
        }
        let spki = SubjectPublicKeyInfo::from_der(req.spki_der)
            .map_err(|e| Error::InvalidKey(format!("public key: {e}")))?;
        let cert = p
            .signed_by(&spki, &self.issuer)
            .map_err(|e| Error::Signing(e.to_string()))?;
        if req.claims.is_some() {
            return put_claims_oid(cert.der(), &self.signer);
        }
        Ok(cert.der().to_vec())
    }
}

/// The facts about a certificate the rest of ironpact needs.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    pub serial_hex: String,
    pub uri_sans: Vec<String>,
    pub dns_names: Vec<String>,
    pub spki_der: Vec<u8>,
    pub is_ca: bool,
    pub subject: String,
    /// Subject key identifier, lowercase hex (an authority's ID, as SPIRE names it).
    pub subject_key_id: Option<String>,
    /// Authority key identifier: the subject key ID of the issuer, lowercase hex.
    pub authority_key_id: Option<String>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::InvalidCertificate(format!("not a DER certificate: {e}")))?;
        let mut uri_sans = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => uri_sans.push((*u).to_string()),
                    GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                    _ => {}
                }
            }
        }
        let (subject_key_id, authority_key_id) = key_ids(&cert);
        Ok(Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            serial_hex: hex::encode(cert.raw_serial()),
            uri_sans,
            dns_names,
            spki_der: cert.public_key().raw.to_vec(),
            is_ca: cert.is_ca(),
            subject: cert.subject().to_string(),
            subject_key_id,
            authority_key_id,
        })
    }
}

/// The subject and authority key identifiers of a certificate, lowercase hex.
fn key_ids(cert: &X509Certificate<'_>) -> (Option<String>, Option<String>) {
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(hex::encode(k.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => {}
        }
    }
    (ski, aki)
}

/// An X.509 authority's ID: its subject key identifier in lowercase hex, as SPIRE's
/// `localauthority` commands show it. None for a certificate without one.
pub fn authority_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    key_ids(&cert).0
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::InvalidCertificate(format!("not a DER certificate: {e}")))
}

/// Verifies an X509-SVID chain (leaf first, then intermediates) against trust anchors at
/// `now` and returns the leaf's SPIFFE ID. The leaf must not be a CA, must carry exactly
/// one URI SAN that is a SPIFFE ID, and every certificate must be within its validity.
pub fn verify_svid_chain(chain: &[&[u8]], roots: &[Vec<u8>], now: i64) -> Result<SpiffeId, Error> {
    let bad = |m: String| Error::InvalidCertificate(m);
    let (leaf_der, intermediates) = chain
        .split_first()
        .ok_or_else(|| bad("empty certificate chain".into()))?;
    let leaf = parse_cert(leaf_der)?;
    if leaf.is_ca() {
        return Err(bad("the SVID is a CA certificate".into()));
    }
    let info = CertInfo::parse(leaf_der)?;
    if info.uri_sans.len() != 1 {
        return Err(bad(format!(
            "an X509-SVID has exactly one URI SAN, this one has {}",
            info.uri_sans.len()
        )));
    }
    let id = SpiffeId::parse(&info.uri_sans[0])?;
    let mut current = leaf;
    let mut rest: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .map(|d| parse_cert(d))
        .collect::<Result<_, _>>()?;
    let anchors: Vec<X509Certificate<'_>> = roots
        .iter()
        .map(|d| parse_cert(d))
        .collect::<Result<_, _>>()?;
    for depth in 0..=intermediates.len() {
        let (nb, na) = (
            current.validity().not_before.timestamp(),
            current.validity().not_after.timestamp(),
        );
        if now < nb || now > na {
            return Err(bad(format!(
                "certificate at depth {depth} is not valid at {now} (valid {nb}..{na})"
            )));
        }
        if anchors.iter().any(|a| {
            a.subject() == current.issuer()
                && current.verify_signature(Some(a.public_key())).is_ok()
        }) {
            return Ok(id);
        }
        let Some(next) = (!rest.is_empty()).then(|| rest.remove(0)) else {
            break;
        };
        if !next.is_ca() || current.verify_signature(Some(next.public_key())).is_err() {
            return Err(bad(format!(
                "certificate at depth {depth} is not signed by the next one"
            )));
        }
        current = next;
    }
    Err(bad(
        "the chain does not lead to any trusted authority".into()
    ))
}

/// PEM-encodes DER certificates, one block each.
pub fn certs_to_pem<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter()
        .map(|d| ::pem::encode(&::pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect()
}

/// Decodes every CERTIFICATE block of a PEM text.
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, Error> {
    let blocks = ::pem::parse_many(text).map_err(|e| Error::InvalidCertificate(e.to_string()))?;
    let mut out = Vec::new();
    for b in blocks {
        if b.tag() != "CERTIFICATE" {
            return Err(Error::InvalidCertificate(format!(
                "unexpected PEM block {:?}",
                b.tag()
            )));
        }
        CertInfo::parse(b.contents())?;
        out.push(b.into_contents());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::KeyType;

    #[test]
    fn ca_and_svid_profiles() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let now = 1_700_000_000;
        let ca_der = self_signed_ca(
            &ca_key,
            &td,
            &CaSubject::default(),
            random_serial(),
            now,
            now + 3600,
        )
        .unwrap();
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let info = CertInfo::parse(&ca_der).unwrap();
        assert_eq!(info.uri_sans, vec!["spiffe://example.org"]);

        let issuer = CaIssuer::new(&ca_der, &ca_key).unwrap();
        let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let dns = vec!["web.example.org".to_string(), "alt.example.org".to_string()];
        let der = issuer
            .issue_svid(&SvidRequest {
                spiffe_id: &id,
                spki_der: &leaf_key.spki_der(),
                dns_names: &dns,
                serial: random_serial(),
                now,
                ttl_secs: 7200,
                claims: None,
            })
            .unwrap();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert!(!c.is_ca());
        let bc = c.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && ku.key_agreement());
        assert!(!ku.key_cert_sign());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let info = CertInfo::parse(&der).unwrap();
        assert_eq!(info.uri_sans, vec![id.as_str()]);
        assert_eq!(info.dns_names, dns);
        assert_eq!(info.not_before, now - BACKDATE_SECS);
        // capped at the CA's NotAfter
        assert_eq!(info.not_after, now + 3600);
        assert!(c.subject().to_string().contains("CN=web.example.org"));
        assert_eq!(c.raw_serial().len(), 16);
        c.verify_signature(Some(ca.public_key())).unwrap();

        let other = PrivateKey::generate(KeyType::EcP256).unwrap();
        assert!(CaIssuer::new(&ca_der, &other).is_err());
    }

    #[test]
    fn every_ca_key_type_issues_verifiable_svids() {
        let td = TrustDomain::new("example.org").unwrap();
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let ca_key = PrivateKey::generate(kt).unwrap();
            let ca_der = self_signed_ca(
                &ca_key,
                &td,
                &CaSubject::default(),
                random_serial(),
                0,
                4_000_000_000,
            )
            .unwrap();
            let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
            ca.verify_signature(None).unwrap();
            let issuer = CaIssuer::new(&ca_der, &ca_key).unwrap();
            let leaf = PrivateKey::generate(KeyType::EcP256).unwrap();
            let der = issuer
                .issue_svid(&SvidRequest {
                    spiffe_id: &SpiffeId::parse("spiffe://example.org/w").unwrap(),
                    spki_der: &leaf.spki_der(),
                    dns_names: &[],
                    serial: random_serial(),
                    now: 1_000_000,
                    ttl_secs: 60,
                    claims: None,
                })
                .unwrap();
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            c.verify_signature(Some(ca.public_key())).unwrap();
            assert_eq!(crate::claims::from_certificate(&der).unwrap(), None);
            // with attestation claims: the extension under the 2.25 OID, non-critical, and
            // the certificate signed again so it still verifies
            let claims = crate::claims::tests::sample();
            let claims_der = claims.to_der().unwrap();
            let der = issuer
                .issue_svid(&SvidRequest {
                    spiffe_id: &SpiffeId::parse("spiffe://example.org/w").unwrap(),
                    spki_der: &leaf.spki_der(),
                    dns_names: &[],
                    serial: random_serial(),
                    now: 1_000_000,
                    ttl_secs: 60,
                    claims: Some(&claims_der),
                })
                .unwrap();
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            c.verify_signature(Some(ca.public_key())).unwrap();
            let ext = c
                .extensions()
                .iter()
                .find(|e| e.oid.as_bytes() == crate::claims::OID_DER)
                .unwrap();
            assert!(!ext.critical);
            assert_eq!(crate::claims::from_certificate(&der).unwrap(), Some(claims));
            assert_eq!(
                CertInfo::parse(&der).unwrap().uri_sans,
                ["spiffe://example.org/w"]
            );
        }
    }

    #[test]
    fn the_placeholder_oid_is_as_long_as_the_claims_oid() {
        assert_eq!(
            oid_content(&PLACEHOLDER_ARCS).len(),
            crate::claims::OID_DER.len()
        );
        assert_eq!(oid_content(&[2, 5, 29, 17]), [0x55, 0x1d, 0x11]);
        assert_eq!(der_len(0x7f), [0x7f]);
        assert_eq!(der_len(0x80), [0x81, 0x80]);
        assert_eq!(der_len(0x1234), [0x82, 0x12, 0x34]);
    }

    #[test]
    fn svid_chain_verification() {
        let td = TrustDomain::new("example.org").unwrap();
        let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let ca = self_signed_ca(
            &ca_key,
            &td,
            &CaSubject::default(),
            random_serial(),
            0,
            10_000,
        )
        .unwrap();
        let other_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let other = self_signed_ca(
            &other_key,
            &td,
            &CaSubject::default(),
            random_serial(),
            0,
            10_000,
        )
        .unwrap();
        let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
        let leaf = CaIssuer::new(&ca, &ca_key)
            .unwrap()
            .issue_svid(&SvidRequest {
                spiffe_id: &id,
                spki_der: &leaf_key.spki_der(),
                dns_names: &[],
                serial: random_serial(),
                now: 100,
                ttl_secs: 1000,
                claims: None,
            })
            .unwrap();
        assert_eq!(
            verify_svid_chain(&[&leaf], &[other.clone(), ca.clone()], 500).unwrap(),
            id
        );
        assert!(
            verify_svid_chain(&[&leaf], std::slice::from_ref(&other), 500).is_err(),
            "wrong authority"
        );
        assert!(
            verify_svid_chain(&[&leaf], std::slice::from_ref(&ca), 2000).is_err(),
            "expired"
        );
        assert!(
            verify_svid_chain(&[&leaf], std::slice::from_ref(&ca), 50).is_err(),
            "not yet valid"
        );
        assert!(
            verify_svid_chain(&[&ca], std::slice::from_ref(&ca), 500).is_err(),
            "a CA is no SVID"
        );
        assert!(verify_svid_chain(&[], std::slice::from_ref(&ca), 500).is_err());
        let mut tampered = leaf.clone();
        let n = tampered.len();
        tampered[n - 2] ^= 1;
        assert!(verify_svid_chain(&[&tampered], std::slice::from_ref(&ca), 500).is_err());
    }

    #[test]
    fn csr_parsing() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(ia5("spiffe://example.org/a").unwrap())];
        let csr = p.serialize_request(&key).unwrap();
        let parsed = parse_csr(csr.der()).unwrap();
        assert_eq!(parsed.uri_sans, vec!["spiffe://example.org/a"]);
        assert_eq!(parsed.spki_der, {
            use rcgen::PublicKeyData;
            key.subject_public_key_info()
        });
        let mut bad = csr.der().to_vec();
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        assert!(matches!(parse_csr(&bad), Err(Error::MalformedCsr(_))));
        assert!(parse_csr(&csr.der()[..20]).is_err());
        assert!(parse_csr(b"").is_err());
    }
}
