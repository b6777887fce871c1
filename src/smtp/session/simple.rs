//! RSET, NOOP, QUIT, VRFY, EXPN and HELP (RFC 5321 §4.1.1.5–4.1.1.10).

use super::Session;
use crate::smtp::reply::{Reply, common};

impl Session {
    pub(super) fn on_rset(&mut self) {
        self.txn = None;
        self.reply(common::ok());
    }

    pub(super) fn on_noop(&mut self) {
        self.reply(common::ok());
    }

    pub(super) fn on_quit(&mut self) {
        let bye = Reply::new(221, (2, 0, 0), format!("{} closing connection", self.config.hostname));
        self.close_with(bye);
    }

    /// §3.5.3: 252 says nothing about whether the user exists.
    pub(super) fn on_vrfy(&mut self) {
        self.reply(Reply::new(252, (2, 5, 2), "Cannot VRFY user, but will accept message and attempt delivery"));
    }

    /// §3.5.2: list expansion is not offered (it would reveal addresses).
    pub(super) fn on_expn(&mut self) {
        self.reject(Reply::new(502, (5, 5, 1), "EXPN not available"));
    }

    pub(super) fn on_help(&mut self) {
        self.reply(Reply::new(214, (2, 0, 0), "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"));
    }
}
