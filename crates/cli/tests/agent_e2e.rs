//! Server and agent as real processes: a workload gets its SVID through the agent, another
//! user gets none, and the agent survives its own restart and a server outage. The Rust
//! `spiffe` crate, unmodified, is the client in the conformance test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};
use support::{
    AGENT_BIN, Backend, Out, TestAgent, TestServer, join_token, my_uid, openssl_verify, runtime,
};

#[test]
fn workloads_get_identities_through_restarts_and_outages() {
    let mut s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host1");
    let mut a = TestAgent::start(&s, &token);
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    assert!(
        s.cli(&["agent", "list"])
            .expect_ok()
            .stdout
            .contains(&agent_id)
    );

    let uid = my_uid().to_string();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/me",
        "-parentID",
        "spiffe://example.org/host1",
        "-selector",
        &format!("unix:uid:{uid}"),
        "-hint",
        "mine",
    ])
    .expect_ok();
    let out = a.dir.path().join("svids");
    let o = a.fetch_until_ok(&["-write", out.to_str().unwrap()]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/me"),
        "{o:?}\n{}",
        a.log()
    );
    let v = openssl_verify(&out.join("bundle.0.pem"), &out.join("svid.0.pem"));
    assert!(v.ok(), "openssl rejected the agent's SVID: {v:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(out.join("svid.0.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // the admin socket is the agent user's only
    let admin = a.dir.path().join("private/admin.sock");
    assert_eq!(
        std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(admin.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let o = Out::from(
        std::process::Command::new(AGENT_BIN)
            .args(["healthcheck", "-socketPath"])
            .arg(&admin)
            .output()
            .unwrap(),
    );
    assert!(o.ok() && o.stdout.contains("Agent is healthy"), "{o:?}");

    // another user is not registered: PermissionDenied
    let nobody = support::fetch_as_nobody(&a);
    nobody.expect_error("no identity issued");

    // JWT-SVIDs and their validation through the agent
    let jwt = a
        .cli(&["api", "fetch", "jwt", "-audience", "db"])
        .expect_ok()
        .stdout
        .clone();
    let token_line = jwt.lines().nth(1).unwrap().trim().to_string();
    let ok = a
        .cli(&[
            "api",
            "validate",
            "jwt",
            "-audience",
            "db",
            "-svid",
            &token_line,
        ])
        .expect_ok()
        .stdout
        .clone();
    assert!(
        ok.contains("SVID is valid.") && ok.contains("spiffe://example.org/me"),
        "{ok}"
    );
    a.cli(&[
        "api",
        "validate",
        "jwt",
        "-audience",
        "other",
        "-svid",
        &token_line,
    ])
    .expect_error("audience");
    a.cli(&["api", "fetch", "jwt"]).expect_error("audience");

    // restarted with a join token for another identity, the agent stops and says which two
    // identities, and what to remove for either; it does not silently keep the old one
    let other = join_token(&s, "spiffe://example.org/host9");
    a.kill9();
    a.spawn_nowait(Some(&other));
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.running() {
        assert!(
            Instant::now() < deadline,
            "the agent ignored the new join token:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = a.log();
    assert!(
        log.contains(&format!("join_token/{other}"))
            && log.contains(&format!("join_token/{token}"))
            && log.contains("start without the join token")
            && log.contains("agent_svid.pem"),
        "{log}"
    );
    // the agent restarts without a token and keeps its identity
    a.spawn(None);
    let listed = s.cli(&["agent", "count"]).expect_ok().stdout.clone();
    assert!(listed.contains("1 attested agent"), "{listed}");
    assert!(
        a.log().contains("reusing the stored agent SVID"),
        "{}",
        a.log()
    );
    assert!(a.fetch_until_ok(&[]).ok());

    // the server goes away: cached SVIDs are still served; it comes back: changes flow again
    s.kill9();
    let o = a.cli(&["api", "fetch", "x509"]);
    assert!(
        o.ok(),
        "agent stopped serving while the server was down: {o:?}"
    );
    s.spawn();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/me-too",
        "-parentID",
        "spiffe://example.org/host1",
        "-selector",
        &format!("unix:uid:{uid}"),
    ])
    .expect_ok();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let o = a.cli(&["api", "fetch", "x509"]);
        if o.stdout.contains("spiffe://example.org/me-too") {
            assert!(o.stdout.contains("Received 2 svid"), "{o:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not recover after the server restart:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn shipped_configs_serve_a_workload() {
    let s = TestServer::shipped();
    let token = join_token(&s, "spiffe://example.org/shipped-node");
    let a = TestAgent::shipped(&s, &token);
    let agents = s.cli(&["agent", "list"]).expect_ok().stdout.clone();
    assert!(agents.contains(&format!("join_token/{token}")), "{agents}");
    let uid = my_uid().to_string();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/shipped",
        "-parentID",
        "spiffe://example.org/shipped-node",
        "-selector",
        &format!("unix:uid:{uid}"),
        "-federatesWith",
        "spiffe://partner.org",
    ])
    .expect_ok();
    // a federated trust domain the entry names reaches the workload too
    let partner = a.dir.path().join("partner.pem");
    std::fs::write(&partner, partner_ca_pem()).unwrap();
    s.cli(&[
        "bundle",
        "set",
        "-id",
        "spiffe://partner.org",
        "-path",
        partner.to_str().unwrap(),
    ])
    .expect_ok();
    let out = a.dir.path().join("svids");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.join("federated_bundle.0.0.pem").exists() {
        assert!(
            Instant::now() < deadline,
            "no federated bundle reached the workload:\n{}",
            a.log()
        );
        a.fetch_until_ok(&["-write", out.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_to_string(out.join("federated_bundle.0.0.pem")).unwrap(),
        partner_ca_pem()
    );
    let v = openssl_verify(&out.join("bundle.0.pem"), &out.join("svid.0.pem"));
    assert!(v.ok(), "{v:?}");
    // the server's own bundle, as an operator would pass it to openssl
    let server_bundle = a.dir.path().join("server-bundle.pem");
    std::fs::write(
        &server_bundle,
        s.cli(&["bundle", "show"]).expect_ok().stdout.as_bytes(),
    )
    .unwrap();
    assert!(openssl_verify(&server_bundle, &out.join("svid.0.pem")).ok());
    let nobody = support::fetch_as_nobody(&a);
    nobody.expect_error("no identity issued");
}

fn partner_ca_pem() -> String {
    support::partner_ca().0
}

#[test]
fn rust_spiffe_crate_is_a_working_client() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host2");
    let a = TestAgent::start(&s, &token);
    let uid = my_uid().to_string();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/rust",
        "-parentID",
        "spiffe://example.org/host2",
        "-selector",
        &format!("unix:uid:{uid}"),
        "-x509SVIDTTL",
        "20",
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok());
    let rt = runtime();
    rt.block_on(async {
        let endpoint = a.endpoint();
        let td = spiffe::TrustDomain::new("example.org").unwrap();

        let source = spiffe::X509Source::builder()
            .endpoint(&endpoint)
            .build()
            .await
            .unwrap();
        let svid = source.svid().unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/rust");
        assert!(source.bundle_set().unwrap().get(&td).is_some());

        // a short TTL: the open stream delivers a new SVID before the old one expires
        let old_leaf = svid.leaf().as_bytes().to_vec();
        let old_expiry = ironpact_spiffe::x509::CertInfo::parse(&old_leaf)
            .unwrap()
            .not_after;
        let mut updates = source.updated();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::time::timeout(Duration::from_secs(30), updates.changed())
                .await
                .unwrap()
                .unwrap();
            let now_svid = source.svid().unwrap();
            if now_svid.leaf().as_bytes() != old_leaf.as_slice() {
                let now_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                assert!(now_unix < old_expiry, "rotated only after expiry");
                break;
            }
            assert!(Instant::now() < deadline, "no rotation");
        }

        let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
            .await
            .unwrap();
        let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
        assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/rust");
        assert!(!jwt.key_id().is_empty(), "kid is set");
        let validated = client.validate_jwt_token("db", jwt.token()).await.unwrap();
        assert_eq!(
            validated.spiffe_id().to_string(),
            "spiffe://example.org/rust"
        );
        assert!(
            client
                .validate_jwt_token("other", jwt.token())
                .await
                .is_err()
        );

        let jwt_source = spiffe::JwtSource::builder()
            .endpoint(&endpoint)
            .build()
            .await
            .unwrap();
        let j = jwt_source.fetch_jwt_svid(["db", "cache"]).await.unwrap();
        let mut aud = j.audience().to_vec();
        aud.sort();
        assert_eq!(aud, ["cache", "db"]);
        assert!(jwt_source.bundle_set().unwrap().get(&td).is_some());
    });
}

const PY_CLIENT: &str = r#"
import sys, threading
from spiffe import WorkloadApiClient, TrustDomain

sock, expected = sys.argv[1], sys.argv[2]
client = WorkloadApiClient(socket_path="unix://" + sock, default_timeout=15)
svid = client.fetch_x509_svid()
assert str(svid.spiffe_id) == expected, svid.spiffe_id
bundles = client.fetch_x509_bundles()
assert bundles.get_bundle_for_trust_domain(TrustDomain("example.org")) is not None
jwt = client.fetch_jwt_svid(audience={"db"})
assert str(jwt.spiffe_id) == expected, jwt.spiffe_id
checked = client.validate_jwt_svid(jwt.token, "db")
assert str(checked.spiffe_id) == expected
done = threading.Event()
seen = []
def ok(ctx):
    seen.append(ctx)
    done.set()
def err(e):
    seen.append(e)
    done.set()
handle = client.stream_x509_contexts(on_success=ok, on_error=err)
assert done.wait(15), "no X.509 context from the watch stream"
assert not isinstance(seen[0], Exception), seen[0]
assert str(seen[0].default_svid.spiffe_id) == expected
handle.cancel()
client.close()
print("py-spiffe ok")
"#;

#[test]
fn py_spiffe_is_a_working_client() {
    let py = std::env::var("IRONPACT_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&py)
        .args(["-c", "import spiffe"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{py} lacks py-spiffe (CI=true requires it; scripts/test.sh installs it)");
        }
        println!("SKIPPED: py-spiffe not installed for {py}");
        return;
    }
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host3");
    let a = TestAgent::start(&s, &token);
    let uid = my_uid().to_string();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/python",
        "-parentID",
        "spiffe://example.org/host3",
        "-selector",
        &format!("unix:uid:{uid}"),
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok());
    let o = Out::from(
        std::process::Command::new(&py)
            .args(["-c", PY_CLIENT])
            .arg(&a.socket)
            .arg("spiffe://example.org/python")
            .output()
            .unwrap(),
    );
    assert!(
        o.ok() && o.stdout.contains("py-spiffe ok"),
        "py-spiffe failed: {o:?}\nagent log:\n{}",
        a.log()
    );
    // grpcio really sent an authority h2 rejects, and the shim replaced it
    assert!(a.log().contains("replacing an :authority"), "{}", a.log());
}

/// A Workload API request with the security header.
fn with<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

#[test]
fn workload_api_refuses_bad_requests_and_keeps_serving() {
    use ironpact_proto::workload as wpb;
    use ironpact_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host4");
    let a = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/w4",
        "-parentID",
        "spiffe://example.org/host4",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = ironpact_cli::common::connect_uds(&a.socket, "agent", "-socketPath")
            .await
            .unwrap();
        let mut c = SpiffeWorkloadApiClient::new(ch);
        // no `workload.spiffe.io: true` metadata
        let e = c.fetch_x509svid(wpb::X509svidRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("security header"), "{e:?}");
        let e = c
            .fetch_jwtsvid(wpb::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // an oversized request is an error, not a crash
        let huge = wpb::JwtsvidRequest {
            audience: vec!["x".repeat(6 << 20)],
            spiffe_id: String::new(),
        };
        assert!(c.fetch_jwtsvid(with(huge)).await.is_err());
        // garbage tokens are refused precisely
        let e = c
            .validate_jwtsvid(with(wpb::ValidateJwtsvidRequest {
                audience: "a".into(),
                svid: "not.a.jwt".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // a client that opens a stream and vanishes costs nothing
        for _ in 0..20 {
            let mut stream = c
                .fetch_x509svid(with(wpb::X509svidRequest {}))
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap();
            drop(stream);
        }
    });
    assert!(a.cli(&["healthcheck"]).ok());
    assert!(a.cli(&["api", "fetch", "x509"]).ok());
}

/// `insecure_bootstrap = true` and no trust bundle: the agent attests trusting the server's
/// SPIFFE ID alone, then pins the bundle its first sync brings (only if that bundle signs its
/// own new SVID) and verifies the server against it from then on; its workloads are served.
#[test]
fn insecure_bootstrap_attests_then_pins_the_bundle() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-tofu");
    let a = TestAgent::start_conf(
        &s,
        s.port,
        Some(&token),
        [support::Plugin::new("NodeAttestor", "join_token")],
        true,
        |mut c| {
            c.agent = c.agent.unset("trust_bundle_path");
            c.agent("insecure_bootstrap", true)
        },
    );
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/tofu-app",
        "-parentID",
        "spiffe://example.org/host-tofu",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/tofu-app"),
        "{o:?}\n{}",
        a.log()
    );
    let log = a.log();
    assert!(
        log.contains("insecure bootstrap: pinned the trust bundle"),
        "{log}"
    );
    let pinned = std::fs::read_to_string(a.dir.path().join("data/bundle.pem")).unwrap();
    assert_eq!(
        ironpact_spiffe::x509::certs_from_pem(&pinned).unwrap(),
        s.bundle_roots(),
        "the pinned bundle is not the server's"
    );
    assert!(a.cli(&["healthcheck"]).ok(), "{}", a.log());
}

/// A trust bundle that is not the server's: the agent says so in words, with the fix, not
/// rustls's debug structure (`Other(OtherError(PeerRejected(…)))`).
#[test]
fn a_wrong_trust_bundle_is_named_with_its_fix() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-wrong-bundle");
    let other = rcgen::generate_simple_self_signed(vec!["other.example".into()]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("other-bundle.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let a = TestAgent::start_conf(
        &s,
        s.port,
        Some(&token),
        [support::Plugin::new("NodeAttestor", "join_token")],
        false,
        |c| c.agent("trust_bundle_path", &wrong),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = a.log();
        if log.contains("does not lead to any trusted authority") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        log.contains("the peer's certificate was refused")
            && log.contains("ironpact-server bundle show"),
        "{log}"
    );
    // (tonic's own DEBUG lines print the error's debug form; what the agent reports does not)
    let reported = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "));
    assert!(reported.clone().count() > 0, "{log}");
    for l in reported {
        assert!(!l.contains("OtherError"), "{l}");
    }
}

/// `validate` reads what `run` would (the trust bundle here) and creates nothing; `api watch`
/// started before the workload has an identity waits for it instead of exiting.
#[test]
fn agent_validate_and_watch_that_waits() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-watch");
    let a = TestAgent::start(&s, &token);
    let validate = |conf: &std::path::Path| {
        Out::from(
            std::process::Command::new(AGENT_BIN)
                .args(["validate", "-config"])
                .arg(conf)
                .output()
                .unwrap(),
        )
    };
    let o = validate(&a.config);
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );
    let text = std::fs::read_to_string(&a.config).unwrap();
    let bad = a.dir.path().join("bad.conf");
    let missing = a.dir.path().join("no-such-bundle.pem");
    std::fs::write(
        &bad,
        text.replace(
            &a.dir.path().join("bootstrap.pem").display().to_string(),
            &missing.display().to_string(),
        ),
    )
    .unwrap();
    // (the agent's data dir holds the pinned bundle it prefers; a fresh one does not)
    let fresh = a.dir.path().join("fresh-data");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&bad).unwrap().replace(
            &a.dir.path().join("data").display().to_string(),
            &fresh.display().to_string(),
        ),
    )
    .unwrap();
    validate(&bad).expect_error("bundle show");
    assert!(!fresh.exists(), "validate created the data directory");

    // watch before the entry exists: it waits, then prints the SVID once it is issued
    let mut watch = std::process::Command::new(AGENT_BIN)
        .args(["api", "watch", "-socketPath"])
        .arg(&a.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        watch.try_wait().unwrap().is_none(),
        "api watch exited before an identity came"
    );
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/watched",
        "-parentID",
        "spiffe://example.org/host-watch",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let mut out = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("spiffe://example.org/watched") {
                let _ = tx.send(seen.clone());
                break;
            }
        }
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(got.is_ok(), "api watch printed no SVID for the new entry");
    // bare `api fetch` is `api fetch x509`, as in SPIRE
    let o = a.cli(&["api", "fetch"]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/watched"),
        "{o:?}"
    );
}

