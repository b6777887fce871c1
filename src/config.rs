//! Typed configuration: one TOML file, embedded defaults, clear errors.
//!
//! Every key has a default, so an empty file is a valid configuration. Unknown keys are
//! errors (a typo must never silently fall back to a default).

mod acme;
mod admin;
mod antispam;
mod cluster;
mod delivery;
mod duration;
mod lines;
mod locate;
mod mail_auth;
mod milter;
mod on_error;
mod reports;
mod rspamd;
mod sendmail;
mod server;

pub use acme::{Acme, Challenge, LETS_ENCRYPT, MtaStsPublish, StsMode};
pub use admin::Admin;
pub use antispam::{Antispam, Greylisting};
pub use cluster::Cluster;
pub use delivery::{DEFAULT_COMMAND_TIMEOUT, DeliveryKind, DomainDelivery, Method};
pub use lines::{key as path_key, line_of};
pub use locate::{CONFIG_VAR, ConfigSource, ETC_CONFIG};
pub use mail_auth::{AuthChecks, DkimAlgorithm, DkimKey, FailAction, TempErrorAction};
pub use milter::{Milter, MilterAddress, Stage};
pub use on_error::OnError;
pub use reports::Reports;
pub use rspamd::{Endpoint as RspamdEndpoint, Origin, Rspamd};
pub use sendmail::{SUBMIT_SOCKET, Sendmail};
pub use server::Server;

use crate::files::Access;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration used when no file is given: a working local mail server, written
/// as a commented file to start from (`tern config default`).
pub const EMBEDDED_DEFAULT: &str = include_str!("config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name used in the greeting, EHLO reply and Received headers.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listen")]
    pub listen: Vec<Listen>,
    #[serde(default)]
    pub local: Local,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub relay: Relay,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub outbound: Outbound,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub auth_checks: AuthChecks,
    /// DKIM signing keys, one per domain (and selector).
    #[serde(default)]
    pub dkim: Vec<DkimKey>,
    #[serde(default)]
    pub antispam: Antispam,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub sendmail: Sendmail,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub admin: Admin,
    /// Milters the mail of the listed listener modes goes through, in order.
    #[serde(default)]
    pub milter: Vec<Milter>,
    /// Messages scanned by rspamd; none without the section.
    pub rspamd: Option<Rspamd>,
    /// Aggregate reports: TLS-RPT and DMARC.
    #[serde(default)]
    pub reports: Reports,
    /// Certificates from an ACME server; none without the section.
    pub acme: Option<Acme>,
    /// The MTA-STS policy published for the local domains; none without the section.
    pub mta_sts: Option<MtaStsPublish>,
    /// Nodes sharing a PostgreSQL database for their queue; none: the local spool.
    pub cluster: Option<Cluster>,
    /// The file this was read from (none for the embedded default), and when.
    #[serde(skip)]
    pub source: Option<(PathBuf, std::time::SystemTime)>,
}

