//! The operator's round trip through the real binary, on SQLite and on PostgreSQL:
//! healthcheck, entries, minting (checked by openssl and PyJWT), tokens, bundles, and
//! invalid input rejected with exit code 1 and a message naming the problem.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Backend, Block, Plugin, ServerConf, TestServer, openssl_verify, python_with_pyjwt};

#[test]
fn sqlite_round_trip() {
    round_trip(TestServer::start(Backend::Sqlite));
}

#[test]
fn postgres_round_trip() {
    if let Some(b) = Backend::postgres() {
        round_trip(TestServer::start(b));
    }
}

#[test]
fn sqlite_invalid_input() {
    invalid_input(TestServer::start(Backend::Sqlite));
}

#[test]
fn postgres_invalid_input() {
    if let Some(b) = Backend::postgres() {
        invalid_input(TestServer::start(b));
    }
}

fn round_trip(s: TestServer) {
    // the admin socket is not world-accessible
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o770, "admin socket mode");
    // kebab-case spellings work as well as SPIRE's
    s.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/kebab",
        "--parent-id",
        "spiffe://example.org/host",
        "--selector",
        "k:v",
    ])
    .expect_ok();
    let kebab = s
        .cli(&[
            "entry",
            "show",
            "--spiffe-id",
            "spiffe://example.org/kebab",
            "-output",
            "json",
        ])
        .json();
    let kebab_id = kebab["entries"][0]["id"].as_str().unwrap();
    s.cli(&["entry", "delete", "--entry-id", kebab_id])
        .expect_ok();
    assert!(
        s.cli(&["healthcheck"])
            .expect_ok()
            .stdout
            .contains("Server is healthy.")
    );

    // create / show / update / delete
    let created = s
        .cli(&[
            "entry",
            "create",
            "-spiffeID",
            "spiffe://example.org/web",
            "-parentID",
            "spiffe://example.org/host",
            "-selector",
            "unix:uid:1000",
            "-selector",
            "unix:gid:1000",
            "-dns",
            "web.example.org",
            "-x509SVIDTTL",
            "600",
            "-hint",
            "web",
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    let entry = &created["results"][0]["entry"];
    let id = entry["id"].as_str().unwrap().to_string();
    // SPIRE's protojson: IDs as {trust_domain, path}, int32 as numbers, int64 as strings
    assert_eq!(
        entry["spiffe_id"],
        serde_json::json!({"trust_domain": "example.org", "path": "/web"})
    );
    assert_eq!(entry["x509_svid_ttl"], 600);
    assert_eq!(entry["revision_number"], "0");
    assert_eq!(entry["expires_at"], "0");
    assert_eq!(created["results"][0]["status"]["code"], 0);

    let shown = s
        .cli(&["entry", "show", "-entryID", &id])
        .expect_ok()
        .stdout
        .clone();
    assert!(shown.contains("Found 1 entry"), "{shown}");
    assert!(
        shown.contains("SPIFFE ID        : spiffe://example.org/web"),
        "{shown}"
    );
    assert!(
        shown.contains("Selector         : unix:uid:1000"),
        "{shown}"
    );
    assert!(
        shown.contains("DNS name         : web.example.org"),
        "{shown}"
    );

    // SPIRE's update replaces the whole entry: the fields it needs must be given, and a
    // field whose flag is absent is cleared
    s.cli(&["entry", "update", "-entryID", &id, "-jwtSVIDTTL", "5m"])
        .expect_error("-spiffeID");
    let before = s
        .cli(&["entry", "show", "-entryID", &id, "-output", "json"])
        .expect_ok()
        .json();
    assert_eq!(before["next_page_token"], "");
    let before = &before["entries"][0];
    let id_of = |v: &serde_json::Value| {
        format!(
            "spiffe://{}{}",
            v["trust_domain"].as_str().unwrap(),
            v["path"].as_str().unwrap()
        )
    };
    let (spiffe_id, parent_id) = (id_of(&before["spiffe_id"]), id_of(&before["parent_id"]));
    let updated = s
        .cli(&[
            "entry",
            "update",
            "-entryID",
            &id,
            "-spiffeID",
            &spiffe_id,
            "-parentID",
            &parent_id,
            "-selector",
            "unix:uid:1001",
            "-jwtSVIDTTL",
            "5m",
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    let e = &updated["results"][0]["entry"];
    assert_eq!(e["revision_number"], "1");
    assert_eq!(e["jwt_svid_ttl"], 300);
    assert_eq!(
        e["x509_svid_ttl"], 0,
        "a field not given is cleared (the server default applies)"
    );
    assert_eq!(
        e["dns_names"],
        serde_json::json!([]),
        "-dns not given: cleared"
    );
    // -data: entries with their IDs, replaced whole too
    let data = tempfile::NamedTempFile::new().unwrap();
    let update_with = |v: serde_json::Value| {
        std::fs::write(data.path(), serde_json::json!({"entries": [v]}).to_string()).unwrap();
        s.cli(&[
            "entry",
            "update",
            "-data",
            data.path().to_str().unwrap(),
            "-output",
            "json",
        ])
    };
    let base = serde_json::json!({
        "id": id,
        "spiffe_id": before["spiffe_id"],
        "parent_id": before["parent_id"],
        "selectors": [{"type": "unix", "value": "uid:1001"}],
    });
    let mut v = base.clone();
    v["hint"] = serde_json::json!("via-data");
    let u = update_with(v).expect_ok().json();
    assert_eq!(u["results"][0]["entry"]["hint"], "via-data");
    assert_eq!(u["results"][0]["entry"]["jwt_svid_ttl"], 0);
    // int64 fields as SPIRE's JSON writes them (strings) are read, a typo is refused, and
    // field flags do not mix with -data
    let mut v = base.clone();
    v["expires_at"] = serde_json::json!("1900000000");
    let u = update_with(v).expect_ok().json();
    assert_eq!(u["results"][0]["entry"]["expires_at"], "1900000000");
    let mut v = base.clone();
    v["expires_ta"] = serde_json::json!(1);
    update_with(v).expect_error("unknown key \"expires_ta\"");
    std::fs::write(
        data.path(),
        serde_json::json!({"entries": [base]}).to_string(),
    )
    .unwrap();
    s.cli(&[
        "entry",
        "update",
        "-data",
        data.path().to_str().unwrap(),
        "-x509SVIDTTL",
        "60",
    ])
    .expect_error("exclude each other");
    s.cli(&[
        "entry",
        "update",
        "-entryID",
        &id,
        "-selector",
        "unix:uid:1001",
    ])
    .expect_error("-spiffeID");
    assert_eq!(
        e["selectors"],
        serde_json::json!([{"type": "unix", "value": "uid:1001"}])
    );
    let found = s
        .cli(&[
            "entry",
            "show",
            "-selector",
            "unix:uid:1001",
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    assert_eq!(found["entries"].as_array().unwrap().len(), 1);
    assert!(
        s.cli(&["entry", "count"])
            .expect_ok()
            .stdout
            .contains("1 registration entry")
    );
    assert!(
        s.cli(&["entry", "delete", "-entryID", &id])
            .expect_ok()
            .stdout
            .contains(&format!("Deleted entry with ID: {id}"))
    );
    s.cli(&["entry", "show", "-entryID", &id])
        .expect_error("not found");

    // entries from a SPIRE-style -data file
    let data = s.path("entries.json");
    std::fs::write(
        &data,
        r#"{"entries": [
            {"spiffe_id": "spiffe://example.org/a", "parent_id": "spiffe://example.org/host",
             "selectors": [{"type": "unix", "value": "uid:1"}], "x509_svid_ttl": 120, "admin": true},
            {"spiffe_id": {"trust_domain": "example.org", "path": "/b"}, "parent_id": "spiffe://example.org/host",
             "selectors": [{"type": "unix", "value": "uid:2"}], "dns_names": ["b.example.org"]}
        ]}"#,
    )
    .unwrap();
    s.cli(&["entry", "create", "-data", data.to_str().unwrap()])
        .expect_ok();
    let all = s
        .cli(&[
            "entry",
            "show",
            "-parentID",
            "spiffe://example.org/host",
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 2);

    // x509 mint, verified by openssl against `bundle show`
    let out = s.path("mint");
    s.cli(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/minted",
        "-dns",
        "m.example.org",
        "-ttl",
        "1h",
        "-write",
        out.to_str().unwrap(),
    ])
    .expect_ok();
    let bundle_pem = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    let bundle_file = s.path("bundle-show.pem");
    std::fs::write(&bundle_file, &bundle_pem).unwrap();
    let v = openssl_verify(&bundle_file, &out.join("svid.pem"));
    assert!(
        v.ok() && v.stdout.contains(": OK"),
        "openssl verify failed: {v:?}"
    );
    let pem_text = std::fs::read_to_string(out.join("svid.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        sans,
        ["URI(spiffe://example.org/minted)", "DNSName(m.example.org)"]
    );
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life, 3600 + 10, "1h plus the 10 s backdate");
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(out.join("bundle.pem").exists());

    // jwt mint, verified by PyJWT against the SPIFFE bundle's JWKS
    let token = s
        .cli(&[
            "jwt",
            "mint",
            "-spiffeID",
            "spiffe://example.org/minted",
            "-audience",
            "db",
            "-ttl",
            "120",
        ])
        .expect_ok()
        .stdout
        .trim()
        .to_string();
    let jwks = s
        .cli(&["bundle", "show", "-format", "spiffe"])
        .expect_ok()
        .stdout
        .clone();
    let jwks_file = s.path("bundle.jwks");
    std::fs::write(&jwks_file, &jwks).unwrap();
    if let Some(py) = python_with_pyjwt() {
        let script = r#"
import json, sys, jwt
jwks = json.load(open(sys.argv[1]))
keys = {k["kid"]: k for k in jwks["keys"] if k.get("use") == "jwt-svid"}
header = jwt.get_unverified_header(sys.argv[2])
assert header["typ"] == "JWT", header
key = jwt.PyJWK(keys[header["kid"]]).key
claims = jwt.decode(sys.argv[2], key, algorithms=["ES256"], audience="db")
assert claims["sub"] == "spiffe://example.org/minted", claims
assert claims["exp"] - claims["iat"] == 120, claims
try:
    jwt.decode(sys.argv[2], key, algorithms=["ES256"], audience="other")
    raise SystemExit("wrong audience accepted")
except jwt.InvalidAudienceError:
    pass
print("pyjwt ok")
"#;
        let o = std::process::Command::new(py)
            .args(["-c", script])
            .arg(&jwks_file)
            .arg(&token)
            .output()
            .unwrap();
        let o = support::Out::from(o);
        assert!(
            o.ok() && o.stdout.contains("pyjwt ok"),
            "PyJWT rejected the JWT-SVID: {o:?}"
        );
    }

    // join token with a node alias, as SPIRE registers it
    let tok = s
        .cli(&[
            "token",
            "generate",
            "-spiffeID",
            "spiffe://example.org/node1",
            "-ttl",
            "600",
        ])
        .expect_ok()
        .stdout
        .clone();
    let token = tok
        .trim()
        .strip_prefix("Token: ")
        .expect("Token: line")
        .to_string();
    let alias = s
        .cli(&[
            "entry",
            "show",
            "-parentID",
            &format!("spiffe://example.org/spire/agent/join_token/{token}"),
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    assert_eq!(
        alias["entries"][0]["spiffe_id"],
        serde_json::json!({"trust_domain": "example.org", "path": "/node1"})
    );

    // agents: none yet
    assert!(
        s.cli(&["agent", "list"])
            .expect_ok()
            .stdout
            .contains("No attested agents found")
    );
    assert!(
        s.cli(&["agent", "count"])
            .expect_ok()
            .stdout
            .contains("0 attested agents")
    );
    s.cli(&[
        "agent",
        "show",
        "-spiffeID",
        "spiffe://example.org/spire/agent/join_token/x",
    ])
    .expect_error("not found");

    // federated bundles
    let fed = s.path("fed.pem");
    std::fs::write(&fed, other_org_ca_pem()).unwrap();
    assert!(
        s.cli(&[
            "bundle",
            "set",
            "-id",
            "spiffe://other.org",
            "-path",
            fed.to_str().unwrap()
        ])
        .expect_ok()
        .stdout
        .contains("bundle set.")
    );
    let list = s.cli(&["bundle", "list"]).expect_ok().stdout.clone();
    assert!(
        list.contains("* other.org") && list.contains("BEGIN CERTIFICATE"),
        "{list}"
    );
    let one = s
        .cli(&["bundle", "list", "-id", "other.org", "-format", "spiffe"])
        .expect_ok()
        .stdout
        .clone();
    assert!(one.contains("\"x509-svid\""), "{one}");
    // an entry federating with it: restrict (the default) refuses, dissociate drops the
    // trust domain from the entry, delete deletes the entry
    let fed_entry = |name: &str| {
        s.cli(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://example.org/{name}"),
            "-parentID",
            "spiffe://example.org/host",
            "-selector",
            "unix:uid:4242",
            "-federatesWith",
            "spiffe://other.org",
            "-output",
            "json",
        ])
        .expect_ok()
        .json()["results"][0]["entry"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let kept = fed_entry("fed-kept");
    s.cli(&["bundle", "delete", "-id", "spiffe://other.org"])
        .expect_error("-mode dissociate");
    assert!(
        s.cli(&[
            "bundle",
            "delete",
            "-id",
            "spiffe://other.org",
            "-mode",
            "dissociate"
        ])
        .expect_ok()
        .stdout
        .contains("bundle deleted.")
    );
    let e = s
        .cli(&["entry", "show", "-entryID", &kept, "-output", "json"])
        .expect_ok()
        .json();
    assert_eq!(e["entries"][0]["federates_with"], serde_json::json!([]));
    s.cli(&[
        "bundle",
        "set",
        "-id",
        "spiffe://other.org",
        "-path",
        fed.to_str().unwrap(),
    ])
    .expect_ok();
    let gone = fed_entry("fed-gone");
    s.cli(&[
        "bundle",
        "delete",
        "-id",
        "spiffe://other.org",
        "-mode",
        "delete",
    ])
    .expect_ok();
    s.cli(&["entry", "show", "-entryID", &gone])
        .expect_error("not found");
    s.cli(&["entry", "delete", "-entryID", &kept]).expect_ok();
    s.cli(&["bundle", "delete", "-id", "spiffe://other.org"])
        .expect_error("not found");
    // the server's own bundle also round-trips through the SPIFFE format
    s.cli(&[
        "bundle",
        "set",
        "-id",
        "third.org",
        "-format",
        "spiffe",
        "-path",
        jwks_file.to_str().unwrap(),
    ])
    .expect_ok();
    // server still healthy after all of that
    s.cli(&["healthcheck"]).expect_ok();
}

fn other_org_ca_pem() -> String {
    use ironpact_spiffe::x509::{CaSubject, certs_to_pem, random_serial, self_signed_ca};
    let td = ironpact_spiffe::TrustDomain::new("other.org").unwrap();
    let key = ironpact_spiffe::PrivateKey::generate(ironpact_spiffe::KeyType::EcP256).unwrap();
    let der = self_signed_ca(
        &key,
        &td,
        &CaSubject::default(),
        random_serial(),
        0,
        4_000_000_000,
    )
    .unwrap();
    certs_to_pem([der.as_slice()])
}

fn invalid_input(s: TestServer) {
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/w",
        "-parentID",
        "spiffe://example.org/h",
        "-selector",
        "unix:uid:1",
    ])
    .expect_ok();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unix:uid:1",
            ],
            "already exists",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w/",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unix:uid:1",
            ],
            "trailing slash",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "http://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unix:uid:1",
            ],
            "scheme",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/a/../b",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unix:uid:1",
            ],
            "'..'",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/a%20b",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unix:uid:1",
            ],
            "path segments",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://other.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unix:uid:1",
            ],
            "not a member of trust domain",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "unixuid",
            ],
            "type:value",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
            ],
            "selector is required",
        ),
        (
            &[
                "entry",
                "create",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "a:b",
            ],
            "-spiffeID",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-selector",
                "a:b",
            ],
            "-parentID",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "a:b",
                "-x509SVIDTTL",
                "ten",
            ],
            "x509SVIDTTL",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "a:b",
                "-dns",
                "bad name",
            ],
            "DNS name",
        ),
        (
            &[
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/h",
                "-selector",
                "a:b",
                "-federatesWith",
                "example.org",
            ],
            "own trust domain",
        ),
        (
            &["entry", "create", "-bogusFlag", "x"],
            "unexpected argument",
        ),
        (&["entry", "update", "-selector", "a:b"], "-entryID"),
        (
            &[
                "entry",
                "update",
                "-entryID",
                "nope",
                "-spiffeID",
                "spiffe://example.org/x",
                "-parentID",
                "spiffe://example.org/y",
                "-selector",
                "a:b",
            ],
            "not found",
        ),
        (&["entry", "delete", "-entryID", "nope"], "not found"),
        (&["entry", "show", "-entryID", "nope"], "not found"),
        (
            &["x509", "mint", "-spiffeID", "spiffe://other.org/x"],
            "not a member",
        ),
        (
            &[
                "x509",
                "mint",
                "-spiffeID",
                "spiffe://example.org/x",
                "-ttl",
                "-5",
            ],
            "unexpected argument",
        ),
        (
            &["jwt", "mint", "-spiffeID", "spiffe://example.org/x"],
            "audience",
        ),
        (&["token", "generate", "-ttl", "0"], "-ttl must be positive"),
        (
            &["token", "generate", "-spiffeID", "spiffe://other.org/n"],
            "not a member",
        ),
        (
            &["bundle", "set", "-id", "example.org", "-path", "/dev/null"],
            "no CERTIFICATE",
        ),
        (
            &["bundle", "list", "-id", "nowhere.org"],
            "no federated bundle",
        ),
        (
            &[
                "agent",
                "ban",
                "-spiffeID",
                "spiffe://example.org/spire/agent/x",
            ],
            "not found",
        ),
        (&["agent", "evict"], "-spiffeID"),
        (
            &["healthcheck", "-socketPath", "/nonexistent/api.sock"],
            "cannot reach",
        ),
    ];
    for (args, want) in cases {
        let o = s.cli(args);
        assert_eq!(o.code, 1, "{args:?} should fail: {o:?}");
        o.expect_error(want);
    }
    // own-trust-domain bundle is refused by the server, with a valid PEM
    let pem = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    let f = s.path("own.pem");
    std::fs::write(&f, pem).unwrap();
    s.cli(&[
        "bundle",
        "set",
        "-id",
        "example.org",
        "-path",
        f.to_str().unwrap(),
    ])
    .expect_error("own trust domain");
    s.cli(&["healthcheck"]).expect_ok();
}

