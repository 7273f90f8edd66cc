//! The agent's Prometheus metrics (docs/operations.md lists them with their meaning).
//! Counters are process-wide and always counted (an atomic add); gauges are read from memory
//! when scraped.

use crate::manager::Agent;
use ironpact_tls::metrics::{CallLabels, bounded_label, gauge};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestLabels {
    /// `attest` (joining) or `renew` (re-attestation at SVID renewal).
    pub op: String,
    /// `accepted` or `refused` (the server's verdict).
    pub outcome: String,
    /// The refusal's kind as the server named it (`measurement_not_allowed`, …); `none` when
    /// accepted.
    pub kind: String,
}

pub struct Metrics {
    pub attestations: Family<AttestLabels, Counter>,
    pub workload_api: Family<CallLabels, Counter>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    attestations: Family::default(),
    workload_api: Family::default(),
});

/// The Workload API's and SDS's methods, as full gRPC paths (the call counter's only method
/// labels: their last part).
pub const WORKLOAD_API_METHODS: &[&str] = &[
    "/SpiffeWorkloadAPI/FetchX509SVID",
    "/SpiffeWorkloadAPI/FetchX509Bundles",
    "/SpiffeWorkloadAPI/FetchJWTSVID",
    "/SpiffeWorkloadAPI/FetchJWTBundles",
    "/SpiffeWorkloadAPI/ValidateJWTSVID",
    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
    "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
    "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
    "/ironpact.enclave.v1.EnclaveIdentity/Attest",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Counts the server's verdict on this node: accepted, or refused with the kind it named.
pub fn attestation(renewing: bool, refusal_kind: Option<&str>) {
    METRICS
        .attestations
        .get_or_create(&AttestLabels {
            op: if renewing { "renew" } else { "attest" }.into(),
            outcome: if refusal_kind.is_some() {
                "refused"
            } else {
                "accepted"
            }
            .into(),
            // the kind comes from the server's message: bounded to names that look like ours
            kind: refusal_kind.map_or_else(|| "none".into(), bounded_label),
        })
        .inc();
}

/// Gauges read from memory at each scrape.
struct Gauges(Arc<Agent>);

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("agent gauges")
    }
}

impl prometheus_client::collector::Collector for Gauges {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let a = &self.0;
        let now = a.clock().now();
        let g = a.gauges();
        if g.last_sync > 0 {
            gauge(
                &mut e,
                "last_sync_timestamp_seconds",
                "When the last sync with the server succeeded (Unix time)",
                g.last_sync as f64,
            )?;
            gauge(
                &mut e,
                "sync_lag_seconds",
                "Seconds since the last successful sync with the server",
                (now - g.last_sync).max(0) as f64,
            )?;
        }
        gauge(
            &mut e,
            "entries",
            "Registration entries this agent may serve",
            g.entries as f64,
        )?;
        gauge(
            &mut e,
            "x509_svids",
            "Workload X509-SVIDs held",
            g.x509_svids as f64,
        )?;
        gauge(
            &mut e,
            "jwt_svids",
            "Workload JWT-SVIDs cached",
            g.jwt_svids as f64,
        )?;
        gauge(
            &mut e,
            "federated_bundles",
            "Bundles of other trust domains held",
            g.federated as f64,
        )?;
        gauge(
            &mut e,
            "refused",
            "1 while the server refuses this node's attestation, else 0",
            if g.refused { 1.0 } else { 0.0 },
        )?;
        if let Some(t) = g.svid_expiry {
            gauge(
                &mut e,
                "svid_expiry_timestamp_seconds",
                "NotAfter of this agent's own SVID (Unix time)",
                t as f64,
            )?;
        }
        if let Some(t) = g.first_workload_expiry {
            gauge(
                &mut e,
                "workload_svid_min_expiry_timestamp_seconds",
                "The earliest NotAfter among the workload X509-SVIDs held (Unix time)",
                t as f64,
            )?;
        }
        Ok(())
    }
}

/// The registry `/metrics` serves.
pub fn registry(agent: Arc<Agent>) -> Registry {
    let mut r = Registry::with_prefix("ironpact_agent");
    let m = &*METRICS;
    r.register(
        "attestations",
        "The server's verdicts on this node's attestations and renewals",
        m.attestations.clone(),
    );
    r.register(
        "workload_api_calls",
        "Workload API and SDS calls, by method and status when the response starts",
        m.workload_api.clone(),
    );
    r.register_collector(Box::new(Gauges(agent)));
    r
}