/// How the spool lays out its files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// A segment file is closed and a new one started past this many bytes.
    pub segment_size: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { segment_size: 64 << 20 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub addr: SocketAddr,
    #[serde(default)]
    pub mode: ListenMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenMode {
    /// Port 25 style: mail from other servers to local domains.
    #[default]
    Smtp,
    /// Port 587: message submission (STARTTLS then AUTH).
    Submission,
    /// Port 465: message submission over implicit TLS.
    Submissions,
    /// Port 80: plain HTTP, for ACME http-01 challenges.
    Http,
    /// Port 443: HTTPS, for the MTA-STS policy and ACME tls-alpn-01 challenges.
    Https,
}

impl ListenMode {
    /// The modes that speak SMTP (the others speak HTTP).
    pub fn is_smtp(self) -> bool {
        matches!(self, ListenMode::Smtp | ListenMode::Submission | ListenMode::Submissions)
    }
}

impl fmt::Display for ListenMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenMode::Smtp => "smtp",
            ListenMode::Submission => "submission",
            ListenMode::Submissions => "submissions",
            ListenMode::Http => "http",
            ListenMode::Https => "https",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// Domains whose mail is delivered here.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Root of the Maildirs: `<mail_root>/<domain>/<local-part>/`. Default `<data_dir>/mail`.
    pub mail_root: Option<PathBuf>,
    /// Accept any local part of a local domain (each gets its own mailbox).
    #[serde(default)]
    pub accept_unknown: bool,
    /// Address → list of addresses it expands to (local or remote).
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Mailboxes that exist.
    #[serde(default)]
    pub users: Vec<String>,
    /// `alice+news@` is delivered to `alice@`. Empty string disables subaddressing.
    #[serde(default = "default_subaddress_separator")]
    pub subaddress_separator: String,
    /// A group (name or gid) that may read the Maildirs, such as an IMAP server's:
    /// Maildir directories are then made 0750 and files 0640 with that group.
    pub mailbox_group: Option<String>,
    /// How local mail is handed over: `maildir` (default), `lmtp` or `command`.
    #[serde(default)]
    pub delivery: DeliveryKind,
    /// The LMTP server for `delivery = "lmtp"`: `unix:/path` or `host:port`.
    pub lmtp: Option<String>,
    /// The program and arguments for `delivery = "command"`.
    #[serde(default)]
    pub command: Vec<String>,
    /// How long a delivery command may run.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Per-domain overrides of `delivery`, `lmtp` and `command`.
    #[serde(default)]
    pub domain_delivery: BTreeMap<String, DomainDelivery>,
}

fn default_command_timeout() -> Duration {
    DEFAULT_COMMAND_TIMEOUT
}

impl Default for Local {
    fn default() -> Local {
        Local {
            domains: Vec::new(),
            mail_root: None,
            accept_unknown: false,
            aliases: BTreeMap::new(),
            users: Vec::new(),
            subaddress_separator: default_subaddress_separator(),
            mailbox_group: None,
            delivery: DeliveryKind::Maildir,
            lmtp: None,
            command: Vec::new(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            domain_delivery: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Longest wait for the next command or the next piece of a message.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Longest a whole connection may last.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Bad commands (syntax, sequence, unknown) before the connection is closed with 421.
    pub max_bad_commands: u32,
    /// How long sessions may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest header block of a message, in bytes.
    pub max_header_size: u64,
    /// Bytes of messages being received that all sessions together may hold in memory;
    /// past it a message is refused with 452 4.3.1.
    pub max_inflight_bytes: u64,
    /// Connections at once, in all, and from one client IP.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Messages and recipients one client IP (or one authenticated user) may send per
    /// `rate_window`. Clients in `[relay] networks` are exempt.
    pub max_messages_per_window: u32,
    pub max_recipients_per_window: u32,
    #[serde(with = "humantime_serde")]
    pub rate_window: Duration,
    /// Slowest message transfer tolerated, in bytes per second (after 30 seconds).
    pub min_data_rate: u64,
    /// Wait this long before the greeting; a client that talks first is dropped.
    #[serde(with = "humantime_serde")]
    pub greeting_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 26_214_400,
            max_recipients: 100,
            command_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            max_bad_commands: 10,
            shutdown_grace: Duration::from_secs(10),
            max_header_size: 1 << 20,
            max_inflight_bytes: 256 << 20,
            max_connections: 1000,
            max_connections_per_ip: 20,
            max_messages_per_window: 500,
            max_recipients_per_window: 2000,
            rate_window: Duration::from_secs(3600),
            min_data_rate: 256,
            greeting_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Waits between delivery attempts; the last one repeats.
    #[serde(with = "humantime_serde_vec")]
    pub retry: Vec<Duration>,
    /// After this long in the queue a recipient that still fails is bounced.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Deliveries running at once.
    pub concurrency: usize,
    /// Tell the sender when a message has waited this long (RFC 3464 "delayed").
    #[serde(with = "humantime_serde_opt")]
    pub delay_notice: Option<Duration>,
}

impl Default for Queue {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Queue {
            retry: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            max_age: Duration::from_secs(5 * 24 * 3600),
            concurrency: 64,
            delay_notice: None,
        }
    }
}

/// Relaying: who may send to other domains, and how mail for them leaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Clients in these networks may relay to any domain.
    pub networks: Vec<ipnet::IpNet>,
    /// Send all non-local mail through this host (`host:port`) instead of by MX.
    pub smarthost: Option<String>,
    /// TLS towards the smarthost.
    pub tls: SmarthostTls,
    /// Credentials for AUTH PLAIN/LOGIN at the smarthost.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-domain next hops (`host:port`), ahead of the smarthost and MX records.
    pub routes: BTreeMap<String, String>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            smarthost: None,
            tls: SmarthostTls::Starttls,
            username: None,
            password: None,
            routes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// STARTTLS, required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text (only for a smarthost on a trusted network).
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// `ip:port` of the nameservers to ask; empty means those of /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// How long to wait for a nameserver's answer; a question is asked twice.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// DNSSEC for outbound DANE (RFC 7672): off, validated here, or trusted from a
    /// validating resolver on loopback.
    pub dnssec: Dnssec,
    /// DNSKEY or DS records (zone-file format) to validate from instead of the root's keys,
    /// with `dnssec = "validate"`.
    pub trust_anchor: Option<PathBuf>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns { nameservers: Vec::new(), timeout: Duration::from_secs(5), dnssec: Dnssec::Off, trust_anchor: None }
    }
}

