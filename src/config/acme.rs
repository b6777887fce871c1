//! `[acme]`: certificates from an ACME server (RFC 8555), and `[mta_sts]`: the
//! MTA-STS policy Tern publishes for its own domains (RFC 8461).

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The ACME server's directory URL.
    #[serde(default = "default_directory")]
    pub directory: String,
    /// `mailto:` address given to the ACME server for its notices.
    pub contact: Option<String>,
    /// Names on the certificate; empty: `hostname`, plus `mta-sts.<domain>` for each
    /// local domain when `[mta_sts]` is set (see `Config::acme_names`).
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub challenge: Challenge,
    /// Extra trust anchors (PEM) for the ACME server's own HTTPS, for a private one.
    pub ca_file: Option<PathBuf>,
    /// Renew when less than this is left; default 30 days, or a third of the
    /// lifetime for certificates shorter-lived than 90 days.
    #[serde(default, with = "super::humantime_serde_opt")]
    pub renew_before: Option<Duration>,
}

fn default_directory() -> String {
    LETS_ENCRYPT.to_string()
}

/// How the ACME server checks that Tern answers for a name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Challenge {
    /// RFC 8737: a certificate shown for ALPN `acme-tls/1` on the HTTPS listener (443).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: a token served over plain HTTP (80).
    #[serde(rename = "http-01")]
    Http01,
}

impl Challenge {
    pub fn name(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

impl Acme {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !self.directory.starts_with("https://") {
            return Err(format!("acme.directory: {:?} is not an https:// URL", self.directory));
        }
        if let Some(c) = &self.contact
            && !(c.starts_with("mailto:") && c.len() > 7 && c.contains('@'))
        {
            return Err(format!("acme.contact: {c:?} is not a mailto: address"));
        }
        for name in &self.names {
            if crate::smtp::address::canonical_domain(name).is_none() || name.starts_with('*') {
                return Err(format!("acme.names: {name:?} is not a host name"));
            }
        }
        Ok(())
    }
}

/// `[mta_sts]`: the policy served at `https://mta-sts.<domain>/.well-known/mta-sts.txt`
/// for every local domain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsPublish {
    pub mode: StsMode,
    /// How long senders may cache the policy (RFC 8461 §3.2 `max_age`).
    #[serde(default = "default_max_age", with = "super::humantime_serde")]
    pub max_age: Duration,
    /// The MX host patterns; default the hostname.
    #[serde(default)]
    pub mx: Vec<String>,
}

fn default_max_age() -> Duration {
    Duration::from_secs(7 * 86_400)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

impl StsMode {
    pub fn name(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

impl MtaStsPublish {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_age.as_secs() > MAX_AGE_LIMIT {
            return Err(format!("mta_sts.max_age: at most {MAX_AGE_LIMIT} seconds (RFC 8461 §3.2)"));
        }
        for mx in &self.mx {
            let bare = mx.strip_prefix("*.").unwrap_or(mx);
            if crate::smtp::address::canonical_domain(bare).is_none() {
                return Err(format!("mta_sts.mx: {mx:?} is not a host name or *.domain pattern"));
            }
        }
        Ok(())
    }
}
