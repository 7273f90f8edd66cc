//! The KDS fetcher against a local HTTP server serving the vectors' VCEKs: the URL it asks
//! for (checked against the case's own chip ID and TCB), the answer verifying under AMD's
//! genuine roots, the disk cache, and errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_server::attest::sev_snp::kds::KdsFetcher;
use ironpact_snp::{Product, Report};
use serde_json::Value;
use std::path::PathBuf;

/// When the vectors' VCEKs are valid (Unix seconds).
const NOW: i64 = 1_795_392_000;

#[tokio::test]
async fn fetches_verifies_and_caches_a_vcek() {
    let case = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/snp/trustee-milan-vcek");
    if !case.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "vectors missing"
        );
        return;
    }
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    let t = &c["reported_tcb"];
    // the URL, composed independently from the case's decoded fields
    let want = format!(
        "/vcek/v1/Milan/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
        c["chip_id"].as_str().unwrap(),
        t["bootloader"],
        t["tee"],
        t["snp"],
        t["microcode"]
    );
    let vcek = std::fs::read(case.join("vcek.der")).unwrap();
    let report_bytes = std::fs::read(case.join("report.bin")).unwrap();
    let report = Report::parse(&report_bytes).unwrap();
    let kds = ironpact_testkit::kds::start(vec![(want.clone(), vcek.clone())]).unwrap();
    let base = kds.url().to_string();
    let log = || kds.requests();
    let cache = tempfile::tempdir().unwrap();
    let kds = KdsFetcher::new(&base, cache.path().to_path_buf()).unwrap();
    // v2 reports do not name their product: it must be configured
    assert!(kds.vcek(&report, None, NOW).await.is_err());
    let got = kds.vcek(&report, Some(Product::Milan), NOW).await.unwrap();
    assert_eq!(got, vcek);
    assert_eq!(log(), [format!("GET {want}")]);
    let roots = ironpact_snp::AmdRoots::genuine().unwrap();
    ironpact_snp::verify(&report_bytes, &got, &roots, NOW, Some(Product::Milan)).unwrap();
    // the second answer comes from the cache: no second request
    let again = kds.vcek(&report, Some(Product::Milan), NOW).await.unwrap();
    assert_eq!(again, vcek);
    assert_eq!(log().len(), 1);
    // an unknown chip is a clear error, and nothing is cached for it
    let empty = ironpact_testkit::kds::start(Vec::new()).unwrap();
    let other = KdsFetcher::new(
        empty.url(),
        tempfile::tempdir().unwrap().path().to_path_buf(),
    )
    .unwrap();
    let e = other
        .vcek(&report, Some(Product::Milan), NOW)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
}
