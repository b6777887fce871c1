//! Maildir delivery (<https://cr.yp.to/proto/maildir.html>), in the layout Dovecot reads
//! with `mail_location = maildir:<mail_root>/%d/%n`.
//!
//! A message is written to `tmp/`, synced, renamed into `new/`, and `new/` is synced, so
//! a delivery that reported success survives a crash.

use super::Failure;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The host part of Maildir names, with `/` and `:` escaped as the spec asks.
pub fn host_for_names(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// A unique file name: `<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>` (Dovecot's form).
fn unique_name(host: &str, size: usize) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{}.{},S={}", now.as_secs(), now.subsec_micros(), std::process::id(), n, host, size)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a directory if missing; a new entry is made durable by syncing its parent.
fn create_dir_synced(dir: &Path, parent: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `<dir>/{tmp,new,cur}` as far as it is missing.
fn ensure_subdirs(dir: &Path) -> io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        create_dir_synced(&dir.join(sub), dir)?;
    }
    Ok(())
}

/// Creates `<root>/<domain>/<mailbox>/{tmp,new,cur}` as far as it is missing, and the
/// Maildir++ folder `.<folder>/` in it when one is asked for.
fn ensure_maildir(root: &Path, domain: &str, mailbox: &str, folder: Option<&str>) -> io::Result<PathBuf> {
    let inbox = root.join(domain).join(mailbox);
    let dir = match folder {
        Some(name) => inbox.join(format!(".{name}")),
        None => inbox.clone(),
    };
    if ["tmp", "new", "cur"].iter().all(|s| dir.join(s).is_dir()) {
        return Ok(dir);
    }
    fs::create_dir_all(root)?;
    create_dir_synced(&root.join(domain), root)?;
    create_dir_synced(&inbox, &root.join(domain))?;
    ensure_subdirs(&inbox)?;
    if folder.is_some() {
        create_dir_synced(&dir, &inbox)?;
        // Dovecot and Courier recognise a Maildir++ folder by this empty file.
        File::create(dir.join("maildirfolder"))?;
        ensure_subdirs(&dir)?;
    }
    Ok(dir)
}

/// Delivers `header` followed by `content` into the Maildir `<root>/<domain>/<mailbox>`,
/// or into its folder `folder` (such as `Junk`). Returns the path of the new message.
pub fn deliver(
    root: &Path,
    domain: &str,
    mailbox: &str,
    folder: Option<&str>,
    host: &str,
    header: &[u8],
    content: &[u8],
) -> Result<PathBuf, Failure> {
    let fail =
        |what: &str, e: io::Error| Failure::temporary(format!("4.3.0 cannot {what} Maildir {domain}/{mailbox}: {e}"));
    let dir = ensure_maildir(root, domain, mailbox, folder).map_err(|e| fail("create", e))?;
    let name = unique_name(host, header.len() + content.len());
    let tmp = dir.join("tmp").join(&name);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(header)?;
        file.write_all(content)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(fail("write to", e));
    }
    let new = dir.join("new").join(&name);
    if let Err(e) = fs::rename(&tmp, &new) {
        let _ = fs::remove_file(&tmp);
        return Err(fail("move message into", e));
    }
    sync_dir(&dir.join("new")).map_err(|e| fail("sync", e))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new() {
        let root = tempfile::tempdir().unwrap();
        let path = deliver(
            root.path(),
            "example.test",
            "alice",
            None,
            "mx",
            b"Return-Path: <a@b>\r\n",
            b"Subject: x\r\n\r\nhi\r\n",
        )
        .unwrap();
        assert!(path.starts_with(root.path().join("example.test/alice/new")));
        assert_eq!(fs::read(&path).unwrap(), b"Return-Path: <a@b>\r\nSubject: x\r\n\r\nhi\r\n");
        assert!(root.path().join("example.test/alice/cur").is_dir());
        assert_eq!(fs::read_dir(root.path().join("example.test/alice/tmp")).unwrap().count(), 0);
        let second = deliver(root.path(), "example.test", "alice", None, "mx", b"", b"x").unwrap();
        assert_ne!(path, second);
        let junk = deliver(root.path(), "example.test", "alice", Some("Junk"), "mx", b"", b"x").unwrap();
        assert!(junk.starts_with(root.path().join("example.test/alice/.Junk/new")));
        assert!(root.path().join("example.test/alice/.Junk/maildirfolder").is_file());
    }

    #[test]
    fn obstacle_is_a_temporary_failure() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("example.test")).unwrap();
        fs::write(root.path().join("example.test/alice"), b"not a directory").unwrap();
        let err = deliver(root.path(), "example.test", "alice", None, "mx", b"", b"x").unwrap_err();
        assert!(err.temporary);
        assert!(err.reason.starts_with("4.3.0"), "{}", err.reason);
    }
}
