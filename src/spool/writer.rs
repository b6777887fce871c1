//! The writer thread: group commit, segment rotation, deletion and compaction.
//!
//! Every request that arrives while one `fdatasync` runs shares the next one. After
//! each commit the writer deletes the segments that hold nothing needed (see
//! [`super::index`]), starts a new segment when the active one is full or holds only
//! finished mail, and compacts: while the segments take more than twice the live
//! messages plus one segment, the live messages of the oldest segment are copied,
//! with their current state, into the active one, so the oldest can go.

use super::index::Index;
use super::record::{self, HEADER_LEN, KIND_MESSAGE, MAX_RECORD};
use super::recover::Found;
use super::{BodyRef, Change, Part, Stored, segment_path};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Upper bounds on one group commit.
const BATCH_MAX_REQUESTS: usize = 4096;
const BATCH_MAX_BYTES: usize = 32 << 20;
/// Writes are gathered into pieces of this size; content is copied in such pieces.
const CHUNK: usize = 1 << 20;
/// A segment holding only finished mail is given back once it reaches this size.
const RECLAIM_AT: u64 = 1 << 20;
/// Content copied by compaction between two looks at new requests.
const COMPACT_STEP: u64 = 8 << 20;
/// Compaction waits this long after it failed (a full disk, say).
const COMPACT_PAUSE: Duration = Duration::from_secs(1);
/// How often an unchanged write error is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

pub enum Request {
    /// A message record; answered with the message as stored.
    Message { stored: Stored, meta: Vec<u8>, parts: Vec<Part>, reply: oneshot::Sender<io::Result<Stored>> },
    /// Change records (encoded) and the changes themselves.
    Changes { changes: Vec<Change>, records: Vec<Vec<u8>>, reply: oneshot::Sender<io::Result<()>> },
    /// Compact every segment closed so far.
    Compact { reply: oneshot::Sender<io::Result<()>> },
    /// The pending messages as they stand.
    Load { reply: oneshot::Sender<Vec<Stored>> },
    /// Stop after the requests before this one.
    Stop,
}

impl Request {
    fn len(&self) -> usize {
        match self {
            Request::Message { meta, parts, .. } => meta.len() + parts.iter().map(|p| p.len() as usize).sum::<usize>(),
            Request::Changes { records, .. } => records.iter().map(Vec::len).sum(),
            Request::Compact { .. } | Request::Load { .. } | Request::Stop => 0,
        }
    }
}

/// Where a live message's content lies now; compaction moves it.
pub type Locations = Arc<Mutex<HashMap<String, BodyRef>>>;

struct Writer {
    dir: PathBuf,
    segment_size: u64,
    file: File,
    segment: u64,
    size: u64,
    /// Bytes in each segment that exists, the active one included.
    sizes: BTreeMap<u64, u64>,
    index: Index,
    locations: Locations,
    /// Compact up to this segment (a `Compact` request), and who waits for it.
    forced: Option<(u64, Vec<oneshot::Sender<io::Result<()>>>)>,
    chunk: Vec<u8>,
    last_error: Option<(String, Instant, u64)>,
    compaction_paused_until: Option<Instant>,
    fuel: Fuel,
}

/// A budget of file-system operations after which the writer acts as if the
/// process had died there: every later operation fails and nothing more reaches the
/// disk. Only the spool's model test sets one.
#[derive(Clone, Default)]
pub struct Fuel {
    left: Option<Arc<AtomicI64>>,
    /// Test only: see `Index::first_rules`.
    #[cfg(test)]
    pub first_rules: bool,
}

impl Fuel {
    #[cfg(test)]
    pub fn new(ops: i64) -> Fuel {
        Fuel { left: Some(Arc::new(AtomicI64::new(ops))), first_rules: false }
    }

    fn burn(&self) -> io::Result<()> {
        match &self.left {
            Some(left) if left.fetch_sub(1, Ordering::SeqCst) <= 0 => Err(io::Error::other("simulated crash")),
            _ => Ok(()),
        }
    }
}

fn sync_dir(dir: &Path, fuel: &Fuel) -> io::Result<()> {
    fuel.burn()?;
    File::open(dir)?.sync_all()
}

/// Creates a new segment file (owner-only) and makes its directory entry durable.
fn create_segment(dir: &Path, segment: u64, fuel: &Fuel) -> io::Result<File> {
    fuel.burn()?;
    let file =
        OpenOptions::new().create_new(true).read(true).write(true).mode(0o600).open(segment_path(dir, segment))?;
    sync_dir(dir, fuel)?;
    Ok(file)
}

