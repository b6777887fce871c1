//! The queue in the layout of Postfix's `mailq` (`tern sendmail -bp`, or the binary
//! called `mailq`): one block per message with its pending recipients, each deferred
//! group under the reason in parentheses, and a total.

use crate::config::Config;
use crate::spool::{RcptState, Stored};
use chrono::{DateTime, Local};
use std::fmt::Write;
use std::process::ExitCode;

const HEADING: &str = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------";
/// Recipients line up under the sender.
const INDENT: usize = 41;

pub fn print(config: &Config) -> ExitCode {
    match super::queue::scan(config) {
        Ok(messages) => {
            print!("{}", render(&messages));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `Mon Jun 29 10:25:33`, as the first 19 characters of ctime(3).
fn arrival(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|t| t.with_timezone(&Local).format("%a %b %e %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub fn render(messages: &[Stored]) -> String {
    let mut out = String::new();
    let mut total = 0u64;
    let mut count = 0;
    for m in messages {
        let e = &m.envelope;
        let pending: Vec<_> = e.recipients.iter().filter(|r| !r.state.is_final()).collect();
        if pending.is_empty() {
            continue;
        }
        if count == 0 {
            let _ = writeln!(out, "{HEADING}");
        }
        count += 1;
        total += e.size;
        // `*`: not tried yet (Postfix's active queue); blank: waiting for a retry.
        let status = if pending.iter().any(|r| matches!(r.state, RcptState::Queued)) { '*' } else { ' ' };
        let sender = if e.sender.is_empty() { "MAILER-DAEMON" } else { &e.sender };
        let _ = writeln!(out, "{:<10}{status} {:>8} {:<20} {sender}", e.id, e.size, arrival(e.arrival));
        let mut reasons: Vec<Option<String>> = Vec::new();
        for r in &pending {
            let reason = match &r.state {
                RcptState::Deferred { detail, .. } => Some(detail.to_string()),
                _ => None,
            };
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        for reason in &reasons {
            if let Some(text) = reason {
                let _ = writeln!(out, "({text})");
            }
            for r in pending.iter().filter(|r| match &r.state {
                RcptState::Deferred { detail, .. } => reason.as_deref() == Some(detail.to_string().as_str()),
                _ => reason.is_none(),
            }) {
                let _ = writeln!(out, "{:INDENT$}{}", "", r.address);
            }
        }
        out.push('\n');
    }
    if count == 0 {
        return "Mail queue is empty\n".to_string();
    }
    let plural = if count == 1 { "" } else { "s" };
    let _ = writeln!(out, "-- {} Kbytes in {count} Request{plural}.", total.div_ceil(1024));
    out
}
