//! `x509pop` end to end with certificates made by openssl: a root CA, an intermediate and node
//! certificates. The agent attests with its certificate and key, the server names it by the
//! certificate's fingerprint with SPIRE's selectors, and a workload behind a node alias gets
//! its SVID. A certificate from another CA, an expired one, a missing intermediate, a replayed
//! signature and another key's signature are refused, each with its kind. Composed with
//! `sev_snp`, both proofs are required.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_server::attest::x509pop::protocol::{Payload, signed_message};
use ironpact_snp::cert_table::{CertTable, GUID_VCEK};
use ironpact_snp::simulate::{SimGuest, SimPlatform, SimulatedSnp};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use support::keys::{p384_pkcs8, rsa_pkcs8};
use support::{
    Backend, Block, Plugin, TestAgent, TestClock, TestServer, attest_by_hand, attest_refused,
    my_uid, runtime,
};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made by openssl in `dir`: `<name>.pem`, `<name>.key`, and what `openssl ca` needs.
struct Ca {
    dir: PathBuf,
    name: String,
}

impl Ca {
    /// A self-signed root.
    fn root(dir: &Path, name: &str) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self::with_db(dir, name)
    }

    fn with_db(dir: &Path, name: &str) -> Self {
        let db = dir.join(format!("{name}-db"));
        std::fs::create_dir_all(db.join("new")).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "1F2E\n").unwrap();
        std::fs::write(
            db.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}/new\n\
                 serial = {db}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
                 copy_extensions = none\n[any]\ncommonName = supplied\n\
                 [node]\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n\
                 subjectAltName = DNS:node-1.example.org,URI:x509pop://example.org/datacenter/dc1\n\
                 [sub_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n",
                db = db.display()
            ),
        )
        .unwrap();
        Self {
            dir: dir.to_path_buf(),
            name: name.into(),
        }
    }

    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Signs a new key's CSR with `ext` (`node` or `sub_ca`) for `dates` (`-days 10`, or
    /// `-startdate … -enddate …`): writes `<name>.pem` and `<name>.key`, subject CN `name`.
    fn issue(&self, name: &str, ext: &str, dates: &[&str]) {
        self.issue_cn(name, name, ext, dates)
    }

    /// [`Ca::issue`] with subject CN `cn` (which may hold `/`).
    fn issue_cn(&self, name: &str, cn: &str, ext: &str, dates: &[&str]) {
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={}", cn.replace('/', "\\/")),
            ],
        );
        let cnf = self.dir.join(format!("{}-db/ca.cnf", self.name));
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            cnf.to_str().unwrap(),
            "-cert",
            &format!("{}.pem", self.name),
            "-keyfile",
            &format!("{}.key", self.name),
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-extensions",
            ext,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(dates.iter().map(|d| d.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(&self.dir, &refs);
    }

    /// An intermediate CA under this one.
    fn intermediate(&self, name: &str) -> Ca {
        self.issue(name, "sub_ca", &["-days", "30"]);
        Ca::with_db(&self.dir, name)
    }
}

fn der(pem_file: &Path) -> Vec<u8> {
    ironpact_spiffe::x509::certs_from_pem(&std::fs::read_to_string(pem_file).unwrap())
        .unwrap()
        .remove(0)
}

/// SPIRE's fingerprint, from openssl.
fn fingerprint(dir: &Path, pem_file: &str) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in", pem_file])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// What the node signs, with the PKCS#8 key in `key_file`.
fn sign(key_file: &Path, nonce: &[u8], spki: &[u8]) -> Vec<u8> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let p = pem::parse(std::fs::read(key_file).unwrap()).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p.contents(), &rng).unwrap();
    k.sign(&rng, &signed_message(nonce, spki))
        .unwrap()
        .as_ref()
        .to_vec()
}

fn payload(chain: &[Vec<u8>]) -> Vec<u8> {
    serde_json::to_vec(&Payload::new(chain)).unwrap()
}

fn agent_block(dir: &Path, tee: Option<Block>) -> [Plugin; 1] {
    let p = Plugin::new("NodeAttestor", "x509pop")
        .set("private_key_path", dir.join("node-1.key"))
        .set("certificate_path", dir.join("node-1.pem"))
        .set("intermediates_path", dir.join("node-int.pem"));
    [match tee {
        Some(b) => p.block(b),
        None => p,
    }]
}

