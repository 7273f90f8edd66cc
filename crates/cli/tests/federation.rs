//! SPIFFE Federation between two ironpact servers in two trust domains, over loopback: each
//! serves its bundle endpoint (https_spiffe), A federates with B from its config file, B with A
//! through `federation create`; workloads registered with -federatesWith get the peer's bundle
//! and complete mutual TLS across the trust domains (the mtls example); a CA rotation of B
//! reaches A's workloads without a restart; an endpoint that cannot prove it belongs to the
//! peer's trust domain is refused and the last good bundle kept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Backend, Block, Plugin, TestAgent, TestServer};

/// The bundle endpoint's port, from the server's log (it was started with port 0).
fn endpoint_port(s: &TestServer) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = s.log();
        if let Some(p) = support::logged_port(&log, "bundle endpoint listening") {
            return p;
        }
        assert!(Instant::now() < deadline, "no bundle endpoint:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server of `td` with a bundle endpoint on a kernel-picked port, and `extra` blocks in its
/// `federation` block.
fn server(td: &str, extra: Vec<Block>) -> TestServer {
    TestServer::start_conf(Backend::Sqlite, |mut c| {
        let mut fed = Block::new("federation").block(
            Block::new("bundle_endpoint")
                .set("address", "127.0.0.1")
                .set("port", 0i64)
                .set("refresh_hint", "5s")
                .block(Block::labeled("profile", "https_spiffe")),
        );
        for b in extra {
            fed = fed.block(b);
        }
        c.server = c.server.block(fed);
        c.server("trust_domain", td)
    })
}

fn token(s: &TestServer, alias: &str) -> String {
    s.cli(&["token", "generate", "-spiffeID", alias, "-output", "json"])
        .expect_ok()
        .json()["value"]
        .as_str()
        .unwrap()
        .to_string()
}

fn agent(s: &TestServer, td: &str) -> TestAgent {
    let t = token(s, &format!("spiffe://{td}/host"));
    let td = td.to_string();
    TestAgent::start_conf(
        s,
        s.port,
        Some(&t),
        [Plugin::new("NodeAttestor", "join_token")],
        true,
        move |c| c.agent("trust_domain", td.as_str()),
    )
}

fn bundle_file(s: &TestServer, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, &s.cli(&["bundle", "show"]).expect_ok().stdout).unwrap();
    p
}

/// How many X.509 authorities `s` holds for the federated `td`.
fn authorities(s: &TestServer, td: &str) -> usize {
    s.cli(&["bundle", "list", "-id", td, "-output", "json"])
        .expect_ok()
        .json()["x509_authorities"]
        .as_array()
        .unwrap()
        .len()
}

