//! Delivery to other servers: find the next hop, connect, and run one SMTP
//! transaction for all recipients of a message that go to the same destination.

mod client;
mod dane;
mod fold;
mod pool;
pub mod route;
mod tls;
mod tls_report;
pub(crate) mod transaction;

pub use client::{RemoteReply, dot_stuff, parse_reply_line};
pub use pool::Pool;
pub use route::Hop;
pub use tls::{AcceptAny, TlsClient, TlsLevel, add_pem_file, system_roots, trust_roots};

use super::{Delivered, Failure, Via};
use crate::config::SmarthostTls;
use crate::dns::Dns;
use crate::spool::{Content, Recipient, Ret};
use crate::tls_policy::Lookup;
use crate::tls_policy::dane::{DaneResult, HostPolicy};
use crate::tls_policy::mta_sts::{Mode, Policy};
use crate::tls_policy::requiretls;
use client::Client;
pub(crate) use client::Stream;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Everything remote delivery needs to know.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Our name in EHLO.
    pub hostname: String,
    pub port: u16,
    pub allow_loopback: bool,
    pub connect_timeout: Duration,
    /// The wait for the 220 greeting once connected (RFC 5321 §4.5.3.2.1).
    pub greeting_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub smarthost: Option<Hop>,
    /// Canonical domain → next hop.
    pub routes: HashMap<String, Hop>,
    /// Credentials for the smarthost.
    pub auth: Option<(String, String)>,
    /// TLS towards the smarthost.
    pub smarthost_tls: SmarthostTls,
    /// Try STARTTLS with servers that offer it.
    pub starttls: bool,
    pub tls: Arc<TlsClient>,
    /// The addresses Tern listens on, so that it never connects to itself.
    pub own_addrs: Vec<SocketAddr>,
    /// Open connections and the per-server limit.
    pub pool: Arc<Pool>,
    /// MTA-STS policies of recipient domains, unless turned off.
    pub mta_sts: Option<Arc<crate::tls_policy::MtaSts>>,
    /// DNSSEC lookups for DANE (RFC 7672), unless `[dns] dnssec` is off.
    pub dane: Option<Arc<crate::dnssec::SecureDns>>,
}

/// A message and the recipients to deliver it to at one destination.
pub struct Job<'a> {
    /// The queue id, for the message's trace.
    pub id: &'a str,
    pub sender: &'a str,
    pub recipients: Vec<(usize, &'a Recipient)>,
    pub content: &'a Content,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub ret: Option<Ret>,
    pub envid: Option<&'a str>,
    /// Sent with REQUIRETLS (RFC 8689): only over authenticated TLS to a server that
    /// offers REQUIRETLS, and with it.
    pub requiretls: bool,
    /// `TLS-Required: No` (RFC 8689 §4.2.2): the domain's TLS policy is set aside.
    pub tls_optional: bool,
}

pub type Outcome = Vec<(usize, Result<Delivered, Failure>)>;

fn all(job: &Job<'_>, result: Result<Delivered, Failure>) -> Outcome {
    job.recipients.iter().map(|(i, _)| (*i, result.clone())).collect()
}

/// What TLS a connection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    Off,
    /// STARTTLS when offered; plaintext otherwise (RFC 7435).
    Opportunistic,
    /// TLS with a certificate verified for the configured host name (the smarthost),
    /// or no delivery.
    Required,
    /// TLS with a certificate verified for an MX host that the domain's MTA-STS policy
    /// names (RFC 8461 §4), or no delivery.
    MtaSts,
    /// DANE (RFC 7672): TLS, and the certificate must match the host's TLSA records.
    Dane,
    /// TLS without authentication, or no delivery: the host's TLSA records exist but
    /// none is usable (RFC 7672 §2.2).
    Encrypt,
}

impl TlsPolicy {
    /// No delivery without TLS.
    pub fn is_mandatory(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::MtaSts | TlsPolicy::Dane | TlsPolicy::Encrypt)
    }

    /// Anything but a verified certificate ends the connection.
    pub fn needs_verified(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::MtaSts)
    }

    /// A connection made under this policy, once its certificate is verified (or
    /// matched to the TLSA records), reaches the server the recipient domain (or the
    /// administrator) named over a channel an attacker cannot downgrade: what
    /// REQUIRETLS asks for (RFC 8689 §4.2.1).
    pub fn is_authenticated(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::MtaSts | TlsPolicy::Dane)
    }
}

