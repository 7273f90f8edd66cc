//! TDX collateral from a PCS/PCCS (a loopback emulator serving the simulated stack's collateral)
//! through the server's `CollateralStore`: fetched once, checked, cached on disk with its
//! nextUpdate, found again after a restart, refreshed before it goes stale, kept in use while
//! the PCS is down, refused (and not cached) when tampered with or for another platform; and
//! merged with an offline `collateral_dir`, where the newest wins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_server::attest::tdx::pcs::{CollateralStore, NoCollateral, PcsClient, Refresh};
use ironpact_tdx::simulate::{SimPlatform, SimTd, SimulatedTdx, TestPki, collateral};
use ironpact_tdx::{Collateral, Platform, Quote, Roots, Tee};
use std::path::Path;
use std::time::Duration;
use support::pcs::{PcsEmulator, PcsServed};

const DAY: i64 = 86_400;
/// A fixed "now" for the store; the test PKI is valid around it.
const T0: i64 = 1_790_000_000;

struct Fixture {
    pki: TestPki,
    platform: SimPlatform,
    roots: Roots,
    quote: Quote,
}

fn fixture() -> Fixture {
    let platform = SimPlatform::default();
    let pki = TestPki::generate(&platform, T0 - 100 * DAY, T0 + 400 * DAY).unwrap();
    let roots = Roots::from_bytes(&pki.root.0).unwrap();
    let dev = SimulatedTdx::new(&pki, platform.clone()).unwrap();
    let quote = Quote::parse(&dev.quote(&SimTd::with_mrtd([0x42; 48]), [7; 64]).unwrap()).unwrap();
    Fixture {
        pki,
        platform,
        roots,
        quote,
    }
}

impl Fixture {
    /// Collateral issued at `issued`, current for `days`.
    fn coll(&self, issued: i64, days: i64) -> Collateral {
        collateral(&self.pki, &self.platform, issued, issued + days * DAY).unwrap()
    }

    fn key(&self) -> Platform {
        self.quote.platform().unwrap()
    }

