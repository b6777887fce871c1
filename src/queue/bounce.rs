//! Delivery status notifications (RFC 3464): bounces, delay notices and success
//! reports, sent with a null reverse path to the original sender.

use crate::spool::{Content, Detail, Envelope, Recipient, Ret};
use chrono::{DateTime, Local};

/// Content past this size is returned as headers only.
const MAX_RETURNED: usize = 1 << 20;

/// What a notice may return of the original message: all of it when it is at most
/// [`MAX_RETURNED`] bytes, else no more than its header block.
pub struct Quoted {
    bytes: Vec<u8>,
    whole: bool,
}

impl Quoted {
    /// Reads what may be returned of `content` (blocking), never more than
    /// [`MAX_RETURNED`] bytes.
    pub fn of(content: &Content) -> std::io::Result<Quoted> {
        if content.len() <= MAX_RETURNED as u64 {
            return Ok(Quoted { bytes: content.to_vec()?, whole: true });
        }
        Ok(Quoted { bytes: content.head(MAX_RETURNED)?, whole: false })
    }

    /// Nothing of the message (it could not be read).
    pub fn nothing() -> Quoted {
        Quoted { bytes: Vec::new(), whole: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient's line in a report.
pub struct Report<'a> {
    pub recipient: &'a Recipient,
    pub action: Action,
    pub detail: &'a Detail,
}

/// The Diagnostic-Code of a report (RFC 3464 §2.3.6): the remote server's reply
/// when one answered, else Tern's own words.
fn diagnostic(detail: &Detail) -> String {
    match &detail.server {
        Some(s) => format!("smtp; {} {}", s.code, s.text),
        None => format!("X-Tern; {}", detail.text),
    }
}

fn date(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&Local).to_rfc2822()).unwrap_or_default()
}

/// The header block of a message (up to the empty line).
fn headers(content: &[u8]) -> &[u8] {
    match content.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &content[..i + 2],
        None => content,
    }
}