/// Delivers `job` to `domain` (canonical form): tries each hop and address in turn
/// until one gives an answer for the recipients. Also says how the mail went: the
/// server, the time spent connecting and sending, and the TLS in use.
pub async fn deliver(config: &RemoteConfig, dns: &Dns, domain: &str, job: &Job<'_>) -> (Outcome, Via) {
    let mut via = Via::starting("none");
    let outcome = try_hops(config, dns, domain, job, &mut via).await;
    if job.requiretls {
        requiretls_results(job, domain, &outcome);
    }
    // Nothing was sent: all the time went into trying to connect.
    if via.transmission.is_zero() {
        via.setup = via.started.elapsed();
    }
    (outcome, via)
}

async fn try_hops(config: &RemoteConfig, dns: &Dns, domain: &str, job: &Job<'_>, via: &mut Via) -> Outcome {
    let mut hops = match route::hops(config, dns, domain).await {
        Ok(h) => h,
        Err(f) => return all(job, Err(f)),
    };
    let smarthost = config.smarthost.is_some();
    let mut dane = match dane_plan(config, domain, &mut hops).await {
        Ok(plan) => plan,
        Err(f) => return all(job, Err(f)),
    };
    // RFC 8461 §2: DANE takes precedence over MTA-STS.
    let mut lookup = if dane.is_some() { Lookup::default() } else { sts_policy(config, dns, domain).await };
    if let Some(failure) = &lookup.failure {
        note(job, domain, failure.clone());
    }
    // RFC 8689 §4.1: REQUIRETLS wins over `TLS-Required: No`.
    if job.tls_optional && !job.requiretls && (lookup.policy.is_some() || dane.is_some()) {
        tracing::info!(id = job.id, domain, "TLS-Required: No; the domain's TLS policy is set aside");
        note(job, domain, "TLS-Required: No: the MTA-STS or DANE policy is set aside, TLS is opportunistic".into());
        crate::metrics::get().requiretls(crate::metrics::RequireTls::PolicyIgnored);
        lookup.policy = None;
        dane = None;
    }
    let sts = lookup.policy;
    if job.requiretls && !smarthost && sts.is_none() && dane.is_none() {
        // RFC 8689 §4.2.1: without a policy or DANE the MX hosts cannot be
        // authenticated. A policy that could not be fetched may be back later.
        let f = match lookup.failure {
            Some(failure) => requiretls::unsure(format!("{domain}: {failure}")),
            None => requiretls::refused(format!(
                "{domain} has neither an MTA-STS policy nor DANE records to authenticate its MX hosts"
            )),
        };
        note(job, domain, f.detail.text.clone());
        return all(job, Err(f));
    }
    // A REQUIRETLS message follows a policy in testing mode as if it were enforced.
    let enforce = sts.as_ref().is_some_and(|p| p.mode == Mode::Enforce || job.requiretls);
    if enforce {
        // RFC 8461 §4.1: only MX hosts the policy names may be used.
        let policy = sts.as_ref().expect("enforce means a policy");
        hops.retain(|hop| policy.allows_mx(&hop.host));
        if hops.is_empty() {
            let detail = format!("MTA-STS policy of {domain}: no MX host matches the policy");
            return all(job, Err(Failure::temporary((4, 7, 5), detail)));
        }
    }
    let mut last = Failure::temporary((4, 4, 1), format!("no reachable server for {domain}"));
    // The first failure DANE caused: with no server left, the mail waits with it.
    let mut dane_failure: Option<Failure> = None;
    for (i, hop) in hops.iter().enumerate() {
        let host_policy = dane.as_ref().map_or(&HostPolicy::None, |p| &p[i]);
        if let HostPolicy::Unusable(why) = host_policy {
            // RFC 7672 §2.2.2: a host whose TLSA records cannot be trusted is skipped.
            let f = Failure::temporary((4, 7, 5), format!("DANE: {}: {why}", hop.host));
            if reports_tls(config, domain) {
                tls_report::record_unusable(domain, hop);
            }
            dane_failure.get_or_insert(f.clone());
            last = f;
            continue;
        }
        let addrs = match route::addresses(config, dns, hop).await {
            Ok(a) => a,
            Err(f) if !f.temporary => return all(job, Err(f)),
            Err(f) => {
                last = f;
                continue;
            }
        };
        for addr in addrs {
            via.relay = format!("{}[{}]:{}", hop.host, addr.ip(), addr.port());
            (via.tls, via.transmission, via.local_ip) = ("none".into(), Duration::ZERO, None);
            let host_tls = HostTls { sts_enforce: enforce, dane: host_policy, probe: transaction::TlsProbe::default() };
            let result = attempt(config, hop, addr, job, via, &host_tls).await;
            if reports_tls(config, domain) {
                tls_report::record(domain, sts.as_ref(), hop, addr, via, &host_tls, result.as_ref().map(|_| ()));
            }
            match result {
                Ok(outcome) => {
                    if let HostPolicy::Verify(check) = host_policy {
                        DaneResult::Verified.count();
                        let records: Vec<String> = check.records.iter().map(|r| r.to_string()).collect();
                        tracing::info!(domain, host = %hop.host, %addr, records = %records.join(", "), "DANE verified");
                    }
                    if let Some(policy) = sts.as_ref().filter(|p| p.mode == Mode::Testing) {
                        report_testing(job, domain, policy, hop, via);
                    }
                    return outcome;
                }
                Err(f) => {
                    tracing::info!(host = %hop.host, %addr, reason = %f.detail, "trying next server");
                    if let Some(kind) = host_policy.check().and_then(|c| c.take_failure()) {
                        DaneResult::Failed(kind).count();
                        tracing::warn!(domain, host = %hop.host, %addr, result = %kind, reason = %f.detail, "DANE failure");
                        let f = Failure::temporary((4, 7, 5), format!("DANE: {} ({kind}): {}", hop.host, f.detail));
                        dane_failure.get_or_insert(f);
                    }
                    last = f;
                }
            }
        }
    }
    if let Some(f) = dane_failure {
        // RFC 7672 §2.2: no downgrade past a DANE failure; the mail waits.
        return all(job, Err(f));
    }
    if enforce {
        // RFC 8461 §5: no MX could be used as the policy demands; the mail waits.
        last = Failure::temporary((4, 7, 5), format!("MTA-STS policy of {domain}: {}", last.detail));
    }
    all(job, Err(last))
}

