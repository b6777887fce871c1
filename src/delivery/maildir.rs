//! Maildir delivery (<https://cr.yp.to/proto/maildir.html>), in the layout Dovecot reads
//! with `mail_location = maildir:<mail_root>/%d/%n`.
//!
//! A message is written to `tmp/`, synced, renamed into `new/`, and `new/` is synced, so
//! a delivery that reported success survives a crash.
//!
//! Mail is private: directories are made 0700 and files 0600, or 0750 and 0640 with the
//! group of `[local] mailbox_group` so that an IMAP server in that group can read them.

use super::Failure;
use crate::files::{self, Access};
use crate::spool::Content;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the Maildirs are, and who besides their owner may read them.
#[derive(Debug, Clone)]
pub struct MailRoot {
    pub path: PathBuf,
    pub access: Access,
}

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
fn create_dir_synced(dir: &Path, parent: &Path, access: Access) -> io::Result<()> {
    if files::create_dir(dir, access)? {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Creates `<dir>/{tmp,new,cur}` as far as it is missing.
fn ensure_subdirs(dir: &Path, access: Access) -> io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        create_dir_synced(&dir.join(sub), dir, access)?;
    }
    Ok(())
}

/// Creates `<root>/<domain>/<mailbox>/{tmp,new,cur}` as far as it is missing, and the
/// Maildir++ folder `.<folder>/` in it when one is asked for.
fn ensure_maildir(root: &MailRoot, domain: &str, mailbox: &str, folder: Option<&str>) -> io::Result<PathBuf> {
    let (access, root) = (root.access, root.path.as_path());
    let inbox = root.join(domain).join(mailbox);
    let dir = match folder {
        Some(name) => inbox.join(format!(".{name}")),
        None => inbox.clone(),
    };
    if ["tmp", "new", "cur"].iter().all(|s| dir.join(s).is_dir()) {
        return Ok(dir);
    }
    files::create_dir_all(root, access)?;
    create_dir_synced(&root.join(domain), root, access)?;
    create_dir_synced(&inbox, &root.join(domain), access)?;
    ensure_subdirs(&inbox, access)?;
    if folder.is_some() {
        create_dir_synced(&dir, &inbox, access)?;
        // Dovecot and Courier recognise a Maildir++ folder by this empty file.
        files::create_file(&dir.join("maildirfolder"), access, false)?;
        ensure_subdirs(&dir, access)?;
    }
    Ok(dir)
}

/// Delivers `header` followed by `content` into the Maildir `<root>/<domain>/<mailbox>`,
/// or into its folder `folder` (such as `Junk`). Returns the path of the new message.
/// Content not in memory is copied a piece at a time (blocking).
pub fn deliver(
    root: &MailRoot,
    domain: &str,
    mailbox: &str,
    folder: Option<&str>,
    host: &str,
    header: &[u8],
    content: &Content,
) -> Result<PathBuf, Failure> {
    let fail = |what: &str, e: io::Error| {
        Failure::temporary((4, 3, 0), format!("cannot {what} Maildir {domain}/{mailbox}: {e}"))
    };
    let dir = ensure_maildir(root, domain, mailbox, folder).map_err(|e| fail("create", e))?;
    let name = unique_name(host, header.len() + content.len() as usize);
    let tmp = dir.join("tmp").join(&name);
    let write = || -> io::Result<()> {
        let mut file = files::create_file(&tmp, root.access, true)?;
        file.write_all(header)?;
        content.for_each_piece(&mut Vec::new(), |piece| file.write_all(piece))?;
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
    use std::os::unix::fs::MetadataExt;

    fn x() -> Content {
        Content::from(b"x".to_vec())
    }

    fn private(root: &Path) -> MailRoot {
        MailRoot { path: root.to_path_buf(), access: Access::PRIVATE }
    }

    /// (path, is a directory, mode, gid) of everything below `dir`, `dir` included.
    fn modes(dir: &Path, out: &mut Vec<(PathBuf, bool, u32, u32)>) {
        let meta = fs::metadata(dir).unwrap();
        out.push((dir.to_path_buf(), meta.is_dir(), meta.mode() & 0o7777, meta.gid()));
        if meta.is_dir() {
            for entry in fs::read_dir(dir).unwrap() {
                modes(&entry.unwrap().path(), out);
            }
        }
    }

    /// Delivers to an inbox and its Junk folder under `<tmp>/mail`; returns what is there.
    fn deliver_both(access: Access) -> Vec<(PathBuf, bool, u32, u32)> {
        let tmp = tempfile::tempdir().unwrap();
        let root = MailRoot { path: tmp.path().join("mail"), access };
        deliver(&root, "example.test", "alice", None, "mx", b"", &x()).unwrap();
        deliver(&root, "example.test", "alice", Some("Junk"), "mx", b"", &x()).unwrap();
        let mut out = Vec::new();
        modes(&root.path, &mut out);
        assert!(out.iter().any(|(p, ..)| p.ends_with(".Junk/maildirfolder")), "{out:?}");
        assert_eq!(out.iter().filter(|(p, ..)| p.parent().is_some_and(|d| d.ends_with("new"))).count(), 2);
        out
    }

    #[test]
    fn mail_is_private() {
        for (path, is_dir, mode, _) in deliver_both(Access::PRIVATE) {
            let want = if is_dir { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{} is {mode:o}", path.display());
        }
    }

    #[test]
    fn the_mailbox_group_may_read() {
        // Our own group: changing a file to it is always allowed.
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        for (path, is_dir, mode, group) in deliver_both(Access { group: Some(gid) }) {
            let want = if is_dir { 0o750 } else { 0o640 };
            assert_eq!((mode, group), (want, gid), "{} is {mode:o} of group {group}", path.display());
        }
    }

    #[test]
    fn delivers_into_new() {
        let root = tempfile::tempdir().unwrap();
        let path = deliver(
            &private(root.path()),
            "example.test",
            "alice",
            None,
            "mx",
            b"Return-Path: <a@b>\r\n",
            &Content::from(b"Subject: x\r\n\r\nhi\r\n".to_vec()),
        )
        .unwrap();
        assert!(path.starts_with(root.path().join("example.test/alice/new")));
        assert_eq!(fs::read(&path).unwrap(), b"Return-Path: <a@b>\r\nSubject: x\r\n\r\nhi\r\n");
        assert!(root.path().join("example.test/alice/cur").is_dir());
        assert_eq!(fs::read_dir(root.path().join("example.test/alice/tmp")).unwrap().count(), 0);
        let second = deliver(&private(root.path()), "example.test", "alice", None, "mx", b"", &x()).unwrap();
        assert_ne!(path, second);
        let junk = deliver(&private(root.path()), "example.test", "alice", Some("Junk"), "mx", b"", &x()).unwrap();
        assert!(junk.starts_with(root.path().join("example.test/alice/.Junk/new")));
        assert!(root.path().join("example.test/alice/.Junk/maildirfolder").is_file());
    }

    #[test]
    fn obstacle_is_a_temporary_failure() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("example.test")).unwrap();
        fs::write(root.path().join("example.test/alice"), b"not a directory").unwrap();
        let err = deliver(&private(root.path()), "example.test", "alice", None, "mx", b"", &x()).unwrap_err();
        assert!(err.temporary);
        assert_eq!(err.detail.status, crate::delivery::Status(4, 3, 0), "{}", err.detail);
    }
}
