//! Workload mutual TLS (`crates/cli/examples/mtls.rs`) on a node attested with a join token that
//! also requires SEV-SNP (simulated device): the server workload's entry hangs under a node alias
//! bound to the measurement. Server and client authorize each other by SPIFFE ID; a client with
//! another ID is refused; SVIDs rotate (8 s TTL) under an open connection pool with zero failed
//! requests; a non-Rust client (`openssl s_client` with files from `api fetch x509 -write`) works,
//! and a non-Rust server (`openssl s_server`) is restarted on its rotated files by the agent's
//! file helper (`api fetch x509 -write DIR -watch -exec CMD`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_snp::simulate::{SimPlatform, SimulatedSnp};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::keys::{p384_pkcs8, rsa_pkcs8};
use support::{Block, Plugin, TestAgent, TestServer, join_token};

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
    let s = TestServer::start_conf(support::Backend::Sqlite, |c| {
        c.plugin(
            Plugin::new("NodeAttestor", "join_token").block(
                Block::new("sev_snp")
                    .set("measurements", vec![m.clone()])
                    .set("fetch_vcek", false)
                    .block(
                        Block::new("test_roots")
                            .set("product", "milan")
                            .set("ark", keys.join("ark.pem"))
                            .set("ask", keys.join("ask.pem")),
                    ),
            ),
        )
    });
    let token = join_token(&s, "spiffe://example.org/confidential-host");
    let a = TestAgent::start_custom(
        &s,
        Some(&token),
        [Plugin::new("NodeAttestor", "join_token").block(
            Block::new("sev_snp")
                .set("evidence_source", "simulated")
                .block(
                    Block::new("simulated")
                        .set("keys_dir", &keys)
                        .set("measurement", &m),
                ),
        )],
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

    attested_peers_only(&s, &a, &srv, &cli, dir.path(), &m);

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

    openssl_server_reloaded_on_rotation(&s, &a, dir.path());
}