/// `validate` builds the node attestors as `run` does: a file they need that is missing fails
/// it, naming the file (it used to pass, and `run` then refused the same configuration).
#[test]
fn validate_reads_what_the_attestors_need() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ark.pem");
    let validate = |attestor: Plugin| {
        let conf = dir.path().join("attestors.conf");
        ServerConf::new("example.org")
            .server("data_dir", dir.path())
            .plugin(Plugin::new("DataStore", "sql"))
            .plugin(Plugin::new("KeyManager", "memory"))
            .plugin(attestor)
            .write(&conf)
            .unwrap();
        support::Out::from(
            std::process::Command::new(support::BIN)
                .args(["validate", "-config"])
                .arg(&conf)
                .output()
                .unwrap(),
        )
    };
    let snp = Plugin::new("NodeAttestor", "join_token").block(
        Block::new("sev_snp")
            .set("measurements", vec!["ab".repeat(48)])
            .set("fetch_vcek", false)
            .block(
                Block::new("test_roots")
                    .set("product", "milan")
                    .set("ark", &missing)
                    .set("ask", &missing),
            ),
    );
    validate(snp).expect_error(&missing.display().to_string());
    let aws = Plugin::new("NodeAttestor", "aws_iid").set("certificates_path", &missing);
    validate(aws).expect_error("aws_iid");
    // the join_token attestor alone needs nothing but the datastore: valid
    let o = validate(Plugin::new("NodeAttestor", "join_token"));
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );
    // validate creates nothing: a TDX collateral cache that is not there yet stays so
    let cache = dir.path().join("not-yet").join("cache");
    let tdx = Plugin::new("NodeAttestor", "tdx")
        .set("mrtds", vec!["ab".repeat(48)])
        .set("pcs_url", "https://127.0.0.1:1/")
        .set("collateral_cache_dir", &cache);
    let o = validate(tdx);
    assert!(o.ok(), "{o:?}");
    assert!(!dir.path().join("not-yet").exists());
}

