//! The aggregates on disk: `<data_dir>/reports/tls.json` and `dmarc.json`, each
//! replaced whole (written beside, synced, renamed), owner-only.

use super::book::Book;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("reports")
}

/// Writes `book` as `<dir>/<name>.json`.
pub fn save<T: Serialize>(dir: &Path, name: &str, book: &Book<T>) -> io::Result<()> {
    crate::files::create_dir_all(dir, crate::files::Access::PRIVATE)?;
    let path = dir.join(format!("{name}.json"));
    let staging = dir.join(format!(".{name}.json.new"));
    let json = serde_json::to_vec(book).map_err(io::Error::other)?;
    let mut file = crate::files::create_file(&staging, crate::files::Access::PRIVATE, false)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&staging, &path)?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the files, once what they held is kept elsewhere (the cluster's database).
pub fn remove(dir: &Path) {
    for name in ["tls", "dmarc"] {
        let path = dir.join(format!("{name}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "report aggregates moved to the cluster's database"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot remove report aggregates"),
        }
    }
}

/// Reads `<dir>/<name>.json`; nothing there is an empty book. A file that cannot be
/// read is set aside as `<name>.json.bad` (one line says so) rather than stopping the
/// server.
pub fn load<T: DeserializeOwned>(dir: &Path, name: &str) -> Book<T> {
    let path = dir.join(format!("{name}.json"));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Book::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read report aggregates; starting afresh");
            return Book::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(book) => book,
        Err(e) => {
            let bad = dir.join(format!("{name}.json.bad"));
            let _ = std::fs::rename(&path, &bad);
            tracing::error!(path = %path.display(), error = %e, kept = %bad.display(), "report aggregates unreadable; starting afresh");
            Book::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::dmarc::DomainDmarc;
    use crate::reports::tls::{DomainTls, Failure, Outcome, PolicyRecord, ResultType};

    #[test]
    fn aggregates_are_kept_across_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir(tmp.path());
        let mut tls = Book::<DomainTls>::default();
        let entry = tls.entry(86_400, "a.test").unwrap();
        entry.add(PolicyRecord::NoPolicyFound, Outcome::Success);
        entry.add(PolicyRecord::NoPolicyFound, Outcome::Failure(Failure::new(ResultType::StarttlsNotSupported)));
        save(&dir, "tls", &tls).unwrap();
        let mode = std::fs::metadata(dir.join("tls.json")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert_eq!(load::<DomainTls>(&dir, "tls"), tls);
        // Nothing kept yet is an empty book; a damaged file is set aside.
        assert!(load::<DomainDmarc>(&dir, "dmarc").is_empty());
        std::fs::write(dir.join("dmarc.json"), b"{not json").unwrap();
        assert!(load::<DomainDmarc>(&dir, "dmarc").is_empty());
        assert!(dir.join("dmarc.json.bad").exists());
    }
}
