//! The users file: address → argon2id password hash (PHC string). Read again when it
//! changes on disk, so `tern user …` takes effect without a restart.
//!
//! ```toml
//! [users]
//! "alice@example.test" = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! ```

use crate::files::Access;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, String>,
}

/// The canonical form of a user name: a lower-case address with an A-label domain.
pub fn canonical(address: &str) -> Option<String> {
    let m = crate::smtp::address::Mailbox::parse(address).ok()?;
    Some(format!("{}@{}", m.local_unquoted().to_lowercase(), m.canonical_domain()?))
}

fn read(path: &Path) -> Result<UsersFile, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let file: UsersFile = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
            let users = file.users.into_iter().filter_map(|(a, h)| Some((canonical(&a)?, h))).collect();
            Ok(UsersFile { users })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The users, kept fresh from the file, or from the cluster's `users` table
/// (`[auth] users = "database"`).
pub struct Users {
    path: PathBuf,
    /// The cluster's table; `Some(None)` when it is configured but this process has
    /// no cluster connection (a command that only reads the configuration).
    table: Option<Option<&'static crate::cluster::shared::users::Table>>,
    state: RwLock<(Option<SystemTime>, BTreeMap<String, String>)>,
}

impl Users {
    pub fn open(path: PathBuf) -> Users {
        let users = Users { path, table: None, state: RwLock::new((None, BTreeMap::new())) };
        users.refresh();
        users
    }

    /// The users `config` names: its users file, or the cluster's table.
    pub fn for_config(config: &crate::config::Config) -> Users {
        match config.auth.users {
            crate::config::UsersSource::File => Users::open(config.users_file()),
            crate::config::UsersSource::Database => Users {
                path: PathBuf::new(),
                table: Some(crate::cluster::shared::get().map(|s| s.users.used())),
                state: RwLock::new((None, BTreeMap::new())),
            },
        }
    }

    /// The hash of a canonical user name.
    fn hash_of(&self, name: &str) -> Option<String> {
        match self.table {
            Some(table) => table.and_then(|t| t.hash(name)),
            None => {
                self.refresh();
                self.state.read().expect("users lock").1.get(name).cloned()
            }
        }
    }

    /// Re-reads the file if it changed; a broken file keeps the previous users.
    fn refresh(&self) {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if self.state.read().expect("users lock").0 == mtime && mtime.is_some() {
            return;
        }
        match read(&self.path) {
            Ok(file) => *self.state.write().expect("users lock") = (mtime, file.users),
            Err(e) => tracing::error!(error = %e, "cannot read users file; keeping the previous users"),
        }
    }

    pub fn contains(&self, address: &str) -> bool {
        canonical(address).is_some_and(|a| self.hash_of(&a).is_some())
    }

    /// Checks a password (slow on purpose); returns the canonical user name.
    pub fn verify(&self, user: &str, password: &str) -> Option<String> {
        let name = canonical(user)?;
        let hash = self.hash_of(&name);
        // An unknown user costs as much time as a known one, so timing tells nothing.
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let parsed = PasswordHash::new(&hash).ok()?;
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        (ok && hash != DUMMY_HASH).then_some(name)
    }
}

/// A valid hash of a random password, verified for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpg";

pub fn hash(password: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for the salt: {e}"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Replaces the file atomically: write a temporary file, sync it, rename it over.
fn write(path: &Path, file: &UsersFile) -> Result<(), String> {
    let text = toml::to_string(file).map_err(|e| e.to_string())?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::files::create_dir_all(dir, Access::PRIVATE).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("users")));
    let result = (|| -> std::io::Result<()> {
        // Owner-only even if a temporary file of a failed run is still there.
        let mut f = crate::files::create_file(&tmp, Access::PRIVATE, false)?;
        f.write_all(b"# Tern users: address = argon2id hash. Edit with `tern user add|passwd|del`.\n")?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

/// What `set_password` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Updated,
}

/// Adds a user or changes a password. `must_exist` is for `passwd`, `!must_exist` for `add`.
pub fn set_password(path: &Path, address: &str, password: &str, must_exist: bool) -> Result<Change, String> {
    let name = canonical(address).ok_or_else(|| format!("{address:?} is not an address"))?;
    if password.is_empty() {
        return Err("empty password".into());
    }
    let mut file = read(path)?;
    let exists = file.users.contains_key(&name);
    if must_exist && !exists {
        return Err(format!("no user {name}"));
    }
    if !must_exist && exists {
        return Err(format!("user {name} exists already (use `tern user passwd`)"));
    }
    file.users.insert(name, hash(password)?);
    write(path, &file)?;
    Ok(if exists { Change::Updated } else { Change::Added })
}

/// The users' addresses, sorted.
pub fn list(path: &Path) -> Result<Vec<String>, String> {
    Ok(read(path)?.users.into_keys().collect())
}

pub fn remove(path: &Path, address: &str) -> Result<(), String> {
    let name = canonical(address).ok_or_else(|| format!("{address:?} is not an address"))?;
    let mut file = read(path)?;
    if file.users.remove(&name).is_none() {
        return Err(format!("no user {name}"));
    }
    write(path, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_change_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let users = Users::open(path.clone());
        assert!(!users.contains("alice@example.test"));
        assert_eq!(set_password(&path, "Alice@Example.TEST", "s3cret", false), Ok(Change::Added));
        assert!(set_password(&path, "alice@example.test", "x", false).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("s3cret"));
        // The running reader sees the change (mtime granularity aside).
        let users = Users::open(path.clone());
        assert_eq!(users.verify("alice@example.test", "s3cret").as_deref(), Some("alice@example.test"));
        assert_eq!(users.verify("alice@example.test", "wrong"), None);
        assert_eq!(users.verify("nobody@example.test", "s3cret"), None);
        assert_eq!(set_password(&path, "alice@example.test", "new", true), Ok(Change::Updated));
        assert!(Users::open(path.clone()).verify("alice@example.test", "new").is_some());
        remove(&path, "alice@example.test").unwrap();
        assert!(!Users::open(path.clone()).contains("alice@example.test"));
        assert!(remove(&path, "alice@example.test").is_err());
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
