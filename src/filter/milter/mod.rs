//! The milter protocol (version 6, as Sendmail's libmilter and Postfix speak it):
//! packets ([`packet`]) and the conversation's rules ([`protocol`]) without I/O, the
//! header block as milters edit it ([`headers`]), one connection ([`client`]) and
//! the milters of one SMTP connection ([`chain`]).

pub mod body;
pub mod chain;
pub mod client;
pub mod headers;
pub mod packet;
pub mod protocol;

pub use chain::{Info, Milters, Outcome};
pub use protocol::Edit;
