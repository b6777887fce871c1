//! MAIL FROM (RFC 5321 §4.1.1.2).

use super::{Check, Pending, Session};
use crate::metrics::Refusal;
use crate::smtp::address::Mailbox;
use crate::smtp::command::Command;
use crate::smtp::params::MailParams;
use crate::smtp::reply::{Reply, common};

impl Session {
    pub(super) fn on_mail(&mut self, from: Option<Mailbox>, params: MailParams) {
        let Some(hello) = &self.hello else {
            return self.reject(common::bad_sequence("Send EHLO or HELO first"));
        };
        if self.txn.is_some() {
            return self.reject(common::bad_sequence("Nested MAIL command"));
        }
        if self.config.require_auth && self.user.is_none() {
            return self.reject(Reply::new(530, (5, 7, 0), "Authentication required").because(Refusal::AuthRequired));
        }
        if !hello.extended && params != MailParams::default() {
            return self.reject(Reply::new(555, (5, 5, 4), "Parameters need EHLO"));
        }
        // RFC 8689 §3 offers REQUIRETLS only after TLS; the RFC names no reply for it
        // on a plaintext session: 530 5.7.10 "encryption needed" (RFC 3207, RFC 5248).
        if params.requiretls && self.tls.is_none() {
            return self.reject(
                Reply::new(530, (5, 7, 10), "REQUIRETLS needs a TLS session; send STARTTLS first")
                    .because(Refusal::RequireTls),
            );
        }
        // RFC 1870 §6.1: a declared size above the limit is refused at once.
        if params.size.is_some_and(|s| s > self.config.max_message_size) {
            return self.reply(common::too_big());
        }
        // RFC 6531 §3.4: a UTF-8 address needs the SMTPUTF8 parameter.
        if from.as_ref().is_some_and(|m| !m.is_ascii()) && !params.smtputf8 {
            return self.reject(Reply::new(553, (5, 6, 7), "UTF-8 address needs the SMTPUTF8 parameter"));
        }
        self.asked = Some(Command::Mail(from.clone(), params.clone()));
        self.ask(Pending::Mail, Check::Mail { from, params, user: self.user.clone() });
    }
}