/// `validate` lists every problem of a file in one run, each at its line with the fix, SPIRE
/// style changes and ordinary errors together (the agent's validate too).
#[test]
fn validate_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        r#"server {
    bind_port = "eighty"
    trust_domain = "example.org"
    log_level = "LOUD"
    colour = "blue"
    federation {
        federates_with "b.test" {
            bundle_endpoint_url = "http://b.test/"
        }
    }
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "oracle"
        }
    }
    UpstreamAuthority "vault" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
"#,
    )
    .unwrap();
    let o = server_cmd(&["validate", "-config", conf.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{o:?}");
    let c = conf.display();
    let first = o.stderr.lines().next().unwrap();
    assert!(
        first.contains("6 problems, each below with its line and the fix"),
        "{o:?}"
    );
    for want in [
        format!("{c}:2: server.bind_port"),
        format!("{c}:4: server.log_level \"LOUD\""),
        format!("{c}:5: unknown key \"colour\""),
        format!("{c}:8: bundle_endpoint_url"),
        format!("{c}:13: database_type \"oracle\""),
        "UpstreamAuthority".to_string(),
    ] {
        assert!(o.stderr.contains(&want), "{want}: {}", o.stderr);
    }
    // the agent's validate does the same
    let conf = dir.path().join("agent.conf");
    std::fs::write(
        &conf,
        "agent {\n  trust_domain = \"example.org\"\n  server_port = \"x\"\n  sync_interval = \"5s\"\n  colour = 1\n  server_address = \"127.0.0.1\"\n  insecure_bootstrap = true\n}\nplugins {\n  KeyManager \"memory\" {}\n  NodeAttestor \"join_token\" {}\n  WorkloadAttestor \"unix\" {}\n}\n",
    )
    .unwrap();
    let o = support::Out::from(
        std::process::Command::new(support::AGENT_BIN)
            .args(["validate", "-config"])
            .arg(&conf)
            .output()
            .unwrap(),
    );
    assert_eq!(o.code, 1, "{o:?}");
    for want in ["3 problems", ":3: ", ":4: ", ":5: "] {
        assert!(o.stderr.contains(want), "{want}: {}", o.stderr);
    }
}

#[test]
fn validate_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(
        &conf,
        "server {\n  trust_domain = \"example.org\"\n  bind_prot = 8081\n}\nplugins {\n  DataStore \"sql\" {}\n  KeyManager \"memory\" {}\n}\n",
    )
    .unwrap();
    let o = support::Out::from(
        std::process::Command::new(support::BIN)
            .args(["validate", "-config"])
            .arg(&conf)
            .output()
            .unwrap(),
    );
    o.expect_error(&format!("{}:3: unknown key \"bind_prot\"", conf.display()));
    let o = support::Out::from(
        std::process::Command::new(support::BIN)
            .args(["validate", "-config", "../../conf/server/server.conf"])
            .output()
            .unwrap(),
    );
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );
}