/// Root → intermediate → node-1 (valid), expired-node (expired), and stranger (another CA).
fn pki(dir: &Path) -> Ca {
    let root = Ca::root(dir, "node-root");
    let int = root.intermediate("node-int");
    int.issue("node-1", "node", &["-days", "10"]);
    int.issue(
        "expired-node",
        "node",
        &[
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
        ],
    );
    let other = Ca::root(dir, "other-root");
    other.issue("stranger", "node", &["-days", "10"]);
    for f in ["node-1.key", "expired-node.key", "stranger.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    root
}

#[test]
fn x509pop_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = pki(d);
    // a shifted clock for the server and the agent: the renewal below comes by moving it
    let clock = TestClock::install();
    let s = TestServer::start_conf(Backend::Sqlite, |c| {
        c.plugin(Plugin::new("NodeAttestor", "x509pop").set("ca_bundle_path", root.pem()))
    });
    let a = TestAgent::start_custom(&s, None, agent_block(d, None), true);

    let fp = fingerprint(d, "node-1.pem");
    assert_eq!(fp.len(), 40, "{fp}");
    let agent_id = format!("spiffe://example.org/spire/agent/x509pop/{fp}");
    let shown = s.agent_show(&agent_id);
    assert!(shown.contains("Attestation type  : x509pop"), "{shown}");
    for sel in [
        "x509pop:subject:cn:node-1".to_string(),
        format!("x509pop:ca:fingerprint:{}", fingerprint(d, "node-int.pem")),
        format!("x509pop:ca:fingerprint:{}", fingerprint(d, "node-root.pem")),
        "x509pop:serialnumber:1f2e".to_string(),
        // SPIRE's SAN selector: URI SAN x509pop://<td>/<key>/<value>
        "x509pop:san:datacenter:dc1".to_string(),
    ] {
        assert!(shown.contains(&sel), "{sel} missing from:\n{shown}");
    }
    assert!(
        !shown.contains("node-1.example.org"),
        "DNS SANs make no selector:\n{shown}"
    );

    // a workload behind a node alias bound to the certificate's CN gets its SVID
    s.cli(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        "spiffe://example.org/x509pop-nodes",
        "-selector",
        "x509pop:subject:cn:node-1",
    ])
    .expect_ok();
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/app",
        "-parentID",
        "spiffe://example.org/x509pop-nodes",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/app"),
        "{o:?}\n{}",
        a.log()
    );

    // refusals, each with its kind
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let (node, int) = (der(&d.join("node-1.pem")), der(&d.join("node-int.pem")));
    let node_key = d.join("node-1.key");
    runtime().block_on(async {
        // another CA's certificate: no challenge at all, refused on the chain
        attest_refused(
            &addr,
            &roots,
            "x509pop",
            payload(&[der(&d.join("stranger.pem"))]),
            |n, k| sign(&d.join("stranger.key"), n, k),
            "x509pop_untrusted_chain",
        )
        .await;
        // the intermediate withheld: the chain does not reach the bundle
        attest_refused(
            &addr,
            &roots,
            "x509pop",
            payload(std::slice::from_ref(&node)),
            |n, k| sign(&node_key, n, k),
            "x509pop_untrusted_chain",
        )
        .await;
        // a CA certificate presented as the node's: not an end entity
        attest_refused(
            &addr,
            &roots,
            "x509pop",
            payload(std::slice::from_ref(&int)),
            |n, k| sign(&d.join("node-int.key"), n, k),
            "x509pop_untrusted_chain",
        )
        .await;
        // expired
        attest_refused(
            &addr,
            &roots,
            "x509pop",
            payload(&[der(&d.join("expired-node.pem")), int.clone()]),
            |n, k| sign(&d.join("expired-node.key"), n, k),
            "x509pop_expired",
        )
        .await;
        // another key's signature over the right nonce
        attest_refused(
            &addr,
            &roots,
            "x509pop",
            payload(&[node.clone(), int.clone()]),
            |n, k| sign(&d.join("stranger.key"), n, k),
            "x509pop_signature",
        )
        .await;
        // a replayed signature: captured from a good exchange (of another node, so the
        // running agent keeps its identity), shown for a new nonce
        root_int(d).issue("node-2", "node", &["-days", "10"]);
        let node2 = der(&d.join("node-2.pem"));
        let captured = Mutex::new(Vec::new());
        attest_by_hand(
            &addr,
            &roots,
            "x509pop",
            payload(&[node2.clone(), int.clone()]),
            |n, k| {
                let sig = sign(&d.join("node-2.key"), n, k);
                *captured.lock().unwrap() = sig.clone();
                sig
            },
        )
        .await
        .expect("a good signature attests");
        let old = captured.lock().unwrap().clone();
        attest_refused(
            &addr,
            &roots,
            "x509pop",
            payload(&[node2.clone(), int.clone()]),
            |_, _| old.clone(),
            "x509pop_signature",
        )
        .await;
        // malformed payloads are client errors, not refusals
        let e = attest_by_hand(
            &addr,
            &roots,
            "x509pop",
            b"{\"certificates\":[]}".to_vec(),
            |_, _| Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    let log = s.log();
    assert!(
        log.contains("x509pop_untrusted_chain"),
        "the refusal is logged"
    );

    // the node's certificate is renewed on disk (a new fingerprint): at its next renewal the
    // agent is asked to attest afresh and becomes the new identity, without a restart
    root_int(d).issue_cn("node-1-renewed", "node-1", "node", &["-days", "10"]);
    std::fs::copy(d.join("node-1-renewed.pem"), d.join("node-1.pem")).unwrap();
    std::fs::copy(d.join("node-1-renewed.key"), d.join("node-1.key")).unwrap();
    let renewed = format!(
        "spiffe://example.org/spire/agent/x509pop/{}",
        fingerprint(d, "node-1-renewed.pem")
    );
    // (last: from here the processes' time is ahead of this test's) half-life of the 1 h SVID
    clock.advance(31 * 60);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !s.cli(&["agent", "show", "-spiffeID", &renewed]).ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not attest afresh with its renewed certificate:\n{}",
            a.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(a.log().contains("attest afresh"), "{}", a.log());
    let o = a.fetch_until_ok(&[]);
    assert!(
        o.ok() && o.stdout.contains("spiffe://example.org/app"),
        "{o:?}"
    );
}

/// The intermediate CA of [`pki`], to issue more node certificates.
fn root_int(dir: &Path) -> Ca {
    Ca {
        dir: dir.to_path_buf(),
        name: "node-int".into(),
    }
}

const GOOD: [u8; 48] = [0x11; 48];

#[test]
fn x509pop_composed_with_sev_snp() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = pki(d);
    // a simulated SEV-SNP chain, pinned by the server as test roots
    let keys = d.join("snp");
    std::fs::create_dir(&keys).unwrap();
    let (ark, ask, vcek) = (rsa_pkcs8(), rsa_pkcs8(), p384_pkcs8());
    for (f, k) in [("ark.pk8", &ark), ("ask.pk8", &ask), ("vcek.pk8", &vcek)] {
        std::fs::write(keys.join(f), k).unwrap();
    }
    let platform = SimPlatform {
        product: ironpact_snp::Product::Milan,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    };
    let dev = SimulatedSnp::new(platform, &ark, &ask, &vcek, 0, 4_000_000_000).unwrap();
    let pem = |b: &[u8]| ironpact_spiffe::x509::certs_to_pem([b]);
    std::fs::write(keys.join("ark.pem"), pem(&dev.ark_der)).unwrap();
    std::fs::write(keys.join("ask.pem"), pem(&dev.ask_der)).unwrap();
    let server = Plugin::new("NodeAttestor", "x509pop")
        .set("ca_bundle_paths", vec![root.pem()])
        .set("agent_path_template", "/cn/{{ .Subject.CommonName }}")
        .block(
            Block::new("sev_snp")
                .set("measurements", vec![hex::encode(GOOD)])
                .set("fetch_vcek", false)
                .block(
                    Block::new("test_roots")
                        .set("product", "milan")
                        .set("ark", keys.join("ark.pem"))
                        .set("ask", keys.join("ask.pem")),
                ),
        );
    let s = TestServer::start_conf(Backend::Sqlite, |c| c.plugin(server));
    let tee = Block::new("sev_snp")
        .set("evidence_source", "simulated")
        .block(
            Block::new("simulated")
                .set("keys_dir", &keys)
                .set("measurement", hex::encode(GOOD)),
        );
    let _a = TestAgent::start_custom(&s, None, agent_block(d, Some(tee)), true);
    let shown = s.agent_show("spiffe://example.org/spire/agent/cn/node-1");
    let m = hex::encode(GOOD);
    for sel in [
        "x509pop:subject:cn:node-1".to_string(),
        format!("sev_snp:measurement:{m}"),
    ] {
        assert!(shown.contains(&sel), "{sel} missing from:\n{shown}");
    }
    assert!(shown.contains("Attestation type  : x509pop"), "{shown}");

    // the certificate is good but the TEE's measurement is not: refused, naming both
    let roots = s.bundle_roots();
    let addr = s.agent_addr();
    let (node, int) = (der(&d.join("node-1.pem")), der(&d.join("node-int.pem")));
    let node_key = d.join("node-1.key");
    let bad = SimGuest {
        measurement: [0x33; 48],
        report_id: [0x44; 32],
        ..SimGuest::default()
    };
    let step = Mutex::new(0);
    runtime().block_on(attest_refused(
        &addr,
        &roots,
        "x509pop",
        payload(&[node, int]),
        |n, k| {
            let mut i = step.lock().unwrap();
            *i += 1;
            if *i == 1 {
                sign(&node_key, n, k)
            } else {
                let report = dev
                    .report(&bad, &ironpact_snp::binding::report_data(n, k))
                    .unwrap();
                ironpact_snp::binding::encode_evidence(
                    &report,
                    &CertTable::build(&[(GUID_VCEK, &dev.vcek_der)]),
                )
            }
        },
        "sev_snp required by x509pop: measurement_not_allowed",
    ));
    assert_eq!(*step.lock().unwrap(), 2, "both challenges were answered");

    // a certificate whose CN would add a path segment to the agent ID: refused
    root_int(d).issue_cn("slash", "a/b", "node", &["-days", "10"]);
    let slash = der(&d.join("slash.pem"));
    let int2 = der(&d.join("node-int.pem"));
    runtime().block_on(attest_refused(
        &addr,
        &roots,
        "x509pop",
        payload(&[slash, int2]),
        |n, k| sign(&d.join("slash.key"), n, k),
        "x509pop_agent_path",
    ));
}
