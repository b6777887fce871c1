//! `tern::spool::scan` on a spool directory holding arbitrary segment files.
//!
//! Input: `[mode][…]`. Mode bit 0 clear: the rest is written as `seg-0000000001.log`
//! as it is. Bit 0 set: the rest is read as records `[kind][length: u16 LE][payload]`
//! and written framed with correct checksums, so the envelope and change decoding
//! behind the checksum is reached; bit 1 damages the last record's checksum, bit 2
//! spreads the records over two segments.
//!
//! `scan` never panics nor fails on such a directory, and every message it returns
//! points at content inside its segment that `read_body` can read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The spool record header: magic, kind, payload length, CRC-32 of kind and payload.
fn frame(kind: u8, payload: &[u8], damage: bool) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    let crc = crc.finalize() ^ u32::from(damage);
    let mut out = vec![0xA7, kind];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn spool_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tern-fuzz-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the spool directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut segments = [Vec::new(), Vec::new()];
    if mode & 1 == 0 {
        segments[0] = rest.to_vec();
    } else {
        let mut records = Vec::new();
        let mut rest = rest;
        while let Some((&kind, tail)) = rest.split_first() {
            let len = match tail {
                [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
                _ => 0,
            };
            let tail = tail.get(2..).unwrap_or(&[]);
            let (payload, tail) = tail.split_at(len.min(tail.len()));
            records.push((kind, payload));
            rest = tail;
        }
        let n = records.len();
        for (i, (kind, payload)) in records.into_iter().enumerate() {
            let damage = mode & 2 != 0 && i + 1 == n;
            let segment = if mode & 4 != 0 { i % 2 } else { 0 };
            segments[segment].extend(frame(kind, payload, damage));
        }
    }

    let dir = spool_dir();
    let mut lens = [0u64; 2];
    for (i, content) in segments.iter().enumerate() {
        let path = dir.join(format!("seg-{:010}.log", i + 1));
        if i == 0 || !content.is_empty() {
            std::fs::write(&path, content).expect("write a segment");
            lens[i] = content.len() as u64;
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }

    let stored = tern::spool::scan(dir).expect("scan a readable spool");
    for s in &stored {
        let b = s.body;
        assert!(b.segment == 1 || b.segment == 2, "{b:?}");
        let seg_len = lens[(b.segment - 1) as usize];
        assert!(
            b.offset.checked_add(b.len).is_some_and(|end| end <= seg_len),
            "{b:?} outside a segment of {seg_len} bytes"
        );
        let content = tern::spool::read_body(dir, &b).expect("read a message's content");
        assert_eq!(content.len() as u64, b.len);
        let seg = &segments[(b.segment - 1) as usize];
        assert_eq!(content, seg[b.offset as usize..(b.offset + b.len) as usize]);
    }
});
