//! The on-disk record format of spool segments.
//!
//! A segment is a sequence of records, each
//! `[0xA7][kind][payload length: u32 LE][CRC-32 of kind and payload: u32 LE][payload]`.
//! A message's payload is `[envelope length: u32 LE][envelope JSON][content]`; a
//! change's payload is its JSON. A record whose header or checksum does not match
//! ends the segment: that is where an unacknowledged write was cut short by a crash.

use super::{Change, Envelope};

const MAGIC: u8 = 0xA7;
pub const HEADER_LEN: u64 = 10;
pub const KIND_MESSAGE: u8 = 1;
const KIND_CHANGE: u8 = 2;
/// Sanity bound on one record (a message plus its envelope).
pub const MAX_RECORD: u64 = 1 << 30;

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

/// The header of a record whose payload has `len` bytes and checksum `crc` (of the
/// kind byte and the payload).
pub fn header(kind: u8, len: u32, crc: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[0] = MAGIC;
    h[1] = kind;
    h[2..6].copy_from_slice(&len.to_le_bytes());
    h[6..10].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The start of a message payload: the envelope with its length in front.
pub fn message_meta(envelope: &Envelope) -> Vec<u8> {
    let json = serde_json::to_vec(envelope).expect("envelope serializes");
    let mut meta = Vec::with_capacity(4 + json.len());
    meta.extend_from_slice(&(json.len() as u32).to_le_bytes());
    meta.extend_from_slice(&json);
    meta
}

pub fn encode_change(change: &Change) -> Vec<u8> {
    let payload = serde_json::to_vec(change).expect("change serializes");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[KIND_CHANGE]);
    crc.update(&payload);
    let mut out = header(KIND_CHANGE, payload.len() as u32, crc.finalize()).to_vec();
    out.extend_from_slice(&payload);
    out
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
    if u64::from(len) > MAX_RECORD || buf.len() < HEADER_LEN as usize + len as usize {
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

/// Reads every intact record of a segment file, in order, with its length.
pub fn read_segment(data: &[u8]) -> (Vec<(Record, u64)>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some((record, len)) = decode(&data[pos..], pos as u64) {
        records.push((record, len as u64));
        pos += len;
    }
    (records, pos)
}
