//! Fuzzes the HCL reader behind server.conf, agent.conf and the policy files.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ironpact_config::hcl::parse("fuzz.conf", text);
    }
});