fn server_cmd(args: &[&str]) -> support::Out {
    support::Out::from(
        std::process::Command::new(support::BIN)
            .args(args)
            .output()
            .unwrap(),
    )
}

/// `run` reads every file its attestors need before it creates anything: a missing test root
/// stops it with the fix, and no data directory, datastore or CA key is left behind.
#[test]
fn run_refuses_a_missing_file_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let conf = dir.path().join("server.conf");
    ServerConf::new("example.org")
        .server("data_dir", &data)
        .server("socket_path", dir.path().join("api.sock"))
        .server("bind_port", "0")
        .plugin(Plugin::new("DataStore", "sql"))
        .plugin(Plugin::new("KeyManager", "disk"))
        .plugin(
            Plugin::new("NodeAttestor", "join_token").block(
                Block::new("tdx")
                    .set("mrtds", vec!["ab".repeat(48)])
                    .set("collateral_dir", dir.path())
                    .set("test_root", dir.path().join("missing-root.pem")),
            ),
        )
        .write(&conf)
        .unwrap();
    for cmd in ["validate", "run"] {
        let o = server_cmd(&[cmd, "-config", conf.to_str().unwrap()]);
        o.expect_error("ironpact-server fixtures tdx");
        assert!(
            o.stderr.contains("its tdx block: test_root"),
            "{cmd}: {o:?}"
        );
    }
    assert!(
        !data.exists(),
        "run created {} before failing",
        data.display()
    );
}

