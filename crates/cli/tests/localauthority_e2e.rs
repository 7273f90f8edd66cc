//! SPIRE's forced rotation, end to end: an operator prepares and activates new authorities,
//! taints the old ones (every SVID they signed is replaced at once: workload X509-SVIDs, the
//! agent's own SVID, cached JWT-SVIDs) and revokes them (gone from every bundle), with SPIRE's
//! commands, text output and `-output json` read by `jq`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::*;

/// The authority ID (authority key ID) that signed the workload SVID fetched now.
fn workload_signer(a: &TestAgent) -> String {
    let out = a.dir.path().join("svids");
    let o = a.fetch_until_ok(&["-write", out.to_str().unwrap()]);
    assert!(o.ok(), "{o:?}\n{}", a.log());
    signer_of_pem(&std::fs::read_to_string(out.join("svid.0.pem")).unwrap())
}

fn signer_of_pem(pem: &str) -> String {
    let der = ironpact_spiffe::x509::certs_from_pem(pem)
        .unwrap()
        .remove(0);
    ironpact_spiffe::x509::CertInfo::parse(&der)
        .unwrap()
        .authority_key_id
        .expect("SVIDs name their authority")
}

fn jwt_kid(a: &TestAgent) -> String {
    let o = a
        .cli(&["api", "fetch", "jwt", "-audience", "db"])
        .expect_ok()
        .stdout
        .clone();
    let token = o.lines().nth(1).unwrap().trim().to_string();
    jsonwebtoken::decode_header(&token).unwrap().kid.unwrap()
}

