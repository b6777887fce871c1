//! Files and directories Tern creates that hold mail or secrets: owner-only (0600 and
//! 0700) whatever the umask, or readable by one group when `[local] mailbox_group`
//! lets an IMAP server read the Maildirs (0640 and 0750).
//!
//! Each is created with its mode and then given it again explicitly: the umask only
//! takes bits away at creation, but it may take the group's too (umask 077), and a file
//! left behind by an earlier run keeps whatever mode it had.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who may read what Tern creates: its owner, and the group `group` if there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub group: Option<u32>,
}

impl Access {
    /// Owner only.
    pub const PRIVATE: Access = Access { group: None };

    pub fn file_mode(self) -> u32 {
        if self.group.is_some() { 0o640 } else { 0o600 }
    }

    pub fn dir_mode(self) -> u32 {
        if self.group.is_some() { 0o750 } else { 0o700 }
    }

    /// Gives a file just opened its group and mode, before anything is written to it.
    fn apply_to_file(self, file: &File) -> io::Result<()> {
        use std::os::fd::AsFd;
        if let Some(gid) = self.group {
            // The group first: changing the owner may clear mode bits.
            std::os::unix::fs::fchown(file.as_fd(), None, Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(self.file_mode()))
    }

    /// Gives a directory just created its group and `mode`.
    fn apply_to_dir(self, dir: &Path, mode: u32) -> io::Result<()> {
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
    }
}

/// Opens `path` for writing, creating it with `access` if it is missing (a new file
/// only when `create_new`), truncated, with its mode and group set before it is used.
pub fn create_file(path: &Path, access: Access, create_new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).mode(access.file_mode());
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let file = options.open(path)?;
    access.apply_to_file(&file)?;
    Ok(file)
}

/// Creates the directory `dir` with `access`; returns false if it was there already
/// (then its mode is left as it is: it may have been set that way on purpose).
pub fn create_dir(dir: &Path, access: Access) -> io::Result<bool> {
    create_dir_with_mode(dir, access, access.dir_mode())
}

fn create_dir_with_mode(dir: &Path, access: Access, mode: u32) -> io::Result<bool> {
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => access.apply_to_dir(dir, mode).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and whatever parents it lacks, each with `access`.
pub fn create_dir_all(dir: &Path, access: Access) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent, access)?;
    }
    create_dir(dir, access).map(|_| ())
}

/// Creates the data directory if it is missing: owner-only, except that the mailbox
/// group may pass through it (0710, not list it) when the Maildirs lie inside it.
pub fn create_data_dir(config: &crate::config::Config) -> io::Result<()> {
    let data_dir = &config.data_dir;
    if data_dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = data_dir.parent() {
        create_dir_all(parent, Access::PRIVATE)?;
    }
    let access = config.mailbox_access().unwrap_or_default();
    match access.group {
        Some(_) if config.mail_root().starts_with(data_dir) => create_dir_with_mode(data_dir, access, 0o710),
        _ => create_dir(data_dir, Access::PRIVATE),
    }
    .map(|_| ())
}

/// The gid of a group given by name or as a number. A number is taken as it is: a
/// gid need not have a name.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| format!("{group:?} is not a group name"))?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: an all-zero `group` is a valid value for getgrnam_r to fill in.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
        let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
        match rc {
            0 if found.is_null() => return Err(format!("no group {group:?} on this system")),
            0 => return Ok(entry.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(format!("cannot look up group {group:?}: {}", io::Error::from_raw_os_error(rc))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn modes_are_set_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested, Access::PRIVATE).unwrap();
        assert_eq!((mode(&dir.path().join("a")), mode(&nested)), (0o700, 0o700));
        let path = nested.join("f");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(create_file(&path, Access::PRIVATE, false).unwrap());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(create_file(&path, Access::PRIVATE, true).is_err());
        assert!(!create_dir(&nested, Access::PRIVATE).unwrap());
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(resolve_group("root"), Ok(0));
        assert_eq!(resolve_group("4242"), Ok(4242));
        let err = resolve_group("no-such-group-here").unwrap_err();
        assert!(err.contains("no group \"no-such-group-here\""), "{err}");
    }

    #[test]
    fn a_group_may_read() {
        // Our own group: changing a file to it is always allowed.
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let access = Access { group: Some(gid) };
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        create_dir(&sub, access).unwrap();
        drop(create_file(&sub.join("f"), access, true).unwrap());
        assert_eq!((mode(&sub), mode(&sub.join("f"))), (0o750, 0o640));
        assert_eq!(std::fs::metadata(sub.join("f")).unwrap().gid(), gid);
    }
}
