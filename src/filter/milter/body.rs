//! The body of a received message, read in pieces for the milters: the part held in
//! memory, then the part spilled to a file, never all of it in memory at once.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub struct Body<'a> {
    memory: &'a [u8],
    file: Option<(Arc<File>, u64)>,
}

impl<'a> Body<'a> {
    /// `memory` (the body's first bytes), then `len` bytes of `file` from its start.
    pub fn new(memory: &'a [u8], file: Option<(Arc<File>, u64)>) -> Body<'a> {
        Body { memory, file }
    }

    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.file.as_ref().map_or(0, |(_, len)| *len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` bytes from offset `at` (fewer only at the end).
    pub async fn read(&self, at: u64, max: usize) -> io::Result<Vec<u8>> {
        let in_memory = self.memory.len() as u64;
        if at < in_memory {
            let end = (at as usize + max).min(self.memory.len());
            return Ok(self.memory[at as usize..end].to_vec());
        }
        let Some((file, len)) = &self.file else { return Ok(Vec::new()) };
        let offset = at - in_memory;
        let size = (*len - offset.min(*len)).min(max as u64) as usize;
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = vec![0; size];
            file.read_exact_at(&mut out, offset).map(|()| out)
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn pieces_cover_memory_then_file() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        let body = Body::new(b"abc", Some((Arc::new(file), 8)));
        assert_eq!(body.len(), 11);
        let mut all = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let piece = body.read(at, 4).await.unwrap();
            assert!(!piece.is_empty() && piece.len() <= 4);
            at += piece.len() as u64;
            all.extend(piece);
        }
        assert_eq!(all, b"abc01234567");
    }
}
