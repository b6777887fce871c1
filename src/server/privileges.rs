//! Dropping root. Started as root with `[server] user`, Tern binds its listeners and
//! reads its keys as root, hands the data directory to that user, and then becomes
//! that user for good (supplementary groups, gid, uid) before it accepts mail. Root
//! without `[server] user` keeps running as root, with a warning.
//!
//! This must happen while the process has a single thread: before the async runtime
//! starts.

use crate::config::Config;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The user and groups to become.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's own (from the group database), and the
    /// mailbox group, which Tern gives the Maildirs it makes.
    pub groups: Vec<u32>,
}

/// Binds the listeners and reads the keys ([`super::prepare`]), then, when started as
/// root with `[server] user`, hands the data directory over and becomes that user.
pub fn start_as_user(config: &Config) -> Result<super::Prepared, String> {
    let account = account(config)?;
    let prepared = super::prepare(config)?;
    if let Some(account) = &account {
        hand_over(account, config)?;
        become_user(account)?;
    }
    Ok(prepared)
}

/// Whom to become: `None` when not started as root (there is nothing to drop), or
/// root without `[server] user` (then a warning says how to drop privileges).
pub fn account(config: &Config) -> Result<Option<Account>, String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let Some(user) = &config.server.user else {
        if euid == 0 {
            tracing::warn!(
                "running as root: set [server] user = \"tern\" (a user of its own) so that Tern drops its \
                 privileges once its listeners are bound"
            );
        }
        return Ok(None);
    };
    let (name, uid, primary) = lookup_user(user)?;
    if euid != 0 {
        if euid != uid {
            tracing::warn!(user, uid = euid, "not started as root: cannot become [server] user; running as uid {euid}");
        }
        return Ok(None);
    }
    if uid == 0 {
        tracing::warn!(user, "[server] user is root: nothing to drop");
        return Ok(None);
    }
    let gid = match &config.server.group {
        Some(group) => crate::files::resolve_group(group).map_err(|e| format!("server.group: {e}"))?,
        None => primary,
    };
    let mut groups = group_list(&name, gid)?;
    if let Ok(crate::files::Access { group: Some(mailbox) }) = config.mailbox_access()
        && !groups.contains(&mailbox)
    {
        groups.push(mailbox);
    }
    Ok(Some(Account { name, uid, gid, groups }))
}

/// Gives the data directory (everything in it not owned by the user yet) and the mail
/// root, if Tern makes it here, to `account`. Groups are left as they are: the
/// mailbox group of the Maildirs stays.
pub fn hand_over(account: &Account, config: &Config) -> Result<(), String> {
    let owned = |path: &Path, e: io::Error| format!("cannot give {} to user {}: {e}", path.display(), account.name);
    chown_tree(&config.data_dir, account.uid).map_err(|e| owned(&config.data_dir, e))?;
    let mail_root = config.mail_root();
    if !mail_root.exists() {
        let access = config.mailbox_access()?;
        crate::files::create_dir_all(&mail_root, access).map_err(|e| owned(&mail_root, e))?;
        std::os::unix::fs::lchown(&mail_root, Some(account.uid), None).map_err(|e| owned(&mail_root, e))?;
    }
    Ok(())
}

/// Changes the owner of `path` and everything below it that `uid` does not own yet
/// (symbolic links themselves, never what they point to).
fn chown_tree(path: &Path, uid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != uid {
        std::os::unix::fs::lchown(path, Some(uid), None)?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// Becomes `account` for good: supplementary groups, then gid, then uid (real,
/// effective and saved alike), and checks that root cannot be had back.
pub fn become_user(account: &Account) -> Result<(), String> {
    let failed =
        |what: &str| format!("cannot drop privileges to user {}: {what}: {}", account.name, io::Error::last_os_error());
    let (uid, gid) = (account.uid, account.gid);
    // SAFETY: each call only reads its arguments; `groups` outlives the call and its
    // length is passed with it.
    unsafe {
        if libc::setgroups(account.groups.len(), account.groups.as_ptr()) != 0 {
            return Err(failed("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(failed("setresgid"));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(failed("setresuid"));
        }
    }
    let (ruid, euid, suid) = ids(libc::getresuid);
    let (rgid, egid, sgid) = ids(libc::getresgid);
    if [ruid, euid, suid] != [uid; 3] || [rgid, egid, sgid] != [gid; 3] {
        return Err(format!(
            "privileges not dropped: uids {ruid}/{euid}/{suid}, gids {rgid}/{egid}/{sgid}, wanted {uid} and {gid}"
        ));
    }
    // SAFETY: setuid only reads its argument; it must fail here.
    if unsafe { libc::setuid(0) } == 0 {
        return Err("privileges not dropped: root could be regained".into());
    }
    tracing::info!(user = %account.name, uid, gid, "dropped root privileges");
    Ok(())
}

/// The real, effective and saved ids from `getresuid` or `getresgid`.
fn ids(get: unsafe extern "C" fn(*mut u32, *mut u32, *mut u32) -> libc::c_int) -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (u32::MAX, u32::MAX, u32::MAX);
    // SAFETY: the three pointers are valid for writes during the call.
    unsafe { get(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// (name, uid, primary gid) of a user given by name or uid.
fn lookup_user(user: &str) -> Result<(String, u32, u32), String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: an all-zero `passwd` is a valid value for getpw*_r to fill in.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = match user.parse::<u32>() {
            // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
            Ok(uid) => unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) },
            Err(_) => {
                let name = CString::new(user).map_err(|_| format!("server.user: {user:?} is not a user name"))?;
                // SAFETY: as above; `name` is a valid C string.
                unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) }
            }
        };
        match rc {
            0 if found.is_null() => return Err(format!("server.user: no user {user:?} on this system")),
            0 => {
                // SAFETY: on success pw_name points to a C string inside `buf`.
                let name = unsafe { CStr::from_ptr(entry.pw_name) }.to_string_lossy().into_owned();
                return Ok((name, entry.pw_uid, entry.pw_gid));
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(format!("server.user: cannot look up {user:?}: {}", io::Error::from_raw_os_error(rc))),
        }
    }
}

/// The groups `name` belongs to in the group database, with `gid` first.
fn group_list(name: &str, gid: u32) -> Result<Vec<u32>, String> {
    let c_name = CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that
        // many and sets `count` to the number it needs.
        let rc = unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        if groups.len() >= 1 << 16 {
            return Err(format!("user {name} is in too many groups"));
        }
        groups.resize((count.max(0) as usize).max(groups.len() * 2), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_name_or_number() {
        assert_eq!(lookup_user("root").unwrap(), ("root".to_string(), 0, 0));
        assert_eq!(lookup_user("0").unwrap().0, "root");
        assert!(lookup_user("no-such-user-here").unwrap_err().contains("no user"));
        assert!(group_list("root", 0).unwrap().contains(&0));
    }
}
