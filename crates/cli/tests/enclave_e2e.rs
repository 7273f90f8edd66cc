//! SGX enclave workloads end to end, with the simulated SGX quoting stack (a test PKI and
//! collateral signed by its TCB signer) behind the same file interface Gramine and Occlum give
//! an enclave (`user_report_data`, then `quote`): `ironpact-agent api enclave` gets SVIDs for
//! a key it generated (the agent never holds it), completes mutual TLS with an ordinary
//! workload, and is renewed with a fresh quote; a debug enclave, a wrong MRENCLAVE, a replayed
//! nonce, a quote bound to another key and stale collateral are refused with their kinds
//! (the enclave hears what was seen, the server's log also what is allowed); a policy reloaded
//! on SIGHUP applies to the next exchange; the client refuses SVIDs for another key or that do
//! not chain to the bundle it trusts; an ordinary workload never gets an enclave entry's
//! identity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_cli::agent::enclave::{EnclaveKey, check_issued, exchange};
use ironpact_tdx::simulate::{SimEnclave, SimPlatform, SimulatedTdx, TestPki, sgx_collateral};
use ironpact_testkit::sgx_device::{Quoter, SimulatedAttestationDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Backend, Plugin, TestAgent, TestServer, join_token, my_uid, runtime};

const DAY: i64 = 86_400;
const MRENCLAVE: [u8; 32] = [0xe1; 32];
const OTHER_MRENCLAVE: [u8; 32] = [0xe2; 32];
const MRSIGNER: [u8; 32] = [0x5a; 32];

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn enclave(mrenclave: [u8; 32], isv_prod_id: u16, debug: bool) -> SimEnclave {
    SimEnclave {
        mrenclave,
        mrsigner: MRSIGNER,
        isv_prod_id,
        isv_svn: 2,
        debug,
    }
}

/// The simulated quoting stack of the test PKI in `pki`, quoting as `e`.
fn quoter(pki: &TestPki, e: SimEnclave) -> Quoter {
    let dev = SimulatedTdx::new(pki, SimPlatform::default()).unwrap();
    Box::new(move |rd| dev.sgx_quote(&e, *rd).unwrap())
}

fn write_collateral(pki: &TestPki, dir: &Path, issued: i64, next_update: i64) {
    let c = sgx_collateral(pki, &SimPlatform::default(), issued, next_update).unwrap();
    std::fs::write(dir.join("collateral/sgx.json"), c.to_json()).unwrap();
}

