//! Fuzzes ironpact_tdx's quote parser and the collateral-free checks behind it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ironpact_tdx::fuzz::quote(data));
