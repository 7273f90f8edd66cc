//! Fuzzes the agent's HTTP/2 `:authority` rewriter, which reads every byte a local process
//! sends to the world-writable Workload API socket before the HTTP/2 server does.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ironpact_agent::authority::fuzz_rewrite(data));
