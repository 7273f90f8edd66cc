//! The ironpact server: the trust domain's CA with rotation, registration entries, the
//! admin API on a Unix socket, and the configuration that drives them.
//!
//! It does not parse command lines (that is `crates/cli`) and keeps SPIFFE rules in
//! `ironpact-spiffe`; here is what needs a clock, a datastore or a socket.

pub mod api;
/// Node attestation lives in `ironpact-attestors` (one folder per attestor); re-exported.
pub use ironpact_attestors as attest;
pub mod ca;
pub mod cache;
pub mod clock;
pub mod config;
pub mod federation;
/// The HCL reader lives in `ironpact-config`; re-exported for existing users.
pub use ironpact_config::hcl;
pub mod keymanager;
pub mod metrics;
pub mod run;