/// The bare binary and a bare command group print their usage (exit 1); help spells flags
/// with one dash, as the docs do, and says the other spellings work.
#[test]
fn usage_and_help() {
    let o = server_cmd(&[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("Usage: ironpact-server <COMMAND>"),
        "{o:?}"
    );
    assert!(o.stderr.contains("fixtures"), "{o:?}");
    let o = server_cmd(&["entry"]);
    assert!(
        o.code == 1 && o.stderr.contains("Usage: ironpact-server entry <COMMAND>"),
        "{o:?}"
    );
    let o = server_cmd(&["entry", "create", "-h"]);
    o.expect_ok();
    assert!(o.stdout.contains(" -spiffeID <SPIFFE_ID>"), "{o:?}");
    assert!(o.stdout.contains("--spiffe-id"), "{o:?}");
    assert!(o.stdout.contains("Flags take one dash or two"), "{o:?}");
    let o = support::Out::from(
        std::process::Command::new(support::AGENT_BIN)
            .output()
            .unwrap(),
    );
    assert!(
        o.code == 1 && o.stderr.contains("Usage: ironpact-agent <COMMAND>"),
        "{o:?}"
    );
}

/// `fixtures snp|tdx` write private test keys once (no silent overwrite), with the config
/// blocks that use them; the blocks validate as a server config.
#[test]
fn fixtures_write_private_test_keys_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let snp = dir.path().join("snp");
    let o = server_cmd(&[
        "fixtures",
        "snp",
        "-dir",
        snp.to_str().unwrap(),
        "-output",
        "json",
    ]);
    o.expect_ok();
    let j = o.json();
    assert_eq!(j["test_only"], true);
    for f in ["ark.pk8", "ask.pk8", "vcek.pk8"] {
        let mode = std::fs::metadata(snp.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let mode = std::fs::metadata(&snp).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    server_cmd(&["fixtures", "snp", "-dir", snp.to_str().unwrap()]).expect_error("-force");
    let vlek = dir.path().join("vlek");
    server_cmd(&["fixtures", "snp", "-dir", vlek.to_str().unwrap(), "-vlek"]).expect_ok();
    assert!(vlek.join("asvk.pem").exists() && vlek.join("vlek.pk8").exists());
    let tdx = dir.path().join("tdx");
    let t = server_cmd(&[
        "fixtures",
        "tdx",
        "-dir",
        tdx.to_str().unwrap(),
        "-output",
        "json",
    ]);
    t.expect_ok();
    assert!(tdx.join("collateral/current.json").exists() && tdx.join("pki/root.pem").exists());
    // -collateralOnly re-signs the collateral with the PKI already there: test_root unchanged
    let root_before = std::fs::read(tdx.join("pki/root.pem")).unwrap();
    let col_before = std::fs::read(tdx.join("collateral/current.json")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    server_cmd(&[
        "fixtures",
        "tdx",
        "-dir",
        tdx.to_str().unwrap(),
        "-collateralOnly",
        "-validDays",
        "2",
    ])
    .expect_ok();
    assert_eq!(
        std::fs::read(tdx.join("pki/root.pem")).unwrap(),
        root_before
    );
    assert_ne!(
        std::fs::read(tdx.join("collateral/current.json")).unwrap(),
        col_before
    );
    // an existing directory open to others is refused and left as it was
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    server_cmd(&["fixtures", "snp", "-dir", open.to_str().unwrap()]).expect_error("chmod 700");
    let mode = std::fs::metadata(&open).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    // the server blocks they print validate
    let conf = dir.path().join("server.conf");
    let text = format!(
        "server {{\n  trust_domain = \"example.org\"\n  data_dir = \"{}\"\n}}\nplugins {{\n  DataStore \"sql\" {{\n    plugin_data {{}}\n  }}\n  KeyManager \"memory\" {{\n    plugin_data {{}}\n  }}\n{}\n{}\n}}\n",
        dir.path().join("data").display(),
        j["server_plugin"].as_str().unwrap(),
        t.json()["server_plugin"].as_str().unwrap()
    );
    std::fs::write(&conf, text).unwrap();
    server_cmd(&["validate", "-config", conf.to_str().unwrap()]).expect_ok();
}

/// A selector type no attestor produces (`uid:1000` for `unix:uid:1000`) is created as
/// SPIRE would, with a warning naming the likely fix.
#[test]
fn an_unknown_selector_type_is_warned_about() {
    let s = TestServer::start(Backend::Sqlite);
    let o = s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/typo",
        "-parentID",
        "spiffe://example.org/host",
        "-selector",
        "uid:1000",
    ]);
    o.expect_ok();
    assert!(
        o.stderr.contains("Warning:") && o.stderr.contains("did you mean -selector unix:uid:1000?"),
        "{o:?}"
    );
    let o = s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/ok",
        "-parentID",
        "spiffe://example.org/host",
        "-selector",
        "unix:uid:1000",
    ]);
    assert!(o.ok() && !o.stderr.contains("Warning"), "{o:?}");
    // healthcheck -output json, and -wait on a server that is up
    let h = s.cli(&["healthcheck", "-wait", "5s", "-output", "json"]);
    assert_eq!(h.json()["healthy"], true);
}

