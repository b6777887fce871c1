//! The content of a message as it arrives: the first bytes in memory (the header block,
//! which the checks need, or the whole message while it is small), the rest in an
//! unlinked temporary file that the spool copies from. The file has no name, so
//! nothing of it outlives the process, however it ends; once the message is stored or
//! dropped the file is emptied and kept for a later message, since creating and
//! deleting a file for every message costs more than writing it (ext4 without a
//! journal, for one, scans past recently deleted inodes at each creation).

use super::budget::{Budget, Reservation, exhausted};
use super::checks::{SignPlan, Signing};
use crate::policy::auth::body::BodyHashes;
use crate::smtp::Reply;
use crate::smtp::body::HeaderEnd;
use crate::spool::Part;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, Write};
#[cfg(test)]
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Messages up to about this size stay in memory and never touch a file (most mail
/// does): a file, the copy from it and the read back for delivery cost about a
/// tenth of the throughput for 300 KiB messages (bench/README.md).
pub const IN_MEMORY: usize = 128 * 1024;
/// The write buffer of the file.
const WRITE_BUFFER: usize = 16 * 1024;
/// Small messages stay in memory whole only while all sessions together hold less
/// than this share of `[limits] max_inflight_bytes` (a sixteenth: 16 MiB by default),
/// so that many slow sessions at once hold little more than their header blocks.
const SMALL_SHARE: f64 = 0.0625;
/// Empty files kept for later messages, at most.
const IDLE_FILES: usize = 64;

/// The spill files of the server: nameless files in one directory, reused.
pub struct Files {
    dir: PathBuf,
    idle: Mutex<Vec<File>>,
}

impl Files {
    pub fn new(dir: PathBuf) -> Arc<Files> {
        Arc::new(Files { dir, idle: Mutex::new(Vec::new()) })
    }

    fn take(&self) -> io::Result<File> {
        match self.idle.lock().expect("idle files").pop() {
            Some(file) => Ok(file),
            None => temp_file(&self.dir),
        }
    }

    /// An empty file of the pool, for content made here (a body a milter replaced);
    /// it closes when dropped.
    pub fn file(&self) -> io::Result<File> {
        self.take()
    }

    /// Takes a file back, emptied first: nothing of one message is seen with the next.
    fn give(&self, mut file: File) {
        if file.set_len(0).is_ok() && file.rewind().is_ok() {
            let mut idle = self.idle.lock().expect("idle files");
            if idle.len() < IDLE_FILES {
                idle.push(file);
            }
        }
    }

    /// Takes a file back if nothing else holds it (else it closes with its last holder).
    fn give_shared(&self, file: Arc<File>) {
        if let Ok(file) = Arc::try_unwrap(file) {
            self.give(file);
        }
    }
}

/// What a stored message keeps until the spool has it: its share of the budget and
/// its file, which then goes back to the pool.
pub struct Held {
    _reservation: Reservation,
    file: Option<(Arc<File>, Arc<Files>)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((file, files)) = self.file.take() {
            files.give_shared(file);
        }
    }
}

/// A message being received.
pub struct Spill<'a> {
    files: Arc<Files>,
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
    /// The body hashes for the checks of the message.
    hashing: Hashing,
}

/// The body hashes the checks (DKIM, ARC) need of a message, if it is checked.
enum Hashing {
    Off,
    /// Until the header block is in and says which hashes are needed.
    Waiting,
    On(BodyHashes),
}

/// A message received whole.
pub struct Received<'a> {
    files: Arc<Files>,
    /// The first bytes of the content: at least the header block.
    head: Vec<u8>,
    header_len: usize,
    file: Option<Arc<File>>,
    file_len: u64,
    reservation: Reservation,
    signing: Option<Signing<'a>>,
    hashes: Option<BodyHashes>,
}

fn storage_error(what: &str, e: io::Error) -> Reply {
    tracing::error!(error = %e, "cannot {what} the content of a message being received");
    Reply::new(452, (4, 3, 1), "Insufficient system storage, try again later")
}

