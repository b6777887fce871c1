//! Reading the spool back: at start-up (recovery) and for `tern queue list`.

use super::record::{Record, read_segment};
use super::{BodyRef, Change, Stored, segment_path};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;

/// What the segments on disk hold.
pub struct Found {
    /// Pending messages by id (ids sort by arrival).
    pub messages: BTreeMap<String, Stored>,
    /// Segment numbers present, ascending.
    pub segments: Vec<u64>,
    /// The segment that holds each pending message.
    pub segment_of: HashMap<String, u64>,
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix("seg-").and_then(|s| s.strip_suffix(".log"))
            && let Ok(n) = n.parse()
        {
            segments.push(n);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Reads every segment in order and replays it.
fn read_all(dir: &Path, sync: bool) -> io::Result<Found> {
    let segments = list_segments(dir)?;
    let mut messages = BTreeMap::new();
    let mut segment_of = HashMap::new();
    for &segment in &segments {
        let path = segment_path(dir, segment);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            // Deleted meanwhile by a running server: everything in it was finished.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if sync {
            // What a crashed process left in the page cache becomes durable before
            // anything is decided from it.
            std::fs::File::open(&path)?.sync_all()?;
        }
        let (records, intact) = read_segment(&data);
        if intact < data.len() {
            tracing::warn!(
                segment,
                intact,
                len = data.len(),
                "spool segment has a damaged tail (an unacknowledged write); ignored"
            );
        }
        for record in records {
            match record {
                Record::Message { envelope, body_offset, body_len } => {
                    let body = BodyRef { segment, offset: body_offset, len: body_len };
                    segment_of.insert(envelope.id.clone(), segment);
                    messages.insert(envelope.id.clone(), Stored { envelope, body });
                }
                Record::Change(Change::Recipient { id, index, state }) => {
                    if let Some(r) = messages.get_mut(&id).and_then(|m| m.envelope.recipients.get_mut(index)) {
                        r.state = state;
                    }
                }
                Record::Change(Change::Done { id }) => {
                    messages.remove(&id);
                    segment_of.remove(&id);
                }
            }
        }
    }
    Ok(Found { messages, segments, segment_of })
}

/// Recovery at start-up: makes what is on disk durable, then reads it.
pub fn recover(dir: &Path) -> io::Result<Found> {
    read_all(dir, true)
}

/// Reads the pending messages without changing anything (safe while a server runs).
pub fn scan(dir: &Path) -> io::Result<Vec<Stored>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(read_all(dir, false)?.messages.into_values().collect())
}
