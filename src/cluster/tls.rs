//! TLS to the database with rustls, following libpq's `sslmode`: `require` encrypts
//! without checking the certificate, `verify-ca` checks it against the trusted roots,
//! `verify-full` also checks that it names the host.

use crate::delivery::remote::{AcceptAny, add_pem_file, system_roots};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the database's certificate is checked (libpq's `sslmode` beyond tokio-postgres's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `disable`, `prefer`, `require`: encryption only (libpq checks nothing either).
    Nothing,
    /// `verify-ca`: a chain to a trusted root, whatever name it carries.
    Chain,
    /// `verify-full`: a chain to a trusted root naming the host.
    Full,
}

/// The connector for `verify`, trusting `ca_file` (PEM) or the system's roots.
pub fn connector(verify: Verify, ca_file: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match verify {
        Verify::Nothing => {
            // `sslmode=require`: any certificate, as libpq does.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny::new(provider)))
                .with_no_client_auth()
        }
        Verify::Full => builder.with_root_certificates(roots(ca_file)?).with_no_client_auth(),
        Verify::Chain => {
            let roots = Arc::new(roots(ca_file)?);
            let inner = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, inner, provider }))
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// What was wrong with the database's certificate, when `cause` is its refusal.
pub fn describe(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    let refusal = cause
        .downcast_ref::<std::io::Error>()
        .and_then(|e| e.get_ref())
        .and_then(|e| e.downcast_ref::<Error>())
        .or_else(|| cause.downcast_ref::<Error>())?;
    let Error::InvalidCertificate(problem) = refusal else { return None };
    Some(match problem {
        CertificateError::UnknownIssuer => {
            "the server's certificate is not signed by a trusted CA (cluster.ca_file, else the system's roots)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("the server's certificate does not name the host of cluster.database ({refusal})")
        }
        _ => format!("the server's certificate is refused ({refusal})"),
    })
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    // As libpq's `sslrootcert`: the file replaces the system's roots.
    let roots = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            add_pem_file(&mut roots, path)?;
            roots
        }
        None => system_roots(),
    };
    if roots.is_empty() {
        return Err("no trusted CA certificate for the database".into());
    }
    Ok(roots)
}

/// `sslmode=verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    inner: Arc<WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
