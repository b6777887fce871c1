//! One delivery attempt to one destination.

pub mod maildir;
pub mod remote;

/// A successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// What the mailbox or the remote server said.
    pub reply: String,
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
    /// Enhanced status code and text, e.g. `4.3.0 Maildir not writable: …`.
    pub reason: String,
}

impl Failure {
    pub fn temporary(reason: impl Into<String>) -> Failure {
        Failure { temporary: true, reason: reason.into() }
    }

    pub fn permanent(reason: impl Into<String>) -> Failure {
        Failure { temporary: false, reason: reason.into() }
    }
}
