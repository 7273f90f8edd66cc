//! Fuzzes JWT-SVID validation (header, claims, signature) on arbitrary tokens.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = ironpact_spiffe::jwt::validate(token, &[], "aud", 1_800_000_000);
    }
});
