//! `[local] delivery`: how mail for local recipients is handed over: written to a
//! Maildir, sent to an LMTP server, or piped to a delivery command, for all local
//! domains or per domain (`[local.domain_delivery]`).

use serde::Deserialize;
use std::time::Duration;

/// The ways of delivering local mail.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryKind {
    /// `<mail_root>/<domain>/<mailbox>/` (Dovecot-compatible Maildir).
    #[default]
    Maildir,
    /// An LMTP server (RFC 2033), such as Dovecot's.
    Lmtp,
    /// A local delivery agent run once per recipient, as Postfix's `mailbox_command`.
    Command,
}

/// One domain's override in `[local.domain_delivery]`; keys left out are taken from
/// `[local]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DomainDelivery {
    pub delivery: Option<DeliveryKind>,
    pub lmtp: Option<String>,
    pub command: Option<Vec<String>>,
}

/// How one local domain's mail is delivered, with everything that method needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Maildir,
    /// `unix:/path` or `host:port`.
    Lmtp(String),
    /// The program and its arguments, before `{sender}`, `{user}`… are filled in.
    Command(Vec<String>),
}

/// The default time limit of a delivery command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

impl super::Local {
    /// How mail for `domain` (as a `[local] domains` entry, any case) is delivered.
    pub fn method_for(&self, domain: &str) -> Method {
        let over = self.domain_delivery.iter().find(|(d, _)| d.eq_ignore_ascii_case(domain.trim_end_matches('.')));
        let over = over.map(|(_, o)| o);
        let kind = over.and_then(|o| o.delivery).unwrap_or(self.delivery);
        match kind {
            DeliveryKind::Maildir => Method::Maildir,
            DeliveryKind::Lmtp => {
                Method::Lmtp(over.and_then(|o| o.lmtp.clone()).or_else(|| self.lmtp.clone()).unwrap_or_default())
            }
            DeliveryKind::Command => {
                Method::Command(over.and_then(|o| o.command.clone()).unwrap_or_else(|| self.command.clone()))
            }
        }
    }

    /// Every domain's method names what it needs: an LMTP server, a command.
    pub(super) fn validate_delivery(&self) -> Result<(), String> {
        let mut domains: Vec<(String, &str)> = vec![(String::new(), "local")];
        for domain in self.domain_delivery.keys() {
            if !self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain.trim_end_matches('.'))) {
                return Err(format!("local.domain_delivery.{domain:?}: not one of local.domains"));
            }
            domains.push((domain.clone(), "local.domain_delivery"));
        }
        for (domain, key) in domains {
            let key = if domain.is_empty() { key.to_string() } else { format!("{key}.{domain:?}") };
            match self.method_for(&domain) {
                Method::Maildir => {}
                Method::Lmtp(addr) => check_lmtp(&format!("{key}.lmtp"), &addr)?,
                Method::Command(cmd) if cmd.is_empty() || cmd[0].is_empty() => {
                    return Err(format!("{key}.command: delivery = \"command\" needs a program to run"));
                }
                Method::Command(cmd) if !cmd[0].starts_with('/') => {
                    return Err(format!("{key}.command: {:?} must be an absolute path (no shell is used)", cmd[0]));
                }
                Method::Command(_) => {}
            }
        }
        if self.command_timeout.is_zero() {
            return Err("local.command_timeout: must be more than 0s".into());
        }
        Ok(())
    }
}

/// `unix:/absolute/path` or `host:port`.
fn check_lmtp(key: &str, addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err(format!("{key}: delivery = \"lmtp\" needs an LMTP server (\"unix:/path\" or \"host:port\")"));
    }
    match addr.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(()),
        Some(_) => Err(format!("{key}: {addr:?}: a socket path must be absolute")),
        None => super::check_host_port(key, addr),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(local: &str) -> Result<Config, String> {
        Config::parse(&format!("[local]\ndomains = [\"a.test\", \"b.test\"]\n{local}"), "test")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn default_is_maildir_and_domains_override() {
        use super::Method;
        let c = parse(
            "delivery = \"lmtp\"\nlmtp = \"unix:/run/dovecot/lmtp\"\n[local.domain_delivery]\n\"B.test\" = { delivery = \"maildir\" }\n",
        )
        .unwrap();
        assert_eq!(c.local.method_for("a.test"), Method::Lmtp("unix:/run/dovecot/lmtp".into()));
        assert_eq!(c.local.method_for("b.test"), Method::Maildir);
        assert_eq!(parse("").unwrap().local.method_for("a.test"), Method::Maildir);
    }

    #[test]
    fn missing_or_bad_targets_are_errors() {
        assert!(parse("delivery = \"lmtp\"\n").unwrap_err().contains("local.lmtp"));
        assert!(parse("delivery = \"lmtp\"\nlmtp = \"unix:run/x\"\n").unwrap_err().contains("absolute"));
        assert!(parse("delivery = \"command\"\n").unwrap_err().contains("local.command"));
        assert!(parse("delivery = \"command\"\ncommand = [\"maildrop\"]\n").unwrap_err().contains("absolute"));
        let e = parse("[local.domain_delivery]\n\"c.test\" = { delivery = \"maildir\" }\n").unwrap_err();
        assert!(e.contains("not one of local.domains"), "{e}");
        assert!(parse("delivery = \"mbox\"\n").is_err());
    }
}
