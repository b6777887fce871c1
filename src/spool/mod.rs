//! The durable spool: every accepted message and every change of a recipient's state.
//!
//! Messages are appended to segment files (`<data_dir>/spool/seg-NNNNNNNNNN.log`) by one
//! writer thread that commits in groups: all requests that arrive while one `fdatasync`
//! runs share the next one, so concurrent sessions are not capped at one fsync each.
//! A caller is answered only after its record is on disk. What each segment still
//! holds that is needed, and so when it may be deleted, is kept by [`index`]; the
//! writer compacts old segments by copying their live messages forward. Recovery on
//! start reads the segments back through the same bookkeeping.

mod content;
mod detail;
mod index;
mod record;
mod recover;
mod store;
mod writer;

pub use content::{Content, PIECE, Pieces, ReadAt};
pub use detail::{Detail, ServerReply, Status};
pub use recover::scan;
pub use store::{Durable, Store};

// The DSN parameters are the protocol's own types, stored as written on the wire.
pub use crate::smtp::params::{Notify, Ret};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

/// The envelope of a queued message and the state of each recipient.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Arrival time, seconds since the Unix epoch.
    pub arrival: i64,
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    pub size: u64,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub eight_bit: bool,
    /// DSN RET (`FULL` or `HDRS`) and ENVID (RFC 3461).
    #[serde(default)]
    pub ret: Option<Ret>,
    #[serde(default)]
    pub envid: Option<String>,
    /// Local copies go to the Junk folder: the sender's DMARC policy asked for
    /// quarantine (RFC 7489 §6.3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantine: bool,
    /// Put on hold by the mail administrator: not attempted until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Received with REQUIRETLS (RFC 8689 §4.1): relayed only over authenticated TLS
    /// to servers that offer REQUIRETLS, else returned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// Carries `TLS-Required: No` without REQUIRETLS (RFC 8689 §4.1): the recipient
    /// domain's MTA-STS (or DANE) policy is set aside, TLS stays opportunistic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_optional: bool,
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    /// Where it goes (after alias expansion and subaddress removal).
    pub address: String,
    /// Delivered to a local mailbox rather than another server.
    pub local: bool,
    /// The recipient as the client gave it in RCPT TO.
    pub original: String,
    /// DSN ORCPT and NOTIFY as given (RFC 3461).
    #[serde(default)]
    pub orcpt: Option<String>,
    #[serde(default)]
    pub notify: Option<Notify>,
    pub state: RcptState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RcptState {
    Queued,
    Deferred {
        attempts: u32,
        next_attempt: i64,
        /// Why the last attempt failed (`reason` in older spools).
        #[serde(alias = "reason")]
        detail: Detail,
        /// A delay notice was sent to the sender.
        #[serde(default)]
        notified: bool,
    },
    Delivered {
        at: i64,
        #[serde(alias = "reply")]
        detail: Detail,
    },
    Bounced {
        at: i64,
        #[serde(alias = "reason")]
        detail: Detail,
    },
}

impl RcptState {
    /// Delivered or bounced: nothing more will happen to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(self, RcptState::Delivered { .. } | RcptState::Bounced { .. })
    }
}

/// A change recorded after a message was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Change {
    Recipient {
        id: String,
        index: usize,
        state: RcptState,
    },
    /// The message is finished (every recipient final, or deleted) and may be dropped.
    Done {
        id: String,
    },
    /// The message is put on hold (`held`), or released.
    Hold {
        id: String,
        held: bool,
    },
}

/// Where a message's content lies in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

/// A message as it stands in the spool.
#[derive(Debug, Clone)]
pub struct Stored {
    pub envelope: Envelope,
    pub body: BodyRef,
}

/// A piece of a message's content as it is handed to the spool.
pub enum Part {
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `offset` (the spill file of a message being received).
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
}

