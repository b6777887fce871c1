//! RCPT TO (RFC 5321 §4.1.1.3).

use super::{Check, Pending, Session};
use crate::smtp::address::Mailbox;
use crate::smtp::command::Command;
use crate::smtp::params::RcptParams;
use crate::smtp::reply::{Reply, common};

impl Session {
    pub(super) fn on_rcpt(&mut self, to: Mailbox, params: RcptParams) {
        let Some(txn) = &self.txn else {
            return self.reject(common::bad_sequence("Need MAIL command first"));
        };
        if txn.chunks.is_some() {
            return self.reject(common::bad_sequence("RCPT not allowed after BDAT"));
        }
        if txn.rcpts.len() >= self.config.max_recipients {
            // §4.5.3.1.10: 452 (not 5xx) so that the client sends the rest later.
            return self.reply(Reply::new(452, (4, 5, 3), "Too many recipients"));
        }
        if !to.is_ascii() && !txn.params.smtputf8 {
            return self.reject(Reply::new(553, (5, 6, 7), "UTF-8 address needs SMTPUTF8 in MAIL"));
        }
        self.asked = Some(Command::Rcpt(to.clone(), params.clone()));
        self.ask(Pending::Rcpt, Check::Rcpt { to });
    }
}
