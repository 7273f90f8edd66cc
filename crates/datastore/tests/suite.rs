//! One datastore test suite, run against every backend: SQLite (a temp file) and the
//! PostgreSQL on 127.0.0.1:5432 (each test in its own schema). Without PostgreSQL the
//! PostgreSQL half prints `SKIPPED: postgres not reachable`, unless CI=true, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ironpact_datastore::{AgentRecord, DataStore, Entry, EntryFilter, Error, MatchBehavior};
use ironpact_spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};

fn pg_url() -> String {
    std::env::var("IRONPACT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

struct Backend {
    ds: DataStore,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
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
        }
    }

    async fn postgres() -> Option<Self> {
        let schema = format!("t_{}", hex_rand());
        match DataStore::open_postgres(&pg_url(), Some(&schema)).await {
            Ok(ds) => Some(Self {
                ds,
                _dir: None,
                pg_schema: Some(schema),
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

    async fn cleanup(self) {
        self.ds.close().await;
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
);

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

    let mut upd = got.clone();
    upd.selectors = vec![sel("unix:uid:1001")];
    upd.hint = "web2".into();
    let updated = ds.update_entry(&upd).await.unwrap();
    assert_eq!(updated.revision_number, 1);
    let got = ds.get_entry(&created.id).await.unwrap();
    assert_eq!(got.selectors, vec![sel("unix:uid:1001")]);
    assert_eq!(got.hint, "web2");
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
        attestation_error: String::new(),
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
        !ds.suspend_agent(&a.spiffe_id, "stale", "x", 2)
            .await
            .unwrap()
    );
    assert!(matches!(
        ds.update_agent_if_current(&a, "stale").await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        ds.suspend_agent(&a.spiffe_id, "01ab", "refused", 2)
            .await
            .unwrap()
    );
    assert_eq!(
        ds.get_agent(&a.spiffe_id).await.unwrap().attestation_error,
        "refused"
    );
    ds.update_agent_if_current(&a, "01ab").await.unwrap();
    ds.update_agent(&banned).await.unwrap();
    // a banned agent is neither suspended nor rewritten by a renewal
    assert!(!ds.suspend_agent(&a.spiffe_id, "", "x", 3).await.unwrap());
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
