//! Fuzzes what an unauthenticated node makes the x509pop attestor parse before any challenge:
//! the JSON payload, the base64 DER certificates, the X.509 parse and the chain check; and the
//! agent_path_template parser of the server's config.
#![no_main]
use ironpact_server::attest::x509pop::server::X509PopAttestor;
use ironpact_server::attest::x509pop::template::AgentPathTemplate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&0, rest)) = data.split_first() {
        let _ = AgentPathTemplate::parse(&String::from_utf8_lossy(rest));
        return;
    }
    let td = ironpact_spiffe::TrustDomain::new("example.org").expect("a valid name");
    let a = X509PopAttestor::new(td, Vec::new(), AgentPathTemplate::default())
        .expect("no CA is a valid (empty) bundle");
    let _ = a.check_payload(data, 1_790_000_000);
});
