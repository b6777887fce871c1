//! The report messages: gzipped report files attached to a short text, built with
//! mail-builder (TLS-RPT: RFC 8460 §5.3; DMARC: RFC 7489 §7.2.1.1).

use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use std::io::Write;

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// Who sends a report and to whom.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    /// The host name that makes the report.
    pub submitter: &'a str,
    pub report_id: &'a str,
}

fn to_list<'a>(to: &'a [String]) -> HeaderType<'a> {
    HeaderType::Address(Address::List(to.iter().map(|a| Address::from(a.as_str())).collect()))
}

/// `Report Domain: <domain> Submitter: <host> Report-ID: <<id>>` (RFC 8460 §5.3, RFC
/// 7489 §7.2.1.1), folded but never encoded, so that it reads the same everywhere.
fn subject<'a>(domain: &str, e: &Envelope<'_>) -> HeaderType<'a> {
    let text = format!("Report Domain: {domain} Submitter: {} Report-ID: <{}>", e.submitter, e.report_id);
    HeaderType::Raw(Raw::new(text))
}

fn write(builder: MessageBuilder<'_>) -> Vec<u8> {
    builder.write_to_vec().expect("writing to memory")
}

/// A TLS-RPT report for `domain` (RFC 8460 §5.3): `multipart/report;
/// report-type=tlsrpt` with the gzipped JSON as `application/tlsrpt+gzip`, named
/// `<submitter>!<domain>!<begin>!<end>!<uniq>.json.gz`.
pub fn tls(e: &Envelope<'_>, domain: &str, begin: i64, end: i64, uniq: &str, gz: &[u8]) -> Vec<u8> {
    let text = format!(
        "This is a TLS report (RFC 8460) from {}.\r\n\r\nReport Domain: {domain}\r\nSubmitter: {}\r\nReport-ID: <{}>\r\n",
        e.submitter, e.submitter, e.report_id
    );
    let name = format!("{}!{domain}!{begin}!{end}!{uniq}.json.gz", e.submitter);
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
        BodyPart::Multipart(vec![
            MimePart::new(ContentType::new("text/plain").attribute("charset", "utf-8"), BodyPart::Text(text.into())),
            MimePart::new(ContentType::new("application/tlsrpt+gzip"), BodyPart::Binary(gz.into())).attachment(name),
        ]),
    );
    write(
        MessageBuilder::new()
            .from(e.from)
            .header("To", to_list(e.to))
            .header("Subject", subject(domain, e))
            .message_id(format!("{}@{}", uniq, e.submitter))
            .header("TLS-Report-Domain", HeaderType::Text(domain.into()))
            .header("TLS-Report-Submitter", HeaderType::Text(e.submitter.into()))
            .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
            .body(body),
    )
}

/// A DMARC aggregate report for `domain` (RFC 7489 §7.2.1.1): the gzipped XML as
/// `application/gzip`, named `<submitter>!<domain>!<begin>!<end>.xml.gz`.
pub fn dmarc(e: &Envelope<'_>, domain: &str, begin: u64, end: u64, gz: &[u8]) -> Vec<u8> {
    let text = format!(
        "This is a DMARC aggregate report (RFC 7489) from {}.\r\n\r\nReport Domain: {domain}\r\nSubmitter: {}\r\nReport-ID: <{}>\r\n",
        e.submitter, e.submitter, e.report_id
    );
    let name = format!("{}!{domain}!{begin}!{end}.xml.gz", e.submitter);
    write(
        MessageBuilder::new()
            .from(e.from)
            .header("To", to_list(e.to))
            .header("Subject", subject(domain, e))
            .message_id(format!("{begin}.{end}.{}@{}", fastrand::u64(..), e.submitter))
            .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
            .text_body(text)
            .attachment("application/gzip", name, gz.to_vec()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    #[test]
    fn a_tls_report_message_carries_its_headers_and_attachment() {
        let to = vec!["tls@r.test".to_string()];
        let e = Envelope {
            from: "tls-reports@mx.example",
            to: &to,
            submitter: "mx.example",
            report_id: "2026-12-07T00:00:00Z.0123456789abcdef@mx.example",
        };
        let json = br#"{"report-id":"id1"}"#;
        let msg = tls(&e, "a.test", 10, 20, "u1", &gzip(json));
        let parsed = mail_parser::MessageParser::default().parse(&msg).unwrap();
        let subject =
            "Report Domain: a.test Submitter: mx.example Report-ID: <2026-12-07T00:00:00Z.0123456789abcdef@mx.example>";
        assert_eq!(parsed.subject(), Some(subject));
        assert!(!String::from_utf8_lossy(&msg).contains("=?"), "an encoded word");
        assert_eq!(parsed.header("TLS-Report-Domain").and_then(|h| h.as_text()), Some("a.test"));
        let ct = parsed.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        let part = parsed.attachment(0).unwrap();
        assert_eq!(part.attachment_name(), Some("mx.example!a.test!10!20!u1.json.gz"));
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(part.contents()), &mut out).unwrap();
        assert_eq!(out, json);
    }
}
