//! Policies published by recipient domains that decide how strictly outbound TLS is
//! required for them. MTA-STS (RFC 8461) is the one Tern understands.

pub mod cache;
pub mod mta_sts;
