//! A confidential cloud node end to end: the agent reads its instance identity document from a
//! loopback IMDSv2 (signed by a test CA with openssl), the server checks it, challenges the
//! agent for a fresh SEV-SNP report signed by a simulated VLEK (as on AWS), verifies that with
//! the production verifier, and names the agent by its instance with the union of the
//! `aws_iid:*`, `aws_iid:measurements:*` and `sev_snp:*` selectors. A workload behind a
//! measurement-bound node alias gets its SVID. Each way to cheat is refused precisely. The same
//! with Intel TDX instead of SEV-SNP: a fresh quote from the simulated TD quoting stack, with
//! collateral fetched from a loopback PCS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_snp::cert_table::{CertTable, GUID_VLEK};
use ironpact_snp::simulate::{SimGuest, SimPlatform, SimulatedSnp};
use std::path::Path;
use std::time::{Duration, Instant};
use support::imds::{AwsTestCa, Served, document};
use support::keys::{p384_pkcs8, rsa_pkcs8};
use support::{
    Backend, Block, Plugin, TestAgent, TestClock, TestServer, attest_by_hand, attest_refused,
    my_uid, runtime,
};

const MEASUREMENT: [u8; 48] = [0x4d; 48];
const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-west-1";
const INSTANCE: &str = "i-0abc1234def567890";

/// Keys of a simulated VLEK chain in `dir` (ark.pk8, asvk.pk8, vlek.pk8) and the device.
fn vlek_device(dir: &Path) -> SimulatedSnp {
    let (ark, asvk, vlek) = (rsa_pkcs8(), rsa_pkcs8(), p384_pkcs8());
    std::fs::write(dir.join("ark.pk8"), &ark).unwrap();
    std::fs::write(dir.join("asvk.pk8"), &asvk).unwrap();
    std::fs::write(dir.join("vlek.pk8"), &vlek).unwrap();
    SimulatedSnp::new_vlek(platform(), &ark, &asvk, &vlek, 0, 4_000_000_000).unwrap()
}

fn platform() -> SimPlatform {
    SimPlatform {
        product: ironpact_snp::Product::Milan,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    }
}

fn server_attestor(certs: &Path, dir: &Path, dev: &SimulatedSnp, measurement: &[u8; 48]) -> Plugin {
    let pem = |d: &[u8]| ironpact_spiffe::x509::certs_to_pem([d]);
    std::fs::write(dir.join("ark.pem"), pem(&dev.ark_der)).unwrap();
    std::fs::write(dir.join("asvk.pem"), pem(&dev.ask_der)).unwrap();
    Plugin::new("NodeAttestor", "aws_iid")
        .set("certificates_path", certs)
        .set("account_allowlist", vec![ACCOUNT])
        .block(
            Block::new("sev_snp")
                .set("measurements", vec![hex::encode(measurement)])
                .set("signing_keys", vec!["vlek"])
                .set("fetch_vcek", false)
                .block(
                    Block::new("test_roots")
                        .set("product", "milan")
                        .set("ark", dir.join("ark.pem"))
                        .set("asvk", dir.join("asvk.pem")),
                ),
        )
}

fn agent_attestor(imds: &str, keys: &Path) -> Plugin {
    Plugin::new("NodeAttestor", "aws_iid")
        .set("ec2_metadata_endpoint", imds)
        .block(
            Block::new("sev_snp")
                .set("evidence_source", "simulated")
                .block(
                    Block::new("simulated")
                        .set("keys_dir", keys)
                        .set("signing_key", "vlek")
                        .set("measurement", hex::encode(MEASUREMENT)),
                ),
        )
}

fn vlek_evidence(dev: &SimulatedSnp, guest: &SimGuest, rd: [u8; 64]) -> Vec<u8> {
    let report = dev.report(guest, &rd).unwrap();
    ironpact_snp::binding::encode_evidence(
        &report,
        &CertTable::build(&[(GUID_VLEK, &dev.vcek_der)]),
    )
}

fn payload(doc: &str, sig: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"document": doc, "signature_rsa2048": sig})).unwrap()
}

fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let path = "/latest/dynamic/instance-identity/document";
    let path = if method == "PUT" {
        "/latest/api/token"
    } else {
        path
    };
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap()
}

