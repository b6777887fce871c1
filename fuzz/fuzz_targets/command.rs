//! `tern::smtp::command::parse` on arbitrary command lines.
//!
//! Never panics; refusals carry no line break; an accepted MAIL or RCPT address
//! survives printing and parsing again; the verb is case-insensitive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::smtp::address::Mailbox;
use tern::smtp::command::{Command, parse};

fuzz_target!(|data: &[u8]| {
    let result = parse(data);
    match &result {
        Ok(Command::Mail(Some(m), _)) => {
            assert_eq!(Mailbox::parse(&m.to_string()).as_ref(), Ok(m));
        }
        Ok(Command::Rcpt(m, _)) if !m.domain.is_empty() => {
            assert_eq!(Mailbox::parse(&m.to_string()).as_ref(), Ok(m));
        }
        Ok(_) => {}
        Err(reply) => {
            assert!((500..600).contains(&reply.code), "{reply:?}");
            assert!(reply.lines.iter().all(|l| !l.contains(['\r', '\n'])));
        }
    }
    // The same line with its verb in upper case parses the same way.
    let verb_end = data.iter().position(|&b| b == b' ').unwrap_or(data.len());
    let mut upper = data.to_vec();
    upper[..verb_end].make_ascii_uppercase();
    assert_eq!(parse(&upper), result);
});
