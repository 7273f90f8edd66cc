//! Fuzzes ironpact_snp's endorsement parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ironpact_snp::fuzz::endorsement(data));
