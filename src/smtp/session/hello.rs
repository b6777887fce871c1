//! EHLO and HELO (RFC 5321 §4.1.1.1).

use super::{Hello, Session};
use crate::smtp::reply::Reply;

impl Session {
    pub(super) fn on_hello(&mut self, name: String, extended: bool) {
        if self.pipelined_too_far() {
            return;
        }
        // §4.1.4: EHLO/HELO in the middle of a session resets the transaction.
        self.txn = None;
        let mut lines = vec![format!("{} Hello {name}", self.config.hostname)];
        if extended {
            lines.extend([
                "PIPELINING".to_string(),
                format!("SIZE {}", self.config.max_message_size),
                "8BITMIME".into(),
                "SMTPUTF8".into(),
                "ENHANCEDSTATUSCODES".into(),
                "CHUNKING".into(),
                "DSN".into(),
            ]);
            if self.config.starttls && self.tls.is_none() {
                lines.push("STARTTLS".into());
            }
            // RFC 8689 §3: REQUIRETLS is offered only on a session protected by TLS.
            if self.tls.is_some() {
                lines.push("REQUIRETLS".into());
            }
            if self.auth_offered() && self.user.is_none() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
        }
        self.hello = Some(Hello { name, extended });
        self.reply(Reply::plain(250, lines));
    }
}
