//! SEV-SNP node attestation end to end, through the production verifier with a simulated
//! device whose test ARK the server pins explicitly: the agent attests, a workload behind a
//! measurement-bound node alias gets its SVID; a wrong measurement, a debug guest, a replayed
//! nonce and another key's REPORT_DATA are refused; tightening the allow-list at runtime
//! (SIGHUP) stops the next renewal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_snp::cert_table::{CertTable, GUID_VCEK};
use ironpact_snp::simulate::{SimGuest, SimPlatform, SimulatedSnp};
use ironpact_testkit::http::{Availability, Emulator};
use std::path::Path;
use std::time::{Duration, Instant};
use support::keys::{p384_pkcs8, rsa_pkcs8};
use support::{Backend, Block, Plugin, TestAgent, TestClock, TestServer, Value, my_uid, runtime};

const GOOD: [u8; 48] = [0x11; 48];

/// Turns the server's nonce and the CSR's SPKI into evidence.
type Answer<'a> = dyn Fn(&[u8], &[u8]) -> Vec<u8> + 'a;

struct Keys {
    dir: tempfile::TempDir,
    ark: Vec<u8>,
    ask: Vec<u8>,
    vcek: Vec<u8>,
}

fn keys() -> Keys {
    let k = Keys {
        dir: tempfile::tempdir().unwrap(),
        ark: rsa_pkcs8(),
        ask: rsa_pkcs8(),
        vcek: p384_pkcs8(),
    };
    std::fs::write(k.dir.path().join("ark.pk8"), &k.ark).unwrap();
    std::fs::write(k.dir.path().join("ask.pk8"), &k.ask).unwrap();
    std::fs::write(k.dir.path().join("vcek.pk8"), &k.vcek).unwrap();
    k
}

fn device(k: &Keys) -> SimulatedSnp {
    let platform = SimPlatform {
        product: ironpact_snp::Product::Milan,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    };
    SimulatedSnp::new(platform, &k.ark, &k.ask, &k.vcek, 0, 4_000_000_000).unwrap()
}

/// The server's `sev_snp` attestor (beside the suites' default `join_token`).
fn server_plugins(k: &Keys, measurement: &[u8; 48]) -> Plugin {
    server_plugins_with(k, measurement, &[("fetch_vcek", false.into())])
}

fn server_plugins_with(k: &Keys, measurement: &[u8; 48], extra: &[(&str, Value)]) -> Plugin {
    let dev = device(k);
    let pem = |d: &[u8]| ironpact_spiffe::x509::certs_to_pem([d]);
    std::fs::write(k.dir.path().join("ark.pem"), pem(&dev.ark_der)).unwrap();
    std::fs::write(k.dir.path().join("ask.pem"), pem(&dev.ask_der)).unwrap();
    let mut p =
        Plugin::new("NodeAttestor", "sev_snp").set("measurements", vec![hex::encode(measurement)]);
    for (k, v) in extra {
        p = p.set(k, v.clone());
    }
    p.block(
        Block::new("test_roots")
            .set("product", "milan")
            .set("ark", k.dir.path().join("ark.pem"))
            .set("ask", k.dir.path().join("ask.pem")),
    )
}

fn agent_block(keys_dir: &Path, measurement: &[u8; 48], debug: bool) -> [Plugin; 1] {
    [Plugin::new("NodeAttestor", "sev_snp")
        .set("evidence_source", "simulated")
        .block(
            Block::new("simulated")
                .set("keys_dir", keys_dir)
                .set("measurement", hex::encode(measurement))
                .set("debug", debug),
        )]
}

/// One `sev_snp` attestation by hand: `answer` turns the server's nonce and our SPKI into evidence.
async fn attest_by_hand(
    addr: &str,
    roots: &[Vec<u8>],
    answer: impl Fn(&[u8], &[u8]) -> Vec<u8>,
) -> Result<ironpact_proto::server::v1::X509svid, tonic::Status> {
    support::attest_by_hand(addr, roots, "sev_snp", vec![], answer).await
}

