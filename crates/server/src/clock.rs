//! Time as a value: see [`ironpact_spiffe::clock`], shared with the agent.

pub use ironpact_spiffe::clock::{Clock, ManualClock, SystemClock};