/// Starts the writer thread on a fresh segment after those recovery found.
pub fn start(
    dir: PathBuf,
    found: Found,
    segment_size: u64,
    fuel: Fuel,
) -> io::Result<(mpsc::Sender<Request>, Locations, std::thread::JoinHandle<()>)> {
    let Found { mut index, mut sizes } = found;
    #[cfg(test)]
    {
        index.first_rules = fuel.first_rules;
    }
    let segment = sizes.keys().last().map_or(1, |s| s + 1);
    let file = create_segment(&dir, segment, &fuel)?;
    index.add_segment(segment);
    sizes.insert(segment, 0);
    let locations = Arc::new(Mutex::new(index.locations()));
    let mut writer = Writer {
        dir,
        segment_size,
        file,
        segment,
        size: 0,
        sizes,
        index,
        locations: locations.clone(),
        forced: None,
        chunk: Vec::new(),
        last_error: None,
        compaction_paused_until: None,
        fuel,
    };
    writer.delete_unneeded();
    crate::metrics::get().spool_bytes.set(writer.sizes.values().sum::<u64>() as i64);
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer.run(rx))?;
    Ok((tx, locations, thread))
}

/// Buffered positional writes to the active segment.
struct Out<'a> {
    file: &'a File,
    fuel: &'a Fuel,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
}

