//! Fresh PKCS#8 keys for simulated SEV-SNP chains: RSA-2048 for ARK/ASK/ASVK, P-384 for the
//! VCEK/VLEK (made by `ironpact_snp::simulate`, which `ironpact-server fixtures snp` uses too).

/// A new RSA-2048 key, PKCS#8 DER.
pub fn rsa_pkcs8() -> Result<Vec<u8>, String> {
    ironpact_snp::simulate::rsa_pkcs8().map_err(|e| e.to_string())
}

/// A new P-384 key, PKCS#8 DER.
pub fn p384_pkcs8() -> Result<Vec<u8>, String> {
    ironpact_snp::simulate::p384_pkcs8().map_err(|e| e.to_string())
}