/// `jq -r <filter>` over a command's JSON output, as SPIRE's scripts read it.
fn jq(json: &str, filter: &str) -> String {
    use std::io::Write;
    let jq = which("jq").expect("jq is required (scripts/test.sh installs it)");
    let mut child = std::process::Command::new(jq)
        .args(["-r", filter])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jq {filter} failed on {json}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn forced_rotation_replaces_what_a_tainted_authority_signed() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host1");
    let a = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/me",
        "-parentID",
        "spiffe://example.org/host1",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();

    // show, as SPIRE prints it and as its scripts read it
    let shown = s
        .cli(&["localauthority", "x509", "show"])
        .expect_ok()
        .stdout
        .clone();
    assert!(
        shown.starts_with("Active X.509 authority:\n  Authority ID: ")
            && shown.contains("  Expires at: ")
            && shown
                .contains("\n\nPrepared X.509 authority:\n  No prepared X.509 authority found\n")
            && shown.ends_with("Old X.509 authority:\n  No old X.509 authority found\n"),
        "{shown}"
    );
    let json = s
        .cli(&["localauthority", "x509", "show", "-output", "json"])
        .expect_ok()
        .stdout
        .clone();
    let x1 = jq(&json, ".active.authority_id");
    assert_eq!(jq(&json, ".prepared"), "null");
    assert!(
        jq(&json, ".active.expires_at").parse::<i64>().is_ok(),
        "{json}"
    );
    let j1 = jq(
        &s.cli(&["localauthority", "jwt", "show", "-output", "json"])
            .expect_ok()
            .stdout,
        ".active.authority_id",
    );

    assert_eq!(workload_signer(&a), x1);
    let agent_svid = a.dir.path().join("data/agent_svid.pem");
    assert_eq!(
        signer_of_pem(&std::fs::read_to_string(&agent_svid).unwrap()),
        x1
    );
    assert_eq!(jwt_kid(&a), j1);

    // refusals name the fix and change nothing
    s.cli(&["localauthority", "x509", "taint"])
        .expect_error("-authorityID");
    s.cli(&["localauthority", "x509", "taint", "-authorityID", &x1])
        .expect_error("activate its successor first");
    s.cli(&["localauthority", "x509", "revoke", "-authorityID", &x1])
        .expect_error("only an old authority");
    s.cli(&["localauthority", "jwt", "activate", "-authorityID", &j1])
        .expect_error("localauthority jwt prepare");
    s.cli(&[
        "localauthority",
        "x509",
        "taint",
        "-authorityID",
        "feedface",
    ])
    .expect_error("localauthority x509 show");
    s.cli(&["upstreamauthority", "taint", "-subjectKeyID", &x1])
        .expect_error("no upstream authority");

    // prepare and activate, the way SPIRE's documentation scripts it
    let mut new_ids = Vec::new();
    for kind in ["x509", "jwt"] {
        let p = s
            .cli(&["localauthority", kind, "prepare", "-output", "json"])
            .expect_ok()
            .stdout
            .clone();
        let prepared = jq(&p, ".prepared_authority.authority_id");
        let shown = s
            .cli(&["localauthority", kind, "show", "-output", "json"])
            .expect_ok()
            .stdout
            .clone();
        assert_eq!(jq(&shown, ".prepared.authority_id"), prepared);
        let act = s
            .cli(&[
                "localauthority",
                kind,
                "activate",
                "-authorityID",
                &prepared,
            ])
            .expect_ok()
            .stdout
            .clone();
        let label = if kind == "x509" { "X.509" } else { "JWT" };
        assert!(
            act.starts_with(&format!(
                "Activated {label} authority:\n  Authority ID: {prepared}\n"
            )),
            "{act}"
        );
        new_ids.push(prepared);
    }
    let (x2, j2) = (new_ids[0].clone(), new_ids[1].clone());
    // nothing tainted yet: what the old authorities signed stays
    assert_eq!(workload_signer(&a), x1);

    // taint the old ones: the agent replaces everything they signed, without being asked
    let t = s
        .cli(&["localauthority", "x509", "taint", "-authorityID", &x1])
        .expect_ok()
        .stdout
        .clone();
    assert!(
        t.starts_with(&format!("Tainted X.509 authority:\n  Authority ID: {x1}\n")),
        "{t}"
    );
    let t = s
        .cli(&[
            "localauthority",
            "jwt",
            "taint",
            "-authorityID",
            &j1,
            "-output",
            "json",
        ])
        .expect_ok()
        .stdout
        .clone();
    assert_eq!(jq(&t, ".tainted_authority.authority_id"), j1);
    s.cli(&["localauthority", "x509", "taint", "-authorityID", &x1])
        .expect_error("already tainted");
    until("the workload SVID to be re-signed", || {
        workload_signer(&a) == x2
    });
    until("the agent SVID to be renewed", || {
        std::fs::read_to_string(&agent_svid).is_ok_and(|p| signer_of_pem(&p) == x2)
    });
    assert_eq!(
        jwt_kid(&a),
        j2,
        "a JWT-SVID of a tainted key was served from the cache"
    );
    let log = a.log();
    assert!(log.contains("the server tainted authorities"), "{log}");
    // the tainted authority is still trusted until revoked
    let pem = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");

    // revoke: out of the server's bundle and the workload's
    for (kind, id) in [("x509", &x1), ("jwt", &j1)] {
        let r = s
            .cli(&[
                "localauthority",
                kind,
                "revoke",
                "-authorityID",
                id,
                "-output",
                "json",
            ])
            .expect_ok()
            .stdout
            .clone();
        assert_eq!(&jq(&r, ".revoked_authority.authority_id"), id);
    }
    let pem = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1, "{pem}");
    until("the workload's bundle to drop the revoked CA", || {
        let out = a.dir.path().join("svids");
        a.fetch_until_ok(&["-write", out.to_str().unwrap()]).ok()
            && std::fs::read_to_string(out.join("bundle.0.pem"))
                .is_ok_and(|b| b.matches("BEGIN CERTIFICATE").count() == 1)
    });
    let shown = s
        .cli(&["localauthority", "x509", "show"])
        .expect_ok()
        .stdout
        .clone();
    assert!(shown.contains(&x2) && !shown.contains(&x1), "{shown}");
    // the agent still works against a server that no longer trusts x1
    assert_eq!(workload_signer(&a), x2);
    assert!(
        s.log().contains("operator revoked an authority"),
        "{}",
        s.log()
    );
}
