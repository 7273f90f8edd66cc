//! Every case under ../shared/vectors/tdx and ../shared/vectors/sgx gives its case.json outcome
//! through `ironpact-server verify tdx` (JSON on stdout, exit 0 or 1), evaluated at its
//! `evaluate_at` where it has one and at the clock's now otherwise; and a policy file judges.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ironpact-server");

fn vectors() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors");
    if dir.join("tdx").is_dir() {
        return Some(dir);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "vectors missing at {}",
        dir.display()
    );
    println!("SKIPPED: no vectors at {}", dir.display());
    None
}

fn run(case: &Path, extra: &[&str]) -> (bool, Value) {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["verify", "tdx", "--quote"])
        .arg(case.join("quote.bin"));
    if case.join("collateral.json").exists() {
        cmd.arg("--collateral").arg(case.join("collateral.json"));
    }
    if let Some(at) = meta["evaluate_at"].as_str() {
        cmd.args(["--now", at]);
    }
    cmd.args(extra);
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}: {e}: {out:?}", case.display()));
    assert_eq!(out.status.success(), v["ok"] == true, "{v}");
    (out.status.success(), v)
}

#[test]
fn every_tdx_and_sgx_case_through_the_cli() {
    let Some(dir) = vectors() else { return };
    let mut wrong = Vec::new();
    let mut n = 0;
    for kind in ["tdx", "sgx"] {
        for entry in std::fs::read_dir(dir.join(kind)).unwrap() {
            let case = entry.unwrap().path();
            let Ok(text) = std::fs::read_to_string(case.join("case.json")) else {
                continue;
            };
            let meta: Value = serde_json::from_str(&text).unwrap();
            let want = meta["expected"].as_str().unwrap();
            let (_, v) = run(&case, &[]);
            let got = match (&v["ok"], &v["tcb_status"]) {
                (Value::Bool(true), Value::String(s)) => format!("valid:{s}"),
                (Value::Bool(true), Value::Null) => "quote_ok:no_collateral".into(),
                _ => v["error"]["kind"].as_str().unwrap().to_string(),
            };
            if got != want {
                wrong.push(format!(
                    "{}: got {got}, expected {want}: {v}",
                    case.display()
                ));
            }
            if let (Some(mrtd), Value::Bool(true)) = (meta["mrtd"].as_str(), &v["ok"]) {
                assert_eq!(v["mrtd"], mrtd);
                assert_eq!(v["rtmrs"], meta["rtmr"]);
                assert_eq!(v["report_data"], meta["report_data"]);
            }
            n += 1;
        }
    }
    assert!(n >= 12, "only {n} cases");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_policy_judges_what_the_quote_shows() {
    let Some(dir) = vectors() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let case = dir.join("tdx/dcap-qvl-tdx-v4-uptodate");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    let mrtd = meta["mrtd"].as_str().unwrap();
    let policy = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let allowed = policy("ok.hcl", &format!("tdx {{\n  mrtds = [\"{mrtd}\"]\n}}\n"));
    let (ok, v) = run(&case, &["--policy", &allowed]);
    assert!(ok, "{v}");
    let other = policy("other.hcl", &format!("mrtds = [\"{}\"]\n", "00".repeat(48)));
    let (ok, v) = run(&case, &["--policy", &other]);
    assert!(!ok);
    assert_eq!(v["error"]["kind"], "measurement_not_allowed", "{v}");
    // stale collateral: refused, then accepted within a grace period
    let stale = dir.join("tdx/tamper-tdx-collateral-evaluated-now");
    let grace = policy(
        "grace.hcl",
        "allow_any_measurement = true\ncollateral_grace = \"87600h\"\n",
    );
    let (ok, v) = run(&stale, &["--policy", &grace]);
    assert!(ok, "{v}");
    // the SGX case is ConfigurationAndSWHardeningNeeded: only UpToDate passes by default
    let (ok, v) = run(
        &dir.join("sgx/dcap-qvl-sgx-v3"),
        &[
            "--policy",
            &policy("any.hcl", "allow_any_measurement = true\n"),
        ],
    );
    assert!(!ok);
    assert_eq!(v["error"]["kind"], "measurement_not_allowed", "{v}");
    // a debug TD (no collateral): the TCB status is unknown, so a policy refuses it
    let (ok, v) = run(
        &dir.join("tdx/trustee-tdx-quote-4"),
        &[
            "--policy",
            &policy("any2.hcl", "allow_any_measurement = true\n"),
        ],
    );
    assert!(!ok);
    assert_eq!(v["error"]["kind"], "tcb_status_not_allowed", "{v}");
    // a test root that is not Intel's: the real chain does not lead to it
    let (ok, v) = run(
        &dir.join("tdx/trustee-tdx-quote-5"),
        &[
            "--root",
            dir.join("amd-roots/milan/ark.pem").to_str().unwrap(),
        ],
    );
    assert!(!ok, "{v}");
}

/// `policy from-report --quote` on a vector's quote writes a policy that `verify tdx --policy`
/// accepts for that quote and refuses for another TD's.
#[test]
fn policy_from_a_quote_admits_exactly_that_td() {
    let Some(dir) = vectors() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let case = dir.join("tdx/dcap-qvl-tdx-v4-uptodate");
    let p = tmp.path().join("from-quote.hcl");
    let out = Command::new(BIN)
        .args(["policy", "from-report", "--quote"])
        .arg(case.join("quote.bin"))
        .arg("--write")
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.starts_with("# written by") && text.contains("tdx {"),
        "{text}"
    );
    let policy = p.display().to_string();
    let (ok, v) = run(&case, &["--policy", &policy]);
    assert!(ok, "{v}\n{text}");
    let mrtd = |c: &Path| -> String {
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(c.join("case.json")).unwrap()).unwrap();
        meta["mrtd"].as_str().unwrap().to_string()
    };
    assert!(
        text.contains(&format!("mrtds = [\"{}\"]", mrtd(&case))),
        "{text}"
    );
    // the policy names this TD as its reference: a TD refused for its MRTD is told which
    // registers differ from that known-good TD (here: a policy whose MRTD and reference
    // RTMR2 are another TD's)
    let edited = text.replace(&mrtd(&case), &"ab".repeat(48));
    let rtmr2 = edited
        .lines()
        .find(|l| l.trim_start().starts_with("rtmr2 = \""))
        .unwrap()
        .to_string();
    let edited = edited.replace(&rtmr2, &format!("    rtmr2 = \"{}\"", "cd".repeat(48)));
    let edited_path = tmp.path().join("edited.hcl");
    std::fs::write(&edited_path, edited).unwrap();
    let (ok, v) = run(&case, &["--policy", edited_path.to_str().unwrap()]);
    assert!(!ok, "{v}");
    let fields: Vec<&str> = v["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["MRTD", "reference.MRTD", "reference.RTMR2"], "{v}");
    assert_eq!(v["diff"][1]["seen"], mrtd(&case), "{v}");
    // another TD (the only other genuine quotes come without collateral, so the verdict
    // stops at the TCB status; its MRTD is not the one admitted either)
    let other = dir.join("tdx/go-tdx-guest-v4-spr-e4");
    assert!(!text.contains(&mrtd(&other)));
    let (ok, v) = run(&other, &["--policy", &policy]);
    assert!(!ok, "{v}");
    // the tampered quote of the same vector (MRTD flipped) is refused on its signature
    let (ok, _) = run(
        &dir.join("tdx/tamper-tdx-mrtd-flip"),
        &["--policy", &policy],
    );
    assert!(!ok);
}
