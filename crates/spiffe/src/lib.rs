//! Pure SPIFFE types for ironpact: IDs, selectors, trust bundles, SVID profiles, JWT-SVIDs.
//!
//! This crate does no I/O: no files, sockets or clocks. Time is passed in as Unix seconds,
//! keys and certificates as bytes. It implements the SPIFFE ID, X509-SVID, JWT-SVID and
//! Trust Domain and Bundle standards; it deliberately knows nothing of storage, gRPC or
//! configuration files.

pub mod bundle;
pub mod claims;
pub mod clock;
pub mod duration;
mod error;
pub mod id;
pub mod jwt;
pub mod keys;
pub mod selector;
pub mod x509;

pub use bundle::{Bundle, JwtAuthority};
pub use error::Error;
pub use id::{SpiffeId, TrustDomain};
pub use keys::{KeyType, PrivateKey};
pub use selector::Selector;
