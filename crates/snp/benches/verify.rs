//! Verification speed against the `sev` crate on the same real reports, in one run:
//! ours = `ironpact_snp::verify` (AMD roots loaded once; per report: VCEK parse and RSA-PSS
//! check under the ASK, chip/TCB checks, ECDSA P-384 signature); sev = parse the report and
//! `(&Chain, &AttestationReport).verify()` with the chain parsed once. Goal: ratio <= 1.0
//! and under 1 ms. Run: cargo bench -p ironpact-snp --bench verify

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sev::certs::snp::{Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use std::path::PathBuf;
use std::time::Instant;

const CASES: &[(&str, &str)] = &[
    ("oak-genoa-oc", "genoa"),
    ("oak-milan-oc-release", "milan"),
    ("oak-milan-oc-staging", "milan"),
    ("trustee-milan-vcek", "milan"),
    ("virtee-milan-v2", "milan"),
];

fn main() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
    let iters: u32 = std::env::var("IRONPACT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let roots = ironpact_snp::AmdRoots::genuine().unwrap();
    let now = 1_795_392_000; // 2026-11-23, when the corpus was judged
    println!("SEV-SNP report verification, {iters} iterations per case (release build expected)");
    println!(
        "{:<24} {:>12} {:>12} {:>8}",
        "case", "ours µs", "sev µs", "ratio"
    );
    let (mut tot_ours, mut tot_sev) = (0.0, 0.0);
    for (case, product) in CASES {
        let dir = base.join("snp").join(case);
        let report = std::fs::read(dir.join("report.bin")).unwrap();
        let vcek = std::fs::read(dir.join("vcek.der")).unwrap();
        let ark = std::fs::read(base.join(format!("amd-roots/{product}/ark.pem"))).unwrap();
        let ask = std::fs::read(base.join(format!("amd-roots/{product}/ask.pem"))).unwrap();
        let vcek_pem = vcek_pem(&vcek);
        let chain = Chain::from_pem(&ark, &ask, vcek_pem.as_bytes()).unwrap();
        // both must accept the report before we time them
        ironpact_snp::verify(&report, &vcek, &roots, now, None).unwrap();
        let r = AttestationReport::from_bytes_with(&report, ()).unwrap();
        (&chain, &r).verify().unwrap();

        let t = Instant::now();
        for _ in 0..iters {
            ironpact_snp::verify(&report, &vcek, &roots, now, None).unwrap();
        }
        let ours = t.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
        let t = Instant::now();
        for _ in 0..iters {
            let r = AttestationReport::from_bytes_with(&report, ()).unwrap();
            (&chain, &r).verify().unwrap();
        }
        let theirs = t.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
        println!(
            "{case:<24} {ours:>12.1} {theirs:>12.1} {:>8.2}",
            ours / theirs
        );
        tot_ours += ours;
        tot_sev += theirs;
    }
    let n = CASES.len() as f64;
    let (ours, theirs) = (tot_ours / n, tot_sev / n);
    println!(
        "{:<24} {ours:>12.1} {theirs:>12.1} {:>8.2}",
        "mean",
        ours / theirs
    );
    println!(
        "goal ratio <= 1.0: {}; goal < 1000 µs: {}",
        if ours <= theirs { "met" } else { "NOT met" },
        if ours < 1000.0 { "met" } else { "NOT met" }
    );
}

/// PEM for the VCEK, which `sev`'s chain constructor wants.
fn vcek_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}
