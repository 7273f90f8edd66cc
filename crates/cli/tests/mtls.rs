//! Workload mutual TLS (`crates/cli/examples/mtls.rs`) on a node attested with a join token that
//! also requires SEV-SNP (simulated device): the server workload's entry hangs under a node alias
//! bound to the measurement. Server and client authorize each other by SPIFFE ID; a client with
//! another ID is refused; SVIDs rotate (8 s TTL) under an open connection pool with zero failed
//! requests; a non-Rust client (`openssl s_client` with files from `api fetch x509 -write`) works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_snp::simulate::{SimPlatform, SimulatedSnp};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::keys::{p384_pkcs8, rsa_pkcs8};
use support::{TestAgent, TestServer, join_token};

const MEASUREMENT: [u8; 48] = [0x6d; 48];

fn example(name: &str, dir: &Path) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_ironpact-server"))
        .parent()
        .unwrap()
        .join("examples/mtls");
    let to = dir.join(name);
    std::fs::copy(&built, &to).unwrap();
    to
}

/// A VCEK test chain: keys for the agent's simulated device, ARK/ASK PEMs for the server.
fn snp_chain(dir: &Path) {
    let (ark, ask, vcek) = (rsa_pkcs8(), rsa_pkcs8(), p384_pkcs8());
    let platform = SimPlatform {
        product: ironpact_snp::Product::Milan,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    };
    let dev = SimulatedSnp::new(platform, &ark, &ask, &vcek, 0, 4_000_000_000).unwrap();
    for (f, b) in [("ark.pk8", &ark), ("ask.pk8", &ask), ("vcek.pk8", &vcek)] {
        std::fs::write(dir.join(f), b).unwrap();
    }
    let pem = |d: &[u8]| ironpact_spiffe::x509::certs_to_pem([d]);
    std::fs::write(dir.join("ark.pem"), pem(&dev.ark_der)).unwrap();
    std::fs::write(dir.join("ask.pem"), pem(&dev.ask_der)).unwrap();
}

fn run_client(bin: &Path, socket: &Path, addr: &str, args: &[&str]) -> (bool, String) {
    // bounded: a client that cannot get an SVID waits for one
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin)
        .arg("client")
        .arg(addr)
        .args(args)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix:{}", socket.display()),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn workloads_talk_mutual_tls_by_spiffe_id_through_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("snp");
    std::fs::create_dir(&keys).unwrap();
    snp_chain(&keys);
    let m = hex::encode(MEASUREMENT);
    let s = TestServer::start_with(
        support::Backend::Sqlite,
        "",
        &format!(
            r#"NodeAttestor "join_token" {{
        plugin_data {{
            sev_snp {{
                measurements = ["{m}"]
                fetch_vcek = false
                test_roots {{
                    product = "milan"
                    ark = "{ark}"
                    ask = "{ask}"
                }}
            }}
        }}
    }}"#,
            ark = keys.join("ark.pem").display(),
            ask = keys.join("ask.pem").display()
        ),
    );
    let token = join_token(&s, "spiffe://example.org/confidential-host");
    let a = TestAgent::start_custom(
        &s,
        Some(&token),
        &format!(
            r#"NodeAttestor "join_token" {{
        plugin_data {{
            sev_snp {{
                evidence_source = "simulated"
                simulated {{
                    keys_dir = "{}"
                    measurement = "{m}"
                }}
            }}
        }}
    }}"#,
            keys.display()
        ),
        true,
    );
    let shown = s.cli(&["agent", "list"]).expect_ok().stdout.clone();
    assert!(shown.contains("join_token/"), "{shown}");

    let (srv, cli, intruder) = (
        example("mtls-server", dir.path()),
        example("mtls-client", dir.path()),
        example("mtls-intruder", dir.path()),
    );
    let agent_bin = env!("CARGO_BIN_EXE_ironpact-agent");
    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/attested",
        "-selector",
        &format!("sev_snp:measurement:{m}"),
    ])
    .expect_ok();
    for (id, path) in [
        ("mtls-server", srv.display().to_string()),
        ("mtls-client", cli.display().to_string()),
        ("intruder", intruder.display().to_string()),
        ("openssl-client", agent_bin.to_string()),
    ] {
        s.cli(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://example.org/{id}"),
            "-parentID",
            "spiffe://example.org/attested",
            "-selector",
            &format!("unix:path:{path}"),
            "-x509SVIDTTL",
            "8",
        ])
        .expect_ok();
    }

    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("mtls-server.log");
    let mut server = Command::new(&srv)
        .args([
            "server",
            &addr,
            "spiffe://example.org/mtls-client,spiffe://example.org/openssl-client",
        ])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix:{}", a.socket.display()),
        )
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server_id = "spiffe://example.org/mtls-server";

    // first contact, once the entries reached the agent and the server listens
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = run_client(&cli, &a.socket, &addr, &[server_id, "3", "1", "0"]);
        if ok {
            assert!(
                out.contains("pong 2 spiffe://example.org/mtls-client"),
                "{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{out}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // a client with another SPIFFE ID is refused by the server
    let (ok, out) = run_client(&intruder, &a.socket, &addr, &[server_id, "3", "1", "0"]);
    assert!(!ok, "{out}");
    // and a client expecting another server ID refuses the server
    let (ok, out) = run_client(
        &cli,
        &a.socket,
        &addr,
        &["spiffe://example.org/other", "3", "1", "0"],
    );
    assert!(!ok, "{out}");

    // a non-Rust client with the files `api fetch x509 -write` gives it
    let files = dir.path().join("openssl-client");
    assert!(
        a.cli(&["api", "fetch", "x509", "-write", files.to_str().unwrap()])
            .ok()
    );
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-verify_return_error",
            "-connect",
            &addr,
        ])
        .arg("-cert")
        .arg(files.join("svid.0.pem"))
        .arg("-key")
        .arg(files.join("svid.0.key"))
        .arg("-CAfile")
        .arg(files.join("bundle.0.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"ping 7\n").unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pong 7 spiffe://example.org/openssl-client"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // rotation under load: ~20 s of requests over a pool of 4, one connection replaced every
    // 50 requests; the server's SVID (8 s TTL) rotates underneath, and nothing fails
    let (ok, out) = run_client(&cli, &a.socket, &addr, &[server_id, "1500", "4", "50"]);
    assert!(ok, "{out}");
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["failures"], 0, "{out}");
    assert!(
        summary["server_svid_serials"].as_u64().unwrap() >= 2,
        "no rotation was seen: {out}"
    );
    println!("{out}");

    let slog = std::fs::read_to_string(&log).unwrap();
    assert!(slog.contains("refused"), "{slog}");
    let _ = server.kill();
    let _ = server.wait();
}
