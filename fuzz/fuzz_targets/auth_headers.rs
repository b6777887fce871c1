//! `strip_forged`, the removal of `Authentication-Results` fields that claim Tern's
//! name, on arbitrary message bytes.
//!
//! Never panics; the body is untouched; what is left is the input with whole fields
//! cut out, and none of those left claims Tern's name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::policy::auth::results::strip_forged;

const HOST: &str = "tern.test";

fuzz_target!(|data: &[u8]| {
    let Some(out) = strip_forged(data, HOST) else { return };
    assert!(out.len() < data.len());
    // The empty line that ends the header, and the body after it.
    let body = |m: &[u8]| m.windows(4).position(|w| w == b"\r\n\r\n").map(|i| m[i + 2..].to_vec());
    if let Some(b) = body(data) {
        assert!(out.ends_with(&b), "the body changed");
    }
    // The remaining bytes are the input in order, with pieces cut out.
    let mut rest = data;
    for &byte in &out {
        let at = rest.iter().position(|&b| b == byte).expect("output is a subsequence of the input");
        rest = &rest[at + 1..];
    }
    assert!(strip_forged(&out, HOST).is_none(), "a forged field survived");
});
