//! The example scripts run as documented, on the binaries this test run built (`cargo test`
//! builds the examples too).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ironpact-server"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn confidential_node_example_runs_the_whole_flow() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bins = bin_dir();
    assert!(
        bins.join("examples/cloud_fixtures").exists(),
        "cargo test builds examples/cloud_fixtures"
    );
    let out = Command::new("bash")
        .arg(root.join("examples/confidential-node/run.sh"))
        .env("IRONPACT_BIN_DIR", &bins)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "aws_iid:measurements:",
        "sev_snp:signing_key:vlek",
        "aws_iid:instance:id:i-0abc1234def567890",
        "OK: the confidential node attested",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
}