    fn store(&self, pcs: &PcsEmulator, cache: &Path, dir: Option<&Path>) -> CollateralStore {
        CollateralStore::new(
            self.roots.clone(),
            dir.map(Path::to_path_buf),
            Some((
                PcsClient::new(&pcs.url).unwrap(),
                cache.to_path_buf(),
                Refresh::new(Duration::from_secs(DAY as u64)),
            )),
        )
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    support::runtime().block_on(f)
}

#[test]
fn the_quote_names_its_platform() {
    let f = fixture();
    let k = f.key();
    assert_eq!(k.tee, Tee::Tdx);
    assert_eq!(k.fmspc, f.platform.fmspc);
    assert_eq!(k.ca, "platform");
}

#[test]
fn fetched_once_checked_cached_and_found_after_a_restart() {
    let f = fixture();
    let pcs = PcsEmulator::serving(f.coll(T0 - DAY, 30)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = f.store(&pcs, cache.path(), None);
    let c = block_on(store.get(&f.key(), T0)).unwrap();
    let fmspc = hex::encode_upper(f.platform.fmspc);
    assert_eq!(
        pcs.requests(),
        vec![
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der".to_string(),
            format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
            "/tdx/certification/v4/qe/identity".into(),
            "/sgx/certification/v4/rootcacrl".into(),
        ]
    );
    // what was fetched verifies the quote through the production verifier
    let v = ironpact_tdx::verify(&f.quote, &c, &f.roots, T0, 0).unwrap();
    assert_eq!(v.tcb_status(), Some("UpToDate"));
    // served from memory now
    block_on(store.get(&f.key(), T0 + 3600)).unwrap();
    assert_eq!(pcs.requests().len(), 4);
    // on disk, with when it was fetched and from where, readable as offline collateral too
    let file = cache.path().join(format!("tdx-{fmspc}-platform.json"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("\"fetched_at\"") && text.contains(&pcs.url),
        "{text}"
    );
    let offline = Collateral::from_json(text.as_bytes()).unwrap();
    assert_eq!(offline.next_update, c.next_update);
    // a restarted server finds it on disk
    let restarted = f.store(&pcs, cache.path(), None);
    let again = block_on(restarted.get(&f.key(), T0 + 7200)).unwrap();
    assert_eq!(again.next_update, c.next_update);
    assert_eq!(pcs.requests().len(), 4, "the restart fetched again");
}

#[test]
fn refreshed_before_it_goes_stale() {
    let f = fixture();
    let first = f.coll(T0 - DAY, 30);
    let pcs = PcsEmulator::serving(first.clone()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = f.store(&pcs, cache.path(), None);
    block_on(store.get(&f.key(), T0)).unwrap();
    // not due yet: nothing fetched
    assert_eq!(block_on(store.refresh_due(T0 + 3600)), 0);
    assert_eq!(pcs.requests().len(), 4);
    // a day later the timer fetches the PCS's newer issue, before the old one expires
    let second = f.coll(T0 + DAY - 60, 30);
    pcs.set(|s| s.collateral = Some(second.clone()));
    assert_eq!(block_on(store.refresh_due(T0 + DAY)), 1);
    assert_eq!(pcs.requests().len(), 8);
    let c = block_on(store.get(&f.key(), T0 + DAY + 1)).unwrap();
    assert_eq!(c.next_update, second.next_update);
    assert_eq!(pcs.requests().len(), 8);

    // collateral whose nextUpdate is near is fetched again however young (after the retry
    // wait, an eighth of the refresh period, so a PCS that keeps serving it is not hammered)
    let short = f.coll(T0 + 2 * DAY, 1);
    pcs.set(|s| s.collateral = Some(short.clone()));
    let other_cache = tempfile::tempdir().unwrap();
    let s2 = f.store(&pcs, other_cache.path(), None);
    block_on(s2.get(&f.key(), T0 + 2 * DAY + 10)).unwrap();
    let n = pcs.requests().len();
    let longer = f.coll(T0 + 2 * DAY + 100, 30);
    pcs.set(|s| s.collateral = Some(longer.clone()));
    assert_eq!(block_on(s2.refresh_due(T0 + 2 * DAY + 3600)), 0);
    assert_eq!(pcs.requests().len(), n);
    assert_eq!(block_on(s2.refresh_due(T0 + 2 * DAY + 4 * 3600)), 1);
    assert_eq!(pcs.requests().len(), n + 4);
    let c = block_on(s2.get(&f.key(), T0 + 2 * DAY + 4 * 3600 + 1)).unwrap();
    assert_eq!(c.next_update, longer.next_update);
}

#[test]
fn pcs_down_keeps_the_cached_copy_and_says_why_without_one() {
    let f = fixture();
    let pcs = PcsEmulator::serving(f.coll(T0 - DAY, 30)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = f.store(&pcs, cache.path(), None);
    let first = block_on(store.get(&f.key(), T0)).unwrap();
    pcs.set(|s| s.down = true);
    // due for refresh, PCS down: the current copy stays in use
    assert_eq!(block_on(store.refresh_due(T0 + 2 * DAY)), 0);
    let c = block_on(store.get(&f.key(), T0 + 2 * DAY)).unwrap();
    assert_eq!(c.next_update, first.next_update);
    // past its nextUpdate the stale copy is still handed out; the verifier refuses it
    let late = T0 + 40 * DAY;
    let stale = block_on(store.get(&f.key(), late)).unwrap();
    let e = ironpact_tdx::verify(&f.quote, &stale, &f.roots, late, 0).unwrap_err();
    assert_eq!(e.kind.as_str(), "collateral_expired", "{e}");

    // nothing cached and the PCS down: an error naming the PCS, then no hammering
    let empty = tempfile::tempdir().unwrap();
    let fresh = f.store(&pcs, empty.path(), None);
    let NoCollateral { kind, why } = block_on(fresh.get(&f.key(), T0)).unwrap_err();
    assert_eq!(kind.as_str(), "collateral_expired");
    assert!(why.contains("HTTP 503") && why.contains(&pcs.url), "{why}");
    let before = pcs.requests().len();
    let NoCollateral { why, .. } = block_on(fresh.get(&f.key(), T0)).unwrap_err();
    assert!(why.contains("the last fetch"), "{why}");
    assert_eq!(pcs.requests().len(), before, "retried at once");
    // up again, and the retry wait over: fetched
    pcs.set(|s| s.down = false);
    block_on(fresh.get(&f.key(), T0 + 3 * 3600)).unwrap();
}

#[test]
fn tampered_or_foreign_collateral_is_refused_and_not_cached() {
    let f = fixture();
    let pcs = PcsEmulator::start(PcsServed {
        collateral: Some(f.coll(T0 - DAY, 30)),
        tamper_tcb_signature: true,
        ..Default::default()
    })
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = f.store(&pcs, cache.path(), None);
    let NoCollateral { kind, why } = block_on(store.get(&f.key(), T0)).unwrap_err();
    assert_eq!(kind.as_str(), "bad_collateral_signature", "{why}");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);

    // collateral for another platform model under this FMSPC's URL
    let other = SimPlatform {
        fmspc: [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00],
        ..SimPlatform::default()
    };
    let foreign = collateral(&f.pki, &other, T0 - DAY, T0 + 29 * DAY).unwrap();
    pcs.set(|s| {
        s.tamper_tcb_signature = false;
        s.collateral = Some(foreign);
    });
    let NoCollateral { kind, why } = block_on(store.get(&f.key(), T0 + 3 * 3600)).unwrap_err();
    assert_eq!(kind.as_str(), "fmspc_mismatch", "{why}");

    // signed by another root
    let stranger = TestPki::generate(&f.platform, T0 - 100 * DAY, T0 + 400 * DAY).unwrap();
    let forged = collateral(&stranger, &f.platform, T0 - DAY, T0 + 29 * DAY).unwrap();
    pcs.set(|s| s.collateral = Some(forged));
    let NoCollateral { kind, why } = block_on(store.get(&f.key(), T0 + 6 * 3600)).unwrap_err();
    assert_eq!(kind.as_str(), "bad_collateral_signature", "{why}");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[test]
fn the_newest_of_the_offline_dir_and_the_pcs_wins() {
    let f = fixture();
    let pcs = PcsEmulator::serving(f.coll(T0 - DAY, 30)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let older = f.coll(T0 - 5 * DAY, 30);
    std::fs::write(dir.path().join("a.json"), older.to_json()).unwrap();
    let store = f.store(&pcs, cache.path(), Some(dir.path()));
    let c = block_on(store.get(&f.key(), T0)).unwrap();
    assert_eq!(c.next_update, T0 + 29 * DAY, "the PCS's is newer");
    // the operator drops in a newer file: it applies at once
    let newer = f.coll(T0, 60);
    std::fs::write(dir.path().join("b.json"), newer.to_json()).unwrap();
    let c = block_on(store.get(&f.key(), T0 + 10)).unwrap();
    assert_eq!(c.next_update, newer.next_update);
    // and goes away with its file
    std::fs::remove_file(dir.path().join("b.json")).unwrap();
    let c = block_on(store.get(&f.key(), T0 + 20)).unwrap();
    assert_eq!(c.next_update, T0 + 29 * DAY);

    // offline only: no PCS configured
    let offline = CollateralStore::new(f.roots.clone(), Some(dir.path().to_path_buf()), None);
    let c = block_on(offline.get(&f.key(), T0)).unwrap();
    assert_eq!(c.next_update, older.next_update);
    let NoCollateral { kind, why } = block_on(
        CollateralStore::new(
            f.roots.clone(),
            Some(tempfile::tempdir().unwrap().path().to_path_buf()),
            None,
        )
        .get(&f.key(), T0),
    )
    .unwrap_err();
    assert_eq!(kind.as_str(), "collateral_expired");
    assert!(why.contains("none in collateral_dir"), "{why}");
}
