//! Tern's DKIM canonicalization against dkimpy's, on thousands of random bodies
//! and header fields made from a fixed seed: trailing whitespace lines, empty
//! lines, lone spaces and tabs, 8-bit bytes, folded fields, whitespace before
//! the colon, empty bodies and bodies without a final CRLF.
//!
//! One difference is known and not Tern's: for a last line without CRLF,
//! dkimpy keeps its trailing whitespace in "relaxed" where OpenDKIM and
//! Mail::DKIM (and Tern) treat the line as if it ended in CRLF. dkimpy is
//! therefore given such bodies with the CRLF added.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::outbound::python_has;
use common::{CLIENT_TIMEOUT, run};
use serde_json::{Value, json};
use std::process::Command;
use tern::policy::dkim::canon::{self, BodyHasher, Canonicalization, Hash};

const CASES: usize = 3000;
const SEED: u64 = 6376;

/// One random line: words, spaces, tabs and 8-bit bytes, in random order.
fn line(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.usize(0..6) {
        match rng.u8(0..10) {
            0..=3 => out.extend((0..rng.usize(1..8)).map(|_| rng.alphanumeric() as u8)),
            4 | 5 => out.extend((0..rng.usize(1..4)).map(|_| b' ')),
            6 => out.extend((0..rng.usize(1..3)).map(|_| b'\t')),
            7 => out.extend_from_slice(if rng.bool() { b" \t " } else { b"\t " }),
            8 => out.extend((0..rng.usize(1..4)).map(|_| rng.u8(0x80..=0xff))),
            _ => out.extend_from_slice(b".,;:!=-"),
        }
    }
    out
}

/// A line end as a client might write it; all become CRLF, as on the wire.
fn line_end(rng: &mut fastrand::Rng) -> &'static [u8] {
    [&b"\r\n"[..], b"\n", b"\r"][rng.usize(0..3)]
}

fn to_crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match (text[i], text.get(i + 1)) {
            (b'\r', Some(b'\n')) => i += 1,
            (b'\r' | b'\n', _) => {}
            (b, _) => {
                out.push(b);
                i += 1;
                continue;
            }
        }
        out.extend_from_slice(b"\r\n");
        i += 1;
    }
    out
}

fn body(rng: &mut fastrand::Rng) -> Vec<u8> {
    if rng.u8(0..20) == 0 {
        return Vec::new();
    }
    let mut text = Vec::new();
    for _ in 0..rng.usize(0..12) {
        match rng.u8(0..6) {
            0 => {}                                                                    // empty line
            1 => text.extend_from_slice([&b" "[..], b"\t", b" \t "][rng.usize(0..3)]), // whitespace only
            _ => text.extend(line(rng)),
        }
        text.extend_from_slice(line_end(rng));
    }
    // Often end in whitespace-only or empty lines; sometimes without a line end.
    for _ in 0..rng.usize(0..3) {
        text.extend_from_slice([&b""[..], b" ", b"\t", b"  \t"][rng.usize(0..4)]);
        text.extend_from_slice(line_end(rng));
    }
    if rng.u8(0..5) == 0 {
        text.extend(line(rng));
    }
    to_crlf(&text)
}

/// Header fields as whole raw fields (name, colon, value, CRLF).
fn fields(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    const NAMES: &[&str] = &["Subject", "From", "To", "X-Mixed-Case", "DKIM-Signature", "Received", "cc"];
    (0..rng.usize(1..6))
        .map(|_| {
            let mut f = NAMES[rng.usize(0..NAMES.len())].as_bytes().to_vec();
            f.extend_from_slice([&b""[..], b" ", b"\t", b" \t"][rng.usize(0..4)]);
            f.push(b':');
            f.extend(line(rng));
            for _ in 0..rng.usize(0..3) {
                f.extend_from_slice(b"\r\n");
                f.extend_from_slice([&b" "[..], b"\t", b"  "][rng.usize(0..3)]);
                f.extend(line(rng));
            }
            f.extend_from_slice(b"\r\n");
            f
        })
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn decoded(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().expect("a base64 string")).expect("base64")
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[test]
fn tern_canonicalizes_like_dkimpy() {
    assert!(python_has("dkim"), "dkimpy is missing (scripts/test installs it with pip)");
    let mut rng = fastrand::Rng::with_seed(SEED);
    let cases: Vec<(Vec<u8>, Vec<Vec<u8>>)> = (0..CASES).map(|_| (body(&mut rng), fields(&mut rng))).collect();
    let input: Vec<Value> = cases
        .iter()
        .map(|(body, fields)| {
            let mut reference_body = body.clone();
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                reference_body.extend_from_slice(b"\r\n");
            }
            let split: Vec<[String; 2]> = fields
                .iter()
                .map(|f| {
                    let colon = f.iter().position(|&b| b == b':').expect("a colon");
                    [b64(&f[..colon]), b64(&f[colon + 1..])]
                })
                .collect();
            json!({ "body": b64(&reference_body), "fields": split })
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cases.json");
    std::fs::write(&path, serde_json::to_vec(&input).expect("JSON")).expect("write the cases");
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dkimpy_canon.py")).arg(&path);
    let out = run(cmd, CLIENT_TIMEOUT);
    out.assert_success("dkimpy_canon.py");
    let reference: Vec<Value> = serde_json::from_str(&out.stdout).expect("dkimpy's JSON");
    assert_eq!(reference.len(), cases.len());

    let mut mismatches = Vec::new();
    let mut shapes = [0usize; 4]; // whitespace-only last line, no final CRLF, empty, 8-bit
    for (i, ((body, fields), theirs)) in cases.iter().zip(&reference).enumerate() {
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        shapes[0] += usize::from(lines.iter().rev().nth(1).is_some_and(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            !l.is_empty() && l.iter().all(|&b| b == b' ' || b == b'\t')
        }));
        shapes[1] += usize::from(!body.is_empty() && !body.ends_with(b"\r\n"));
        shapes[2] += usize::from(body.is_empty());
        shapes[3] += usize::from(body.iter().any(|&b| b >= 0x80));
        for (c, key) in [(Canonicalization::Relaxed, "relaxed"), (Canonicalization::Simple, "simple")] {
            let expected = decoded(&theirs[format!("{key}_body")]);
            let ours = canon::canonical_body(c, body);
            if ours != expected {
                mismatches.push(format!(
                    "case {i} {key} body {:?}: Tern {:?}, dkimpy {:?}",
                    show(body),
                    show(&ours),
                    show(&expected)
                ));
            }
            // The same hash, fed in random chunks.
            let mut hasher = BodyHasher::new(c, Hash::Sha256, None);
            let mut rest = &body[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rng.usize(1..=rest.len().min(7)));
                hasher.feed(chunk);
                rest = tail;
            }
            if hasher.finish().0 != Hash::Sha256.digest(&expected) {
                mismatches.push(format!("case {i} {key} body hash in chunks {:?}", show(body)));
            }
            let expected_fields = theirs[format!("{key}_fields")].as_array().expect("fields");
            for (field, expected) in fields.iter().zip(expected_fields) {
                let mut ours = Vec::new();
                canon::canonical_field(c, field, &mut ours);
                let expected = decoded(expected);
                if ours != expected {
                    mismatches.push(format!(
                        "case {i} {key} field {:?}: Tern {:?}, dkimpy {:?}",
                        show(field),
                        show(&ours),
                        show(&expected)
                    ));
                }
            }
        }
    }
    // The generator does make the shapes that matter.
    assert!(shapes.iter().all(|&n| n >= 100), "too few cases of some shape: {shapes:?}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches with dkimpy in {CASES} cases, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
}