/// `[dns] dnssec`: where DNSSEC answers for DANE come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dnssec {
    /// No DNSSEC, no DANE.
    #[default]
    Off,
    /// Tern validates signatures itself, from the root's keys or `trust_anchor`.
    Validate,
    /// The nameserver (a validating resolver on loopback) is asked with the DO and AD
    /// bits and its AD bit is believed, like Postfix's `smtp_dns_support_level = dane`.
    TrustResolver,
}

impl Dns {
    /// `trust-resolver` believes the AD bit, which only a resolver on this machine
    /// can be trusted to set: the path to any other is unprotected (RFC 6698 §A.3.1).
    fn validate(&self) -> Result<(), String> {
        match self.dnssec {
            Dnssec::TrustResolver => {
                if self.nameservers.is_empty() {
                    return Err("dns.dnssec: \"trust-resolver\" needs dns.nameservers: a validating resolver on \
                                loopback (127.0.0.1 or [::1])"
                        .into());
                }
                if let Some(far) = self.nameservers.iter().find(|a| !a.ip().is_loopback()) {
                    return Err(format!(
                        "dns.dnssec: \"trust-resolver\" trusts the AD bit of the nameserver, but {far} is not on \
                         loopback: run a validating resolver on this machine, or use dnssec = \"validate\""
                    ));
                }
                if self.trust_anchor.is_some() {
                    return Err("dns.trust_anchor: used only with dnssec = \"validate\"".into());
                }
            }
            Dnssec::Off if self.trust_anchor.is_some() => {
                return Err("dns.trust_anchor: used only with dnssec = \"validate\"".into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// Sending mail to other servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// The port of remote mail servers.
    pub port: u16,
    /// Accept MX or A records that point at loopback or unspecified addresses.
    pub allow_loopback_mx: bool,
    /// Connections at once to one remote host.
    pub max_connections_per_host: usize,
    /// Timeouts of RFC 5321 §4.5.3.2: connecting, the 220 greeting (§4.5.3.2.1 gives
    /// it five minutes: a busy server may hold it back), each command, and the reply
    /// after the message content.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub greeting_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Try STARTTLS when the remote server offers it (RFC 7435 opportunistic TLS).
    pub starttls: bool,
    /// Extra trust roots (PEM) for verifying remote servers, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// Honour the MTA-STS policies of recipient domains (RFC 8461; off by default), cached in
    /// `<data_dir>/mta-sts/`.
    pub mta_sts: bool,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            port: 25,
            allow_loopback_mx: false,
            max_connections_per_host: 10,
            connect_timeout: Duration::from_secs(30),
            greeting_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            starttls: true,
            ca_file: None,
            mta_sts: false,
        }
    }
}

/// The server's certificate. Without one, a self-signed certificate for `hostname`
/// is made at first start and kept in `<data_dir>/tls/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (RSA, ECDSA or Ed25519).
    pub key: Option<PathBuf>,
}

/// `[auth] users`: where the users and their password hashes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsersSource {
    File,
    Database,
}

