//! `tern queue …`: reads the spool directly, so it works whether or not a server runs.

use crate::config::Config;
use crate::spool::{self, RcptState};
use chrono::{DateTime, Local};
use std::process::ExitCode;

fn time(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn describe(state: &RcptState) -> String {
    match state {
        RcptState::Queued => "queued".into(),
        RcptState::Deferred {
            attempts,
            next_attempt,
            reason,
        } => {
            format!(
                "deferred (attempts: {attempts}, next try {}): {reason}",
                time(*next_attempt)
            )
        }
        RcptState::Delivered { at, reply } => format!("delivered {}: {reply}", time(*at)),
        RcptState::Bounced { at, reason } => format!("bounced {}: {reason}", time(*at)),
    }
}

pub fn list(config: &Config) -> ExitCode {
    let messages = match spool::scan(&config.spool_dir()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "tern: cannot read spool {}: {e}",
                config.spool_dir().display()
            );
            return ExitCode::FAILURE;
        }
    };
    if messages.is_empty() {
        println!("queue is empty");
        return ExitCode::SUCCESS;
    }
    for m in &messages {
        let e = &m.envelope;
        let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
        println!(
            "{}  {:>9} bytes  {}  from {sender}",
            e.id,
            e.size,
            time(e.arrival)
        );
        for r in &e.recipients {
            let via = if r.original != r.address {
                format!(" (for {})", r.original)
            } else {
                String::new()
            };
            println!("    {}{via}: {}", r.address, describe(&r.state));
        }
    }
    println!("{} message(s) in queue", messages.len());
    ExitCode::SUCCESS
}
