//! The simulated TD quoting stack goes through exactly the production verifier: its quotes
//! verify under its test root only, the policy judges them, and every failure has its kind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_tdx::simulate::{SimPlatform, SimTd, SimulatedTdx, TestPki, collateral};
use ironpact_tdx::{Collateral, ErrorKind, Policy, Quote, Roots, binding, verify, verify_quote};

const NOW: i64 = 1_795_392_000; // 2026-11-23
const DAY: i64 = 86_400;

fn stack(p: &SimPlatform) -> (TestPki, SimulatedTdx, Collateral, Roots) {
    let pki = TestPki::generate(p, NOW - 365 * DAY, NOW + 365 * DAY).unwrap();
    let dev = SimulatedTdx::new(&pki, p.clone()).unwrap();
    let c = collateral(&pki, p, NOW - DAY, NOW + 29 * DAY).unwrap();
    let roots = Roots::from_bytes(&pki.root.0).unwrap();
    (pki, dev, c, roots)
}

#[test]
fn a_simulated_quote_verifies_under_its_test_root_and_the_policy_judges_it() {
    let p = SimPlatform::default();
    let (pki, dev, c, roots) = stack(&p);
    let rd = binding::report_data(b"nonce", b"spki");
    let td = SimTd::with_mrtd([0xaa; 48]);
    let q = Quote::parse(&dev.quote(&td, rd).unwrap()).unwrap();
    let v = verify(&q, &c, &roots, NOW, 0).unwrap();
    assert_eq!(v.tcb_status(), Some("UpToDate"));
    assert_eq!(v.fmspc(), p.fmspc);
    assert!(
        verify_quote(&q, &roots, NOW)
            .unwrap()
            .tcb_status()
            .is_none()
    );
    // Intel's root does not know it
    let e = verify(&q, &c, &Roots::intel(), NOW, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e}");

    let mut policy = Policy {
        mrtds: vec![[0xaa; 48]],
        report_data: Some(rd),
        ..Policy::default()
    };
    policy.validate().unwrap();
    policy.check(&v).unwrap();
    // a policy that lists nothing admits nothing, even if nobody called validate()
    let empty = Policy {
        report_data: Some(rd),
        ..Policy::default()
    };
    assert!(empty.validate().is_err());
    assert_eq!(
        empty.check(&v).unwrap_err().kind,
        ErrorKind::MeasurementNotAllowed
    );
    let sel: Vec<String> = v
        .selectors()
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    assert!(
        sel.contains(&format!("mrtd:{}", "aa".repeat(48))),
        "{sel:?}"
    );
    assert!(sel.contains(&"tcb_status:UpToDate".to_string()));
    assert!(sel.contains(&"attributes:debug:false".to_string()));

    // wrong MRTD, another nonce, a debug TD
    policy.mrtds = vec![[0xbb; 48]];
    assert_eq!(
        policy.check(&v).unwrap_err().kind,
        ErrorKind::MeasurementNotAllowed
    );
    policy.mrtds = vec![[0xaa; 48]];
    policy.report_data = Some(binding::report_data(b"other", b"spki"));
    assert_eq!(
        policy.check(&v).unwrap_err().kind,
        ErrorKind::ReportDataMismatch
    );
    policy.report_data = Some(rd);
    let debug = SimTd {
        debug: true,
        ..td.clone()
    };
    let qd = Quote::parse(&dev.quote(&debug, rd).unwrap()).unwrap();
    let vd = verify(&qd, &c, &roots, NOW, 0).unwrap();
    assert_eq!(policy.check(&vd).unwrap_err().kind, ErrorKind::DebugTd);

    // expired collateral, and the grace period
    let e = verify(&q, &c, &roots, NOW + 40 * DAY, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::CollateralExpired, "{e}");
    assert!(verify(&q, &c, &roots, NOW + 30 * DAY, 7 * DAY).is_ok());

    // collateral from another platform model
    let other = SimPlatform {
        fmspc: [1, 2, 3, 4, 5, 6],
        ..p.clone()
    };
    let c2 = collateral(&pki, &other, NOW - DAY, NOW + 29 * DAY).unwrap();
    let e = verify(&q, &c2, &roots, NOW, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FmspcMismatch, "{e}");
}

