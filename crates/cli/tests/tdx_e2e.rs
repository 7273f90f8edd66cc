//! Intel TDX end to end, with the simulated TD quoting stack (test PKI, collateral signed by its
//! TCB signer) through the production verifier: a server whose join_token attestor requires a
//! `tdx` quote, an agent with the simulated source, a workload SVID behind a node alias bound to
//! `tdx:mrtd`; wrong MRTD, debug TD, replayed nonce, another key's REPORT_DATA and expired
//! collateral refused with their kinds; tightening the MRTD allow-list at runtime (SIGHUP) stops
//! the agent's renewals; the workload's SVID carries the TD's attestation claims (MRTD, RTMRs,
//! TCB status). And `NodeAttestor "tdx"` alone, with collateral fetched from a PCS
//! (loopback emulator), cached on disk and used after a restart while the PCS is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_tdx::simulate::{SimPlatform, SimTd, SimulatedTdx, TestPki, collateral};
use std::path::Path;
use std::time::{Duration, Instant};
use support::pcs::PcsEmulator;
use support::{
    Backend, Block, Plugin, TestAgent, TestClock, TestServer, join_token, my_uid, runtime,
};

const GOOD: [u8; 48] = [0x7d; 48];
const DAY: i64 = 86_400;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The test PKI for the agent's device and the server's root, and current collateral.
fn pki(dir: &Path) -> TestPki {
    let p = SimPlatform::default();
    let pki = TestPki::generate(&p, now() - 30 * DAY, now() + 365 * DAY).unwrap();
    support::write_tdx_pki(&pki, &dir.join("pki"));
    std::fs::create_dir_all(dir.join("collateral")).unwrap();
    let c = collateral(&pki, &p, now() - DAY, now() + 29 * DAY).unwrap();
    std::fs::write(dir.join("collateral/current.json"), c.to_json()).unwrap();
    pki
}

/// The agent's TDX evidence source: the simulated quoting stack with the test PKI, MRTD
/// `GOOD`, as the keys of `block` (`tdx { … }` or the tdx attestor's `plugin_data`).
fn simulated_source(dir: &Path, block: Block) -> Block {
    block.set("evidence_source", "simulated").block(
        Block::new("simulated")
            .set("pki_dir", dir.join("pki"))
            .set("mrtd", hex::encode(GOOD)),
    )
}

fn server_block(dir: &Path, mrtd: &[u8; 48]) -> Plugin {
    Plugin::new("NodeAttestor", "join_token").block(
        Block::new("tdx")
            .set("mrtds", vec![hex::encode(mrtd)])
            .set("test_root", dir.join("pki/root.pem"))
            .set("collateral_dir", dir.join("collateral")),
    )
}

