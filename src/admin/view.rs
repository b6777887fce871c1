//! Queued messages as the API and `tern queue list --json` show them, and the listing
//! in pages: in queue id order (ids grow with arrival time), a page starting after
//! the cursor, the id of the last message shown.

use crate::queue::{Filter, MessageState};
use crate::spool::{Notify, RcptState, Ret, Stored};
use serde::{Deserialize, Serialize};

/// Most messages one page may hold, and how many when the request does not say.
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 100;

/// A message in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageSummary {
    pub id: String,
    /// Unix seconds.
    pub arrival: i64,
    /// The envelope sender; empty for `<>`.
    pub sender: String,
    pub size: u64,
    pub state: MessageState,
    pub recipient_count: usize,
    /// Recipients neither delivered nor bounced.
    pub pending: usize,
    /// Most attempts made for one recipient.
    pub attempts: u32,
    /// When it is tried next (Unix seconds); none while held.
    pub next_attempt: Option<i64>,
}

/// One message in full.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageSummary,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    /// Local copies go to the Junk folder (DMARC quarantine).
    pub quarantine: bool,
    pub recipients: Vec<RecipientView>,
}

/// A recipient and its state: `queued`, `deferred` (attempts, next attempt, the last
/// failure), `delivered` or `bounced` (when, and the outcome), with the outcome as
/// typed fields: enhanced status, the remote server's reply, Tern's text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientView {
    pub address: String,
    /// As the client gave it, before alias expansion.
    pub original: String,
    pub local: bool,
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
    #[serde(flatten)]
    pub state: RcptState,
}

/// A page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub messages: Vec<MessageSummary>,
    /// Messages the filter matches, on every page.
    pub total: usize,
    /// Give this as `cursor` for the next page; none on the last.
    pub next_cursor: Option<String>,
}

pub fn summary(stored: &Stored) -> MessageSummary {
    let e = &stored.envelope;
    let state = MessageState::of(e);
    let pending: Vec<&RcptState> = e.recipients.iter().map(|r| &r.state).filter(|s| !s.is_final()).collect();
    let attempts = e
        .recipients
        .iter()
        .map(|r| match r.state {
            RcptState::Deferred { attempts, .. } => attempts,
            RcptState::Queued => 0,
            // A final result took at least one attempt.
            RcptState::Delivered { .. } | RcptState::Bounced { .. } => 1,
        })
        .max()
        .unwrap_or(0);
    let next_attempt = (state != MessageState::Held)
        .then(|| {
            pending
                .iter()
                .map(|s| match s {
                    RcptState::Deferred { next_attempt, .. } => *next_attempt,
                    _ => e.arrival,
                })
                .min()
        })
        .flatten();
    MessageSummary {
        id: e.id.clone(),
        arrival: e.arrival,
        sender: e.sender.clone(),
        size: e.size,
        state,
        recipient_count: e.recipients.len(),
        pending: pending.len(),
        attempts,
        next_attempt,
    }
}

pub fn detail(stored: &Stored) -> MessageDetail {
    let e = &stored.envelope;
    MessageDetail {
        summary: summary(stored),
        smtputf8: e.smtputf8,
        eight_bit: e.eight_bit,
        envid: e.envid.clone(),
        ret: e.ret,
        quarantine: e.quarantine,
        recipients: e
            .recipients
            .iter()
            .map(|r| RecipientView {
                address: r.address.clone(),
                original: r.original.clone(),
                local: r.local,
                orcpt: r.orcpt.clone(),
                notify: r.notify,
                state: r.state.clone(),
            })
            .collect(),
    }
}

/// The page of `messages` that `filter` matches, after `cursor`, at most `limit` long.
pub fn page(mut messages: Vec<Stored>, filter: &Filter, cursor: Option<&str>, limit: usize, now: i64) -> Page {
    messages.retain(|m| filter.matches(&m.envelope, now));
    messages.sort_unstable_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    let total = messages.len();
    let start = cursor.map_or(0, |c| messages.partition_point(|m| m.envelope.id.as_str() <= c));
    let shown: Vec<MessageSummary> = messages[start..].iter().take(limit).map(summary).collect();
    let next_cursor = (start + shown.len() < total).then(|| shown.last().map(|m| m.id.clone())).flatten();
    Page { messages: shown, total, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{BodyRef, Envelope, Recipient};

    fn stored(id: u64, held: bool) -> Stored {
        let envelope = Envelope {
            id: format!("{id:016X}"),
            arrival: id as i64,
            sender: "a@b.test".into(),
            size: 1,
            held,
            recipients: vec![Recipient {
                address: "c@d.test".into(),
                local: false,
                original: "c@d.test".into(),
                orcpt: None,
                notify: None,
                state: RcptState::Queued,
            }],
            ..Default::default()
        };
        Stored { envelope, body: BodyRef { segment: 1, offset: 0, len: 1 } }
    }

    #[test]
    fn pages_follow_the_cursor_in_id_order() {
        let messages: Vec<Stored> = [5, 1, 4, 2, 3].into_iter().map(|i| stored(i, i == 4)).collect();
        let all = Filter::default();
        let first = page(messages.clone(), &all, None, 2, 10);
        let ids = |p: &Page| p.messages.iter().map(|m| m.arrival).collect::<Vec<_>>();
        assert_eq!((ids(&first), first.total), (vec![1, 2], 5));
        let second = page(messages.clone(), &all, first.next_cursor.as_deref(), 2, 10);
        assert_eq!(ids(&second), [3, 4]);
        let last = page(messages.clone(), &all, second.next_cursor.as_deref(), 2, 10);
        assert_eq!((ids(&last), last.next_cursor), (vec![5], None));
        let held = Filter { state: Some(MessageState::Held), ..Filter::default() };
        let p = page(messages, &held, None, 10, 10);
        assert_eq!((ids(&p), p.total), (vec![4], 1));
        assert_eq!(p.messages[0].next_attempt, None);
    }
}