/// Starts `bin args…` under umask 077 and waits (up to 20 s) until `until` exists.
fn spawn_under_umask(
    bin: &str,
    args: &[&std::ffi::OsStr],
    until: &std::path::Path,
) -> std::process::Child {
    let child = std::process::Command::new("sh")
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !until.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child
}

/// Under a strict umask (systemd's `UMask=0077`, as the shipped units set) the admin socket's
/// directory still gets the mode the server asks for (0750: owner and group connect), and the
/// agent's Workload API directory its 0755 (every user's workloads connect).
#[test]
fn socket_directories_keep_their_mode_under_a_strict_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.conf");
    let sock = dir.path().join("run/private/api.sock");
    ServerConf::new("example.org")
        .server("data_dir", dir.path().join("data"))
        .server("socket_path", &sock)
        .server("bind_address", "127.0.0.1")
        .server("bind_port", "0")
        .plugin(Plugin::new("DataStore", "sql"))
        .plugin(Plugin::new("KeyManager", "memory"))
        .plugin(Plugin::new("NodeAttestor", "join_token"))
        .write(&conf)
        .unwrap();
    let server_log = dir.path().join("server.log");
    let mut child = spawn_under_umask(
        support::BIN,
        &[
            "run".as_ref(),
            "-config".as_ref(),
            conf.as_os_str(),
            "-logFile".as_ref(),
            server_log.as_os_str(),
            "-logFormat".as_ref(),
            "json".as_ref(),
        ],
        &sock,
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    let (own, parent) = (
        mode(sock.parent().unwrap()),
        mode(sock.parent().unwrap().parent().unwrap()),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(own.unwrap(), 0o750);
    // -logFile and -logFormat: JSON lines in the file
    let log = std::fs::read_to_string(&server_log).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(
        first["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("starting ironpact-server"),
        "{log}"
    );
    // a parent it had to create only leads there: traversable by all
    assert_eq!(parent.unwrap(), 0o755);

    // the agent: its Workload API directory is there before it attests
    let bundle = dir.path().join("bundle.pem");
    let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(&bundle, ca.cert.pem()).unwrap();
    let wl = dir.path().join("agent-run/public/api.sock");
    let aconf = dir.path().join("agent.conf");
    support::AgentConf::new("example.org")
        .agent("data_dir", dir.path().join("agent-data"))
        .agent("server_address", "127.0.0.1")
        .agent("server_port", "1")
        .agent("socket_path", &wl)
        .agent(
            "admin_socket_path",
            dir.path().join("agent-run/private/admin.sock"),
        )
        .agent("trust_bundle_path", &bundle)
        .plugin(Plugin::new("NodeAttestor", "join_token"))
        .plugin(Plugin::new("KeyManager", "memory"))
        .plugin(Plugin::new("WorkloadAttestor", "unix"))
        .write(&aconf)
        .unwrap();
    let mut agent = spawn_under_umask(
        support::AGENT_BIN,
        &[
            "run".as_ref(),
            "-config".as_ref(),
            aconf.as_os_str(),
            "-joinToken".as_ref(),
            "x".as_ref(),
        ],
        &wl,
    );
    let (public, parent) = (
        mode(wl.parent().unwrap()),
        mode(wl.parent().unwrap().parent().unwrap()),
    );
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(public.unwrap(), 0o755);
    assert_eq!(parent.unwrap(), 0o755);
}

/// A config written as SPIRE's docs and blog posts write it takes one run to fix: every change
/// in one error, a one-line nested block included (read as SPIRE's HCL 1 reads it).
#[test]
fn spire_style_configs_explain_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(&bundle, ca.cert.pem()).unwrap();
    let agent = |plugins: &str| {
        let conf = dir.path().join("agent.conf");
        std::fs::write(
            &conf,
            format!(
                "agent {{\n    data_dir = \"{}\"\n    server_address = \"127.0.0.1\"\n    trust_domain = \"example.org\"\n    trust_bundle_path = \"{}\"\n    join_token = \"abc\"\n}}\n{plugins}",
                dir.path().join("data").display(),
                bundle.display()
            ),
        )
        .unwrap();
        support::Out::from(
            std::process::Command::new(support::AGENT_BIN)
                .args(["validate", "-config"])
                .arg(&conf)
                .output()
                .unwrap(),
        )
    };
    let o = agent(
        "plugins {\n    node_attestor \"unix\" { plugin_data {} }\n    key_manager \"disk\" {\n        plugin_data {\n            keys_path = \"/tmp/k\"\n        }\n    }\n    workload_attestor \"unix\" {\n        plugin_data {}\n    }\n}\n",
    );
    o.expect_error("5 changes needed");
    for want in [
        "line 9: `node_attestor` → `NodeAttestor`",
        "`key_manager` → `KeyManager`",
        "unix is a workload attestor",
        "`keys_path` → `directory`",
        "`workload_attestor` → `WorkloadAttestor`",
    ] {
        assert!(o.stderr.contains(want), "{want}: {o:?}");
    }
    // fixed as the message says (the one-line block kept): valid
    let o = agent(
        "plugins {\n    NodeAttestor \"join_token\" { plugin_data {} }\n    KeyManager \"disk\" {\n        plugin_data {\n            directory = \"/tmp/k\"\n        }\n    }\n    WorkloadAttestor \"unix\" {\n        plugin_data {}\n    }\n}\n",
    );
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );
}

