//! The SMTP protocol without I/O: commands, replies, addresses, message content and the
//! server session state machine.

pub mod address;
pub mod body;
pub mod command;
pub mod params;
pub mod reply;
pub mod sasl;
pub mod session;

pub use reply::Reply;
