//! Fetching a policy file: `https://mta-sts.<domain>/.well-known/mta-sts.txt` over
//! HTTPS with a certificate verified for `mta-sts.<domain>` (RFC 8461 §3.3).

use crate::delivery::remote::{TlsClient, TlsLevel};
use crate::dns::Dns;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest policy file accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;
/// Time allowed for the whole fetch from one address (RFC 8461 §3.3: "e.g. 60 s").
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTPS port.
const PORT: u16 = 443;

/// The policy file body of `domain`, or why it could not be had.
pub async fn fetch(tls: &TlsClient, dns: &Dns, allow_loopback: bool, domain: &str) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let ips = dns.addresses(&host).await.map_err(|e| format!("no address for {host}: {e:?}"))?;
    let mut last = format!("no usable address for {host}");
    for ip in ips {
        if !allow_loopback && (ip.is_loopback() || ip.is_unspecified()) {
            continue;
        }
        let addr = SocketAddr::new(ip, PORT);
        match tokio::time::timeout(FETCH_TIMEOUT, get(tls, &host, addr)).await {
            Ok(Ok(text)) => return Ok(text),
            Ok(Err(e)) => last = format!("{host} [{ip}]: {e}"),
            Err(_) => last = format!("{host} [{ip}]: timed out"),
        }
    }
    Err(last)
}

/// One GET of the policy from `addr`.
async fn get(tls: &TlsClient, host: &str, addr: SocketAddr) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
    let (stream, level, _) = tls.handshake(Box::new(tcp), host, None).await.map_err(|e| e.0)?;
    if level != TlsLevel::Verified {
        return Err(format!("certificate not verified for {host}"));
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot make the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP exchange failed: {e}"))?;
        // §3.3: redirects are not followed; anything but 200 is a failure.
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let content_type =
            response.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/plain") {
            return Err(format!("Content-Type is {content_type:?}, not text/plain"));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY)
            .collect()
            .await
            .map_err(|e| format!("cannot read the policy (at most {MAX_POLICY} bytes): {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8".to_string())
    }
    .await;
    conn.abort();
    result
}
