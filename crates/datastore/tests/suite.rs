//! One datastore test suite, run against every backend: SQLite (a temp file), the PostgreSQL
//! on 127.0.0.1:5432 (each test in its own schema) and the MariaDB (or MySQL) on
//! 127.0.0.1:3306 (each test in its own database). Without a server its part prints
//! `SKIPPED: … not reachable`, unless CI=true, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_datastore::{
    AgentFilter, AgentRecord, ChangeKind, DataStore, Entry, EntryFilter, Error, MatchBehavior,
};
use ironpact_spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};

fn pg_url() -> String {
    std::env::var("IRONPACT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn mysql_url() -> String {
    std::env::var("IRONPACT_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string())
}

struct Backend {
    ds: DataStore,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
    mysql_db: Option<String>,
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ds = DataStore::open_sqlite(&dir.path().join("datastore.sqlite3"))
            .await
            .unwrap();
        Self {
            ds,
            _dir: Some(dir),
            pg_schema: None,
            mysql_db: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let schema = format!("t_{}", hex_rand());
        match DataStore::open_postgres(&pg_url(), Some(&schema)).await {
            Ok(ds) => Some(Self {
                ds,
                _dir: None,
                pg_schema: Some(schema),
                mysql_db: None,
            }),
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "postgres not reachable at {} (CI=true requires it): {e}",
                        pg_url()
                    );
                }
                println!("SKIPPED: postgres not reachable ({e})");
                None
            }
        }
    }

    async fn mysql() -> Option<Self> {
        let db = format!("t_{}", hex_rand());
        match DataStore::open_mysql(&mysql_url(), Some(&db)).await {
            Ok(ds) => Some(Self {
                ds,
                _dir: None,
                pg_schema: None,
                mysql_db: Some(db),
            }),
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "mysql not reachable at {} (CI=true requires it): {e}",
                        mysql_url()
                    );
                }
                println!("SKIPPED: mysql not reachable ({e})");
                None
            }
        }
    }

    async fn cleanup(self) {
        self.ds.close().await;
        if let Some(db) = self.mysql_db {
            let admin = DataStore::open_mysql(&mysql_url(), None).await.unwrap();
            admin.drop_schema_for_tests(&db).await.unwrap();
            admin.close().await;
        }
        if let Some(schema) = self.pg_schema {
            let admin = DataStore::open_postgres(&pg_url(), None).await.unwrap();
            admin.drop_schema_for_tests(&schema).await.unwrap();
            admin.close().await;
        }
    }
}

fn hex_rand() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn entry(spiffe: &str, parent: &str, sels: &[&str]) -> Entry {
    let mut e = Entry::new(
        id(spiffe),
        id(parent),
        sels.iter().map(|s| sel(s)).collect(),
    );
    e.created_at = 1000;
    e
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let b = super::Backend::sqlite().await;
                    super::$name(&b.ds).await;
                    b.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(b) = super::Backend::postgres().await else { return };
                    super::$name(&b.ds).await;
                    b.cleanup().await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(b) = super::Backend::mysql().await else { return };
                    super::$name(&b.ds).await;
                    b.cleanup().await;
                }
            )*
        }
    };
}

suite!(
    entry_crud,
    entry_duplicates_and_missing,
    entry_filters,
    agents,
    join_tokens,
    bundles,
    ca_journal,
    filters_in_sql_agree_with_the_rule,
    agent_filters_and_pages,
    change_log,
    batch_create,
    parallel_writers,
    large_table_loads_whole,
    long_values,
    change_notifications,
    federation_relationships,
);

