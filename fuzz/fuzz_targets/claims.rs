//! Fuzzes the attestation claims readers a peer runs on every SVID it is shown: the DER of the
//! extension, a whole certificate, and the JWT `tee` claim's JSON.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use ironpact_spiffe::claims::{AttestationClaims, from_certificate};
    let _ = AttestationClaims::from_der(data);
    let _ = from_certificate(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = AttestationClaims::from_json(&v);
    }
});