/// A banned agent stops, as SPIRE's does, with SPIRE's log line (operators' alerts grep for
/// it), and its key is gone.
#[test]
fn a_banned_agent_logs_spires_line_and_stops() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-banned");
    let mut a = TestAgent::start(&s, &token);
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    s.cli(&["agent", "ban", "-spiffeID", &agent_id]).expect_ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!a.running(), "a banned agent kept running:\n{}", a.log());
    let log = a.log();
    assert!(
        log.contains("Agent is banned: removing SVID and shutting down"),
        "{log}"
    );
    assert!(!a.dir.path().join("data/agent_key.pem").exists());
}

/// Join tokens are built in, as in SPIRE: a server with no `NodeAttestor "join_token"` block
/// (here it names no node attestor at all) still attests an agent with a token from
/// `token generate`.
#[test]
fn join_tokens_are_built_in() {
    let s = TestServer::start_conf(Backend::Sqlite, |mut c| {
        c.plugins.0.retain(|p| !p.is("NodeAttestor", "join_token"));
        // SPIRE's agent_ttl: the agents' own SVIDs
        c.server("agent_ttl", "50m")
    });
    assert!(
        !std::fs::read_to_string(&s.config)
            .unwrap()
            .contains("join_token"),
        "the server's config still names join_token"
    );
    let token = join_token(&s, "spiffe://example.org/host-builtin");
    let a = TestAgent::start(&s, &token);
    assert!(a.cli(&["healthcheck"]).ok(), "{}", a.log());
    // a join-token agent cannot attest again by itself: -canReattest filters on that
    let count = |v: &str| {
        s.cli(&["agent", "count", "-canReattest", v, "-output", "json"])
            .json()["count"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((count("false"), count("true")), (1, 0));
    let listed = s.cli(&["agent", "list", "-output", "json"]).json();
    // int64 as a string, as SPIRE's protojson writes it
    let left = listed["agents"][0]["x509svid_expires_at"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap()
        - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (2900..=3000).contains(&left),
        "agent SVID lives {left} s, not agent_ttl"
    );

    // `enabled = false` refuses join tokens, and validate says nothing about them
    let s2 = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(support::Plugin::new("NodeAttestor", "join_token").outer("enabled", false))
    });
    let token = join_token(&s2, "spiffe://example.org/host-refused");
    let mut a2 = TestAgent::start_custom(
        &s2,
        Some(&token),
        [support::Plugin::new("NodeAttestor", "join_token")],
        false,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a2.log().contains("not configured") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a2.log().contains("not configured"), "{}", a2.log());
    assert!(!a2.cli(&["healthcheck"]).ok());
    a2.kill9();
}

