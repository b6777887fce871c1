//! The on-disk record format of spool segments.
//!
//! A segment is a sequence of records, each
//! `[0xA7][kind][payload length: u32 LE][CRC-32 of kind and payload: u32 LE][payload]`.
//! A record whose header or checksum does not match ends the segment: that is where an
//! unacknowledged write was cut short by a crash.

use super::{Change, Envelope};

const MAGIC: u8 = 0xA7;
pub const HEADER_LEN: u64 = 10;
const KIND_MESSAGE: u8 = 1;
const KIND_CHANGE: u8 = 2;
/// Sanity bound on one record (a message plus its envelope).
const MAX_RECORD: u32 = 1 << 30;

/// A decoded record.
pub enum Record {
    /// A message: its envelope, and where its content starts and how long it is.
    Message {
        envelope: Envelope,
        body_offset: u64,
        body_len: u64,
    },
    Change(Change),
}

fn frame(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    let mut out = Vec::with_capacity(HEADER_LEN as usize + len);
    out.push(MAGIC);
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Encodes a message record; returns it and the offset of the content within it.
pub fn encode_message(envelope: &Envelope, body: &[u8]) -> (Vec<u8>, u64) {
    let meta = serde_json::to_vec(envelope).expect("envelope serializes");
    let meta_len = (meta.len() as u32).to_le_bytes();
    let record = frame(KIND_MESSAGE, &[&meta_len, &meta, body]);
    (record, HEADER_LEN + 4 + meta.len() as u64)
}

pub fn encode_change(change: &Change) -> Vec<u8> {
    frame(KIND_CHANGE, &[&serde_json::to_vec(change).expect("change serializes")])
}

/// Decodes the record at the start of `buf` (which starts at file offset `at`).
/// Returns the record and its total length, or `None` if it is incomplete or damaged.
pub fn decode(buf: &[u8], at: u64) -> Option<(Record, usize)> {
    if buf.len() < HEADER_LEN as usize || buf[0] != MAGIC {
        return None;
    }
    let kind = buf[1];
    let len = u32::from_le_bytes(buf[2..6].try_into().ok()?);
    let crc = u32::from_le_bytes(buf[6..10].try_into().ok()?);
    if len > MAX_RECORD || buf.len() < HEADER_LEN as usize + len as usize {
        return None;
    }
    let payload = &buf[HEADER_LEN as usize..HEADER_LEN as usize + len as usize];
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    if h.finalize() != crc {
        return None;
    }
    let record = match kind {
        KIND_MESSAGE => {
            let meta_len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
            let meta = payload.get(4..4 + meta_len)?;
            let envelope = serde_json::from_slice(meta).ok()?;
            let body_len = (payload.len() - 4 - meta_len) as u64;
            Record::Message { envelope, body_offset: at + HEADER_LEN + 4 + meta_len as u64, body_len }
        }
        KIND_CHANGE => Record::Change(serde_json::from_slice(payload).ok()?),
        _ => return None,
    };
    Some((record, HEADER_LEN as usize + len as usize))
}

/// Reads every intact record of a segment file, in order.
pub fn read_segment(data: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some((record, len)) = decode(&data[pos..], pos as u64) {
        records.push(record);
        pos += len;
    }
    (records, pos)
}
