//! The "bulk sender requirements" block of `tern dns check`: what Gmail, Yahoo and
//! Microsoft ask of domains that send much mail (authentication, reverse DNS, TLS,
//! one-click unsubscribe), read off the record rows checked above it.

use super::dns::{Row, Status};
use crate::config::Config;
use std::fmt::Write as _;

/// How one requirement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Met in a weaker way than asked.
    Warn,
    /// Not something DNS or Tern can tell.
    Note,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Warn => "warn",
            Verdict::Note => "note",
        }
    }
}

/// One requirement and its verdict.
pub struct Line {
    pub verdict: Verdict,
    pub text: String,
}

fn line(verdict: Verdict, text: impl Into<String>) -> Line {
    Line { verdict, text: text.into() }
}

fn pass_if(ok: bool) -> Verdict {
    if ok { Verdict::Pass } else { Verdict::Fail }
}

/// The requirements for `domain`, judged from `rows`.
pub fn lines(config: &Config, domain: &str, rows: &[Row]) -> Vec<Line> {
    let ok = |kind: &str, name: &str| rows.iter().any(|r| r.kind == kind && r.name == name && r.status == Status::Ok);
    let spf = ok("SPF", &format!("{domain}."));
    let dkim = rows.iter().any(|r| r.kind == "DKIM" && r.status == Status::Ok);
    let dmarc = ok("DMARC", &format!("_dmarc.{domain}."));
    let ptrs: Vec<&Row> = rows.iter().filter(|r| r.kind == "PTR").collect();
    let reverse = !ptrs.is_empty() && ptrs.iter().all(|r| r.status == Status::Ok);
    let mut out = vec![
        line(pass_if(spf), format!("SPF passes for {domain} from this server's addresses")),
        line(pass_if(dkim), format!("DKIM key published for the configured selector of {domain}")),
        // Mail signed with d=DOMAIN, or sent from DOMAIN with SPF passing, is aligned.
        line(
            pass_if(dmarc && (spf || dkim)),
            format!("DMARC record with p=none or stricter, and alignment possible (SPF or DKIM of {domain})"),
        ),
        line(pass_if(reverse), "PTR and forward-confirmed reverse DNS of every outbound address"),
    ];
    out.push(if !config.outbound.starttls {
        line(Verdict::Fail, "TLS: [outbound] starttls is off, so mail leaves in plain text")
    } else if config.tls.cert.is_some() {
        line(Verdict::Pass, "TLS offered: STARTTLS with the configured certificate, and used when sending")
    } else {
        line(Verdict::Warn, "TLS offered with a self-signed certificate only: configure [tls] cert and key")
    });
    out.push(line(
        Verdict::Note,
        "one-click unsubscribe (RFC 8058 List-Unsubscribe-Post) is up to the sending application",
    ));
    out
}

/// The block as printed.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::from("Bulk sender requirements (Gmail, Yahoo, Microsoft)\n");
    for l in lines {
        let _ = writeln!(out, "  {:6}{}", l.verdict.word(), l.text);
    }
    out
}

/// No requirement failed.
pub fn passed(lines: &[Line]) -> bool {
    lines.iter().all(|l| l.verdict != Verdict::Fail)
}