impl<'a> Spill<'a> {
    /// A message whose file, if it needs one, comes from `files`, which is signed as
    /// it arrives by `plan`, and whose body is hashed as it arrives if it is `checked`.
    pub fn new(
        files: &Arc<Files>,
        max_header_size: u64,
        budget: &Arc<Budget>,
        plan: Option<SignPlan<'a>>,
        checked: bool,
    ) -> Spill<'a> {
        Spill {
            files: files.clone(),
            max_header_size,
            head: Vec::new(),
            header: HeaderEnd::default(),
            file: None,
            file_len: 0,
            reservation: budget.reservation(),
            failed: None,
            plan,
            signing: None,
            hashing: if checked { Hashing::Waiting } else { Hashing::Off },
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
            self.drop_file();
            self.signing = None;
            self.hashing = Hashing::Off;
            self.reservation.clear();
        }
    }

    /// Passes `piece` (just taken) to the signing and the body hashing, which start
    /// once the header block is in.
    fn follow(&mut self, piece: &[u8]) {
        match &mut self.signing {
            Some(signing) => signing.write(piece),
            None => {
                if let Some(end) = self.header.found() {
                    self.start_signing(end as usize);
                }
            }
        }
        match &mut self.hashing {
            Hashing::On(hashes) => hashes.feed(piece),
            Hashing::Waiting => {
                if let Some(end) = self.header.found() {
                    self.start_hashing(end as usize);
                }
            }
            Hashing::Off => {}
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

    /// The header block of `header_len` bytes is in `head`: the hashes its signatures
    /// need start, with the body received so far (after the empty line).
    fn start_hashing(&mut self, header_len: usize) {
        if let Hashing::Waiting = self.hashing {
            let mut hashes = BodyHashes::for_header(&self.head[..header_len]);
            hashes.feed(self.head.get(header_len + 2..).unwrap_or_default());
            self.hashing = Hashing::On(hashes);
        }
    }

    fn try_push(&mut self, piece: &[u8]) -> Result<(), Reply> {
        let in_header = self.header.found().is_none() && (self.head.len() as u64) < self.max_header_size;
        let bytes = piece.len() as u64;
        // The header block must be in memory; the rest of a small message may be, while
        // all sessions together hold little (many slow sessions at once spill early).
        let keep = self.file.is_none()
            && if in_header {
                if !self.reservation.grow(bytes) {
                    tracing::warn!("in-flight message budget spent; message refused");
                    return Err(exhausted());
                }
                true
            } else {
                self.head.len() < IN_MEMORY && self.reservation.grow_within_share(bytes, SMALL_SHARE)
            };
        if keep {
            self.header.feed(piece);
            self.head.extend_from_slice(piece);
            self.follow(piece);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                if !self.reservation.grow(WRITE_BUFFER as u64) {
                    tracing::warn!("in-flight message budget spent; message refused");
                    return Err(exhausted());
                }
                let file = self.files.take().map_err(|e| storage_error("create a file for", e))?;
                self.file.insert(BufWriter::with_capacity(WRITE_BUFFER, file))
            }
        };
        file.write_all(piece).map_err(|e| storage_error("write", e))?;
        self.file_len += piece.len() as u64;
        self.follow(piece);
        Ok(())
    }

    /// Gives the file back, unflushed.
    fn drop_file(&mut self) {
        if let Some(writer) = self.file.take() {
            self.files.give(writer.into_parts().0);
        }
    }

    /// The message as received, or the refusal for it.
    pub fn finish(mut self) -> Result<Received<'a>, Reply> {
        if let Some(reply) = self.failed.take() {
            return Err(reply);
        }
        if self.header.found().is_none() {
            // No empty line: all of it is header.
            self.start_signing(self.head.len());
            self.start_hashing(self.head.len());
        }
        let file = match self.file.take() {
            None => None,
            Some(writer) => Some(Arc::new(writer.into_inner().map_err(|e| storage_error("write", e.into_error()))?)),
        };
        let header_len = self.header.found().map_or(self.head.len(), |end| end as usize);
        Ok(Received {
            files: self.files.clone(),
            head: std::mem::take(&mut self.head),
            header_len,
            file,
            file_len: self.file_len,
            reservation: self.take_reservation(),
            signing: self.signing.take(),
            hashes: match std::mem::replace(&mut self.hashing, Hashing::Off) {
                Hashing::On(hashes) => Some(hashes),
                Hashing::Waiting | Hashing::Off => None,
            },
        })
    }

    fn take_reservation(&mut self) -> Reservation {
        let empty = self.reservation.empty();
        std::mem::replace(&mut self.reservation, empty)
    }
}

impl Drop for Spill<'_> {
    fn drop(&mut self) {
        self.drop_file();
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            self.files.give_shared(file);
        }
    }
}

