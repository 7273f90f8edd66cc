//! Every case under ../shared/vectors/snp gives its case.json outcome through the library,
//! evaluated at the date the corpus was judged (and, where a case records one, at a time
//! inside its certificate's validity).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_snp::{AmdRoots, verify::verify_endorsement};
use serde_json::Value;
use std::path::PathBuf;

fn vectors() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/snp");
    if dir.is_dir() {
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

fn outcome(dir: &std::path::Path, roots: &AmdRoots, now: i64) -> String {
    let cert = ["vcek.der", "vlek.der"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap();
    let cert = std::fs::read(cert).unwrap();
    let r = match std::fs::read(dir.join("report.bin")) {
        Ok(report) => ironpact_snp::verify(&report, &cert, roots, now, None).map(|_| ()),
        // certificate-only cases: the chain and its validity
        Err(_) => verify_endorsement(&cert, roots, now, None).map(|_| ()),
    };
    match r {
        Ok(()) => "valid".into(),
        Err(e) => e.kind.as_str().into(),
    }
}

#[test]
fn every_snp_case_gives_its_expected_outcome() {
    let Some(dir) = vectors() else { return };
    let roots = AmdRoots::genuine().unwrap();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let case = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(case.join("case.json")) else {
            continue;
        };
        let c: Value = serde_json::from_str(&text).unwrap();
        let expected = c["expected"].as_str().unwrap();
        let got = outcome(&case, &roots, unix(JUDGED));
        if got != expected {
            wrong.push(format!(
                "{}: expected {expected}, got {got}",
                case.display()
            ));
        }
        if let Some(inside) = c.get("result_inside_cert_validity") {
            let want = inside["result"].as_str().unwrap();
            let got = outcome(&case, &roots, unix(inside["at"].as_str().unwrap()));
            if got != want {
                wrong.push(format!(
                    "{} at {}: expected {want}, got {got}",
                    case.display(),
                    inside["at"]
                ));
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases found");
    assert!(
        wrong.is_empty(),
        "{} of {checked} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn truncated_and_garbage_inputs_are_errors_not_panics() {
    let Some(dir) = vectors() else { return };
    let roots = AmdRoots::genuine().unwrap();
    let report = std::fs::read(dir.join("trustee-milan-vcek/report.bin")).unwrap();
    let cert = std::fs::read(dir.join("trustee-milan-vcek/vcek.der")).unwrap();
    let now = unix(JUDGED);
    for n in [0, 1, 0x2A0, 0x49F] {
        let e = ironpact_snp::verify(&report[..n], &cert, &roots, now, None).unwrap_err();
        assert_eq!(e.kind.as_str(), "unparseable");
    }
    for n in [0, 10, cert.len() / 2, cert.len() - 1] {
        let e = ironpact_snp::verify(&report, &cert[..n], &roots, now, None).unwrap_err();
        assert_eq!(e.kind.as_str(), "untrusted_chain", "cert cut at {n}");
    }
    // every single-byte change of the signed area is caught
    for i in (0..0x2A0).step_by(7) {
        let mut r = report.clone();
        r[i] ^= 0x01;
        assert!(
            ironpact_snp::verify(&r, &cert, &roots, now, None).is_err(),
            "byte {i:#x} flip accepted"
        );
    }
    // a report from the future product is refused: Genoa roots for a Milan VCEK
    let e = ironpact_snp::verify(
        &report,
        &cert,
        &roots,
        now,
        Some(ironpact_snp::Product::Genoa),
    )
    .unwrap_err();
    assert_eq!(e.kind.as_str(), "wrong_product");
}

#[test]
fn policy_judges_verified_reports() {
    use ironpact_snp::{ErrorKind, Policy, Tcb};
    let Some(dir) = vectors() else { return };
    let roots = AmdRoots::genuine().unwrap();
    let case = dir.join("oak-milan-oc-release");
    let report = std::fs::read(case.join("report.bin")).unwrap();
    let cert = std::fs::read(case.join("vcek.der")).unwrap();
    let v = ironpact_snp::verify_authentic(&report, &cert, &roots, unix(JUDGED), None).unwrap();
    let m = v.report().measurement.to_vec();
    let ok = Policy {
        measurements: vec![m.clone()],
        ..Policy::default()
    };
    ok.validate().unwrap();
    ok.check(&v).unwrap();
    assert!(
        Policy::default().validate().is_err(),
        "an empty allow-list needs an explicit opt-out"
    );
    let kind = |p: Policy| p.check(&v).unwrap_err().kind;
    assert_eq!(
        kind(Policy {
            measurements: vec![vec![0; 48]],
            ..Policy::default()
        }),
        ErrorKind::MeasurementNotAllowed
    );
    let high = Tcb {
        fmc: None,
        bootloader: 99,
        tee: 0,
        snp: 0,
        microcode: 0,
    };
    assert_eq!(
        kind(Policy {
            min_reported_tcb: Some(high),
            ..ok.clone()
        }),
        ErrorKind::TcbTooLow
    );
    assert_eq!(
        kind(Policy {
            min_committed_tcb: Some(high),
            ..ok.clone()
        }),
        ErrorKind::TcbTooLow
    );
    assert_eq!(
        kind(Policy {
            vmpls: vec![1, 2],
            ..ok.clone()
        }),
        ErrorKind::VmplNotAllowed
    );
    assert_eq!(
        kind(Policy {
            report_data: Some([1; 64]),
            ..ok.clone()
        }),
        ErrorKind::ReportDataMismatch
    );
    assert_eq!(
        kind(Policy {
            allow_smt: false,
            ..ok.clone()
        }),
        ErrorKind::PolicyViolation
    );
    assert_eq!(
        kind(Policy {
            host_data: vec![vec![9; 32]],
            ..ok.clone()
        }),
        ErrorKind::PolicyViolation
    );
    assert_eq!(
        kind(Policy {
            min_guest_svn: 1,
            ..ok.clone()
        }),
        ErrorKind::PolicyViolation
    );
    assert_eq!(
        kind(Policy {
            accept_vcek: false,
            ..ok.clone()
        }),
        ErrorKind::PolicyViolation
    );
    // the debug report verifies as authentic; the policy refuses it unless told otherwise
    let dbg = dir.join("go-sev-guest-milan-debug");
    let dv = ironpact_snp::verify_authentic(
        &std::fs::read(dbg.join("report.bin")).unwrap(),
        &std::fs::read(dbg.join("vcek.der")).unwrap(),
        &roots,
        unix(JUDGED),
        None,
    )
    .unwrap();
    let any = Policy {
        allow_any_measurement: true,
        allow_provisional_firmware: true,
        ..Policy::default()
    };
    assert_eq!(any.check(&dv).unwrap_err().kind, ErrorKind::DebugPolicy);
    Policy {
        allow_debug: true,
        ..any
    }
    .check(&dv)
    .unwrap();
}
