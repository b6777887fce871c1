//! The admin API's bearer token: 32 random bytes in hex, kept in a file only the
//! owner can read, made at first start.

use std::io::Write;
use std::path::Path;

/// The token the server expects.
pub struct Token {
    /// SHA-256 of the token: what requests are compared with, at a fixed length.
    digest: Vec<u8>,
}

impl Token {
    /// Reads the token file, making it (mode 0600, never over an existing file) when
    /// it is missing. An empty file is an error rather than a token anyone could send.
    pub fn load_or_create(path: &Path) -> Result<Token, String> {
        let read = |text: String| {
            let token = text.trim();
            if token.is_empty() {
                return Err(format!("admin token file {} is empty", path.display()));
            }
            Ok(Token::new(token))
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return read(text),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot read admin token file {}: {e}", path.display()));
            }
            Err(_) => {}
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for the admin token: {e}"))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let written = crate::files::create_file(path, crate::files::Access::PRIVATE, true)
            .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()).and_then(|_| f.sync_all()));
        match written {
            Ok(()) => {
                tracing::info!(file = %path.display(), "admin token made");
                Ok(Token::new(&token))
            }
            // Made meanwhile by someone else: theirs counts.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                read(std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
            }
            Err(e) => Err(format!("cannot write admin token file {}: {e}", path.display())),
        }
    }

    fn new(token: &str) -> Token {
        Token { digest: digest(token) }
    }

    /// True when `presented` is the token; compared in constant time (both sides are
    /// hashed first, so not even the length shows).
    pub fn verify(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&digest(presented), &self.digest).is_ok()
    }
}

fn digest(text: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = Token::load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(first.verify(text.trim()));
        assert!(!first.verify("wrong"));
        assert!(!first.verify(""));
        let again = Token::load_or_create(&path).unwrap();
        assert!(again.verify(text.trim()));
        std::fs::write(&path, "\n").unwrap();
        assert!(Token::load_or_create(&path).is_err());
    }
}
