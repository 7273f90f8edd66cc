//! Every case under ../shared/vectors/snp gives its case.json outcome through
//! `ironpact-server verify snp` (JSON on stdout, exit 0 or 1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::PathBuf;
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
