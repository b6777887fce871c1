//! Reading the aggregate reports Tern sends, as their receivers would: a TLS-RPT
//! report is validated against a JSON Schema written from RFC 8460 §4.4 (Python
//! `jsonschema`), a DMARC report is read with parsedmarc, signatures with dkimpy.
#![allow(dead_code)]

use super::dkim::{Key, PY_DKIM, PY_VERIFY, python, scratch};
use super::outbound::{FakePeer, fields, python_has, wait_for};
use super::run;
use serde_json::{Value, json};
use std::fs;
use std::time::Duration;

/// How long a report may take to reach its receiver.
pub const DELIVERY: Duration = Duration::from_secs(30);

/// Splits a report message: its subject, content type, the attachment's name and its
/// bytes gunzipped; for TLS-RPT the JSON is validated against RFC 8460 §4.4, for DMARC
/// the attachment is read by parsedmarc. Prints one JSON object.
const READ_REPORT: &str = r#"
import email, email.policy, gzip, json, os, sys
kind, path = sys.argv[1], sys.argv[2]
msg = email.message_from_bytes(open(path, "rb").read(), policy=email.policy.default)
out = {"subject": str(msg["subject"]), "content_type": msg.get_content_type(),
       "report_type": msg.get_param("report-type"), "tls_domain": str(msg.get("TLS-Report-Domain", "")),
       "tls_submitter": str(msg.get("TLS-Report-Submitter", ""))}
part = next(p for p in msg.walk() if p.get_filename())
out["filename"] = part.get_filename()
out["part_type"] = part.get_content_type()
data = part.get_payload(decode=True)
if kind == "tls":
    import jsonschema
    report = json.loads(gzip.decompress(data))
    jsonschema.validate(report, json.loads(os.environ["TLSRPT_SCHEMA"]),
                        format_checker=jsonschema.FormatChecker())
    out["report"] = report
else:
    import parsedmarc
    out["report"] = parsedmarc.parse_aggregate_report_file(data, offline=True)
print(json.dumps(out, default=str))
"#;

/// RFC 8460 §4.4 as a JSON Schema.
pub fn tlsrpt_schema() -> Value {
    let results = [
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    ];
    let count = json!({"type": "integer", "minimum": 0});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
        "additionalProperties": false,
        "properties": {
            "organization-name": {"type": "string"},
            "date-range": {
                "type": "object",
                "required": ["start-datetime", "end-datetime"],
                "additionalProperties": false,
                "properties": {
                    "start-datetime": {"type": "string", "format": "date-time"},
                    "end-datetime": {"type": "string", "format": "date-time"}
                }
            },
            "contact-info": {"type": "string"},
            "report-id": {"type": "string"},
            "policies": {"type": "array", "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "additionalProperties": false,
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "additionalProperties": false,
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": strings,
                            "policy-domain": {"type": "string"},
                            "mx-host": strings
                        }
                    },
                    "summary": {
                        "type": "object",
                        "required": ["total-successful-session-count", "total-failure-session-count"],
                        "additionalProperties": false,
                        "properties": {
                            "total-successful-session-count": count,
                            "total-failure-session-count": count
                        }
                    },
                    "failure-details": {"type": "array", "items": {
                        "type": "object",
                        "required": ["result-type", "failed-session-count"],
                        "additionalProperties": false,
                        "properties": {
                            "result-type": {"enum": results},
                            "sending-mta-ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                            "receiving-mx-hostname": {"type": "string"},
                            "receiving-mx-helo": {"type": "string"},
                            "receiving-ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                            "failed-session-count": count,
                            "additional-information": {"type": "string"},
                            "failure-reason-code": {"type": "string"}
                        }
                    }}
                }
            }}
        }
    })
}

#[track_caller]
pub fn read_report(kind: &str, msg: &[u8], dir: &std::path::Path) -> Value {
    let file = scratch(dir, &format!("report-{kind}.eml"), msg);
    let script = dir.join("read_report.py");
    fs::write(&script, READ_REPORT).expect("write script");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script).args([kind, &file]);
    cmd.env("TLSRPT_SCHEMA", tlsrpt_schema().to_string());
    let out = run(cmd, Duration::from_secs(60));
    out.assert_success("reading the report");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()))
}

#[track_caller]
pub fn dkim_verdict(dir: &std::path::Path, msg: &[u8], key: &Key) -> String {
    let file = scratch(dir, "report-to-verify.eml", msg);
    let out = python(&format!("{PY_DKIM}\n{PY_VERIFY}"), &[&file, &key.dkimpy_arg()]);
    out.assert_success("dkimpy verify");
    out.stdout.trim().to_string()
}

/// The Subject field, unfolded.
pub fn subject_of(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n ", " ").replace("\r\n\t", " ");
    fields(&head, "Subject").first().cloned().unwrap_or_default()
}

/// Waits until `peer` holds a message whose subject starts with `prefix`.
#[track_caller]
pub fn wait_report(peer: &FakePeer, prefix: &str, context: impl Fn() -> String) -> Vec<u8> {
    wait_for(
        DELIVERY,
        prefix,
        || peer.messages().into_iter().find(|m| subject_of(m).starts_with(prefix)),
        || format!("{}\n{}", peer.logs(), context()),
    )
}

pub fn missing_python(modules: &[&str]) -> bool {
    for m in modules {
        if !python_has(m) {
            eprintln!("SKIPPED: the Python module {m} is missing (scripts/test installs it with pip)");
            return true;
        }
    }
    false
}
