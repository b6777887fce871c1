//! One delivery attempt to one destination.

pub mod command;
pub mod lmtp;
pub mod maildir;
pub mod remote;

pub use crate::spool::{Detail, ServerReply, Status};
use std::time::{Duration, Instant};

/// How mail for one destination travelled, for the delivery log line.
#[derive(Debug, Clone)]
pub struct Via {
    /// `host[ip]:port` of the server that answered (or was tried last), `local` for a
    /// Maildir, `lmtp:` and the socket path or `host:port` for an LMTP server, `none`
    /// when no server could be tried.
    pub relay: String,
    /// When work on this destination began.
    pub started: Instant,
    /// Connection setup: DNS lookups, connecting, the greeting, EHLO, STARTTLS, AUTH.
    pub setup: Duration,
    /// Transmission: MAIL FROM to the reply after the content (for a Maildir, writing
    /// the file).
    pub transmission: Duration,
    /// TLS version and cipher (`TLSv1.3/TLS13_AES_256_GCM_SHA384`), or `none`.
    pub tls: String,
    /// The server's certificate was verified for its name, or by DANE.
    pub tls_verified: bool,
    /// The server's certificate matched its DANE TLSA records (RFC 7672).
    pub dane: bool,
    /// Why it was not, as TLS-RPT names it (RFC 8460 §4.3.2).
    pub tls_problem: Option<crate::reports::tls::ResultType>,
    /// Tern's own address on the connection used, new or reused.
    pub local_ip: Option<std::net::IpAddr>,
}

impl Via {
    /// Nothing reached yet: relay and TLS `none`, no time spent.
    pub fn starting(relay: &str) -> Via {
        Via {
            relay: relay.to_string(),
            started: Instant::now(),
            setup: Duration::ZERO,
            transmission: Duration::ZERO,
            tls: "none".into(),
            tls_verified: false,
            dane: false,
            tls_problem: None,
            local_ip: None,
        }
    }
}

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
