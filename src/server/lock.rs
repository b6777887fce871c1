//! One server per data directory: `serve` holds an exclusive `flock` on
//! `<data_dir>/lock` for as long as it runs, and writes its PID into the file so that a
//! second server can say who is in the way. Two servers on one spool would each
//! recover, deliver and compact the same messages, and the second would take over the
//! control socket and remove it when it stops.
//!
//! The lock goes with the process: a crash or SIGKILL releases it, so there is never a
//! stale lock to clean up. The file itself stays.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const LOCK_NAME: &str = "lock";

/// The held lock; dropping it (at exit) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the lock of `data_dir`, or says which process holds it.
pub fn acquire(data_dir: &Path) -> Result<DataDirLock, String> {
    let path = data_dir.join(LOCK_NAME);
    let fail = |e: std::io::Error| format!("cannot lock {}: {e}", path.display());
    // Not truncated on open: until the lock is ours, the PID in it is the holder's.
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path).map_err(fail)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(format!(
                "data directory {} is in use by another tern server ({}); one server per data directory",
                data_dir.display(),
                holder(&mut file)
            ));
        }
        Err(TryLockError::Error(e)) => return Err(fail(e)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0).and_then(|()| file.write_all(pid.as_bytes())).map_err(fail)?;
    Ok(DataDirLock { _file: file })
}

/// "pid N" from the lock file, as far as the holder has written it.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "pid unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = acquire(dir.path()).unwrap();
        // flock locks belong to open files, so a second open conflicts even in one process.
        let err = acquire(dir.path()).unwrap_err();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        let again = acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_NAME)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(again);
    }
}
