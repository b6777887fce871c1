//! TLS towards other servers. Opportunistic STARTTLS (RFC 7435) accepts any
//! certificate, because an unverified certificate still beats plaintext; the result
//! is then classified by checking the certificate against the trust roots.

use super::client::{ConnError, Stream};
use crate::reports::tls::ResultType;
use crate::tls_policy::dane::{DaneCheck, DaneFailure};
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
    /// Encrypted, and the certificate matched the host's DANE TLSA records (RFC 7672).
    Dane,
}

impl TlsLevel {
    /// The server proved who it is: a verified certificate, or one DANE vouched for.
    pub fn is_authenticated(self) -> bool {
        matches!(self, TlsLevel::Verified | TlsLevel::Dane)
    }
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsLevel::None => "none",
            TlsLevel::Encrypted => "encrypted",
            TlsLevel::Verified => "verified",
            TlsLevel::Dane => "dane",
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

/// The system's trusted roots.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// Adds the certificates of the PEM file `path` to `roots`.
pub fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The system's roots plus the certificates in `ca_file`, if given.
pub fn trust_roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = system_roots();
    if let Some(path) = ca_file {
        add_pem_file(&mut roots, path)?;
    }
    Ok(roots)
}

/// TLS client settings shared by all outbound connections.
pub struct TlsClient {
    connector: TlsConnector,
    verifier: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
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
        let roots = trust_roots(ca_file)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("TLS trust roots: {e}"))?;
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
            .with_no_client_auth();
        Ok(TlsClient { connector: TlsConnector::from(Arc::new(config)), verifier, provider })
    }

    /// Runs the handshake on `stream`; says how well the peer was verified, and the
    /// version and cipher (`TLSv1.3/TLS13_AES_256_GCM_SHA384`). With `dane`, the
    /// certificate must match its TLSA records instead (RFC 7672 §3): a mismatch is an
    /// error, its kind noted in `dane`.
    pub async fn handshake(
        &self,
        stream: Box<dyn Stream>,
        host: &str,
        dane: Option<&DaneCheck>,
    ) -> Result<(Box<dyn Stream>, TlsLevel, String), ConnError> {
        self.handshake_checked(stream, host, dane).await.map(|(s, level, cipher, _)| (s, level, cipher))
    }

    /// [`handshake`](Self::handshake), and why the certificate did not verify, as
    /// TLS-RPT names it (RFC 8460 §4.3.2), when it did not.
    pub async fn handshake_checked(
        &self,
        stream: Box<dyn Stream>,
        host: &str,
        dane: Option<&DaneCheck>,
    ) -> Result<(Box<dyn Stream>, TlsLevel, String, Option<ResultType>), ConnError> {
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| ConnError(format!("bad TLS name {host}: {e}")))?;
        let metrics = crate::metrics::get();
        let tls = self.connector.connect(name.clone(), stream).await.map_err(|e| {
            metrics.tls_handshake(crate::metrics::Direction::Outbound, crate::metrics::TlsOutcome::Failed);
            if let Some(check) = dane {
                check.fail(DaneFailure::ValidationFailure);
            }
            ConnError(format!("TLS handshake failed: {e}"))
        })?;
        metrics.tls_version(crate::metrics::Direction::Outbound, tls.get_ref().1.protocol_version());
        let cipher = negotiated(tls.get_ref().1);
        if let Some(check) = dane {
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            check
                .verify(chain, &self.provider)
                .map_err(|kind| ConnError(format!("DANE: the certificate does not match the TLSA records ({kind})")))?;
            return Ok((Box::new(tls), TlsLevel::Dane, cipher, None));
        }
        let (level, problem) = match tls.get_ref().1.peer_certificates() {
            Some([end_entity, intermediates @ ..]) => {
                match self.verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now()) {
                    Ok(_) => (TlsLevel::Verified, None),
                    Err(e) => (TlsLevel::Encrypted, Some(ResultType::of_certificate_error(&e))),
                }
            }
            _ => (TlsLevel::Encrypted, Some(ResultType::ValidationFailure)),
        };
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
