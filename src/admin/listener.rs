//! The admin listener's sockets and HTTP/1.1 connections, bounded against slow and
//! hostile clients with hyper's own limits:
//!
//! - at most [`MAX_CONNECTIONS`] at once; a client beyond that is closed at once
//!   rather than left waiting;
//! - a request's head (request line and headers) must arrive within
//!   `[admin] header_timeout` of the connection's start, or of the previous answer on
//!   a kept-alive connection, else the connection is closed: a client that sends
//!   nothing, or its headers a byte at a time, holds a slot no longer than that;
//! - a head larger than [`MAX_HEAD`] is answered 431 (a request target beyond hyper's
//!   own limit, 414) and the connection closed.
//!
//! Request bodies are bounded by the routes ([`super::api::MAX_BODY`]).

use crate::log_limit::{self, LogLimit};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connections the admin listener serves at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The largest request head read, in bytes (hyper's read buffer).
pub const MAX_HEAD: usize = 16 * 1024;

/// Serves `app` on `listener` until the task is aborted; the connections end with it.
pub async fn serve(listener: TcpListener, app: Router, header_timeout: Duration) {
    static REFUSED: LogLimit = LogLimit::new(log_limit::PERIOD);
    static FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD);
    // Dropped with this task (aborted when the server stops): every connection ends.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(repeats) = FAILED.admit() {
                    tracing::warn!(error = %e, repeats, "admin: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(repeats) = REFUSED.admit() {
                tracing::warn!(client = %peer, limit = MAX_CONNECTIONS, repeats, "admin: too many connections; closed");
            }
            continue;
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        connections.spawn(async move {
            // A timed-out head, a head too large, a client gone: the connection
            // just ends (hyper has answered what deserved an answer).
            if let Err(e) = connection.await {
                tracing::debug!(client = %peer, error = %e, "admin: connection ended");
            }
            drop(slot);
        });
    }
}
