//! `parse_reply_line`, the outbound client's reading of a remote server's reply line,
//! on arbitrary bytes.
//!
//! Never panics; an accepted line has a code from 200 to 599, and its text is what
//! follows the code and separator, without the line ending.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::delivery::remote::parse_reply_line;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        if let Some((code, _more, text)) = parse_reply_line(line) {
            assert!((200..600).contains(&code));
            assert!(line.starts_with(code.to_string().as_bytes()));
            assert!(!text.ends_with('\n'));
        }
    }
});
