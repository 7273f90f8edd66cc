//! The server at fleet sizes, through real processes: a node with 50,000 entries syncs (the
//! full set in pages, then deltas), parallel writers on SQLite all succeed, and under random
//! concurrent writes (creates, updates, deletes, bans) every connected agent ends with exactly
//! the view the datastore implies, on SQLite and PostgreSQL. Simulated agents
//! (`ironpact_cli::loadgen`) attest with join tokens over TLS and apply the sync protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ironpact_cli::loadgen::{Admin, SimAgent, workload_entry};
use ironpact_proto::server::v1 as spb;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use support::{Backend, TestServer, runtime};

fn agent_id_of(token: &str) -> String {
    format!("spiffe://example.org/spire/agent/join_token/{token}")
}

#[test]
fn fifty_thousand_entries_under_one_node_sync_in_pages_then_deltas() {
    let s = TestServer::start(Backend::Sqlite);
    let rt = runtime();
    rt.block_on(async {
        let mut admin = Admin::connect(&s.socket).await.unwrap();
        let token = admin.join_token().await.unwrap();
        let node = agent_id_of(&token);
        // 50,000 entries through `entry create -data`: the CLI splits them into batches
        let entries: Vec<serde_json::Value> = (0..50_000)
            .map(|i| {
                serde_json::json!({
                    "spiffe_id": format!("spiffe://example.org/workload/{i}"),
                    "parent_id": node,
                    "selectors": [{"type": "unix", "value": format!("uid:{}", i % 977)}],
                    "dns_names": [format!("w{i}.example.org")],
                })
            })
            .collect();
        let data = s.dir.path().join("entries.json");
        std::fs::write(&data, serde_json::json!({ "entries": entries }).to_string()).unwrap();
        let t = Instant::now();
        let out = s.cli(&[
            "entry",
            "create",
            "-data",
            data.to_str().unwrap(),
            "-output",
            "json",
        ]);
        out.expect_ok();
        println!(
            "created 50,000 entries with entry create -data in {:?}",
            t.elapsed()
        );
        assert_eq!(out.json()["results"].as_array().unwrap().len(), 50_000);
        let count = s.cli(&["entry", "count"]).expect_ok().stdout.clone();
        assert!(count.contains("50000"), "{count}");

        let roots = s.bundle_roots();
        let agent = SimAgent::attest(&s.agent_addr(), &roots, "example.org", &token)
            .await
            .unwrap();
        let t = Instant::now();
        let _sync = agent.start_sync().await.unwrap();
        agent
            .wait_for(Duration::from_secs(120), |v| v.entries.len() == 50_000)
            .await
            .unwrap();
        let (bytes, updates) = {
            let v = agent.view.lock().unwrap();
            assert!(v.bundle.is_some());
            (v.bytes, v.updates)
        };
        println!(
            "full sync of 50,000 entries: {:?}, {bytes} bytes",
            t.elapsed()
        );
        assert_eq!(updates, 1, "one update, in pages");
        assert!(
            bytes > 4 << 20,
            "more than the old 4 MiB single-message limit"
        );

        // one deletion is a delta of one removed ID, not a new snapshot
        let victim = agent
            .view
            .lock()
            .unwrap()
            .entries
            .keys()
            .nth(123)
            .cloned()
            .unwrap();
        s.cli(&["entry", "delete", "-entryID", &victim]).expect_ok();
        agent
            .wait_for(Duration::from_secs(30), |v| {
                !v.entries.contains_key(&victim)
            })
            .await
            .unwrap();
        let v = agent.view.lock().unwrap().clone();
        assert_eq!(v.entries.len(), 49_999);
        assert!(
            v.bytes - bytes < 1024,
            "the delta took {} bytes",
            v.bytes - bytes
        );

        // SVIDs for entries of the node, signed in one batch
        let ids: Vec<String> = v.entries.keys().take(200).cloned().collect();
        assert_eq!(agent.sign(&ids).await.unwrap(), 200);
    });
}

