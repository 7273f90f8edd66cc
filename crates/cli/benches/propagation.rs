//! Propagation benchmark: how long from an operator's `entry create` (admin API call
//! issued) until a workload's open FetchX509SVID stream delivers the new SVID, through a
//! real server and agent. Prints p50/p99/max and the ratio to SPIRE's 5 s agent sync
//! interval (its best case; users report 30-60 s). Run: cargo bench -p ironpact-cli --bench propagation
//! Iterations: IRONPACT_BENCH_N (default 100).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use ironpact_proto::server::v1 as spb;
use ironpact_proto::workload as wpb;
use std::time::{Duration, Instant};
use support::{Backend, TestAgent, TestServer, join_token, my_uid};

fn main() {
    let n: usize = std::env::var("IRONPACT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/bench-node");
    let a = TestAgent::start(&s, &token);
    let uid = my_uid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut lat: Vec<Duration> = rt.block_on(async {
        let admin = ironpact_cli::common::connect_uds(&s.socket, "server", "-socketPath")
            .await
            .unwrap();
        let mut entries =
            ironpact_proto::server::v1::entry_service_client::EntryServiceClient::new(admin);
        let sel = spb::Selector {
            r#type: "unix".into(),
            value: format!("uid:{uid}"),
        };
        // a first entry so the workload has an identity and an open stream
        let first = spb::Entry {
            spiffe_id: "spiffe://example.org/bench/0".into(),
            parent_id: "spiffe://example.org/bench-node".into(),
            selectors: vec![sel.clone()],
            ..Default::default()
        };
        entries
            .batch_create_entry(spb::BatchCreateEntryRequest {
                entries: vec![first],
            })
            .await
            .unwrap();
        assert!(
            a.fetch_until_ok(&[]).ok(),
            "agent never served the first SVID:\n{}",
            a.log()
        );
        let ch = ironpact_cli::common::connect_uds(&a.socket, "agent", "-socketPath")
            .await
            .unwrap();
        let mut wl =
            ironpact_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(ch);
        let mut req = tonic::Request::new(wpb::X509svidRequest {});
        req.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream = wl.fetch_x509svid(req).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        let mut lat = Vec::with_capacity(n);
        for i in 1..=n {
            let id = format!("spiffe://example.org/bench/{i}");
            let e = spb::Entry {
                spiffe_id: id.clone(),
                parent_id: "spiffe://example.org/bench-node".into(),
                selectors: vec![sel.clone()],
                ..Default::default()
            };
            let t0 = Instant::now();
            entries
                .batch_create_entry(spb::BatchCreateEntryRequest { entries: vec![e] })
                .await
                .unwrap();
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .expect("update within 30 s")
                    .unwrap()
                    .unwrap();
                if msg.svids.iter().any(|s| s.spiffe_id == id) {
                    break;
                }
            }
            lat.push(t0.elapsed());
        }
        lat
    });
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let (p50, p99, max) = (pct(0.50), pct(0.99), lat[lat.len() - 1]);
    let spire = Duration::from_secs(5);
    println!(
        "propagation: entry create -> workload stream, {n} entries, server + agent on loopback"
    );
    println!(
        "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "goal p99 < 1000 ms: {}; SPIRE's 5 s sync interval / our p99 = {:.0}x",
        if p99 < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        },
        spire.as_secs_f64() / p99.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