#[test]
fn tdx_attestation_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.server("default_x509_svid_ttl", "20s")
            .plugin(server_block(dir.path(), &GOOD))
    });
    let token = join_token(&s, "spiffe://example.org/td-host");
    let a = TestAgent::start_custom(
        &s,
        Some(&token),
        [Plugin::new("NodeAttestor", "join_token")
            .block(simulated_source(dir.path(), Block::new("tdx")))],
        true,
    );
    let m = hex::encode(GOOD);
    let agents = s.cli(&["agent", "list"]).expect_ok().stdout.clone();
    let agent_id = agents
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.contains("/spire/agent/join_token/"))
        })
        .unwrap_or_else(|| panic!("{agents}"))
        .to_string();
    let shown = s.agent_show(&agent_id);
    for want in [
        format!("tdx:mrtd:{m}"),
        "tdx:tcb_status:UpToDate".into(),
        "tdx:attributes:debug:false".into(),
        format!("tdx:fmspc:{}", hex::encode(SimPlatform::default().fmspc)),
    ] {
        assert!(shown.contains(&want), "{want} missing:\n{shown}");
    }

    // a workload behind a node alias bound to the MRTD gets its SVID
    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/trusted-domain",
        "-selector",
        &format!("tdx:mrtd:{m}"),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/td-app",
        "-parentID",
        "spiffe://example.org/trusted-domain",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/td-app"),
        "{o:?}\n{}",
        a.log()
    );
    // its SVID carries what the TD quote proved: the attestation claims extension
    let files = dir.path().join("td-app");
    assert!(a.fetch_until_ok(&["-write", files.to_str().unwrap()]).ok());
    let pem = std::fs::read_to_string(files.join("svid.0.pem")).unwrap();
    let leaf = ironpact_spiffe::x509::certs_from_pem(&pem).unwrap()[0].clone();
    let c = ironpact_spiffe::claims::from_certificate(&leaf)
        .unwrap()
        .expect("the SVID carries claims");
    assert_eq!(
        (
            c.tee.as_str(),
            c.tcb_status.as_str(),
            c.signing_key.as_str(),
            c.debug
        ),
        ("tdx", "up_to_date", "pck", false)
    );
    assert_eq!(c.measurement("mrtd"), Some(&GOOD[..]));
    for r in ["rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam"] {
        assert_eq!(c.measurement(r).map(<[u8]>::len), Some(48), "{r}");
    }
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(files.join("svid.0.pem"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(ironpact_spiffe::claims::OID),
        "openssl does not show the extension"
    );

    // refusals, each with its kind; every attempt uses a fresh join token
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let dev = SimulatedTdx::new(&pki, SimPlatform::default()).unwrap();
    let good = SimTd::with_mrtd(GOOD);
    let bad = SimTd::with_mrtd([0x33; 48]);
    let debug = SimTd {
        debug: true,
        ..good.clone()
    };
    let rd = ironpact_tdx::binding::report_data;
    type Answer<'a> = dyn Fn(&[u8], &[u8]) -> Vec<u8> + 'a;
    let cases: Vec<(&str, Box<Answer<'_>>)> = vec![
        (
            "measurement_not_allowed",
            Box::new(|n, k| dev.quote(&bad, rd(n, k)).unwrap()),
        ),
        (
            "debug_td",
            Box::new(|n, k| dev.quote(&debug, rd(n, k)).unwrap()),
        ),
        // a quote made for an earlier nonce
        (
            "report_data_mismatch",
            Box::new(|_, k| dev.quote(&good, rd(&[9; 32], k)).unwrap()),
        ),
        // the right nonce, somebody else's key
        (
            "report_data_mismatch",
            Box::new(|n, _| dev.quote(&good, rd(n, b"another key")).unwrap()),
        ),
        ("unparseable", Box::new(|_, _| vec![4, 0, 2, 0])),
    ];
    let rt = runtime();
    rt.block_on(async {
        for (want, answer) in cases {
            let t = join_token(&s, "spiffe://example.org/intruder");
            support::attest_refused(&addr, &roots, "join_token", t.into_bytes(), answer, want)
                .await;
        }
        let t = join_token(&s, "spiffe://example.org/honest");
        support::attest_by_hand(&addr, &roots, "join_token", t.into_bytes(), |n, k| {
            dev.quote(&good, rd(n, k)).unwrap()
        })
        .await
        .unwrap();
    });

    // expired collateral: only a stale copy in collateral_dir
    let p = SimPlatform::default();
    let stale = collateral(&pki, &p, now() - 40 * DAY, now() - 10 * DAY).unwrap();
    let current = std::fs::read(dir.path().join("collateral/current.json")).unwrap();
    std::fs::remove_file(dir.path().join("collateral/current.json")).unwrap();
    std::fs::write(dir.path().join("collateral/stale.json"), stale.to_json()).unwrap();
    rt.block_on(async {
        let t = join_token(&s, "spiffe://example.org/stale");
        let e = support::attest_by_hand(&addr, &roots, "join_token", t.into_bytes(), |n, k| {
            dev.quote(&good, rd(n, k)).unwrap()
        })
        .await
        .unwrap_err();
        assert!(e.message().contains("collateral_expired"), "{e:?}");
    });
    std::fs::write(dir.path().join("collateral/current.json"), current).unwrap();

    // tighten the MRTD allow-list at runtime: the next renewal (20 s SVIDs) is refused
    s.tighten_until_refused(
        &m,
        &hex::encode([0x77u8; 48]),
        &a,
        "measurement_not_allowed",
    );
    assert!(s.log().contains("reloaded the tdx policy"), "{}", s.log());
    let shown = s.agent_show(&agent_id);
    assert!(shown.contains("measurement_not_allowed"), "{shown}");
}

fn agent_ids(s: &TestServer, kind: &str) -> Vec<String> {
    let list = s.cli(&["agent", "list"]).expect_ok().stdout.clone();
    list.split_whitespace()
        .filter(|w| w.contains(&format!("/spire/agent/{kind}/")))
        .map(str::to_string)
        .collect()
}

