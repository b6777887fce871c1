//! `MailParams::parse` and `RcptParams::parse` on arbitrary parameter text.
//!
//! Never panics; refusals are 501 or 555 and carry no line break the text did not
//! have; accepted text is
//! empty or starts with a space.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::smtp::Reply;
use tern::smtp::params::{MailParams, RcptParams};

fn check_refusal(text: &str, reply: &Reply) {
    assert!(matches!(reply.code, 501 | 555), "{reply:?}");
    // The command parser hands over only lines without CR or LF.
    if !text.contains(['\r', '\n']) {
        assert!(reply.lines.iter().all(|l| !l.contains(['\r', '\n'])));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match MailParams::parse(s) {
        Ok(p) => {
            assert!(s.is_empty() || s.starts_with(' '));
            if let Some(envid) = &p.envid {
                assert!(envid.len() <= 100 && envid.is_ascii());
            }
        }
        Err(reply) => check_refusal(s, &reply),
    }
    match RcptParams::parse(s) {
        Ok(p) => {
            assert!(s.is_empty() || s.starts_with(' '));
            if let Some(n) = p.notify {
                assert!(!(n.never && (n.success || n.failure || n.delay)));
            }
        }
        Err(reply) => check_refusal(s, &reply),
    }
});
