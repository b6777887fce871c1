//! SASL decoding for AUTH (`tern::smtp::sasl`) on arbitrary client lines.
//!
//! Never panics; `decode` inverts `encode`; a PLAIN message that is accepted names a
//! non-empty user without NUL.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::smtp::sasl;

fuzz_target!(|data: &[u8]| {
    if let Some(decoded) = sasl::decode(data)
        && let Some((user, password)) = sasl::plain(&decoded)
    {
        assert!(!user.is_empty() && !user.contains('\0'), "{user:?}");
        assert!(!password.0.contains('\0'));
    }
    if let Some((user, _)) = sasl::plain(data) {
        assert!(!user.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(sasl::decode(sasl::encode(text).as_bytes()).as_deref(), Some(data));
    }
});
