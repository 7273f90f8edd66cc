//! The server's Prometheus metrics (docs/operations.md lists them with their meaning).
//! Counters and histograms are process-wide and always counted (an atomic add); gauges are read
//! from memory when scraped, so a scrape never queries the datastore.

use crate::api::SharedCore;
use ironpact_tls::metrics::{CallLabels, gauge};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestLabels {
    /// The node attestor (`join_token`, `sev_snp`, …).
    pub attestor: String,
    /// `attest` (a node joining) or `renew` (continuous attestation at SVID renewal).
    pub op: String,
    /// `accepted`, `refused` (a verdict), `invalid` (a malformed request) or `error` (nothing
    /// judged: a timeout, a KDS/PCS or datastore outage).
    pub outcome: String,
    /// What failed (`measurement_not_allowed`, `unknown_token`, `banned`, …); `none` when
    /// accepted.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SvidLabels {
    /// `x509` or `jwt`.
    pub svid_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The datastore operation (`get_entry`, `list_entries_page`, …).
    pub op: String,
}

type Hist = Family<OpLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub attestations: Family<AttestLabels, Counter>,
    pub svids: Family<SvidLabels, Counter>,
    pub datastore: Hist,
    pub agent_api: Family<CallLabels, Counter>,
}

fn datastore_histogram() -> Histogram {
    // 0.25 ms to about 4 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    attestations: Family::default(),
    svids: Family::default(),
    datastore: Family::new_with_constructor(datastore_histogram),
    agent_api: Family::default(),
});

/// Counts one node attestation or renewal.
pub fn attestation(attestor: &str, renewing: bool, outcome: &str, kind: &str) {
    METRICS
        .attestations
        .get_or_create(&AttestLabels {
            attestor: attestor.to_string(),
            op: if renewing { "renew" } else { "attest" }.into(),
            outcome: outcome.into(),
            kind: kind.into(),
        })
        .inc();
}

/// Counts one SVID signed.
pub fn svid_issued(svid_type: &'static str) {
    METRICS
        .svids
        .get_or_create(&SvidLabels {
            svid_type: svid_type.into(),
        })
        .inc();
}

/// The agent API's methods (v2, and v1 for agents of earlier releases), as full gRPC paths:
/// the call counter's only method labels (their last part).
pub const AGENT_API_METHODS: &[&str] = &[
    "/ironpact.agent.v2.AgentAPI/AttestAgent",
    "/ironpact.agent.v2.AgentAPI/RenewAgent",
    "/ironpact.agent.v2.AgentAPI/SyncAuthorized",
    "/ironpact.agent.v2.AgentAPI/BatchNewX509SVID",
    "/ironpact.agent.v2.AgentAPI/NewJWTSVID",
    "/ironpact.agent.v1.AgentAPI/AttestAgent",
    "/ironpact.agent.v1.AgentAPI/RenewAgent",
    "/ironpact.agent.v1.AgentAPI/SyncAuthorized",
    "/ironpact.agent.v1.AgentAPI/BatchNewX509SVID",
    "/ironpact.agent.v1.AgentAPI/NewJWTSVID",
    "/ironpact.enclave.v1.EnclaveAttestation/AttestEnclave",
];

/// Gauges read from memory at each scrape.
struct Gauges(SharedCore);

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server gauges")
    }
}

impl prometheus_client::collector::Collector for Gauges {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let (agents, federated) = c.cache.counts();
        gauge(
            &mut e,
            "entries",
            "Registration entries in the server's cache",
            c.cache.entry_count() as f64,
        )?;
        gauge(
            &mut e,
            "agents",
            "Attested agents in the server's cache",
            agents as f64,
        )?;
        gauge(
            &mut e,
            "federated_bundles",
            "Bundles of other trust domains held",
            federated as f64,
        )?;
        let (x509, jwt) = c.ca.active_expiry();
        if let Some(t) = x509 {
            gauge(
                &mut e,
                "x509_ca_expiry_timestamp_seconds",
                "NotAfter of the X.509 CA that signs SVIDs now (Unix time)",
                t as f64,
            )?;
        }
        if let Some(t) = jwt {
            gauge(
                &mut e,
                "jwt_key_expiry_timestamp_seconds",
                "Expiry of the key that signs JWT-SVIDs now (Unix time)",
                t as f64,
            )?;
        }
        let svid = c
            .server_svid_expiry
            .load(std::sync::atomic::Ordering::Relaxed);
        if svid > 0 {
            gauge(
                &mut e,
                "svid_expiry_timestamp_seconds",
                "NotAfter of the SVID the agent endpoint presents (Unix time)",
                svid as f64,
            )?;
        }
        Ok(())
    }
}

/// The registry `/metrics` serves: every family above and the gauges of `core`.
pub fn registry(core: SharedCore) -> Registry {
    let mut r = Registry::with_prefix("ironpact_server");
    let m = &*METRICS;
    r.register(
        "attestations",
        "Node attestations and renewals, by attestor, outcome and what failed",
        m.attestations.clone(),
    );
    r.register("svids_issued", "SVIDs signed, by type", m.svids.clone());
    r.register(
        "datastore_query_duration_seconds",
        "Time of datastore calls, by operation",
        m.datastore.clone(),
    );
    r.register(
        "agent_api_calls",
        "Agent API calls, by method and status when the response starts",
        m.agent_api.clone(),
    );
    r.register_collector(Box::new(Gauges(core)));
    r
}

/// Sends the datastore's call times to the histogram.
pub fn observe_datastore() {
    ironpact_datastore::observe_latency(|op, d| {
        METRICS
            .datastore
            .get_or_create(&OpLabels { op: op.to_string() })
            .observe(d.as_secs_f64());
    });
}
