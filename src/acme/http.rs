//! The HTTPS client instant-acme talks through: one connection per request, the ACME
//! server's certificate verified against the system's roots plus `[acme] ca_file`,
//! every exchange bounded in time and size.

use http_body_util::{BodyExt, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// Time allowed for one request, connection and answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a certificate chain is a few KiB).
const MAX_BODY: usize = 1 << 20;

pub struct Client {
    tls: TlsConnector,
}

impl Client {
    /// Trusts the system's roots and the certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Client, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = crate::delivery::remote::trust_roots(ca_file)?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client { tls: TlsConnector::from(Arc::new(config)) })
    }
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string().into())
}

impl HttpClient for Client {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let url = req.uri().to_string();
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(result) => result.map_err(|e| other(format!("{url}: {e}"))),
                Err(_) => Err(other(format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))),
            }
        })
    }
}

async fn send(tls: TlsConnector, mut req: hyper::Request<BodyWrapper<Bytes>>) -> Result<BytesResponse, String> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err("not an https:// URL".into());
    }
    let host = uri.host().ok_or("no host in the URL")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect: {e}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("bad TLS name {host}: {e}"))?;
    let stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host);
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    *req.uri_mut() = path.parse().map_err(|e| format!("bad path: {e}"))?;
    req.headers_mut().insert(hyper::header::HOST, authority.parse().map_err(|e| format!("bad host: {e}"))?);
    let result = async {
        let response = sender.send_request(req).await.map_err(|e| format!("HTTP exchange failed: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("cannot read the answer (at most {MAX_BODY} bytes): {e}"))?
            .to_bytes();
        Ok(BytesResponse { parts, body: Box::new(body) })
    }
    .await;
    conn.abort();
    result
}
