//! Verification speed against dcap-qvl's own `verify` on the same real quotes and collateral,
//! in one run: ours = `Quote::parse` + `ironpact_tdx::verify` + the policy check (what the
//! attestor does per quote); dcap-qvl = `QuoteVerifier::verify` on the bytes. Our layer should
//! add almost nothing: goal ratio <= 1.1. Run: cargo bench -p ironpact-tdx --bench verify

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_tdx::{Collateral, Policy, Quote, Roots};
use std::path::PathBuf;
use std::time::Instant;

const CASES: &[(&str, &str)] = &[
    ("tdx/dcap-qvl-tdx-v4-uptodate", "2025-07-19T10:00:34Z"),
    ("sgx/dcap-qvl-sgx-v3", "2025-07-19T10:01:17Z"),
];

fn main() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
    let iters: u32 = std::env::var("IRONPACT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let roots = Roots::intel();
    println!("DCAP quote verification, {iters} iterations per case (release build expected)");
    println!(
        "{:<32} {:>12} {:>12} {:>8}",
        "case", "ours µs", "dcap-qvl µs", "ratio"
    );
    let (mut tot_ours, mut tot_theirs) = (0.0, 0.0);
    for (case, at) in CASES {
        let dir = base.join(case);
        let quote = std::fs::read(dir.join("quote.bin")).unwrap();
        let json = std::fs::read(dir.join("collateral.json")).unwrap();
        let now = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp();
        // collateral is parsed once, as the server's cache holds it
        let collateral = Collateral::from_json(&json).unwrap();
        let policy = Policy {
            allow_any_measurement: true,
            allowed_tcb_statuses: vec![
                "UpToDate".into(),
                "ConfigurationAndSWHardeningNeeded".into(),
            ],
            ..Policy::default()
        };
        let ours_once = || {
            let q = Quote::parse(&quote).unwrap();
            let v = ironpact_tdx::verify(&q, &collateral, &roots, now, 0).unwrap();
            if q.td().is_some() {
                policy.check(&v).unwrap();
            }
        };
        let verifier = dcap_qvl::verify::QuoteVerifier::new(roots.der().to_vec());
        let theirs_once = || {
            verifier
                .verify(&quote, collateral.inner(), now as u64)
                .unwrap();
        };
        ours_once();
        theirs_once();
        // interleaved rounds, so that neither side gets a warmer machine
        let (mut ours, mut theirs) = (0.0, 0.0);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..iters / 5 {
                ours_once();
            }
            ours += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..iters / 5 {
                theirs_once();
            }
            theirs += t.elapsed().as_secs_f64();
        }
        let n = f64::from(iters / 5 * 5);
        let (ours, theirs) = (ours * 1e6 / n, theirs * 1e6 / n);
        println!(
            "{case:<32} {ours:>12.1} {theirs:>12.1} {:>8.3}",
            ours / theirs
        );
        tot_ours += ours;
        tot_theirs += theirs;
    }
    let n = CASES.len() as f64;
    let (ours, theirs) = (tot_ours / n, tot_theirs / n);
    println!(
        "{:<32} {ours:>12.1} {theirs:>12.1} {:>8.3}",
        "mean",
        ours / theirs
    );
    println!(
        "goal ratio <= 1.1: {}",
        if ours <= theirs * 1.1 {
            "met"
        } else {
            "NOT met"
        }
    );
}