/// Relationships made through the admin API: created once per trust domain, replaced,
/// listed in order (bounded), deleted; the typed errors the API maps to status codes.
async fn federation_relationships(ds: &DataStore) {
    use ironpact_datastore::{EndpointProfile, Error, FederationRelationship};
    let rel = |td: &str, profile: EndpointProfile| FederationRelationship {
        trust_domain: TrustDomain::new(td).unwrap(),
        bundle_endpoint_url: format!("https://{td}:8443/"),
        profile,
    };
    let spiffe = EndpointProfile::HttpsSpiffe {
        endpoint_spiffe_id: SpiffeId::parse("spiffe://b.test/spire/server").unwrap(),
    };
    ds.create_federation_relationship(&rel("b.test", spiffe.clone()), 1)
        .await
        .unwrap();
    ds.create_federation_relationship(&rel("a.test", EndpointProfile::HttpsWeb), 1)
        .await
        .unwrap();
    assert!(matches!(
        ds.create_federation_relationship(&rel("a.test", EndpointProfile::HttpsWeb), 2)
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    let all = ds.list_federation_relationships(10).await.unwrap();
    assert_eq!(
        all,
        vec![
            rel("a.test", EndpointProfile::HttpsWeb),
            rel("b.test", spiffe.clone())
        ]
    );
    assert_eq!(ds.list_federation_relationships(1).await.unwrap().len(), 1);
    let mut changed = rel("a.test", spiffe.clone());
    changed.bundle_endpoint_url = "https://127.0.0.1:9/".into();
    ds.update_federation_relationship(&changed, 3)
        .await
        .unwrap();
    assert_eq!(
        ds.list_federation_relationships(10).await.unwrap()[0],
        changed
    );
    assert!(matches!(
        ds.update_federation_relationship(&rel("c.test", EndpointProfile::HttpsWeb), 3)
            .await,
        Err(Error::NotFound { .. })
    ));
    ds.delete_federation_relationship(&TrustDomain::new("a.test").unwrap())
        .await
        .unwrap();
    assert!(matches!(
        ds.delete_federation_relationship(&TrustDomain::new("a.test").unwrap())
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(ds.list_federation_relationships(10).await.unwrap().len(), 1);
}

/// PostgreSQL announces every committed change to listeners (a rolled-back or empty write
/// announces nothing); the other engines have no listener (their readers poll).
async fn change_notifications(ds: &DataStore) {
    use std::time::Duration;
    let Some(mut l) = ds.change_listener().await.unwrap() else {
        assert_ne!(ds.dialect(), ironpact_datastore::Dialect::Postgres);
        return;
    };
    let e = ds
        .create_entry(&entry("spiffe://td/n", "spiffe://td/agent", &["k:v"]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), l.recv())
        .await
        .expect("no notification for a committed change")
        .unwrap();
    // a failed write commits nothing and says nothing
    assert!(
        ds.delete_bundle(&TrustDomain::new("nowhere.test").unwrap())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), l.recv())
            .await
            .is_err(),
        "a write that changed nothing was announced"
    );
    ds.delete_entry(&e.id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), l.recv())
        .await
        .expect("no notification for a delete")
        .unwrap();
}

/// Values past MySQL's column limits are refused with a typed error, never cut; the other
/// engines take them.
async fn long_values(ds: &DataStore) {
    let mut e = entry("spiffe://td/long", "spiffe://td/agent", &["k:v"]);
    e.id = "x".repeat(300);
    let long_value = format!("k:{}", "v".repeat(5000));
    let mut e2 = entry(
        "spiffe://td/long2",
        "spiffe://td/agent",
        &[long_value.as_str()],
    );
    e2.id = String::new();
    let r = ds.create_entry(&e).await;
    if ds.dialect() == ironpact_datastore::Dialect::MySql {
        assert!(matches!(r, Err(Error::TooLong(_))), "{r:?}");
    } else {
        r.unwrap();
    }
    // selector values are TEXT everywhere: a long one is stored and found
    let created = ds.create_entry(&e2).await.unwrap();
    let got = ds.get_entry(&created.id).await.unwrap();
    assert_eq!(got.selectors, e2.selectors);
}

async fn entry_crud(ds: &DataStore) {
    let mut e = entry(
        "spiffe://td/web",
        "spiffe://td/node",
        &["unix:uid:1000", "unix:gid:10"],
    );
    e.dns_names = vec!["web.td".into(), "alt.td".into()];
    e.federates_with = vec![TrustDomain::new("other.org").unwrap()];
    e.hint = "web".into();
    e.x509_svid_ttl = 600;
    e.admin = true;
    let created = ds.create_entry(&e).await.unwrap();
    assert!(!created.id.is_empty());
    assert_eq!(created.revision_number, 0);
    let got = ds.get_entry(&created.id).await.unwrap();
    assert_eq!(got.spiffe_id, e.spiffe_id);
    assert_eq!(got.dns_names, e.dns_names, "DNS name order is kept");
    assert_eq!(got.federates_with, e.federates_with);
    assert_eq!(
        got.selectors,
        vec![sel("unix:gid:10"), sel("unix:uid:1000")]
    );
    assert!(got.admin && !got.downstream);
    assert_eq!(got.x509_svid_ttl, 600);
    assert!(!got.disable_attestation_claims);

    let mut upd = got.clone();
    upd.selectors = vec![sel("unix:uid:1001")];
    upd.hint = "web2".into();
    upd.disable_attestation_claims = true;
    let updated = ds.update_entry(&upd).await.unwrap();
    assert_eq!(updated.revision_number, 1);
    let got = ds.get_entry(&created.id).await.unwrap();
    assert_eq!(got.selectors, vec![sel("unix:uid:1001")]);
    assert_eq!(got.hint, "web2");
    assert!(got.disable_attestation_claims);
    assert_eq!(got.revision_number, 1);

    let deleted = ds.delete_entry(&created.id).await.unwrap();
    assert_eq!(deleted.id, created.id);
    assert!(matches!(
        ds.get_entry(&created.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        ds.list_entries(&EntryFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn entry_duplicates_and_missing(ds: &DataStore) {
    let e = entry(
        "spiffe://td/a",
        "spiffe://td/n",
        &["unix:uid:1", "unix:gid:2"],
    );
    let first = ds.create_entry(&e).await.unwrap();
    // same selectors in another order: still the same entry
    let again = entry(
        "spiffe://td/a",
        "spiffe://td/n",
        &["unix:gid:2", "unix:uid:1"],
    );
    match ds.create_entry(&again).await {
        Err(Error::AlreadyExists { id, .. }) => assert_eq!(id, first.id),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // an update that would collide with another entry is refused too
    let other = ds
        .create_entry(&entry("spiffe://td/a", "spiffe://td/n", &["unix:uid:9"]))
        .await
        .unwrap();
    let mut clash = other.clone();
    clash.selectors = e.selectors.clone();
    assert!(matches!(
        ds.update_entry(&clash).await,
        Err(Error::AlreadyExists { .. })
    ));
    let mut ghost = other.clone();
    ghost.id = "missing".into();
    assert!(matches!(
        ds.update_entry(&ghost).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        ds.delete_entry("missing").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        ds.get_entry("missing").await,
        Err(Error::NotFound { .. })
    ));
}

async fn entry_filters(ds: &DataStore) {
    let mut a = entry(
        "spiffe://td/a",
        "spiffe://td/n1",
        &["unix:uid:1", "unix:gid:1"],
    );
    a.hint = "h".into();
    a.federates_with = vec![TrustDomain::new("x.org").unwrap()];
    let mut b = entry("spiffe://td/b", "spiffe://td/n1", &["unix:uid:1"]);
    b.downstream = true;
    let c = entry("spiffe://td/c", "spiffe://td/n2", &["unix:uid:2"]);
    for e in [&a, &b, &c] {
        ds.create_entry(e).await.unwrap();
    }
    let ids = |v: Vec<Entry>| {
        let mut s: Vec<String> = v
            .into_iter()
            .map(|e| e.spiffe_id.path().to_string())
            .collect();
        s.sort();
        s
    };
    let all = ds.list_entries(&EntryFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by ID");
    let f = EntryFilter {
        by_parent_id: Some(id("spiffe://td/n1")),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&f).await.unwrap()), ["/a", "/b"]);
    let f = EntryFilter {
        by_spiffe_id: Some(id("spiffe://td/c")),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&f).await.unwrap()), ["/c"]);
    let by_sel = |sels: &[&str], how| EntryFilter {
        by_selectors: Some((sels.iter().map(|s| sel(s)).collect(), how)),
        ..Default::default()
    };
    let cases: [(&[&str], MatchBehavior, &[&str]); 5] = [
        (&["unix:uid:1"], MatchBehavior::Exact, &["/b"]),
        (
            &["unix:uid:1", "unix:gid:1"],
            MatchBehavior::Subset,
            &["/a", "/b"],
        ),
        (&["unix:uid:1"], MatchBehavior::Superset, &["/a", "/b"]),
        (
            &["unix:uid:2", "unix:gid:1"],
            MatchBehavior::Any,
            &["/a", "/c"],
        ),
        (&["unix:uid:3"], MatchBehavior::Any, &[]),
    ];
    for (sels, how, want) in cases {
        assert_eq!(
            ids(ds.list_entries(&by_sel(sels, how)).await.unwrap()),
            want,
            "{sels:?} {how:?}"
        );
    }
    let f = EntryFilter {
        by_hint: Some("h".into()),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&f).await.unwrap()), ["/a"]);
    let f = EntryFilter {
        by_downstream: Some(true),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&f).await.unwrap()), ["/b"]);
    let f = EntryFilter {
        by_federates_with: Some((
            vec![TrustDomain::new("x.org").unwrap()],
            MatchBehavior::Exact,
        )),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&f).await.unwrap()), ["/a"]);
}

