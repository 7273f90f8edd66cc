//! SPIRE's CLI, replayed: tests/spire/replay.sh is a script written for `spire-server` and
//! `spire-agent` (every documented command and flag ironpact implements, `-output json` read
//! by jq, text read by grep); it runs unchanged against our binaries under SPIRE's names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{AGENT_BIN, BIN, Backend, TestAgent, TestServer, join_token};

#[test]
fn a_script_written_for_spire_runs_unchanged() {
    if support::which("jq").is_none() || support::which("openssl").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs jq and openssl (scripts/test.sh installs them)"
        );
        println!("SKIPPED: jq or openssl not installed");
        return;
    }
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-replay");
    let a = TestAgent::start(&s, &token);
    let work = tempfile::tempdir().unwrap();
    // the binaries renamed, as an operator switching would install them
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("spire-server")).unwrap();
    std::os::unix::fs::symlink(AGENT_BIN, bin.join("spire-agent")).unwrap();
    let script = support::repo_root().join("crates/cli/tests/spire/replay.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(work.path())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("SERVER_SOCK", &s.socket)
        .env("SERVER_CONF", &s.config)
        .env("AGENT_SOCK", &a.socket)
        .env("AGENT_CONF", &a.config)
        .env("AGENT_ADMIN", a.dir.path().join("private/admin.sock"))
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success() && out.contains("replayed"),
        "the SPIRE script failed at the last step shown:\n{err}\n{out}"
    );
}