#[test]
fn aws_iid_with_sev_snp_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("snp-keys");
    std::fs::create_dir(&keys).unwrap();
    let dev = vlek_device(&keys);
    let aws = AwsTestCa::create(dir.path(), "aws-test-region");
    let doc = document(ACCOUNT, REGION, INSTANCE, "ami-0123456789abcdef0");
    let (_emulator, imds) = support::imds::start(
        "127.0.0.1:0",
        Served {
            document: doc.clone(),
            signature: aws.sign(&doc),
        },
    )
    .unwrap();

    // the emulator is IMDSv2: no token, a wrong token or an expired one gets 401
    assert_eq!(http("GET", &imds.url, &[]), 401);
    assert_eq!(
        http("GET", &imds.url, &[("X-aws-ec2-metadata-token", "forged")]),
        401
    );
    assert_eq!(
        http("PUT", &imds.url, &[]),
        400,
        "the TTL header is required"
    );
    assert_eq!(
        http(
            "PUT",
            &imds.url,
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")]
        ),
        200
    );

    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(server_attestor(
            &aws.cert_pem,
            dir.path(),
            &dev,
            &MEASUREMENT,
        ))
    });
    let agent_id =
        format!("spiffe://example.org/spire/agent/aws_iid/{ACCOUNT}/{REGION}/{INSTANCE}");
    let a = TestAgent::start_custom(&s, None, [agent_attestor(&imds.url, &keys)], true);
    let shown = s.agent_show(&agent_id);
    let m = hex::encode(MEASUREMENT);
    for sel in [
        format!("aws_iid:account:{ACCOUNT}"),
        format!("aws_iid:region:{REGION}"),
        format!("aws_iid:az:{REGION}a"),
        format!("aws_iid:instance:id:{INSTANCE}"),
        "aws_iid:image:id:ami-0123456789abcdef0".to_string(),
        format!("aws_iid:measurements:{m}"),
        format!("sev_snp:measurement:{m}"),
        "sev_snp:signing_key:vlek".to_string(),
        "sev_snp:product:milan".to_string(),
    ] {
        assert!(shown.contains(&sel), "{sel} missing from:\n{shown}");
    }
    assert!(shown.contains("Attestation type  : aws_iid"), "{shown}");
    println!("{shown}");

    // a workload behind a node alias bound to the measurement gets its SVID
    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/attested-nodes",
        "-selector",
        &format!("sev_snp:measurement:{m}"),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/confidential-app",
        "-parentID",
        "spiffe://example.org/attested-nodes",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.stdout.contains("spiffe://example.org/confidential-app"),
        "{o:?}"
    );

    // refusals, each precise, nothing issued
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let other_ca = AwsTestCa::create(dir.path(), "not-aws");
    let guest = |m: [u8; 48], id: u8| SimGuest {
        measurement: m,
        report_id: [id; 32],
        ..SimGuest::default()
    };
    let other_keys = dir.path().join("other");
    std::fs::create_dir(&other_keys).unwrap();
    let other_chain = vlek_device(&other_keys);
    let fresh_doc = |i: &str| document(ACCOUNT, REGION, i, "ami-0123456789abcdef0");
    let rt = runtime();
    rt.block_on(async {
        let d1 = fresh_doc("i-00000000000000001");
        let good_sig = aws.sign(&d1);
        let tampered = d1.replace("i-00000000000000001", "i-00000000000000002");
        type Case<'a> = (&'a str, Vec<u8>, Box<dyn Fn(&[u8], &[u8]) -> Vec<u8> + 'a>);
        let honest = |n: &[u8], k: &[u8]| {
            vlek_evidence(
                &dev,
                &guest(MEASUREMENT, 1),
                ironpact_snp::binding::report_data(n, k),
            )
        };
        let cases: Vec<Case<'_>> = vec![
            (
                "tampered document",
                payload(&tampered, &good_sig),
                Box::new(honest),
            ),
            (
                "does not verify with any configured AWS certificate",
                payload(&d1, &other_ca.sign(&d1)),
                Box::new(honest),
            ),
            (
                "account 999999999999 is not in account_allowlist",
                payload(
                    &document("999999999999", REGION, "i-1", "ami-1"),
                    &aws.sign(&document("999999999999", REGION, "i-1", "ami-1")),
                ),
                Box::new(honest),
            ),
            (
                "unparseable",
                payload(&d1, &good_sig),
                Box::new(|_, _| Vec::new()),
            ),
            (
                "measurement_not_allowed",
                payload(&d1, &good_sig),
                Box::new(|n, k| {
                    vlek_evidence(
                        &dev,
                        &guest([0x99; 48], 2),
                        ironpact_snp::binding::report_data(n, k),
                    )
                }),
            ),
            (
                "untrusted_chain",
                payload(&d1, &good_sig),
                Box::new(|n, k| {
                    vlek_evidence(
                        &other_chain,
                        &guest(MEASUREMENT, 3),
                        ironpact_snp::binding::report_data(n, k),
                    )
                }),
            ),
            (
                "report_data_mismatch",
                payload(&d1, &good_sig),
                Box::new(|_, k| {
                    vlek_evidence(
                        &dev,
                        &guest(MEASUREMENT, 4),
                        ironpact_snp::binding::report_data(&[7; 32], k),
                    )
                }),
            ),
        ];
        for (want, p, answer) in cases {
            attest_refused(&addr, &roots, "aws_iid", p, answer, want).await;
        }
        // the same instance with an honest report passes, and may attest again (fresh evidence)
        for _ in 0..2 {
            let svid = attest_by_hand(&addr, &roots, "aws_iid", payload(&d1, &good_sig), honest)
                .await
                .unwrap();
            assert!(svid.id.ends_with("/i-00000000000000001"), "{}", svid.id);
        }
        // takeover: another VM that passes the same policy, holding a copy of the running
        // agent's identity document (not a secret), tries to attest under its agent ID
        let copy = payload(&doc, &aws.sign(&doc));
        attest_refused(
            &addr,
            &roots,
            "aws_iid",
            copy,
            |n: &[u8], k: &[u8]| {
                vlek_evidence(
                    &dev,
                    &guest(MEASUREMENT, 0x66),
                    ironpact_snp::binding::report_data(n, k),
                )
            },
            "instance_mismatch",
        )
        .await;
    });
    // the original agent is untouched and keeps working
    let shown = s.agent_show(&agent_id);
    assert!(!shown.contains("Attestation error"), "{shown}");
    std::thread::sleep(Duration::from_secs(1));
    let o = a.cli(&["api", "fetch", "x509", "-timeout", "5"]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/confidential-app"),
        "{o:?}\n{}",
        a.log()
    );
    assert!(!a.log().contains("evicted"), "{}", a.log());
    assert!(
        s.log()
            .contains("re-attestation from another TEE instance refused"),
        "{}",
        s.log()
    );
    assert!(
        !s.cli(&["agent", "list"])
            .expect_ok()
            .stdout
            .contains("i-00000000000000002"),
        "nothing was issued for the tampered document"
    );
    drop(a);
}