/// `ironpact-agent api enclave` once: (succeeded, stderr).
fn api_enclave(a: &TestAgent, device: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(support::AGENT_BIN)
        .args(["api", "enclave", "-quoteDevice"])
        .arg(device)
        .arg("-write")
        .arg(out)
        .args(extra)
        .arg("-socketPath")
        .arg(&a.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// The SPIFFE ID and serial of each svid.N.pem under `dir`, by ID.
fn svids(dir: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for i in 0..8 {
        let p = dir.join(format!("svid.{i}.pem"));
        let Ok(pem) = std::fs::read_to_string(&p) else {
            break;
        };
        let leaf = ironpact_spiffe::x509::certs_from_pem(&pem).unwrap()[0].clone();
        let info = ironpact_spiffe::x509::CertInfo::parse(&leaf).unwrap();
        out.push((info.uri_sans[0].clone(), info.serial_hex, p));
    }
    out.sort();
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn an_enclave_gets_svids_for_its_own_key() {
    if support::which("openssl").is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "openssl missing"
        );
        println!("SKIPPED: openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = SimPlatform::default();
    let pki = TestPki::generate(&p, now() - 30 * DAY, now() + 365 * DAY).unwrap();
    support::write_tdx_pki(&pki, &dir.path().join("pki"));
    std::fs::create_dir_all(dir.path().join("collateral")).unwrap();
    write_collateral(&pki, dir.path(), now() - DAY, now() + 29 * DAY);
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(
            Plugin::new("WorkloadAttestor", "sgx")
                .set("test_root", dir.path().join("pki/root.pem"))
                .set("collateral_dir", dir.path().join("collateral")),
        )
    });
    let token = join_token(&s, "spiffe://example.org/enclave-host");
    let a = TestAgent::start_custom(
        &s,
        Some(&token),
        [
            Plugin::new("NodeAttestor", "join_token"),
            Plugin::new("WorkloadAttestor", "sgx"),
        ],
        true,
    );
    let uid = format!("unix:uid:{}", my_uid());
    let mrenclave = format!("sgx:mrenclave:{}", hex::encode(MRENCLAVE));
    let mrsigner = format!("sgx:mrsigner:{}", hex::encode(MRSIGNER));
    for args in [
        // one enclave, by its measurement and the uid it runs under
        vec![
            "-spiffeID",
            "spiffe://example.org/enclave-svc",
            "-selector",
            &mrenclave,
            "-selector",
            &uid,
            "-x509SVIDTTL",
            "12",
        ],
        // any enclave of this signer's product 1
        vec![
            "-spiffeID",
            "spiffe://example.org/signed-by-us",
            "-selector",
            &mrsigner,
            "-selector",
            "sgx:isv_prod_id:1",
            "-selector",
            &uid,
        ],
        // an ordinary workload of the same uid
        vec!["-spiffeID", "spiffe://example.org/peer", "-selector", &uid],
    ] {
        let mut full = vec![
            "entry",
            "create",
            "-parentID",
            "spiffe://example.org/enclave-host",
        ];
        full.extend(args);
        s.cli(&full).expect_ok();
    }
    let device = SimulatedAttestationDir::start(
        &dir.path().join("dev-attestation"),
        quoter(&pki, enclave(MRENCLAVE, 1, false)),
    )
    .unwrap();

    // an ordinary workload gets its own identity, never an enclave entry's
    let peer = dir.path().join("peer");
    let o = a.fetch_until_ok(&["-write", peer.to_str().unwrap()]);
    assert!(o.ok(), "{o:?}\n{}", a.log());
    let ids: Vec<String> = svids(&peer).into_iter().map(|s| s.0).collect();
    assert_eq!(ids, ["spiffe://example.org/peer"], "{}", a.log());

    // the enclave: both entries it matches, for the key it generated, checked against the
    // trust bundle it was given (not the host's)
    let out = dir.path().join("enclave");
    let trusted = dir.path().join("trusted-bundle.pem");
    std::fs::write(&trusted, &s.cli(&["bundle", "show"]).expect_ok().stdout).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, err) = api_enclave(
            &a,
            &device.dir,
            &out,
            &["-audience", "db", "-trustBundle", trusted.to_str().unwrap()],
        );
        if ok {
            break;
        }
        // the entries may still be on their way to the server's cache
        assert!(Instant::now() < deadline, "{err}\n{}\n{}", a.log(), s.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = svids(&out);
    let ids: Vec<&str> = got.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://example.org/enclave-svc",
            "spiffe://example.org/signed-by-us"
        ],
        "{}",
        s.log()
    );
    let svc = got[0].2.clone();
    assert_eq!(
        ironpact_spiffe::x509::certs_from_pem(
            &std::fs::read_to_string(out.join("bundle.0.pem")).unwrap()
        )
        .unwrap(),
        ironpact_spiffe::x509::certs_from_pem(&std::fs::read_to_string(&trusted).unwrap()).unwrap()
    );
    let key_of = |pem: &Path| {
        pem.with_file_name(
            pem.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".pem", ".key"),
        )
    };
    let key_pem = std::fs::read_to_string(key_of(&svc)).unwrap();
    let key_der = pem::parse(&key_pem).unwrap().into_contents();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_of(&svc))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // the certificate is for that key
    let leaf_pem = std::fs::read_to_string(&svc).unwrap();
    let leaf = ironpact_spiffe::x509::certs_from_pem(&leaf_pem).unwrap()[0].clone();
    let key = rcgen::KeyPair::try_from(key_der.as_slice()).unwrap();
    {
        use rcgen::PublicKeyData;
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
    }
    // ... and the agent holds none of it: no file of its own, no log line carries the key
    let mut files = Vec::new();
    files_under(a.dir.path(), &mut files);
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes
                .windows(key_der.len())
                .any(|w| w == key_der.as_slice())
                && !String::from_utf8_lossy(&bytes).contains(key_pem.trim()),
            "{} holds the enclave's key",
            f.display()
        );
    }
    // it carries the enclave's claims, and the JWT-SVID too
    let c = ironpact_spiffe::claims::from_certificate(&leaf)
        .unwrap()
        .expect("claims");
    assert_eq!(
        (c.tee.as_str(), c.debug, c.signing_key.as_str()),
        ("sgx", false, "pck")
    );
    assert_eq!(c.measurement("mrenclave"), Some(&MRENCLAVE[..]));
    assert_eq!(c.measurement("mrsigner"), Some(&MRSIGNER[..]));
    let token = std::fs::read_to_string(out.join("jwt_svid.0.token")).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["db"]));
    assert_eq!(claims["tee"]["type"], "sgx", "{claims}");

    // mutual TLS: the enclave serves with its SVID, the ordinary workload is the client
    let port = support::free_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-www",
            "-naccept",
            "1",
            "-Verify",
            "1",
            "-verify_return_error",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&svc)
        .arg("-key")
        .arg(key_of(&svc))
        .arg("-CAfile")
        .arg(out.join("bundle.0.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let mut client = Command::new("openssl")
            .args(["s_client", "-no_ign_eof", "-verify_return_error"])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(peer.join("svid.0.pem"))
            .arg("-key")
            .arg(peer.join("svid.0.key"))
            .arg("-CAfile")
            .arg(peer.join("bundle.0.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        {
            use std::io::Write;
            let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
        }
        let o = client.wait_with_output().unwrap();
        drop(stdin);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if text.contains("Verify return code: 0 (ok)") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // the server presented the enclave's certificate, and saw the peer's
    assert!(text.contains(leaf_pem.lines().nth(1).unwrap()), "{text}");
    assert!(text.contains("Client certificate"), "{text}");
    let _ = server.kill();
    let _ = server.wait();

    // renewal: -watch gets new SVIDs at half-life (6 s here), each for a new key and a fresh
    // quote
    let renewing = dir.path().join("renewing");
    let before = device.served();
    let mut watch = Command::new(support::AGENT_BIN)
        .args(["api", "enclave", "-watch", "-quoteDevice"])
        .arg(&device.dir)
        .arg("-write")
        .arg(&renewing)
        .arg("-socketPath")
        .arg(&a.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut serials = std::collections::BTreeSet::new();
    while serials.len() < 2 {
        if let Some((_, serial, _)) = svids(&renewing)
            .into_iter()
            .find(|s| s.0.ends_with("/enclave-svc"))
        {
            serials.insert(serial);
        }
        assert!(
            Instant::now() < deadline,
            "no renewal: {serials:?}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(device.served() >= before + 2, "each renewal quotes again");

    // refusals, each with its kind
    let refused = dir.path().join("refused");
    // a debug enclave
    device.set_quoter(quoter(&pki, enclave(MRENCLAVE, 1, true)));
    let (ok, err) = api_enclave(&a, &device.dir, &refused, &[]);
    assert!(!ok);
    // the enclave hears the field and the value seen; what the policy allows stays in the
    // server's log
    assert!(
        err.contains("debug_enclave") && err.contains("debug true") && !err.contains("allowed:"),
        "{err}"
    );
    assert!(
        s.log()
            .contains(r#"{"field":"debug","seen":"true","allowed":"false"}"#),
        "{}",
        s.log()
    );
    // another MRENCLAVE (another product of the same signer): no entry admits it, and the
    // refusal names what the quote proved
    device.set_quoter(quoter(&pki, enclave(OTHER_MRENCLAVE, 2, false)));
    let (ok, err) = api_enclave(&a, &device.dir, &refused, &[]);
    assert!(!ok);
    assert!(
        err.contains("no_matching_entry") && err.contains(&hex::encode(OTHER_MRENCLAVE)),
        "{err}"
    );
    device.set_quoter(quoter(&pki, enclave(MRENCLAVE, 1, false)));
    let q = quoter(&pki, enclave(MRENCLAVE, 1, false));
    let rt = runtime();
    // a replayed quote: bound to an earlier exchange's nonce
    let key = EnclaveKey::generate().unwrap();
    let mut kept = None;
    let issued = rt
        .block_on(exchange(&a.socket, &[], |nonce| {
            let quote = q(&ironpact_server::attest::sgx::report_data(nonce, &key.spki));
            kept = Some(quote.clone());
            Ok((quote, key.csr.clone()))
        }))
        .unwrap();
    // the client checks what came back through the host: for its own key, chaining to the
    // bundle it trusts
    let trusted_roots =
        ironpact_spiffe::x509::certs_from_pem(&std::fs::read_to_string(&trusted).unwrap()).unwrap();
    assert!(check_issued(&issued, &key.spki, Some(&trusted_roots), now()).is_ok());
    let other_key = EnclaveKey::generate().unwrap();
    let e = check_issued(&issued, &other_key.spki, None, now()).unwrap_err();
    assert!(format!("{e}").contains("another key"), "{e}");
    let stranger = {
        let k = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&k).unwrap().der().to_vec()
    };
    let e = check_issued(&issued, &key.spki, Some(&[stranger]), now()).unwrap_err();
    assert!(
        format!("{e}").contains("does not chain to the trusted"),
        "{e}"
    );
    let e = rt
        .block_on(exchange(&a.socket, &[], |_| {
            Ok((kept.clone().unwrap(), key.csr.clone()))
        }))
        .unwrap_err();
    assert!(format!("{e:#}").contains("report_data_mismatch"), "{e:#}");
    // a quote bound to another key than the CSR's
    let other = EnclaveKey::generate().unwrap();
    let e = rt
        .block_on(exchange(&a.socket, &[], |nonce| {
            let quote = q(&ironpact_server::attest::sgx::report_data(
                nonce,
                &other.spki,
            ));
            Ok((quote, key.csr.clone()))
        }))
        .unwrap_err();
    assert!(format!("{e:#}").contains("report_data_mismatch"), "{e:#}");
    // stale collateral (past its nextUpdate, no grace): refused until it is current again
    write_collateral(&pki, dir.path(), now() - 40 * DAY, now() - 10 * DAY);
    let (ok, err) = api_enclave(&a, &device.dir, &refused, &[]);
    assert!(!ok);
    assert!(err.contains("collateral_expired"), "{err}");
    write_collateral(&pki, dir.path(), now() - DAY, now() + 29 * DAY);
    let (ok, err) = api_enclave(&a, &device.dir, &refused, &[]);
    assert!(ok, "{err}");
    // the policy is reloaded on SIGHUP: a minimum ISV SVN above the enclave's refuses it at
    // its next exchange, and relaxing it again lets it back
    let coll = format!(
        "collateral_dir = \"{}\"",
        dir.path().join("collateral").display()
    );
    let strict = format!("{coll}\nmin_isv_svn = 5");
    let reloads = |s: &TestServer| s.log().matches("reloaded the sgx policy").count();
    let wait_reload = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reloads(&s) < n {
            assert!(Instant::now() < deadline, "no reload:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    s.tighten(&coll, &strict);
    wait_reload(1);
    let (ok, err) = api_enclave(&a, &device.dir, &refused, &[]);
    assert!(!ok);
    assert!(
        err.contains("tcb_too_low") && err.contains("isv_svn 2"),
        "{err}"
    );
    s.tighten(&strict, &coll);
    wait_reload(2);
    let (ok, err) = api_enclave(&a, &device.dir, &refused, &[]);
    assert!(ok, "{err}");
    // every refusal was logged by the server with its kind
    let log = s.log();
    for kind in [
        "debug_enclave",
        "no_matching_entry",
        "report_data_mismatch",
        "collateral_expired",
        "tcb_too_low",
    ] {
        assert!(log.contains(kind), "{kind} not logged:\n{log}");
    }
}
