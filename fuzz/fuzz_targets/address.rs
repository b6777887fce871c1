//! `Mailbox::parse`, `parse_path` and `canonical_domain` on arbitrary text.
//!
//! Never panics; a parsed mailbox prints back to the text it came from and parses
//! again to itself; its domain has a canonical form; the canonical form of a domain
//! is lower-case ASCII, a valid host name and its own canonical form; `parse_path`
//! returns a tail of its input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::smtp::address::{Mailbox, canonical_domain, parse_path};

fn check_mailbox(m: &Mailbox) {
    assert_eq!(Mailbox::parse(&m.to_string()).as_ref(), Ok(m));
    assert!(m.canonical_domain().is_some(), "{m:?} has no canonical domain");
    let _ = m.local_unquoted();
    let _ = m.is_ascii();
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Mailbox::parse(s) {
        assert_eq!(m.to_string(), s);
        check_mailbox(&m);
    }
    for allow_null in [false, true] {
        if let Ok((m, rest)) = parse_path(s, allow_null) {
            assert!(s.ends_with(rest) && rest.len() < s.len());
            match m {
                Some(m) => check_mailbox(&m),
                None => assert!(allow_null && s.starts_with("<>")),
            }
        }
    }
    if let Some(c) = canonical_domain(s) {
        assert!(c.is_ascii() && !c.bytes().any(|b| b.is_ascii_uppercase()), "{c:?}");
        assert!(c.len() <= 253, "canonical domain of {} octets: {c:?}", c.len());
        assert_eq!(canonical_domain(&c).as_deref(), Some(c.as_str()), "not idempotent");
    }
});
