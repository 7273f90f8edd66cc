//! Fresh PKCS#8 keys for simulated SEV-SNP chains: RSA-2048 for ARK/ASK/ASVK, P-384 for the
//! VCEK/VLEK. Shared by the integration tests (`support::keys`) and the examples.

#![allow(dead_code, clippy::unwrap_used)]

/// A new RSA-2048 key, PKCS#8 DER.
pub fn rsa_pkcs8() -> Vec<u8> {
    use rsa::pkcs8::EncodePrivateKey;
    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .unwrap()
        .to_pkcs8_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// A new P-384 key, PKCS#8 DER.
pub fn p384_pkcs8() -> Vec<u8> {
    ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap()
    .as_ref()
    .to_vec()
}
