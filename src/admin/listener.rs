//! The admin listener's sockets: at most [`MAX_CONNECTIONS`] at once; a client beyond
//! that is closed at once rather than left waiting.

use crate::log_limit::{self, LogLimit};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections the admin listener serves at once.
pub const MAX_CONNECTIONS: usize = 64;

pub struct Limited {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl Limited {
    pub fn new(listener: TcpListener) -> Limited {
        Limited { listener, slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)) }
    }
}

/// A connection holding its slot until it closes.
pub struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl axum::serve::Listener for Limited {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        static REFUSED: LogLimit = LogLimit::new(log_limit::PERIOD);
        static FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => return (Connection { stream, _slot: slot }, peer),
                    Err(_) => {
                        if let Some(repeats) = REFUSED.admit() {
                            tracing::warn!(client = %peer, limit = MAX_CONNECTIONS, repeats, "admin: too many connections; closed");
                        }
                    }
                },
                Err(e) => {
                    if let Some(repeats) = FAILED.admit() {
                        tracing::warn!(error = %e, repeats, "admin: accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