fn evidence(dev: &SimulatedSnp, guest: &SimGuest, rd: [u8; 64]) -> Vec<u8> {
    let report = dev.report(guest, &rd).unwrap();
    ironpact_snp::binding::encode_evidence(
        &report,
        &CertTable::build(&[(GUID_VCEK, &dev.vcek_der)]),
    )
}

#[test]
fn sev_snp_attestation_end_to_end() {
    let k = keys();
    // a shifted clock for the server and the agent: renewals and expiry come by moving it
    let clock = TestClock::install();
    let s = TestServer::start_conf(Backend::Sqlite, |c| c.plugin(server_plugins(&k, &GOOD)));
    let a = TestAgent::start_custom(&s, None, agent_block(k.dir.path(), &GOOD, false), true);

    // the agent is attested with its measurement as a selector
    let agent_id = format!(
        "spiffe://example.org/spire/agent/sev_snp/{}",
        hex::encode([0x22u8; 32])
    );
    let shown = s.agent_show(&agent_id);
    let m = hex::encode(GOOD);
    assert!(shown.contains("Attestation type  : sev_snp"), "{shown}");
    assert!(
        shown.contains(&format!("sev_snp:measurement:{m}")),
        "{shown}"
    );
    assert!(shown.contains("sev_snp:policy:debug:false"), "{shown}");

    // a workload behind a node alias bound to the measurement gets its SVID
    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/confidential",
        "-selector",
        &format!("sev_snp:measurement:{m}"),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/secret-app",
        "-parentID",
        "spiffe://example.org/confidential",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/secret-app"),
        "{o:?}\n{}",
        a.log()
    );

    // refusals, each with its precise reason
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let dev = device(&k);
    let rt = runtime();
    rt.block_on(async {
        // another VM launch (its own report_id): the running agent's identity is not touched
        let good = SimGuest {
            measurement: GOOD,
            report_id: [0x66; 32],
            ..SimGuest::default()
        };
        let bad_m = SimGuest {
            measurement: [0x33; 48],
            report_id: [0x44; 32],
            ..SimGuest::default()
        };
        let dbg = SimGuest {
            policy: 0x30000 | (1 << 19),
            report_id: [0x55; 32],
            ..good.clone()
        };
        let cases: Vec<(&str, Box<Answer<'_>>)> = vec![
            (
                "measurement_not_allowed",
                Box::new(|n, k| evidence(&dev, &bad_m, ironpact_snp::binding::report_data(n, k))),
            ),
            (
                "debug_policy",
                Box::new(|n, k| evidence(&dev, &dbg, ironpact_snp::binding::report_data(n, k))),
            ),
            // a report made for another (earlier) nonce
            (
                "report_data_mismatch",
                Box::new(|_, k| {
                    evidence(&dev, &good, ironpact_snp::binding::report_data(&[9; 32], k))
                }),
            ),
            // a report bound to the right nonce but somebody else's key
            (
                "report_data_mismatch",
                Box::new(|n, _| {
                    evidence(
                        &dev,
                        &good,
                        ironpact_snp::binding::report_data(n, b"another key"),
                    )
                }),
            ),
            ("unparseable", Box::new(|_, _| vec![1, 2, 3])),
        ];
        for (want, answer) in cases {
            support::attest_refused(&addr, &roots, "sev_snp", vec![], answer, want).await;
        }
        // and the honest answer passes
        attest_by_hand(&addr, &roots, |n, k| {
            evidence(&dev, &good, ironpact_snp::binding::report_data(n, k))
        })
        .await
        .unwrap();
    });

    // tighten the allow-list at runtime: the agent's next renewal (at half-life of its 1 h
    // SVID) is refused. (From here the processes' time is ahead of this test's.)
    s.tighten(&m, &hex::encode([0x77u8; 48]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.log().contains("reloaded the sev_snp policy") {
        assert!(Instant::now() < deadline, "no reload:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    clock.advance(31 * 60);
    s.wait_refused(&a, "measurement_not_allowed");
    // the workload keeps its SVID while it is valid
    assert!(a.fetch_until_ok(&[]).ok(), "{}", a.log());
    // once every SVID has lapsed: a machine that does not pass gets no agent SVID, so it stops
    // being healthy, and says why; its workloads are never handed an expired SVID, and are told
    // why they get none
    clock.advance(30 * 60);
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.cli(&["healthcheck"]).ok() {
        assert!(
            Instant::now() < deadline,
            "agent still healthy after losing its identity:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // the operator sees why, and the machine gets nothing more
    let shown = s.agent_show(&agent_id);
    assert!(
        shown.contains("Attestation error : attestation rejected: measurement_not_allowed"),
        "{shown}"
    );
    // which field, the value seen, what the policy allows
    assert!(
        shown.contains(&format!(
            "measurement {m} (allowed: {})",
            hex::encode([0x77u8; 48])
        )),
        "{shown}"
    );
    // ... and as fields: in words, and in `-output json` as SPIRE operators script against
    assert!(
        shown.contains("Refusal kind      : measurement_not_allowed")
            && shown.contains("Differs           : measurement")
            && shown.contains(&format!("  seen            : {m}"))
            && shown.contains(&format!(
                "  allowed         : {}",
                hex::encode([0x77u8; 48])
            )),
        "{shown}"
    );
    let json = s
        .cli(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])
        .expect_ok()
        .json();
    let refusal = &json["attestation_refusal"];
    assert_eq!(refusal["kind"], "measurement_not_allowed", "{json}");
    assert_eq!(
        refusal["differences"],
        serde_json::json!([{
            "field": "measurement",
            "seen": m,
            "allowed": hex::encode([0x77u8; 48]),
        }]),
        "{json}"
    );
    // the server logged it as one line with the differences as a field
    assert!(
        s.log().lines().any(|l| l.contains("re-attestation refused")
            && l.contains(r#"differences=[{"field":"measurement""#)),
        "{}",
        s.log()
    );
    let log = a.log();
    assert!(
        !log.contains("presented an SVID that is not its current one"),
        "the agent was displaced, not refused:\n{log}"
    );
    // refused, not evicted: the agent keeps its key and tries to renew again
    assert!(log.contains("the server refused this agent"), "{log}");
    assert!(!log.contains("deleting its key"), "{log}");
    let health = a.cli(&["healthcheck"]);
    health.expect_error("the server refused this node");
    assert!(
        health.stderr.contains("measurement_not_allowed"),
        "{health:?}"
    );
    let o = a.cli(&["api", "fetch", "x509", "-timeout", "5"]);
    o.expect_error("the server refused this node");
    assert!(o.stderr.contains("measurement_not_allowed"), "{o:?}");
    // any local process reaches these: the kind only, never the agent's ID or evidence
    assert!(!o.stderr.contains("spire/agent") && !health.stderr.contains("spire/agent"));
}

#[test]
fn an_agent_with_a_disallowed_measurement_gets_nothing() {
    let k = keys();
    let s = TestServer::start_conf(Backend::Sqlite, |c| c.plugin(server_plugins(&k, &GOOD)));
    let a = TestAgent::start_custom(
        &s,
        None,
        agent_block(k.dir.path(), &[0x99; 48], false),
        false,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.log().contains("measurement_not_allowed") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // the agent's log and the server's name the field, the value seen and what is allowed
    let why = format!(
        "differs from the policy: measurement {} (allowed: {})",
        hex::encode([0x99u8; 48]),
        hex::encode(GOOD)
    );
    assert!(a.log().contains(&why), "{}", a.log());
    assert!(s.log().contains(&why), "{}", s.log());
    assert!(!a.cli(&["healthcheck"]).ok());
    assert!(
        s.cli(&["agent", "list"])
            .expect_ok()
            .stdout
            .contains("No attested agents found")
    );
}

/// A stand-in for AMD's KDS serving each body at its path (404 elsewhere); its base URL.
fn local_kds(files: Vec<(String, Vec<u8>)>) -> (String, Emulator) {
    let e = ironpact_testkit::kds::start(files).unwrap();
    (e.url().to_string(), e)
}

/// The KDS path of the simulated device's VCEK, composed by the test kit (not our client).
fn vcek_path(dev: &SimulatedSnp) -> String {
    ironpact_testkit::kds::vcek_path(
        dev.platform.product.name(),
        &hex::encode(dev.platform.chip_id),
        dev.platform.tcb,
    )
}

#[test]
fn the_server_fetches_a_missing_vcek_from_the_kds() {
    let k = keys();
    let dev = device(&k);
    let guest = SimGuest {
        measurement: GOOD,
        report_id: [0x77; 32],
        ..SimGuest::default()
    };
    let (base, _kds) = local_kds(vec![(vcek_path(&dev), dev.vcek_der.clone())]);
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(server_plugins_with(
            &k,
            &GOOD,
            &[("kds_base_url", (&base).into())],
        ))
    });
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let rt = runtime();
    rt.block_on(async {
        // evidence with no certificate table: the server must fetch the VCEK itself
        let bare = |n: &[u8], key: &[u8]| {
            dev.report(&guest, &ironpact_snp::binding::report_data(n, key))
                .unwrap()
        };
        let svid = attest_by_hand(&addr, &roots, bare).await.unwrap();
        assert!(svid.id.ends_with(&hex::encode([0x77u8; 32])), "{}", svid.id);
    });
    assert!(
        s.log().contains("fetching the VCEK from the AMD KDS"),
        "{}",
        s.log()
    );
}

#[test]
fn certificates_from_certs_dir_and_revocation_from_the_kds_crl() {
    let k = keys();
    let dev = device(&k);
    let guest = SimGuest {
        measurement: GOOD,
        report_id: [0x78; 32],
        ..SimGuest::default()
    };
    let bare = |n: &[u8], key: &[u8]| {
        dev.report(&guest, &ironpact_snp::binding::report_data(n, key))
            .unwrap()
    };
    // 1. No certificate in the evidence, no KDS: the VCEK comes from certs_dir (any file name,
    //    beside unrelated files).
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("README"), "not a certificate").unwrap();
    std::fs::write(
        certs.path().join("chip-5a.pem"),
        ironpact_spiffe::x509::certs_to_pem([dev.vcek_der.as_slice()]),
    )
    .unwrap();
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(server_plugins_with(
            &k,
            &GOOD,
            &[
                ("fetch_vcek", false.into()),
                ("certs_dir", certs.path().into()),
            ],
        ))
    });
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let rt = runtime();
    rt.block_on(async {
        attest_by_hand(&addr, &roots, bare).await.unwrap();
        // another chip's report finds no certificate there
        let other = SimulatedSnp::new(
            SimPlatform {
                chip_id: [0x6b; 64],
                ..dev.platform.clone()
            },
            &k.ark,
            &k.ask,
            &k.vcek,
            0,
            4_000_000_000,
        )
        .unwrap();
        let e = attest_by_hand(&addr, &roots, |n, key| {
            other
                .report(&guest, &ironpact_snp::binding::report_data(n, key))
                .unwrap()
        })
        .await
        .unwrap_err();
        assert!(e.message().contains("untrusted_chain"), "{e:?}");
        assert!(e.message().contains("certs_dir"), "{e:?}");
    });
    drop(s);

    // 2. check_crl: AMD's CRL from the KDS (cached until nextUpdate); a revoked VCEK is refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let crl_path = ironpact_testkit::kds::crl_path("Milan", false);
    let vcek_path = vcek_path(&dev);
    for (revoked, want) in [(vec![7u64], None), (vec![0u64], Some("revoked_cert"))] {
        let crl = dev.crl(&revoked, now - 60, now + 3600).unwrap();
        let (base, _kds) = local_kds(vec![
            (crl_path.clone(), crl),
            (vcek_path.clone(), dev.vcek_der.clone()),
        ]);
        let s = TestServer::start_conf(Backend::Sqlite, |c| {
            c.plugin(server_plugins_with(
                &k,
                &GOOD,
                &[("kds_base_url", (&base).into()), ("check_crl", true.into())],
            ))
        });
        let roots = s.bundle_roots();
        let addr = s.agent_addr();
        rt.block_on(async {
            let r = attest_by_hand(&addr, &roots, |n, key| {
                evidence(&dev, &guest, ironpact_snp::binding::report_data(n, key))
            })
            .await;
            match want {
                None => {
                    r.unwrap();
                }
                Some(kind) => {
                    let e = r.unwrap_err();
                    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
                    assert!(e.message().contains(kind), "{e:?}");
                }
            }
        });
        assert!(
            s.log().contains("fetching AMD's CRL from the KDS"),
            "{}",
            s.log()
        );
    }
}

#[test]
fn kds_down_during_renewal_leaves_the_node_attested() {
    let k = keys();
    let dev = device(&k);
    // one shifted clock for the server and the agent: time passes by moving it
    let clock = TestClock::install();
    let now = clock.now();
    // a CRL current for ten minutes: the renewal at half-life of the 1 h SVID needs the KDS
    let (base, kds) = local_kds(vec![(
        ironpact_testkit::kds::crl_path("Milan", false),
        dev.crl(&[7], now - 60, now + 600).unwrap(),
    )]);
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(server_plugins_with(
            &k,
            &GOOD,
            &[("kds_base_url", (&base).into()), ("check_crl", true.into())],
        ))
    });
    let a = TestAgent::start_custom(&s, None, agent_block(k.dir.path(), &GOOD, false), true);
    let agent_id = format!(
        "spiffe://example.org/spire/agent/sev_snp/{}",
        hex::encode([0x22u8; 32])
    );
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/steady",
        "-parentID",
        &agent_id,
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok(), "{}", a.log());

    // the KDS goes away; the CRL is past its nextUpdate when the renewal comes
    kds.set_availability(Availability::Dropping);
    clock.advance(31 * 60);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.log().contains("renewal could not be judged now") {
        assert!(
            Instant::now() < deadline,
            "no renewal during the outage:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = s.agent_show(&agent_id);
    assert!(!shown.contains("Attestation error"), "{shown}");
    // the workload is still served; the agent kept its key (no new attestation)
    let o = a.cli(&["api", "fetch", "x509", "-timeout", "5"]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/steady"),
        "{o:?}"
    );
    assert!(!a.log().contains("deleting its key"), "{}", a.log());
    assert!(a.dir.path().join("data/agent_key.pem").exists());

    // the KDS comes back with a current CRL: the next renewal passes
    let fresh = clock.now();
    kds.file(
        &ironpact_testkit::kds::crl_path("Milan", false),
        dev.crl(&[7], fresh - 60, fresh + 3600).unwrap(),
    );
    kds.set_availability(Availability::Up);
    let marks = s.log().matches("renewal=true").count();
    let deadline = Instant::now() + Duration::from_secs(40);
    while s.log().matches("renewal=true").count() <= marks {
        assert!(
            Instant::now() < deadline,
            "no renewal after the outage:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.fetch_until_ok(&[]).ok(), "{}", a.log());
}

fn telemetry(port: u16) -> Block {
    Block::new("telemetry").block(
        Block::new("Prometheus")
            .set("host", "127.0.0.1")
            .set("port", port.to_string()),
    )
}

/// Prometheus metrics (`telemetry { Prometheus { … } }`) of the server and the agent, scraped
/// and parsed by Prometheus' Python client (its OpenMetrics parser): before a refusal, after a
/// node with a disallowed measurement is refused, and after a tightened policy stops a renewal.
/// Each refusal is counted with its kind as a label, on the server and on the refused agent.
#[test]
fn metrics_before_and_after_an_attestation_refusal() {
    use support::{metric, scrape};
    let Some(py) = support::python_with_prometheus() else {
        return;
    };
    let k = keys();
    let clock = TestClock::install();
    let (sp, ap) = (support::free_port(), support::free_port());
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(server_plugins(&k, &GOOD)).top(telemetry(sp))
    });
    let a = TestAgent::start_conf(
        &s,
        s.port,
        None,
        agent_block(k.dir.path(), &GOOD, false),
        true,
        |c| c.top(telemetry(ap)),
    );
    let m = hex::encode(GOOD);
    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/snp-nodes",
        "-selector",
        &format!("sev_snp:measurement:{m}"),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/metered",
        "-parentID",
        "spiffe://example.org/snp-nodes",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok(), "{}", a.log());
    // a caller with no entry: counted by its status
    support::fetch_as_nobody(&a).expect_error("no identity issued");

    let accepted = [
        ("attestor", "sev_snp"),
        ("op", "attest"),
        ("outcome", "accepted"),
        ("kind", "none"),
    ];
    let before = scrape(&py, sp);
    let att = "ironpact_server_attestations_total";
    assert_eq!(metric(&before, att, &accepted), Some(1.0), "{before:#?}");
    assert_eq!(metric(&before, att, &[("outcome", "refused")]), None);
    assert!(
        metric(
            &before,
            "ironpact_server_svids_issued_total",
            &[("svid_type", "x509")]
        )
        .unwrap()
            >= 2.0,
        "the agent's SVID and the workload's"
    );
    assert_eq!(metric(&before, "ironpact_server_agents", &[]), Some(1.0));
    assert_eq!(metric(&before, "ironpact_server_entries", &[]), Some(2.0));
    let ca_expiry = metric(
        &before,
        "ironpact_server_x509_ca_expiry_timestamp_seconds",
        &[],
    );
    assert!(ca_expiry.unwrap() > clock.now() as f64);
    assert!(
        metric(
            &before,
            "ironpact_server_datastore_query_duration_seconds_count",
            &[("op", "create_entries")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{:?}",
        before
            .iter()
            .filter(|s| s.name.starts_with("ironpact_server_datastore"))
            .collect::<Vec<_>>()
    );
    assert!(
        metric(
            &before,
            "ironpact_server_agent_api_calls_total",
            &[("method", "AttestAgent"), ("code", "OK")]
        )
        .unwrap()
            >= 1.0
    );
    let agent = scrape(&py, ap);
    assert_eq!(
        metric(
            &agent,
            "ironpact_agent_attestations_total",
            &[("op", "attest"), ("outcome", "accepted")]
        ),
        Some(1.0),
        "{agent:#?}"
    );
    assert_eq!(metric(&agent, "ironpact_agent_refused", &[]), Some(0.0));
    assert_eq!(metric(&agent, "ironpact_agent_entries", &[]), Some(1.0));
    assert_eq!(metric(&agent, "ironpact_agent_x509_svids", &[]), Some(1.0));
    assert!(metric(&agent, "ironpact_agent_sync_lag_seconds", &[]).unwrap() < 60.0);
    assert!(metric(&agent, "ironpact_agent_svid_expiry_timestamp_seconds", &[]).is_some());
    // `api fetch` reads the first answer of the stream and closes it: the client cancelled
    assert!(
        metric(
            &agent,
            "ironpact_agent_workload_api_calls_total",
            &[("method", "FetchX509SVID"), ("code", "Cancelled")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{agent:#?}"
    );
    assert!(
        metric(
            &agent,
            "ironpact_agent_workload_api_calls_total",
            &[("method", "FetchX509SVID"), ("code", "PermissionDenied")]
        )
        .unwrap()
            >= 1.0,
        "{agent:#?}"
    );

    // a node with a measurement the policy does not allow: refused, counted with its kind
    let bad = TestAgent::start_custom(
        &s,
        None,
        agent_block(k.dir.path(), &[0x99; 48], false),
        false,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bad.log().contains("measurement_not_allowed") {
        assert!(Instant::now() < deadline, "no refusal:\n{}", bad.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = scrape(&py, sp);
    let refused = [
        ("attestor", "sev_snp"),
        ("op", "attest"),
        ("outcome", "refused"),
        ("kind", "measurement_not_allowed"),
    ];
    assert!(metric(&after, att, &refused).unwrap() >= 1.0, "{after:#?}");
    assert_eq!(metric(&after, att, &accepted), Some(1.0));
    assert_eq!(metric(&after, "ironpact_server_agents", &[]), Some(1.0));
    drop(bad);

    // a tightened policy stops the attested agent's next renewal: counted as a renewal
    // refusal on the server, and on the agent, which now reports itself refused
    s.tighten(&m, &hex::encode([0x77u8; 48]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.log().contains("reloaded the sev_snp policy") {
        assert!(Instant::now() < deadline, "no reload:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    clock.advance(31 * 60);
    s.wait_refused(&a, "measurement_not_allowed");
    let renewal = scrape(&py, sp);
    assert!(
        metric(
            &renewal,
            att,
            &[
                ("op", "renew"),
                ("outcome", "refused"),
                ("kind", "measurement_not_allowed")
            ]
        )
        .unwrap()
            >= 1.0,
        "{renewal:#?}"
    );
    let agent = scrape(&py, ap);
    assert_eq!(metric(&agent, "ironpact_agent_refused", &[]), Some(1.0));
    assert!(
        metric(
            &agent,
            "ironpact_agent_attestations_total",
            &[
                ("op", "renew"),
                ("outcome", "refused"),
                ("kind", "measurement_not_allowed")
            ]
        )
        .unwrap()
            >= 1.0,
        "{agent:#?}"
    );
}

/// The attestation claims travel with the identity: a workload on the simulated SEV-SNP node
/// gets an X509-SVID whose extension openssl shows and our parser reads back with the
/// evidence's measurement, `x509 inspect` and `api fetch x509` print it in words, and its
/// JWT-SVID has the `tee` claim (still accepted by the Rust spiffe crate); a workload of a
/// join_token-only node on the same server gets no claims.
#[test]
fn workload_svids_carry_the_attestation_claims() {
    use ironpact_spiffe::claims::{OID, from_certificate};
    let k = keys();
    let s = TestServer::start_conf(Backend::Sqlite, |c| c.plugin(server_plugins(&k, &GOOD)));
    let a = TestAgent::start_custom(&s, None, agent_block(k.dir.path(), &GOOD, false), true);
    let m = hex::encode(GOOD);
    let uid = my_uid().to_string();
    for args in [
        vec![
            "-node",
            "-spiffeID",
            "spiffe://example.org/snp-claims",
            "-selector",
        ],
        vec![
            "-parentID",
            "spiffe://example.org/snp-claims",
            "-spiffeID",
            "spiffe://example.org/attested-web",
            "-selector",
        ],
    ] {
        let sel = if args[0] == "-node" {
            format!("sev_snp:measurement:{m}")
        } else {
            format!("unix:uid:{uid}")
        };
        let mut full = vec!["entry", "create"];
        full.extend(args);
        full.push(&sel);
        s.cli(&full).expect_ok();
    }
    let dir = a.dir.path().join("claims");
    let fetched = a.fetch_until_ok(&["-write", dir.to_str().unwrap()]);
    assert!(fetched.ok(), "{}", a.log());
    assert!(
        fetched.stdout.contains("Attestation claims:")
            && fetched.stdout.contains(&format!("measurement:\t{m}")),
        "{}",
        fetched.stdout
    );
    let pem = std::fs::read_to_string(dir.join("svid.0.pem")).unwrap();
    let leaf = ironpact_spiffe::x509::certs_from_pem(&pem).unwrap()[0].clone();
    let c = from_certificate(&leaf)
        .unwrap()
        .expect("the SVID carries claims");
    assert_eq!(c.tee, "sev_snp");
    assert_eq!(c.measurement("measurement"), Some(&GOOD[..]));
    assert_eq!(c.signing_key, "vcek");
    assert!(!c.debug);
    assert_eq!(c.tcb_version, "bl=4,tee=0,snp=24,ucode=219");
    assert_eq!(c.policy_digest.len(), 32);
    // openssl shows the extension under its OID
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.join("svid.0.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(OID), "{text}");
    // and our CLI reads it from the file (no server needed)
    let inspect = |path: &std::path::Path, json: bool| {
        let mut cmd = std::process::Command::new(support::BIN);
        cmd.args(["x509", "inspect", "-path"]).arg(path);
        if json {
            cmd.args(["-output", "json"]);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let shown = inspect(&dir.join("svid.0.pem"), false);
    assert!(
        shown.contains("TEE:\t\t\tsev_snp") && shown.contains(&m),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&inspect(&dir.join("svid.0.pem"), true)).unwrap();
    assert_eq!(
        json["attestation_claims"]["measurements"]["measurement"],
        serde_json::json!(m)
    );

    // the JWT-SVID has the tee claim, and the Rust spiffe crate still takes it
    let endpoint = a.endpoint();
    let token = runtime().block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
            .await
            .unwrap();
        let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
        assert_eq!(
            jwt.spiffe_id().to_string(),
            "spiffe://example.org/attested-web"
        );
        let checked = client.validate_jwt_token("db", jwt.token()).await.unwrap();
        assert_eq!(
            checked.spiffe_id().to_string(),
            "spiffe://example.org/attested-web"
        );
        jwt.token().to_string()
    });
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["tee"]["type"], "sev_snp", "{claims}");
    assert_eq!(
        claims["tee"]["measurements"]["measurement"],
        serde_json::json!(m)
    );

    // an entry that opts out (-disableAttestationClaims): on the same attested node, its
    // SVIDs go without the extension and its JWT-SVIDs without the tee claim
    let shown = s
        .cli(&[
            "entry",
            "show",
            "-spiffeID",
            "spiffe://example.org/attested-web",
            "-output",
            "json",
        ])
        .json();
    let entry_id = shown["entries"][0]["id"].as_str().unwrap().to_string();
    s.cli(&[
        "entry",
        "update",
        "-entryID",
        &entry_id,
        "-parentID",
        "spiffe://example.org/snp-claims",
        "-spiffeID",
        "spiffe://example.org/attested-web",
        "-selector",
        &format!("unix:uid:{uid}"),
        "-disableAttestationClaims",
    ])
    .expect_ok();
    let shown = s
        .cli(&["entry", "show", "-entryID", &entry_id, "-output", "json"])
        .json();
    assert_eq!(
        shown["entries"][0]["disable_attestation_claims"],
        serde_json::json!(true),
        "{shown}"
    );
    let opted_out = a.dir.path().join("opted-out");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert!(
            a.fetch_until_ok(&["-write", opted_out.to_str().unwrap()])
                .ok()
        );
        let pem = std::fs::read_to_string(opted_out.join("svid.0.pem")).unwrap();
        let leaf = ironpact_spiffe::x509::certs_from_pem(&pem).unwrap()[0].clone();
        if from_certificate(&leaf).unwrap().is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the opted-out entry's SVID still carries claims:\n{}",
            a.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let token = runtime().block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
            .await
            .unwrap();
        let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
        jwt.token().to_string()
    });
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims.get("tee").is_none(), "{claims}");

    // a join_token-only node on the same server: its workload gets no claims
    let token = support::join_token(&s, "spiffe://example.org/plain-node");
    let b = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-parentID",
        "spiffe://example.org/plain-node",
        "-spiffeID",
        "spiffe://example.org/plain-web",
        "-selector",
        &format!("unix:uid:{uid}"),
    ])
    .expect_ok();
    let plain = b.dir.path().join("plain");
    assert!(b.fetch_until_ok(&["-write", plain.to_str().unwrap()]).ok());
    let pem = std::fs::read_to_string(plain.join("svid.0.pem")).unwrap();
    let leaf = ironpact_spiffe::x509::certs_from_pem(&pem).unwrap()[0].clone();
    assert_eq!(from_certificate(&leaf).unwrap(), None);
    let shown = inspect(&plain.join("svid.0.pem"), false);
    assert!(shown.contains("Attestation claims:\tnone"), "{shown}");
}
