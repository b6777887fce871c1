//! The server's TLS: certificate loading (or a self-signed one made at first start)
//! and handshakes for STARTTLS, implicit TLS and HTTPS. A reload makes a new
//! `ServerTls`; sessions keep the one they started with. An ACME certificate, when
//! there is one, is chosen at each handshake over the loaded one ([`crate::acme`]),
//! so that a renewed certificate reaches every listener at once.

use crate::acme::CertificateInfo;
use crate::metrics::CertSource;
use crate::net::Stream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Serves the ACME certificate when there is one, else the one loaded; on the HTTPS
/// listener, the tls-alpn-01 challenge certificates too.
#[derive(Debug)]
struct Resolver {
    loaded: Arc<CertifiedKey>,
    challenges: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let live = crate::acme::live();
        // RFC 8737 §3: a validation handshake offers ALPN acme-tls/1 and names the
        // host in SNI; it gets the challenge certificate or nothing.
        if self.challenges && hello.alpn().is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN)) {
            return hello.server_name().and_then(|name| live.alpn_certificate(name));
        }
        Some(live.certificate().unwrap_or_else(|| self.loaded.clone()))
    }
}

/// ALPN protocols of the HTTPS listener.
const HTTPS_ALPN: [&[u8]; 2] = [b"http/1.1", crate::acme::ACME_TLS_ALPN];

pub struct ServerTls {
    acceptor: TlsAcceptor,
    https: TlsAcceptor,
    /// The certificate of `[tls]` (or the self-signed one).
    loaded: CertificateInfo,
}

fn load(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(certified)
}

/// Reads a certificate and its key as `serve` does (for `tern config check`).
pub fn check_files(cert: &Path, key: &Path) -> Result<(), String> {
    load(&rustls::crypto::aws_lc_rs::default_provider(), cert, key).map(|_| ())
}

/// Makes a self-signed certificate for `hostname` in `dir` unless one is there.
fn self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let key_pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, hostname);
    let made = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
    let private = crate::files::Access::PRIVATE;
    crate::files::create_dir_all(dir, private).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Both owner-only, like everything else in the data directory.
    let write = |path: &Path, text: String| -> Result<(), String> {
        use std::io::Write;
        let mut f = crate::files::create_file(path, private, false).map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&key, key_pair.serialize_pem())?;
    write(&cert, made.pem())?;
    tracing::warn!(cert = %cert.display(), hostname, "no [tls] certificate configured: made a self-signed one");
    Ok((cert, key))
}

impl ServerTls {
    /// The configured certificate, or a self-signed one kept in `<data_dir>/tls/`.
    pub fn new(config: &crate::config::Config) -> Result<ServerTls, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (cert, key, source) = match (&config.tls.cert, &config.tls.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), CertSource::File),
            _ => {
                let (c, k) = self_signed(&config.data_dir.join("tls"), &config.hostname)?;
                (c, k, CertSource::SelfSigned)
            }
        };
        let loaded = Arc::new(load(&provider, &cert, &key)?);
        let validity =
            crate::acme::stored::validity(loaded.cert[0].as_ref()).map_err(|e| format!("{}: {e}", cert.display()))?;
        let metrics = crate::metrics::get();
        for s in [CertSource::File, CertSource::SelfSigned] {
            metrics.certificate_expiry(s, if s == source { validity.not_after } else { 0 });
        }
        let info = CertificateInfo {
            source: source.name().to_string(),
            names: validity.names,
            not_after: validity.not_after,
            in_use: true,
        };
        let build = |challenges: bool| -> Result<ServerConfig, String> {
            // TLS 1.2 and 1.3 only: rustls implements nothing older.
            Ok(ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver { loaded: loaded.clone(), challenges })))
        };
        let mut https = build(true)?;
        https.alpn_protocols = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(build(false)?)),
            https: TlsAcceptor::from(Arc::new(https)),
            loaded: info,
        })
    }

    /// The certificates listeners may serve: the ACME one (when there is one, in
    /// use) and the loaded one.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let mut all = Vec::new();
        let acme = crate::acme::live().certificate();
        if let Some(v) = acme.as_ref().and_then(|c| crate::acme::stored::validity(c.cert[0].as_ref()).ok()) {
            all.push(CertificateInfo { source: "acme".into(), names: v.names, not_after: v.not_after, in_use: true });
        }
        all.push(CertificateInfo { in_use: acme.is_none(), ..self.loaded.clone() });
        all
    }

    /// The server side of an HTTPS handshake (ALPN `http/1.1` or `acme-tls/1`).
    pub async fn accept_https(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        self.https.accept(stream).await
    }

    /// Runs the server side of a handshake; returns the stream and a description
    /// like `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`.
    pub async fn accept(&self, stream: Box<dyn Stream>) -> std::io::Result<(Box<dyn Stream>, String)> {
        let metrics = crate::metrics::get();
        let tls = self.acceptor.accept(stream).await.inspect_err(|_| {
            metrics.tls_handshake(crate::metrics::Direction::Inbound, crate::metrics::TlsOutcome::Failed)
        })?;
        let (_, conn) = tls.get_ref();
        metrics.tls_version(crate::metrics::Direction::Inbound, conn.protocol_version());
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        let cipher = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        Ok((Box::new(tls), format!("{version} with cipher {cipher}")))
    }
}
