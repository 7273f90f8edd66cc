//! The fleet benchmark: every scale figure of the server and agent, each printed beside its
//! goal and, where there is one, a reference measured in the same run on this machine.
//!
//! Real processes (release builds of ironpact-server and ironpact-agent) on loopback; the
//! fleet is simulated agents from `ironpact_cli::loadgen` (join-token attestation over TLS,
//! real SVIDs, real sync streams) in this process. Run: `scripts/bench.sh` (or
//! `cargo bench -p ironpact-cli --bench fleet`). `IRONPACT_BENCH_QUICK=1` runs the same steps
//! at a tenth of the sizes (a smoke run, not the figures).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use ironpact_cli::loadgen::{Admin, SimAgent, workload_entry};
use ironpact_proto::agent::v2 as apb;
use ironpact_proto::server::v1 as spb;
use ironpact_proto::workload as wpb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Backend, TestAgent, TestServer, my_uid};

struct Sizes {
    entries: usize,
    node_entries: usize,
    agents: usize,
    connected: usize,
    svids: usize,
    callers: usize,
    changes: usize,
}

struct Row {
    figure: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, figure: &str, goal: &str, measured: String, met: Option<bool>) {
        println!("  -> {figure}: {measured} (goal {goal}: {})", verdict(met));
        self.0.push(Row {
            figure: figure.into(),
            goal: goal.into(),
            measured,
            met,
        });
    }

    fn print(&self) {
        println!();
        println!("| figure | goal | measured | |");
        println!("|---|---|---|---|");
        for r in &self.0 {
            println!(
                "| {} | {} | {} | {} |",
                r.figure,
                r.goal,
                r.measured,
                verdict(r.met)
            );
        }
    }
}

fn verdict(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "-",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY-free: sysconf(_SC_CLK_TCK) is 100 on Linux
    ticks / 100.0
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// `openssl speed ecdsap256`: seconds for one sign plus one verify.
fn openssl_sign_verify() -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  35000.0  12000.0"
    let line = text.lines().find(|l| l.contains("nistp256"))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches('s').parse::<f64>().ok())
        .collect();
    let (sign_s, verify_s) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    Some(1.0 / sign_s + 1.0 / verify_s)
}