impl<'a> Received<'a> {
    /// The signing of the message, when it was signed as it arrived.
    pub fn take_signing(&mut self) -> Option<Signing<'a>> {
        self.signing.take()
    }

    /// The body hashes for the checks, when the message is checked.
    pub fn take_body_hashes(&mut self) -> Option<BodyHashes> {
        self.hashes.take()
    }

    /// The header block, up to and including the CRLF before the empty line.
    pub fn header(&self) -> &[u8] {
        &self.head[..self.header_len]
    }

    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.file_len
    }

    /// The body (after the empty line): its first bytes in memory, then those of the
    /// file, if any, and how many.
    pub fn body(&self) -> (&[u8], Option<(Arc<File>, u64)>) {
        let memory = self.head.get(self.header_len + 2..).unwrap_or_default();
        (memory, self.file.clone().map(|f| (f, self.file_len)))
    }

    /// Held in memory whole (no file).
    #[cfg(test)]
    pub fn in_memory(&self) -> bool {
        self.file.is_none()
    }

    /// The whole content in memory, with `header` in place of the header block; and
    /// its share of the budget, to drop with it.
    #[cfg(test)]
    pub async fn whole(&self, header: &[u8]) -> Result<(Vec<u8>, Reservation), Reply> {
        let size = header.len() as u64 + self.len() - self.header_len as u64;
        let mut reservation = self.reservation.empty();
        if !reservation.grow(size) {
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
        Ok((out, reservation))
    }

    /// The content as spool parts, after `prefix` (added header fields) and with
    /// `cleaned` in place of the header block if given; and the budget for the bytes
    /// in memory, to keep until they are stored.
    pub fn into_parts(mut self, mut prefix: Vec<u8>, cleaned: Option<Vec<u8>>) -> (Vec<Part>, Held) {
        let head = std::mem::take(&mut self.head);
        let mut parts = match cleaned {
            None => vec![Part::Bytes(prefix), Part::Bytes(head)],
            Some(header) => {
                prefix.extend_from_slice(&header);
                prefix.extend_from_slice(&head[self.header_len..]);
                vec![Part::Bytes(prefix)]
            }
        };
        let file = self.file.take();
        if let Some(file) = &file {
            parts.push(Part::File { file: file.clone(), offset: 0, len: self.file_len });
        }
        let empty = self.reservation.empty();
        let reservation = std::mem::replace(&mut self.reservation, empty);
        (parts, Held { _reservation: reservation, file: file.map(|f| (f, self.files.clone())) })
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
        Spill::new(&Files::new(dir.to_path_buf()), 1 << 20, budget, None, false)
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
        let r = s.finish().unwrap();
        assert!(!r.in_memory());
        assert!(budget.used() <= (IN_MEMORY + WRITE_BUFFER + 10_000) as u64, "memory held: {}", budget.used());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file has no name");
        let (whole, memory) = r.whole(b"Subject: y\r\n").await.unwrap();
        assert!(budget.used() >= whole.len() as u64, "the copy in memory is counted");
        drop(memory);
        assert_eq!(whole, [&b"Subject: y\r\n\r\n"[..], &body].concat());
        let (parts, held) = r.into_parts(b"Received: z\r\n".to_vec(), Some(b"Subject: y\r\n".to_vec()));
        assert_eq!(parts.iter().map(Part::len).sum::<u64>(), 13 + whole.len() as u64);
        drop((parts, held));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn files_are_emptied_and_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let (budget, files) = (Budget::new(1 << 30), Files::new(dir.path().to_path_buf()));
        for (round, byte) in [b'a', b'b'].into_iter().enumerate() {
            let mut s = Spill::new(&files, 1 << 20, &budget, None, false);
            s.push(b"Subject: x\r\n\r\n");
            let size = 200_000 - round * 50_000;
            vec![byte; size].chunks(10_000).for_each(|piece| s.push(piece));
            let r = s.finish().unwrap();
            let (whole, memory) = r.whole(b"Subject: x\r\n").await.unwrap();
            drop(memory);
            assert_eq!(whole.len(), 14 + size);
            assert!(whole[14..].iter().all(|&b| b == byte), "content of an earlier message seen");
            drop(r);
            let idle = files.idle.lock().unwrap();
            assert_eq!(idle.len(), 1);
            assert_eq!(idle[0].metadata().unwrap().len(), 0, "an idle file holds content");
        }
    }

    #[test]
    fn checked_messages_have_their_body_hashed_as_it_arrives() {
        use crate::policy::auth::body::{header_message, rehash_bodies};
        use mail_auth::AuthenticatedMessage;
        let dir = tempfile::tempdir().unwrap();
        let (budget, files) = (Budget::new(1 << 30), Files::new(dir.path().to_path_buf()));
        let header = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=a.test; s=s;\r\n\
            \th=from; bh=AAAA; b=AAAA\r\nFrom: a@a.test\r\n";
        // Small (in memory) and large (spilled); the header block's end cut anywhere.
        for (lines, piece) in [(3, 1), (3, 7), (20_000, 7_001), (20_000, 65_536)] {
            let body = b"a  line \t\r\n\r\n".repeat(lines);
            let whole = [&header[..], b"\r\n", &body].concat();
            let mut s = Spill::new(&files, 1 << 20, &budget, None, true);
            whole.chunks(piece).for_each(|p| s.push(p));
            let mut r = s.finish().unwrap();
            let hashed = r.take_body_hashes().expect("hashed").finish();
            let mut want = AuthenticatedMessage::parse(&whole).unwrap();
            rehash_bodies(&mut want);
            let header = header_message(r.header());
            let mut got = AuthenticatedMessage::parse(&header).unwrap();
            hashed.inject(&mut got);
            assert_eq!(got.body_hashes, want.body_hashes, "{lines} lines in pieces of {piece}");
        }
        let mut s = Spill::new(&files, 1 << 20, &budget, None, false);
        s.push(header);
        assert!(s.finish().unwrap().take_body_hashes().is_none(), "a message not checked is not hashed");
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
