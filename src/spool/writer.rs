//! The writer thread: group commit, segment rotation and deletion.

use super::recover::Found;
use super::segment_path;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// A segment is closed and a new one started past this size.
const SEGMENT_MAX: u64 = 64 << 20;
/// Upper bounds on one group commit.
const BATCH_MAX_REQUESTS: usize = 4096;
const BATCH_MAX_BYTES: usize = 32 << 20;

pub enum Request {
    /// A message record; answered with (segment, offset of the record).
    Message { id: String, record: Vec<u8>, reply: oneshot::Sender<io::Result<(u64, u64)>> },
    /// Change records; `done` lists the messages they finish.
    Changes { records: Vec<Vec<u8>>, done: Vec<String>, reply: oneshot::Sender<io::Result<()>> },
}

impl Request {
    fn len(&self) -> usize {
        match self {
            Request::Message { record, .. } => record.len(),
            Request::Changes { records, .. } => records.iter().map(Vec::len).sum(),
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    segment: u64,
    size: u64,
    /// The segment holding each pending message, and how many each segment holds.
    segment_of: HashMap<String, u64>,
    live: BTreeMap<u64, usize>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new segment file and makes its directory entry durable.
fn create_segment(dir: &Path, segment: u64) -> io::Result<File> {
    let file = OpenOptions::new().create_new(true).append(true).open(segment_path(dir, segment))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Starts the writer thread on a fresh segment after those recovery found.
pub fn start(dir: PathBuf, found: &Found) -> io::Result<mpsc::Sender<Request>> {
    let mut live: BTreeMap<u64, usize> = found.segments.iter().map(|&s| (s, 0)).collect();
    for segment in found.segment_of.values() {
        *live.entry(*segment).or_default() += 1;
    }
    let segment = found.segments.last().map_or(1, |s| s + 1);
    let file = create_segment(&dir, segment)?;
    let mut writer = Writer { dir, file, segment, size: 0, segment_of: found.segment_of.clone(), live };
    writer.live.insert(segment, 0);
    writer.delete_finished_segments();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer.run(rx))?;
    Ok(tx)
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut bytes = first.len();
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX_REQUESTS && bytes < BATCH_MAX_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if self.size >= SEGMENT_MAX
                && let Err(e) = self.rotate()
            {
                tracing::error!(error = %e, "cannot start a new spool segment");
            }
        }
    }

    /// Writes a batch, syncs once, then answers every request in it.
    fn commit(&mut self, batch: Vec<Request>) {
        let start = self.size;
        let mut offsets = Vec::with_capacity(batch.len());
        let result = (|| {
            let mut out = io::BufWriter::with_capacity(1 << 20, &self.file);
            let mut pos = start;
            for request in &batch {
                offsets.push(pos);
                match request {
                    Request::Message { record, .. } => out.write_all(record)?,
                    Request::Changes { records, .. } => {
                        for r in records {
                            out.write_all(r)?;
                        }
                    }
                }
                pos += request.len() as u64;
            }
            out.flush()?;
            drop(out);
            self.file.sync_data()?;
            Ok::<u64, io::Error>(pos)
        })();
        match result {
            Ok(end) => {
                self.size = end;
                for (request, at) in batch.into_iter().zip(offsets) {
                    match request {
                        Request::Message { id, reply, .. } => {
                            self.add(id);
                            let _ = reply.send(Ok((self.segment, at)));
                        }
                        Request::Changes { done, reply, .. } => {
                            for id in done {
                                self.finish(&id);
                            }
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
                self.delete_finished_segments();
            }
            Err(e) => {
                tracing::error!(error = %e, "spool write failed; the batch is refused");
                self.undo(start);
                for request in batch {
                    let err = || io::Error::new(e.kind(), e.to_string());
                    match request {
                        Request::Message { reply, .. } => drop(reply.send(Err(err()))),
                        Request::Changes { reply, .. } => drop(reply.send(Err(err()))),
                    }
                }
            }
        }
    }

    /// Removes a failed batch so that no half-written record stays before later ones;
    /// if the segment cannot be cut back, later records go to a new segment.
    fn undo(&mut self, start: u64) {
        if self.file.set_len(start).and_then(|_| self.file.sync_data()).is_ok() {
            self.size = start;
        } else if let Err(e) = self.rotate() {
            tracing::error!(error = %e, "cannot start a new spool segment");
        }
    }

    fn add(&mut self, id: String) {
        if let Some(old) = self.segment_of.insert(id, self.segment) {
            // The message was written again (moved forward): the old copy is dead.
            if let Some(n) = self.live.get_mut(&old) {
                *n = n.saturating_sub(1);
            }
        }
        *self.live.entry(self.segment).or_default() += 1;
    }

    fn finish(&mut self, id: &str) {
        if let Some(segment) = self.segment_of.remove(id)
            && let Some(n) = self.live.get_mut(&segment)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Deletes closed segments that hold no pending message. Runs after the records
    /// that finished them are synced, so a crash cannot bring their messages back.
    fn delete_finished_segments(&mut self) {
        let active = self.segment;
        let empty: Vec<u64> = self.live.iter().filter(|&(&s, &n)| n == 0 && s != active).map(|(&s, _)| s).collect();
        for segment in empty {
            match std::fs::remove_file(segment_path(&self.dir, segment)) {
                Ok(()) => {
                    self.live.remove(&segment);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.live.remove(&segment);
                }
                Err(e) => {
                    tracing::warn!(segment, error = %e, "cannot delete finished spool segment")
                }
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        self.file = create_segment(&self.dir, next)?;
        self.segment = next;
        self.size = 0;
        self.live.insert(next, 0);
        self.delete_finished_segments();
        Ok(())
    }
}
