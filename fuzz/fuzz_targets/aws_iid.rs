//! Fuzzes the aws_iid attestor's checks on what an unauthenticated node sends: the payload
//! (JSON, base64), and the PKCS#7/CMS SignedData parse and signature check.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // the first byte splits the input into the signed document and the PKCS#7 signature
    let cut = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (document, signature) = data.split_at(cut);
    let _ = ironpact_server::attest::aws_iid::server::verify_signature(document, signature, &[]);
    let attestor = ironpact_server::attest::AwsIidAttestor {
        trust_domain: ironpact_spiffe::TrustDomain::new("example.org").expect("a valid name"),
        certificates: Vec::new(),
        account_allowlist: Vec::new(),
    };
    let _ = attestor.check(data);
});
