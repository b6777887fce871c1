//! Decisions about a transaction: which recipients are local, who exists, where
//! aliases lead, and what may be relayed.

pub mod local;

pub use local::LocalPolicy;
