//! CA rotation driven by a manual clock: prepare at 1/2, activate at 5/6, keep the old
//! authority in the bundle until it expires; and a CA that survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ironpact_datastore::DataStore;
use ironpact_server::ca::{CaConfig, CaManager, SlotKind, SlotState};
use ironpact_server::clock::ManualClock;
use ironpact_server::keymanager::{DiskKeyManager, KeyManager, MemoryKeyManager};
use ironpact_spiffe::x509::{CaSubject, CertInfo};
use ironpact_spiffe::{KeyType, PrivateKey, SpiffeId, TrustDomain};
use std::sync::Arc;
use std::time::Duration;
use x509_parser::prelude::*;

const T0: i64 = 1_800_000_000;
const TTL: i64 = 600;

fn cfg() -> CaConfig {
    CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        x509_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        ttl: Duration::from_secs(TTL as u64),
        subject: CaSubject::default(),
        instance_id: "server-a".into(),
        upstream: None,
    }
}

async fn bundle(ds: &DataStore) -> ironpact_spiffe::Bundle {
    ds.get_bundle(&TrustDomain::new("example.org").unwrap())
        .await
        .unwrap()
        .unwrap()
        .bundle
}

fn states(slots: &[ironpact_server::ca::Slot], kind: SlotKind) -> Vec<SlotState> {
    slots
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.state)
        .collect()
}

/// The CA certificate that verifies an SVID signed now.
fn signer_of(ca: &CaManager, candidates: &[Vec<u8>]) -> usize {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let svid = ca
        .sign_x509_svid(&id, &key.spki_der(), &[], Duration::from_secs(60))
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&svid.cert_der).unwrap();
    candidates
        .iter()
        .position(|c| {
            let (_, ca) = X509Certificate::from_der(c).unwrap();
            leaf.verify_signature(Some(ca.public_key())).is_ok()
        })
        .expect("SVID verifies under one bundle authority")
}

#[tokio::test]
async fn rotation_follows_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let km: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let ca = CaManager::load(cfg(), ds.clone(), km, clock.clone())
        .await
        .unwrap();

    let b0 = bundle(&ds).await;
    assert_eq!(
        (b0.x509_authorities.len(), b0.jwt_authorities.len()),
        (1, 1)
    );
    let first_ca = b0.x509_authorities[0].clone();
    assert_eq!(ca.x509_ca_cert().unwrap(), first_ca);

    // just before half-life: nothing changes
    clock.set(T0 + TTL / 2 - 1);
    assert!(!ca.rotate().await.unwrap());
    assert_eq!(bundle(&ds).await.sequence, b0.sequence);

    // half-life: the next authorities are prepared and published, the old ones still sign
    clock.set(T0 + TTL / 2);
    assert!(ca.rotate().await.unwrap());
    let slots = ca.slots().await;
    assert_eq!(
        states(&slots, SlotKind::X509),
        [SlotState::Active, SlotState::Prepared]
    );
    assert_eq!(
        states(&slots, SlotKind::Jwt),
        [SlotState::Active, SlotState::Prepared]
    );
    let b1 = bundle(&ds).await;
    assert_eq!(
        (b1.x509_authorities.len(), b1.jwt_authorities.len()),
        (2, 2)
    );
    assert!(b1.sequence > b0.sequence);
    assert_eq!(signer_of(&ca, &b1.x509_authorities), 0);
    let old_kid = b1.jwt_authorities[0].key_id.clone();
    let (tok, _, _) = ca
        .sign_jwt_svid(
            &SpiffeId::parse("spiffe://example.org/w").unwrap(),
            &["a".into()],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&tok).unwrap().kid.unwrap(),
        old_kid
    );

    // five sixths: the prepared authorities take over; the old ones stay published
    clock.set(T0 + TTL * 5 / 6);
    assert!(ca.rotate().await.unwrap());
    let slots = ca.slots().await;
    assert_eq!(
        states(&slots, SlotKind::X509),
        [SlotState::Old, SlotState::Active]
    );
    let b2 = bundle(&ds).await;
    assert_eq!(b2.x509_authorities.len(), 2);
    assert_eq!(signer_of(&ca, &b2.x509_authorities), 1);
    let (tok, _, _) = ca
        .sign_jwt_svid(
            &SpiffeId::parse("spiffe://example.org/w").unwrap(),
            &["a".into()],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_ne!(
        jsonwebtoken::decode_header(&tok).unwrap().kid.unwrap(),
        old_kid
    );
    // an SVID's NotAfter never passes its CA's
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let svid = ca
        .sign_x509_svid(
            &SpiffeId::parse("spiffe://example.org/w").unwrap(),
            &key.spki_der(),
            &[],
            Duration::from_secs(100_000),
        )
        .unwrap();
    let ca_after = CertInfo::parse(&b2.x509_authorities[1]).unwrap().not_after;
    assert_eq!(CertInfo::parse(&svid.cert_der).unwrap().not_after, ca_after);

    // the first authority expires: it leaves the bundle
    clock.set(T0 + TTL + 1);
    ca.rotate().await.unwrap();
    let b3 = bundle(&ds).await;
    assert!(!b3.x509_authorities.contains(&first_ca));
    assert!(!b3.jwt_authorities.iter().any(|a| a.key_id == old_kid));
    assert!(b3.x509_authorities.contains(&b2.x509_authorities[1]));
}

