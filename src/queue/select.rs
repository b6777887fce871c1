//! Which queued messages an administrative operation applies to: one by id, or all
//! that match a filter. The API, the control socket and `tern queue` read the same
//! selection.

use crate::spool::{Envelope, RcptState};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a message stands, as the queue listing and its filter see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Not tried yet (or only its finished recipients were).
    Queued,
    /// At least one recipient waits for a retry.
    Deferred,
    /// On hold: not tried until released.
    Held,
}

impl MessageState {
    pub const ALL: [MessageState; 3] = [MessageState::Queued, MessageState::Deferred, MessageState::Held];

    pub fn of(envelope: &Envelope) -> MessageState {
        if envelope.held {
            MessageState::Held
        } else if envelope.recipients.iter().any(|r| matches!(r.state, RcptState::Deferred { .. })) {
            MessageState::Deferred
        } else {
            MessageState::Queued
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Deferred => "deferred",
            MessageState::Held => "held",
        }
    }

    pub fn parse(text: &str) -> Option<MessageState> {
        MessageState::ALL.into_iter().find(|s| s.name() == text)
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A filter over queued messages; every criterion given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MessageState>,
    /// A domain one of the message's pending recipients is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The envelope sender (`<>` for the null sender), or `@domain` for any sender of a domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Arrived at least this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<u64>,
}

impl Filter {
    /// No criterion at all: every message.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Checks the criteria and puts them in the form `matches` compares.
    pub fn normalized(mut self) -> Result<Filter, String> {
        if let Some(domain) = &self.domain {
            let canonical = crate::smtp::address::canonical_domain(domain.trim())
                .ok_or_else(|| format!("domain: {domain:?} is not a domain name"))?;
            self.domain = Some(canonical);
        }
        if let Some(sender) = &self.sender {
            let sender = sender.trim();
            let normalized = match sender {
                "" | "<>" => String::new(),
                _ => match sender.strip_prefix('@') {
                    Some(domain) => format!(
                        "@{}",
                        crate::smtp::address::canonical_domain(domain)
                            .ok_or_else(|| format!("sender: {sender:?} is not an address or @domain"))?
                    ),
                    None if sender.contains('@') => sender.trim_start_matches('<').trim_end_matches('>').to_string(),
                    None => return Err(format!("sender: {sender:?} is not an address or @domain")),
                },
            };
            self.sender = Some(normalized);
        }
        Ok(self)
    }

    /// True when the message meets every criterion; `now` in Unix seconds.
    pub fn matches(&self, envelope: &Envelope, now: i64) -> bool {
        if self.state.is_some_and(|s| s != MessageState::of(envelope)) {
            return false;
        }
        if self.older_than.is_some_and(|age| now - envelope.arrival < age as i64) {
            return false;
        }
        if let Some(want) = &self.sender {
            let ok = match want.strip_prefix('@') {
                Some(domain) => domain_of(&envelope.sender).is_some_and(|d| d == *domain),
                None => envelope.sender.eq_ignore_ascii_case(want),
            };
            if !ok {
                return false;
            }
        }
        if let Some(domain) = &self.domain {
            let pending = envelope.recipients.iter().filter(|r| !r.state.is_final());
            if !pending.filter_map(|r| domain_of(&r.address)).any(|d| d == *domain) {
                return false;
            }
        }
        true
    }
}

/// The canonical domain of an address.
fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    crate::smtp::address::canonical_domain(domain)
}

/// One message by its id, or every message a filter matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    Id(String),
    Filter(Filter),
}

impl Selection {
    pub fn matches(&self, envelope: &Envelope, now: i64) -> bool {
        match self {
            Selection::Id(id) => envelope.id.eq_ignore_ascii_case(id),
            Selection::Filter(filter) => filter.matches(envelope, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Detail, Recipient};

    fn envelope(sender: &str, rcpts: &[(&str, RcptState)], arrival: i64, held: bool) -> Envelope {
        Envelope {
            id: "0000000000000001".into(),
            arrival,
            sender: sender.into(),
            size: 1,
            held,
            recipients: rcpts
                .iter()
                .map(|(a, state)| Recipient {
                    address: a.to_string(),
                    local: false,
                    original: a.to_string(),
                    orcpt: None,
                    notify: None,
                    state: state.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn filter(state: Option<&str>, domain: Option<&str>, sender: Option<&str>, older_than: Option<u64>) -> Filter {
        Filter {
            state: state.map(|s| MessageState::parse(s).unwrap()),
            domain: domain.map(String::from),
            sender: sender.map(String::from),
            older_than,
        }
        .normalized()
        .unwrap()
    }

    #[test]
    fn state_domain_sender_and_age() {
        let deferred =
            RcptState::Deferred { attempts: 1, next_attempt: 0, detail: Detail::new((4, 0, 0), ""), notified: false };
        let delivered = RcptState::Delivered { at: 0, detail: Detail::new((2, 0, 0), "") };
        let e = envelope(
            "Alice@Example.test",
            &[("a@B.test", deferred), ("c@done.test", delivered), ("d@b.test", RcptState::Queued)],
            100,
            false,
        );
        assert_eq!(MessageState::of(&e), MessageState::Deferred);
        assert!(filter(Some("deferred"), Some("b.TEST"), None, None).matches(&e, 200));
        assert!(!filter(Some("queued"), None, None, None).matches(&e, 200));
        // Finished recipients do not count.
        assert!(!filter(None, Some("done.test"), None, None).matches(&e, 200));
        assert!(filter(None, None, Some("alice@example.test"), None).matches(&e, 200));
        assert!(filter(None, None, Some("@EXAMPLE.test"), None).matches(&e, 200));
        assert!(!filter(None, None, Some("<>"), None).matches(&e, 200));
        assert!(filter(None, None, None, Some(100)).matches(&e, 200));
        assert!(!filter(None, None, None, Some(101)).matches(&e, 200));
        let held = envelope("", &[("a@b.test", RcptState::Queued)], 0, true);
        assert!(filter(Some("held"), None, Some("<>"), None).matches(&held, 0));
    }

    #[test]
    fn bad_filters_are_named() {
        let bad = |f: Filter| f.normalized().unwrap_err();
        assert!(bad(Filter { domain: Some("not a domain".into()), ..Filter::default() }).contains("domain"));
        assert!(bad(Filter { sender: Some("nobody".into()), ..Filter::default() }).contains("sender"));
        assert_eq!(MessageState::parse("active"), None);
    }
}
