//! `tern dane tlsa`: the TLSA record (RFC 6698, RFC 7671) that pins the certificate
//! Tern's SMTP listeners present, for publishing under `_PORT._tcp.HOSTNAME`.

use crate::config::Config;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::PathBuf;
use std::process::ExitCode;

/// RFC 6698 §2.1.2: what is matched, the whole certificate or its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// 0: the full certificate.
    Cert,
    /// 1: the SubjectPublicKeyInfo, which survives renewals that keep the key.
    Spki,
}

/// Prints `_PORT._tcp.HOSTNAME. IN TLSA 3 S 1 HEX` for the configured certificate (or
/// the self-signed one the server made in `<data_dir>/tls/`): usage 3 (DANE-EE,
/// RFC 7672 §3.1.1), matching type 1 (SHA-256).
pub fn tlsa(config: &Config, port: u16, selector: Selector) -> ExitCode {
    match record(config, port, selector) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

fn record(config: &Config, port: u16, selector: Selector) -> Result<String, String> {
    let path = certificate_file(config)?;
    let first = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate found", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (number, data) = match selector {
        Selector::Cert => (0, first.as_ref().to_vec()),
        Selector::Spki => {
            let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
                .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
            (1, cert.tbs_certificate.subject_pki.raw.to_vec())
        }
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let host = config.hostname.trim_end_matches('.');
    Ok(format!("_{port}._tcp.{host}. IN TLSA 3 {number} 1 {hex}"))
}

/// The certificate from ACME once obtained (its key is kept across renewals), else
/// `[tls] cert`, else the self-signed certificate of `<data_dir>/tls/` once the server
/// has made it.
fn certificate_file(config: &Config) -> Result<PathBuf, String> {
    let acme = crate::acme::stored::cert_file(&crate::acme::stored::dir(&config.data_dir));
    if config.acme.is_some() && acme.exists() {
        return Ok(acme);
    }
    if let Some(cert) = &config.tls.cert {
        return Ok(cert.clone());
    }
    let made = config.data_dir.join("tls/self-signed.crt");
    if made.exists() {
        return Ok(made);
    }
    Err(format!(
        "no [tls] cert is configured and the server has not made its self-signed one ({}) yet: \
         start it once, or configure the certificate to publish",
        made.display()
    ))
}
