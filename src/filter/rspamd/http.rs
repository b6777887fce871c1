//! One HTTP/1.1 request to rspamd (hyper's client connection), over TCP or a unix
//! socket: the message streamed as the body from memory and its spill file, the
//! answer read up to a bound. The caller bounds the whole exchange in time.

use crate::config::RspamdEndpoint;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Largest answer read; a larger one is an error.
pub const MAX_ANSWER: usize = 1 << 20;
/// Pieces of the spill file read at a time (two may wait in the channel).
const CHUNK: usize = 64 * 1024;

/// A message as it is sent: its first bytes in memory, the rest in a file.
pub struct Content {
    pub head: Vec<u8>,
    /// The file and how many of its bytes (from offset 0) follow `head`.
    pub file: Option<(Arc<File>, u64)>,
}

impl Content {
    fn size(&self) -> u64 {
        self.head.len() as u64 + self.file.as_ref().map_or(0, |(_, len)| *len)
    }
}

/// The request body: pieces read by a task that stops when the request is dropped.
struct Streamed {
    pieces: mpsc::Receiver<io::Result<Bytes>>,
    left: u64,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.pieces.poll_recv(cx) {
            Poll::Ready(Some(Ok(piece))) => {
                self.left = self.left.saturating_sub(piece.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Starts reading `content` into a body; the file is read off the async threads.
fn stream(content: Content) -> Streamed {
    let left = content.size();
    let (tx, pieces) = mpsc::channel(2);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(content.head))).await.is_err() {
            return;
        }
        let Some((file, len)) = content.file else { return };
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(CHUNK as u64) as usize;
            let file = file.clone();
            let piece = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return;
            }
            at += n as u64;
        }
    });
    Streamed { pieces, left }
}

/// Ends the connection's task when the exchange ends, however it ends.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// POSTs `content` to `path` with `headers`; answers with the status and the body.
pub async fn post(
    endpoint: &RspamdEndpoint,
    path: &str,
    headers: &[(&'static str, String)],
    content: Content,
) -> Result<(u16, Vec<u8>), String> {
    let (host, path) = match endpoint {
        RspamdEndpoint::Tcp { host, port, prefix } => {
            let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            (authority, format!("{prefix}{path}"))
        }
        RspamdEndpoint::Unix(_) => ("localhost".to_string(), path.to_string()),
    };
    let mut request = hyper::Request::post(path).header(hyper::header::HOST, host);
    for (name, value) in headers {
        // Header values may not hold control characters (RFC 9110 §5.5).
        let clean: Vec<u8> = value.bytes().filter(|b| *b == b'\t' || !b.is_ascii_control()).collect();
        match hyper::header::HeaderValue::from_bytes(&clean) {
            Ok(value) => request = request.header(*name, value),
            Err(_) => tracing::debug!(name, "rspamd request header left out: not a valid value"),
        }
    }
    request = request.header(hyper::header::CONTENT_LENGTH, content.size());
    let request = request.body(stream(content)).map_err(|e| format!("cannot make the request: {e}"))?;
    match endpoint {
        RspamdEndpoint::Tcp { host, port, .. } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("cannot connect to {host} port {port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            exchange(TokioIo::new(tcp), request).await
        }
        RspamdEndpoint::Unix(socket) => {
            let unix = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
            exchange(TokioIo::new(unix), request).await
        }
    }
}

async fn exchange<T>(io: T, request: hyper::Request<Streamed>) -> Result<(u16, Vec<u8>), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let _connection = Abort(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "rspamd connection ended");
        }
    }));
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP exchange failed: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
            Some(_) => format!("answer larger than {MAX_ANSWER} bytes"),
            None => format!("cannot read the answer: {e}"),
        })?
        .to_bytes();
    Ok((status, body.to_vec()))
}