fn example(dir: &Path, name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_ironpact-server"))
        .parent()
        .unwrap()
        .join("examples/mtls");
    let to = dir.join(name);
    std::fs::copy(&built, &to).unwrap();
    to
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_trust_domains_federate_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let b = server("b.test", vec![]);
    let b_port = endpoint_port(&b);
    let a = server(
        "a.test",
        vec![
            Block::labeled("federates_with", "b.test")
                .set("bundle_endpoint_url", format!("https://127.0.0.1:{b_port}"))
                .block(
                    Block::labeled("bundle_endpoint_profile", "https_spiffe")
                        .set("endpoint_spiffe_id", "spiffe://b.test/spire/server"),
                ),
        ],
    );
    let a_port = endpoint_port(&a);

    // A (config file): starts from B's bundle, handed over out of band, then fetches
    let b_pem = bundle_file(&b, dir.path(), "b.pem");
    a.cli(&[
        "bundle",
        "set",
        "-id",
        "spiffe://b.test",
        "-path",
        b_pem.to_str().unwrap(),
    ])
    .expect_ok();
    let r = a
        .cli(&["federation", "refresh", "-id", "b.test"])
        .expect_ok()
        .stdout
        .clone();
    assert!(r.contains("Bundle refreshed"), "{r}");
    let shown = a
        .cli(&["federation", "show", "-trustDomain", "b.test"])
        .expect_ok()
        .stdout
        .clone();
    assert!(
        shown.contains("Bundle endpoint profile   : https_spiffe")
            && shown.contains("the server's config file"),
        "{shown}"
    );
    a.cli(&["federation", "delete", "-id", "b.test"])
        .expect_error("config file");

    // B (the CLI): the relationship and A's bundle in one command
    let a_pem = bundle_file(&a, dir.path(), "a.pem");
    b.cli(&[
        "federation",
        "create",
        "-trustDomain",
        "a.test",
        "-bundleEndpointURL",
        &format!("https://127.0.0.1:{a_port}"),
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://a.test/spire/server",
        "-trustDomainBundlePath",
        a_pem.to_str().unwrap(),
    ])
    .expect_ok();
    b.cli(&["federation", "refresh", "-id", "a.test", "-output", "json"])
        .expect_ok();
    let listed = b
        .cli(&["federation", "list", "-output", "json"])
        .expect_ok()
        .json();
    let rel = &listed["federation_relationships"][0];
    assert_eq!(rel["trust_domain"], "a.test");
    assert_eq!(
        rel["https_spiffe"]["endpoint_spiffe_id"],
        "spiffe://a.test/spire/server"
    );
    assert!(rel["trust_domain_bundle"]["x509_authorities"][0]["asn1"].is_string());

    // workloads in each trust domain, federating with the other, talk mutual TLS
    let (srv, cli) = (
        example(dir.path(), "mtls-server"),
        example(dir.path(), "mtls-client"),
    );
    let agent_a = agent(&a, "a.test");
    let agent_b = agent(&b, "b.test");
    a.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://a.test/mtls-server",
        "-parentID",
        "spiffe://a.test/host",
        "-selector",
        &format!("unix:path:{}", srv.display()),
        "-federatesWith",
        "spiffe://b.test",
    ])
    .expect_ok();
    a.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://a.test/tester",
        "-parentID",
        "spiffe://a.test/host",
        "-selector",
        &format!("unix:uid:{}", support::my_uid()),
        "-federatesWith",
        "spiffe://b.test",
    ])
    .expect_ok();
    b.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://b.test/mtls-client",
        "-parentID",
        "spiffe://b.test/host",
        "-selector",
        &format!("unix:path:{}", cli.display()),
        "-federatesWith",
        "spiffe://a.test",
    ])
    .expect_ok();
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server_proc = Command::new(&srv)
        .args(["server", &addr, "spiffe://b.test/mtls-client"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix:{}", agent_a.socket.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut last;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ok = loop {
        let out = Command::new("timeout")
            .arg("30")
            .arg(&cli)
            .args(["client", &addr, "spiffe://a.test/mtls-server", "20"])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix:{}", agent_b.socket.display()),
            )
            .output()
            .unwrap();
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = server_proc.kill();
    let _ = server_proc.wait();
    assert!(ok, "mTLS across trust domains failed: {last}");
    assert!(last.contains("\"failures\":0"), "{last}");

    // B rotates: its prepared CA enters its bundle, A fetches it at the refresh hint, and A's
    // workloads see it, with no restart anywhere
    let fed_bundle = || {
        let v = agent_a
            .cli(&["api", "fetch", "x509", "-output", "json"])
            .json();
        let fed = &v["federated_bundles"];
        fed["spiffe://b.test"]
            .as_str()
            .or_else(|| fed["b.test"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    wait_until("A's workload holds B's bundle", || !fed_bundle().is_empty());
    let before_workload = fed_bundle();
    let before = authorities(&a, "b.test");
    b.cli(&["localauthority", "x509", "prepare"]).expect_ok();
    wait_until("B's new authority reaches A", || {
        authorities(&a, "b.test") == before + 1
    });
    wait_until("B's new authority reaches A's workload", || {
        let now = fed_bundle();
        !now.is_empty() && now != before_workload
    });
    assert!(a.log().contains("federated bundle updated"), "{}", a.log());

    // an impostor endpoint for a.test (its own CA, not in B's copy of a.test's bundle) is
    // refused at the TLS handshake, and B keeps the bundle it had
    let m = server("a.test", vec![]);
    let m_port = endpoint_port(&m);
    let held = b
        .cli(&["bundle", "list", "-id", "a.test", "-output", "json"])
        .expect_ok()
        .json();
    b.cli(&[
        "federation",
        "update",
        "-trustDomain",
        "a.test",
        "-bundleEndpointURL",
        &format!("https://127.0.0.1:{m_port}"),
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://a.test/spire/server",
    ])
    .expect_ok();
    let refused = b.cli(&["federation", "refresh", "-id", "a.test"]);
    assert!(
        refused.code != 0 && refused.stderr.contains("last good bundle stays"),
        "{refused:?}"
    );
    assert_eq!(
        b.cli(&["bundle", "list", "-id", "a.test", "-output", "json"])
            .expect_ok()
            .json(),
        held,
        "the refused fetch changed nothing"
    );
    // the background refresh says so in the log, and still changes nothing
    wait_until("B logs the refused fetch", || {
        b.log().contains("fetching a federated bundle failed")
    });
    // back to the real endpoint: fetched again
    b.cli(&[
        "federation",
        "update",
        "-trustDomain",
        "a.test",
        "-bundleEndpointURL",
        &format!("https://127.0.0.1:{a_port}"),
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        "spiffe://a.test/spire/server",
    ])
    .expect_ok();
    b.cli(&["federation", "refresh", "-id", "a.test"])
        .expect_ok();
    b.cli(&["federation", "delete", "-id", "a.test"])
        .expect_ok();
    assert!(
        b.cli(&["federation", "list"])
            .expect_ok()
            .stdout
            .contains("Found 0 federation relationships")
    );
}

/// https_web: the endpoint serves a WebPKI certificate from files (`serving_cert_file`), and a
/// peer that trusts its CA (`https_web_ca_bundle_path`) fetches the bundle with no bundle of
/// its own to start from; an https_spiffe endpoint taken for https_web is refused.
#[test]
fn https_web_endpoint_with_private_roots() {
    let dir = tempfile::tempdir().unwrap();
    // a private web CA and a certificate for 127.0.0.1
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test web CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_file, key_file, roots) = (
        dir.path().join("web.pem"),
        dir.path().join("web.key"),
        dir.path().join("roots.pem"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&roots, ca_cert.pem()).unwrap();

    let w = TestServer::start_conf(Backend::Sqlite, |mut c| {
        c.server = c.server.block(
            Block::new("federation").block(
                Block::new("bundle_endpoint")
                    .set("address", "127.0.0.1")
                    .set("port", 0i64)
                    .block(
                        Block::labeled("profile", "https_web").block(
                            Block::new("serving_cert_file")
                                .set("cert_file_path", &cert_file)
                                .set("key_file_path", &key_file),
                        ),
                    ),
            ),
        );
        c.server("trust_domain", "w.test")
    });
    let w_port = endpoint_port(&w);
    let spiffe_peer = server("s.test", vec![]);
    let s_port = endpoint_port(&spiffe_peer);
    let x = TestServer::start_conf(Backend::Sqlite, |mut c| {
        c.server = c
            .server
            .block(Block::new("federation").set("https_web_ca_bundle_path", &roots));
        c.server("trust_domain", "x.test")
    });
    for (td, port) in [("w.test", w_port), ("s.test", s_port)] {
        x.cli(&[
            "federation",
            "create",
            "-trustDomain",
            td,
            "-bundleEndpointURL",
            &format!("https://127.0.0.1:{port}/"),
            "-bundleEndpointProfile",
            "https_web",
        ])
        .expect_ok();
    }
    x.cli(&["federation", "refresh", "-id", "w.test"])
        .expect_ok();
    assert_eq!(
        x.cli(&["bundle", "list", "-id", "w.test", "-output", "json"])
            .expect_ok()
            .json()["x509_authorities"],
        w.cli(&["bundle", "show", "-output", "json"])
            .expect_ok()
            .json()["x509_authorities"],
        "x holds w's bundle as w serves it"
    );
    let refused = x.cli(&["federation", "refresh", "-id", "s.test"]);
    assert!(refused.code != 0, "{refused:?}");
    x.cli(&["bundle", "list", "-id", "s.test"])
        .expect_error("no federated bundle for s.test");
}
