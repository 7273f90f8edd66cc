//! Fresh PKCS#8 keys for simulated SEV-SNP chains: RSA-2048 for ARK/ASK/ASVK, P-384 for the
//! VCEK/VLEK.

/// A new RSA-2048 key, PKCS#8 DER.
pub fn rsa_pkcs8() -> Result<Vec<u8>, String> {
    use rsa::pkcs8::EncodePrivateKey;
    let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| e.to_string())?;
    Ok(k.to_pkcs8_der()
        .map_err(|e| e.to_string())?
        .as_bytes()
        .to_vec())
}

/// A new P-384 key, PKCS#8 DER.
pub fn p384_pkcs8() -> Result<Vec<u8>, String> {
    ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .map(|d| d.as_ref().to_vec())
    .map_err(|e| e.to_string())
}
