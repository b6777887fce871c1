//! DKIM private keys: reading them from PEM, making new ones, and the DNS record
//! (RFC 6376 §3.6.1, RFC 8463) that publishes their public half.

use crate::config::DkimAlgorithm;
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A DKIM private key, as DER, with its algorithm.
pub struct KeyFile {
    pub algorithm: DkimAlgorithm,
    der: PrivateKeyDer<'static>,
}

impl KeyFile {
    /// Makes a new key: RSA 2048 bits, or Ed25519.
    pub fn generate(algorithm: DkimAlgorithm) -> Result<KeyFile, String> {
        let pkcs8 = match algorithm {
            DkimAlgorithm::RsaSha256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|k| k.as_der())
                .map(|d| d.as_ref().to_vec())
                .map_err(|e| format!("cannot make an RSA key: {e}"))?,
            DkimAlgorithm::Ed25519Sha256 => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec())
                .map_err(|e| format!("cannot make an Ed25519 key: {e}"))?,
        };
        Ok(KeyFile { algorithm, der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)) })
    }

    /// Reads a PEM key (PKCS#8, or PKCS#1 for RSA) that must be of `algorithm`.
    pub fn parse_pem(pem: &[u8], algorithm: DkimAlgorithm) -> Result<KeyFile, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no PEM private key: {e}"))?;
        let key = KeyFile { algorithm, der };
        key.public_key().map_err(|e| format!("not an {} key: {e}", algorithm.name()))?;
        Ok(key)
    }

    /// The key as PEM: PKCS#1 when it was read so, PKCS#8 otherwise (the only other
    /// form `parse_pem` and `generate` make).
    pub fn to_pem(&self) -> String {
        let (label, der) = match &self.der {
            PrivateKeyDer::Pkcs1(d) => ("RSA PRIVATE KEY", d.secret_pkcs1_der()),
            other => ("PRIVATE KEY", other.secret_der()),
        };
        let b64 = STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// The public key as DKIM publishes it: SubjectPublicKeyInfo for RSA, the raw
    /// 32 bytes for Ed25519 (RFC 8463 §4.2).
    pub fn public_key(&self) -> Result<Vec<u8>, String> {
        let err = |e: aws_lc_rs::error::KeyRejected| e.to_string();
        match (self.algorithm, &self.der) {
            (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(d)) => {
                spki(RsaKeyPair::from_der(d.secret_pkcs1_der()).map_err(err)?)
            }
            (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(d)) => {
                spki(RsaKeyPair::from_pkcs8(d.secret_pkcs8_der()).map_err(err)?)
            }
            (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(d)) => {
                Ok(Ed25519KeyPair::from_pkcs8_maybe_unchecked(d.secret_pkcs8_der())
                    .map_err(err)?
                    .public_key()
                    .as_ref()
                    .to_vec())
            }
            _ => Err("unsupported key format".into()),
        }
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> Result<String, String> {
        let k = match self.algorithm {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        Ok(format!("v=DKIM1; k={k}; p={}", STANDARD.encode(self.public_key()?)))
    }

    /// The key ready to sign.
    pub fn signing_key(&self) -> Result<SigningKey, String> {
        let err = |e: aws_lc_rs::error::KeyRejected| e.to_string();
        match (self.algorithm, &self.der) {
            (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(d)) => {
                Ok(SigningKey::Rsa(RsaKeyPair::from_der(d.secret_pkcs1_der()).map_err(err)?))
            }
            (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(d)) => {
                Ok(SigningKey::Rsa(RsaKeyPair::from_pkcs8(d.secret_pkcs8_der()).map_err(err)?))
            }
            (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(d)) => {
                Ok(SigningKey::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(d.secret_pkcs8_der()).map_err(err)?))
            }
            _ => Err("unsupported key format".into()),
        }
    }
}

/// A private key that signs the canonical header data of a DKIM signature.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl SigningKey {
    pub fn algorithm(&self) -> DkimAlgorithm {
        match self {
            SigningKey::Rsa(_) => DkimAlgorithm::RsaSha256,
            SigningKey::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// `b=` for `data`: RSASSA-PKCS1-v1_5 over SHA-256 (RFC 6376 §3.3.1), or Ed25519
    /// over the SHA-256 digest of the data (RFC 8463 §3).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            SigningKey::Rsa(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig).map_err(|e| e.to_string())?;
                Ok(sig)
            }
            SigningKey::Ed25519(key) => Ok(key.sign(digest::digest(&digest::SHA256, data).as_ref()).as_ref().to_vec()),
        }
    }
}

fn spki(key: RsaKeyPair) -> Result<Vec<u8>, String> {
    key.public_key().as_der().map(|d| d.as_ref().to_vec()).map_err(|e| e.to_string())
}

impl DkimAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_read_back_and_publish() {
        for alg in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
            let key = KeyFile::generate(alg).unwrap();
            let pem = key.to_pem();
            let again = KeyFile::parse_pem(pem.as_bytes(), alg).unwrap();
            assert_eq!(key.dns_record().unwrap(), again.dns_record().unwrap());
            assert!(again.signing_key().is_ok());
        }
        let rsa = KeyFile::generate(DkimAlgorithm::RsaSha256).unwrap();
        assert!(KeyFile::parse_pem(rsa.to_pem().as_bytes(), DkimAlgorithm::Ed25519Sha256).is_err());
        let ed = KeyFile::generate(DkimAlgorithm::Ed25519Sha256).unwrap();
        assert!(ed.dns_record().unwrap().starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(ed.public_key().unwrap().len(), 32);
    }
}
