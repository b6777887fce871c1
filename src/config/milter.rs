//! `[[milter]]`: content filters spoken to with the milter protocol (Sendmail's and
//! Postfix's `smtpd_milters`), called in the order they are listed.

use super::{ListenMode, OnError, humantime_serde};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Milter {
    /// Names the milter in logs, traces and metrics.
    pub name: String,
    /// `unix:/path/to.sock`, `inet:host:port` or `host:port`.
    pub address: String,
    /// What a dead, slow or garbled milter means for the mail.
    #[serde(default = "OnError::tempfail")]
    pub on_error: OnError,
    /// The longest wait for connecting, and for each read and write.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The stages the milter is told of (within those it asks for); default all.
    #[serde(default = "all_stages")]
    pub stages: Vec<Stage>,
    /// The listener modes whose mail goes through it; default all.
    #[serde(default = "all_modes")]
    pub applies_to: Vec<ListenMode>,
}

/// What a milter may be told of. `data` is the message: its header fields, their
/// end, the body and its end (where the milter's edits are made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
}

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    Unix(std::path::PathBuf),
    /// `host:port`, resolved when connecting.
    Inet(String),
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn all_stages() -> Vec<Stage> {
    vec![Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data]
}

fn all_modes() -> Vec<ListenMode> {
    vec![ListenMode::Smtp, ListenMode::Submission, ListenMode::Submissions]
}

impl Milter {
    /// The parsed `address` (valid once the configuration is validated).
    pub fn target(&self) -> Result<MilterAddress, String> {
        if let Some(path) = self.address.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{:?}: a unix socket needs an absolute path", self.address));
            }
            return Ok(MilterAddress::Unix(path.into()));
        }
        let hop = self.address.strip_prefix("inet:").unwrap_or(&self.address);
        // Sendmail's and OpenDKIM's own form is `inet:port@host`.
        let hop = match hop.split_once('@') {
            Some((port, host)) => format!("{host}:{port}"),
            None => hop.to_string(),
        };
        super::check_host_port("", &hop).map_err(|_| format!("{:?} is not unix:/path or host:port", self.address))?;
        Ok(MilterAddress::Inet(hop))
    }

    /// Whether the milter is told of `stage`.
    pub fn told(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }
}

/// Checks every `[[milter]]` entry.
pub(super) fn validate(milters: &[Milter]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (i, m) in milters.iter().enumerate() {
        let key = format!("milter[{i}]");
        if m.name.is_empty()
            || m.name.len() > 64
            || !m.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!("{key}.name: {:?} must be 1 to 64 letters, digits, '-', '_' or '.'", m.name));
        }
        if !names.insert(m.name.as_str()) {
            return Err(format!("{key}.name: {:?} is used twice", m.name));
        }
        m.target().map_err(|e| format!("{key}.address: {e}"))?;
        if m.timeout.is_zero() {
            return Err(format!("{key}.timeout: must be more than zero"));
        }
        if m.applies_to.is_empty() {
            return Err(format!("{key}.applies_to: names no listener mode, so the milter is never used"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milter(address: &str) -> Milter {
        Milter {
            name: "m".into(),
            address: address.into(),
            on_error: OnError::Tempfail,
            timeout: default_timeout(),
            stages: all_stages(),
            applies_to: all_modes(),
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(milter("unix:/run/x.sock").target(), Ok(MilterAddress::Unix("/run/x.sock".into())));
        assert_eq!(milter("127.0.0.1:8891").target(), Ok(MilterAddress::Inet("127.0.0.1:8891".into())));
        assert_eq!(milter("inet:8891@localhost").target(), Ok(MilterAddress::Inet("localhost:8891".into())));
        assert!(milter("unix:run/x.sock").target().is_err());
        assert!(milter("127.0.0.1").target().is_err());
        assert!(validate(&[milter("[::1]:8891"), milter("unix:/x")]).is_err(), "the same name twice");
    }
}