/// Authenticated submission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Where users are kept: `file` (`users_file`) or `database` (the cluster's
    /// `users` table; needs `[cluster]`).
    pub users: UsersSource,
    /// Address → argon2id hash, edited with `tern user …`. Default `<data_dir>/users.toml`.
    pub users_file: Option<PathBuf>,
    /// Offer AUTH without TLS to clients on loopback addresses.
    pub allow_plaintext_loopback: bool,
    /// The envelope sender must be one of the user's addresses (553 5.7.1 otherwise).
    pub sender_must_match: bool,
    /// Failed AUTHs from one IP within `failure_window` before it is refused for `ban_time`.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    #[serde(with = "humantime_serde")]
    pub ban_time: Duration,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            users: UsersSource::File,
            users_file: None,
            allow_plaintext_loopback: false,
            sender_must_match: true,
            max_failures: 5,
            failure_window: Duration::from_secs(600),
            ban_time: Duration::from_secs(600),
        }
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./tern-data")
}

fn default_listen() -> Vec<Listen> {
    vec![Listen { addr: "127.0.0.1:2525".parse().unwrap(), mode: ListenMode::Smtp }]
}

fn default_subaddress_separator() -> String {
    "+".to_string()
}

/// A configuration error, with the file and line where it applies.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Loads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(EMBEDDED_DEFAULT, "<embedded default>"),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
                let mut config = Config::parse(&text, &p.display().to_string())?;
                config.source = Some((p.to_path_buf(), std::time::SystemTime::now()));
                Ok(config)
            }
        }
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: origin.to_string(), message };
        let config: Config = toml::from_str(text).map_err(|e| invalid(describe_toml_error(text, &e)))?;
        config.validate().map_err(|message| invalid(with_line(text, message)))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.dns.validate()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("tls: cert and key go together".into());
        }
        self.reports.validate()?;
        if self.listen.is_empty() {
            return Err("listen: at least one [[listen]] entry is needed".into());
        }
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(format!("hostname: {:?} is not a host name", self.hostname));
        }
        for d in &self.local.domains {
            crate::smtp::address::canonical_domain(d)
                .ok_or_else(|| format!("local.domains: {d:?} is not a domain name"))?;
        }
        for (from, to) in &self.local.aliases {
            let key = format!("local.aliases.{}", path_key(from));
            check_alias_entry(&key, from)?;
            if to.is_empty() {
                return Err(format!("{key}: expands to nothing"));
            }
            for (i, t) in to.iter().enumerate() {
                check_alias_entry(&format!("{key}[{i}]"), t)?;
            }
        }
        for u in &self.local.users {
            check_address("local.users", u)?;
        }
        self.mailbox_access()?;
        if self.limits.max_recipients == 0 {
            return Err("limits.max_recipients: must be at least 1".into());
        }
        if self.limits.max_message_size < 1024 {
            return Err("limits.max_message_size: must be at least 1024 bytes".into());
        }
        if self.queue.retry.is_empty() {
            return Err("queue.retry: at least one interval is needed".into());
        }
        for (domain, hop) in &self.relay.routes {
            let key = format!("relay.routes.{}", path_key(domain));
            crate::smtp::address::canonical_domain(domain)
                .ok_or_else(|| format!("{key}: {domain:?} is not a domain name"))?;
            check_host_port(&key, hop)?;
        }
        if let Some(hop) = &self.relay.smarthost {
            check_host_port("relay.smarthost", hop)?;
        }
        if self.relay.username.is_some() != self.relay.password.is_some() {
            return Err("relay: username and password go together".into());
        }
        if self.outbound.max_connections_per_host == 0 {
            return Err("outbound.max_connections_per_host: must be at least 1".into());
        }
        if self.queue.concurrency == 0 {
            return Err("queue.concurrency: must be at least 1".into());
        }
        if self.spool.segment_size < 4096 {
            return Err("spool.segment_size: must be at least 4096 bytes".into());
        }
        for (i, key) in self.dkim.iter().enumerate() {
            crate::smtp::address::canonical_domain(&key.domain)
                .ok_or_else(|| format!("dkim[{i}].domain: {:?} is not a domain name", key.domain))?;
            if key.selector.is_empty() || crate::smtp::address::canonical_domain(&key.selector).is_none() {
                return Err(format!("dkim[{i}].selector: {:?} is not a DNS label", key.selector));
            }
        }
        for sealer in &self.auth_checks.trusted_arc_sealers {
            crate::smtp::address::canonical_domain(sealer)
                .ok_or_else(|| format!("auth_checks.trusted_arc_sealers: {sealer:?} is not a domain name"))?;
        }
        for (key, zones) in [("antispam.dnsbl", &self.antispam.dnsbl), ("antispam.dnswl", &self.antispam.dnswl)] {
            for zone in zones {
                crate::smtp::address::canonical_domain(zone)
                    .ok_or_else(|| format!("{key}: {zone:?} is not a DNS zone"))?;
            }
        }
        self.local.validate_delivery()?;
        self.check_listeners()?;
        self.server.validate()?;
        if let Some(rspamd) = &self.rspamd {
            rspamd.validate()?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        } else if self.auth.users == UsersSource::Database {
            return Err(
                "auth.users: \"database\" needs a [cluster] section (the cluster's database keeps the users)".into()
            );
        }
        milter::validate(&self.milter)?;
        if let Some(acme) = &self.acme {
            acme.validate()?;
            let needed = match acme.challenge {
                Challenge::TlsAlpn01 => ListenMode::Https,
                Challenge::Http01 => ListenMode::Http,
            };
            if !self.listen.iter().any(|l| l.mode == needed) {
                return Err(format!(
                    "acme.challenge: {} needs a [[listen]] with mode = \"{needed}\"",
                    acme.challenge.name()
                ));
            }
        }
        if let Some(sts) = &self.mta_sts {
            sts.validate()?;
        }
        Ok(())
    }

    /// The names an ACME certificate is for: `[acme] names`, else the hostname and
    /// `mta-sts.<domain>` for each local domain when `[mta_sts]` is set.
    pub fn acme_names(&self) -> Vec<String> {
        let Some(acme) = &self.acme else { return Vec::new() };
        let mut names: Vec<String> = if acme.names.is_empty() {
            let mut names = vec![self.hostname.clone()];
            if self.mta_sts.is_some() {
                names.extend(self.local.domains.iter().map(|d| format!("mta-sts.{d}")));
            }
            names
        } else {
            acme.names.clone()
        };
        for n in names.iter_mut() {
            *n = crate::smtp::address::canonical_domain(n).unwrap_or_else(|| n.to_ascii_lowercase());
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }

    /// Two listeners on one address cannot both bind: the same address and port, or
    /// a wildcard and another address of its family on the same port (an IPv6
    /// wildcard beside IPv4 listeners takes IPv6 only, so it binds).
    fn check_listeners(&self) -> Result<(), String> {
        for (i, a) in self.listen.iter().enumerate() {
            for (j, b) in self.listen.iter().enumerate().take(i) {
                let (a, b) = (a.addr, b.addr);
                let family = a.is_ipv4() == b.is_ipv4();
                let overlap = a.ip() == b.ip() || (family && (a.ip().is_unspecified() || b.ip().is_unspecified()));
                if a.port() != 0 && a.port() == b.port() && overlap {
                    return Err(format!("listen[{i}].addr: {a} is taken by listen[{j}] ({b})"));
                }
            }
        }
        self.admin.validate()?;
        Ok(())
    }

    /// Who may read the Maildirs: their owner, and `[local] mailbox_group` when set.
    pub fn mailbox_access(&self) -> Result<Access, String> {
        match &self.local.mailbox_group {
            None => Ok(Access::PRIVATE),
            Some(group) => crate::files::resolve_group(group)
                .map(|gid| Access { group: Some(gid) })
                .map_err(|e| format!("local.mailbox_group: {e}")),
        }
    }

    pub fn mail_root(&self) -> PathBuf {
        self.local.mail_root.clone().unwrap_or_else(|| self.data_dir.join("mail"))
    }

    pub fn users_file(&self) -> PathBuf {
        self.auth.users_file.clone().unwrap_or_else(|| self.data_dir.join("users.toml"))
    }

    /// The admin API's bearer token: `[admin] token_file`, or `<data_dir>/admin.token`.
    pub fn admin_token_file(&self) -> PathBuf {
        self.admin.token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    /// Where the content of messages being received goes, in files without names.
    pub fn spill_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
}

/// `host:port`, with the host a name or an IP address (IPv6 in brackets).
fn check_host_port(key: &str, hop: &str) -> Result<(), String> {
    let bad = || format!("{key}: {hop:?} is not host:port");
    let (host, port) = hop.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_err() && crate::smtp::address::canonical_domain(host).is_none() {
        return Err(bad());
    }
    Ok(())
}

fn check_address(key: &str, addr: &str) -> Result<(), String> {
    crate::smtp::address::Mailbox::parse(addr)
        .map(|_| ())
        .map_err(|e| format!("{key}: {addr:?} is not an address ({e})"))
}

/// The canonical domain of an alias key or target `@domain` (given without its `@`):
/// a domain name, not an address literal.
pub fn alias_domain(domain: &str) -> Option<String> {
    if domain.starts_with('[') {
        return None;
    }
    crate::smtp::address::canonical_domain(domain)
}

/// An alias key or target: an address, or `@domain` (as a key, the domain's
/// catch-all; as a target, the same local part in that domain).
fn check_alias_entry(key: &str, entry: &str) -> Result<(), String> {
    match entry.strip_prefix('@') {
        Some("") => Err(format!("{key}: \"@\" needs a domain after it")),
        Some(domain) if alias_domain(domain).is_none() => {
            Err(format!("{key}: {entry:?}: {domain:?} is not a domain name"))
        }
        Some(_) => Ok(()),
        None => check_address(key, entry),
    }
}

/// Turns a TOML error into "line N: key.path: message", naming the offending key.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text[span.clone()].lines().next().unwrap_or("").trim();
            let key = lines::path_at(text, span.start).map(|p| format!("{p}: ")).unwrap_or_default();
            format!("line {line}: {key}{message} (at `{snippet}`)")
        }
        None => message,
    }
}