/// The DANE policy of each hop, when `[dns] dnssec` is on and the mail is routed by
/// MX records (never for the smarthost, `[relay.routes]` or address literals).
async fn dane_plan(
    config: &RemoteConfig,
    domain: &str,
    hops: &mut Vec<Hop>,
) -> Result<Option<Vec<HostPolicy>>, Failure> {
    let Some(secure) = config.dane.as_ref() else { return Ok(None) };
    if config.routes.contains_key(domain) || config.smarthost.is_some() || domain.starts_with('[') {
        return Ok(None);
    }
    dane::plan(secure, domain, config.port, hops).await
}

/// Whether sessions to `domain` count for its TLS reports: only for mail routed by
/// its MX records, with STARTTLS on (RFC 8460 §4.1).
fn reports_tls(config: &RemoteConfig, domain: &str) -> bool {
    config.starttls && config.smarthost.is_none() && !config.routes.contains_key(domain) && !domain.starts_with('[')
}

/// The MTA-STS policy that applies to `domain`: only for mail routed by MX records,
/// never for the smarthost, `[relay.routes]` or address literals. Mode `none` is no
/// policy.
async fn sts_policy(config: &RemoteConfig, dns: &Dns, domain: &str) -> Lookup {
    let none = Lookup { policy: None, failure: None };
    let Some(sts) = config.mta_sts.as_ref() else {
        return none;
    };
    if config.routes.contains_key(domain) || config.smarthost.is_some() || domain.starts_with('[') {
        return none;
    }
    let mut lookup = sts.lookup(dns, &config.tls, config.allow_loopback, domain).await;
    sts.refresh_if_due(dns, &config.tls, config.allow_loopback, domain);
    lookup.policy = lookup.policy.filter(|p| p.mode != Mode::None);
    lookup
}

