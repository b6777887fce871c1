//! The content of a message as it arrives: the first bytes in memory (the header block,
//! which the checks need, or the whole message while it is small), the rest in an
//! unlinked temporary file that the spool copies from. The file has no name, so
//! nothing of it outlives the session, however the session or the process ends.

use super::budget::{Budget, Reservation, exhausted};
use super::checks::{SignPlan, Signing};
use crate::smtp::Reply;
use crate::smtp::body::HeaderEnd;
use crate::spool::Part;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages up to about this size stay in memory and never touch a file.
pub const IN_MEMORY: usize = 64 * 1024;
/// The write buffer of the file.
const WRITE_BUFFER: usize = 64 * 1024;

/// A message being received.
pub struct Spill<'a> {
    dir: Arc<Path>,
    max_header_size: u64,
    head: Vec<u8>,
    header: HeaderEnd,
    file: Option<BufWriter<File>>,
    file_len: u64,
    /// The budget taken by `head` and the write buffer.
    reservation: Reservation,
    /// Why the message will be refused; the rest of its content is dropped.
    failed: Option<Reply>,
    /// How the message is signed, until its header block is in; then its signing.
    plan: Option<SignPlan<'a>>,
    signing: Option<Signing<'a>>,
}

/// A message received whole.
pub struct Received<'a> {
    /// The first bytes of the content: at least the header block.
    head: Vec<u8>,
    header_len: usize,
    file: Option<Arc<File>>,
    file_len: u64,
    reservation: Reservation,
    signing: Option<Signing<'a>>,
}

fn storage_error(what: &str, e: io::Error) -> Reply {
    tracing::error!(error = %e, "cannot {what} the content of a message being received");
    Reply::new(452, (4, 3, 1), "Insufficient system storage, try again later")
}

impl<'a> Spill<'a> {
    /// A message whose file, if it needs one, goes to `dir`, and which is signed as it
    /// arrives by `plan`.
    pub fn new(dir: Arc<Path>, max_header_size: u64, budget: &Arc<Budget>, plan: Option<SignPlan<'a>>) -> Spill<'a> {
        Spill {
            dir,
            max_header_size,
            head: Vec::new(),
            header: HeaderEnd::default(),
            file: None,
            file_len: 0,
            reservation: budget.reservation(),
            failed: None,
            plan,
            signing: None,
        }
    }

    /// Takes the next piece of content. Once the budget is spent or the file cannot be
    /// written, what was kept is dropped and so is the rest: [`Spill::finish`] then
    /// gives the refusal.
    pub fn push(&mut self, piece: &[u8]) {
        if self.failed.is_none()
            && let Err(reply) = self.try_push(piece)
        {
            self.failed = Some(reply);
            self.head = Vec::new();
            self.file = None;
            self.signing = None;
            self.reservation.clear();
        }
    }

    /// Passes `piece` (just taken) to the signing, which starts once the header block
    /// is in.
    fn sign(&mut self, piece: &[u8]) {
        match &mut self.signing {
            Some(signing) => signing.write(piece),
            None => {
                if let Some(end) = self.header.found() {
                    self.start_signing(end as usize);
                }
            }
        }
    }

    fn start_signing(&mut self, header_len: usize) {
        if let Some(plan) = self.plan.take() {
            self.signing = plan.start(&self.head[..header_len]);
            if let Some(signing) = &mut self.signing {
                signing.write(&self.head);
            }
        }
    }

    fn try_push(&mut self, piece: &[u8]) -> Result<(), Reply> {
        let in_header = self.header.found().is_none() && (self.head.len() as u64) < self.max_header_size;
        if self.file.is_none() && (self.head.len() < IN_MEMORY || in_header) {
            if !self.reservation.grow(piece.len() as u64) {
                tracing::warn!("in-flight message budget spent; message refused");
                return Err(exhausted());
            }
            self.header.feed(piece);
            self.head.extend_from_slice(piece);
            self.sign(piece);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                if !self.reservation.grow(WRITE_BUFFER as u64) {
                    tracing::warn!("in-flight message budget spent; message refused");
                    return Err(exhausted());
                }
                let file = temp_file(&self.dir).map_err(|e| storage_error("create a file for", e))?;
                self.file.insert(BufWriter::with_capacity(WRITE_BUFFER, file))
            }
        };
        file.write_all(piece).map_err(|e| storage_error("write", e))?;
        self.file_len += piece.len() as u64;
        self.sign(piece);
        Ok(())
    }

