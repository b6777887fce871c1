//! The HTTP listeners (`[[listen]] mode = "http"` and `"https"`): HTTP/1.1 answering
//! only what Tern publishes. HTTPS serves the MTA-STS policy of each local domain at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3) and completes
//! ACME tls-alpn-01 handshakes; plain HTTP serves ACME http-01 tokens at
//! `/.well-known/acme-challenge/<token>` (RFC 8555 §8.3). Everything else is 404.
//! Bounded like the admin listener: a connection cap, and a time limit on the TLS
//! handshake and on each request head.

use super::Context;
use crate::config::ListenMode;
use crate::log_limit::{self, LogLimit};
use crate::metrics::ListenerMetrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// HTTP connections served at once, over all HTTP listeners.
const MAX_CONNECTIONS: usize = 256;
/// Time for a TLS handshake, and for each request head.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read.
const MAX_HEAD: usize = 16 * 1024;

const POLICY_PATH: &str = "/.well-known/mta-sts.txt";
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Serves one connection of an HTTP or HTTPS listener.
pub async fn handle(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: ListenMode,
    counters: Arc<ListenerMetrics>,
) {
    static SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_CONNECTIONS)));
    static REFUSED: LogLimit = LogLimit::new(log_limit::PERIOD);
    let Ok(_slot) = SLOTS.clone().try_acquire_owned() else {
        if let Some(repeats) = REFUSED.admit() {
            tracing::warn!(client = %peer, limit = MAX_CONNECTIONS, repeats, "http: too many connections; closed");
        }
        return;
    };
    counters.active.inc();
    let https = mode == ListenMode::Https;
    let result = if https { serve_tls(ctx, tcp, peer).await } else { serve(ctx, TokioIo::new(tcp), false).await };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "http: connection ended");
    }
    counters.active.dec();
}

async fn serve_tls(ctx: Arc<Context>, tcp: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let Some(tls) = ctx.tls.clone() else { return Err("no TLS".into()) };
    let stream = match tokio::time::timeout(TIMEOUT, tls.accept_https(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    // RFC 8737 §3: a tls-alpn-01 validation ends with the handshake.
    if stream.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
        tracing::info!(client = %peer, "ACME: tls-alpn-01 validation handshake");
        return Ok(());
    }
    serve(ctx, TokioIo::new(stream), true).await
}

async fn serve<S>(ctx: Arc<Context>, io: TokioIo<S>, https: bool) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(TIMEOUT).max_buf_size(MAX_HEAD);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(answer(&ctx, https, &req)) }
    });
    http.serve_connection(io, service).await.map_err(|e| e.to_string())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    response
}

fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, "not found\n".into())
}

/// The host asked for: the Host header without its port, lower-case.
fn host(req: &Request<Incoming>) -> Option<String> {
    let raw = req.headers().get(header::HOST)?.to_str().ok()?;
    let host = match raw.strip_prefix('[') {
        Some(literal) => literal.split(']').next().unwrap_or(""),
        None => raw.split(':').next().unwrap_or(""),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// The answer to one request.
fn answer(ctx: &Context, https: bool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    if https && path == POLICY_PATH {
        let config = &ctx.config;
        let Some(host) = host(req) else { return not_found() };
        if crate::tls_policy::publish::domain_of_policy_host(config, &host).is_none() {
            return not_found();
        }
        return match crate::tls_policy::publish::policy(config) {
            Some((policy, _)) => text(StatusCode::OK, policy),
            None => not_found(),
        };
    }
    if !https && let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match crate::acme::live().http_token(token) {
            Some(key_authorization) => {
                tracing::info!(token, "ACME: http-01 token served");
                text(StatusCode::OK, key_authorization)
            }
            None => not_found(),
        };
    }
    not_found()
}
