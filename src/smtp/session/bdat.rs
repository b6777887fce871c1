//! BDAT (RFC 3030 §2). A chunk's octets are always read, even when the command is
//! refused, so that chunk content can never be taken for commands.

use super::{CONTENT_PIECE, Event, Mode, Session};
use crate::smtp::body::BodyReader;
use crate::smtp::reply::{Reply, common};

impl Session {
    pub(super) fn on_bdat(&mut self, size: u64, last: bool) {
        let refusal = match &mut self.txn {
            None => Some(common::bad_sequence("Need MAIL command first")),
            Some(txn) if txn.rcpts.is_empty() => Some(Reply::new(554, (5, 5, 1), "No valid recipients")),
            Some(txn) => {
                if txn.chunks.is_none() {
                    txn.chunks = Some(BodyReader::chunks(self.config.max_message_size));
                    self.events.push_back(Event::ContentStart);
                }
                None
            }
        };
        self.mode = Mode::Bdat { remaining: size, last, refusal };
    }

    /// Reads (part of) the current chunk from buffered input, at most [`CONTENT_PIECE`]
    /// bytes a step.
    pub(super) fn read_chunk(&mut self) -> bool {
        let Mode::Bdat { remaining, refusal, .. } = &mut self.mode else { unreachable!() };
        if *remaining > 0 {
            if self.input.is_empty() {
                return false;
            }
            let take = (*remaining).min(self.input.len().min(CONTENT_PIECE) as u64) as usize;
            let mut piece = Vec::new();
            if refusal.is_none() {
                let txn = self.txn.as_mut().expect("BDAT without transaction");
                let reader = txn.chunks.as_mut().expect("chunk reader");
                reader.feed(&self.input[..take], &mut piece);
            }
            self.input.drain(..take);
            *remaining -= take as u64;
            let more = *remaining > 0;
            self.content(piece);
            if more {
                return true;
            }
        }
        let Mode::Bdat { last, refusal, .. } = &mut self.mode else { unreachable!() };
        let (last, refusal) = (*last, refusal.take());
        self.mode = Mode::Command;
        if let Some(reply) = refusal {
            self.reject(reply);
            return true;
        }
        let txn = self.txn.as_mut().expect("BDAT without transaction");
        let reader = txn.chunks.as_ref().expect("chunk reader");
        if reader.overflowed() {
            // RFC 3030 §2: a failed chunk fails the whole transaction.
            self.txn = None;
            self.reply(common::too_big());
        } else if last {
            let reader = txn.chunks.take().expect("chunk reader");
            self.finish_message(reader);
        } else {
            let size = reader.size();
            self.reply(Reply::new(250, (2, 0, 0), format!("{size} octets received")));
        }
        true
    }
}
