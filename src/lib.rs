//! Tern: an SMTP mail transfer agent that receives mail, keeps every accepted message
//! safe on disk, and delivers it to local mailboxes.

pub mod acme;
pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod dnssec;
pub mod fault;
pub mod files;
pub mod filter;
pub mod log_limit;
pub mod metrics;
pub mod net;
pub mod passwd;
pub mod policy;
pub mod queue;
pub mod reports;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tls_policy;