/// The last `queries_total` the server logged for its cache.
fn cache_queries(s: &TestServer) -> u64 {
    s.log()
        .lines()
        .rev()
        .find_map(|l| {
            let i = l.find("queries_total=")?;
            l[i + 14..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn agent_id_of(token: &str) -> String {
    format!("spiffe://example.org/spire/agent/join_token/{token}")
}

fn main() {
    let quick = std::env::var("IRONPACT_BENCH_QUICK").is_ok_and(|v| v == "1");
    // The server and agent log at the production default (INFO; the test harness's configs
    // say DEBUG, which costs a line per entry and per request), but for the cache's query
    // count, which the fleet figure reads from the log.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: nothing else runs yet (no runtime, no threads) to read the environment.
        unsafe {
            std::env::set_var(
                "RUST_LOG",
                "info,ironpact_server::cache=debug,h2=warn,tower=warn,hyper=warn,sqlx=warn",
            );
        }
    }
    let z = if quick {
        Sizes {
            entries: 10_000,
            node_entries: 1_000,
            agents: 1_000,
            connected: 500,
            svids: 1_000,
            callers: 100,
            changes: 20,
        }
    } else {
        Sizes {
            entries: 100_000,
            node_entries: 10_000,
            agents: 10_000,
            connected: 5_000,
            svids: 5_000,
            callers: 1_000,
            changes: 100,
        }
    };
    // IRONPACT_BENCH_ONLY=pg,mint,fleet,admin,cold,agent,cluster runs only those parts (the SQLite
    // bulk create always runs: every other part stands on its entries)
    let only = std::env::var("IRONPACT_BENCH_ONLY").ok();
    let part = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == name))
    };
    let mut t = Table(Vec::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!("reference: openssl speed ecdsap256 (3 s) ...");
    let reference = openssl_sign_verify();

    // ------------------------------------------------------------- bulk create, PostgreSQL
    if let Some(b) = Backend::postgres().filter(|_| part("pg")) {
        let s = TestServer::start(b);
        rt.block_on(async {
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            let n = z.entries / 2;
            let batch: Vec<spb::Entry> = (0..n)
                .map(|i| {
                    workload_entry(
                        &format!("spiffe://example.org/pg/{i}"),
                        &format!("spiffe://example.org/node/{}", i % 1000),
                        &format!("unix:uid:{}", i % 5000),
                    )
                })
                .collect();
            let t0 = Instant::now();
            admin.create_entries(batch).await.unwrap();
            let rate = n as f64 / t0.elapsed().as_secs_f64();
            t.add(
                "bulk create, PostgreSQL",
                ">= 10k entries/s",
                format!("{rate:.0} entries/s ({n} entries)"),
                Some(rate >= 10_000.0),
            );
        });
    }

    // ------------------------------------------------------------- the SQLite server
    let mut s = TestServer::start(Backend::Sqlite);
    let uid = my_uid();
    let (node_token, node_id) = rt.block_on(async {
        let mut admin = Admin::connect(&s.socket).await.unwrap();
        let token = admin.join_token().await.unwrap();
        (token.clone(), agent_id_of(&token))
    });
    rt.block_on(async {
        let mut admin = Admin::connect(&s.socket).await.unwrap();
        // the real agent's node: node_entries entries (not for our workload) and one that is
        let mut batch: Vec<spb::Entry> = (0..z.node_entries)
            .map(|i| {
                workload_entry(
                    &format!("spiffe://example.org/node-workload/{i}"),
                    &node_id,
                    &format!("unix:uid:{}", 100_000 + i),
                )
            })
            .collect();
        batch.push(workload_entry(
            "spiffe://example.org/me/0",
            &node_id,
            &format!("unix:uid:{uid}"),
        ));
        batch.extend((0..z.entries - z.node_entries - 1).map(|i| {
            workload_entry(
                &format!("spiffe://example.org/w/{i}"),
                &format!("spiffe://example.org/node/{}", i % 1000),
                &format!("unix:uid:{}", i % 5000),
            )
        }));
        println!("creating {} entries on SQLite ...", batch.len());
        let t0 = Instant::now();
        admin.create_entries(batch).await.unwrap();
        let rate = z.entries as f64 / t0.elapsed().as_secs_f64();
        t.add(
            "bulk create, SQLite",
            ">= 10k entries/s",
            format!("{rate:.0} entries/s ({} entries)", z.entries),
            Some(rate >= 10_000.0),
        );
    });

    // ------------------------------------------------------------- SVID minting
    if part("mint") {
        rt.block_on(async {
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            let token = admin.join_token().await.unwrap();
            let a = SimAgent::attest(&s.agent_addr(), &s.bundle_roots(), "example.org", &token)
                .await
                .unwrap();
            let ids = admin
                .create_entries(
                    (0..500)
                        .map(|i| {
                            workload_entry(
                                &format!("spiffe://example.org/mint/{i}"),
                                a.id.as_str(),
                                "unix:uid:1",
                            )
                        })
                        .collect(),
                )
                .await
                .unwrap();
            println!("preparing {} CSRs ...", z.svids);
            let batches: Vec<Vec<apb::NewX509svidParams>> = (0..z.svids / 500)
                .map(|_| {
                    ids.iter()
                        .map(|id| apb::NewX509svidParams {
                            entry_id: id.clone(),
                            csr: SimAgent::new_csr().unwrap(),
                        })
                        .collect()
                })
                .collect();
            // warm the connection
            a.sign(&ids[..1]).await.unwrap();
            let pid = s.pid();
            let c0 = cpu_secs(pid);
            let t0 = Instant::now();
            let mut signed = 0;
            for b in batches {
                signed += a.sign_prepared(b).await.unwrap();
            }
            let wall = t0.elapsed();
            let per = (cpu_secs(pid) - c0) / signed as f64;
            match reference {
                Some(r) => t.add(
                    "server CPU per X509-SVID vs openssl 1 sign + 1 verify",
                    ">= 0.7 of the limit",
                    format!(
                        "{:.0} µs/SVID vs {:.0} µs: {:.2} ({signed} SVIDs, {:.0}/s wall)",
                        per * 1e6,
                        r * 1e6,
                        r / per,
                        signed as f64 / wall.as_secs_f64()
                    ),
                    Some(r / per >= 0.7),
                ),
                None => t.add(
                    "server CPU per X509-SVID",
                    ">= 0.7 of openssl",
                    format!("{:.0} µs/SVID (openssl not found)", per * 1e6),
                    None,
                ),
            }
        });
    }

    // ------------------------------------------------------------- a real agent
    // Before the fleet: the callers below share this process with the load generator, and
    // what 10,000 simulated agents leave behind in it (memory, tasks being torn down) would
    // slow the callers' side, which in a real node is a thousand other processes.
    if part("agent") {
        let agent = TestAgent::start(&s, &node_token);
        println!("waiting for the agent's first SVID ...");
        assert!(agent.fetch_until_ok(&[]).ok(), "{}", agent.log());
        rt.block_on(async {
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            let ch = ironpact_cli::common::connect_uds(&agent.socket, "agent", "-socketPath")
                .await
                .unwrap();
            let mut wl = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
            let req = || {
                let mut r = tonic::Request::new(wpb::X509svidRequest {});
                r.metadata_mut().insert(
                    "workload.spiffe.io",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                r
            };
            let mut stream = wl.fetch_x509svid(req()).await.unwrap().into_inner();
            stream.message().await.unwrap().unwrap();
            println!("  agent RSS with its entries and SVIDs: {:.0} MB", rss_mb(agent.pid()));
            let mut lat = Vec::new();
            let mut created = Vec::new();
            for i in 1..=z.changes {
                let id = format!("spiffe://example.org/me/{i}");
                let t0 = Instant::now();
                created.extend(
                    admin
                        .create_entries(vec![workload_entry(
                            &id,
                            &node_id,
                            &format!("unix:uid:{uid}"),
                        )])
                        .await
                        .unwrap(),
                );
                loop {
                    let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                        .await
                        .expect("update within 30 s")
                        .unwrap()
                        .unwrap();
                    if m.svids.iter().any(|s| s.spiffe_id == id) {
                        break;
                    }
                }
                lat.push(t0.elapsed());
            }
            let p99 = pct(&mut lat, 0.99);
            t.add(
                &format!(
                    "entry change -> affected workload's open stream, {} entries, {} under the node",
                    z.entries, z.node_entries
                ),
                "p99 < 50 ms",
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    ms(pct(&mut lat, 0.5)),
                    ms(p99)
                ),
                Some(p99 < Duration::from_millis(50)),
            );

            // back to one identity for this workload (each caller below is one workload with one
            // SVID, as in a fleet), then many workloads at once: each its own connection, time to
            // its first response
            admin
                .entries
                .batch_delete_entry(spb::BatchDeleteEntryRequest { ids: created })
                .await
                .unwrap();
            loop {
                let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .expect("update within 30 s")
                    .unwrap()
                    .unwrap();
                if m.svids.len() == 1 {
                    break;
                }
            }
            let mut set = tokio::task::JoinSet::new();
            let start = Arc::new(tokio::sync::Barrier::new(z.callers));
            for _ in 0..z.callers {
                let sock = agent.socket.clone();
                let start = start.clone();
                set.spawn(async move {
                    let ch = ironpact_cli::common::connect_uds(&sock, "agent", "-socketPath")
                        .await
                        .unwrap();
                    let mut wl = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
                    let mut r = tonic::Request::new(wpb::X509svidRequest {});
                    r.metadata_mut().insert(
                        "workload.spiffe.io",
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    start.wait().await;
                    let t0 = Instant::now();
                    let mut s = wl.fetch_x509svid(r).await.unwrap().into_inner();
                    s.message().await.unwrap().unwrap();
                    (t0.elapsed(), s, wl)
                });
            }
            let mut lat = Vec::new();
            let mut held = Vec::new();
            while let Some(r) = set.join_next().await {
                let (d, s, wl) = r.unwrap();
                lat.push(d);
                held.push((s, wl));
            }
            let p99 = pct(&mut lat, 0.99);
            println!("  agent RSS with {} more open streams: {:.0} MB", z.callers, rss_mb(agent.pid()));
            t.add(
                &format!(
                    "Workload API first response, {} concurrent callers, {} entries on the node",
                    z.callers, z.node_entries
                ),
                "p99 < 100 ms",
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    ms(pct(&mut lat, 0.5)),
                    ms(p99)
                ),
                Some(p99 < Duration::from_millis(100)),
            );

            // JWT-SVIDs for as many audiences, with those streams open
            let mut set = tokio::task::JoinSet::new();
            for i in 0..z.callers {
                let sock = agent.socket.clone();
                set.spawn(async move {
                    let ch = ironpact_cli::common::connect_uds(&sock, "agent", "-socketPath")
                        .await
                        .unwrap();
                    let mut wl = wpb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
                    let mut r = tonic::Request::new(wpb::JwtsvidRequest {
                        audience: vec![format!("aud-{i}")],
                        spiffe_id: String::new(),
                    });
                    r.metadata_mut().insert(
                        "workload.spiffe.io",
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    let t0 = Instant::now();
                    wl.fetch_jwtsvid(r).await.unwrap();
                    t0.elapsed()
                });
            }
            let mut jl = Vec::new();
            while let Some(r) = set.join_next().await {
                jl.push(r.unwrap());
            }
            let rss = rss_mb(agent.pid());
            t.add(
                &format!(
                    "agent RSS, {} entries + {} open streams + {} JWT audiences",
                    z.node_entries, z.callers, z.callers
                ),
                "<= 100 MB",
                format!(
                    "{rss:.0} MB (JWT-SVID p99 {:.0} ms)",
                    ms(pct(&mut jl, 0.99))
                ),
                Some(rss <= 100.0),
            );
            drop(held);
        });
    }
    // ------------------------------------------------------------- the fleet
    let fleet: Vec<Arc<SimAgent>> = if !part("fleet") {
        Vec::new()
    } else {
        rt.block_on(async {
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            let roots = s.bundle_roots();
            println!("attesting {} simulated agents ...", z.agents);
            let t0 = Instant::now();
            let mut tokens = Vec::with_capacity(z.agents);
            for _ in 0..z.agents {
                tokens.push(admin.join_token().await.unwrap());
            }
            let addr = s.agent_addr();
            let mut fleet = Vec::with_capacity(z.agents);
            for chunk in tokens.chunks(64) {
                let mut set = tokio::task::JoinSet::new();
                for tok in chunk {
                    let (addr, roots, tok) = (addr.clone(), roots.clone(), tok.clone());
                    set.spawn(
                        async move { SimAgent::attest(&addr, &roots, "example.org", &tok).await },
                    );
                }
                while let Some(r) = set.join_next().await {
                    fleet.push(Arc::new(r.unwrap().unwrap()));
                }
            }
            println!(
                "  {} agents attested in {:.1} s",
                fleet.len(),
                t0.elapsed().as_secs_f64()
            );
            // each connected agent has one entry federating with fed.example
            let fed: Vec<spb::Entry> = fleet[..z.connected]
                .iter()
                .map(|a| {
                    let mut e = workload_entry(
                        &format!("spiffe://example.org/fed{}", a.id.path()),
                        a.id.as_str(),
                        "unix:uid:7",
                    );
                    e.federates_with = vec!["fed.example".into()];
                    e
                })
                .collect();
            admin.create_entries(fed).await.unwrap();
            fleet
        })
    };
    if part("fleet") {
        rt.block_on(async {
            println!("connecting {} sync streams ...", z.connected);
            for a in &fleet[..z.connected] {
                a.start_sync().await.unwrap();
            }
            for a in &fleet[..z.connected] {
                a.wait_for(Duration::from_secs(120), |v| v.entries.len() == 1)
                    .await
                    .unwrap();
            }
            let pid = s.pid();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let c0 = cpu_secs(pid);
            tokio::time::sleep(Duration::from_secs(10)).await;
            let idle = (cpu_secs(pid) - c0) / 10.0 * 100.0;
            t.add(
                &format!("idle server CPU, {} connected agents", z.connected),
                "< 5% of one core",
                format!("{idle:.1}%"),
                Some(idle < 5.0),
            );
            // one change every agent sees: the federated bundle they all use is set
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            // a change no agent sees, so the server logs its cache's query count just before
            admin
                .create_entries(vec![workload_entry(
                    "spiffe://example.org/marker",
                    "spiffe://example.org/nobody",
                    "unix:uid:1",
                )])
                .await
                .unwrap();
            let q0 = cache_queries(&s);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca.self_signed(&ca_key).unwrap();
            let t0 = Instant::now();
            let set = admin
                .bundles
                .batch_set_federated_bundle(spb::BatchSetFederatedBundleRequest {
                    bundle: vec![spb::Bundle {
                        trust_domain: "fed.example".into(),
                        x509_authorities: vec![spb::X509Certificate {
                            asn1: ca.der().to_vec(),
                            tainted: false,
                        }],
                        ..Default::default()
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            let st = set.results[0].status.clone().unwrap_or_default();
            assert_eq!(st.code, 0, "bundle set: {}", st.message);
            let mut lat = Vec::with_capacity(z.connected);
            let mut waits = tokio::task::JoinSet::new();
            for a in &fleet[..z.connected] {
                let a = a.clone();
                waits.spawn(async move {
                    a.wait_for(Duration::from_secs(60), |v| {
                        v.federated.iter().any(|b| b.trust_domain == "fed.example")
                    })
                    .await
                    .map(|at| at.duration_since(t0))
                });
            }
            while let Some(r) = waits.join_next().await {
                lat.push(r.unwrap().unwrap());
            }
            let window = t0.elapsed();
            let queries = cache_queries(&s).saturating_sub(q0);
            let p99 = pct(&mut lat, 0.99);
            t.add(
                &format!("entry change -> each of {} connected agents", z.connected),
                "p99 < 1 s, zero datastore queries per agent",
                format!(
                    "p50 {:.0} ms, p99 {:.0} ms; {queries} datastore queries in {:.1} s for {} agents \
                     (the change's refresh and the 1/s poll; none per agent)",
                    ms(pct(&mut lat, 0.5)),
                    ms(p99),
                    window.as_secs_f64(),
                    z.connected
                ),
                // a constant: the change's refresh (3) and one poll a second
                Some(p99 < Duration::from_secs(1) && queries <= 4 + 2 * window.as_secs()),
            );
        });
    }

    // ------------------------------------------------------------- admin queries
    if part("admin") {
        rt.block_on(async {
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            // the median of 20 timed calls; `$i` counts them
            macro_rules! median_of_20 {
                ($i:ident => $call:expr) => {{
                    let mut v = Vec::with_capacity(20);
                    for $i in 0..20 {
                        let t0 = Instant::now();
                        $call;
                        v.push(t0.elapsed());
                    }
                    pct(&mut v, 0.5)
                }};
            }
            let show = median_of_20!(i => {
                let r = admin
                    .entries
                    .list_entries(spb::ListEntriesRequest {
                        filter: Some(spb::EntryFilter {
                            by_selectors: Some(spb::SelectorMatch {
                                selectors: vec![spb::Selector {
                                    r#type: "unix".into(),
                                    value: format!("uid:{}", 5 + i),
                                }],
                                r#match: spb::MatchBehavior::MatchExact as i32,
                            }),
                            ..Default::default()
                        }),
                        page_size: 0,
                        page_token: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!r.entries.is_empty());
            });
            let count = median_of_20!(_i => admin
                .entries
                .count_entries(spb::CountEntriesRequest { filter: None })
                .await
                .unwrap());
            let list = median_of_20!(_i => admin
                .agents
                .list_agents(spb::ListAgentsRequest {
                    filter: None,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .unwrap());
            let worst = show.max(count).max(list);
            t.add(
                &format!(
                    "entry show -selector / entry count / agent list (page of 1,000), {} entries, {} agents",
                    z.entries, z.agents
                ),
                "< 20 ms",
                format!(
                    "{:.1} / {:.1} / {:.1} ms (median of 20)",
                    ms(show),
                    ms(count),
                    ms(list)
                ),
                Some(worst < Duration::from_millis(20)),
            );
        });
    }
    drop(fleet);

    // ------------------------------------------------------------- cold start
    if part("cold") {
        println!("restarting the server ...");
        s.sigterm();
        let t0 = Instant::now();
        s.spawn();
        let first_sync = rt.block_on(async {
            let mut admin = Admin::connect(&s.socket).await.unwrap();
            let token = admin.join_token().await.unwrap();
            let a = SimAgent::attest(&s.agent_addr(), &s.bundle_roots(), "example.org", &token)
                .await
                .unwrap();
            a.start_sync().await.unwrap();
            a.wait_for(Duration::from_secs(60), |v| v.updates >= 1)
                .await
                .unwrap();
            t0.elapsed()
        });
        let rss = rss_mb(s.pid());
        let log = s.log();
        let loaded = log
            .lines()
            .rev()
            .find(|l| l.contains("loaded the entry cache"));
        println!("  {}", loaded.unwrap_or("(no cache load logged)"));
        let load_ms = loaded
            .and_then(|l| {
                let i = l.find("elapsed_ms=")?;
                l[i + 11..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .map(String::from)
            })
            .unwrap_or_default();
        t.add(
            &format!(
                "server cold start to first served sync, {} entries",
                z.entries
            ),
            "< 2 s; RSS <= 200 MB",
            format!(
                "{:.2} s (cache load {load_ms} ms); RSS {rss:.0} MB",
                first_sync.as_secs_f64()
            ),
            Some(first_sync < Duration::from_secs(2) && rss <= 200.0),
        );
    }

    // ------------------------------------------------------------- two servers, one database
    if part("cluster") {
        cluster(&rt, &z, &mut t);
    }

    t.print();
}

/// Two servers on one PostgreSQL, the simulated fleet split between them through haproxy
/// (half on a frontend that prefers A, half on one that prefers B; each falls back to the
/// other): an entry change made through A reaches B's agents (p99), and when A is killed its
/// agents re-sync through B (time until the last one has).
fn cluster(rt: &tokio::runtime::Runtime, z: &Sizes, t: &mut Table) {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Some(hap) = support::haproxy() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "haproxy is missing (CI=true requires it)"
        );
        println!("SKIPPED: cluster (haproxy is not installed)");
        return;
    };
    let mut a = TestServer::start(backend.clone());
    let b = TestServer::start(backend);
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.bundle_roots().len() < 2 || b.bundle_roots().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both CAs never reached the bundle"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let to_a = support::Haproxy::start(&hap, &[(a.port, false), (b.port, true)]);
    let to_b = support::Haproxy::start(&hap, &[(b.port, false), (a.port, true)]);
    let n = z.connected;
    let roots = a.bundle_roots();
    rt.block_on(async {
        let mut admin_a = Admin::connect(&a.socket).await.unwrap();
        let mut tokens = Vec::with_capacity(n);
        for _ in 0..n {
            tokens.push(admin_a.join_token().await.unwrap());
        }
        println!("cluster: attesting {n} agents, half through each server ...");
        let t0 = Instant::now();
        let mut on_a = Vec::new();
        let mut on_b = Vec::new();
        for (c, chunk) in tokens.chunks(64).enumerate() {
            let mut set = tokio::task::JoinSet::new();
            for (i, tok) in chunk.iter().enumerate() {
                let first = (c * 64 + i) % 2 == 0;
                let port = if first { to_a.port } else { to_b.port };
                let (addr, roots, tok) = (format!("127.0.0.1:{port}"), roots.clone(), tok.clone());
                set.spawn(async move {
                    (
                        first,
                        SimAgent::attest(&addr, &roots, "example.org", &tok).await,
                    )
                });
            }
            while let Some(r) = set.join_next().await {
                let (first, agent) = r.unwrap();
                let agent = Arc::new(agent.unwrap());
                if first {
                    on_a.push(agent);
                } else {
                    on_b.push(agent);
                }
            }
        }
        for ag in on_a.iter().chain(&on_b) {
            ag.start_sync().await.unwrap();
        }
        for ag in on_a.iter().chain(&on_b) {
            ag.wait_for(Duration::from_secs(120), |v| v.bundle.is_some())
                .await
                .unwrap();
        }
        println!(
            "  {} agents attested and synced in {:.1} s",
            on_a.len() + on_b.len(),
            t0.elapsed().as_secs_f64()
        );

        // one entry for each of B's agents, created through A in one batch
        let batch: Vec<spb::Entry> = on_b
            .iter()
            .map(|ag| {
                workload_entry(
                    &format!("spiffe://example.org/x{}", ag.id.path()),
                    ag.id.as_str(),
                    "unix:uid:9",
                )
            })
            .collect();
        let t0 = Instant::now();
        admin_a.create_entries(batch).await.unwrap();
        let mut lat = Vec::with_capacity(on_b.len());
        let mut set = tokio::task::JoinSet::new();
        for ag in &on_b {
            let ag = ag.clone();
            set.spawn(async move {
                ag.wait_for(Duration::from_secs(60), |v| v.entries.len() == 1)
                    .await
            });
        }
        while let Some(r) = set.join_next().await {
            lat.push(r.unwrap().unwrap().duration_since(t0));
        }
        let p99 = pct(&mut lat, 0.99);
        t.add(
            &format!(
                "entry change through server A -> {} agents on server B",
                on_b.len()
            ),
            "p99 < 1 s",
            format!(
                "p99 {:.0} ms, p50 {:.0} ms",
                ms(p99),
                ms(pct(&mut lat, 0.5))
            ),
            Some(p99 < Duration::from_secs(1)),
        );

        // server A dies: its agents' streams end; each opens a new one (haproxy now sends it
        // to B) and has its whole view again
        let agents_before = support::agent_count(&b);
        a.kill9();
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for ag in &on_a {
            let ag = ag.clone();
            set.spawn(async move {
                // the stream to A ends first
                let mut rx = ag.updated.subscribe();
                while ag.ended.lock().unwrap().is_none() {
                    if tokio::time::timeout(Duration::from_secs(30), rx.changed())
                        .await
                        .is_err()
                    {
                        panic!("{}: the stream to the killed server never ended", ag.id);
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    *ag.ended.lock().unwrap() = None;
                    if let Ok(mut v) = ag.view.lock() {
                        v.bundle = None;
                    }
                    if ag.start_sync().await.is_ok()
                        && ag
                            .wait_for(Duration::from_secs(30), |v| v.bundle.is_some())
                            .await
                            .is_ok()
                    {
                        return Instant::now();
                    }
                    assert!(Instant::now() < deadline, "{}: no server took it", ag.id);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let mut last = Duration::ZERO;
        let mut moved = 0;
        while let Some(r) = set.join_next().await {
            last = last.max(r.unwrap().duration_since(t0));
            moved += 1;
        }
        // the same agent records: nobody attested again (the stream to B was opened with
        // the SVID A had signed)
        let agents_after = support::agent_count(&b);
        t.add(
            &format!(
                "server failover: {moved} agents of a killed server re-synced through the other"
            ),
            "all, no re-attestation",
            format!(
                "{moved} of {} within {:.1} s of SIGKILL; agent records {agents_before} before, {agents_after} after",
                on_a.len(),
                last.as_secs_f64()
            ),
            Some(moved == on_a.len() && agents_after == agents_before),
        );
    });
    drop((to_a, to_b));
}