#[test]
fn statuses_and_advisories_come_from_the_collateral() {
    let p = SimPlatform {
        tcb_status: "SWHardeningNeeded".into(),
        advisories: vec!["INTEL-SA-00837".into()],
        ..SimPlatform::default()
    };
    let (_, dev, c, roots) = stack(&p);
    let q = Quote::parse(&dev.quote(&SimTd::with_mrtd([1; 48]), [0; 64]).unwrap()).unwrap();
    let v = verify(&q, &c, &roots, NOW, 0).unwrap();
    assert_eq!(v.tcb_status(), Some("SWHardeningNeeded"));
    assert_eq!(v.advisories(), vec!["INTEL-SA-00837".to_string()]);
    let mut policy = Policy {
        allow_any_measurement: true,
        ..Policy::default()
    };
    assert_eq!(
        policy.check(&v).unwrap_err().kind,
        ErrorKind::TcbStatusNotAllowed
    );
    policy.allowed_tcb_statuses.push("SWHardeningNeeded".into());
    policy.check(&v).unwrap();
    policy.denied_advisories = vec!["INTEL-SA-00837".into()];
    assert_eq!(
        policy.check(&v).unwrap_err().kind,
        ErrorKind::TcbStatusNotAllowed
    );
}

#[test]
fn tampered_simulated_quotes_and_collateral_are_refused() {
    let p = SimPlatform::default();
    let (_, dev, c, roots) = stack(&p);
    let quote = dev.quote(&SimTd::with_mrtd([7; 48]), [9; 64]).unwrap();
    for (at, kind) in [
        (200, ErrorKind::BadSignature),                                 // MRTD
        (48 + 584 + 4 + 10, ErrorKind::BadSignature),                   // quote signature
        (48 + 584 + 4 + 64 + 10, ErrorKind::BadQeReportSignature), // attestation key: the QE binding fails
        (48 + 584 + 4 + 128 + 6 + 20, ErrorKind::BadQeReportSignature), // QE report
    ] {
        let mut t = quote.clone();
        t[at] ^= 0x40;
        let e = verify(&Quote::parse(&t).unwrap(), &c, &roots, NOW, 0).unwrap_err();
        assert_eq!(e.kind, kind, "flip at {at}: {e}");
    }
    let mut json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    let edited = json["tcb_info"]
        .as_str()
        .unwrap()
        .replace("UpToDate", "OutOfDate");
    json["tcb_info"] = serde_json::json!(edited);
    let bad = Collateral::from_json(json.to_string().as_bytes()).unwrap();
    let e = verify(&Quote::parse(&quote).unwrap(), &bad, &roots, NOW, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadCollateralSignature, "{e}");
}

#[test]
fn the_pki_round_trips_through_files() {
    let p = SimPlatform::default();
    let (pki, _, c, roots) = stack(&p);
    let files: std::collections::HashMap<String, Vec<u8>> = pki.to_files().into_iter().collect();
    assert_eq!(files.len(), 8);
    let loaded =
        TestPki::from_files(|n| files.get(n).cloned().ok_or(format!("{n}: missing"))).unwrap();
    let dev = SimulatedTdx::new(&loaded, p).unwrap();
    let q = Quote::parse(&dev.quote(&SimTd::with_mrtd([3; 48]), [0; 64]).unwrap()).unwrap();
    verify(&q, &c, &roots, NOW, 0).unwrap();
    let e = TestPki::from_files(|n| Err(format!("{n}: missing"))).unwrap_err();
    assert!(e.to_string().contains("root.pem: missing"), "{e}");
}

#[test]
fn a_simulated_sgx_quote_verifies_with_sgx_collateral_only() {
    use ironpact_tdx::simulate::{SimEnclave, sgx_collateral};
    let p = SimPlatform::default();
    let (pki, dev, tdx_collateral, roots) = stack(&p);
    let sgx = sgx_collateral(&pki, &p, NOW - DAY, NOW + 29 * DAY).unwrap();
    let enclave = SimEnclave {
        mrenclave: [0xe1; 32],
        mrsigner: [0x51; 32],
        isv_prod_id: 7,
        isv_svn: 3,
        debug: false,
    };
    let rd = [0x42; 64];
    let q = Quote::parse(&dev.sgx_quote(&enclave, rd).unwrap()).unwrap();
    assert_eq!(q.tee(), ironpact_tdx::Tee::Sgx);
    let r = q.enclave().unwrap();
    assert_eq!(
        (r.mr_enclave, r.mr_signer, r.isv_prod_id, r.isv_svn),
        ([0xe1; 32], [0x51; 32], 7, 3)
    );
    assert_eq!(q.report_data(), rd);
    assert!(!q.debug());
    let v = verify(&q, &sgx, &roots, NOW, 0).unwrap();
    assert_eq!(v.tcb_status(), Some("UpToDate"));
    // TD collateral is not an SGX platform's
    assert!(verify(&q, &tdx_collateral, &roots, NOW, 0).is_err());
    // a debug enclave says so
    let dbg = SimEnclave {
        debug: true,
        ..enclave
    };
    assert!(
        Quote::parse(&dev.sgx_quote(&dbg, rd).unwrap())
            .unwrap()
            .debug()
    );
}
