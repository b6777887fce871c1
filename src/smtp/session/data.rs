//! DATA (RFC 5321 §4.1.1.4) and the end of its content.

use super::{CONTENT_PIECE, Event, Mode, Session};
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
        self.events.push_back(Event::ContentStart);
        self.reply(Reply::new(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>"));
    }

    /// Feeds buffered input to the DATA reader, at most [`CONTENT_PIECE`] bytes a step.
    pub(super) fn read_data(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let Mode::Data(reader) = &mut self.mode else { unreachable!() };
        let take = self.input.len().min(CONTENT_PIECE);
        let mut piece = Vec::new();
        let end = reader.feed(&self.input[..take], &mut piece);
        self.input.drain(..end.unwrap_or(take));
        self.content(piece);
        if end.is_some() {
            let Mode::Data(reader) = std::mem::replace(&mut self.mode, Mode::Command) else { unreachable!() };
            self.finish_message(reader);
        }
        true
    }
}
