//! `[rspamd]`: messages scanned by rspamd over its HTTP protocol. No section, no scan.

use super::{OnError, humantime_serde};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The rspamd scan of received messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rspamd {
    /// `http://host:port` of rspamd's normal worker, or `unix:/path` of its socket.
    pub url: String,
    /// Which mail is scanned: by the listener mode it came through, and `local` for
    /// the local submission socket (`tern sendmail`).
    #[serde(default = "default_applies_to")]
    pub applies_to: Vec<Origin>,
    /// What happens to a message when rspamd cannot be asked or its answer is unusable.
    #[serde(default = "OnError::accept")]
    pub on_error: OnError,
    /// The whole exchange (connect, send, answer) must end within this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Sent as rspamd's `Settings-ID` header: the settings rspamd applies.
    pub settings_id: Option<String>,
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Smtp,
    Submission,
    Submissions,
    /// The local submission socket (`tern sendmail`).
    Local,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Smtp => "smtp",
            Origin::Submission => "submission",
            Origin::Submissions => "submissions",
            Origin::Local => "local",
        })
    }
}

/// Where rspamd listens, from `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host` (a name or an IP address, IPv6 without brackets), `port`, and the path
    /// prefix before `/checkv2` (empty or starting with `/`, no final `/`).
    Tcp {
        host: String,
        port: u16,
        prefix: String,
    },
    Unix(PathBuf),
}

fn default_applies_to() -> Vec<Origin> {
    vec![Origin::Smtp]
}

fn default_timeout() -> Duration {
    Duration::from_secs(20)
}

impl Rspamd {
    pub fn applies_to(&self, origin: Origin) -> bool {
        self.applies_to.contains(&origin)
    }

    /// The endpoint `url` names; an error says what is wrong with it.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let url = self.url.trim();
        if let Some(path) = url.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(format!("rspamd.url: {url:?}: a unix socket needs an absolute path (unix:/path)"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let bad = |why: &str| format!("rspamd.url: {url:?} {why} (write http://host:port or unix:/path)");
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(bad("is not an http:// URL"));
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("has an unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = port.map_or(Ok(11333), |p| p.parse::<u16>().map_err(|_| bad("has a bad port")))?;
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        if host.is_empty() || (!is_ip && crate::smtp::address::canonical_domain(host).is_none()) {
            return Err(bad("has no valid host"));
        }
        if path.contains(['?', '#', ' ']) {
            return Err(bad("has a query or a fragment"));
        }
        let prefix = path.trim_end_matches('/').to_string();
        Ok(Endpoint::Tcp { host: host.to_string(), port, prefix })
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        self.endpoint()?;
        if self.applies_to.is_empty() {
            return Err("rspamd.applies_to: empty; name at least one of smtp, submission, submissions, local \
                        (or remove [rspamd])"
                .into());
        }
        if self.timeout.is_zero() {
            return Err("rspamd.timeout: must be more than 0s".into());
        }
        if let Some(id) = &self.settings_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!("rspamd.settings_id: {id:?} must be printable ASCII without spaces"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rspamd(text: &str) -> Result<Rspamd, String> {
        Config::parse(text, "t").map(|c| c.rspamd.expect("[rspamd]")).map_err(|e| e.to_string())
    }

    #[test]
    fn absent_means_off_and_defaults_are_postfix_like() {
        assert!(Config::parse("", "t").unwrap().rspamd.is_none());
        let r = rspamd("[rspamd]\nurl = \"http://127.0.0.1:11333\"\n").unwrap();
        assert_eq!(r.applies_to, vec![Origin::Smtp]);
        assert_eq!(r.on_error, OnError::Accept);
        assert_eq!(r.timeout, Duration::from_secs(20));
        assert_eq!(r.endpoint().unwrap(), Endpoint::Tcp { host: "127.0.0.1".into(), port: 11333, prefix: "".into() });
    }

    #[test]
    fn urls_and_values_are_checked() {
        let r = rspamd(
            "[rspamd]\nurl = \"http://[::1]:1/rspamd/\"\napplies_to = [\"smtp\", \"local\"]\non_error = \"tempfail\"\ntimeout = \"5s\"\nsettings_id = \"inbound\"\n",
        )
        .unwrap();
        assert_eq!(r.endpoint().unwrap(), Endpoint::Tcp { host: "::1".into(), port: 1, prefix: "/rspamd".into() });
        assert!(r.applies_to(Origin::Local) && !r.applies_to(Origin::Submission));
        let r = rspamd("[rspamd]\nurl = \"unix:/run/rspamd/normal.sock\"\n").unwrap();
        assert_eq!(r.endpoint().unwrap(), Endpoint::Unix("/run/rspamd/normal.sock".into()));
        let r = rspamd("[rspamd]\nurl = \"http://rspamd.internal\"\n").unwrap();
        assert!(matches!(r.endpoint().unwrap(), Endpoint::Tcp { port: 11333, .. }));
        for (text, key) in [
            ("url = \"https://x:1\"", "rspamd.url"),
            ("url = \"http://:1\"", "rspamd.url"),
            ("url = \"http://x:99999\"", "rspamd.url"),
            ("url = \"unix:relative\"", "rspamd.url"),
            ("url = \"http://x:1\"\napplies_to = []", "rspamd.applies_to"),
            ("url = \"http://x:1\"\napplies_to = [\"pop3\"]", "applies_to"),
            ("url = \"http://x:1\"\non_error = \"drop\"", "on_error"),
            ("url = \"http://x:1\"\ntimeout = \"0s\"", "rspamd.timeout"),
            ("url = \"http://x:1\"\nsettings_id = \"a b\"", "rspamd.settings_id"),
            ("applies_to = [\"smtp\"]", "url"),
        ] {
            let err = rspamd(&format!("[rspamd]\n{text}\n")).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
