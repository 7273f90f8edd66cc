//! Every case under ../shared/vectors/tdx and ../shared/vectors/sgx gives its case.json outcome
//! through the library, at its `evaluate_at` or (without one) the date the corpus was judged;
//! then tampered variants of each real quote: every byte range flipped and truncations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_tdx::{Collateral, ErrorKind, Quote, Roots, verify, verify_quote};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vectors() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
    if dir.join("tdx").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing (CI=true requires the shared vectors)",
            dir.display()
        );
    }
    println!("SKIPPED: no vectors at {}", dir.display());
    None
}

/// The corpus was judged on this date (PROVENANCE.md).
const JUDGED: &str = "2026-11-23T00:00:00Z";

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in ["tdx", "sgx"] {
        for e in std::fs::read_dir(dir.join(kind)).unwrap() {
            let p = e.unwrap().path();
            if p.join("case.json").exists() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn outcome(quote: &[u8], collateral: Option<&[u8]>, now: i64) -> String {
    let roots = Roots::intel();
    let r = Quote::parse(quote).and_then(|q| match collateral {
        Some(c) => Collateral::from_json(c).and_then(|c| verify(&q, &c, &roots, now, 0)),
        None => verify_quote(&q, &roots, now),
    });
    match r {
        Ok(v) => match v.tcb_status() {
            Some(s) => format!("valid:{s}"),
            None => "quote_ok:no_collateral".into(),
        },
        Err(e) => e.kind.as_str().into(),
    }
}

fn when(case: &Value) -> i64 {
    unix(case["evaluate_at"].as_str().unwrap_or(JUDGED))
}

#[test]
fn every_tdx_and_sgx_case_gives_its_expected_outcome() {
    let Some(dir) = vectors() else { return };
    let mut wrong = Vec::new();
    let all = cases(&dir);
    for case in &all {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
        let quote = std::fs::read(case.join("quote.bin")).unwrap();
        let collateral = std::fs::read(case.join("collateral.json")).ok();
        let got = outcome(&quote, collateral.as_deref(), when(&meta));
        let want = meta["expected"].as_str().unwrap();
        println!("{}: {got}", case.display());
        if got != want {
            wrong.push(format!("{}: got {got}, expected {want}", case.display()));
        }
    }
    assert!(all.len() >= 12, "only {} cases", all.len());
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn parsed_fields_match_the_case_files() {
    let Some(dir) = vectors() else { return };
    for case in cases(&dir) {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
        let Some(version) = meta["quote_version"].as_u64() else {
            continue;
        };
        let q = Quote::parse(&std::fs::read(case.join("quote.bin")).unwrap()).unwrap();
        assert_eq!(u64::from(q.version()), version, "{}", case.display());
        assert_eq!(
            q.body_type().name(),
            meta["body_type"],
            "{}",
            case.display()
        );
        assert_eq!(hex::encode(q.report_data()), meta["report_data"]);
        if let Some(td) = q.td() {
            assert_eq!(hex::encode(td.mr_td), meta["mrtd"], "{}", case.display());
            let rtmrs: Vec<String> = q.rtmrs().unwrap().iter().map(hex::encode).collect();
            assert_eq!(serde_json::json!(rtmrs), meta["rtmr"]);
            assert_eq!(hex::encode(td.mr_seam), meta["mrseam"]);
            assert_eq!(hex::encode(td.td_attributes), meta["td_attributes"]);
            assert_eq!(hex::encode(td.xfam), meta["xfam"]);
            assert_eq!(q.debug(), meta["td_debug"].as_bool().unwrap());
        } else {
            assert_eq!(q.debug(), meta["enclave_debug"].as_bool().unwrap());
        }
    }
}

/// Quotes with padding after the signature data verify as before.
#[test]
fn trailing_bytes_are_tolerated() {
    let Some(dir) = vectors() else { return };
    let case = dir.join("tdx/go-tdx-guest-v5-td15");
    let mut quote = std::fs::read(case.join("quote.bin")).unwrap();
    quote.extend_from_slice(&[0u8; 3000]);
    assert_eq!(
        outcome(&quote, None, unix(JUDGED)),
        "quote_ok:no_collateral"
    );
}

/// Every real quote, tampered: a flipped byte in the header, the body, the signature, the
/// attestation key, the QE report, its signature, the auth data and the PCK chain is refused
/// with the kind that names that part; every truncation is unparseable; nothing panics.
#[test]
fn tampered_quotes_are_refused_with_the_right_kind() {
    let Some(dir) = vectors() else { return };
    for case in cases(&dir) {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
        if !meta["expected"].as_str().unwrap().starts_with("valid")
            && meta["expected"] != "quote_ok:no_collateral"
        {
            continue;
        }
        let quote = std::fs::read(case.join("quote.bin")).unwrap();
        let collateral = std::fs::read(case.join("collateral.json")).ok();
        let now = when(&meta);
        let q = Quote::parse(&quote).unwrap();
        let body_end = q.signed_bytes().len();
        // (offset, expected kinds): header/body, quote signature, attestation key, QE report
        // (its CPUSVN/attributes region), QE signature
        let probes = [
            (8, vec![ErrorKind::BadSignature, ErrorKind::Unparseable]),
            (body_end - 70, vec![ErrorKind::BadSignature]),
            (body_end + 4 + 10, vec![ErrorKind::BadSignature]),
            (
                body_end + 4 + 64 + 10,
                vec![ErrorKind::BadQeReportSignature],
            ),
        ];
        for (at, kinds) in probes {
            let mut t = quote.clone();
            t[at] ^= 0x01;
            let roots = Roots::intel();
            let r = Quote::parse(&t).and_then(|q| match &collateral {
                Some(c) => verify(&q, &Collateral::from_json(c).unwrap(), &roots, now, 0),
                None => verify_quote(&q, &roots, now),
            });
            let e = r.expect_err(&format!("{}: flip at {at} accepted", case.display()));
            assert!(
                kinds.contains(&e.kind),
                "{}: flip at {at}: {e}",
                case.display()
            );
        }
        for len in [
            0,
            47,
            48,
            body_end - 1,
            body_end + 3,
            body_end + 200,
            quote.len() / 2,
        ] {
            let e = Quote::parse(&quote[..len.min(quote.len() - 1)]).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::Unparseable,
                "{}: {len}: {e}",
                case.display()
            );
        }
    }
}

#[test]
fn the_pinned_root_is_intels() {
    let Some(dir) = vectors() else { return };
    let der = std::fs::read(dir.join("intel-roots/Intel_SGX_Root_CA.der")).unwrap();
    assert_eq!(Roots::from_bytes(&der).unwrap(), Roots::intel());
    let pem = std::fs::read(dir.join("intel-roots/Intel_SGX_Root_CA.pem")).unwrap();
    assert!(Roots::from_bytes(&pem).unwrap().is_intel());
}
