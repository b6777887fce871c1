//! Which configuration a command reads: `--config FILE`, else `$TERN_CONFIG`, else
//! `/etc/tern/tern.toml` when it exists, else the embedded default.

use super::{Config, ConfigError};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The configuration file of an installed server.
pub const ETC_CONFIG: &str = "/etc/tern/tern.toml";
/// The environment variable naming the configuration file.
pub const CONFIG_VAR: &str = "TERN_CONFIG";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE` (or sendmail's `-C FILE`).
    Flag(PathBuf),
    /// `$TERN_CONFIG`.
    Env(PathBuf),
    /// `/etc/tern/tern.toml`, found there.
    Etc(PathBuf),
    Embedded,
}

impl ConfigSource {
    /// Where this process takes its configuration from.
    pub fn find(flag: Option<&Path>) -> ConfigSource {
        ConfigSource::find_in(flag, std::env::var_os(CONFIG_VAR), Path::new(ETC_CONFIG))
    }

    fn find_in(flag: Option<&Path>, env: Option<OsString>, etc: &Path) -> ConfigSource {
        if let Some(path) = flag {
            return ConfigSource::Flag(path.to_path_buf());
        }
        if let Some(path) = env.filter(|v| !v.is_empty()) {
            return ConfigSource::Env(PathBuf::from(path));
        }
        // A file that exists but cannot be read is still the one meant: its error shows.
        if etc.symlink_metadata().is_ok() {
            return ConfigSource::Etc(etc.to_path_buf());
        }
        ConfigSource::Embedded
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::Etc(p) => Some(p),
            ConfigSource::Embedded => None,
        }
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path())
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Etc(p) => write!(f, "{}", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (from ${CONFIG_VAR})", p.display()),
            ConfigSource::Embedded => f.write_str("the embedded default"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("tern.toml");
        let flag = Path::new("/x/flag.toml");
        let env = Some(OsString::from("/x/env.toml"));
        assert_eq!(ConfigSource::find_in(Some(flag), env.clone(), &etc), ConfigSource::Flag(flag.into()));
        assert_eq!(ConfigSource::find_in(None, env.clone(), &etc), ConfigSource::Env("/x/env.toml".into()));
        assert_eq!(ConfigSource::find_in(None, Some(OsString::new()), &etc), ConfigSource::Embedded);
        std::fs::write(&etc, "").unwrap();
        assert_eq!(ConfigSource::find_in(None, None, &etc), ConfigSource::Etc(etc.clone()));
        assert_eq!(ConfigSource::find_in(None, env, &etc), ConfigSource::Env("/x/env.toml".into()));
    }
}
