//! `BodyReader` (DATA and BDAT content) fed arbitrary bytes in arbitrary chunks.
//!
//! Input: `[settings][n][n chunk lengths][content…]`; settings bit 0 picks DATA or BDAT,
//! bits 1–2 the size limit. See `tern_fuzz::check_body` for the properties.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_fuzz::{BODY_LIMITS, Input, check_body, check_stuffing_round_trip};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::split(data) else {
        return;
    };
    let dotted = input.settings & 1 == 0;
    let limit = BODY_LIMITS[usize::from((input.settings >> 1) & 3)];
    check_body(dotted, limit, input.lens, input.payload);
    check_stuffing_round_trip(input.payload, input.lens);
});
