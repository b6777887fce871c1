//! Answers to the ACME server's challenges: the tls-alpn-01 certificate (RFC 8737 §3)
//! and the http-01 key authorization (RFC 8555 §8.3), opened in [`super::live`] for
//! the listeners while an order waits for validation.

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

/// The ALPN protocol of tls-alpn-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A self-signed certificate for `name` carrying the critical acmeIdentifier
/// extension with the SHA-256 digest of the key authorization (RFC 8737 §3).
pub fn alpn_certificate(provider: &CryptoProvider, name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not through `stored::certified`: its key check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension it does not know.
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    let signing = provider.key_provider.load_private_key(der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_certificate_names_the_host_and_carries_the_digest() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let digest = [7u8; 32];
        let cert = alpn_certificate(&provider, "mx.example.test", &digest).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes: the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        assert_eq!(super::super::stored::validity(cert.cert[0].as_ref()).unwrap().names, ["mx.example.test"]);
    }
}
