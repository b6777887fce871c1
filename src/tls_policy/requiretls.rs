//! REQUIRETLS and the `TLS-Required` header field (RFC 8689): a sender's say over how
//! strictly TLS protects its message on the way.

use crate::delivery::Failure;

/// True when the header block carries `TLS-Required: No` (RFC 8689 §4.2.2): the sender
/// asks that the recipient domain's MTA-STS and DANE policies be set aside. Folded
/// lines are unfolded; the field name and the value are compared without regard to case.
pub fn tls_optional(header: &[u8]) -> bool {
    let mut field: Option<Vec<u8>> = None;
    let mut found = false;
    let mut finish = |field: Option<Vec<u8>>| {
        if let Some(f) = field
            && let Some(colon) = f.iter().position(|&b| b == b':')
        {
            let (name, value) = (&f[..colon], &f[colon + 1..]);
            if name.trim_ascii().eq_ignore_ascii_case(b"tls-required") && value.trim_ascii().eq_ignore_ascii_case(b"no")
            {
                found = true;
            }
        }
    };
    for line in header.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            break;
        }
        match &mut field {
            Some(f) if text[0] == b' ' || text[0] == b'\t' => f.extend_from_slice(text),
            _ => finish(field.replace(text.to_vec())),
        }
    }
    finish(field);
    found
}

/// RFC 8689 §5: the message cannot go on with TLS as REQUIRETLS demands, for a
/// reason that will not change by waiting (5.7.30 "REQUIRETLS support required").
pub fn refused(detail: impl Into<String>) -> Failure {
    Failure::permanent((5, 7, 30), format!("REQUIRETLS support required: {}", detail.into()))
}

/// The recipient domain's MTA-STS policy could not be learned just now: a REQUIRETLS
/// message waits rather than being returned, since the policy may be back later.
pub fn unsure(detail: impl Into<String>) -> Failure {
    Failure::temporary((4, 7, 30), format!("REQUIRETLS: {}", detail.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_required_no_is_found() {
        assert!(tls_optional(b"Subject: a\r\nTLS-Required: No\r\n\r\nbody"));
        assert!(tls_optional(b"tls-required:   no  \r\n\r\n"));
        assert!(tls_optional(b"TLS-Required:\r\n No\r\nSubject: x\r\n\r\n"));
        assert!(!tls_optional(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!tls_optional(b"Subject: a\r\n\r\nTLS-Required: No\r\n"), "only in the header block");
        assert!(!tls_optional(b"X-TLS-Required: No\r\n\r\n"));
    }
}
