//! Decisions about a transaction: which recipients are local, who exists, where
//! aliases lead, who may relay, passwords and abuse limits.

pub mod auth;
pub mod counted;
pub mod dkim;
pub mod dnsbl;
pub mod greylist;
pub mod limits;
pub mod local;
pub mod spf;
pub mod users;

pub use local::LocalPolicy;
