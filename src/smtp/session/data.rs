//! DATA (RFC 5321 §4.1.1.4) and the end of its content.

use super::{Mode, Session};
use crate::smtp::body::BodyReader;
use crate::smtp::reply::{Reply, common};

impl Session {
    pub(super) fn on_data(&mut self) {
        let Some(txn) = &self.txn else {
            return self.reject(common::bad_sequence("Need MAIL command first"));
        };
        if txn.chunks.is_some() {
            return self.reject(common::bad_sequence("DATA not allowed after BDAT"));
        }
        if txn.rcpts.is_empty() {
            return self.reject(Reply::new(554, (5, 5, 1), "No valid recipients"));
        }
        if self.pipelined_too_far() {
            return;
        }
        self.mode = Mode::Data(BodyReader::data(self.config.max_message_size));
        self.reply(Reply::new(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>"));
    }

    /// Feeds buffered input to the DATA reader.
    pub(super) fn read_data(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let Mode::Data(reader) = &mut self.mode else { unreachable!() };
        let txn = self.txn.as_mut().expect("DATA without transaction");
        match reader.feed(&self.input, &mut txn.content) {
            None => {
                self.input.clear();
                false
            }
            Some(end) => {
                self.input.drain(..end);
                let Mode::Data(reader) = std::mem::replace(&mut self.mode, Mode::Command) else { unreachable!() };
                self.finish_message(reader);
                true
            }
        }
    }
}