/// `key.path: message` as `line N: key.path: message` when the text has the key.
fn with_line(text: &str, message: String) -> String {
    let mut quoted = false;
    let end = message.char_indices().find(|&(i, c)| {
        quoted ^= c == '"';
        !quoted && message[i..].starts_with(": ")
    });
    match end.and_then(|(i, _)| line_of(text, &message[..i])) {
        Some(line) => format!("line {line}: {message}"),
        None => message,
    }
}

/// Serde adapters for durations written like "5m" or "30s" (see `duration`).
pub(crate) mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::duration::parse(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

mod humantime_serde_vec {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| super::duration::parse(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.listen[0].addr.port(), 2525);
        assert!(c.local.accept_unknown);
        assert_eq!(c.mail_root(), PathBuf::from("./tern-data/mail"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::parse("hostname = \"a.test\"\n\n[limits]\nmax_size = 5\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_size"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn durations_parse() {
        let c = Config::parse("[limits]\ncommand_timeout = \"90s\"\n[queue]\nretry = [\"1s\", \"2m\"]\n", "t").unwrap();
        assert_eq!(c.limits.command_timeout, Duration::from_secs(90));
        assert_eq!(c.queue.retry, vec![Duration::from_secs(1), Duration::from_secs(120)]);
        assert!(Config::parse("[limits]\ncommand_timeout = \"soon\"\n", "t").is_err());
    }

    #[test]
    fn relay_and_outbound() {
        let c = Config::parse(
            "[relay]\nnetworks = [\"10.0.0.0/8\"]\nsmarthost = \"smtp.provider.test:587\"\n[relay.routes]\n\"corp.test\" = \"10.0.0.5:25\"\n[dns]\nnameservers = [\"127.0.0.1:5353\"]\n[outbound]\nport = 2526\nallow_loopback_mx = true\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.outbound.port, 2526);
        assert_eq!(c.dns.nameservers[0].port(), 5353);
        assert!(Config::parse("[relay]\nsmarthost = \"nohost\"\n", "t").is_err());
        assert!(Config::parse("[relay]\nnetworks = [\"10.0.0.0/33\"]\n", "t").is_err());
        assert!(Config::parse("[relay]\nusername = \"u\"\n", "t").is_err());
    }

    #[test]
    fn greeting_timeout_defaults_to_five_minutes() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.outbound.greeting_timeout, Duration::from_secs(300), "RFC 5321 §4.5.3.2.1");
        assert_eq!(c.outbound.connect_timeout, Duration::from_secs(30));
        let c = Config::parse("[outbound]\ngreeting_timeout = \"90s\"\n", "t").unwrap();
        assert_eq!(c.outbound.greeting_timeout, Duration::from_secs(90));
        assert!(Config::parse("[outbound]\ngreeting_timeout = \"never\"\n", "t").is_err());
    }

    #[test]
    fn errors_name_the_full_key_and_its_line() {
        let err = |text: &str| Config::parse(text, "t").unwrap_err().to_string();
        let e = err("[local]\ndomains = [\"y.test\"]\n\n[local.aliases]\n\"x@y.test\" = []\n");
        assert!(e.contains("line 5: local.aliases.\"x@y.test\": expands to nothing"), "{e}");
        let e = err("[local.aliases]\n\"@\" = [\"a@y.test\"]\n");
        assert!(e.contains("line 2: local.aliases.\"@\": \"@\" needs a domain after it"), "{e}");
        let e = err("[local.aliases]\n\"@y.test\" = [\"a@y.test\", \"@not a domain\"]\n");
        assert!(
            e.contains("local.aliases.\"@y.test\"[1]: \"@not a domain\": \"not a domain\" is not a domain name"),
            "{e}"
        );
        Config::parse("[local.aliases]\n\"@y.test\" = [\"@z.test\", \"a@z.test\"]\n", "t").unwrap();
        let e = err("[[listen]]\naddr = \"0.0.0.0:25\"\n[[listen]]\naddr = \"127.0.0.1:25\"\n");
        assert!(e.contains("line 4: listen[1].addr: 127.0.0.1:25 is taken by listen[0]"), "{e}");
        let e = err("[limits]\ncommand_timeout = \"5M\"\n");
        assert!(e.contains("line 2: limits.command_timeout: \"5M\" is not a duration"), "{e}");
        assert!(e.contains("s (seconds)"), "{e}");
        let e = err("[[dkim]]\ndomain = \"a.test\"\nselector = \"\"\nkey = \"k\"\n");
        assert!(e.contains("line 3: dkim[0].selector:"), "{e}");
        // An IPv6 wildcard beside IPv4 listeners binds (IPV6_V6ONLY).
        assert!(Config::parse("[[listen]]\naddr = \"0.0.0.0:25\"\n[[listen]]\naddr = \"[::]:25\"\n", "t").is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::parse("[local]\nusers = [\"not an address\"]\n", "t").unwrap_err().to_string();
        assert!(err.contains("local.users"), "{err}");
    }
}
