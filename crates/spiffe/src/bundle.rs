//! Trust bundles: the SPIFFE bundle format (a JWKS with `use` x509-svid / jwt-svid,
//! `spiffe_sequence`, `spiffe_refresh_hint`) and PEM.

use crate::error::Error;
use crate::id::TrustDomain;
use crate::x509::{CertInfo, certs_from_pem, certs_to_pem};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// A JWT signing key as published in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    pub key_id: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Unix seconds; 0 when unknown (e.g. learned from a federated JWKS).
    pub expires_at: i64,
}

/// The trust anchors of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub trust_domain: TrustDomain,
    /// DER CA certificates.
    pub x509_authorities: Vec<Vec<u8>>,
    pub jwt_authorities: Vec<JwtAuthority>,
    /// Seconds; 0 means unset.
    pub refresh_hint: u64,
    pub sequence: u64,
    /// Authority IDs (subject key IDs, lowercase hex) of X.509 authorities an operator
    /// tainted: still trusted, but every SVID they signed is to be replaced now. Never part
    /// of the SPIFFE bundle document; kept by the servers and sent to agents.
    pub x509_tainted: BTreeSet<String>,
    /// Key IDs of tainted JWT authorities.
    pub jwt_tainted: BTreeSet<String>,
}

/// Converts a DER SubjectPublicKeyInfo to the JWK members (`kty`, `crv`/`x`/`y` or `n`/`e`).
pub fn spki_to_jwk(spki_der: &[u8]) -> Result<Map<String, Value>, Error> {
    let bad = |m: String| Error::InvalidKey(m);
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| bad(format!("SPKI: {e}")))?;
    let mut m = Map::new();
    match spki.parsed().map_err(|e| bad(format!("public key: {e}")))? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, n) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                other => return Err(bad(format!("unsupported EC point length {other}"))),
            };
            if data[0] != 0x04 {
                return Err(bad("EC point is not uncompressed".into()));
            }
            m.insert("kty".into(), json!("EC"));
            m.insert("crv".into(), json!(crv));
            m.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(&data[1..1 + n])));
            m.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(&data[1 + n..])));
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| {
                let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[i..].to_vec()
            };
            m.insert("kty".into(), json!("RSA"));
            m.insert(
                "n".into(),
                json!(URL_SAFE_NO_PAD.encode(strip(rsa.modulus))),
            );
            m.insert(
                "e".into(),
                json!(URL_SAFE_NO_PAD.encode(strip(rsa.exponent))),
            );
        }
        _ => return Err(bad("only EC P-256/P-384 and RSA keys are supported".into())),
    }
    Ok(m)
}

/// Converts JWK members back to a DER SubjectPublicKeyInfo.
pub fn jwk_to_spki(jwk: &Map<String, Value>) -> Result<Vec<u8>, Error> {
    let bad = |m: &str| Error::InvalidBundle(m.to_string());
    let field = |k: &str| -> Result<Vec<u8>, Error> {
        let s = jwk
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("JWK is missing {k:?}")))?;
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| bad(&format!("JWK member {k:?} is not base64url")))
    };
    match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            use p256::pkcs8::EncodePublicKey;
            let (x, y) = (field("x")?, field("y")?);
            let n = match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => 32,
                Some("P-384") => 48,
                _ => return Err(bad("EC JWK curve must be P-256 or P-384")),
            };
            if x.len() != n || y.len() != n {
                return Err(bad("EC JWK coordinates have the wrong length"));
            }
            // the uncompressed point, checked to be on the curve by the curve's crate
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let not_on_curve = |_| bad("EC JWK is not a point on its curve");
            let der = if n == 32 {
                p256::PublicKey::from_sec1_bytes(&point)
                    .map_err(not_on_curve)?
                    .to_public_key_der()
            } else {
                p384::PublicKey::from_sec1_bytes(&point)
                    .map_err(not_on_curve)?
                    .to_public_key_der()
            };
            Ok(der
                .map_err(|e| bad(&format!("EC JWK: {e}")))?
                .as_bytes()
                .to_vec())
        }
        Some("RSA") => {
            use rsa::pkcs8::EncodePublicKey;
            let n = rsa::BigUint::from_bytes_be(&field("n")?);
            let e = rsa::BigUint::from_bytes_be(&field("e")?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| bad(&format!("RSA JWK: {e}")))?;
            Ok(key
                .to_public_key_der()
                .map_err(|e| bad(&format!("RSA JWK: {e}")))?
                .as_bytes()
                .to_vec())
        }
        _ => Err(bad("JWK kty must be EC or RSA")),
    }
}