async fn agents(ds: &DataStore) {
    let a = AgentRecord {
        spiffe_id: id("spiffe://td/spire/agent/join_token/abc"),
        attestation_type: "join_token".into(),
        serial_number: "01ab".into(),
        expires_at: 5000,
        selectors: vec![sel("join_token:abc")],
        banned: false,
        can_reattest: false,
        created_at: 1,
        updated_at: 1,
        tee_instance: String::new(),
        previous_serial: String::new(),
        attestation_claims: Vec::new(),
        attestation_error: String::new(),
        attestation_refusal: String::new(),
    };
    ds.create_agent(&a).await.unwrap();
    assert!(matches!(
        ds.create_agent(&a).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(ds.get_agent(&a.spiffe_id).await.unwrap(), a);
    let mut banned = a.clone();
    banned.banned = true;
    banned.serial_number = String::new();
    banned.selectors.push(sel("x:y"));
    banned.attestation_error = "measurement_not_allowed: no".into();
    // a suspension or a conditional rewrite holding a stale serial changes nothing
    assert!(
        !ds.suspend_agent(&a.spiffe_id, "stale", "x", "{}", 2)
            .await
            .unwrap()
    );
    assert!(matches!(
        ds.update_agent_if_current(&a, "stale").await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        ds.suspend_agent(&a.spiffe_id, "01ab", "refused", r#"{"kind":"k"}"#, 2)
            .await
            .unwrap()
    );
    let suspended = ds.get_agent(&a.spiffe_id).await.unwrap();
    assert_eq!(suspended.attestation_error, "refused");
    assert_eq!(suspended.attestation_refusal, r#"{"kind":"k"}"#);
    ds.update_agent_if_current(&a, "01ab").await.unwrap();
    // a renewal keeps the serial it replaced until the agent confirms the new one
    let mut renewed = a.clone();
    renewed.serial_number = "02cd".into();
    renewed.previous_serial = "01ab".into();
    ds.update_agent_if_current(&renewed, "01ab").await.unwrap();
    assert_eq!(ds.get_agent(&a.spiffe_id).await.unwrap(), renewed);
    // a renewal made with the previous SVID lands while that one is accepted ...
    let mut again = renewed.clone();
    again.serial_number = "03ef".into();
    ds.update_agent_if_previous(&again, "02cd", "01ab")
        .await
        .unwrap();
    ds.update_agent_if_current(&renewed, "03ef").await.unwrap();
    assert!(!ds.confirm_agent_serial(&a.spiffe_id, "01ab").await.unwrap());
    assert!(ds.confirm_agent_serial(&a.spiffe_id, "02cd").await.unwrap());
    assert!(!ds.confirm_agent_serial(&a.spiffe_id, "02cd").await.unwrap());
    let got = ds.get_agent(&a.spiffe_id).await.unwrap();
    assert_eq!(
        (got.serial_number.as_str(), got.previous_serial.as_str()),
        ("02cd", "")
    );
    // ... and never once the agent used its successor (however long that renewal took)
    assert!(matches!(
        ds.update_agent_if_previous(&again, "02cd", "01ab").await,
        Err(Error::NotFound { .. })
    ));
    ds.update_agent(&banned).await.unwrap();
    // a banned agent is neither suspended nor rewritten by a renewal
    assert!(
        !ds.suspend_agent(&a.spiffe_id, "", "x", "", 3)
            .await
            .unwrap()
    );
    assert!(ds.update_agent_if_current(&a, "").await.is_err());
    let got = ds.get_agent(&a.spiffe_id).await.unwrap();
    assert!(got.banned);
    assert_eq!(got.selectors.len(), 2);
    assert_eq!(got.attestation_error, "measurement_not_allowed: no");
    assert_eq!(ds.list_agents().await.unwrap().len(), 1);
    ds.delete_agent(&a.spiffe_id).await.unwrap();
    assert!(matches!(
        ds.get_agent(&a.spiffe_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        ds.delete_agent(&a.spiffe_id).await,
        Err(Error::NotFound { .. })
    ));
}

async fn join_tokens(ds: &DataStore) {
    ds.create_join_token("tok1", 100).await.unwrap();
    ds.create_join_token("tok2", 10).await.unwrap();
    assert!(matches!(
        ds.create_join_token("tok1", 5).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(ds.take_join_token("tok1").await.unwrap(), 100);
    assert!(
        matches!(
            ds.take_join_token("tok1").await,
            Err(Error::NotFound { .. })
        ),
        "single use"
    );
    assert_eq!(ds.prune_join_tokens(50).await.unwrap(), 1);
    assert!(ds.take_join_token("tok2").await.is_err());
}

async fn bundles(ds: &DataStore) {
    let td = TrustDomain::new("other.org").unwrap();
    assert!(ds.get_bundle(&td).await.unwrap().is_none());
    let mut b = Bundle::new(td.clone());
    b.x509_authorities.push(vec![1, 2, 3]);
    b.jwt_authorities.push(JwtAuthority {
        key_id: "k".into(),
        public_key_der: vec![4, 5],
        expires_at: 77,
    });
    b.sequence = 3;
    ds.set_bundle(&b, 10).await.unwrap();
    assert_eq!(ds.get_bundle(&td).await.unwrap().unwrap().bundle, b);
    b.sequence = 4;
    ds.set_bundle(&b, 11).await.unwrap();
    let rec = ds.get_bundle(&td).await.unwrap().unwrap();
    assert_eq!((rec.bundle.sequence, rec.updated_at), (4, 11));
    assert_eq!(ds.list_bundles().await.unwrap().len(), 1);
    ds.delete_bundle(&td).await.unwrap();
    assert!(matches!(
        ds.delete_bundle(&td).await,
        Err(Error::NotFound { .. })
    ));
}

async fn ca_journal(ds: &DataStore) {
    assert!(ds.get_ca_journal().await.unwrap().is_none());
    ds.set_ca_journal(b"one", 1).await.unwrap();
    ds.set_ca_journal(b"two", 2).await.unwrap();
    assert_eq!(ds.get_ca_journal().await.unwrap().unwrap(), b"two");
}

#[tokio::test]
async fn sqlite_survives_reopen_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/ds.sqlite3");
    let ds = DataStore::open_sqlite(&path).await.unwrap();
    let e = ds
        .create_entry(&entry("spiffe://td/a", "spiffe://td/n", &["a:b"]))
        .await
        .unwrap();
    ds.close().await;
    let ds = DataStore::open_sqlite(&path).await.unwrap();
    assert_eq!(ds.get_entry(&e.id).await.unwrap().spiffe_id, e.spiffe_id);
}

#[tokio::test]
async fn unknown_database_type_is_refused() {
    assert!(matches!(
        DataStore::connect("oracle", "x").await,
        Err(Error::UnsupportedDatabase(_))
    ));
}

#[test]
fn spire_mysql_connection_strings_are_understood() {
    use ironpact_datastore::mysql_url;
    assert_eq!(
        mysql_url("spire:p@ss/w@tcp(db.example:3306)/spire?parseTime=true&charset=utf8").unwrap(),
        "mysql://spire:p%40ss%2Fw@db.example:3306/spire"
    );
    assert_eq!(
        mysql_url("root@tcp(127.0.0.1:3306)/test").unwrap(),
        "mysql://root@127.0.0.1:3306/test"
    );
    assert_eq!(
        mysql_url("mysql://u:p@h:3306/d").unwrap(),
        "mysql://u:p@h:3306/d"
    );
    let e = mysql_url("spire@unix(/run/mysqld.sock)/spire").unwrap_err();
    assert!(e.to_string().contains("tcp(host:port)"), "{e}");
    // Go's tls= becomes sqlx's ssl-mode: never a silent downgrade
    assert_eq!(
        mysql_url("u:p@tcp(db:3306)/spire?tls=true&parseTime=true").unwrap(),
        "mysql://u:p@db:3306/spire?ssl-mode=VERIFY_IDENTITY"
    );
    assert!(
        mysql_url("u:p@tcp(db:3306)/spire?tls=skip-verify")
            .unwrap()
            .ends_with("?ssl-mode=REQUIRED")
    );
    let e = mysql_url("u:secret@tcp(db:3306)/spire?tls=custom").unwrap_err();
    assert!(
        !e.to_string().contains("secret"),
        "the password leaked: {e}"
    );
    let e = mysql_url("u:secret@nowhere").unwrap_err();
    assert!(
        !e.to_string().contains("secret"),
        "the password leaked: {e}"
    );
}

/// A small deterministic generator, so a failing case can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn sel_pool(rng: &mut Lcg, pool: &[&str], max: u64) -> Vec<String> {
    let n = 1 + rng.next(max);
    let mut v: Vec<String> = (0..n)
        .map(|_| pool[rng.next(pool.len() as u64) as usize].to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Every filter (selectors with each match behaviour, parent, SPIFFE ID, hint, downstream)
/// answered in SQL gives what the filter's own rule gives on every entry; counts and pages
/// agree too.
async fn filters_in_sql_agree_with_the_rule(ds: &DataStore) {
    let pool = ["k:a", "k:b", "k:c", "u:1", "u:2", "g:x"];
    let mut rng = Lcg(7);
    let mut batch = Vec::new();
    for i in 0..120 {
        let sels = sel_pool(&mut rng, &pool, 3);
        let refs: Vec<&str> = sels.iter().map(String::as_str).collect();
        let mut e = entry(
            &format!("spiffe://td/w{}", i % 17),
            &format!("spiffe://td/n{}", rng.next(4)),
            &refs,
        );
        e.hint = ["", "h1", "h2"][rng.next(3) as usize].into();
        e.downstream = rng.next(5) == 0;
        batch.push(e);
    }
    for r in ds.create_entries(&batch).await.unwrap() {
        if let Err(e) = r {
            assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
        }
    }
    let all = ds.list_entries(&EntryFilter::default()).await.unwrap();
    assert!(all.len() > 80, "{}", all.len());
    let hows = [
        MatchBehavior::Exact,
        MatchBehavior::Subset,
        MatchBehavior::Superset,
        MatchBehavior::Any,
    ];
    for round in 0..40 {
        let sels = sel_pool(&mut rng, &pool, 3);
        let mut f = EntryFilter {
            by_selectors: Some((sels.iter().map(|s| sel(s)).collect(), hows[round % 4])),
            ..Default::default()
        };
        match round % 5 {
            1 => f.by_parent_id = Some(id(&format!("spiffe://td/n{}", rng.next(4)))),
            2 => f.by_hint = Some("h1".into()),
            3 => f.by_downstream = Some(false),
            4 => {
                f.by_selectors = None;
                f.by_spiffe_id = Some(id(&format!("spiffe://td/w{}", rng.next(17))));
            }
            _ => {}
        }
        let want: Vec<String> = all
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| e.id.clone())
            .collect();
        let got: Vec<String> = ds
            .list_entries(&f)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, want, "round {round}: {f:?}");
        assert_eq!(ds.count_entries(&f).await.unwrap(), want.len() as u64);
        // pages of 7 give the same list
        let mut paged = Vec::new();
        let mut after = String::new();
        loop {
            let (page, next) = ds.list_entries_page(&f, &after, 7).await.unwrap();
            assert!(page.len() <= 7);
            paged.extend(page.into_iter().map(|e| e.id));
            if next.is_empty() {
                break;
            }
            after = next;
        }
        assert_eq!(paged, want, "round {round} paged");
    }
    // entries come back whole, selectors included
    let one = &all[3];
    assert_eq!(&ds.get_entry(&one.id).await.unwrap(), one);
    let both = ds
        .get_entries(&[all[5].id.clone(), "nope".into(), all[1].id.clone()])
        .await
        .unwrap();
    assert_eq!(both, vec![all[1].clone(), all[5].clone()]);
    assert_eq!(ds.list_all_entries().await.unwrap(), all);
}

fn agent(n: usize, sels: &[&str]) -> AgentRecord {
    AgentRecord {
        spiffe_id: id(&format!("spiffe://td/spire/agent/x/{n:03}")),
        attestation_type: if n.is_multiple_of(2) {
            "join_token"
        } else {
            "x509pop"
        }
        .into(),
        serial_number: format!("{n:x}"),
        expires_at: 5000,
        selectors: sels.iter().map(|s| sel(s)).collect(),
        banned: n.is_multiple_of(5),
        can_reattest: n.is_multiple_of(3),
        created_at: 1,
        updated_at: 1,
        tee_instance: String::new(),
        previous_serial: String::new(),
        attestation_claims: Vec::new(),
        attestation_error: String::new(),
        attestation_refusal: String::new(),
    }
}

async fn agent_filters_and_pages(ds: &DataStore) {
    let mut rng = Lcg(11);
    let pool = ["a:1", "a:2", "b:1", "b:2"];
    let mut all = Vec::new();
    for n in 0..40 {
        let sels = sel_pool(&mut rng, &pool, 3);
        let refs: Vec<&str> = sels.iter().map(String::as_str).collect();
        let mut a = agent(n, &refs);
        a.expires_at = 5000 + n as i64 * 10;
        ds.create_agent(&a).await.unwrap();
        all.push(a);
    }
    assert_eq!(ds.list_agents().await.unwrap(), all);
    let filters = [
        AgentFilter {
            by_attestation_type: Some("x509pop".into()),
            ..Default::default()
        },
        AgentFilter {
            by_banned: Some(true),
            by_can_reattest: Some(false),
            ..Default::default()
        },
        AgentFilter {
            by_selectors: Some((vec![sel("a:1"), sel("b:2")], MatchBehavior::Superset)),
            ..Default::default()
        },
        AgentFilter {
            by_selectors: Some((vec![sel("a:1"), sel("b:2")], MatchBehavior::Subset)),
            ..Default::default()
        },
        AgentFilter {
            by_selectors: Some((vec![sel("a:2")], MatchBehavior::Exact)),
            ..Default::default()
        },
        AgentFilter {
            by_expires_before: Some(all[all.len() / 2].expires_at),
            by_banned: Some(false),
            ..Default::default()
        },
    ];
    for f in &filters {
        let want: Vec<&AgentRecord> = all
            .iter()
            .filter(|a| {
                f.by_attestation_type
                    .as_ref()
                    .is_none_or(|t| *t == a.attestation_type)
                    && f.by_banned.is_none_or(|b| b == a.banned)
                    && f.by_can_reattest.is_none_or(|b| b == a.can_reattest)
                    && f.by_expires_before.is_none_or(|t| a.expires_at < t)
                    && f.by_selectors.as_ref().is_none_or(|(s, how)| {
                        how.matches(&s.iter().collect(), &a.selectors.iter().collect())
                    })
            })
            .collect();
        let (got, next) = ds.list_agents_page(f, "", 0).await.unwrap();
        assert!(next.is_empty());
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{f:?}");
        assert_eq!(ds.count_agents(f).await.unwrap(), want.len() as u64);
    }
    let (p1, next) = ds
        .list_agents_page(&AgentFilter::default(), "", 15)
        .await
        .unwrap();
    let (p2, _) = ds
        .list_agents_page(&AgentFilter::default(), &next, 15)
        .await
        .unwrap();
    assert_eq!(p1, all[..15]);
    assert_eq!(p2, all[15..30]);
}

/// Every write appends to the change log in its own transaction; readers page through it by
/// ID, fetch skipped IDs, and old rows are pruned.
async fn change_log(ds: &DataStore) {
    let start = ds.last_change_id().await.unwrap();
    let e = ds
        .create_entry(&entry("spiffe://td/a", "spiffe://td/n", &["k:v"]))
        .await
        .unwrap();
    let mut u = e.clone();
    u.hint = "x".into();
    ds.update_entry(&u).await.unwrap();
    let a = agent(1, &["a:1"]);
    ds.create_agent(&a).await.unwrap();
    ds.set_bundle(&Bundle::new(TrustDomain::new("other.org").unwrap()), 5)
        .await
        .unwrap();
    ds.delete_entry(&e.id).await.unwrap();
    ds.delete_agent(&a.spiffe_id).await.unwrap();
    // a failed write logs nothing
    assert!(ds.delete_entry(&e.id).await.is_err());
    let got = ds.changes_after(start, 100).await.unwrap();
    let kinds: Vec<(ChangeKind, &str)> = got.iter().map(|c| (c.kind, c.key.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Entry, e.id.as_str()),
            (ChangeKind::Entry, e.id.as_str()),
            (ChangeKind::Agent, a.spiffe_id.as_str()),
            (ChangeKind::Bundle, "other.org"),
            (ChangeKind::Entry, e.id.as_str()),
            (ChangeKind::Agent, a.spiffe_id.as_str()),
        ]
    );
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(ds.last_change_id().await.unwrap(), got[5].id);
    assert_eq!(ds.changes_after(start, 2).await.unwrap(), got[..2]);
    let picked = ds
        .changes_by_id(&[got[1].id, got[4].id, got[5].id + 1000])
        .await
        .unwrap();
    assert_eq!(picked, vec![got[1].clone(), got[4].clone()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(ds.prune_changes(now - 3600).await.unwrap(), 0);
    assert!(ds.prune_changes(now + 10).await.unwrap() >= 6);
    assert!(ds.changes_after(start, 100).await.unwrap().is_empty());
}

/// A batch is one transaction with a result per item: a duplicate (of a stored entry or of
/// one earlier in the batch) is refused and the rest are created.
async fn batch_create(ds: &DataStore) {
    let stored = ds
        .create_entry(&entry("spiffe://td/s", "spiffe://td/n", &["k:s"]))
        .await
        .unwrap();
    let batch = vec![
        entry("spiffe://td/a", "spiffe://td/n", &["k:a"]),
        entry("spiffe://td/s", "spiffe://td/n", &["k:s"]),
        entry("spiffe://td/b", "spiffe://td/n", &["k:b", "k:c"]),
        entry("spiffe://td/b", "spiffe://td/n", &["k:c", "k:b"]),
    ];
    let r = ds.create_entries(&batch).await.unwrap();
    assert_eq!(r.len(), 4);
    assert!(r[0].is_ok() && r[2].is_ok());
    match &r[1] {
        Err(Error::AlreadyExists { id, .. }) => assert_eq!(*id, stored.id),
        other => panic!("{other:?}"),
    }
    match (&r[3], &r[2]) {
        (Err(Error::AlreadyExists { id, .. }), Ok(b)) => assert_eq!(*id, b.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 3);
}

/// A table large enough to be read in two halves (split at its median ID) comes back whole:
/// every entry once, with its selectors, in ID order.
async fn large_table_loads_whole(ds: &DataStore) {
    let batch: Vec<Entry> = (0..20_500)
        .map(|i| {
            entry(
                &format!("spiffe://td/w/{i}"),
                &format!("spiffe://td/n/{}", i % 7),
                &[&format!("k:{i}"), "k:all"],
            )
        })
        .collect();
    for chunk in batch.chunks(1000) {
        for r in ds.create_entries(chunk).await.unwrap() {
            r.unwrap();
        }
    }
    let all = ds.list_all_entries().await.unwrap();
    assert_eq!(all.len(), 20_500);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert!(all.iter().all(|e| e.selectors.len() == 2));
    assert_eq!(all, ds.list_entries(&EntryFilter::default()).await.unwrap());
}

/// Writers at once never see "database is locked" (SQLite queues them; PostgreSQL runs them).
async fn parallel_writers(ds: &DataStore) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let ds = ds.clone();
        tasks.push(tokio::spawn(async move {
            let e = ds
                .create_entry(&entry(
                    &format!("spiffe://td/p{i}"),
                    "spiffe://td/n",
                    &["k:v"],
                ))
                .await?;
            let mut u = e.clone();
            u.hint = format!("h{i}");
            ds.update_entry(&u).await?;
            ds.create_join_token(&format!("tok{i}"), 10).await?;
            ds.take_join_token(&format!("tok{i}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(ds.count_entries(&EntryFilter::default()).await.unwrap(), 50);
}

/// `ro_connection_string`: a replica is attached only when it can serve this schema; through
/// a MariaDB user that may only SELECT, the snapshot reads work and a write is refused by
/// the database (so nothing the cache loads could ever write there).
#[tokio::test]
async fn read_replica_on_mysql() {
    use sqlx::Executor;
    let Some(mut b) = Backend::mysql().await else {
        return;
    };
    let db = b.mysql_db.clone().unwrap();
    let user = format!("ro_{}", hex_rand());
    let root = sqlx::MySqlPool::connect(&mysql_url()).await.unwrap();
    root.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE USER '{user}'@'%'; GRANT SELECT ON {db}.* TO '{user}'@'%'; \
         CREATE DATABASE {user}_empty"
    ))))
    .await
    .unwrap();
    let url = mysql_url();
    let (scheme_host, _) = url.rsplit_once('/').unwrap();
    let host = scheme_host.rsplit_once('@').map_or(scheme_host, |(_, h)| h);

    // a database without the schema is not a replica of this one
    let err =
        b.ds.attach_read_replica(&format!("mysql://root@{host}/{user}_empty"))
            .await
            .unwrap_err();
    assert!(
        matches!(err, ironpact_datastore::Error::ReadReplica(_)),
        "{err}"
    );
    assert!(!b.ds.has_replica());

    b.ds.attach_read_replica(&format!("mysql://{user}@{host}/{db}"))
        .await
        .unwrap();
    assert!(b.ds.has_replica());
    b.ds.create_entry(&entry("spiffe://td/r", "spiffe://td/p", &["unix:uid:1"]))
        .await
        .unwrap();
    let seen = b.ds.snapshot_source().list_all_entries().await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(b.ds.snapshot_source().last_change_id().await.unwrap() > 0);
    let refused =
        b.ds.snapshot_source()
            .create_entry(&entry("spiffe://td/x", "spiffe://td/p", &["unix:uid:1"]))
            .await;
    assert!(
        refused.is_err(),
        "the read-only user wrote through the replica"
    );

    root.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP USER '{user}'@'%'; DROP DATABASE {user}_empty"
    ))))
    .await
    .unwrap();
    root.close().await;
    b.cleanup().await;
}

#[tokio::test]
async fn sqlite_has_no_read_replica() {
    let mut b = Backend::sqlite().await;
    let err = b.ds.attach_read_replica("whatever").await.unwrap_err();
    assert!(
        err.to_string().contains("SQLite has no read replicas"),
        "{err}"
    );
}
