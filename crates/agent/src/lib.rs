//! The ironpact agent: attests its node to the server, keeps its SVID renewed, syncs the
//! entries it may serve, and serves the SPIFFE Workload API (and Envoy SDS) to local workloads.
//!
//! It keeps no registration state of its own: everything comes from the server's pushed
//! snapshots, and it serves what it has while the server is away.

pub mod authority;
pub mod bootstrap;
pub mod config;
pub mod enclave;
pub mod manager;
pub mod metrics;
pub mod run;
pub mod sds;
pub mod state;
pub mod unix;
pub mod workload;