#[test]
fn aws_iid_alone_is_trust_on_first_use_and_unreachable_imds_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let aws = AwsTestCa::create(dir.path(), "aws-test-region");
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(Plugin::new("NodeAttestor", "aws_iid").set("certificates_path", &aws.cert_pem))
    });
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let doc = document(ACCOUNT, REGION, "i-0tofu", "ami-1");
    let p = payload(&doc, &aws.sign(&doc));
    let rt = runtime();
    rt.block_on(async {
        let no_challenge = |_: &[u8], _: &[u8]| panic!("aws_iid alone sends no challenge");
        let svid = attest_by_hand(&addr, &roots, "aws_iid", p.clone(), no_challenge)
            .await
            .unwrap();
        assert!(
            svid.id.ends_with("/aws_iid/123456789012/eu-west-1/i-0tofu"),
            "{}",
            svid.id
        );
        let e = attest_by_hand(&addr, &roots, "aws_iid", p.clone(), no_challenge)
            .await
            .unwrap_err();
        assert!(e.message().contains("evict it first"), "{e:?}");
    });
    s.cli(&[
        "agent",
        "evict",
        "-spiffeID",
        &format!("spiffe://example.org/spire/agent/aws_iid/{ACCOUNT}/{REGION}/i-0tofu"),
    ])
    .expect_ok();
    rt.block_on(async {
        attest_by_hand(&addr, &roots, "aws_iid", p, |_, _| Vec::new())
            .await
            .unwrap();
    });

    // an agent that is not on EC2 says so and names the setting
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let a = TestAgent::start_custom(
        &s,
        None,
        [Plugin::new("NodeAttestor", "aws_iid")
            .set("ec2_metadata_endpoint", &closed)
            .set("timeout", "1s")],
        false,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a
        .log()
        .contains("cannot reach the EC2 instance metadata service")
    {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.log().contains("ec2_metadata_endpoint"), "{}", a.log());
}

