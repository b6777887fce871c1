//! TLS towards other servers. Opportunistic STARTTLS (RFC 7435) accepts any
//! certificate, because an unverified certificate still beats plaintext; the result
//! is then classified by checking the certificate against the trust roots.

use super::client::{ConnError, Stream};
use crate::reports::tls::ResultType;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// How well a connection was protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLevel {
    None,
    /// Encrypted, but the certificate did not verify.
    Encrypted,
    /// Encrypted, and the certificate matches the host name and a trusted root.
    Verified,
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsLevel::None => "none",
            TlsLevel::Encrypted => "encrypted",
            TlsLevel::Verified => "verified",
        })
    }
}

/// Accepts any certificate but still checks the handshake signatures: for
/// opportunistic TLS, and for clients of servers with self-signed certificates.
#[derive(Debug)]
pub struct AcceptAny(Arc<CryptoProvider>);

impl AcceptAny {
    pub fn new(provider: Arc<CryptoProvider>) -> AcceptAny {
        AcceptAny(provider)
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS client settings shared by all outbound connections.
pub struct TlsClient {
    connector: TlsConnector,
    verifier: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Trust roots: the system's, plus the certificates in `ca_file` if given.
    pub fn new(ca_file: Option<&Path>) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("TLS trust roots: {e}"))?;
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        Ok(TlsClient { connector: TlsConnector::from(Arc::new(config)), verifier })
    }

    /// Runs the handshake on `stream`; says how well the peer was verified, and the
    /// version and cipher (`TLSv1.3/TLS13_AES_256_GCM_SHA384`).
    pub async fn handshake(
        &self,
        stream: Box<dyn Stream>,
        host: &str,
    ) -> Result<(Box<dyn Stream>, TlsLevel, String), ConnError> {
        self.handshake_checked(stream, host).await.map(|(s, level, cipher, _)| (s, level, cipher))
    }

    /// [`handshake`](Self::handshake), and why the certificate did not verify, as
    /// TLS-RPT names it (RFC 8460 §4.3.2), when it did not.
    pub async fn handshake_checked(
        &self,
        stream: Box<dyn Stream>,
        host: &str,
    ) -> Result<(Box<dyn Stream>, TlsLevel, String, Option<ResultType>), ConnError> {
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| ConnError(format!("bad TLS name {host}: {e}")))?;
        let metrics = crate::metrics::get();
        let tls = self.connector.connect(name.clone(), stream).await.map_err(|e| {
            metrics.tls_handshake(crate::metrics::Direction::Outbound, crate::metrics::TlsOutcome::Failed);
            ConnError(format!("TLS handshake failed: {e}"))
        })?;
        metrics.tls_version(crate::metrics::Direction::Outbound, tls.get_ref().1.protocol_version());
        let (level, problem) = match tls.get_ref().1.peer_certificates() {
            Some([end_entity, intermediates @ ..]) => {
                match self.verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()) {
                    Ok(_) => (TlsLevel::Verified, None),
                    Err(e) => (TlsLevel::Encrypted, Some(ResultType::of_certificate_error(&e))),
                }
            }
            _ => (TlsLevel::Encrypted, Some(ResultType::ValidationFailure)),
        };
        let cipher = negotiated(tls.get_ref().1);
        Ok((Box::new(tls), level, cipher, problem))
    }
}

/// `TLSv1.3/TLS13_AES_256_GCM_SHA384`: the version and cipher suite of a connection.
fn negotiated(conn: &rustls::ClientConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    let cipher = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    format!("{version}/{cipher}")
}
