//! Fuzzes ironpact_snp's report parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ironpact_snp::fuzz::report(data));