/// SPIRE's shipped configs: the agent's validates as written; the server's names its one
/// setting ironpact does not implement (UpstreamAuthority) and validates without it; a file
/// full of SPIRE settings ironpact lacks gets every one named, with why, in one run.
#[test]
fn spire_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let run = |bin: &str, name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        support::Out::from(
            std::process::Command::new(bin)
                .args(["validate", "-config"])
                .arg(&p)
                .current_dir(dir.path())
                .output()
                .unwrap(),
        )
    };
    let agent = format!(
        "agent {{\n    data_dir = \"{d}/agent\"\n    log_level = \"DEBUG\"\n    trust_domain = \"example.org\"\n    server_address = \"localhost\"\n    server_port = 8081\n\n    # Insecure bootstrap is NOT appropriate for production use\n    insecure_bootstrap = true\n}}\n\nplugins {{\n   KeyManager \"disk\" {{\n        plugin_data {{\n            directory = \"{d}/agent\"\n        }}\n    }}\n\n    NodeAttestor \"join_token\" {{\n        plugin_data {{}}\n    }}\n\n    WorkloadAttestor \"unix\" {{\n        plugin_data {{}}\n    }}\n}}\n"
    );
    let o = run(support::AGENT_BIN, "agent.conf", &agent);
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );

    let upstream = "    UpstreamAuthority \"disk\" {\n        plugin_data {\n            key_file_path = \"./conf/server/dummy_upstream_ca.key\"\n            cert_file_path = \"./conf/server/dummy_upstream_ca.crt\"\n        }\n    }\n";
    let server = format!(
        "server {{\n    bind_address = \"127.0.0.1\"\n    bind_port = \"8081\"\n    socket_path = \"{d}/api.sock\"\n    trust_domain = \"example.org\"\n    data_dir = \"{d}/server\"\n    log_level = \"DEBUG\"\n    ca_subject {{\n        country = [\"US\"]\n        organization = [\"SPIFFE\"]\n        common_name = \"\"\n    }}\n}}\n\nplugins {{\n    DataStore \"sql\" {{\n        plugin_data {{\n            database_type = \"sqlite3\"\n            connection_string = \"{d}/datastore.sqlite3\"\n        }}\n    }}\n\n    NodeAttestor \"join_token\" {{\n        plugin_data {{\n        }}\n    }}\n\n    KeyManager \"memory\" {{\n        plugin_data = {{}}\n    }}\n\n{upstream}}}\n"
    );
    // SPIRE's UpstreamAuthority "disk" with its dummy CA (made here by openssl as SPIRE's is:
    // an EC key in SEC1 form, a self-signed CA certificate), relative to the working directory
    let conf_dir = dir.path().join("conf/server");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let (ca_key, ca_crt) = (
        conf_dir.join("dummy_upstream_ca.key"),
        conf_dir.join("dummy_upstream_ca.crt"),
    );
    assert!(
        std::process::Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out"
            ])
            .arg(&ca_key)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-new",
                "-days",
                "30",
                "-subj",
                "/C=US/O=SPIFFE",
                "-key"
            ])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_crt)
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .status()
            .unwrap()
            .success()
    );
    let o = run(support::BIN, "server.conf", &server);
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );
    // and it runs: the bundle is the operator's CA, a minted SVID chains to it through ours
    let mut child = std::process::Command::new(support::BIN)
        .args(["run", "-config", "server.conf", "-serverPort", "0"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let sock = format!("{d}/api.sock");
    let cli = |args: &[&str]| {
        support::Out::from(
            std::process::Command::new(support::BIN)
                .args(args)
                .args(["-socketPath", &sock])
                .output()
                .unwrap(),
        )
    };
    let up = cli(&["healthcheck", "-wait", "20s"]);
    let shown = cli(&["bundle", "show"]);
    let minted = dir.path().join("minted");
    let mint = cli(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/m",
        "-write",
        minted.to_str().unwrap(),
    ]);
    // SPIRE's agent.conf runs against it: insecure bootstrap, then the upstream-signed chain
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    let port = support::logged_port(&log, "agent API listening")
        .unwrap_or_else(|| panic!("no agent API port in the log:\n{log}"));
    let token = cli(&[
        "token",
        "generate",
        "-spiffeID",
        "spiffe://example.org/host",
        "-output",
        "json",
    ])
    .json()["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let agent_sock = format!("{d}/agent.sock");
    let mut agent_child = std::process::Command::new(support::AGENT_BIN)
        .args([
            "run",
            "-config",
            "agent.conf",
            "-serverPort",
            &port.to_string(),
        ])
        .args(["-socketPath", &agent_sock, "-joinToken", &token])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent_up = support::Out::from(
        std::process::Command::new(support::AGENT_BIN)
            .args(["healthcheck", "-socketPath", &agent_sock, "-wait", "20s"])
            .output()
            .unwrap(),
    );
    let _ = agent_child.kill();
    let _ = agent_child.wait();
    let _ = child.kill();
    let _ = child.wait();
    let alog = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(up.ok() && mint.ok(), "{up:?} {mint:?}\n{log}");
    assert!(agent_up.ok(), "{agent_up:?}\n{alog}");
    assert_eq!(
        ironpact_spiffe::x509::certs_from_pem(&shown.stdout).unwrap(),
        ironpact_spiffe::x509::certs_from_pem(&std::fs::read_to_string(&ca_crt).unwrap()).unwrap(),
        "the bundle is the upstream CA alone"
    );
    let svid = minted.join("svid.pem");
    let v = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca_crt)
        .arg("-untrusted")
        .arg(&svid)
        .arg(&svid)
        .output()
        .unwrap();
    assert!(v.status.success(), "{v:?}");
    // plugin_data_file: a plugin's data from a file of its own
    std::fs::write(
        dir.path().join("km.hcl"),
        format!("keys_path = \"{d}/keys\"\n"),
    )
    .unwrap();
    let pdf = server.replace(
        "KeyManager \"memory\" {\n        plugin_data = {}\n    }",
        "KeyManager \"disk\" {\n        plugin_data_file = \"km.hcl\"\n    }",
    );
    assert!(pdf.contains("plugin_data_file"));
    let o = run(support::BIN, "pdf.conf", &pdf);
    assert!(o.ok(), "{o:?}");
    let o = run(
        support::BIN,
        "pdf.conf",
        &pdf.replace("km.hcl", "missing.hcl"),
    );
    o.expect_error("plugin_data_file missing.hcl");
    // another UpstreamAuthority plugin is still refused, with the way out
    let o = run(
        support::BIN,
        "vault.conf",
        &server.replace("UpstreamAuthority \"disk\"", "UpstreamAuthority \"vault\""),
    );
    o.expect_error("only UpstreamAuthority \"disk\" is built in");
    let o = run(support::BIN, "server.conf", &server.replace(upstream, ""));
    assert!(
        o.ok() && o.stdout.contains("configuration file is valid."),
        "{o:?}"
    );

    // a file that sets many of SPIRE's settings ironpact lacks: all of them, in one error
    let full = server.replace(upstream, "").replacen(
        "    log_level = \"DEBUG\"\n",
        "    log_level = \"DEBUG\"\n    admin_ids = [\"spiffe://example.org/admin\"]\n    audit_log_enabled = true\n    jwt_issuer = \"https://oidc.example.org\"\n    ratelimit {\n        attestation = true\n    }\n    federation {\n        bundle_endpoint {\n            address = \"0.0.0.0\"\n            port = 8443\n        }\n    }\n    agent_ttl = \"2h\"\n    log_source_location = true\n",
        1,
    ) + "telemetry {\n    Prometheus {\n        port = 9988\n    }\n}\nhealth_checks {\n    listener_enabled = true\n}\n";
    let o = run(support::BIN, "full.conf", &full);
    // federation, health_checks and telemetry are built: their blocks are read, not refused
    o.expect_error("4 changes needed");
    assert!(!o.stderr.contains("server.federation"), "{o:?}");
    assert!(!o.stderr.contains("telemetry"), "{o:?}");
    for key in [
        "server.admin_ids",
        "server.audit_log_enabled",
        "server.jwt_issuer",
        "server.ratelimit",
    ] {
        assert!(o.stderr.contains(key), "{key}: {o:?}");
    }
    // agent_ttl and log_source_location are understood
    assert!(!o.stderr.contains("agent_ttl") && !o.stderr.contains("log_source_location"));
}

