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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The scripts the docs tell people to run are executable as committed.
#[test]
fn documented_scripts_are_executable() {
    use std::os::unix::fs::PermissionsExt;
    for s in [
        "scripts/demo.sh",
        "scripts/test.sh",
        "scripts/bench.sh",
        "examples/confidential-node/run.sh",
    ] {
        let mode = std::fs::metadata(root().join(s))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{s} is not executable ({mode:o})");
    }
}

/// A bin dir without the example's fixtures stops at once, naming the build command (it used
/// to wait 30 s for an IMDS emulator that could not start).
#[test]
fn confidential_node_with_an_incomplete_bin_dir_says_how_to_build() {
    let empty = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(root().join("examples/confidential-node/run.sh"))
        .env("IRONPACT_BIN_DIR", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cargo build --release -p ironpact-cli --bins --example cloud_fixtures"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// `demo.sh stop` kills only the PIDs that are still ironpact binaries: a PID reused by another
/// process since is left alone, with a word.
#[test]
fn demo_stop_kills_only_its_own_processes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::create_dir_all(dir.path().join(".data")).unwrap();
    std::fs::copy(
        root().join("scripts/demo.sh"),
        dir.path().join("scripts/demo.sh"),
    )
    .unwrap();
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(
        dir.path().join(".data/demo.pids"),
        format!("{}\n", other.id()),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(dir.path().join("scripts/demo.sh"))
        .arg("stop")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not stopping pid"), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        other.try_wait().unwrap().is_none(),
        "demo.sh stop killed a process it did not start"
    );
    let _ = other.kill();
    let _ = other.wait();
}
