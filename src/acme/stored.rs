//! `<data_dir>/acme/`: the account (`account.json`) and the certificate in force
//! (`cert.pem`, chain leaf first, and `key.pem`), every file owner-only.

use crate::files::Access;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

/// The certificate's private key, PEM.
pub fn key_file(dir: &Path) -> PathBuf {
    dir.join(KEY)
}

/// The certificate chain, PEM, leaf first.
pub fn cert_file(dir: &Path) -> PathBuf {
    dir.join(CERT)
}

const ACCOUNT: &str = "account.json";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// DNS names of its subjectAltName, lower-case.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    pub fn lifetime(&self) -> i64 {
        self.not_after - self.not_before
    }
}

/// The names and validity of a DER certificate.
pub fn validity(der: &[u8]) -> Result<Validity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    let v = cert.validity();
    Ok(Validity { names, not_before: v.not_before.timestamp(), not_after: v.not_after.timestamp() })
}

/// A certificate chain and key in PEM, checked to belong together.
pub fn certified(provider: &CryptoProvider, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem).collect::<Result<_, _>>().map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| format!("key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(certified)
}

/// The stored certificate with its validity; `Ok(None)` when there is none.
pub fn load(dir: &Path, provider: &CryptoProvider) -> Result<Option<(Arc<CertifiedKey>, Validity)>, String> {
    let (cert, key) = (dir.join(CERT), dir.join(KEY));
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certified = certified(provider, &read(&cert)?, &read(&key)?).map_err(|e| format!("{}: {e}", dir.display()))?;
    let validity = validity(certified.cert[0].as_ref()).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(Some((Arc::new(certified), validity)))
}

/// Writes `path` owner-only, through a temporary file renamed into place.
fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("new");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = crate::files::create_file(&tmp, Access::PRIVATE, false).map_err(err)?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn ensure_dir(dir: &Path) -> Result<(), String> {
    crate::files::create_dir_all(dir, Access::PRIVATE).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Keeps a new certificate and its key (the key first: a crash between the two
/// leaves a pair that does not match, which is ordered again).
pub fn save(dir: &Path, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    ensure_dir(dir)?;
    write_private(&dir.join(KEY), key_pem.as_bytes())?;
    write_private(&dir.join(CERT), chain_pem.as_bytes())
}

/// The account kept for `directory`; `Ok(None)` when there is none (or it is an
/// account of another ACME server).
pub fn load_account(dir: &Path, directory: &str) -> Result<Option<instant_acme::AccountCredentials>, String> {
    let path = dir.join(ACCOUNT);
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let kept: KeptAccount = serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((kept.directory == directory).then_some(kept.credentials))
}

pub fn save_account(dir: &Path, directory: &str, credentials: instant_acme::AccountCredentials) -> Result<(), String> {
    ensure_dir(dir)?;
    let kept = KeptAccount { directory: directory.to_string(), credentials };
    let data = serde_json::to_vec_pretty(&kept).map_err(|e| e.to_string())?;
    write_private(&dir.join(ACCOUNT), &data)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptAccount {
    directory: String,
    credentials: instant_acme::AccountCredentials,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_certificate_loads_owner_only_with_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mx.example.test".to_string(), "b.test".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        save(dir.path(), &cert.pem(), &key.serialize_pem()).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let (_, validity) = load(dir.path(), &provider).unwrap().unwrap();
        assert_eq!(validity.names, ["mx.example.test", "b.test"]);
        assert!(validity.not_after > validity.not_before);
        for f in [CERT, KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // A key of another certificate is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join(KEY), other.serialize_pem()).unwrap();
        assert!(load(dir.path(), &provider).unwrap_err().contains("does not match"));
    }
}