/// Builds the DSN message for `reports` about `original`.
pub fn build(hostname: &str, dsn_id: &str, original: &Envelope, quoted: &Quoted, reports: &[Report<'_>]) -> Vec<u8> {
    let now = crate::queue::now();
    let boundary = format!("{dsn_id}/{hostname}");
    let failed = reports.iter().any(|r| r.action == Action::Failed);
    let delayed = reports.iter().any(|r| r.action == Action::Delayed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    let mut m = String::new();
    m.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    m.push_str(&format!("To: <{}>\r\n", original.sender));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", date(now)));
    m.push_str(&format!("Message-ID: <{dsn_id}.dsn@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"));
    m.push_str(&format!("This is the mail system at host {hostname}.\r\n\r\n"));
    if failed {
        m.push_str(
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.",
        );
        m.push_str(if original.requiretls {
            " It was sent with REQUIRETLS,\r\nso it is not returned here.\r\n\r\n"
        } else {
            " It's attached below.\r\n\r\n"
        });
    } else if delayed {
        m.push_str("Your message could not be delivered yet to one or more recipients.\r\nIt will be retried until it is too old; you do not need to send it again.\r\n\r\n");
    } else {
        m.push_str("Your message was successfully delivered to the destinations listed below.\r\n\r\n");
    }
    for r in reports {
        let diagnostic = diagnostic(r.detail);
        m.push_str(&format!(
            "<{}>: {}\r\n",
            r.recipient.address,
            diagnostic.split_once("; ").map_or(diagnostic.as_str(), |(_, d)| d)
        ));
    }
    m.push_str("\r\n");

    m.push_str(&format!(
        "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\nX-Tern-Queue-ID: {}\r\n", original.id));
    if let Some(envid) = &original.envid {
        m.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    m.push_str(&format!("Arrival-Date: {}\r\n", date(original.arrival)));
    for r in reports {
        m.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\n", r.recipient.address));
        if let Some(orcpt) = &r.recipient.orcpt {
            m.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
        } else if r.recipient.original != r.recipient.address {
            m.push_str(&format!("Original-Recipient: rfc822; {}\r\n", r.recipient.original));
        }
        m.push_str(&format!("Action: {}\r\nStatus: {}\r\n", r.action.word(), r.detail.status));
        if let Some(server) = &r.detail.server {
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", server.host));
        }
        if r.action != Action::Delivered {
            m.push_str(&format!("Diagnostic-Code: {}\r\n", diagnostic(r.detail)));
        }
        m.push_str(&format!("Last-Attempt-Date: {}\r\n", date(now)));
    }
    m.push_str("\r\n");

    // RFC 3461 §4.3: RET=HDRS returns headers only; without RET a bounce returns the
    // whole message (if not huge) and other reports only the headers.
    // RFC 8689 §5: a notice about a REQUIRETLS message may itself travel in the clear,
    // so it returns none of the message: only its Date and Message-ID, to identify it.
    if original.requiretls {
        let mut out = m.into_bytes();
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Description: Message Headers (REQUIRETLS: content withheld)\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(&identifying(headers(&quoted.bytes)));
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        return out;
    }
    let full = match original.ret {
        Some(Ret::Headers) => false,
        Some(Ret::Full) => true,
        None => failed,
    } && quoted.whole;
    let mut out = m.into_bytes();
    if full {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(&quoted.bytes);
    } else {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Description: Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(headers(&quoted.bytes));
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The `Date:` and `Message-ID:` fields of a header block, unfolded lines included.
fn identifying(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            keep = name.eq_ignore_ascii_case(b"date") || name.eq_ignore_ascii_case(b"message-id");
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Whether the sender asked to hear about this outcome (RFC 3461 §4.1; without
/// NOTIFY, failures and delays are reported).
pub fn wanted(recipient: &Recipient, action: Action) -> bool {
    match (recipient.notify, action) {
        (None, Action::Failed | Action::Delayed) => true,
        (None, Action::Delivered | Action::Relayed) => false,
        (Some(n), _) if n.never => false,
        (Some(n), Action::Failed) => n.failure,
        (Some(n), Action::Delayed) => n.delay,
        (Some(n), Action::Delivered | Action::Relayed) => n.success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RcptState;

    fn rcpt(notify: Option<&str>) -> Recipient {
        Recipient {
            address: "bob@remote.test".into(),
            local: false,
            original: "bob@remote.test".into(),
            orcpt: Some("rfc822;bob@remote.test".into()),
            notify: notify.map(|n| n.parse().unwrap()),
            state: RcptState::Queued,
        }
    }

    #[test]
    fn failure_report_fields() {
        let r = rcpt(None);
        let env = Envelope {
            id: "ABC".into(),
            arrival: 0,
            sender: "alice@local.test".into(),
            size: 20,
            envid: Some("E1".into()),
            recipients: vec![r.clone()],
            ..Default::default()
        };
        let server = crate::spool::ServerReply {
            host: "mx.remote.test".into(),
            ip: [127, 0, 0, 2].into(),
            code: 550,
            text: "5.1.1 no such user".into(),
        };
        let detail = Detail::from_server(server, "");
        let dsn = build(
            "mx.local.test",
            "DSN1",
            &env,
            &Quoted::of(&Content::from(b"Subject: hi\r\n\r\nbody\r\n".to_vec())).unwrap(),
            &[Report { recipient: &r, action: Action::Failed, detail: &detail }],
        );
        let text = String::from_utf8(dsn).unwrap();
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status",
            "Reporting-MTA: dns; mx.local.test",
            "Original-Envelope-Id: E1",
            "Final-Recipient: rfc822; bob@remote.test",
            "Original-Recipient: rfc822;bob@remote.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.remote.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Content-Type: message/rfc822",
            "Subject: hi",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn a_requiretls_message_is_not_returned() {
        let r = rcpt(None);
        let env = Envelope {
            id: "ABC".into(),
            arrival: 0,
            sender: "alice@local.test".into(),
            size: 20,
            ret: Some(Ret::Full),
            requiretls: true,
            recipients: vec![r.clone()],
            ..Default::default()
        };
        let detail = Detail::new((5, 7, 30), "REQUIRETLS support required");
        let original = b"Subject: secret plans\r\nMessage-ID: <m1@local.test>\r\nDate: Mon, 7 Dec 2026 00:00:00 +0000\r\n\r\nthe secret body\r\n";
        let quoted = Quoted::of(&Content::from(original.to_vec())).unwrap();
        let dsn = build(
            "mx.local.test",
            "DSN1",
            &env,
            &quoted,
            &[Report { recipient: &r, action: Action::Failed, detail: &detail }],
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Status: 5.7.30") && text.contains("Message-ID: <m1@local.test>"), "{text}");
        assert!(!text.contains("secret"), "content leaked:\n{text}");
        assert!(!text.contains("message/rfc822"), "{text}");
    }

    #[test]
    fn notify_rules() {
        assert!(wanted(&rcpt(None), Action::Failed));
        assert!(!wanted(&rcpt(None), Action::Delivered));
        assert!(wanted(&rcpt(Some("SUCCESS")), Action::Delivered));
        assert!(!wanted(&rcpt(Some("SUCCESS")), Action::Failed));
        assert!(!wanted(&rcpt(Some("NEVER")), Action::Failed));
    }
}
