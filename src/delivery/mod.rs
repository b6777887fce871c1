//! One delivery attempt to one destination.

pub mod maildir;
pub mod remote;

pub use crate::spool::{Detail, ServerReply, Status};

/// A successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// What the mailbox or the remote server said.
    pub detail: Detail,
    /// Handed to another server rather than put in a mailbox.
    pub relayed: bool,
    /// The next server took over DSN duties (it offered DSN, RFC 3461 §5.2.2).
    pub dsn_passed_on: bool,
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Worth trying again later (4xx); otherwise the recipient bounces (5xx).
    pub temporary: bool,
    pub detail: Detail,
}

impl Failure {
    pub fn temporary(status: impl Into<Status>, text: impl Into<String>) -> Failure {
        Failure { temporary: true, detail: Detail::new(status, text) }
    }

    pub fn permanent(status: impl Into<Status>, text: impl Into<String>) -> Failure {
        Failure { temporary: false, detail: Detail::new(status, text) }
    }
}