#[test]
fn aws_iid_with_tdx_end_to_end() {
    use ironpact_tdx::simulate::{SimPlatform, SimTd, SimulatedTdx, TestPki, collateral};
    const MRTD: [u8; 48] = [0x6b; 48];
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let p = SimPlatform::default();
    let pki = TestPki::generate(&p, now - 30 * 86_400, now + 365 * 86_400).unwrap();
    support::write_tdx_pki(&pki, &dir.path().join("pki"));
    // one emulator is both the cloud's IMDS and Intel's PCS
    let emulator = ironpact_testkit::http::Emulator::start().unwrap();
    let pcs = support::pcs::mount(
        &emulator,
        support::pcs::PcsServed {
            collateral: Some(collateral(&pki, &p, now - 86_400, now + 29 * 86_400).unwrap()),
            ..Default::default()
        },
    );
    let aws = AwsTestCa::create(dir.path(), "aws-test-region");
    let doc = document(ACCOUNT, REGION, INSTANCE, "ami-0123456789abcdef0");
    let imds = support::imds::mount(
        &emulator,
        Served {
            document: doc.clone(),
            signature: aws.sign(&doc),
        },
    );
    let m = hex::encode(MRTD);
    // one shifted clock for the server and the agent: the renewal comes by moving it
    let clock = TestClock::install();
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(
            Plugin::new("NodeAttestor", "aws_iid")
                .set("certificates_path", &aws.cert_pem)
                .set("account_allowlist", vec![ACCOUNT])
                .block(
                    Block::new("tdx")
                        .set("mrtds", vec![m.clone()])
                        .set("test_root", dir.path().join("pki/root.pem"))
                        .set("pcs_url", &pcs.url),
                ),
        )
    });
    let a = TestAgent::start_custom(
        &s,
        None,
        [Plugin::new("NodeAttestor", "aws_iid")
            .set("ec2_metadata_endpoint", &imds.url)
            .block(
                Block::new("tdx").set("evidence_source", "simulated").block(
                    Block::new("simulated")
                        .set("pki_dir", dir.path().join("pki"))
                        .set("mrtd", &m),
                ),
            )],
        true,
    );
    let agent_id =
        format!("spiffe://example.org/spire/agent/aws_iid/{ACCOUNT}/{REGION}/{INSTANCE}");
    let shown = s.agent_show(&agent_id);
    for sel in [
        format!("aws_iid:account:{ACCOUNT}"),
        format!("aws_iid:instance:id:{INSTANCE}"),
        format!("aws_iid:measurements:{m}"),
        format!("tdx:mrtd:{m}"),
        "tdx:tcb_status:UpToDate".to_string(),
        format!("tdx:fmspc:{}", hex::encode(p.fmspc)),
    ] {
        assert!(shown.contains(&sel), "{sel} missing from:\n{shown}");
    }
    assert!(shown.contains("Attestation type  : aws_iid"), "{shown}");

    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/tdx-instances",
        "-selector",
        &format!("aws_iid:measurements:{m}"),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/tdx-cloud-app",
        "-parentID",
        "spiffe://example.org/tdx-instances",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.stdout.contains("spiffe://example.org/tdx-cloud-app"),
        "{o:?}"
    );

    // refusals: an honest document with a TD the policy does not allow, or without a quote;
    // a tampered document with an honest quote
    let dev = SimulatedTdx::new(&pki, p.clone()).unwrap();
    let rd = ironpact_tdx::binding::report_data;
    let d1 = document(ACCOUNT, REGION, "i-00000000000000009", "ami-1");
    let sig = aws.sign(&d1);
    let tampered = d1.replace("i-00000000000000009", "i-00000000000000008");
    let rt = runtime();
    rt.block_on(async {
        type Case<'a> = (&'a str, Vec<u8>, Box<dyn Fn(&[u8], &[u8]) -> Vec<u8> + 'a>);
        let honest = |n: &[u8], k: &[u8]| dev.quote(&SimTd::with_mrtd(MRTD), rd(n, k)).unwrap();
        let cases: Vec<Case<'_>> = vec![
            (
                "measurement_not_allowed",
                payload(&d1, &sig),
                Box::new(|n, k| dev.quote(&SimTd::with_mrtd([0x11; 48]), rd(n, k)).unwrap()),
            ),
            (
                "unparseable",
                payload(&d1, &sig),
                Box::new(|_, _| Vec::new()),
            ),
            (
                "tampered document",
                payload(&tampered, &sig),
                Box::new(honest),
            ),
        ];
        for (want, body, answer) in cases {
            let (addr, roots) = (s.agent_addr(), s.bundle_roots());
            attest_refused(&addr, &roots, "aws_iid", body, answer, want).await;
        }
        let svid = attest_by_hand(
            &s.agent_addr(),
            &s.bundle_roots(),
            "aws_iid",
            payload(&d1, &sig),
            honest,
        )
        .await
        .unwrap();
        assert!(svid.id.ends_with("/i-00000000000000009"), "{}", svid.id);
    });
    // (last: from here the processes' time is ahead of this test's) renewal at half-life of
    // the 1 h SVID presents the document and a fresh quote again, under the same agent ID
    clock.advance(31 * 60);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.log().contains("renewed the agent SVID") {
        assert!(Instant::now() < deadline, "no renewal:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.agent_show(&agent_id)
            .contains("Attestation type  : aws_iid"),
        "the renewal lost the agent"
    );
    assert!(a.fetch_until_ok(&[]).ok());
    // fetched once for every attestation and renewal above
    assert_eq!(pcs.requests().len(), 4, "{:?}", pcs.requests());
    let seen = emulator.requests();
    assert!(
        seen.iter().any(|r| r == "PUT /latest/api/token")
            && seen
                .iter()
                .any(|r| r.starts_with("GET /tdx/certification/v4/tcb?")),
        "{seen:?}"
    );
    drop(a);
}
