//! JWT-SVIDs per the SPIFFE JWT-SVID standard: minting and validation against a bundle.

use crate::bundle::JwtAuthority;
use crate::error::Error;
use crate::id::SpiffeId;
use crate::keys::PrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The registered claims of a JWT-SVID.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    /// The attestation claims of a workload on a TEE-attested node
    /// ([`crate::claims::AttestationClaims::to_json`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee: Option<serde_json::Value>,
}

/// `aud` may be a string or an array of strings; we always emit an array.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, a: &str) -> bool {
        match self {
            Audience::One(s) => s == a,
            Audience::Many(v) => v.iter().any(|s| s == a),
        }
    }
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::One(s) => vec![s.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

/// Signs a JWT-SVID with `key`, announcing `kid` in the header.
pub fn mint(
    key: &PrivateKey,
    kid: &str,
    sub: &SpiffeId,
    audience: &[String],
    iat: i64,
    exp: i64,
) -> Result<String, Error> {
    mint_with(key, kid, sub, audience, iat, exp, None)
}

/// [`mint`], with the attestation claims as the `tee` claim.
pub fn mint_with(
    key: &PrivateKey,
    kid: &str,
    sub: &SpiffeId,
    audience: &[String],
    iat: i64,
    exp: i64,
    tee: Option<&crate::claims::AttestationClaims>,
) -> Result<String, Error> {
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        return Err(Error::InvalidJwt(
            "at least one non-empty audience is required".into(),
        ));
    }
    let mut header = Header::new(key.key_type().jwt_alg());
    header.kid = Some(kid.to_string());
    header.typ = Some("JWT".into());
    let claims = Claims {
        sub: sub.to_string(),
        aud: Audience::Many(audience.to_vec()),
        exp,
        iat,
        tee: tee.map(crate::claims::AttestationClaims::to_json),
    };
    jsonwebtoken::encode(&header, &claims, &key.jwt_encoding_key()?)
        .map_err(|e| Error::Signing(e.to_string()))
}

/// A JWT-SVID whose signature, audience and expiry checked out.
#[derive(Debug, Clone)]
pub struct Validated {
    pub spiffe_id: SpiffeId,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

fn decoding_key(spki_der: &[u8], alg: Algorithm) -> Result<DecodingKey, Error> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| Error::InvalidKey(format!("SPKI: {e}")))?;
    let raw = spki.subject_public_key.data.as_ref();
    Ok(match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_der(raw),
        _ => DecodingKey::from_rsa_der(raw),
    })
}

/// Validates a token against the JWT authorities of its trust domain at `now`.
/// The SPIFFE ID a JWT claims in `sub`, read before any signature is checked: only to pick
/// the bundle whose keys then check the token (with [`validate`]).
pub fn claimed_subject(token: &str) -> Option<SpiffeId> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    SpiffeId::parse(claims.get("sub")?.as_str()?).ok()
}

pub fn validate(
    token: &str,
    authorities: &[JwtAuthority],
    audience: &str,
    now: i64,
) -> Result<Validated, Error> {
    let bad = |m: String| Error::InvalidJwt(m);
    let header = jsonwebtoken::decode_header(token).map_err(|e| bad(format!("header: {e}")))?;
    let alg = header.alg;
    if !matches!(
        alg,
        Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    ) {
        return Err(bad(format!(
            "algorithm {alg:?} is not allowed for JWT-SVIDs"
        )));
    }
    let kid = header.kid.ok_or_else(|| bad("token has no kid".into()))?;
    let auth = authorities
        .iter()
        .find(|a| a.key_id == kid)
        .ok_or_else(|| bad(format!("no JWT authority with key ID {kid:?}")))?;
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims = ["sub", "aud", "exp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &decoding_key(&auth.public_key_der, alg)?,
        &v,
    )
    .map_err(|e| bad(format!("signature: {e}")))?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| bad("exp claim is not a number".into()))?;
    if exp <= now {
        return Err(bad(format!("token expired at {exp} (now {now})")));
    }
    let aud: Audience = claims
        .get("aud")
        .cloned()
        .and_then(|a| serde_json::from_value(a).ok())
        .ok_or_else(|| bad("aud claim is malformed".into()))?;
    if !aud.contains(audience) {
        return Err(bad(format!(
            "audience {audience:?} is not in the token's aud"
        )));
    }
    let sub = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad("sub claim is not a string".into()))?;
    let spiffe_id = SpiffeId::parse(sub)?;
    Ok(Validated { spiffe_id, claims })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::KeyType;

    /// The subject a token claims picks the bundle that checks it; garbage claims nothing.
    #[test]
    fn the_claimed_subject_is_read_before_checking() {
        let k = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://peer.test/w").unwrap();
        let t = mint(&k, "k1", &id, &["a".to_string()], 1_000, 2_000).unwrap();
        assert_eq!(claimed_subject(&t), Some(id));
        assert_eq!(claimed_subject("not.a.token"), None);
        assert_eq!(claimed_subject(""), None);
    }

    #[test]
    fn mint_and_validate() {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let k = PrivateKey::generate(kt).unwrap();
            let auth = vec![JwtAuthority {
                key_id: "k1".into(),
                public_key_der: k.spki_der(),
                expires_at: 0,
            }];
            let id = SpiffeId::parse("spiffe://example.org/a").unwrap();
            let t = mint(&k, "k1", &id, &["db".into()], 100, 200).unwrap();
            let h = jsonwebtoken::decode_header(&t).unwrap();
            assert_eq!(h.kid.as_deref(), Some("k1"));
            assert_eq!(h.typ.as_deref(), Some("JWT"));
            let v = validate(&t, &auth, "db", 150).unwrap();
            assert_eq!(v.spiffe_id, id);
            assert!(validate(&t, &auth, "other", 150).is_err());
            assert!(validate(&t, &auth, "db", 200).is_err());
            assert!(validate(&t, &[], "db", 150).is_err());
            let mut tampered = t.clone();
            tampered.push('A');
            assert!(validate(&tampered, &auth, "db", 150).is_err());
        }
    }
}