impl Out<'_> {
    fn pos(&self) -> u64 {
        self.at + self.buf.len() as u64
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buf.len() + bytes.len() > CHUNK {
            self.flush()?;
        }
        if bytes.len() >= CHUNK {
            self.fuel.burn()?;
            self.file.write_all_at(bytes, self.at)?;
            self.at += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Overwrites bytes already put (a record header written once its checksum is known).
    fn patch(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if at >= self.at {
            let i = (at - self.at) as usize;
            self.buf[i..i + bytes.len()].copy_from_slice(bytes);
            Ok(())
        } else {
            self.fuel.burn()?;
            self.file.write_all_at(bytes, at)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.fuel.burn()?;
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let first = if self.compaction_due() {
                match rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(r) => Some(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => return,
                }
            };
            let mut batch = Vec::new();
            if let Some(first) = first {
                let mut bytes = first.len();
                batch.push(first);
                while batch.len() < BATCH_MAX_REQUESTS && bytes < BATCH_MAX_BYTES {
                    match rx.try_recv() {
                        Ok(r) => {
                            bytes += r.len();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
            }
            let mut writes = Vec::with_capacity(batch.len());
            let mut stop = false;
            for request in batch {
                match request {
                    Request::Stop => stop = true,
                    Request::Compact { reply } => {
                        let upto = self.segment;
                        match &mut self.forced {
                            Some((at, waiting)) => {
                                *at = upto.max(*at);
                                waiting.push(reply);
                            }
                            None => self.forced = Some((upto, vec![reply])),
                        }
                    }
                    Request::Load { reply } => drop(reply.send(self.index.pending())),
                    write => writes.push(write),
                }
            }
            if !writes.is_empty() {
                crate::metrics::get().spool_commit_batch.observe(writes.len() as f64);
                let _ = self.commit(writes);
            }
            if stop {
                return;
            }
            self.maintain();
        }
    }

    /// Rotation, deletion and a step of compaction, after a commit.
    fn maintain(&mut self) {
        let reclaim = self.size >= RECLAIM_AT.min(self.segment_size) && !self.index.is_pinned(self.segment);
        if (self.size >= self.segment_size || reclaim)
            && let Err(e) = self.rotate()
        {
            self.log_error("cannot start a new spool segment", &e);
        }
        self.delete_unneeded();
        if self.compaction_due() {
            self.compact_step();
        }
        crate::metrics::get().spool_bytes.set(self.sizes.values().sum::<u64>() as i64);
    }

    /// Writes a batch, syncs once, then answers every request in it. When the batch
    /// cannot be written, its change records are tried again on their own, so that
    /// results are not held back by a message too big for the space left.
    fn commit(&mut self, batch: Vec<Request>) -> io::Result<()> {
        let start = self.size;
        match self.write_batch(&batch) {
            Ok(spans) => {
                self.size = spans.last().map_or(start, |s| s.1);
                self.sizes.insert(self.segment, self.size);
                self.last_error = None;
                self.apply(batch, spans);
                Ok(())
            }
            Err(e) => {
                self.log_error("spool write failed; the batch is refused", &e);
                self.undo(start);
                let has_changes = batch.iter().any(|r| matches!(r, Request::Changes { .. }));
                let has_messages = batch.iter().any(|r| matches!(r, Request::Message { .. }));
                let mut retry = Vec::new();
                for request in batch {
                    let err = || io::Error::new(e.kind(), e.to_string());
                    match request {
                        Request::Message { reply, .. } => drop(reply.send(Err(err()))),
                        changes @ Request::Changes { .. } if has_messages => retry.push(changes),
                        Request::Changes { reply, .. } => drop(reply.send(Err(err()))),
                        Request::Compact { .. } | Request::Load { .. } | Request::Stop => {}
                    }
                }
                if has_changes && !retry.is_empty() {
                    let _ = self.commit(retry);
                }
                Err(e)
            }
        }
    }

    /// Writes every request and syncs; returns where each request lies.
    fn write_batch(&mut self, batch: &[Request]) -> io::Result<Vec<(u64, u64)>> {
        let mut chunk = std::mem::take(&mut self.chunk);
        let result = (|| {
            let mut out = Out { file: &self.file, fuel: &self.fuel, buf: Vec::with_capacity(64 << 10), at: self.size };
            let mut spans = Vec::with_capacity(batch.len());
            for request in batch {
                let start = out.pos();
                match request {
                    Request::Message { meta, parts, .. } => write_message(&mut out, meta, parts, &mut chunk)?,
                    Request::Changes { records, .. } => {
                        for r in records {
                            out.put(r)?;
                        }
                    }
                    Request::Compact { .. } | Request::Load { .. } | Request::Stop => {}
                }
                spans.push((start, out.pos()));
            }
            out.flush()?;
            self.fuel.burn()?;
            self.file.sync_data()?;
            Ok(spans)
        })();
        self.chunk = chunk;
        result
    }

    /// Brings the index and the content locations up to date with a written batch.
    fn apply(&mut self, batch: Vec<Request>, spans: Vec<(u64, u64)>) {
        for (request, (start, end)) in batch.into_iter().zip(spans) {
            match request {
                Request::Message { mut stored, meta, parts, reply } => {
                    // The parts (spill files among them) are let go before the answer.
                    drop(parts);
                    let body_offset = start + HEADER_LEN + meta.len() as u64;
                    stored.body = BodyRef { segment: self.segment, offset: body_offset, len: end - body_offset };
                    self.locations.lock().expect("locations").insert(stored.envelope.id.clone(), stored.body);
                    self.index.stored(stored.clone(), end - start);
                    let _ = reply.send(Ok(stored));
                }
                Request::Changes { changes, reply, .. } => {
                    for change in &changes {
                        self.index.changed(change, self.segment);
                        if let Change::Done { id } = change {
                            self.locations.lock().expect("locations").remove(id);
                        }
                    }
                    let _ = reply.send(Ok(()));
                }
                Request::Compact { .. } | Request::Load { .. } | Request::Stop => {}
            }
        }
    }

    /// Removes a failed batch so that no half-written record stays before later ones;
    /// if the segment cannot be cut back, later records go to a new segment.
    fn undo(&mut self, start: u64) {
        if self.fuel.burn().and_then(|_| self.file.set_len(start)).and_then(|_| self.file.sync_data()).is_ok() {
            self.size = start;
        } else if let Err(e) = self.rotate() {
            self.log_error("cannot start a new spool segment", &e);
        }
    }

    /// Deletes unneeded segments in rounds: the copies a round removes can release
    /// `Done` records in other segments, which go in the next round, after the first
    /// round's deletions are durable.
    fn delete_unneeded(&mut self) {
        loop {
            let unneeded = self.index.unneeded(self.segment);
            if unneeded.is_empty() {
                return;
            }
            let mut deleted = Vec::new();
            for segment in unneeded {
                match self.fuel.burn().and_then(|_| std::fs::remove_file(segment_path(&self.dir, segment))) {
                    Ok(()) => deleted.push(segment),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => deleted.push(segment),
                    Err(e) => self.log_error("cannot delete a finished spool segment", &e),
                }
            }
            if deleted.is_empty() {
                return;
            }
            if let Err(e) = sync_dir(&self.dir, &self.fuel) {
                self.log_error("cannot sync the spool directory", &e);
                return;
            }
            for segment in deleted {
                self.index.segment_deleted(segment);
                self.sizes.remove(&segment);
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        self.file = create_segment(&self.dir, next, &self.fuel)?;
        self.segment = next;
        self.size = 0;
        self.index.add_segment(next);
        self.sizes.insert(next, 0);
        Ok(())
    }

    /// The oldest closed segment, if compaction should empty it now.
    fn compaction_target(&self) -> Option<u64> {
        #[cfg(test)]
        if self.index.first_rules {
            return None;
        }
        let oldest = self.index.segments().next().filter(|&s| s != self.segment)?;
        if self.forced.as_ref().is_some_and(|(upto, _)| oldest < *upto) {
            return Some(oldest);
        }
        let on_disk: u64 = self.sizes.values().sum();
        (on_disk > 2 * self.index.live_bytes() + self.segment_size).then_some(oldest)
    }

    fn compaction_due(&mut self) -> bool {
        let paused = self.compaction_paused_until.is_some_and(|t| Instant::now() < t);
        if !paused && self.compaction_target().is_some() {
            return true;
        }
        let result = if paused && self.compaction_target().is_some() {
            Err(io::Error::other("spool compaction paused after an error"))
        } else {
            Ok(())
        };
        if let Some((_, waiting)) = self.forced.take() {
            for reply in waiting {
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
            }
        }
        false
    }

    /// Copies live messages of the oldest segment, with their current state, into the
    /// active one. The old copies stay until the new ones are on disk.
    fn compact_step(&mut self) {
        let Some(target) = self.compaction_target() else { return };
        let file = match File::open(segment_path(&self.dir, target)) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                self.log_error("cannot read a spool segment to compact", &e);
                return self.fail_forced(&e);
            }
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for id in self.index.homed_in(target) {
            let Some(live) = self.index.get(&id) else { continue };
            let stored = live.stored.clone();
            let body = stored.body;
            bytes += body.len;
            let (reply, _) = oneshot::channel();
            let parts = vec![Part::File { file: file.clone(), offset: body.offset, len: body.len }];
            batch.push(Request::Message { meta: record::message_meta(&stored.envelope), stored, parts, reply });
            if bytes >= COMPACT_STEP {
                break;
            }
        }
        let moved = batch.len();
        let result = if moved > 0 { self.commit(batch) } else { Ok(()) };
        if let Err(e) = result {
            self.compaction_paused_until = Some(Instant::now() + COMPACT_PAUSE);
            return self.fail_forced(&e);
        }
        tracing::debug!(segment = target, moved, "spool compaction step");
        self.maintain_after_compaction();
        // Nothing left to move, yet the segment is still there: it is pinned by no
        // live message, or its deletion failed. Waiting is all that can be done.
        if moved == 0 && self.index.segments().next() == Some(target) {
            tracing::error!(segment = target, "spool segment cannot be given back; compaction paused");
            self.compaction_paused_until = Some(Instant::now() + COMPACT_PAUSE);
            self.fail_forced(&io::Error::other("spool segment cannot be compacted"));
        }
    }

    fn maintain_after_compaction(&mut self) {
        if self.size >= self.segment_size
            && let Err(e) = self.rotate()
        {
            self.log_error("cannot start a new spool segment", &e);
        }
        self.delete_unneeded();
    }

    fn fail_forced(&mut self, e: &io::Error) {
        if let Some((_, waiting)) = self.forced.take() {
            for reply in waiting {
                let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
        }
    }

    /// Logs a write error once, then again only when it changes or every
    /// [`ERROR_LOG_EVERY`], with the count of repeats.
    fn log_error(&mut self, what: &str, e: &io::Error) {
        let text = format!("{what}: {e}");
        match &mut self.last_error {
            Some((last, since, repeats)) if *last == text => {
                *repeats += 1;
                if since.elapsed() >= ERROR_LOG_EVERY {
                    tracing::error!(error = %e, repeats = *repeats, "{what} (repeated)");
                    *since = Instant::now();
                    *repeats = 0;
                }
            }
            _ => {
                tracing::error!(error = %e, "{what}");
                self.last_error = Some((text, Instant::now(), 0));
            }
        }
    }
}

/// Writes one message record: a header placeholder, the payload while its checksum
/// is computed, then the header.
fn write_message(out: &mut Out<'_>, meta: &[u8], parts: &[Part], chunk: &mut Vec<u8>) -> io::Result<()> {
    let start = out.pos();
    out.put(&[0; HEADER_LEN as usize])?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[KIND_MESSAGE]);
    crc.update(meta);
    out.put(meta)?;
    for part in parts {
        match part {
            Part::Bytes(bytes) => {
                crc.update(bytes);
                out.put(bytes)?;
            }
            Part::File { file, offset, len } => {
                chunk.resize(CHUNK, 0);
                let mut done = 0;
                while done < *len {
                    let n = (*len - done).min(CHUNK as u64) as usize;
                    file.read_exact_at(&mut chunk[..n], offset + done)?;
                    crc.update(&chunk[..n]);
                    out.put(&chunk[..n])?;
                    done += n as u64;
                }
            }
        }
    }
    let len = out.pos() - start - HEADER_LEN;
    if len > MAX_RECORD {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "message too large for the spool"));
    }
    out.patch(start, &record::header(KIND_MESSAGE, len as u32, crc.finalize()))
}