#[tokio::test]
async fn disk_ca_survives_restart_and_memory_ca_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let km: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::new(dir.path().join("keys")).unwrap());
    let ca = CaManager::load(cfg(), ds.clone(), km.clone(), clock.clone())
        .await
        .unwrap();
    let cert = ca.x509_ca_cert().unwrap();
    drop(ca);
    clock.advance(60);
    let ca = CaManager::load(cfg(), ds.clone(), km, clock.clone())
        .await
        .unwrap();
    assert_eq!(ca.x509_ca_cert().unwrap(), cert, "same CA after restart");

    let mem: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let ca2 = CaManager::load(cfg(), ds.clone(), mem, clock.clone())
        .await
        .unwrap();
    assert_ne!(
        ca2.x509_ca_cert().unwrap(),
        cert,
        "memory key manager makes a new CA"
    );
    // the previous CA is still trusted until it expires
    assert!(bundle(&ds).await.x509_authorities.contains(&cert));
    // and, its key lost, it is still this server's to taint and revoke (the case that needs it)
    let lost = ironpact_spiffe::x509::authority_id(&cert).unwrap();
    let st = ca2.authority_states(SlotKind::X509).await;
    assert_eq!(st.old.unwrap().authority_id, lost);
    ca2.taint(SlotKind::X509, &lost).await.unwrap();
    ca2.revoke(SlotKind::X509, &lost).await.unwrap();
    assert!(!bundle(&ds).await.x509_authorities.contains(&cert));
}

/// A revocation interrupted after its journal write (a crash, the datastore gone) is finished
/// by the next start: the authority leaves the bundle and is never published again.
#[tokio::test]
async fn an_interrupted_revocation_is_finished_not_undone() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let km: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::new(dir.path().join("keys")).unwrap());
    let ca = CaManager::load(cfg(), ds.clone(), km.clone(), clock.clone())
        .await
        .unwrap();
    let old = ca.authority_states(SlotKind::X509).await.active.unwrap();
    let p = ca.prepare(SlotKind::X509).await.unwrap();
    ca.activate(SlotKind::X509, &p.authority_id).await.unwrap();
    ca.taint(SlotKind::X509, &old.authority_id).await.unwrap();
    drop(ca);
    // what `revoke` journals before it touches the bundle, and then the process dies
    let raw = ds.get_server_ca_journal("server-a").await.unwrap().unwrap();
    let mut j: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let mut marked = 0;
    for slot in j["slots"].as_array_mut().unwrap() {
        if slot["tainted"] == serde_json::json!(true) {
            slot["revoked"] = serde_json::json!(true);
            marked += 1;
        }
    }
    assert_eq!(marked, 1);
    ds.set_server_ca_journal("server-a", &serde_json::to_vec(&j).unwrap(), T0)
        .await
        .unwrap();
    let in_bundle = |b: &ironpact_spiffe::Bundle| {
        b.x509_authorities
            .iter()
            .any(|d| ironpact_spiffe::x509::authority_id(d).as_ref() == Some(&old.authority_id))
    };
    assert!(in_bundle(&bundle(&ds).await));
    let ca = CaManager::load(cfg(), ds.clone(), km, clock.clone())
        .await
        .unwrap();
    assert!(
        !in_bundle(&bundle(&ds).await),
        "the revocation was not finished"
    );
    assert!(ca.slots().await.iter().all(|s| !s.revoked && !s.tainted));
    clock.advance(60);
    ca.rotate().await.unwrap();
    assert!(
        !in_bundle(&bundle(&ds).await),
        "a revoked authority came back"
    );
}

