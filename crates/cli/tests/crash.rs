//! Killed with SIGKILL in the middle of writes and restarted, the server has lost no entry
//! whose creation it acknowledged, and keeps its CA. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Backend, Out, TestServer, openssl_verify};

#[test]
fn sqlite_kill9_mid_write() {
    kill9_mid_write(TestServer::start(Backend::Sqlite));
}

#[test]
fn postgres_kill9_mid_write() {
    if let Some(b) = Backend::postgres() {
        kill9_mid_write(TestServer::start(b));
    }
}

fn kill9_mid_write(mut s: TestServer) {
    let bundle_before = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (acked, stop, socket) = (acked.clone(), stop.clone(), s.socket.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("spiffe://example.org/crash/w{w}/e{i}");
                    let o = Out::from(
                        std::process::Command::new(support::BIN)
                            .args([
                                "entry",
                                "create",
                                "-spiffeID",
                                &id,
                                "-parentID",
                                "spiffe://example.org/node",
                            ])
                            .args(["-selector", "unix:uid:1", "-output", "json", "-socketPath"])
                            .arg(&socket)
                            .output()
                            .unwrap(),
                    );
                    if o.ok() {
                        let v = o.json();
                        acked
                            .lock()
                            .unwrap()
                            .insert(v["results"][0]["entry"]["id"].as_str().unwrap().to_string());
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 5,
        "writers made too little progress: {}",
        acked.len()
    );

    s.spawn();
    let listed = s
        .cli(&[
            "entry",
            "show",
            "-parentID",
            "spiffe://example.org/node",
            "-output",
            "json",
        ])
        .expect_ok()
        .json();
    let present: BTreeSet<String> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged entries lost after kill -9: {lost:?}",
        lost.len()
    );

    // the same CA: the bundle is unchanged and new SVIDs verify against the old bundle
    let bundle_after = s.cli(&["bundle", "show"]).expect_ok().stdout.clone();
    assert_eq!(bundle_before, bundle_after, "CA changed across a crash");
    let out = s.path("after");
    s.cli(&[
        "x509",
        "mint",
        "-spiffeID",
        "spiffe://example.org/after",
        "-write",
        out.to_str().unwrap(),
    ])
    .expect_ok();
    let old = s.path("before.pem");
    std::fs::write(&old, bundle_before).unwrap();
    assert!(openssl_verify(&old, &out.join("svid.pem")).ok());
}
