//! Fuzzes the PKCS#10 CSR parser every agent request goes through (attestation, SVID signing).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ironpact_spiffe::x509::parse_csr(data);
});
