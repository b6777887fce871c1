//! `[server]`: the process itself — whom it runs as once its listeners are bound.

use serde::Deserialize;

/// Who Tern becomes after binding its listeners and reading its keys, when started
/// as root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// A user name or uid; unset, a server started as root stays root (and says so).
    pub user: Option<String>,
    /// A group name or gid; default the user's own group.
    pub group: Option<String>,
}

impl Server {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.group.is_some() && self.user.is_none() {
            return Err("server.group: needs server.user".into());
        }
        for (key, name) in [("server.user", &self.user), ("server.group", &self.group)] {
            if name.as_ref().is_some_and(|n| n.is_empty() || n.contains(['\0', ':', '/'])) {
                return Err(format!("{key}: {name:?} is not a user or group name"));
            }
        }
        Ok(())
    }
}
