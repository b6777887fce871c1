//! The verdict where mail clients read it: `Authentication-Results` (RFC 8601) and
//! `Received-SPF` (RFC 7208 §9.1); and removal of forged results claiming to be ours.

use super::dmarc::{self, Outcome};
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::{DkimOutput, DkimResult, Error, SpfResult};
use std::fmt::Write;
use std::net::IpAddr;

/// What SPF was asked about (RFC 7208 §2.3, §2.4).
#[derive(Debug, Clone)]
pub enum SpfIdentity {
    /// The MAIL FROM address.
    MailFrom(String),
    /// The HELO name, for the null sender.
    Helo(String),
}

pub fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

pub fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        // RFC 6376 §6.1.3: a body that does not match its hash fails the signature.
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)) => "fail",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// RFC 8617 §4.4: a chain passes, fails, or is not there.
pub fn arc_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        _ => "fail",
    }
}

pub fn dmarc_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::None => "none",
        Outcome::TempError => "temperror",
        Outcome::PermError => "permerror",
    }
}

pub fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

/// A property value: as is when it is a plain token or address, quoted otherwise
/// (RFC 8601 §2.2 `pvalue`).
fn pvalue(out: &mut String, value: &str) {
    let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && !b"()<>,;:\\\"/[]?=".contains(&b));
    if plain {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars().filter(|c| !c.is_control()) {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// A comment with the reason; parentheses and controls are kept out.
fn comment(out: &mut String, text: &str) {
    let text: String = text.chars().filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\')).collect();
    let _ = write!(out, " ({})", text.trim());
}

pub struct Results<'a> {
    pub hostname: &'a str,
    pub spf: SpfResult,
    pub identity: &'a SpfIdentity,
    pub dkim: &'a [DkimOutput<'a>],
    pub arc: &'a DkimResult,
    pub dmarc: &'a dmarc::Verdict,
    /// The trusted ARC sealer whose chain outweighs a DMARC failure.
    pub arc_override: Option<&'a str>,
}

impl Results<'_> {
    /// The `Authentication-Results:` field, folded, ending in CRLF.
    pub fn header(&self) -> String {
        let mut h = format!("Authentication-Results: {};\r\n\tspf={}", self.hostname, spf_word(self.spf));
        match self.identity {
            SpfIdentity::MailFrom(from) => {
                h.push_str(" smtp.mailfrom=");
                pvalue(&mut h, from);
            }
            SpfIdentity::Helo(helo) => {
                h.push_str(" smtp.helo=");
                pvalue(&mut h, helo);
            }
        }
        if self.dkim.is_empty() {
            h.push_str(";\r\n\tdkim=none");
        }
        for output in self.dkim {
            let result = output.result();
            let _ = write!(h, ";\r\n\tdkim={}", dkim_word(result));
            if let DkimResult::Fail(e) | DkimResult::PermError(e) | DkimResult::TempError(e) | DkimResult::Neutral(e) =
                result
            {
                comment(&mut h, &e.to_string());
            }
            if let Some(sig) = output.signature() {
                h.push_str(" header.d=");
                pvalue(&mut h, &sig.d);
                h.push_str(" header.s=");
                pvalue(&mut h, &sig.s);
                // RFC 6008: enough of the signature to tell several apart.
                let b = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &sig.b);
                h.push_str(" header.b=");
                pvalue(&mut h, &b[..b.len().min(8)]);
            }
        }
        let _ = write!(h, ";\r\n\tarc={}", arc_word(self.arc));
        let _ = write!(h, ";\r\n\tdmarc={}", dmarc_word(self.dmarc.outcome));
        if let Some(sealer) = self.arc_override {
            comment(&mut h, &format!("accepted: ARC chain sealed by trusted {sealer}"));
        }
        if !self.dmarc.domain.is_empty() {
            h.push_str(" header.from=");
            pvalue(&mut h, &self.dmarc.domain);
        }
        if let Some(policy) = self.dmarc.policy {
            let _ = write!(h, " policy.dmarc={}", policy_word(policy));
        }
        h.push_str("\r\n");
        h
    }
}

/// The `Received-SPF:` field (RFC 7208 §9.1), ending in CRLF.
pub fn received_spf(hostname: &str, result: SpfResult, identity: &SpfIdentity, ip: IpAddr, helo: &str) -> String {
    let (who, envelope_from, kind) = match identity {
        SpfIdentity::MailFrom(from) => (format!("domain of {from}"), from.as_str(), "mailfrom"),
        SpfIdentity::Helo(name) => (format!("domain of {name}"), "", "helo"),
    };
    let explanation = match result {
        SpfResult::Pass => format!("{who} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("{who} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => format!("{who} discourages use of {ip} as permitted sender"),
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by {who}"),
        SpfResult::None => format!("{who} does not publish an SPF record"),
        SpfResult::TempError => format!("temporary error looking up the SPF record of {who}"),
        SpfResult::PermError => format!("the SPF record of {who} is invalid"),
    };
    let mut h = format!("Received-SPF: {}", spf_word(result));
    comment(&mut h, &format!("{hostname}: {explanation}"));
    let _ = write!(h, "\r\n\tclient-ip={ip}; envelope-from=");
    pvalue(&mut h, envelope_from);
    h.push_str("; helo=");
    pvalue(&mut h, helo);
    let _ = write!(h, ";\r\n\treceiver={hostname}; identity={kind}\r\n");
    h
}

/// The header block of `content` without the `Authentication-Results` fields whose
/// authserv-id is `hostname`: only Tern may speak for Tern (RFC 8601 §5).
/// Returns `None` when there is nothing to remove.
pub fn strip_forged(content: &[u8], hostname: &str) -> Option<Vec<u8>> {
    let header_end = match content.starts_with(b"\r\n") {
        true => 0, // no header at all
        false => memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2),
    };
    let mut fields = Vec::new();
    let mut start = 0;
    // Each field runs from its name to the line that does not start with whitespace.
    let mut pos = 0;
    while pos < header_end {
        let line_end = memchr::memmem::find(&content[pos..header_end], b"\r\n").map_or(header_end, |i| pos + i + 2);
        let next = line_end;
        if next >= header_end || !matches!(content.get(next), Some(b' ' | b'\t')) {
            fields.push((start, next));
            start = next;
        }
        pos = next;
    }
    let forged: Vec<(usize, usize)> =
        fields.into_iter().filter(|&(s, e)| claims(&content[s..e.min(content.len())], hostname)).collect();
    if forged.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(content.len());
    let mut at = 0;
    for (s, e) in forged {
        out.extend_from_slice(&content[at..s]);
        at = e;
    }
    out.extend_from_slice(&content[at..]);
    Some(out)
}

