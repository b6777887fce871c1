//! `[admin]`: the HTTP listener of the API and the metrics.

use super::humantime_serde;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The admin listener. It has no TLS yet, so it may listen on loopback only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// `ip:port` of the HTTP listener; `""` turns it off.
    #[serde(deserialize_with = "listen_addr")]
    pub listen: Option<SocketAddr>,
    /// The bearer token's file; default `<data_dir>/admin.token`, made at first start.
    pub token_file: Option<PathBuf>,
    /// Serve `/metrics` without the token.
    pub metrics_public: bool,
    /// How long a finished message's trace is kept.
    #[serde(with = "humantime_serde")]
    pub trace_retention: std::time::Duration,
    /// How long a client may take to send a request's head (line and headers); then
    /// its connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: std::time::Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8025))),
            token_file: None,
            metrics_public: false,
            trace_retention: std::time::Duration::from_secs(7 * 24 * 3600),
            header_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl Admin {
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout.is_zero() {
            return Err("admin.header_timeout: must be more than 0s".into());
        }
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "admin.listen: {addr} is not a loopback address; the admin listener has no TLS yet, so it \
                 listens on loopback only (127.0.0.1 or [::1]; a proxy may carry it further), or \"\" turns it off"
            )),
            _ => Ok(()),
        }
    }
}

fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("{text:?} is not ip:port"))),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn admin_listens_on_loopback_only() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.admin.listen, Some("127.0.0.1:8025".parse().unwrap()));
        let c = Config::parse("[admin]\nlisten = \"\"\n", "t").unwrap();
        assert_eq!(c.admin.listen, None);
        assert!(Config::parse("[admin]\nlisten = \"[::1]:0\"\n", "t").is_ok());
        let err = Config::parse("[admin]\nlisten = \"0.0.0.0:8025\"\n", "t").unwrap_err().to_string();
        assert!(err.contains("not a loopback address") && err.contains("no TLS"), "{err}");
        assert!(Config::parse("[admin]\nlisten = \"localhost\"\n", "t").is_err());
    }
}
