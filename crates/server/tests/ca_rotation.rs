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
}