impl Part {
    pub fn len(&self) -> u64 {
        match self {
            Part::Bytes(b) => b.len() as u64,
            Part::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the spool lays out its segments.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A segment is closed and a new one started past this size.
    pub segment_size: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { segment_size: 64 << 20 }
    }
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tx: mpsc::Sender<writer::Request>,
    last_id: AtomicU64,
    locations: writer::Locations,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    /// The writer finishes what it was asked, then stops; nothing of it outlives the spool.
    fn drop(&mut self) {
        let _ = self.tx.send(writer::Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("seg-{segment:010}.log"))
}

fn closed() -> io::Error {
    io::Error::other("spool writer stopped")
}

impl Spool {
    /// Opens (creating if needed, owner-only) the spool in `dir`, recovering what is
    /// on disk; [`Spool::load`] then gives the pending messages.
    pub fn open(dir: &Path, options: Options) -> io::Result<Spool> {
        Spool::open_with(dir, options, writer::Fuel::default())
    }

    fn open_with(dir: &Path, options: Options, fuel: writer::Fuel) -> io::Result<Spool> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let found = recover::recover(dir)?;
        let (tx, locations, thread) = writer::start(dir.to_path_buf(), found, options.segment_size.max(4096), fuel)?;
        let inner = Inner { dir: dir.to_path_buf(), tx, last_id: AtomicU64::new(0), locations, thread: Some(thread) };
        Ok(Spool { inner: Arc::new(inner) })
    }

    /// A new queue id: 16 upper-case hex digits, increasing with time.
    pub fn new_id(&self) -> String {
        let now = chrono::Utc::now().timestamp_micros() as u64;
        let prev = self
            .inner
            .last_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)))
            .expect("closure never fails");
        format!("{:016X}", now.max(prev + 1))
    }

    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> writer::Request) -> io::Result<T> {
        let (reply, wait) = oneshot::channel();
        self.inner.tx.send(request(reply)).map_err(|_| closed())?;
        wait.await.map_err(|_| closed())
    }

    /// Stores a message durably; returns once it is on disk.
    #[cfg(test)]
    pub async fn store(&self, envelope: &Envelope, body: &[u8]) -> io::Result<Stored> {
        self.store_parts(envelope, vec![Part::Bytes(body.to_vec())]).await
    }

    /// Stores a message whose content is the concatenation of `parts`; returns once it
    /// is on disk.
    pub async fn store_parts(&self, envelope: &Envelope, parts: Vec<Part>) -> io::Result<Stored> {
        let meta = record::message_meta(envelope);
        let stored = Stored { envelope: envelope.clone(), body: BodyRef { segment: 0, offset: 0, len: 0 } };
        self.ask(|reply| writer::Request::Message { stored, meta, parts, reply }).await?
    }

    /// Records changes durably; returns once they are on disk.
    pub async fn record(&self, changes: &[Change]) -> io::Result<()> {
        let records = changes.iter().map(record::encode_change).collect();
        let changes = changes.to_vec();
        self.ask(|reply| writer::Request::Changes { changes, records, reply }).await?
    }

    /// The pending messages, in arrival order, as they stand now.
    pub async fn load(&self) -> io::Result<Vec<Stored>> {
        self.ask(|reply| writer::Request::Load { reply }).await
    }

    /// Compacts every segment closed so far; returns once their live messages are
    /// copied forward and the segments are gone.
    pub async fn compact(&self) -> io::Result<()> {
        self.ask(|reply| writer::Request::Compact { reply }).await?
    }

    /// Reads a message's content (blocking), wherever compaction has moved it.
    pub fn read_content(&self, stored: &Stored) -> io::Result<Vec<u8>> {
        self.open_content(stored)?.to_vec()
    }

    /// Opens a message's content for reading in pieces (blocking), wherever
    /// compaction has moved it. The segment stays readable through the handle even
    /// if compaction deletes it meanwhile.
    pub fn open_content(&self, stored: &Stored) -> io::Result<Content> {
        let locate = || self.inner.locations.lock().expect("locations").get(&stored.envelope.id).copied();
        match open_body(&self.inner.dir, locate().unwrap_or(stored.body)) {
            // Moved by compaction between the look-up and the open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => match locate() {
                Some(body) => open_body(&self.inner.dir, body),
                None => Err(e),
            },
            other => other,
        }
    }
}

/// A message's content as a range of its segment file.
struct SegmentRange {
    file: std::fs::File,
    offset: u64,
}

impl ReadAt for SegmentRange {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, self.offset + offset)
    }
}

fn open_body(dir: &Path, body: BodyRef) -> io::Result<Content> {
    let file = std::fs::File::open(segment_path(dir, body.segment))?;
    Ok(Content::from_reader(Arc::new(SegmentRange { file, offset: body.offset }), body.len))
}

/// Reads a message's content from the segments in `dir` (blocking).
pub fn read_body(dir: &Path, body: &BodyRef) -> io::Result<Vec<u8>> {
    open_body(dir, *body)?.to_vec()
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
