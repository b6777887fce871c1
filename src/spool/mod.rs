//! The durable spool: every accepted message and every change of a recipient's state.
//!
//! Messages are appended to segment files (`<data_dir>/spool/seg-NNNNNNNNNN.log`) by one
//! writer thread that commits in groups: all requests that arrive while one `fdatasync`
//! runs share the next one, so concurrent sessions are not capped at one fsync each.
//! A caller is answered only after its record is on disk. A segment is deleted once
//! every message in it is finished; recovery on start reads the segments back.

mod record;
mod recover;
mod writer;

pub use recover::scan;

use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

/// The envelope of a queued message and the state of each recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub ret: Option<String>,
    #[serde(default)]
    pub envid: Option<String>,
    /// Local copies go to the Junk folder: the sender's DMARC policy asked for
    /// quarantine (RFC 7489 §6.3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantine: bool,
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
    pub notify: Option<String>,
    pub state: RcptState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RcptState {
    Queued,
    Deferred {
        attempts: u32,
        next_attempt: i64,
        reason: String,
        /// A delay notice was sent to the sender.
        #[serde(default)]
        notified: bool,
    },
    Delivered {
        at: i64,
        reply: String,
    },
    Bounced {
        at: i64,
        reason: String,
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

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tx: mpsc::Sender<writer::Request>,
    last_id: AtomicU64,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("seg-{segment:010}.log"))
}

fn closed() -> io::Error {
    io::Error::other("spool writer stopped")
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and returns the messages that are
    /// still pending, in arrival order.
    pub fn open(dir: &Path) -> io::Result<(Spool, Vec<Stored>)> {
        std::fs::create_dir_all(dir)?;
        let found = recover::recover(dir)?;
        let pending: Vec<Stored> = found.messages.values().cloned().collect();
        let tx = writer::start(dir.to_path_buf(), &found)?;
        let inner = Inner { dir: dir.to_path_buf(), tx, last_id: AtomicU64::new(0) };
        Ok((Spool { inner: Arc::new(inner) }, pending))
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

    /// Stores a message durably; returns once it is on disk.
    pub async fn store(&self, envelope: &Envelope, body: &[u8]) -> io::Result<Stored> {
        let (record, body_in_record) = record::encode_message(envelope, body);
        let (reply, wait) = oneshot::channel();
        let request = writer::Request::Message { id: envelope.id.clone(), record, reply };
        self.inner.tx.send(request).map_err(|_| closed())?;
        let (segment, at) = wait.await.map_err(|_| closed())??;
        let body = BodyRef { segment, offset: at + body_in_record, len: body.len() as u64 };
        Ok(Stored { envelope: envelope.clone(), body })
    }

    /// Records changes durably; returns once they are on disk.
    pub async fn record(&self, changes: &[Change]) -> io::Result<()> {
        let records: Vec<Vec<u8>> = changes.iter().map(record::encode_change).collect();
        let done = changes
            .iter()
            .filter_map(|c| match c {
                Change::Done { id } => Some(id.clone()),
                Change::Recipient { .. } => None,
            })
            .collect();
        let (reply, wait) = oneshot::channel();
        self.inner.tx.send(writer::Request::Changes { records, done, reply }).map_err(|_| closed())?;
        wait.await.map_err(|_| closed())?
    }

    /// Reads a message's content (blocking).
    pub fn read_body(&self, body: &BodyRef) -> io::Result<Vec<u8>> {
        read_body(&self.inner.dir, body)
    }
}

/// Reads a message's content from the segments in `dir` (blocking).
pub fn read_body(dir: &Path, body: &BodyRef) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(segment_path(dir, body.segment))?;
    let mut buf = vec![0; body.len as usize];
    file.read_exact_at(&mut buf, body.offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