/// SPIRE's `join_token_file`, `log_file` and `log_format` (and their flags): the token read
/// from a file, the log appended to a file (0640) as JSON lines, nothing on stderr.
#[test]
fn token_file_and_log_file() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-files");
    let tmp = tempfile::tempdir().unwrap();
    let (token_file, log_file) = (tmp.path().join("token"), tmp.path().join("agent.json.log"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let a = TestAgent::start_conf(
        &s,
        s.port,
        None,
        [support::Plugin::new("NodeAttestor", "join_token")],
        true,
        |c| {
            c.agent("join_token_file", &token_file)
                .agent("log_file", &log_file)
                .agent("log_format", "json")
        },
    );
    assert!(a.cli(&["healthcheck"]).ok());
    let log = std::fs::read_to_string(&log_file).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(first["fields"]["message"].is_string(), "{first}");
    assert!(log.contains("attested"), "{log}");
    let mode = std::fs::metadata(&log_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(a.log().trim().is_empty(), "stderr: {}", a.log());
    // for a node that has not attested (a fresh data dir), an unreadable token file is named
    // with the fix; one that has attested does not need it
    let conf = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(
            &token_file.display().to_string(),
            &tmp.path().join("missing").display().to_string(),
        )
        .replace(
            &a.dir.path().join("data").display().to_string(),
            &tmp.path().join("fresh").display().to_string(),
        );
    let bad = tmp.path().join("bad.conf");
    std::fs::write(&bad, conf).unwrap();
    Out::from(
        std::process::Command::new(AGENT_BIN)
            .args(["validate", "-config"])
            .arg(&bad)
            .output()
            .unwrap(),
    )
    .expect_error("token generate");
    // once attested, the token file is not needed: gone, the agent restarts on its SVID
    let mut a = a;
    a.kill9();
    std::fs::remove_file(&token_file).unwrap();
    a.spawn(None);
    assert!(a.cli(&["healthcheck"]).ok());
    // a file that holds something else than a token is not sent
    a.kill9();
    std::fs::remove_dir_all(a.dir.path().join("data")).unwrap();
    std::fs::write(&token_file, "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
    a.spawn_nowait(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains("does not hold a join token") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("does not hold a join token"), "{log}");
    assert!(!log.contains("secret"), "{log}");
}

/// `agent purge` deletes the records of agents whose SVID expired more than `-expiredFor`
/// ago (`-dryRun` only lists them); `agent list -expiresBefore` filters on the same time.
#[test]
fn agent_purge_and_expires_before() {
    let s = TestServer::start_conf(Backend::Sqlite, |c| c.server("agent_ttl", "2s"));
    let token = join_token(&s, "spiffe://example.org/host-gone");
    let mut a = TestAgent::start(&s, &token);
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    a.kill9();
    // past the record's expiry (read again each time: the last renewal may land just after
    // the kill) by three seconds, so that -expiredFor 1s finds it however the test is scheduled
    let expires = || {
        s.cli(&["agent", "list", "-output", "json"]).json()["agents"][0]["x509svid_expires_at"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while time::OffsetDateTime::now_utc().unix_timestamp() < expires() + 3
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let listed = s
        .cli(&["agent", "list", "-expiresBefore", &soon, "-output", "json"])
        .expect_ok()
        .json();
    let id = &listed["agents"][0]["id"];
    assert_eq!(
        format!(
            "spiffe://{}{}",
            id["trust_domain"].as_str().unwrap(),
            id["path"].as_str().unwrap()
        ),
        agent_id
    );
    s.cli(&[
        "agent",
        "list",
        "-expiresBefore",
        "2001-01-01 00:00:00 +0000 UTC",
    ])
    .expect_ok()
    .stdout
    .contains("No attested agents found")
    .then_some(())
    .expect("nothing expired before 2001");
    let dry = s
        .cli(&["agent", "purge", "-expiredFor", "1s", "-dryRun"])
        .expect_ok()
        .stdout
        .clone();
    assert!(dry.contains(&agent_id), "{dry}");
    // SPIRE prints purge's result from a Go struct: an array, agent_id a string
    let dry = s
        .cli(&[
            "agent",
            "purge",
            "-expiredFor",
            "1s",
            "-dryRun",
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    assert_eq!(
        dry,
        serde_json::json!([{"expired_agents": [{"agent_id": agent_id, "deleted": false}]}])
    );
    assert_eq!(
        s.cli(&["agent", "count", "-output", "json"]).json()["count"],
        1
    );
    // an agent whose SVID lapsed a moment ago is kept with the default 720h
    assert!(
        s.cli(&["agent", "purge"])
            .expect_ok()
            .stdout
            .contains("No agents to purge.")
    );
    let done = s
        .cli(&["agent", "purge", "-expiredFor", "1s"])
        .expect_ok()
        .stdout
        .clone();
    assert!(
        done.contains("Agents purged:") && done.contains(&agent_id),
        "{done}"
    );
    assert_eq!(
        s.cli(&["agent", "count", "-output", "json"]).json()["count"],
        0
    );
    s.cli(&["agent", "list", "-expiresBefore", "yesterday"])
        .expect_error("-expiresBefore");
}

/// `logger get|set|reset` change a running server's and agent's log level (SPIRE's commands),
/// through their admin sockets.
#[test]
fn logger_commands() {
    let s = TestServer::start(Backend::Sqlite);
    let got = s.cli(&["logger", "get"]).expect_ok().stdout.clone();
    assert!(
        got.contains("Logger Level : debug") && got.contains("Launch Level : debug"),
        "{got}"
    );
    let set = s
        .cli(&["logger", "set", "-level", "warn", "-output", "json"])
        .expect_ok()
        .json();
    assert_eq!(set["current_level"], "WARN");
    assert_eq!(set["launch_level"], "DEBUG");
    s.cli(&["logger", "set", "-level", "loud"])
        .expect_error("use DEBUG, INFO, WARN or ERROR");
    // at WARN, nothing below WARN is logged while an entry is created
    let before = s.log().lines().count();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/quiet",
        "-parentID",
        "spiffe://example.org/host",
        "-selector",
        "unix:uid:1",
    ])
    .expect_ok();
    let log = s.log();
    let quiet: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains(" INFO ") || l.contains(" DEBUG "))
        .collect();
    assert!(quiet.is_empty(), "{quiet:?}");
    let reset = s.cli(&["logger", "reset"]).expect_ok().stdout.clone();
    assert!(reset.contains("Logger Level : debug"), "{reset}");
    assert!(s.log().contains("log level changed"), "{}", s.log());
    // back at DEBUG, the same kind of write is logged again
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/loud",
        "-parentID",
        "spiffe://example.org/host",
        "-selector",
        "unix:uid:1",
    ])
    .expect_ok();
    assert!(
        s.log().contains("spiffe_id=spiffe://example.org/loud"),
        "{}",
        s.log()
    );

    let token = join_token(&s, "spiffe://example.org/host-logger");
    let a = TestAgent::start(&s, &token);
    let admin = a.dir.path().join("private/admin.sock");
    let agent_logger = |args: &[&str]| {
        Out::from(
            std::process::Command::new(AGENT_BIN)
                .args(["logger"])
                .args(args)
                .arg("-socketPath")
                .arg(&admin)
                .output()
                .unwrap(),
        )
    };
    let o = agent_logger(&["set", "-level", "error"]);
    assert!(o.ok() && o.stdout.contains("Logger Level : error"), "{o:?}");
    let o = agent_logger(&["get"]);
    assert!(o.stdout.contains("Launch Level : debug"), "{o:?}");
}

/// `ca_key_type = "rsa-4096"` (SPIRE's key types): the CA is RSA-4096 and the whole path
/// works on it, an agent attested and a workload served an SVID openssl verifies against the
/// bundle; JWT-SVIDs stay EC, as for an RSA-2048 CA.
#[test]
fn an_rsa_4096_ca() {
    let s = TestServer::start_conf(Backend::Sqlite, |c| c.server("ca_key_type", "rsa-4096"));
    let bundle = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    let ca = ironpact_spiffe::x509::certs_from_pem(&bundle).unwrap();
    let info = x509_parser::parse_x509_certificate(&ca[0]).unwrap().1;
    let bits = info
        .public_key()
        .parsed()
        .map(|k| k.key_size())
        .unwrap_or_default();
    assert_eq!(bits, 4096);
    let token = join_token(&s, "spiffe://example.org/host-rsa");
    let a = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/rsa-app",
        "-parentID",
        "spiffe://example.org/host-rsa",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let dir = tempfile::tempdir().unwrap();
    let o = a.fetch_until_ok(&["-write", dir.path().to_str().unwrap()]);
    assert!(o.ok(), "{o:?}");
    openssl_verify(
        &dir.path().join("bundle.0.pem"),
        &dir.path().join("svid.0.pem"),
    )
    .expect_ok();
    let jwt = a
        .cli(&["api", "fetch", "jwt", "-audience", "db"])
        .expect_ok()
        .stdout
        .clone();
    let header = jwt
        .lines()
        .nth(1)
        .and_then(|t| t.trim().split('.').next())
        .map(|h| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap()
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&header).contains("ES256"), "{jwt}");
}

/// `debug getinfo` (SPIRE's command) on the server's and the agent's admin sockets: counts
/// from memory, the process's own SVID chain, SPIRE's text and protojson; the agent's public
/// Workload API socket does not answer it.
#[test]
fn debug_getinfo() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-debug");
    let a = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/debug-workload",
        "-parentID",
        "spiffe://example.org/host-debug",
        "-selector",
        "unix:uid:1",
    ])
    .expect_ok();
    let text = s.cli(&["debug", "getinfo"]).expect_ok().stdout.clone();
    for want in [
        "Server Debug Info:",
        "Registered Agents:       1",
        "Federated Bundles:       0",
        "[0] SPIFFE ID:  spiffe://example.org/spire/server",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let v = s
        .cli(&["debug", "getinfo", "-output", "json"])
        .expect_ok()
        .json();
    assert_eq!(v["agents_count"], 1);
    assert!(v["entries_count"].as_i64().unwrap() >= 2, "{v}");
    assert_eq!(v["svid_chain"][0]["id"]["path"], "/spire/server");
    assert!(
        v["svid_chain"][0]["expires_at"].is_string(),
        "int64 as a string: {v}"
    );

    let admin = a.dir.path().join("private/admin.sock");
    let agent_debug = |socket: &std::path::Path, json: bool| {
        let mut c = std::process::Command::new(AGENT_BIN);
        c.args(["debug", "getinfo", "-socketPath"]).arg(socket);
        if json {
            c.args(["-output", "json"]);
        }
        Out::from(c.output().unwrap())
    };
    let o = agent_debug(&admin, false);
    assert!(
        o.ok()
            && o.stdout.contains("Agent Debug Info:")
            && o.stdout
                .contains("spiffe://example.org/spire/agent/join_token/")
            && !o.stdout.contains("(never)"),
        "{o:?}"
    );
    let v = agent_debug(&admin, true).json();
    assert!(
        v["last_sync_success"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0,
        "{v}"
    );
    assert_eq!(v["cached_svidstore_x509_svids_count"], 0);
    let o = agent_debug(&a.socket, false);
    assert!(!o.ok(), "the public socket must not serve debug: {o:?}");
}

/// `UpstreamAuthority "disk"`: an operator's root signs the server's CA. Agents bootstrap from
/// the root alone (the bundle holds nothing else), the agent-server mTLS carries the
/// intermediate both ways, and a workload's SVID chain verifies to the root with openssl; a
/// forced rotation of the local CA changes no bundle, and X.509 taint (which marks bundle
/// entries) is refused with the way out.
#[test]
fn upstream_authority_disk_end_to_end() {
    use ironpact_spiffe::{KeyType, PrivateKey, TrustDomain};
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let root = ironpact_spiffe::x509::self_signed_ca(
        &key,
        &TrustDomain::new("operator.example").unwrap(),
        &ironpact_spiffe::x509::CaSubject::default(),
        [9; 16],
        now - 60,
        now + 30 * 86400,
    )
    .unwrap();
    let (crt, keyf) = (dir.path().join("root.crt"), dir.path().join("root.key"));
    std::fs::write(&crt, ironpact_spiffe::x509::certs_to_pem([root.as_slice()])).unwrap();
    std::fs::write(&keyf, key.pkcs8_pem()).unwrap();
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(
            support::Plugin::new("UpstreamAuthority", "disk")
                .set("cert_file_path", &crt)
                .set("key_file_path", &keyf),
        )
    });
    assert_eq!(
        s.bundle_roots(),
        vec![root.clone()],
        "the bundle is the root alone"
    );
    let token = join_token(&s, "spiffe://example.org/host-upstream");
    let a = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/upstream-workload",
        "-parentID",
        "spiffe://example.org/host-upstream",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let out = dir.path().join("svids");
    let fetched = a.fetch_until_ok(&["-write", out.to_str().unwrap()]);
    assert!(fetched.ok(), "{fetched:?}");
    let svid = out.join("svid.0.pem");
    let chain =
        ironpact_spiffe::x509::certs_from_pem(&std::fs::read_to_string(&svid).unwrap()).unwrap();
    assert_eq!(chain.len(), 2, "the SVID and the server's CA");
    let v = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&crt)
        .arg("-untrusted")
        .arg(&svid)
        .arg(&svid)
        .output()
        .unwrap();
    assert!(v.status.success(), "{v:?}");
    // a forced rotation of the local CA: the bundle does not move; the workload's next SVID
    // is signed by the new CA
    let p = s
        .cli(&["localauthority", "x509", "prepare", "-output", "json"])
        .expect_ok()
        .json();
    let id = p["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.cli(&["localauthority", "x509", "activate", "-authorityID", &id])
        .expect_ok();
    assert_eq!(s.bundle_roots(), vec![root]);
    let old = s
        .cli(&["localauthority", "x509", "show", "-output", "json"])
        .expect_ok()
        .json()["old"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.cli(&["localauthority", "x509", "taint", "-authorityID", &old])
        .expect_error("UpstreamAuthority");
    // the agent itself stays connected through all this
    assert!(a.cli(&["api", "fetch", "x509"]).ok());
}

/// SPIRE's `trust_bundle_url`: a first start downloads its bootstrap bundle (here over a Unix
/// socket with `trust_bundle_unix_socket`, served by Python's http.server; the SPIFFE format
/// too), attests with it, and a restart needs the URL no more; plain http:// over the network
/// and a URL beside trust_bundle_path are refused, saying why.
#[test]
fn trust_bundle_url_bootstraps_the_agent() {
    let s = TestServer::start(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("bundle.json");
    std::fs::write(
        &jwks,
        s.cli(&["bundle", "show", "-format", "spiffe"])
            .expect_ok()
            .stdout
            .as_bytes(),
    )
    .unwrap();
    let sock = dir.path().join("bundle.sock");
    let script = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = open(sys.argv[2], 'rb').read()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def address_string(self):
        return 'uds'
socketserver.UnixStreamServer(sys.argv[1], H).serve_forever()
"#;
    let mut web = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&sock)
        .arg(&jwks)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the bundle server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = join_token(&s, "spiffe://example.org/host-url");
    let sock2 = sock.clone();
    let mut a = TestAgent::start_conf(
        &s,
        s.port,
        Some(&token),
        [support::Plugin::new("NodeAttestor", "join_token")],
        true,
        move |c| {
            let mut c = c
                .agent("trust_bundle_url", "http://localhost/bundle.json")
                .agent("trust_bundle_format", "spiffe")
                .agent("trust_bundle_unix_socket", &sock2);
            c.agent = c.agent.unset("trust_bundle_path");
            c
        },
    );
    assert!(
        a.log().contains("downloaded the bootstrap trust bundle"),
        "{}",
        a.log()
    );
    let _ = web.kill();
    let _ = web.wait();
    // the restart has the server's bundle: the URL is not needed (its server is gone)
    a.kill9();
    a.spawn(None);
    assert!(a.cli(&["healthcheck"]).ok());
    // refused, each with why
    let conf = std::fs::read_to_string(&a.config).unwrap();
    let bad = dir.path().join("bad.conf");
    for (edit, want) in [
        (
            conf.replace("trust_bundle_unix_socket", "unused_key_x"),
            "unused_key_x",
        ),
        (
            conf.lines()
                .filter(|l| !l.contains("trust_bundle_unix_socket"))
                .collect::<Vec<_>>()
                .join("\n"),
            "must be https://",
        ),
        (
            conf.replacen("agent {", "agent {\n    trust_bundle_path = \"/x.pem\"", 1),
            "excludes trust_bundle_path",
        ),
    ] {
        std::fs::write(&bad, edit).unwrap();
        let o = Out::from(
            std::process::Command::new(AGENT_BIN)
                .args(["validate", "-config"])
                .arg(&bad)
                .output()
                .unwrap(),
        );
        assert!(!o.ok() && o.stderr.contains(want), "{want}: {o:?}");
    }
}

/// SPIRE's `-disableX509SVIDPrefetch`: the agent signs no SVID for such an entry until a
/// workload asks; the first fetch waits for it and gets it, and it is kept afterwards.
#[test]
fn an_entry_without_prefetch_is_signed_on_first_request() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-lazy");
    let a = TestAgent::start(&s, &token);
    let admin = a.dir.path().join("private/admin.sock");
    let cached = || {
        Out::from(
            std::process::Command::new(AGENT_BIN)
                .args(["debug", "getinfo", "-output", "json", "-socketPath"])
                .arg(&admin)
                .output()
                .unwrap(),
        )
        .json()["cached_x509_svids_count"]
            .as_i64()
            .unwrap()
    };
    // the join token's alias entry is signed ahead, as any entry is
    std::thread::sleep(Duration::from_secs(2));
    let before = cached();
    let synced = || a.log().matches("applied a sync update").count();
    let n = synced();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/lazy",
        "-parentID",
        "spiffe://example.org/host-lazy",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
        "-disableX509SVIDPrefetch",
    ])
    .expect_ok();
    // the entry reaches the agent (an eager one would be signed within a second)
    let deadline = Instant::now() + Duration::from_secs(20);
    while synced() == n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cached(),
        before,
        "nothing signed before a workload asks: {}",
        a.log()
    );
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/lazy"),
        "{o:?}"
    );
    assert_eq!(
        cached(),
        before + 1,
        "signed on the first request, and kept"
    );
}
