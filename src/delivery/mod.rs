//! One delivery attempt to one destination.

pub mod maildir;

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
        Failure {
            temporary: true,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Failure {
        Failure {
            temporary: false,
            reason: reason.into(),
        }
    }
}
