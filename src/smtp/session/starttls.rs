//! STARTTLS (RFC 3207).

use super::{Event, Mode, Session};
use crate::smtp::reply::{Reply, common};

impl Session {
    pub(super) fn on_starttls(&mut self) {
        if self.tls.is_some() {
            return self.reject(common::bad_sequence("TLS already active"));
        }
        if !self.config.starttls {
            return self.reject(Reply::new(502, (5, 5, 1), "STARTTLS not available"));
        }
        if self.txn.is_some() {
            return self.reject(common::bad_sequence("STARTTLS not allowed during a mail transaction"));
        }
        // CVE-2011-0411: plaintext pipelined after STARTTLS must never be executed as
        // if it had come over TLS. Anything already received is a reason to hang up.
        if !self.input.is_empty() {
            self.close_with(common::pipelining_violation());
            return;
        }
        self.reply(Reply::new(220, (2, 0, 0), "Ready to start TLS"));
        self.events.push_back(Event::StartTls);
    }

    /// The handshake succeeded: `description` is like `TLSv1.3 with cipher …`.
    /// RFC 3207 §4.2: the session starts over, as if just connected.
    pub fn tls_started(&mut self, description: String) {
        self.input.clear();
        self.hello = None;
        self.txn = None;
        // A plaintext AUTH (allowed on loopback) is forgotten as well.
        self.user = None;
        self.mode = Mode::Command;
        self.tls = Some(description);
    }
}
