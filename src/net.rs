//! A byte stream that may be plain TCP or TLS.

use tokio::io::{AsyncRead, AsyncWrite};

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A stream that is already closed, to stand in while the real one is being upgraded.
pub fn closed() -> Box<dyn Stream> {
    Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()))
}