#[test]
fn fifty_parallel_entry_creates_on_sqlite_all_succeed() {
    let s = TestServer::start(Backend::Sqlite);
    let children: Vec<_> = (0..50)
        .map(|i| {
            std::process::Command::new(support::BIN)
                .args([
                    "entry",
                    "create",
                    "-socketPath",
                    s.socket.to_str().unwrap(),
                    "-spiffeID",
                    &format!("spiffe://example.org/parallel/{i}"),
                    "-parentID",
                    "spiffe://example.org/node",
                    "-selector",
                    "unix:uid:1000",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    let count = s.cli(&["entry", "count"]).expect_ok().stdout.clone();
    assert!(count.contains("50"), "{count}");
    assert!(!s.log().contains("database is locked"), "{}", s.log());
}

/// A small deterministic generator: a failure names its seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }
}

/// What an agent may see by the authorization rule, computed from the datastore's entries
/// (join-token agents have no selectors, so no server-parented alias applies): entries
/// parented by the agent and, recursively, by any entry already authorized.
fn expected_view(all: &BTreeMap<String, spb::Entry>, agent: &str) -> BTreeSet<String> {
    let mut by_parent: HashMap<&str, Vec<&spb::Entry>> = HashMap::new();
    for e in all.values() {
        by_parent.entry(e.parent_id.as_str()).or_default().push(e);
    }
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::from([agent.to_string()]);
    let mut frontier = vec![agent.to_string()];
    while let Some(p) = frontier.pop() {
        for e in by_parent.get(p.as_str()).into_iter().flatten() {
            if out.insert(e.id.clone()) && seen.insert(e.spiffe_id.clone()) {
                frontier.push(e.spiffe_id.clone());
            }
        }
    }
    out
}

fn randomized_consistency(backend: Backend, seed: u64) {
    let s = TestServer::start(backend);
    let rt = runtime();
    rt.block_on(async {
        let mut admin = Admin::connect(&s.socket).await.unwrap();
        let roots = s.bundle_roots();
        let mut agents = Vec::new();
        for _ in 0..6 {
            let token = admin.join_token().await.unwrap();
            let a = SimAgent::attest(&s.agent_addr(), &roots, "example.org", &token)
                .await
                .unwrap();
            a.start_sync().await.unwrap();
            agents.push(a);
        }
        let agent_ids: Vec<String> = agents.iter().map(|a| a.id.to_string()).collect();
        // writers at once: each creates, moves (changes parent), edits and deletes entries;
        // one of them bans an agent midway
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let socket = s.socket.clone();
                let agent_ids = agent_ids.clone();
                tokio::spawn(async move {
                    let mut rng = Lcg(seed ^ (w + 1).wrapping_mul(0x9e3779b97f4a7c15));
                    let mut admin = Admin::connect(&socket).await.unwrap();
                    let mut mine: Vec<(String, String)> = Vec::new(); // (entry id, spiffe id)
                    for step in 0..120 {
                        let parent = |rng: &mut Lcg, mine: &[(String, String)]| {
                            if mine.is_empty() || rng.next(3) > 0 {
                                agent_ids[rng.next(agent_ids.len())].clone()
                            } else {
                                mine[rng.next(mine.len())].1.clone()
                            }
                        };
                        match rng.next(10) {
                            0..=4 => {
                                let n = 1 + rng.next(20);
                                let batch: Vec<spb::Entry> = (0..n)
                                    .map(|i| {
                                        workload_entry(
                                            &format!("spiffe://example.org/w{w}/{step}/{i}"),
                                            &parent(&mut rng, &mine),
                                            &format!("unix:uid:{}", rng.next(50)),
                                        )
                                    })
                                    .collect();
                                let spiffe: Vec<String> =
                                    batch.iter().map(|e| e.spiffe_id.clone()).collect();
                                let ids = admin.create_entries(batch).await.unwrap();
                                mine.extend(ids.into_iter().zip(spiffe));
                            }
                            5..=6 if !mine.is_empty() => {
                                let (id, _) = mine[rng.next(mine.len())].clone();
                                let mut e = spb::Entry {
                                    id,
                                    ..Default::default()
                                };
                                let mut mask = spb::EntryMask::default();
                                if rng.next(2) == 0 {
                                    e.parent_id = parent(&mut rng, &mine);
                                    mask.parent_id = true;
                                } else {
                                    e.selectors = vec![spb::Selector {
                                        r#type: "unix".into(),
                                        value: format!("uid:{}", 1000 + rng.next(50)),
                                    }];
                                    mask.selectors = true;
                                }
                                let r = admin
                                    .entries
                                    .batch_update_entry(spb::BatchUpdateEntryRequest {
                                        entries: vec![e],
                                        input_mask: Some(mask),
                                    })
                                    .await
                                    .unwrap()
                                    .into_inner();
                                let code = r.results[0].status.clone().unwrap_or_default().code;
                                // a move may make a duplicate of another entry: refused, fine
                                assert!(code == 0 || code == tonic::Code::AlreadyExists as i32);
                            }
                            7..=8 if !mine.is_empty() => {
                                let (id, _) = mine.swap_remove(rng.next(mine.len()));
                                admin
                                    .entries
                                    .batch_delete_entry(spb::BatchDeleteEntryRequest {
                                        ids: vec![id],
                                    })
                                    .await
                                    .unwrap();
                            }
                            _ => {}
                        }
                        if w == 0 && step == 60 {
                            admin
                                .agents
                                .ban_agent(spb::BanAgentRequest {
                                    id: agent_ids[0].clone(),
                                })
                                .await
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        // after the writers stop, every agent converges to what the datastore says
        let all = admin.all_entries().await.unwrap();
        assert!(all.len() > 100, "{} entries", all.len());
        for (i, a) in agents.iter().enumerate() {
            if i == 0 {
                a.wait_for(Duration::from_secs(10), |_| false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                    .expect_err("the banned agent's stream ends");
                let why = a.ended.lock().unwrap().clone().unwrap_or_default();
                assert!(why.contains("banned"), "{why}");
                continue;
            }
            let want = expected_view(&all, a.id.as_str());
            let r = a
                .wait_for(Duration::from_secs(15), |v| {
                    v.entries.keys().cloned().collect::<BTreeSet<_>>() == want
                        && v.entries.iter().all(|(id, e)| {
                            all.get(id).is_some_and(|d| {
                                d.revision_number == e.revision_number
                                    && d.parent_id == e.parent_id
                                    && d.selectors
                                        .iter()
                                        .map(|s| (&s.r#type, &s.value))
                                        .eq(e.selectors.iter().map(|s| (&s.r#type, &s.value)))
                            })
                        })
                })
                .await;
            if let Err(e) = r {
                let got: BTreeSet<String> =
                    a.view.lock().unwrap().entries.keys().cloned().collect();
                panic!(
                    "seed {seed}: agent {i} diverged ({e}): missing {:?}, extra {:?}",
                    want.difference(&got).collect::<Vec<_>>(),
                    got.difference(&want).collect::<Vec<_>>()
                );
            }
        }
    });
}

#[test]
fn random_concurrent_writes_leave_every_agent_consistent_on_sqlite() {
    randomized_consistency(Backend::Sqlite, 0x5eed_0001);
}

#[test]
fn random_concurrent_writes_leave_every_agent_consistent_on_postgres() {
    let Some(b) = Backend::postgres() else { return };
    randomized_consistency(b, 0x5eed_0002);
}