/// Puts a line about the domain's TLS policy in the message's trace.
fn note(job: &Job<'_>, domain: &str, detail: String) {
    crate::admin::trace::emit(job.id, crate::admin::trace::Event::TlsPolicy { domain: domain.to_string(), detail });
}

/// Mode `testing`: the mail went as usual; one line says whether enforcing the policy
/// would have stopped it (RFC 8461 §5).
fn report_testing(job: &Job<'_>, domain: &str, policy: &Policy, hop: &Hop, via: &Via) {
    let problem = if !policy.allows_mx(&hop.host) {
        "MX host not in the policy"
    } else if !via.tls_verified {
        "no TLS with a verified certificate"
    } else {
        return;
    };
    tracing::warn!(domain, host = %hop.host, problem, "MTA-STS policy (testing) would have failed this delivery");
    note(job, domain, format!("MTA-STS policy (testing) would have failed this delivery: {problem} ({})", hop.host));
}

/// Logs and counts what became of a REQUIRETLS message's recipients.
fn requiretls_results(job: &Job<'_>, domain: &str, outcome: &Outcome) {
    use crate::metrics::RequireTls;
    let metrics = crate::metrics::get();
    for (_, result) in outcome {
        let (kind, word, detail) = match result {
            Ok(d) => (RequireTls::Relayed, "relayed", &d.detail),
            Err(f) if f.temporary => (RequireTls::Deferred, "deferred", &f.detail),
            Err(f) => (RequireTls::Bounced, "bounced", &f.detail),
        };
        metrics.requiretls(kind);
        tracing::info!(id = job.id, domain, result = word, status = %detail.status, detail = %detail.text, "REQUIRETLS");
    }
}

/// What the TLS of one attempt at an MX host is held to, and where its failures are
/// noted for TLS reports.
pub struct HostTls<'a> {
    /// The domain's MTA-STS policy is enforced.
    pub sts_enforce: bool,
    pub dane: &'a HostPolicy,
    pub probe: transaction::TlsProbe,
}

/// One server. `Err` means "try the next server" (connection failure, or a 4xx/5xx
/// greeting); `Ok` carries the recipients' results.
async fn attempt(
    config: &RemoteConfig,
    hop: &Hop,
    addr: SocketAddr,
    job: &Job<'_>,
    via: &mut Via,
    host_tls: &HostTls<'_>,
) -> Result<Outcome, Failure> {
    // A connection opened under MTA-STS or DANE is checked as they demand; it is
    // pooled apart from the others.
    let key = match host_tls.dane {
        HostPolicy::Verify(_) => format!("{}|{addr}|dane", hop.host),
        HostPolicy::Encrypt(_) => format!("{}|{addr}|encrypt", hop.host),
        _ if host_tls.sts_enforce => format!("{}|{addr}|sts", hop.host),
        _ => format!("{}|{addr}", hop.host),
    };
    pooled(config, &key, job, via, connect(config, hop, addr, host_tls))
        .await
        .map_err(|e| Failure::temporary((4, 4, 1), format!("{} [{}]: {}", hop.host, addr.ip(), e.what())))
}

/// Why a pooled transaction gave no results.
#[derive(Debug)]
pub(crate) enum Broken {
    /// No connection could be opened (or it was refused at the greeting).
    Connect(String),
    /// The connection failed during the transaction.
    Transaction(String),
}

impl Broken {
    pub(crate) fn what(&self) -> &str {
        match self {
            Broken::Connect(e) | Broken::Transaction(e) => e,
        }
    }
}

