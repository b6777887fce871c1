//! `[sendmail]`: the local submission socket through which `tern sendmail` hands mail
//! to the running server.

use serde::Deserialize;
use std::path::PathBuf;

/// The file name of the socket in the data directory, when `socket` is not set.
pub const SUBMIT_SOCKET: &str = "submit.sock";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sendmail {
    /// Where the server takes local submissions. Default `<data_dir>/submit.sock`,
    /// which only root and the server's own user can reach (the data directory is
    /// private). In a directory other users may enter (such as `/run/tern/`), they can
    /// send too, each only as their own address.
    pub socket: Option<PathBuf>,
}

impl super::Config {
    /// The local submission socket.
    pub fn submit_socket(&self) -> PathBuf {
        self.sendmail.socket.clone().unwrap_or_else(|| self.data_dir.join(SUBMIT_SOCKET))
    }
}
