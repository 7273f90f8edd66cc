//! Every case under ../shared/vectors/snp gives its case.json outcome through
//! `ironpact-server verify snp` (JSON on stdout, exit 0 or 1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ironpact-server");

#[test]
fn every_snp_case_through_the_cli() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/snp");
    if !dir.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "vectors missing at {}",
            dir.display()
        );
        println!("SKIPPED: no vectors at {}", dir.display());
        return;
    }
    let mut wrong = Vec::new();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let case = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(case.join("case.json")) else {
            continue;
        };
        let c: Value = serde_json::from_str(&text).unwrap();
        let mut runs = vec![(
            "2026-11-23T00:00:00Z".to_string(),
            c["expected"].as_str().unwrap().to_string(),
        )];
        if let Some(inside) = c.get("result_inside_cert_validity") {
            runs.push((
                inside["at"].as_str().unwrap().to_string(),
                inside["result"].as_str().unwrap().to_string(),
            ));
        }
        for (now, want) in runs {
            let mut cmd = Command::new(BIN);
            cmd.args(["verify", "snp", "--certs-dir"])
                .arg(&case)
                .args(["--now", &now]);
            if case.join("report.bin").exists() {
                cmd.arg("--report").arg(case.join("report.bin"));
            }
            let out = cmd.output().unwrap();
            let v: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", case.display()));
            let got = if v["ok"] == Value::Bool(true) {
                "valid".to_string()
            } else {
                v["error"]["kind"].as_str().unwrap().to_string()
            };
            let code_ok = out.status.code() == Some(if got == "valid" { 0 } else { 1 });
            if got != want || !code_ok {
                wrong.push(format!(
                    "{} at {now}: expected {want}, got {got} (exit {:?})",
                    case.display(),
                    out.status.code()
                ));
            }
            if got == "valid" && v.get("certificate_only").is_none() {
                assert_eq!(
                    v["measurement"].as_str().unwrap(),
                    c["measurement"].as_str().unwrap(),
                    "{}",
                    case.display()
                );
                let sels = v["selectors"].as_array().unwrap();
                assert!(
                    sels.iter()
                        .any(|s| s.as_str().unwrap().starts_with("sev_snp:measurement:"))
                );
            }
            n += 1;
        }
    }
    assert!(n >= 10);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn policy_file_judges_a_valid_report() {
    let case = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/snp/oak-milan-oc-release");
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
    let dir = tempfile::tempdir().unwrap();
    let run = |policy: &str| -> Value {
        let p = dir.path().join("policy.hcl");
        std::fs::write(&p, policy).unwrap();
        let out = Command::new(BIN)
            .args(["verify", "snp", "--certs-dir"])
            .arg(&case)
            .arg("--report")
            .arg(case.join("report.bin"))
            .args(["--now", "2026-11-23T00:00:00Z", "--policy"])
            .arg(&p)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let m = c["measurement"].as_str().unwrap();
    assert_eq!(run(&format!("measurements = [\"{m}\"]\n"))["ok"], true);
    let other = "00".repeat(48);
    assert_eq!(
        run(&format!("measurements = [\"{other}\"]\n"))["error"]["kind"],
        "measurement_not_allowed"
    );
    assert_eq!(
        run(&format!(
            "sev_snp {{\n  measurements = [\"{m}\"]\n  min_tcb {{\n    microcode = 250\n  }}\n}}\n"
        ))["error"]["kind"],
        "tcb_too_low"
    );
    assert_eq!(
        run(&format!("measurements = [\"{m}\"]\nvmpls = [1]\n"))["error"]["kind"],
        "vmpl_not_allowed"
    );
    // a policy without an allow-list is refused up front, with the fix named
    let p = dir.path().join("bad.hcl");
    std::fs::write(&p, "allow_debug = false\n").unwrap();
    let out = Command::new(BIN)
        .args(["verify", "snp", "--certs-dir"])
        .arg(&case)
        .arg("--policy")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_any_measurement"));
}

#[test]
fn certificates_from_the_evidence_table() {
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
    let report = std::fs::read(case.join("report.bin")).unwrap();
    let vcek = std::fs::read(case.join("vcek.der")).unwrap();
    let pem = ironpact_spiffe::x509::certs_to_pem([vcek.as_slice()]);
    let table = ironpact_snp::cert_table::CertTable::build(&[(
        ironpact_snp::cert_table::GUID_VCEK,
        pem.as_bytes(),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("evidence.bin");
    std::fs::write(&ev, ironpact_snp::binding::encode_evidence(&report, &table)).unwrap();
    let out = Command::new(BIN)
        .args(["verify", "snp", "--report"])
        .arg(&ev)
        .args(["--now", "2026-11-23T00:00:00Z"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // a CRL that is not AMD's is refused, with the report otherwise valid
    let junk = dir.path().join("junk.crl");
    std::fs::write(&junk, b"not a crl").unwrap();
    let out = Command::new(BIN)
        .args(["verify", "snp", "--report"])
        .arg(&ev)
        .args(["--now", "2026-11-23T00:00:00Z", "--crl"])
        .arg(&junk)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "untrusted_chain", "{v}");
    // the bare report alone has no certificate to go on
    let out = Command::new(BIN)
        .args(["verify", "snp", "--report"])
        .arg(case.join("report.bin"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "untrusted_chain");
}

/// `policy from-report --report` on a vector's report writes a policy that `verify snp
/// --policy` accepts for that report and refuses for a report of another launch.
#[test]
fn policy_from_a_report_admits_exactly_that_launch() {
    let vectors = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/snp");
    if !vectors.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "vectors missing"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("from-report.hcl");
    let case = vectors.join("oak-milan-oc-release");
    // `policy from-report FLAGS --report REPORT`: (succeeded, stdout, stderr)
    let from_report = |flags: &[&str], report: &Path| {
        let out = Command::new(BIN)
            .args(["policy", "from-report"])
            .args(flags)
            .arg("--report")
            .arg(report)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, text, err) = from_report(&[], &case.join("report.bin"));
    assert!(ok, "{err}");
    std::fs::write(&p, &text).unwrap();
    let verify = |case: &Path| -> Value {
        let out = Command::new(BIN)
            .args(["verify", "snp", "--certs-dir"])
            .arg(case)
            .arg("--report")
            .arg(case.join("report.bin"))
            .args(["--now", "2026-11-23T00:00:00Z", "--policy"])
            .arg(&p)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    assert_eq!(verify(&case)["ok"], true, "{text}");
    let other = verify(&vectors.join("trustee-milan-vcek"));
    assert_eq!(other["ok"], false, "{other}");
    assert_eq!(other["error"]["kind"], "measurement_not_allowed", "{other}");
    // field by field against the policy: every field that differs, seen and allowed
    let diff = other["diff"].as_array().unwrap();
    let m = |f: &str| diff.iter().find(|d| d["field"] == f).cloned();
    let meas = m("measurement").unwrap();
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    assert_eq!(meas["allowed"], c["measurement"], "{other}");
    assert_ne!(meas["seen"], c["measurement"]);
    // the policy names the launch it was written from (its reference): the refused
    // measurement is explained by which of its launch inputs differ from that launch
    let reference = |f: &str| m(&format!("reference.{f}")).map(|d| d["seen"].clone());
    assert_eq!(
        reference("guest_policy"),
        Some(Value::from("0x3001f")),
        "{other}"
    );
    assert_eq!(reference("guest_svn"), Some(Value::from("4")), "{other}");
    assert!(
        reference("family_id").is_some() && reference("image_id").is_some(),
        "{other}"
    );
    assert_eq!(
        reference("vmpl"),
        None,
        "the same VMPL is not named: {other}"
    );
    // a reference with the same inputs and another measurement: what was launched (its
    // image: firmware, kernel, command line) differs
    let measured = c["measurement"].as_str().unwrap();
    std::fs::write(&p, text.replace(measured, &"ab".repeat(48))).unwrap();
    let relaunched = verify(&case);
    let fields: Vec<&str> = relaunched["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["measurement", "reference.launch"], "{relaunched}");
    // the same report against an edited policy: VMPL and guest SVN differ too
    std::fs::write(
        &p,
        text.replace("vmpls = [0]", "vmpls = [2]")
            .replace("min_guest_svn = 0", "min_guest_svn = 9"),
    )
    .unwrap();
    let edited = verify(&case);
    let fields: Vec<&str> = edited["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["vmpl", "guest_svn"], "{edited}");
    std::fs::write(&p, &text).unwrap();
    // a version 2 report does not name its product: asked for, with the fix
    let v2 = vectors.join("trustee-milan-vcek/report.bin");
    let (ok, _, err) = from_report(&[], &v2);
    assert!(!ok);
    assert!(err.contains("--product"), "{err}");
    // its platform ran provisional firmware: written only when asked for
    let (ok, _, err) = from_report(&["--product", "milan"], &v2);
    assert!(!ok);
    assert!(err.contains("--allowProvisional"), "{err}");
    let (ok, text, err) = from_report(&["--product", "milan", "--allowProvisional"], &v2);
    assert!(ok, "{err}");
    assert!(text.contains("allow_provisional_firmware = true"));
    // a debug launch is not written into an allow-list unless asked for
    let debug = vectors.join("go-sev-guest-milan-debug/report.bin");
    let (ok, _, err) = from_report(&["--product", "milan", "--allowProvisional"], &debug);
    assert!(!ok);
    assert!(err.contains("--allowDebug"), "{err}");
    let (ok, text, err) = from_report(&["--product", "milan", "--allowDebug"], &debug);
    assert!(ok, "{err}");
    assert!(text.contains("allow_debug = true"));
}