#[test]
fn standalone_tdx_attestor_with_collateral_from_a_pcs() {
    let dir = tempfile::tempdir().unwrap();
    let p = SimPlatform::default();
    let pki = TestPki::generate(&p, now() - 30 * DAY, now() + 365 * DAY).unwrap();
    support::write_tdx_pki(&pki, &dir.path().join("pki"));
    let pcs =
        PcsEmulator::serving(collateral(&pki, &p, now() - DAY, now() + 29 * DAY).unwrap()).unwrap();
    // one shifted clock for the server and the agent: renewals come by moving it, not waiting
    let clock = TestClock::install();
    let mut s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(
            Plugin::new("NodeAttestor", "tdx")
                .set("mrtds", vec![hex::encode(GOOD)])
                .set("test_root", dir.path().join("pki/root.pem"))
                .set("pcs_url", &pcs.url),
        )
    });
    assert!(
        s.log().contains("tdx attestor ready") && s.log().contains(&pcs.url),
        "{}",
        s.log()
    );
    let a = TestAgent::start_custom(
        &s,
        None,
        [Plugin {
            data: simulated_source(dir.path(), Block::new("plugin_data")),
            ..Plugin::new("NodeAttestor", "tdx")
        }],
        true,
    );
    let ids = agent_ids(&s, "tdx");
    assert_eq!(ids.len(), 1, "{ids:?}");
    let agent_id = ids[0].clone();
    let m = hex::encode(GOOD);
    let shown = s.agent_show(&agent_id);
    assert!(shown.contains(&format!("tdx:mrtd:{m}")), "{shown}");
    assert!(shown.contains("Attestation type  : tdx"), "{shown}");
    assert_eq!(pcs.requests().len(), 4, "{:?}", pcs.requests());

    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/tdx-nodes",
        "-selector",
        &format!("tdx:mrtd:{m}"),
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/tdx-app",
        "-parentID",
        "spiffe://example.org/tdx-nodes",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(o.stdout.contains("spiffe://example.org/tdx-app"), "{o:?}");

    // refusals by hand
    let dev = SimulatedTdx::new(&pki, p.clone()).unwrap();
    let rd = ironpact_tdx::binding::report_data;
    let rt = runtime();
    rt.block_on(async {
        let e = support::attest_by_hand(
            &s.agent_addr(),
            &s.bundle_roots(),
            "tdx",
            Vec::new(),
            |n, k| dev.quote(&SimTd::with_mrtd([0x33; 48]), rd(n, k)).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(e.message().contains("measurement_not_allowed"), "{e:?}");
    });

    // restart with the PCS down: the disk cache carries on
    pcs.set(|st| st.down = true);
    s.kill9();
    s.spawn();
    rt.block_on(async {
        let svid = support::attest_by_hand(
            &s.agent_addr(),
            &s.bundle_roots(),
            "tdx",
            Vec::new(),
            |n, k| dev.quote(&SimTd::with_mrtd(GOOD), rd(n, k)).unwrap(),
        )
        .await
        .unwrap();
        assert!(svid.id.contains("/spire/agent/tdx/"), "{}", svid.id);
        assert_ne!(svid.id, agent_id, "each attestation of a TD is a new agent");
    });
    assert_eq!(pcs.requests().len(), 4, "{:?}", pcs.requests());

    // (last: from here the processes' time is ahead of this test's, whose TLS checks would
    // refuse what they issue) renewal at half-life of the 1 h SVID presents a fresh quote and
    // keeps the agent's ID; the collateral comes from the cache (the PCS is still down)
    let renewed = |a: &TestAgent| a.log().matches("renewed the agent SVID").count();
    let fetch = |a: &TestAgent| {
        let o = a.fetch_until_ok(&[]);
        assert!(o.ok(), "{o:?}");
    };
    let agents = agent_ids(&s, "tdx");
    // the agent SVID's issuance, from its NotAfter (1 h SVIDs)
    let pem = std::fs::read_to_string(a.dir.path().join("data/agent_svid.pem")).unwrap();
    let der = ironpact_spiffe::x509::certs_from_pem(&pem)
        .unwrap()
        .remove(0);
    let issued = ironpact_spiffe::x509::CertInfo::parse(&der)
        .unwrap()
        .not_after
        - 3600;
    // two minutes before half-life: no renewal (a few of the agent's 1 s ticks are watched)
    clock.advance(issued + 28 * 60 - clock.now());
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(renewed(&a), 0, "renewed before half-life:\n{}", a.log());
    // past it: renewed once
    clock.advance(3 * 60);
    let deadline = Instant::now() + Duration::from_secs(20);
    while renewed(&a) == 0 {
        assert!(
            Instant::now() < deadline,
            "no renewal at half-life:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agent_ids(&s, "tdx"),
        agents,
        "the renewal made another agent"
    );
    assert!(agents.contains(&agent_id));
    fetch(&a);
    // once, not in a loop: ten minutes (and several ticks) later, still one
    clock.advance(10 * 60);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(renewed(&a), 1, "{}", a.log());
    fetch(&a);
    assert_eq!(pcs.requests().len(), 4, "{:?}", pcs.requests());
    drop(a);
}
