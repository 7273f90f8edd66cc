//! Test support shared by the crates' tests, the end-to-end suites and the examples: one
//! loopback HTTP/1.1 emulator ([`http::Emulator`]) on which the cloud and vendor services the
//! attestors call are mounted ([`imds`], [`kds`], [`pcs`]: one emulator can serve all three),
//! and fresh test keys ([`keys`]). Never for production.
//!
//! The HTTP side is the standard library only (threads, `TcpListener`), with its own request
//! parsing and URL encoding, so our clients are checked against an independent implementation
//! of each wire format.

pub mod conf;
pub mod http;
pub mod imds;
pub mod kds;
pub mod keys;
pub mod pcs;
pub mod sgx_device;