/// The example server in its attested mode (REQUIRED_CLAIMS): the attested client (its SVID
/// carries the node's SEV-SNP claims) is served; a client with the right SPIFFE ID but no
/// claims (an SVID minted by the admin API) is refused at the handshake, and so is the attested
/// client when the policy names another measurement, each refusal naming the field.
fn attested_peers_only(s: &TestServer, a: &TestAgent, srv: &Path, cli: &Path, dir: &Path, m: &str) {
    let server_id = "spiffe://example.org/mtls-server";
    let start = |policy: &str, log: &Path| {
        let port = support::free_port();
        let child = Command::new(srv)
            .args([
                "server",
                &format!("127.0.0.1:{port}"),
                "spiffe://example.org/mtls-client",
                policy,
            ])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix:{}", a.socket.display()),
            )
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(
                Instant::now() < deadline,
                "the attested server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        (child, format!("127.0.0.1:{port}"))
    };
    let log = dir.join("attested-server.log");
    let (mut server, addr) = start(&format!("tee=sev_snp;measurement={m};debug=false"), &log);
    let (ok, out) = run_client(cli, &a.socket, &addr, &[server_id, "5", "1", "0"]);
    assert!(
        ok,
        "{out}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        out.contains("pong 4 spiffe://example.org/mtls-client"),
        "{out}"
    );

    // the right SPIFFE ID, minted by the admin API: no attestation claims, refused
    let minted = dir.join("minted");
    s.cli(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/mtls-client",
        "-write",
        minted.to_str().unwrap(),
    ])
    .expect_ok();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr, "-verify_return_error"])
        .arg("-cert")
        .arg(minted.join("svid.pem"))
        .arg("-key")
        .arg(minted.join("key.pem"))
        .arg("-CAfile")
        .arg(minted.join("bundle.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!said.contains("pong"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("no attestation claims") {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();

    // a policy naming another measurement refuses the attested client, saying which differs
    let other = "ab".repeat(48);
    let log2 = dir.join("attested-server-2.log");
    let (mut server, addr) = start(&format!("tee=sev_snp;measurement={other}"), &log2);
    let (ok, out) = run_client(cli, &a.socket, &addr, &[server_id, "3", "1", "0"]);
    assert!(!ok, "{out}");
    let text = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(
        text.contains(&format!("measurement is {m}")) && text.contains(&other),
        "{text}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The non-Rust server: `openssl s_server` run by the file helper (`api fetch x509 -write DIR
/// -watch -exec CMD`), which keeps its files current and restarts it on every rotation. An
/// `openssl s_client` with its own SVID files checks each handshake against the bundle, for
/// longer than the first server SVID lives.
fn openssl_server_reloaded_on_rotation(s: &TestServer, a: &TestAgent, dir: &Path) {
    // the helper fetches through its own copy of the agent binary: its own workload entry
    let fetcher = dir.join("openssl-peer-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_ironpact-agent"), &fetcher).unwrap();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/openssl-server",
        "-parentID",
        "spiffe://example.org/attested",
        "-selector",
        &format!("unix:path:{}", fetcher.display()),
        "-x509SVIDTTL",
        "8",
    ])
    .expect_ok();
    let files = dir.join("openssl-server");
    let port = support::free_port();
    let peer_log = dir.join("openssl-peer.log");
    let f = |n: &str| files.join(n).display().to_string();
    let s_server = format!(
        "openssl s_server -quiet -www -Verify 1 -verify_return_error -accept {port} -cert {} -key {} -CAfile {}",
        f("svid.0.pem"),
        f("svid.0.key"),
        f("bundle.0.pem")
    );
    let mut peer = Command::new(&fetcher)
        .args(["api", "fetch", "x509", "-write"])
        .arg(&files)
        .args(["-watch", "-exec", &s_server, "-socketPath"])
        .arg(&a.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&peer_log).unwrap())
        .spawn()
        .unwrap();

    let client_files = dir.join("openssl-client-2");
    let addr = format!("127.0.0.1:{port}");
    // One verified handshake and request: the served leaf certificate (PEM), or what went wrong.
    let request = || -> Result<String, String> {
        if !a
            .cli(&[
                "api",
                "fetch",
                "x509",
                "-write",
                client_files.to_str().unwrap(),
            ])
            .ok()
        {
            return Err("no client SVID".into());
        }
        let mut child = Command::new("openssl")
            .args(["s_client", "-no_ign_eof", "-verify_return_error"])
            .args(["-connect", &addr])
            .arg("-cert")
            .arg(client_files.join("svid.0.pem"))
            .arg("-key")
            .arg(client_files.join("svid.0.key"))
            .arg("-CAfile")
            .arg(client_files.join("bundle.0.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // stdin stays open: s_server (-www) answers and closes, which ends s_client
        let mut stdin = child.stdin.take().unwrap();
        {
            use std::io::Write;
            let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
        }
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() || !text.contains("HTTP/1.0 200 ok") {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        }
        let begin = text
            .find("-----BEGIN CERTIFICATE-----")
            .ok_or("no certificate")?;
        let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
        Ok(text[begin..end].to_string() + "\n")
    };
    let cert_info = |pem: &str, args: &[&str]| -> (bool, String) {
        let path = dir.join("served.pem");
        std::fs::write(&path, pem).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };

    // first contact: the entry reaches the agent, the helper fetches and starts s_server
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        match request() {
            Ok(pem) => break pem,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{e}\n{}",
                std::fs::read_to_string(&peer_log).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (_, san) = cert_info(&first, &["-ext", "subjectAltName"]);
    assert!(
        san.contains("URI:spiffe://example.org/openssl-server"),
        "{san}"
    );

    // ~20 s of requests, past the first SVID's 8 s: each one succeeds, allowing a retry for the
    // moment s_server restarts
    let mut serials = std::collections::BTreeSet::new();
    let mut last = first.clone();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let mut attempt = 0;
        last = loop {
            attempt += 1;
            match request() {
                Ok(pem) => break pem,
                Err(e) if attempt < 6 => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!(
                    "request failed: {e}\n{}",
                    std::fs::read_to_string(&peer_log).unwrap_or_default()
                ),
            }
        };
        serials.insert(cert_info(&last, &["-serial"]).1);
        std::thread::sleep(Duration::from_millis(700));
    }
    let _ = Command::new("kill").arg(peer.id().to_string()).status();
    let _ = peer.wait();
    let peer_text = std::fs::read_to_string(&peer_log).unwrap();
    println!("{peer_text}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "s_server outlived the helper"
    );
    assert!(serials.len() >= 2, "s_server was not reloaded: {peer_text}");
    assert!(
        peer_text.contains("restarting \"openssl s_server"),
        "{peer_text}"
    );
    assert!(
        peer_text.contains("stopping the program too"),
        "SIGTERM stops the helper and its program: {peer_text}"
    );
    // the first certificate has expired, the last one served is current
    assert!(
        !cert_info(&first, &["-checkend", "0"]).0,
        "first SVID still valid"
    );
    assert!(cert_info(&last, &["-checkend", "0"]).0, "last SVID expired");
}
