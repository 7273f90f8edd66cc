//! Private keys of the CA and JWT signers: EC P-256, EC P-384, RSA-2048 and RSA-4096, held as
//! PKCS#8.

use crate::error::Error;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    EcP256,
    EcP384,
    Rsa2048,
    Rsa4096,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => &PKCS_RSA_SHA256,
        }
    }

    /// The JWS algorithm a JWT signer of this type uses.
    pub fn jwt_alg(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyType::EcP256 => jsonwebtoken::Algorithm::ES256,
            KeyType::EcP384 => jsonwebtoken::Algorithm::ES384,
            KeyType::Rsa2048 | KeyType::Rsa4096 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

impl FromStr for KeyType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "ec-p256" => Ok(KeyType::EcP256),
            "ec-p384" => Ok(KeyType::EcP384),
            "rsa-2048" => Ok(KeyType::Rsa2048),
            "rsa-4096" => Ok(KeyType::Rsa4096),
            other => Err(Error::InvalidKey(format!(
                "unknown key type {other:?}; use ec-p256, ec-p384, rsa-2048 or rsa-4096"
            ))),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key with its type; PKCS#8 DER is the one stored form.
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Vec<u8>,
    pair: KeyPair,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate(key_type: KeyType) -> Result<Self, Error> {
        let pkcs8 = match key_type {
            KeyType::EcP256 | KeyType::EcP384 => KeyPair::generate_for(key_type.rcgen_alg())
                .map_err(|e| Error::InvalidKey(e.to_string()))?
                .serialize_der(),
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                use rsa::pkcs8::EncodePrivateKey;
                let bits = if key_type == KeyType::Rsa4096 {
                    4096
                } else {
                    2048
                };
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                    .map_err(|e| Error::InvalidKey(e.to_string()))?;
                key.to_pkcs8_der()
                    .map_err(|e| Error::InvalidKey(e.to_string()))?
                    .as_bytes()
                    .to_vec()
            }
        };
        Self::from_pkcs8(key_type, &pkcs8)
    }

    pub fn from_pkcs8(key_type: KeyType, pkcs8: &[u8]) -> Result<Self, Error> {
        let pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), key_type.rcgen_alg())
            .map_err(|e| Error::InvalidKey(format!("{} key: {e}", key_type)))?;
        Ok(Self {
            key_type,
            pkcs8: pkcs8.to_vec(),
            pair,
        })
    }

    /// The private key in a PEM file (PKCS#8 `PRIVATE KEY`, or an `EC PRIVATE KEY` on P-256),
    /// which must be the one whose public half is `spki_der` (a certificate's): its type is
    /// found by trying each, so the file need not say it.
    pub fn from_pem_for(text: &str, spki_der: &[u8]) -> Result<Self, Error> {
        let block = pem::parse_many(text)
            .map_err(|e| Error::InvalidKey(format!("not PEM: {e}")))?
            .into_iter()
            .find(|b| b.tag().ends_with("PRIVATE KEY"))
            .ok_or_else(|| Error::InvalidKey("no PRIVATE KEY block".into()))?;
        let pkcs8 = match block.tag() {
            "PRIVATE KEY" => block.contents().to_vec(),
            "EC PRIVATE KEY" => {
                use p256::pkcs8::EncodePrivateKey;
                p256::SecretKey::from_sec1_der(block.contents())
                    .map_err(|_| {
                        Error::InvalidKey(
                            "an EC PRIVATE KEY that is not P-256: convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
                        )
                    })?
                    .to_pkcs8_der()
                    .map_err(|e| Error::InvalidKey(e.to_string()))?
                    .as_bytes()
                    .to_vec()
            }
            other => {
                return Err(Error::InvalidKey(format!(
                    "a {other} block: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`"
                )));
            }
        };
        for kt in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ] {
            if let Ok(k) = Self::from_pkcs8(kt, &pkcs8)
                && k.spki_der() == spki_der
            {
                return Ok(k);
            }
        }
        Err(Error::InvalidKey(
            "the private key does not match the certificate (or is not EC P-256/P-384 or RSA 2048/4096)".into(),
        ))
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn pkcs8_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    /// DER SubjectPublicKeyInfo of the public half.
    pub fn spki_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.pair.subject_public_key_info()
    }

    pub(crate) fn rcgen(&self) -> &KeyPair {
        &self.pair
    }

    pub(crate) fn jwt_encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, Error> {
        Ok(match self.key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8)
            }
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                use rsa::pkcs8::DecodePrivateKey;
                let key = rsa::RsaPrivateKey::from_pkcs8_der(&self.pkcs8)
                    .map_err(|e| Error::InvalidKey(e.to_string()))?;
                let pkcs1 = key
                    .to_pkcs1_der()
                    .map_err(|e| Error::InvalidKey(e.to_string()))?;
                jsonwebtoken::EncodingKey::from_rsa_der(pkcs1.as_bytes())
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_types() {
        for kt in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa2048,
            KeyType::Rsa4096,
        ] {
            let k = PrivateKey::generate(kt).unwrap();
            let k2 = PrivateKey::from_pkcs8(kt, k.pkcs8_der()).unwrap();
            assert_eq!(k.spki_der(), k2.spki_der());
            assert_eq!(kt.as_str().parse::<KeyType>().unwrap(), kt);
        }
        assert!(PrivateKey::from_pkcs8(KeyType::EcP256, b"junk").is_err());
    }
}