    /// The message as received, or the refusal for it.
    pub fn finish(mut self) -> Result<Received<'a>, Reply> {
        if let Some(reply) = self.failed {
            return Err(reply);
        }
        if self.header.found().is_none() {
            // No empty line: all of it is header.
            self.start_signing(self.head.len());
        }
        let file = match self.file {
            None => None,
            Some(writer) => Some(Arc::new(writer.into_inner().map_err(|e| storage_error("write", e.into_error()))?)),
        };
        let header_len = self.header.found().map_or(self.head.len(), |end| end as usize);
        let (head, file_len, reservation, signing) = (self.head, self.file_len, self.reservation, self.signing);
        Ok(Received { head, header_len, file, file_len, reservation, signing })
    }
}

impl<'a> Received<'a> {
    /// The signing of the message, when it was signed as it arrived.
    pub fn take_signing(&mut self) -> Option<Signing<'a>> {
        self.signing.take()
    }

    /// The header block, up to and including the CRLF before the empty line.
    pub fn header(&self) -> &[u8] {
        &self.head[..self.header_len]
    }

    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.file_len
    }

    /// Held in memory whole (no file).
    pub fn in_memory(&self) -> bool {
        self.file.is_none()
    }

    /// The whole content in memory, with `header` in place of the header block, for
    /// the checks that need it; the memory is taken from the budget.
    pub async fn whole(&mut self, header: &[u8]) -> Result<Vec<u8>, Reply> {
        let size = header.len() as u64 + self.len() - self.header_len as u64;
        if !self.reservation.grow(size) {
            tracing::warn!(size, "in-flight message budget spent; message refused");
            return Err(exhausted());
        }
        let mut out = Vec::with_capacity(size as usize);
        out.extend_from_slice(header);
        out.extend_from_slice(&self.head[self.header_len..]);
        if let Some(file) = self.file.clone() {
            let (at, len) = (out.len(), self.file_len as usize);
            out.resize(at + len, 0);
            out = tokio::task::spawn_blocking(move || file.read_exact_at(&mut out[at..], 0).map(|()| out))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|e| storage_error("read back", e))?;
        }
        Ok(out)
    }

    /// The content as spool parts, after `prefix` (added header fields) and with
    /// `header` in place of the header block; and the budget for the bytes in memory,
    /// to keep until they are stored.
    pub fn into_parts(self, mut prefix: Vec<u8>, header: &[u8]) -> (Vec<Part>, Reservation) {
        prefix.reserve(header.len() + self.head.len() - self.header_len);
        prefix.extend_from_slice(header);
        prefix.extend_from_slice(&self.head[self.header_len..]);
        let mut parts = vec![Part::Bytes(prefix)];
        if let Some(file) = self.file {
            parts.push(Part::File { file, offset: 0, len: self.file_len });
        }
        (parts, self.reservation)
    }
}

/// An unlinked file in `dir`, readable and writable by its owner only.
fn temp_file(dir: &Path) -> io::Result<File> {
    let open = || {
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(0o600);
        options
    };
    match open().custom_flags(libc::O_TMPFILE).open(dir) {
        // Filesystems without O_TMPFILE: a named file unlinked at once; one left by a
        // crash in between is removed at the next start ([`prepare_dir`]).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = dir.join(format!("spill-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            let file = open().create_new(true).open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
        other => other,
    }
}

/// Creates `dir` (owner-only) or empties it of files left by an earlier run.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill<'a>(dir: &Path, budget: &Arc<Budget>) -> Spill<'a> {
        Spill::new(Arc::from(dir), 1 << 20, budget, None)
    }

    #[tokio::test]
    async fn small_messages_stay_in_memory_and_large_ones_go_to_a_nameless_file() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget::new(1 << 30);
        let mut s = spill(dir.path(), &budget);
        s.push(b"Subject: x\r\n\r\nsmall\r\n");
        let r = s.finish().unwrap();
        assert!(r.in_memory());
        assert_eq!(r.header(), b"Subject: x\r\n");
        drop(r);

        let mut s = spill(dir.path(), &budget);
        let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        s.push(b"Subject: y\r\nAuthentication-Results: x\r\n\r\n");
        for piece in body.chunks(10_000) {
            s.push(piece);
        }
        let mut r = s.finish().unwrap();
        assert!(!r.in_memory());
        assert!(budget.used() < 200_000, "memory held: {}", budget.used());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file has no name");
        let whole = r.whole(b"Subject: y\r\n").await.unwrap();
        assert_eq!(whole, [&b"Subject: y\r\n\r\n"[..], &body].concat());
        let (parts, reservation) = r.into_parts(b"Received: z\r\n".to_vec(), b"Subject: y\r\n");
        assert_eq!(parts.iter().map(Part::len).sum::<u64>(), 13 + whole.len() as u64);
        drop((parts, reservation));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_spent_budget_refuses_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget::new(50_000);
        let mut s = spill(dir.path(), &budget);
        for _ in 0..10 {
            s.push(&[b'x'; 10_000]);
        }
        assert_eq!(budget.used(), 0);
        assert_eq!(s.finish().err().map(|r| r.code), Some(452));
    }
}
