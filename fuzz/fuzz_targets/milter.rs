//! `filter::milter::packet::decode`, Tern's reading of a milter's answers, on
//! arbitrary bytes, then the meaning of each decoded answer at every step.
//!
//! Never panics; a decoded packet uses exactly its declared length (4 + length
//! bytes) and never more than the input; a length of zero or over `MAX_PACKET` is
//! refused; every decoded answer means something or is a protocol error at every
//! step, whatever was negotiated; a reply code taken is 4xx or 5xx.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::filter::milter::packet::{MAX_PACKET, decode};
use tern::filter::milter::protocol::{Negotiated, Reaction, Step, Verdict, react};

const STEPS: [Step; 9] = [
    Step::Connect,
    Step::Helo,
    Step::Mail,
    Step::Rcpt,
    Step::Data,
    Step::Header,
    Step::EndOfHeaders,
    Step::Body,
    Step::EndOfMessage,
];

fuzz_target!(|data: &[u8]| {
    let agreed = [Negotiated { actions: 0, protocol: 0 }, Negotiated { actions: 0x1ff, protocol: 0x400 }];
    let mut rest = data;
    while let Ok(Some((response, used))) = decode(rest) {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(len > 0 && len <= MAX_PACKET);
        assert_eq!(used, 4 + len);
        assert!(used <= rest.len());
        for a in &agreed {
            for step in STEPS {
                if let Ok(Reaction::Done(Verdict::Reject(r) | Verdict::Tempfail(r))) = react(a, step, response.clone()) {
                    assert!((400..600).contains(&r.code));
                    assert!(r.lines.iter().all(|l| !l.contains(['\r', '\n'])));
                }
            }
        }
        rest = &rest[used..];
    }
});
