//! A stored message's content as delivery reads it: held in memory when small, else
//! read from where the store keeps it a piece at a time, so that a delivery holds a
//! bounded buffer whatever the message's size.

use std::io;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// How much content is read at once when it is not in memory.
pub const PIECE: usize = 256 << 10;

/// Positional reads of content kept outside memory (a range of a spool segment, say).
pub trait ReadAt: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset` from the content's start; 0 at its
    /// end. Blocking: call it off the async threads.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A message's content; cheap to clone.
#[derive(Clone)]
pub struct Content {
    source: Source,
    len: u64,
}

#[derive(Clone)]
enum Source {
    Memory(Arc<Vec<u8>>),
    Reader(Arc<dyn ReadAt>),
}

impl From<Arc<Vec<u8>>> for Content {
    fn from(bytes: Arc<Vec<u8>>) -> Content {
        Content { len: bytes.len() as u64, source: Source::Memory(bytes) }
    }
}

impl From<Vec<u8>> for Content {
    fn from(bytes: Vec<u8>) -> Content {
        Content::from(Arc::new(bytes))
    }
}

impl Content {
    /// `len` bytes read through `reader`.
    pub fn from_reader(reader: Arc<dyn ReadAt>, len: u64) -> Content {
        Content { source: Source::Reader(reader), len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, when the content is held in memory.
    pub fn in_memory(&self) -> Option<&[u8]> {
        match &self.source {
            Source::Memory(bytes) => Some(bytes),
            Source::Reader(_) => None,
        }
    }

    /// Fills `buf` from `offset` (blocking).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.len).ok_or_else(past_end)?;
        match &self.source {
            Source::Memory(bytes) => buf.copy_from_slice(&bytes[offset as usize..end as usize]),
            Source::Reader(reader) => {
                let mut done = 0;
                while done < buf.len() {
                    match reader.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => return Err(past_end()),
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// All of it in one buffer (blocking).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        if let Some(bytes) = self.in_memory() {
            return Ok(bytes.to_vec());
        }
        let mut buf = vec![0; self.len as usize];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// The same content, read into memory once if it is at most `limit` bytes
    /// (blocking): a small message is cheaper read whole and shared by every
    /// destination than read in pieces by each.
    pub fn held_if_within(self, limit: u64) -> io::Result<Content> {
        if self.in_memory().is_some() || self.len > limit {
            return Ok(self);
        }
        Ok(Content::from(self.to_vec()?))
    }

    /// The header block with the empty line that ends it, or the first `limit` bytes
    /// when no empty line comes before (blocking).
    pub fn head(&self, limit: usize) -> io::Result<Vec<u8>> {
        let end = |bytes: &[u8], from: usize| memchr::memmem::find(&bytes[from..], b"\r\n\r\n").map(|i| from + i + 4);
        if let Some(bytes) = self.in_memory() {
            let bytes = &bytes[..bytes.len().min(limit)];
            return Ok(bytes[..end(bytes, 0).unwrap_or(bytes.len())].to_vec());
        }
        let mut head = Vec::new();
        let step = 64 << 10;
        while (head.len() as u64) < self.len && head.len() < limit {
            let searched = head.len().saturating_sub(3);
            let n = (self.len - head.len() as u64).min(step as u64).min((limit - head.len()) as u64) as usize;
            let at = head.len();
            head.resize(at + n, 0);
            self.read_exact_at(&mut head[at..], at as u64)?;
            if let Some(end) = end(&head, searched) {
                head.truncate(end);
                return Ok(head);
            }
        }
        Ok(head)
    }

    /// Hands each piece to `f` in order, through `buf` when the content is not in
    /// memory (blocking).
    pub fn for_each_piece(&self, buf: &mut Vec<u8>, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if let Some(bytes) = self.in_memory() {
            return f(bytes);
        }
        buf.resize(PIECE, 0);
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(PIECE as u64) as usize;
            self.read_exact_at(&mut buf[..n], at)?;
            f(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// The content in pieces of at most [`PIECE`] bytes, for async code: each piece
    /// not in memory is read on the blocking threads while the one before is used.
    pub fn pieces(&self) -> Pieces {
        Pieces { content: self.clone(), at: 0, current: Vec::new(), ahead: None }
    }
}

fn past_end() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "message content ends early")
}

type Read = JoinHandle<(Vec<u8>, io::Result<()>)>;

/// Reads the piece of `content` at `at` into `buf` on the blocking threads.
fn read_ahead(content: Content, mut buf: Vec<u8>, at: u64) -> Read {
    tokio::task::spawn_blocking(move || {
        let n = (content.len - at).min(PIECE as u64) as usize;
        buf.resize(n, 0);
        let result = content.read_exact_at(&mut buf, at);
        (buf, result)
    })
}

/// See [`Content::pieces`]. At most two buffers of [`PIECE`] bytes: the piece handed
/// out and the next one being read.
pub struct Pieces {
    content: Content,
    /// Where the next piece starts.
    at: u64,
    current: Vec<u8>,
    ahead: Option<Read>,
}

impl Pieces {
    /// The next piece, or `None` at the end.
    pub async fn next(&mut self) -> io::Result<Option<&[u8]>> {
        let (start, len) = (self.at, self.content.len);
        if start >= len {
            return Ok(None);
        }
        let n = (len - start).min(PIECE as u64) as usize;
        self.at += n as u64;
        if self.content.in_memory().is_some() {
            let bytes = self.content.in_memory().expect("checked");
            return Ok(Some(&bytes[start as usize..start as usize + n]));
        }
        let read = match self.ahead.take() {
            Some(read) => read,
            None => read_ahead(self.content.clone(), std::mem::take(&mut self.current), start),
        };
        let (buf, result) = read.await.map_err(io::Error::other)?;
        result?;
        let spare = std::mem::replace(&mut self.current, buf);
        if self.at < len {
            self.ahead = Some(read_ahead(self.content.clone(), spare, self.at));
        }
        Ok(Some(&self.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content behind a reader that hands out at most 1000 bytes per read.
    struct Slow(Vec<u8>);

    impl ReadAt for Slow {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let rest = self.0.get(offset as usize..).unwrap_or(&[]);
            let n = rest.len().min(buf.len()).min(1000);
            buf[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        }
    }

    fn both(bytes: &[u8]) -> [Content; 2] {
        let reader = Content::from_reader(Arc::new(Slow(bytes.to_vec())), bytes.len() as u64);
        [Content::from(bytes.to_vec()), reader]
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn pieces_give_back_the_content() {
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 17] {
            let bytes = sample(len);
            for content in both(&bytes) {
                let mut pieces = content.pieces();
                let mut out = Vec::new();
                while let Some(piece) = pieces.next().await.unwrap() {
                    assert!(piece.len() <= PIECE);
                    out.extend_from_slice(piece);
                }
                assert_eq!(out, bytes);
                let mut out = Vec::new();
                content
                    .for_each_piece(&mut Vec::new(), |p| {
                        out.extend_from_slice(p);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(out, bytes);
                assert_eq!(content.to_vec().unwrap(), bytes);
            }
        }
    }

    #[test]
    fn head_ends_with_the_empty_line_or_the_limit() {
        let mut message = b"Subject: x\r\n".repeat(20_000);
        message.extend_from_slice(b"\r\nbody\r\n\r\nmore\r\n");
        for content in both(&message) {
            let head = content.head(1 << 20).unwrap();
            assert_eq!(head.len(), 12 * 20_000 + 2);
            assert!(head.ends_with(b"x\r\n\r\n"));
            assert_eq!(content.head(100).unwrap(), &message[..100]);
        }
        for content in both(b"no empty line\r\n") {
            assert_eq!(content.head(1000).unwrap(), b"no empty line\r\n");
        }
    }

    #[test]
    fn a_short_reader_is_an_error() {
        let content = Content::from_reader(Arc::new(Slow(vec![1; 10])), 20);
        assert_eq!(content.to_vec().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(content.clone().held_if_within(100).is_err());
        assert!(content.held_if_within(10).unwrap().in_memory().is_none());
    }
}
