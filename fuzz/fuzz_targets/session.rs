//! The SMTP session state machine fed a client's arbitrary bytes.
//!
//! Input: `[settings][n][n chunk lengths][client bytes…]`; the settings bits pick the
//! limits and whether STARTTLS and AUTH are offered (`tern_fuzz::session_config`).
//! Every check is answered by a fixed policy (the password `secret` is right), and a
//! STARTTLS handshake "succeeds" at once. The session never panics, every reply is
//! well formed, stored content is CRLF-clean, and the conversation (replies, checks,
//! messages) is the same whether the bytes arrive one at a time, in the input's
//! chunks or at once — up to a pipelining violation, which only a client that sends
//! more after EHLO/HELO/DATA/STARTTLS without waiting can cause.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{Input, check_session};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::split(data) else {
        return;
    };
    check_session(input.settings, input.extra, input.lens, input.payload);
});
