//! Reading the spool back: at start-up (recovery) and for `tern queue list`.
//!
//! Recovery replays every segment in order through the same [`Index`] the writer
//! keeps up to date, so both agree on what is pending and what each segment pins.

use super::index::Index;
use super::record::{Record, read_segment};
use super::{BodyRef, Stored, segment_path};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// What the segments on disk hold.
pub struct Found {
    pub index: Index,
    /// The intact length of every segment present.
    pub sizes: BTreeMap<u64, u64>,
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
    let mut index = Index::default();
    let mut sizes = BTreeMap::new();
    for segment in list_segments(dir)? {
        let path = segment_path(dir, segment);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            // Deleted meanwhile by a running server: nothing in it was needed.
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
        index.add_segment(segment);
        sizes.insert(segment, data.len() as u64);
        for (record, len) in records {
            match record {
                Record::Message { envelope, body_offset, body_len } => {
                    let body = BodyRef { segment, offset: body_offset, len: body_len };
                    index.stored(Stored { envelope, body }, len);
                }
                Record::Change(change) => {
                    index.changed(&change, segment);
                }
            }
        }
    }
    Ok(Found { index, sizes })
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
    Ok(read_all(dir, false)?.index.into_pending())
}
