//! DKIM signing of mail Tern sends (RFC 6376, RFC 8463).

pub mod canon;
pub mod key;
mod sign;

pub use sign::{Signer, Signing};
