//! Unix accounts from the password database: the login name and full name of a uid.

use std::ffi::CStr;

/// One account of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub login: String,
    /// The first field of the GECOS entry, often the person's full name; may be empty.
    pub full_name: String,
}

/// The account with this uid, if the password database has one.
pub fn by_uid(uid: u32) -> Option<Account> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to memory that outlives the call, and the
        // buffer's length is passed with it; the strings are read only while `buf` lives.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, so the fields point at NUL-terminated strings in `buf`.
        let text = |p: *const libc::c_char| {
            if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() }
        };
        let gecos = text(pwd.pw_gecos);
        return Some(Account {
            uid,
            login: text(pwd.pw_name),
            full_name: gecos.split(',').next().unwrap_or("").trim().to_string(),
        });
    }
}

/// The account running this process.
pub fn current() -> Option<Account> {
    // SAFETY: getuid has no preconditions and cannot fail.
    by_uid(unsafe { libc::getuid() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_uid_zero() {
        let root = super::by_uid(0).expect("uid 0 has an account");
        assert_eq!(root.login, "root");
        assert_eq!(root.uid, 0);
    }
}