/// True when `field` is an `Authentication-Results` field with authserv-id `hostname`.
/// The name may be followed by whitespace before its colon (RFC 5322 §4.5.2 obsolete
/// syntax, which readers still accept), and the id may be a quoted-string (RFC 8601
/// §2.2 `authserv-id = value`).
fn claims(field: &[u8], hostname: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = String::from_utf8_lossy(&field[..colon]);
    if !name.trim_end_matches([' ', '\t']).eq_ignore_ascii_case("authentication-results") {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    // Drop comments (not nested more than this needs), then take the first value.
    let mut plain = String::new();
    let mut depth = 0u32;
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                if depth == 0 {
                    plain.push(c);
                }
            }
            '\\' => escaped = true,
            '"' if depth == 0 => {
                quoted = !quoted;
                plain.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let plain = plain.trim_start();
    let id = match plain.strip_prefix('"') {
        Some(rest) => rest.split('"').next().unwrap_or(""),
        None => plain.split(';').next().unwrap_or("").split_whitespace().next().unwrap_or(""),
    };
    id.trim().trim_end_matches('.').eq_ignore_ascii_case(hostname.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_go_and_others_stay() {
        let msg = b"Authentication-Results: TERN.test;\r\n\tdkim=pass\r\nSubject: hi\r\nAuthentication-Results: other.test; spf=pass\r\nauthentication-results: (x) tern.test. 1; dmarc=pass\r\n\r\nAuthentication-Results: tern.test; body\r\n";
        let out = strip_forged(msg, "tern.test").unwrap();
        assert_eq!(
            out,
            b"Subject: hi\r\nAuthentication-Results: other.test; spf=pass\r\n\r\nAuthentication-Results: tern.test; body\r\n"
        );
        assert!(strip_forged(b"Subject: x\r\n\r\nbody", "tern.test").is_none());
        assert!(strip_forged(b"Authentication-Results: tern.testing; x\r\n\r\n", "tern.test").is_none());
        // A message with no body separator, and one that is all header.
        assert_eq!(strip_forged(b"Authentication-Results: tern.test; x", "tern.test").unwrap(), b"");
        assert!(strip_forged(b"\r\nAuthentication-Results: tern.test; in the body\r\n\r\n", "tern.test").is_none());
    }

    #[test]
    fn quoted_ids_and_space_before_the_colon_are_forged_too() {
        let forged: &[&[u8]] = &[
            b"Authentication-Results: \"tern.test\"; spf=pass\r\n",
            b"Authentication-Results:\"TERN.test.\" 1; spf=pass\r\n",
            b"Authentication-Results : tern.test; dkim=pass\r\n",
            b"authentication-results\t: (c) \"tern.test\"\r\n\t; dmarc=pass\r\n",
            b"Authentication-Results: \"tern\\.test\"; spf=pass\r\n",
        ];
        for field in forged {
            let msg = [field, &b"Subject: hi\r\n\r\nbody\r\n"[..]].concat();
            assert_eq!(
                strip_forged(&msg, "tern.test").as_deref(),
                Some(&b"Subject: hi\r\n\r\nbody\r\n"[..]),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        let kept: &[&[u8]] = &[
            b"Authentication-Results: \"tern.test.other\"; spf=pass\r\n",
            b"Authentication-Results: \"other.test\" (tern.test); spf=pass\r\n",
            b"Authentication-Results-X: tern.test; spf=pass\r\n",
            b"X-Authentication-Results : tern.test; spf=pass\r\n",
        ];
        for field in kept {
            let msg = [field, &b"\r\nbody\r\n"[..]].concat();
            assert!(strip_forged(&msg, "tern.test").is_none(), "{}", String::from_utf8_lossy(field));
        }
    }

    #[test]
    fn values_are_quoted_when_needed() {
        let mut s = String::new();
        pvalue(&mut s, "alice@a.test");
        pvalue(&mut s, "\"odd local\"@a.test");
        assert_eq!(s, "alice@a.test\"\\\"odd local\\\"@a.test\"");
    }

    #[test]
    fn received_spf_names_client_and_identity() {
        let id = SpfIdentity::MailFrom("a@b.test".into());
        let h = received_spf("mx.test", SpfResult::Pass, &id, "127.0.0.5".parse().unwrap(), "client.test");
        assert!(h.starts_with("Received-SPF: pass (mx.test: domain of a@b.test designates 127.0.0.5"), "{h}");
        assert!(h.contains("client-ip=127.0.0.5;") && h.contains("identity=mailfrom") && h.ends_with("\r\n"));
    }
}
