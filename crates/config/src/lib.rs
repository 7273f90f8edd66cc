//! Configuration plumbing shared by the server and the agent: SPIRE-style HCL files read
//! through a typed reader that reports unknown keys and wrong types with file and line.

pub mod hcl;

pub use hcl::{ConfigError, Section};
