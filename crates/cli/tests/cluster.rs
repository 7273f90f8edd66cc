//! A real cluster: two `ironpact-server` processes on one PostgreSQL, haproxy (TCP mode) in
//! front of them, agents pointed at haproxy. Under load (entries created through both servers,
//! SVIDs rotating every 10 s) one server is killed with SIGKILL: every acknowledged entry
//! exists afterwards, every workload holds a valid SVID throughout, new entries keep reaching
//! the agents through the survivor, and the killed server rejoins. Then PostgreSQL itself is
//! restarted under the cluster: errors, no crash, recovery on its own.
//!
//! One test in this binary: it restarts the shared PostgreSQL, which no other test may see.
//! haproxy is installed (Debian package) when missing; without it, or without PostgreSQL,
//! the test prints SKIPPED, unless CI=true, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Backend, Haproxy, Plugin, TestAgent, TestServer, haproxy, join_token, my_uid};

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(why: &str) {
    assert!(!ci(), "{why} (CI=true requires it)");
    println!("SKIPPED: {why}");
}

/// `ironpact-server <args> -socketPath <socket>`: (succeeded, stdout).
fn server_cli(socket: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(support::BIN)
        .args(args)
        .arg("-socketPath")
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

/// Every entry ID the server lists.
fn entry_ids(socket: &Path) -> Option<Vec<String>> {
    let (ok, out) = server_cli(socket, &["entry", "show", "-output", "json"]);
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    Some(
        v["entries"]
            .as_array()?
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Fetches the workload's X509-SVIDs now through the agent at `socket` and checks each: within
/// its validity and chaining to the bundle served with it. Returns the first one's serial.
fn holds_valid_svid(socket: &Path, dir: &Path) -> Result<String, String> {
    let _ = std::fs::remove_dir_all(dir);
    let o = Command::new(support::AGENT_BIN)
        .args(["api", "fetch", "x509", "-timeout", "5", "-write"])
        .arg(dir)
        .arg("-socketPath")
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "fetch failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut first = None;
    for i in 0.. {
        let Ok(pem) = std::fs::read_to_string(dir.join(format!("svid.{i}.pem"))) else {
            break;
        };
        let chain = ironpact_spiffe::x509::certs_from_pem(&pem).map_err(|e| e.to_string())?;
        let bundle = std::fs::read_to_string(dir.join(format!("bundle.{i}.pem")))
            .map_err(|e| e.to_string())?;
        let roots = ironpact_spiffe::x509::certs_from_pem(&bundle).map_err(|e| e.to_string())?;
        let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        ironpact_spiffe::x509::verify_svid_chain(&refs, &roots, now)
            .map_err(|e| format!("SVID {i} does not verify now: {e}"))?;
        let info = ironpact_spiffe::x509::CertInfo::parse(&chain[0]).map_err(|e| e.to_string())?;
        first.get_or_insert(info.serial_hex);
    }
    first.ok_or_else(|| "no SVID written".to_string())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn two_servers_behind_haproxy_survive_a_kill_and_a_database_restart() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Some(hap) = haproxy() else {
        return skip("haproxy is not installed and could not be installed");
    };
    let ttl = |c: support::ServerConf| c.server("default_x509_svid_ttl", "20s");
    let mut a = TestServer::start_conf(backend.clone(), ttl);
    let b = TestServer::start_conf(backend.clone(), ttl);
    // each server its own CA, both in the one bundle
    wait_for("both CAs in the bundle", Duration::from_secs(10), || {
        a.bundle_roots().len() == 2 && b.bundle_roots().len() == 2
    });
    // agent 0 goes through a frontend that prefers A, agent 1 through one that prefers B;
    // each falls back to the other server (so agent 0 must move when A dies)
    let to_a = Haproxy::start(&hap, &[(a.port, false), (b.port, true)]);
    let to_b = Haproxy::start(&hap, &[(b.port, false), (a.port, true)]);

    // two agents through haproxy, each with one workload entry
    let uid = my_uid();
    let mut agents = Vec::new();
    for i in 0..2 {
        let alias = format!("spiffe://example.org/node{i}");
        let token = join_token(&a, &alias);
        a.cli(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://example.org/w{i}"),
            "-parentID",
            &alias,
            "-selector",
            &format!("unix:uid:{uid}"),
        ])
        .expect_ok();
        let port = if i == 0 { to_a.port } else { to_b.port };
        let agent = TestAgent::start_at(
            &a,
            port,
            Some(&token),
            [Plugin::new("NodeAttestor", "join_token")],
            true,
        );
        assert!(agent.fetch_until_ok(&[]).ok(), "{}", agent.log());
        agents.push(agent);
    }

    // load: entries created through both servers in turn (acknowledged IDs kept), and every
    // workload's SVID checked three times a second
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed_creates = Arc::new(AtomicUsize::new(0));
    let creator = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed_creates.clone());
        let sockets = [a.socket.clone(), b.socket.clone()];
        std::thread::spawn(move || {
            for n in 0..400u32 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let socket = &sockets[n as usize % 2];
                let (ok, out) = server_cli(
                    socket,
                    &[
                        "entry",
                        "create",
                        "-spiffeID",
                        &format!("spiffe://example.org/load/{n}"),
                        "-parentID",
                        "spiffe://example.org/node1",
                        "-selector",
                        &format!("unix:uid:{}", 200_000 + n),
                        "-output",
                        "json",
                    ],
                );
                let id = serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| v["results"][0]["entry"]["id"].as_str().map(str::to_string));
                match (ok, id) {
                    (true, Some(id)) => acked.lock().unwrap().push(id),
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let svid_failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let serials: Arc<Mutex<Vec<std::collections::BTreeSet<String>>>> =
        Arc::new(Mutex::new(vec![Default::default(); 2]));
    let checks = Arc::new(AtomicUsize::new(0));
    let watchers: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let (socket, stop, failures, checks, serials) = (
                agent.socket.clone(),
                stop.clone(),
                svid_failures.clone(),
                checks.clone(),
                serials.clone(),
            );
            let dir = agent.dir.path().join("svid-check");
            std::thread::spawn(move || {
                std::fs::create_dir_all(&dir).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match holds_valid_svid(&socket, &dir) {
                        Ok(serial) => {
                            serials.lock().unwrap()[i].insert(serial);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("agent {i}: {e}")),
                    }
                    checks.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();

    // a few seconds of load on both, then server A dies
    std::thread::sleep(Duration::from_secs(4));
    let before_kill = acked.lock().unwrap().len();
    let serials_at_kill: Vec<usize> = serials.lock().unwrap().iter().map(|s| s.len()).collect();
    let agents_before = support::agent_count(&b);
    a.kill9();
    let killed_at = Instant::now();
    // the survivor takes every agent (whichever server each was connected to): a new entry
    // created through B reaches each agent's workload
    for i in 0..2 {
        b.cli(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://example.org/after-kill-{i}"),
            "-parentID",
            &format!("spiffe://example.org/node{i}"),
            "-selector",
            &format!("unix:uid:{uid}"),
        ])
        .expect_ok();
    }
    let resynced = wait_for(
        "entries created after the kill reach both agents",
        Duration::from_secs(30),
        || {
            (0..2).all(|i| {
                agents[i]
                    .cli(&["api", "fetch", "x509", "-timeout", "5"])
                    .stdout
                    .contains(&format!("spiffe://example.org/after-kill-{i}"))
            })
        },
    );
    // two SVID rotations (TTL 20 s) under the survivor alone
    std::thread::sleep(Duration::from_secs(21));
    let after_kill = acked.lock().unwrap().len();
    assert!(
        after_kill > before_kill,
        "no entry was acknowledged after the kill"
    );
    // agent 0, A's, got new SVIDs from B alone, under its old agent identity: nobody attested
    let rotated_since: Vec<usize> = serials
        .lock()
        .unwrap()
        .iter()
        .zip(&serials_at_kill)
        .map(|(s, n)| s.len() - n)
        .collect();
    assert!(
        rotated_since.iter().all(|n| *n >= 1),
        "no SVID rotation after the kill: {rotated_since:?}"
    );
    assert_eq!(
        support::agent_count(&b),
        agents_before,
        "an agent attested again instead of failing over"
    );
    for ag in &agents {
        assert_eq!(
            ag.log().matches("node attested").count(),
            1,
            "an agent attested again:\n{}",
            ag.log()
        );
    }

    // the killed server rejoins: it loads everything and serves again
    let restart = Instant::now();
    a.spawn();
    wait_for(
        "the restarted server lists what the other acknowledged",
        Duration::from_secs(30),
        || {
            let acked = acked.lock().unwrap().clone();
            entry_ids(&a.socket).is_some_and(|ids| acked.iter().all(|id| ids.contains(id)))
        },
    );
    let rejoined = restart.elapsed();

    // PostgreSQL restarts under the cluster: errors meanwhile, no crash, recovery unaided
    let pg_restart = Command::new("pg_ctlcluster")
        .args(["15", "main", "restart"])
        .status();
    let mut db_recovered = None;
    match pg_restart {
        Ok(s) if s.success() => {
            let mut done = [false, false];
            let t = wait_for(
                "an entry created through each server after the database restart",
                Duration::from_secs(60),
                || {
                    for (i, s) in [&a.socket, &b.socket].into_iter().enumerate() {
                        if done[i] {
                            continue;
                        }
                        let o = Command::new(support::BIN)
                            .args([
                                "entry",
                                "create",
                                "-spiffeID",
                                &format!("spiffe://example.org/after-db-{i}"),
                                "-parentID",
                                "spiffe://example.org/node0",
                                "-selector",
                                &format!("unix:uid:{uid}"),
                                "-socketPath",
                            ])
                            .arg(s)
                            .stdin(Stdio::null())
                            .output()
                            .unwrap();
                        // an answer lost after the commit makes the retry a duplicate
                        done[i] = o.status.success()
                            || String::from_utf8_lossy(&o.stderr).contains("lready exists");
                    }
                    done == [true, true]
                },
            );
            db_recovered = Some(t);
            assert!(
                alive(a.pid()) && alive(b.pid()),
                "a server died with the database"
            );
        }
        other => skip(&format!(
            "cannot restart PostgreSQL with pg_ctlcluster ({other:?}); the database-restart part did not run"
        )),
    }

    stop.store(true, Ordering::SeqCst);
    creator.join().unwrap();
    for w in watchers {
        w.join().unwrap();
    }
    let failures = svid_failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "a workload went without a valid SVID ({} of {} checks):\n{}\nagent 0 log:\n{}",
        failures.len(),
        checks.load(Ordering::SeqCst),
        failures.join("\n"),
        agents[0].log()
    );
    // the SVIDs rotated while all this went on
    for (i, seen) in serials.lock().unwrap().iter().enumerate() {
        assert!(
            seen.len() >= 2,
            "agent {i}'s workload SVID never rotated: {seen:?}"
        );
    }
    // every acknowledged entry exists, on both servers
    let acked = acked.lock().unwrap().clone();
    for s in [&a.socket, &b.socket] {
        let ids = entry_ids(s).expect("entry show after recovery");
        let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(id)).collect();
        assert!(missing.is_empty(), "acknowledged entries lost: {missing:?}");
    }

    // forced rotation across the cluster: each server's operator activates a new X.509 CA and
    // taints and revokes its old one; every agent (whichever server it is connected to)
    // replaces what the old ones signed, and their bundles lose them
    let json = |socket: &Path, args: &[&str]| -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["-output", "json"]);
        let (ok, out) = server_cli(socket, &args);
        assert!(ok, "{args:?} failed: {out}");
        serde_json::from_str(&out).unwrap()
    };
    let mut old = Vec::new();
    for s in [&a.socket, &b.socket] {
        let shown = json(s, &["localauthority", "x509", "show"]);
        old.push(
            shown["active"]["authority_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let p = json(s, &["localauthority", "x509", "prepare"]);
        let id = p["prepared_authority"]["authority_id"].as_str().unwrap();
        json(
            s,
            &["localauthority", "x509", "activate", "-authorityID", id],
        );
    }
    assert_ne!(old[0], old[1], "the two servers share one CA");
    for (s, id) in [(&a.socket, &old[0]), (&b.socket, &old[1])] {
        json(s, &["localauthority", "x509", "taint", "-authorityID", id]);
    }
    let signer = |i: usize| -> Option<String> {
        let dir = agents[i].dir.path().join("forced");
        holds_valid_svid(&agents[i].socket, &dir).ok()?;
        let pem = std::fs::read_to_string(dir.join("svid.0.pem")).ok()?;
        let der = ironpact_spiffe::x509::certs_from_pem(&pem).ok()?.remove(0);
        ironpact_spiffe::x509::CertInfo::parse(&der)
            .ok()?
            .authority_key_id
    };
    let replaced = wait_for(
        "every workload SVID signed by a tainted CA to be replaced",
        Duration::from_secs(8),
        || (0..agents.len()).all(|i| signer(i).is_some_and(|id| !old.contains(&id))),
    );
    for (s, id) in [(&a.socket, &old[0]), (&b.socket, &old[1])] {
        json(s, &["localauthority", "x509", "revoke", "-authorityID", id]);
    }
    let revoked = wait_for(
        "every workload's bundle to drop the revoked CAs",
        Duration::from_secs(10),
        || {
            (0..agents.len()).all(|i| {
                let dir = agents[i].dir.path().join("forced");
                signer(i).is_some()
                    && std::fs::read_to_string(dir.join("bundle.0.pem")).is_ok_and(|b| {
                        ironpact_spiffe::x509::certs_from_pem(&b).is_ok_and(|roots| {
                            roots.len() == 2
                                && roots.iter().all(|r| {
                                    ironpact_spiffe::x509::authority_id(r)
                                        .is_some_and(|id| !old.contains(&id))
                                })
                        })
                    })
            })
        },
    );
    println!(
        "cluster: forced rotation: SVIDs of the tainted CAs replaced on every agent in {:.1} s; \
         revoked CAs out of every workload's bundle {:.1} s later",
        replaced.as_secs_f64(),
        revoked.as_secs_f64()
    );
    println!(
        "cluster: {} entries acknowledged ({} refused: sent to the killed server or during the \
         database restart), {} SVID checks all valid across {} rotations; after SIGKILL of one server its agents were re-synced \
         through the other in {:.1} s; the killed server rejoined in {:.1} s; {}; {:?} since the kill",
        acked.len(),
        failed_creates.load(Ordering::SeqCst),
        checks.load(Ordering::SeqCst),
        serials
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.len() - 1)
            .sum::<usize>(),
        resynced.as_secs_f64(),
        rejoined.as_secs_f64(),
        match db_recovered {
            Some(t) => format!(
                "writes resumed {:.1} s after PostgreSQL restarted",
                t.as_secs_f64()
            ),
            None => "PostgreSQL not restarted".into(),
        },
        killed_at.elapsed()
    );
}