/// Runs `job` on a connection to the server `key`: an idle one from the pool when it
/// still answers RSET, else one that `connect` opens. At most the pool's limit of
/// transactions run at once per server; a connection left between transactions goes
/// back to the pool. Shared by SMTP and LMTP delivery.
pub(crate) async fn pooled(
    config: &RemoteConfig,
    key: &str,
    job: &Job<'_>,
    via: &mut Via,
    connect: impl Future<Output = Result<transaction::Connection, String>>,
) -> Result<Outcome, Broken> {
    let _slot = config.pool.slot(key).await;
    let mut reused = None;
    while let Some(mut conn) = config.pool.take(key) {
        if conn.client.command("RSET").await.is_ok_and(|r| r.code == 250) {
            reused = Some(conn);
            break;
        }
    }
    let mut conn = match reused {
        Some(conn) => conn,
        None => connect.await.map_err(Broken::Connect)?,
    };
    crate::admin::trace::note_tls(conn.tls_level());
    via.dane = conn.tls_level() == TlsLevel::Dane;
    // The delivery log says `tls=dane/TLSv1.3/…` for a certificate DANE vouched for.
    via.tls = if via.dane { format!("dane/{}", conn.tls()) } else { conn.tls().to_string() };
    via.tls_verified = conn.tls_level().is_authenticated();
    via.tls_problem = conn.tls_problem();
    via.local_ip = conn.local_ip();
    let sending = Instant::now();
    via.setup = sending - via.started;
    let sent = transaction::send(config, &mut conn, job).await;
    via.transmission = sending.elapsed().max(Duration::from_nanos(1));
    let outcome = sent.map_err(|e| Broken::Transaction(e.0))?;
    // Only a connection between transactions is kept; one left in any other state
    // (say, a server still waiting for content) is closed by dropping it.
    if conn.is_ready() {
        config.pool.put(key, conn);
    }
    Ok(outcome)
}

/// Reads the greeting on a fresh connection and says hello; `session` tells what
/// TLS is in place or wanted, and whether the server speaks LMTP.
pub(crate) async fn greet(
    config: &RemoteConfig,
    stream: Box<dyn Stream>,
    session: transaction::Session<'_>,
) -> Result<transaction::Connection, String> {
    let mut client = Client::new(stream, config.command_timeout);
    // RFC 5321 §4.5.3.2.1: a server may hold back its greeting (five minutes by default).
    let greeting = client
        .read_reply_within(config.greeting_timeout)
        .await
        .map_err(|e| format!("reading the greeting: {}", e.0))?;
    if greeting.code != 220 {
        return Err(format!("greeting {}", greeting.text()));
    }
    transaction::open(config, client, session).await.map_err(|e| e.0)
}

/// Connects, reads the greeting and says hello (with TLS as the hop needs).
async fn connect(
    config: &RemoteConfig,
    hop: &Hop,
    addr: SocketAddr,
    host_tls: &HostTls<'_>,
) -> Result<transaction::Connection, String> {
    let HostTls { sts_enforce, dane, probe } = host_tls;
    let tcp = timeout(config.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    *probe.local_ip.lock().unwrap() = tcp.local_addr().ok().map(|a| a.ip());
    let mut stream: Box<dyn Stream> = Box::new(tcp);
    let smarthost = config.smarthost.as_ref() == Some(hop);
    // Credentials only ever travel over a verified TLS connection to the smarthost,
    // unless TLS was turned off for it explicitly.
    let policy = match (smarthost, config.smarthost_tls) {
        (true, SmarthostTls::None) => TlsPolicy::Off,
        (true, _) => TlsPolicy::Required,
        (false, _) if matches!(dane, HostPolicy::Verify(_)) => TlsPolicy::Dane,
        (false, _) if matches!(dane, HostPolicy::Encrypt(_)) => TlsPolicy::Encrypt,
        (false, _) if *sts_enforce => TlsPolicy::MtaSts,
        (false, _) if config.starttls => TlsPolicy::Opportunistic,
        (false, _) => TlsPolicy::Off,
    };
    let (mut level, mut cipher) = (TlsLevel::None, None);
    if smarthost && config.smarthost_tls == SmarthostTls::Implicit {
        let (tls, l, c) = timeout(config.connect_timeout, config.tls.handshake(stream, &hop.host, None))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| e.0)?;
        stream = tls;
        (level, cipher) = (l, Some(c));
    }
    let peer = format!("{} [{}]", hop.host, addr.ip());
    let session = transaction::Session {
        peer: &peer,
        host: &hop.host,
        ip: addr.ip(),
        policy,
        level,
        cipher,
        lmtp: false,
        dane: dane.check().map(|c| &**c),
        probe: Some(probe),
    };
    greet(config, stream, session).await
}
