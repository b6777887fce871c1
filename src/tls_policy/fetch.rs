//! Fetching a policy file: `https://mta-sts.<domain>/.well-known/mta-sts.txt` over
//! HTTPS with a certificate verified for `mta-sts.<domain>` (RFC 8461 §3.3).

use crate::delivery::remote::{TlsClient, TlsLevel};
use crate::dns::Dns;
use crate::metrics::StsFetch;
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

/// Why a policy could not be fetched, with its metric label.
#[derive(Debug, Clone)]
pub struct FetchError {
    pub kind: StsFetch,
    pub detail: String,
}

fn error(kind: StsFetch, detail: impl Into<String>) -> FetchError {
    FetchError { kind, detail: detail.into() }
}

/// The policy file body of `domain`, or why it could not be had.
pub async fn fetch(tls: &TlsClient, dns: &Dns, allow_loopback: bool, domain: &str) -> Result<String, FetchError> {
    let host = format!("mta-sts.{domain}");
    let ips =
        dns.addresses(&host).await.map_err(|e| error(StsFetch::Error, format!("no address for {host}: {e:?}")))?;
    let mut last = error(StsFetch::Error, format!("no usable address for {host}"));
    for ip in ips {
        if !allow_loopback && (ip.is_loopback() || ip.is_unspecified()) {
            continue;
        }
        let addr = SocketAddr::new(ip, PORT);
        match tokio::time::timeout(FETCH_TIMEOUT, get(tls, &host, addr)).await {
            Ok(Ok(text)) => return Ok(text),
            Ok(Err(e)) => last = FetchError { detail: format!("{host} [{ip}]: {}", e.detail), ..e },
            Err(_) => {
                let detail = format!("{host} [{ip}]: not fetched within {}s", FETCH_TIMEOUT.as_secs());
                last = error(StsFetch::Timeout, detail);
            }
        }
    }
    Err(last)
}

/// One GET of the policy from `addr`.
async fn get(tls: &TlsClient, host: &str, addr: SocketAddr) -> Result<String, FetchError> {
    let failed = |detail: String| error(StsFetch::Error, detail);
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| failed(format!("cannot connect: {e}")))?;
    let (stream, level, _) = tls.handshake(Box::new(tcp), host, None).await.map_err(|e| failed(e.0))?;
    if level != TlsLevel::Verified {
        return Err(error(StsFetch::Certificate, format!("certificate not verified for {host}")));
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(format!("HTTP handshake failed: {e}")))?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(format!("cannot make the request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| failed(format!("HTTP exchange failed: {e}")))?;
        // §3.3: redirects are not followed; anything but 200 is a failure.
        if response.status() != hyper::StatusCode::OK {
            let location = response.headers().get(hyper::header::LOCATION).and_then(|v| v.to_str().ok());
            let moved = location.map(|l| format!(" (redirect to {l} not followed)")).unwrap_or_default();
            return Err(error(StsFetch::HttpStatus, format!("HTTP status {}{moved}", response.status())));
        }
        let content_type =
            response.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/plain") {
            return Err(error(StsFetch::ContentType, format!("Content-Type is {content_type:?}, not text/plain")));
        }
        let too_big = || error(StsFetch::TooBig, format!("policy larger than {MAX_POLICY} bytes"));
        // A declared length over the limit is refused before any of the body is read.
        let declared = response.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        if declared.and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > MAX_POLICY as u64) {
            return Err(too_big());
        }
        // Otherwise reading stops as soon as the limit is passed.
        let body = match Limited::new(response.into_body(), MAX_POLICY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_big()),
            Err(e) => return Err(failed(format!("cannot read the policy: {e}"))),
        };
        String::from_utf8(body.to_vec()).map_err(|_| error(StsFetch::Invalid, "policy is not UTF-8"))
    }
    .await;
    conn.abort();
    result
}