impl Bundle {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            refresh_hint: 0,
            sequence: 0,
            x509_tainted: BTreeSet::new(),
            jwt_tainted: BTreeSet::new(),
        }
    }

    /// Drops taint marks of authorities no longer in the bundle.
    pub fn prune_tainted(&mut self) {
        let ids: BTreeSet<String> = self
            .x509_authorities
            .iter()
            .filter_map(|d| crate::x509::authority_id(d))
            .collect();
        self.x509_tainted.retain(|t| ids.contains(t));
        let kids: BTreeSet<&str> = self
            .jwt_authorities
            .iter()
            .map(|a| a.key_id.as_str())
            .collect();
        self.jwt_tainted.retain(|t| kids.contains(t.as_str()));
    }

    /// The SPIFFE bundle (JWKS) document.
    pub fn to_jwks(&self) -> Result<Value, Error> {
        let mut keys = Vec::new();
        for der in &self.x509_authorities {
            let info = CertInfo::parse(der)?;
            let mut m = spki_to_jwk(&info.spki_der)?;
            m.insert("use".into(), json!("x509-svid"));
            m.insert("x5c".into(), json!([STANDARD.encode(der)]));
            keys.push(Value::Object(m));
        }
        for a in &self.jwt_authorities {
            let mut m = spki_to_jwk(&a.public_key_der)?;
            m.insert("use".into(), json!("jwt-svid"));
            m.insert("kid".into(), json!(a.key_id));
            keys.push(Value::Object(m));
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        if self.refresh_hint > 0 {
            doc.insert("spiffe_refresh_hint".into(), json!(self.refresh_hint));
        }
        doc.insert("spiffe_sequence".into(), json!(self.sequence));
        Ok(Value::Object(doc))
    }

    pub fn to_jwks_string(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(&self.to_jwks()?)
            .map_err(|e| Error::InvalidBundle(e.to_string()))
    }

    /// Parses a SPIFFE bundle document. Keys with an unknown `use` are skipped, as the
    /// standard asks; malformed keys of a known use are errors.
    pub fn from_jwks(trust_domain: TrustDomain, doc: &[u8]) -> Result<Self, Error> {
        let bad = |m: String| Error::InvalidBundle(m);
        let v: Value = serde_json::from_slice(doc).map_err(|e| bad(format!("not JSON: {e}")))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("document has no \"keys\" array".into()))?;
        let mut b = Bundle::new(trust_domain);
        for (i, k) in keys.iter().enumerate() {
            let obj = k
                .as_object()
                .ok_or_else(|| bad(format!("key {i} is not an object")))?;
            match obj.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    let x5c = obj
                        .get("x5c")
                        .and_then(Value::as_array)
                        .ok_or_else(|| bad(format!("x509-svid key {i} has no x5c")))?;
                    if x5c.len() != 1 {
                        return Err(bad(format!(
                            "x509-svid key {i} must have exactly one x5c certificate"
                        )));
                    }
                    let der = x5c[0]
                        .as_str()
                        .and_then(|s| STANDARD.decode(s).ok())
                        .ok_or_else(|| bad(format!("x509-svid key {i}: x5c is not base64")))?;
                    CertInfo::parse(&der)?;
                    b.x509_authorities.push(der);
                }
                Some("jwt-svid") => {
                    let kid = obj
                        .get("kid")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| bad(format!("jwt-svid key {i} has no kid")))?;
                    b.jwt_authorities.push(JwtAuthority {
                        key_id: kid.to_string(),
                        public_key_der: jwk_to_spki(obj)?,
                        expires_at: 0,
                    });
                }
                _ => continue,
            }
        }
        b.sequence = v
            .get("spiffe_sequence")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        b.refresh_hint = v
            .get("spiffe_refresh_hint")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(b)
    }

    /// The X.509 authorities as concatenated PEM.
    pub fn to_pem(&self) -> String {
        certs_to_pem(self.x509_authorities.iter().map(Vec::as_slice))
    }

    /// A bundle holding only the X.509 authorities of a PEM text.
    pub fn from_pem(trust_domain: TrustDomain, text: &str) -> Result<Self, Error> {
        let certs = certs_from_pem(text)?;
        if certs.is_empty() {
            return Err(Error::InvalidBundle("no CERTIFICATE block found".into()));
        }
        let mut b = Bundle::new(trust_domain);
        b.x509_authorities = certs;
        Ok(b)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, PrivateKey};
    use crate::x509::{CaSubject, random_serial, self_signed_ca};

    #[test]
    fn jwks_roundtrip() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut b = Bundle::new(td.clone());
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let k = PrivateKey::generate(kt).unwrap();
            b.x509_authorities.push(
                self_signed_ca(&k, &td, &CaSubject::default(), random_serial(), 0, 1000).unwrap(),
            );
            b.jwt_authorities.push(JwtAuthority {
                key_id: format!("kid-{kt}"),
                public_key_der: k.spki_der(),
                expires_at: 0,
            });
        }
        b.sequence = 7;
        b.refresh_hint = 300;
        let doc = b.to_jwks_string().unwrap();
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["spiffe_sequence"], 7);
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert_eq!(v["keys"][3]["use"], "jwt-svid");
        assert_eq!(v["keys"][3]["crv"], "P-256");
        let back = Bundle::from_jwks(td.clone(), doc.as_bytes()).unwrap();
        assert_eq!(back, b);
        let pem = b.to_pem();
        assert_eq!(
            Bundle::from_pem(td.clone(), &pem).unwrap().x509_authorities,
            b.x509_authorities
        );
        assert!(Bundle::from_jwks(td.clone(), b"{}").is_err());
        assert!(
            Bundle::from_jwks(td.clone(), br#"{"keys":[{"use":"jwt-svid","kty":"EC"}]}"#).is_err()
        );
        assert!(Bundle::from_pem(td, "nothing").is_err());
    }

    #[test]
    fn an_ec_jwk_off_its_curve_is_refused() {
        let k = PrivateKey::generate(KeyType::EcP256).unwrap();
        let mut jwk = spki_to_jwk(&k.spki_der()).unwrap();
        assert_eq!(jwk_to_spki(&jwk).unwrap(), k.spki_der());
        // the same x with y + 1: right lengths, not a point of P-256
        let mut y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        jwk.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(&y)));
        let e = jwk_to_spki(&jwk).unwrap_err();
        assert!(e.to_string().contains("not a point on its curve"), "{e}");
        jwk.insert("crv".into(), json!("P-521"));
        assert!(jwk_to_spki(&jwk).is_err());
    }
}
