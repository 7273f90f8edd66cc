//! Fuzzes ironpact_snp's cert_table parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ironpact_snp::fuzz::cert_table(data));