/// Servers of one cluster share the datastore and the bundle, each with its own CA and JWT
/// keys and journal: both starting at once publish both authorities (neither write loses the
/// other's), each signs with its own key, each rotates on its own schedule, and a restarted
/// server finds its own journal, not the other's.
async fn two_servers_share_one_bundle(ds_a: DataStore, ds_b: DataStore) {
    let clock = Arc::new(ManualClock::new(T0));
    let cfg_of = |name: &str| CaConfig {
        instance_id: name.into(),
        ..cfg()
    };
    let (km_a, km_b): (Arc<dyn KeyManager>, Arc<dyn KeyManager>) = (
        Arc::new(MemoryKeyManager::default()),
        Arc::new(MemoryKeyManager::default()),
    );
    // started together: the bundle keeps both
    let (a, b) = tokio::join!(
        CaManager::load(
            cfg_of("server-a"),
            ds_a.clone(),
            km_a.clone(),
            clock.clone()
        ),
        CaManager::load(
            cfg_of("server-b"),
            ds_b.clone(),
            km_b.clone(),
            clock.clone()
        ),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let both = bundle(&ds_a).await;
    assert_eq!(
        (both.x509_authorities.len(), both.jwt_authorities.len()),
        (2, 2),
        "one server's authorities were lost"
    );
    let ia = signer_of(&a, &both.x509_authorities);
    let ib = signer_of(&b, &both.x509_authorities);
    assert_ne!(ia, ib, "the two servers sign with one key");

    // both rotate at once: prepared authorities of both are published
    clock.set(T0 + TTL / 2);
    let (ra, rb) = tokio::join!(a.rotate(), b.rotate());
    assert!(ra.unwrap() && rb.unwrap());
    let four = bundle(&ds_a).await;
    assert_eq!(
        (four.x509_authorities.len(), four.jwt_authorities.len()),
        (4, 4),
        "a concurrent publication was lost"
    );

    // server A restarts (same key manager): it takes up its own journal, signs as before
    let a_slots = a.slots().await;
    drop(a);
    let a2 = CaManager::load(cfg_of("server-a"), ds_a.clone(), km_a, clock.clone())
        .await
        .unwrap();
    assert_eq!(a2.slots().await, a_slots);
    assert_eq!(signer_of(&a2, &four.x509_authorities), ia);
    assert_ne!(a2.slots().await, b.slots().await);

    // an operator rotates server A's X.509 CA and JWT key by hand, taints and revokes the
    // old ones: the shared bundle says so for every server, and B's writes keep it that way
    for kind in [SlotKind::X509, SlotKind::Jwt] {
        let before = a2.authority_states(kind).await;
        let old_id = before.active.clone().unwrap().authority_id;
        let prepared = a2.prepare(kind).await.unwrap();
        assert_ne!(
            Some(&prepared),
            before.prepared.as_ref(),
            "prepare made nothing new"
        );
        a2.activate(kind, &prepared.authority_id).await.unwrap();
        let now = a2.authority_states(kind).await;
        assert_eq!(now.active.unwrap().authority_id, prepared.authority_id);
        assert_eq!(now.old.unwrap().authority_id, old_id);
        let tainted = a2.taint(kind, &old_id).await.unwrap();
        assert!(tainted.tainted);
        b.rotate().await.unwrap();
        let shared = bundle(&ds_b).await;
        let (marks, present) = match kind {
            SlotKind::X509 => (
                &shared.x509_tainted,
                shared
                    .x509_authorities
                    .iter()
                    .any(|d| ironpact_spiffe::x509::authority_id(d).as_ref() == Some(&old_id)),
            ),
            SlotKind::Jwt => (
                &shared.jwt_tainted,
                shared.jwt_authorities.iter().any(|k| k.key_id == old_id),
            ),
        };
        assert!(
            marks.contains(&old_id) && marks.len() == 1,
            "{kind:?}: {marks:?}"
        );
        assert!(present, "a tainted authority stays trusted until revoked");
        a2.revoke(kind, &old_id).await.unwrap();
        b.rotate().await.unwrap();
        clock.set(ironpact_spiffe::clock::Clock::now(&*clock) + 1);
        b.rotate().await.unwrap();
        let after = bundle(&ds_b).await;
        assert!(after.x509_tainted.is_empty() && after.jwt_tainted.is_empty());
        assert!(
            !after
                .x509_authorities
                .iter()
                .any(|d| ironpact_spiffe::x509::authority_id(d).as_ref() == Some(&old_id))
                && !after.jwt_authorities.iter().any(|k| k.key_id == old_id),
            "{kind:?}: a revoked authority came back"
        );
        assert!(
            a2.authority_states(kind)
                .await
                .old
                .is_none_or(|o| o.authority_id != old_id)
        );
    }
    // B's own authorities were not touched
    let b_ids: Vec<String> = b.slots().await.iter().map(|s| s.authority_id()).collect();
    let last = bundle(&ds_a).await;
    for id in b_ids.iter().filter(|i| !i.is_empty()) {
        assert!(
            last.x509_authorities
                .iter()
                .any(|d| ironpact_spiffe::x509::authority_id(d).as_ref() == Some(id))
                || last.jwt_authorities.iter().any(|k| &k.key_id == id),
            "server B's authority {id} left the bundle"
        );
    }
}

/// Every request the authorities' state does not allow is refused with what to do instead,
/// and changes nothing.
#[tokio::test]
async fn local_authority_refusals_name_the_fix() {
    use ironpact_server::ca::{AuthorityRefusal as R, CaError};
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let km: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let ca = CaManager::load(cfg(), ds.clone(), km.clone(), clock.clone())
        .await
        .unwrap();
    let refused = |r: Result<ironpact_server::ca::AuthorityState, CaError>| match r {
        Err(CaError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let active = ca
        .authority_states(SlotKind::X509)
        .await
        .active
        .unwrap()
        .authority_id;
    assert_eq!(
        active.len(),
        40,
        "X.509 authority IDs are SHA-1 subject key IDs in hex: {active}"
    );
    let bundle0 = bundle(&ds).await;
    let slots0 = ca.slots().await;

    assert!(matches!(
        refused(ca.activate(SlotKind::X509, "").await),
        R::NoAuthorityId(_)
    ));
    assert!(matches!(
        refused(ca.taint(SlotKind::X509, "00ff").await),
        R::Unknown { .. }
    ));
    assert!(matches!(
        refused(ca.activate(SlotKind::X509, &active).await),
        R::NothingPrepared(..)
    ));
    let r = refused(ca.taint(SlotKind::X509, &active).await);
    assert!(
        matches!(
            r,
            R::NotOld {
                state: "active",
                ..
            }
        ),
        "{r:?}"
    );
    assert!(
        r.to_string().contains("activate its successor first"),
        "{r}"
    );
    assert!(matches!(
        refused(ca.revoke(SlotKind::X509, &active).await),
        R::NotOld { .. }
    ));
    // a JWT key ID is not an X.509 authority's
    let kid = ca
        .authority_states(SlotKind::Jwt)
        .await
        .active
        .unwrap()
        .authority_id;
    assert!(matches!(
        refused(ca.taint(SlotKind::X509, &kid).await),
        R::Unknown { .. }
    ));
    assert_eq!(ca.slots().await, slots0, "a refusal changed the journal");
    assert_eq!(bundle(&ds).await, bundle0, "a refusal changed the bundle");

    let p = ca.prepare(SlotKind::X509).await.unwrap();
    let r = refused(ca.taint(SlotKind::X509, &p.authority_id).await);
    assert!(
        matches!(
            r,
            R::NotOld {
                state: "prepared",
                ..
            }
        ),
        "{r:?}"
    );
    // preparing again replaces the unused prepared authority (its key and bundle entry go)
    let p2 = ca.prepare(SlotKind::X509).await.unwrap();
    assert_ne!(p2.authority_id, p.authority_id);
    let b = bundle(&ds).await;
    assert!(
        !b.x509_authorities
            .iter()
            .any(|d| ironpact_spiffe::x509::authority_id(d).as_ref() == Some(&p.authority_id))
    );
    assert!(matches!(
        refused(ca.activate(SlotKind::X509, &active).await),
        R::NotPrepared {
            state: "active",
            ..
        }
    ));
    // IDs are matched without regard to case, as operators paste them
    ca.activate(SlotKind::X509, &p2.authority_id.to_uppercase())
        .await
        .unwrap();
    let r = refused(ca.revoke(SlotKind::X509, &active).await);
    assert!(matches!(r, R::NotTainted(_)), "{r:?}");
    ca.taint(SlotKind::X509, &active).await.unwrap();
    assert!(matches!(
        refused(ca.taint(SlotKind::X509, &active).await),
        R::AlreadyTainted(_)
    ));
    // the taint outlives a restart, and the new active authority signs
    let slots = ca.slots().await;
    drop(ca);
    let ca = CaManager::load(cfg(), ds.clone(), km, clock.clone())
        .await
        .unwrap();
    assert_eq!(ca.slots().await, slots);
    let st = ca.authority_states(SlotKind::X509).await;
    assert!(st.old.unwrap().tainted);
    let b = bundle(&ds).await;
    let i = signer_of(&ca, &b.x509_authorities);
    assert_eq!(
        ironpact_spiffe::x509::authority_id(&b.x509_authorities[i]),
        Some(p2.authority_id.clone())
    );
    assert!(b.x509_tainted.contains(&active));
    // the tainted authority expires on its schedule, and its mark goes with it
    clock.set(T0 + TTL + 1);
    ca.rotate().await.unwrap();
    let b = bundle(&ds).await;
    assert!(b.x509_tainted.is_empty(), "{:?}", b.x509_tainted);
}

#[tokio::test]
async fn two_servers_share_one_bundle_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    two_servers_share_one_bundle(ds.clone(), ds).await;
}

#[tokio::test]
async fn two_servers_share_one_bundle_on_postgres() {
    let url = std::env::var("IRONPACT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!("ca_{:016x}", rand::random::<u64>());
    // two pools, as two servers have
    let (a, b) = match (
        DataStore::open_postgres(&url, Some(&schema)).await,
        DataStore::open_postgres(&url, Some(&schema)).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "postgres not reachable at {url} (CI=true requires it): {e}"
            );
            println!("SKIPPED: postgres not reachable ({e})");
            return;
        }
    };
    two_servers_share_one_bundle(a.clone(), b.clone()).await;
    a.drop_schema_for_tests(&schema).await.unwrap();
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn two_servers_share_one_bundle_on_mysql() {
    let url = std::env::var("IRONPACT_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_string());
    let db = format!("ca_{:016x}", rand::random::<u64>());
    let (a, b) = match DataStore::open_mysql(&url, Some(&db)).await {
        Ok(a) => (a, DataStore::open_mysql(&url, Some(&db)).await.unwrap()),
        Err(e) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "mysql not reachable at {url} (CI=true requires it): {e}"
            );
            println!("SKIPPED: mysql not reachable ({e})");
            return;
        }
    };
    two_servers_share_one_bundle(a.clone(), b.clone()).await;
    a.drop_schema_for_tests(&db).await.unwrap();
    a.close().await;
    b.close().await;
}

/// An operator's root, written as files (certificate, key) the way `UpstreamAuthority "disk"`
/// reads them: PKCS#8 or SEC1 keys.
fn upstream_files(
    dir: &std::path::Path,
    sec1: bool,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let td = TrustDomain::new("upstream.example").unwrap();
    let der = ironpact_spiffe::x509::self_signed_ca(
        &key,
        &td,
        &CaSubject::default(),
        [7; 16],
        T0 - 100,
        T0 + 100 * TTL,
    )
    .unwrap();
    let cert = dir.join("upstream.crt");
    let keyf = dir.join("upstream.key");
    std::fs::write(&cert, ironpact_spiffe::x509::certs_to_pem([der.as_slice()])).unwrap();
    let pem = if sec1 {
        use p256::pkcs8::DecodePrivateKey;
        let sk = p256::SecretKey::from_pkcs8_der(key.pkcs8_der()).unwrap();
        ::pem::encode(&::pem::Pem::new(
            "EC PRIVATE KEY",
            sk.to_sec1_der().unwrap().to_vec(),
        ))
    } else {
        key.pkcs8_pem()
    };
    std::fs::write(&keyf, pem).unwrap();
    (cert, keyf, der)
}

/// With an UpstreamAuthority, our CAs are signed by the operator's root: the bundle holds the
/// root (from the first start with it, before any CA it signs is used), SVID chains carry our
/// CA and verify to the root, and taint/revoke of an upstream-signed CA is refused with the way
/// out. Switching modes never cuts agents off: the active CA keeps signing until its successor,
/// made the new way at once, takes over on the schedule; switching back keeps the chains the
/// upstream CAs need, and the root leaves the bundle once no CA of ours chains to it.
#[tokio::test]
async fn an_upstream_authority_signs_our_cas() {
    use ironpact_server::ca::Upstream;
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let km: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let k = PrivateKey::generate(KeyType::EcP256).unwrap();
    let chain_of = |ca: &CaManager| {
        ca.sign_x509_svid(&id, &k.spki_der(), &[], Duration::from_secs(60))
            .unwrap()
            .chain
    };
    // first without: a self-signed CA in the bundle
    let ca = CaManager::load(cfg(), ds.clone(), km.clone(), clock.clone())
        .await
        .unwrap();
    let self_signed = bundle(&ds).await.x509_authorities.clone();
    assert_eq!(self_signed.len(), 1);
    drop(ca);

    let (cert, key, root) = upstream_files(dir.path(), true);
    let up = || Some(Arc::new(Upstream::load(&cert, &key, None, T0).unwrap()));
    let mut c = cfg();
    c.upstream = up();
    let ca = CaManager::load(c, ds.clone(), km.clone(), clock.clone())
        .await
        .unwrap();
    let b = bundle(&ds).await;
    assert!(
        b.x509_authorities.contains(&root),
        "the root is published at once"
    );
    assert!(b.x509_authorities.contains(&self_signed[0]));
    assert_eq!(
        chain_of(&ca).len(),
        1,
        "the self-signed CA keeps signing: agents do not have the root yet"
    );
    let states = ca.authority_states(SlotKind::X509).await;
    assert!(
        states.prepared.is_some(),
        "its successor is made the new way at once"
    );
    // on the schedule, the upstream-signed CA takes over
    clock.set(T0 + TTL * 5 / 6 + 1);
    ca.rotate().await.unwrap();
    let chain = chain_of(&ca);
    assert_eq!(chain.len(), 2, "the SVID, then our CA");
    let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let now = T0 + TTL * 5 / 6 + 1;
    assert_eq!(
        ironpact_spiffe::x509::verify_svid_chain(&refs, std::slice::from_ref(&root), now).unwrap(),
        id
    );
    assert!(ironpact_spiffe::x509::verify_svid_chain(&refs[..1], &self_signed, now).is_err());
    // rotations never remove the root; the self-signed CA leaves once expired
    for step in 1..=12 {
        clock.set(now + step * TTL / 4);
        ca.rotate().await.unwrap();
        let x = bundle(&ds).await.x509_authorities;
        assert!(x.contains(&root), "step {step}");
        assert!(
            x.iter().all(|c| *c == root || *c == self_signed[0]),
            "step {step}"
        );
    }
    let later = now + 3 * TTL;
    assert!(!bundle(&ds).await.x509_authorities.contains(&self_signed[0]));
    let chain = chain_of(&ca);
    let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    assert_eq!(
        ironpact_spiffe::x509::verify_svid_chain(&refs, std::slice::from_ref(&root), later)
            .unwrap(),
        id
    );
    // an operator's rotation works as without an upstream; the bundle still holds the root
    let p = ca.prepare(SlotKind::X509).await.unwrap();
    ca.activate(SlotKind::X509, &p.authority_id).await.unwrap();
    assert!(bundle(&ds).await.x509_authorities.contains(&root));
    let old = ca.authority_states(SlotKind::X509).await.old.unwrap();
    let e = ca
        .taint(SlotKind::X509, &old.authority_id)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UpstreamAuthority"), "{e}");
    drop(ca);

    // back to self-signed: the upstream-signed CA keeps signing with its stored chain until a
    // self-signed successor takes over; the root stays while any CA of ours chains to it
    let ca = CaManager::load(cfg(), ds.clone(), km.clone(), clock.clone())
        .await
        .unwrap();
    assert_eq!(chain_of(&ca).len(), 2);
    assert!(bundle(&ds).await.x509_authorities.contains(&root));
    let mut t = later;
    for _ in 0..16 {
        t += TTL / 4;
        clock.set(t);
        ca.rotate().await.unwrap();
    }
    assert_eq!(chain_of(&ca).len(), 1, "a self-signed CA signs again");
    let x = bundle(&ds).await.x509_authorities;
    assert!(
        !x.contains(&root),
        "no CA of ours chains to the root any more"
    );
    assert!(!x.is_empty());

    // the upstream's files are checked: the key must match, a non-root needs its roots
    let other = dir.path().join("other.key");
    std::fs::write(
        &other,
        PrivateKey::generate(KeyType::EcP256).unwrap().pkcs8_pem(),
    )
    .unwrap();
    let e = Upstream::load(&cert, &other, None, T0).unwrap_err();
    assert!(e.contains("does not match"), "{e}");
    let sub = dir.path().join("pkcs8");
    std::fs::create_dir(&sub).unwrap();
    let (cert2, key2, _) = upstream_files(&sub, false);
    assert!(Upstream::load(&cert2, &key2, None, T0).is_ok());
    // roots that are not this CA's: the probe chain does not verify
    let wrong = dir.path().join("wrong-roots.pem");
    std::fs::write(&wrong, std::fs::read_to_string(&cert2).unwrap()).unwrap();
    let e = Upstream::load(&cert, &key, Some(&wrong), T0).unwrap_err();
    assert!(e.contains("does not verify to its roots"), "{e}");
}

/// In a cluster, a server that leaves the UpstreamAuthority never takes the root out of the
/// shared bundle while another server still signs under it.
#[tokio::test]
async fn a_root_another_server_needs_stays_in_the_bundle() {
    use ironpact_server::ca::Upstream;
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open_sqlite(&dir.path().join("ds.sqlite3"))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (cert, key, root) = upstream_files(dir.path(), false);
    let with = |instance: &str, upstream: bool| {
        let mut c = cfg();
        c.instance_id = instance.into();
        if upstream {
            c.upstream = Some(Arc::new(Upstream::load(&cert, &key, None, T0).unwrap()));
        }
        c
    };
    let km_a: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let km_b: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let a = CaManager::load(with("a", true), ds.clone(), km_a.clone(), clock.clone())
        .await
        .unwrap();
    let b = CaManager::load(with("b", true), ds.clone(), km_b, clock.clone())
        .await
        .unwrap();
    drop(a);
    // A leaves the upstream; long after its upstream-signed CAs are gone, B still needs the root
    let a = CaManager::load(with("a", false), ds.clone(), km_a, clock.clone())
        .await
        .unwrap();
    let mut t = T0;
    for _ in 0..20 {
        t += TTL / 4;
        clock.set(t);
        // checked right after A's step (B would put the root back at its own)
        a.rotate().await.unwrap();
        assert!(bundle(&ds).await.x509_authorities.contains(&root), "at {t}");
        b.rotate().await.unwrap();
    }
}
