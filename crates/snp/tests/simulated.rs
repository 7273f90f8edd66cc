//! The simulated device goes through exactly the production verifier: accepted with its
//! test ARK pinned, refused with AMD's genuine roots, and judged by the same policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_snp::simulate::{SimGuest, SimPlatform, SimulatedSnp};
use ironpact_snp::{AmdRoots, ErrorKind, Policy, Product};

fn rsa_pkcs8() -> Vec<u8> {
    use rsa::pkcs8::EncodePrivateKey;
    let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    k.to_pkcs8_der().unwrap().as_bytes().to_vec()
}

fn device(now: i64) -> SimulatedSnp {
    let rng = ring::rand::SystemRandom::new();
    let vcek = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let platform = SimPlatform {
        product: Product::Milan,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    };
    SimulatedSnp::new(
        platform,
        &rsa_pkcs8(),
        &rsa_pkcs8(),
        vcek.as_ref(),
        now - 3600,
        now + 86400,
    )
    .unwrap()
}

#[test]
fn simulated_reports_verify_only_under_their_pinned_test_root() {
    let now = 1_800_000_000;
    let sim = device(now);
    let guest = SimGuest::default();
    let rd = [7u8; 64];
    let report = sim.report(&guest, &rd).unwrap();
    let roots = sim.roots().unwrap();
    let v = ironpact_snp::verify(&report, &sim.vcek_der, &roots, now, None).unwrap();
    assert_eq!(v.report().measurement, guest.measurement);
    assert_eq!(v.report().report_data, rd);
    assert_eq!(v.product(), Product::Milan);
    let e = ironpact_snp::verify(
        &report,
        &sim.vcek_der,
        &AmdRoots::genuine().unwrap(),
        now,
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e}");
    let e =
        ironpact_snp::verify(&report, &sim.vcek_der, &roots, now + 2 * 86400, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ExpiredCert);

    // the policy sees what a real report would show
    let allow = Policy {
        measurements: vec![guest.measurement.to_vec()],
        report_data: Some(rd),
        ..Policy::default()
    };
    allow.check(&v).unwrap();
    let wrong_nonce = Policy {
        report_data: Some([8; 64]),
        ..allow.clone()
    };
    assert_eq!(
        wrong_nonce.check(&v).unwrap_err().kind,
        ErrorKind::ReportDataMismatch
    );
    let other = Policy {
        measurements: vec![vec![0x99; 48]],
        ..allow.clone()
    };
    assert_eq!(
        other.check(&v).unwrap_err().kind,
        ErrorKind::MeasurementNotAllowed
    );
    let debug_guest = SimGuest {
        policy: 0x30000 | (1 << 19),
        ..SimGuest::default()
    };
    let dr = sim.report(&debug_guest, &rd).unwrap();
    let e = ironpact_snp::verify(&dr, &sim.vcek_der, &roots, now, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::DebugPolicy);
    // another device's VCEK cannot vouch for this report
    let other_dev = device(now);
    let e = ironpact_snp::verify(&report, &other_dev.vcek_der, &roots, now, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain);
}

#[test]
fn revocation_lists() {
    use ironpact_snp::crl::check_revocation;
    let now = 1_800_000_000;
    let sim = device(now);
    let roots = sim.roots().unwrap();
    let pr = roots.for_product(Product::Milan).unwrap();
    let certs: [&[u8]; 2] = [&sim.ask_der, &sim.vcek_der];
    // nothing revoked
    check_revocation(
        &sim.crl(&[], now - 10, now + 1000).unwrap(),
        pr,
        &certs,
        now,
    )
    .unwrap();
    // the VCEK (serial 0) revoked
    let e = check_revocation(
        &sim.crl(&[7, 0], now - 10, now + 1000).unwrap(),
        pr,
        &certs,
        now,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RevokedCert, "{e}");
    // the ASK (serial 2) revoked
    let e = check_revocation(
        &sim.crl(&[2], now - 10, now + 1000).unwrap(),
        pr,
        &certs,
        now,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RevokedCert);
    // stale, future, forged and garbage CRLs
    let e =
        check_revocation(&sim.crl(&[], now - 100, now - 10).unwrap(), pr, &certs, now).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ExpiredCert);
    let e =
        check_revocation(&sim.crl(&[], now + 10, now + 100).unwrap(), pr, &certs, now).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain);
    let forged = device(now).crl(&[], now - 10, now + 1000).unwrap();
    let e = check_revocation(&forged, pr, &certs, now).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain);
    assert!(check_revocation(b"junk", pr, &certs, now).is_err());
}

#[test]
fn a_vlek_signed_report_verifies_under_its_asvk_and_nowhere_else() {
    let now = 1_800_000_000;
    let p384 = || {
        ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap()
        .as_ref()
        .to_vec()
    };
    let platform = SimPlatform {
        product: Product::Genoa,
        chip_id: [0x33; 64],
        tcb: (9, 0, 21, 84),
    };
    let (ark, asvk) = (rsa_pkcs8(), rsa_pkcs8());
    let sim = SimulatedSnp::new_vlek(
        platform.clone(),
        &ark,
        &asvk,
        &p384(),
        now - 60,
        now + 86400,
    )
    .unwrap();
    assert_eq!(sim.signing_key, ironpact_snp::SigningKey::Vlek);
    let report = sim.report(&SimGuest::default(), &[1; 64]).unwrap();
    let roots = sim.roots().unwrap();
    let v = ironpact_snp::verify(&report, &sim.vcek_der, &roots, now, None).unwrap();
    assert_eq!(
        (v.signing_key(), v.product()),
        (ironpact_snp::SigningKey::Vlek, Product::Genoa)
    );
    assert!(
        v.selectors().iter().all(|(k, _)| k != "chip_id"),
        "a VLEK names no chip"
    );
    // a VLEK from another ASVK (another provider's chain under the same ARK) is refused
    let other =
        SimulatedSnp::new_vlek(platform, &ark, &rsa_pkcs8(), &p384(), now - 60, now + 86400)
            .unwrap();
    let e = ironpact_snp::verify(&report, &other.vcek_der, &roots, now, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UntrustedChain, "{e}");
    // a policy that accepts only VCEKs refuses it
    let vcek_only = Policy {
        allow_any_measurement: true,
        accept_vlek: false,
        ..Policy::default()
    };
    assert_eq!(
        vcek_only.check(&v).unwrap_err().kind,
        ErrorKind::PolicyViolation
    );
}

/// The simulated chain is ordinary X.509 with RSASSA-PSS: openssl, an independent verifier,
/// accepts it (ARK → ASK → VCEK, and the CRL under the ARK).
#[test]
fn openssl_verifies_the_simulated_chain() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "openssl is missing");
        println!("SKIPPED: openssl is not installed");
        return;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sim = device(now);
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, tag: &str, der: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem::encode(&pem::Pem::new(tag, der.to_vec()))).unwrap();
        p
    };
    let ark = pem("ark.pem", "CERTIFICATE", &sim.ark_der);
    let ask = pem("ask.pem", "CERTIFICATE", &sim.ask_der);
    let vcek = pem("vcek.pem", "CERTIFICATE", &sim.vcek_der);
    let crl = pem(
        "crl.pem",
        "X509 CRL",
        &sim.crl(&[], now - 10, now + 1000).unwrap(),
    );
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ark)
        .arg("-untrusted")
        .arg(&ask)
        .arg(&vcek)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&ark)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("verify OK"), "{text}");
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&vcek)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("rsassaPss") && text.contains("sha384"),
        "{text}"
    );
}
