//! One client connection: feeds bytes to the SMTP session and writes its replies.

use super::{Context, checks};
use crate::smtp::Reply;
use crate::smtp::reply::common;
use crate::smtp::session::{Check, Event, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const READ_BUFFER: usize = 64 * 1024;

/// Why a connection ended, for the log.
enum End {
    Closed,
    ClientGone,
    Timeout,
    Shutdown,
    Error(std::io::Error),
}

pub async fn handle(ctx: Arc<Context>, mut stream: TcpStream, peer: SocketAddr, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(client = %peer, "connect");
    let _ = stream.set_nodelay(true);
    let end = converse(&ctx, &mut stream, peer, &mut shutdown).await;
    let _ = stream.shutdown().await;
    match end {
        End::Closed => tracing::info!(client = %peer, "disconnect"),
        End::ClientGone => {
            tracing::info!(client = %peer, "disconnect: client closed the connection")
        }
        End::Timeout => tracing::info!(client = %peer, "disconnect: timeout"),
        End::Shutdown => tracing::info!(client = %peer, "disconnect: server shutting down"),
        End::Error(e) => tracing::info!(client = %peer, error = %e, "disconnect: connection error"),
    }
}

async fn send(stream: &mut TcpStream, out: &mut Vec<u8>, limit: Duration) -> Result<(), End> {
    if out.is_empty() {
        return Ok(());
    }
    let result = timeout(limit, stream.write_all(out)).await;
    out.clear();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Error(e)),
        Err(_) => Err(End::Timeout),
    }
}

async fn say(stream: &mut TcpStream, reply: Reply, limit: Duration) -> Result<(), End> {
    let mut out = Vec::new();
    reply.encode(&mut out);
    send(stream, &mut out, limit).await
}

async fn converse(
    ctx: &Context,
    stream: &mut TcpStream,
    peer: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let limits = &ctx.config.limits;
    let deadline = Instant::now() + limits.session_timeout;
    let mut session = Session::new(ctx.session_config.clone());
    let mut buf = vec![0u8; READ_BUFFER];
    // A client that talks before the greeting is not speaking SMTP (RFC 5321 §3.1).
    if matches!(stream.try_read(&mut buf), Ok(n) if n > 0) {
        tracing::info!(client = %peer, "client sent data before the greeting");
        let _ = say(stream, common::pipelining_violation(), limits.command_timeout).await;
        return End::Closed;
    }
    if let Err(end) = say(stream, session.greeting(), limits.command_timeout).await {
        return end;
    }
    let mut out = Vec::new();
    loop {
        while let Some(event) = session.poll() {
            match event {
                Event::Reply(reply) => {
                    if reply.code >= 400 {
                        tracing::info!(client = %peer, reply = %reply, "refused");
                    }
                    reply.encode(&mut out);
                }
                Event::Close => {
                    return send(stream, &mut out, limits.command_timeout).await.err().unwrap_or(End::Closed);
                }
                Event::Check(Check::Mail { from, params }) => {
                    let from = from.map(|m| m.to_string()).unwrap_or_default();
                    tracing::debug!(client = %peer, %from, size = ?params.size, "MAIL");
                    session.answer_mail(Ok(()));
                }
                Event::Check(Check::Rcpt { to }) => session.answer_rcpt(checks::recipient(ctx, &to, peer.ip())),
                Event::Check(Check::Message(message)) => {
                    let outcome = checks::message(ctx, *message, peer.ip()).await;
                    session.answer_message(outcome);
                }
            }
        }
        // RFC 2920 §3.2: replies are flushed once the pipelined input is used up.
        if let Err(end) = send(stream, &mut out, limits.command_timeout).await {
            return end;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ =
                say(stream, Reply::new(421, (4, 4, 2), "Session time limit exceeded, closing"), limits.command_timeout)
                    .await;
            return End::Timeout;
        }
        let wait = limits.command_timeout.min(left);
        tokio::select! {
            read = timeout(wait, stream.read(&mut buf)) => match read {
                Ok(Ok(0)) => return End::ClientGone,
                Ok(Ok(n)) => session.receive(&buf[..n]),
                Ok(Err(e)) => return End::Error(e),
                Err(_) => {
                    let _ = say(stream, Reply::new(421, (4, 4, 2), "Timeout, closing connection"), limits.command_timeout).await;
                    return End::Timeout;
                }
            },
            // Between transactions a shutdown closes at once; a message being received
            // is finished first (within the grace period).
            _ = shutdown.changed(), if !session.in_message() => {
                let _ = say(stream, Reply::new(421, (4, 3, 2), "Service shutting down, try again later"), limits.command_timeout).await;
                return End::Shutdown;
            }
        }
    }
}