/// Entries as SPIRE's `entry show -output json` prints them (IDs as {trust_domain, path},
/// int64 values as strings) are created as they are, as docs/migrating-from-spire.md says.
#[test]
fn entries_from_spire_json() {
    let s = TestServer::start(Backend::Sqlite);
    let data = tempfile::NamedTempFile::new().unwrap();
    let spire = r#"{"entries":[{"id":"spire-1","spiffe_id":{"trust_domain":"example.org","path":"/web"},"parent_id":{"trust_domain":"example.org","path":"/node"},"selectors":[{"type":"unix","value":"uid:1000"}],"x509_svid_ttl":3600,"federates_with":[],"hint":"","admin":false,"created_at":"1678731397","downstream":false,"expires_at":"0","dns_names":["web.example.org"],"revision_number":"0","store_svid":false,"jwt_svid_ttl":300}],"next_page_token":""}"#;
    std::fs::write(data.path(), spire).unwrap();
    s.cli(&["entry", "create", "-data", data.path().to_str().unwrap()])
        .expect_ok();
    let shown = s.cli(&["entry", "show", "-entryID", "spire-1", "-output", "json"]);
    shown.expect_ok();
    // SPIRE's shape back, key for key (created_at is this server's clock), one line with
    // the keys sorted as SPIRE's printer writes them
    let mut want: serde_json::Value = serde_json::from_str(spire).unwrap();
    let mut got = shown.json();
    assert!(
        got["entries"][0]["created_at"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    for v in [&mut want, &mut got] {
        v["entries"][0]["created_at"] = serde_json::json!("-");
    }
    assert_eq!(got, want);
    assert_eq!(shown.stdout.trim().lines().count(), 1);
    assert!(
        shown
            .stdout
            .starts_with(r#"{"entries":[{"admin":false,"created_at":"#),
        "{}",
        shown.stdout
    );
}
