//! What the server counts, for Prometheus (`GET /metrics` on the admin listener). It
//! uses nothing of Tern, so every layer (the spool too) may count into it.
//!
//! Every series is made when the process starts (or, per listener, when the server
//! starts), with labels from small fixed sets: no address or queue id is ever a
//! label. Counting is an atomic add on a handle made then, never a look-up or a
//! lock, so it costs the hot paths nothing worth measuring. Histograms are
//! [`AtomicHistogram`]s for the same reason. The text is made by `prometheus-client`.

mod histogram;

pub use histogram::AtomicHistogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;

type Labels = Vec<(&'static str, String)>;

/// The kinds of aggregate reports.
const REPORT_KINDS: [&str; 2] = ["tls", "dmarc"];

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Why a client, a command, a sender, a recipient or a message was refused: every
/// refusal Tern answers (a 4xx or 5xx reply, or a connection closed with one) counts
/// once, under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Relaying asked by a client that may not relay.
    RelayDenied,
    /// No such local mailbox.
    UnknownRecipient,
    /// An authenticated (or local) user sending as someone else.
    SenderNotOwned,
    RateLimit,
    Greylisted,
    /// SPF or DMARC refused it, or left its verdict open (451).
    AuthChecks,
    /// The client is on a DNS block list.
    Dnsbl,
    /// No room in the spool or in memory, or a local error storing it.
    Storage,
    /// `max_connections`, `max_connections_per_ip`, or the local submission socket's.
    ConnectionLimit,
    /// Shut out after too many failed authentications (at connect or at AUTH).
    Banned,
    /// Wrong credentials (535), or a local user without an account.
    AuthFailed,
    /// Mail before AUTH where authentication is required (530).
    AuthRequired,
    /// The message or its header block over the size limit.
    MessageSize,
    /// More recipients than one message may have.
    TooManyRecipients,
    /// Content refused as it is (bare CR, which smuggling needs).
    Content,
    /// Syntax, sequence and pipelining errors, commands not offered, talking before
    /// the greeting, HTTP to the mail port, too many errors.
    Protocol,
    /// The spam filter (rspamd) refused it or asked for a retry, or failed to judge it.
    Spam,
    /// A milter refused it, or failed with `on_error` refusing.
    Milter,
    /// MAIL with REQUIRETLS on a session without TLS (RFC 8689).
    RequireTls,
    /// None of the above.
    Other,
}

impl Refusal {
    const ALL: [Refusal; 20] = [
        Refusal::RelayDenied,
        Refusal::UnknownRecipient,
        Refusal::SenderNotOwned,
        Refusal::RateLimit,
        Refusal::Greylisted,
        Refusal::AuthChecks,
        Refusal::Dnsbl,
        Refusal::Storage,
        Refusal::ConnectionLimit,
        Refusal::Banned,
        Refusal::AuthFailed,
        Refusal::AuthRequired,
        Refusal::MessageSize,
        Refusal::TooManyRecipients,
        Refusal::Content,
        Refusal::Protocol,
        Refusal::Spam,
        Refusal::Milter,
        Refusal::RequireTls,
        Refusal::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::RelayDenied => "relay_denied",
            Refusal::UnknownRecipient => "unknown_recipient",
            Refusal::SenderNotOwned => "sender_not_owned",
            Refusal::RateLimit => "rate_limit",
            Refusal::Greylisted => "greylisted",
            Refusal::AuthChecks => "auth_checks",
            Refusal::Dnsbl => "dnsbl",
            Refusal::Storage => "storage",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::Banned => "banned",
            Refusal::AuthFailed => "auth_failed",
            Refusal::AuthRequired => "auth_required",
            Refusal::MessageSize => "message_size",
            Refusal::TooManyRecipients => "too_many_recipients",
            Refusal::Content => "content",
            Refusal::Protocol => "protocol",
            Refusal::Spam => "spam",
            Refusal::Milter => "milter",
            Refusal::RequireTls => "requiretls",
            Refusal::Other => "other",
        }
    }
}

/// How a connection to a listener went.
#[derive(Debug, Clone, Copy)]
pub enum ConnectionResult {
    Accepted,
    /// `max_connections` or `max_connections_per_ip`.
    RefusedLimit,
    /// Banned after failed authentications.
    RefusedBanned,
    RefusedDnsbl,
    /// Talked before the greeting.
    RefusedEarlyTalker,
}

impl ConnectionResult {
    const ALL: [ConnectionResult; 5] = [
        ConnectionResult::Accepted,
        ConnectionResult::RefusedLimit,
        ConnectionResult::RefusedBanned,
        ConnectionResult::RefusedDnsbl,
        ConnectionResult::RefusedEarlyTalker,
    ];

    fn name(self) -> &'static str {
        match self {
            ConnectionResult::Accepted => "accepted",
            ConnectionResult::RefusedLimit => "refused_limit",
            ConnectionResult::RefusedBanned => "refused_banned",
            ConnectionResult::RefusedDnsbl => "refused_dnsbl",
            ConnectionResult::RefusedEarlyTalker => "refused_early_talker",
        }
    }
}

/// What the spam filter (rspamd) made of a message.
#[derive(Debug, Clone, Copy)]
pub enum SpamResult {
    NoAction,
    /// Marked with headers (rspamd's `add header`, and its custom `quarantine`).
    AddHeader,
    RewriteSubject,
    Greylist,
    SoftReject,
    /// Refused (rspamd's `reject`, and `discard`).
    Reject,
    /// rspamd could not be asked or gave no usable answer.
    Error,
}

const SPAM_RESULTS: [&str; 7] =
    ["no_action", "add_header", "rewrite_subject", "greylist", "soft_reject", "reject", "error"];

#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Local,
    Remote,
    Lmtp,
}

#[derive(Debug, Clone, Copy)]
pub enum DeliveryResult {
    Delivered,
    Deferred,
    Bounced,
}

#[derive(Debug, Clone, Copy)]
pub enum AuthMethod {
    Spf,
    Dkim,
    Arc,
    Dmarc,
}

/// The cluster's shared states, as `tern_cluster_shared_errors_total` labels them.
pub const SHARED_STATES: [&str; 8] = ["greylist", "rates", "auth", "users", "trace", "mta_sts", "reports", "sweep"];

/// The result words of RFC 8601 that SPF, DKIM, ARC and DMARC give.
const AUTH_RESULTS: [&str; 7] = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"];

#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The TLS versions Tern speaks, and a handshake that failed.
#[derive(Debug, Clone, Copy)]
pub enum TlsOutcome {
    Tls12,
    Tls13,
    Failed,
}

#[derive(Debug, Clone, Copy)]
pub enum DnsType {
    A,
    Aaaa,
    /// A and AAAA together (a host's addresses).
    Ip,
    Mx,
    Txt,
    Ptr,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub enum DnsResult {
    Ok,
    NxDomain,
    NoData,
    /// Timeout, SERVFAIL, network trouble.
    Error,
}

/// Where the certificate a listener serves comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Acme,
    File,
    SelfSigned,
}

impl CertSource {
    pub const ALL: [CertSource; 3] = [CertSource::Acme, CertSource::File, CertSource::SelfSigned];

    pub fn name(self) -> &'static str {
        match self {
            CertSource::Acme => "acme",
            CertSource::File => "file",
            CertSource::SelfSigned => "self-signed",
        }
    }
}

/// One listener's series.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub active: Gauge,
    connections: [Counter; 5],
    pub received: Counter,
}

impl ListenerMetrics {
    pub fn connection(&self, result: ConnectionResult) {
        self.connections[result as usize].inc();
    }
}

pub struct Metrics {
    registry: Registry,
    connections_active: Family<Labels, Gauge>,
    connections: Family<Labels, Counter>,
    received: Family<Labels, Counter>,
    refused: Vec<Counter>,
    deliveries: Vec<Vec<Counter>>,
    queue: Vec<Gauge>,
    pub queue_oldest_seconds: Gauge,
    pub receive_latency: AtomicHistogram,
    pub delivery_latency: AtomicHistogram,
    pub spool_commit_batch: AtomicHistogram,
    /// New messages sharing one database commit (`[cluster]`).
    pub cluster_commit_batch: AtomicHistogram,
    pub spool_bytes: Gauge,
    auth: Vec<Vec<Counter>>,
    tls: Vec<Vec<Counter>>,
    dns: Vec<Vec<Counter>>,
    spam: Vec<Counter>,
    milter_results: Family<Labels, Counter>,
    dane: Vec<(&'static str, Counter)>,
    reports_sent: Vec<Counter>,
    requiretls: Vec<Counter>,
    mta_sts_fetch: Vec<Counter>,
    acme_orders: Vec<Counter>,
    cert_expiry: Vec<Gauge>,
    shared_errors: Family<Labels, Counter>,
}

/// What became of a REQUIRETLS message (RFC 8689), or of a `TLS-Required: No` one.
#[derive(Debug, Clone, Copy)]
pub enum RequireTls {
    /// Received with REQUIRETLS over TLS and stored.
    Accepted,
    /// MAIL with REQUIRETLS on a session without TLS.
    Refused,
    /// Relayed with REQUIRETLS over authenticated TLS.
    Relayed,
    /// A recipient bounced with 5.7.30.
    Bounced,
    /// Delivery waits: the policy could not be fetched, or no MX could be reached.
    Deferred,
    /// `TLS-Required: No`: relayed with the domain's MTA-STS policy set aside.
    PolicyIgnored,
}

const REQUIRETLS_RESULTS: [&str; 6] = ["accepted", "refused", "relayed", "bounced", "deferred", "policy_ignored"];

/// How fetching an MTA-STS policy went (RFC 8461 §3.3).
#[derive(Debug, Clone, Copy)]
pub enum StsFetch {
    /// Fetched and valid.
    Ok,
    /// Anything but 200 (a redirect among them: never followed).
    HttpStatus,
    /// Not `text/plain`.
    ContentType,
    /// Over 64 KiB.
    TooBig,
    /// The fetch did not finish within its time.
    Timeout,
    /// Fetched, but not a valid policy.
    Invalid,
    /// No address, no connection, a broken exchange.
    Error,
    /// The policy host's certificate did not verify (RFC 8461 §3.3).
    Certificate,
}

const STS_FETCH_RESULTS: [&str; 8] =
    ["ok", "http_status", "content_type", "too_big", "timeout", "invalid", "error", "certificate"];

/// Series of a family with one label, one per value.
fn series<M: Clone>(family: &Family<Labels, M>, label: &'static str, values: &[&str]) -> Vec<M> {
    values.iter().map(|v| family.get_or_create(&vec![(label, v.to_string())]).clone()).collect()
}

/// Series of a family with two labels, for every pair.
fn grid<M: Clone>(
    family: &Family<Labels, M>,
    labels: (&'static str, &'static str),
    a: &[&str],
    b: &[&str],
) -> Vec<Vec<M>> {
    a.iter()
        .map(|x| {
            b.iter()
                .map(|y| family.get_or_create(&vec![(labels.0, x.to_string()), (labels.1, y.to_string())]).clone())
                .collect()
        })
        .collect()
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let build = Family::<Labels, Gauge>::default();
        build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())]).set(1);
        registry.register("tern_build_info", "The running version", build);
        let connections_active = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_connections_active",
            "SMTP connections open now, by listener",
            connections_active.clone(),
        );
        let connections = Family::<Labels, Counter>::default();
        registry.register(
            "tern_connections",
            "SMTP connections, by listener and what became of them",
            connections.clone(),
        );
        let received = Family::<Labels, Counter>::default();
        registry.register(
            "tern_messages_received",
            "Messages accepted (250 after they were stored), by listener",
            received.clone(),
        );
        let refused_family = Family::<Labels, Counter>::default();
        registry.register(
            "tern_messages_refused",
            "Clients, commands, senders, recipients and messages refused, by reason",
            refused_family.clone(),
        );
        let names: Vec<&str> = Refusal::ALL.iter().map(|r| r.name()).collect();
        let refused = series(&refused_family, "reason", &names);
        let deliveries_family = Family::<Labels, Counter>::default();
        registry.register(
            "tern_deliveries",
            "Delivery results of recipients, by transport and result",
            deliveries_family.clone(),
        );
        let deliveries = grid(
            &deliveries_family,
            ("transport", "result"),
            &["local", "remote", "lmtp"],
            &["delivered", "deferred", "bounced"],
        );
        let queue_family = Family::<Labels, Gauge>::default();
        registry.register("tern_queue_messages", "Messages in the queue, by state", queue_family.clone());
        let queue = series(&queue_family, "state", &["queued", "deferred", "held"]);
        let queue_oldest_seconds = Gauge::default();
        registry.register_with_unit(
            "tern_queue_oldest",
            "Age of the oldest message in the queue",
            Unit::Seconds,
            queue_oldest_seconds.clone(),
        );
        let receive_latency = AtomicHistogram::new(&LATENCY_BUCKETS);
        registry.register_with_unit(
            "tern_receive_latency",
            "From the end of a message's content to its 250 reply (checks, signing, storing)",
            Unit::Seconds,
            receive_latency.clone(),
        );
        let delivery_latency = AtomicHistogram::new(&DELIVERY_BUCKETS);
        registry.register_with_unit(
            "tern_delivery_latency",
            "From a message's acceptance to a recipient's final result",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let spool_commit_batch = AtomicHistogram::new(&BATCH_BUCKETS);
        registry.register(
            "tern_spool_commit_batch_size",
            "Requests sharing one spool fsync",
            spool_commit_batch.clone(),
        );
        let cluster_commit_batch = AtomicHistogram::new(&BATCH_BUCKETS);
        registry.register(
            "tern_cluster_commit_batch_size",
            "New messages sharing one database commit",
            cluster_commit_batch.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register_with_unit(
            "tern_spool",
            "Size of the spool's segment files",
            Unit::Bytes,
            spool_bytes.clone(),
        );
        let milter_results = Family::<Labels, Counter>::default();
        registry.register(
            "tern_milter_results",
            "Verdicts of milters (and their failures), by configured milter name and result",
            milter_results.clone(),
        );
        let shared_errors = Family::<Labels, Counter>::default();
        registry.register(
            "tern_cluster_shared_errors",
            "Checks and writes of the cluster's shared state that failed for the database, by state",
            shared_errors.clone(),
        );
        for state in SHARED_STATES {
            let _ = shared_errors.get_or_create(&vec![("state", state.to_string())]);
        }
        let auth_family = Family::<Labels, Counter>::default();
        registry.register("tern_auth_results", "SPF, DKIM, ARC and DMARC results of checked mail", auth_family.clone());
        let auth = grid(&auth_family, ("method", "result"), &["spf", "dkim", "arc", "dmarc"], &AUTH_RESULTS);
        let tls_family = Family::<Labels, Counter>::default();
        registry.register(
            "tern_tls_handshakes",
            "TLS handshakes, by direction and version (or failed)",
            tls_family.clone(),
        );
        let tls =
            grid(&tls_family, ("direction", "version"), &["inbound", "outbound"], &["TLSv1.2", "TLSv1.3", "failed"]);
        let dns_family = Family::<Labels, Counter>::default();
        registry.register("tern_dns_lookups", "DNS lookups by Tern's resolver, by type and result", dns_family.clone());
        let dns = grid(
            &dns_family,
            ("type", "result"),
            &["a", "aaaa", "ip", "mx", "txt", "ptr", "other"],
            &["ok", "nxdomain", "nodata", "error"],
        );
        let spam_family = Family::<Labels, Counter>::default();
        registry.register(
            "tern_spam_results",
            "Messages scanned by rspamd, by what it made of them",
            spam_family.clone(),
        );
        let spam = series(&spam_family, "action", &SPAM_RESULTS);
        let dane_family = Family::<Labels, Counter>::default();
        registry.register(
            "tern_dane_results",
            "DANE decisions and failures for MX hosts (RFC 7672), by result (TLS-RPT names for failures)",
            dane_family.clone(),
        );
        let dane = DANE_RESULTS.iter().copied().zip(series(&dane_family, "result", &DANE_RESULTS)).collect();
        let reports_family = Family::<Labels, Counter>::default();
        registry.register("tern_reports_sent", "Aggregate reports queued, by kind", reports_family.clone());
        let reports_sent = series(&reports_family, "kind", &REPORT_KINDS);
        let requiretls_family = Family::<Labels, Counter>::default();
        registry.register(
            "tern_requiretls",
            "REQUIRETLS messages (RFC 8689) and TLS-Required: No ones, by what became of them",
            requiretls_family.clone(),
        );
        let requiretls = series(&requiretls_family, "result", &REQUIRETLS_RESULTS);
        let sts_family = Family::<Labels, Counter>::default();
        registry.register("tern_mta_sts_fetch", "MTA-STS policy fetches, by result", sts_family.clone());
        let mta_sts_fetch = series(&sts_family, "result", &STS_FETCH_RESULTS);
        let acme_family = Family::<Labels, Counter>::default();
        registry.register("tern_acme_orders", "ACME certificate orders, by result", acme_family.clone());
        let acme_orders = series(&acme_family, "result", &["issued", "failed"]);
        let expiry_family = Family::<Labels, Gauge>::default();
        registry.register_with_unit(
            "tern_tls_certificate_expiry",
            "When the server's certificates expire (Unix time), by where they come from; 0: none",
            Unit::Seconds,
            expiry_family.clone(),
        );
        let sources: Vec<&str> = CertSource::ALL.iter().map(|s| s.name()).collect();
        let cert_expiry = series(&expiry_family, "source", &sources);
        Metrics {
            registry,
            connections_active,
            connections,
            received,
            refused,
            deliveries,
            queue,
            queue_oldest_seconds,
            receive_latency,
            delivery_latency,
            spool_commit_batch,
            cluster_commit_batch,
            spool_bytes,
            auth,
            tls,
            dns,
            spam,
            milter_results,
            dane,
            reports_sent,
            requiretls,
            mta_sts_fetch,
            acme_orders,
            cert_expiry,
            shared_errors,
        }
    }

    /// An ACME order that brought a certificate, or failed.
    pub fn acme_order(&self, issued: bool) {
        self.acme_orders[usize::from(!issued)].inc();
    }

    /// The expiry (Unix seconds) of the certificate from `source`.
    pub fn certificate_expiry(&self, source: CertSource, not_after: i64) {
        self.cert_expiry[source as usize].set(not_after);
    }

    /// The series of a listener, named by its address: made once, at start.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let label = || vec![("listener", name.to_string())];
        let connection = |r: ConnectionResult| {
            self.connections
                .get_or_create(&vec![("listener", name.to_string()), ("result", r.name().to_string())])
                .clone()
        };
        ListenerMetrics {
            active: self.connections_active.get_or_create(&label()).clone(),
            connections: ConnectionResult::ALL.map(connection),
            received: self.received.get_or_create(&label()).clone(),
        }
    }

    /// A milter's verdict or failure. The labels are bounded: `milter` is a name
    /// from the configuration, `result` one of continue, accept, reject, tempfail,
    /// discard, quarantine and error. The series are made at first use (a look-up
    /// under a lock, next to a network round trip to the milter).
    pub fn milter(&self, milter: &str, result: &'static str) {
        self.milter_results.get_or_create(&vec![("milter", milter.to_string()), ("result", result.to_string())]).inc();
    }

    /// A TLS-RPT (`tls`) or DMARC (`dmarc`) report queued.
    pub fn report_sent(&self, kind: &str) {
        if let Some(i) = REPORT_KINDS.iter().position(|k| *k == kind) {
            self.reports_sent[i].inc();
        }
    }

    /// A shared state of the cluster (one of [`SHARED_STATES`]) the database failed for.
    pub fn shared_error(&self, state: &'static str) {
        self.shared_errors.get_or_create(&vec![("state", state.to_string())]).inc();
    }

    pub fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].inc();
        if reason == Refusal::RequireTls {
            self.requiretls(RequireTls::Refused);
        }
        crate::admin::activity::get().refused(reason.name());
    }

    pub fn delivery(&self, transport: Transport, result: DeliveryResult) {
        self.deliveries[transport as usize][result as usize].inc();
    }

    pub fn set_queue(&self, queued: usize, deferred: usize, held: usize, oldest_seconds: i64) {
        for (gauge, n) in self.queue.iter().zip([queued, deferred, held]) {
            gauge.set(n as i64);
        }
        self.queue_oldest_seconds.set(oldest_seconds);
    }

    /// A result word (`pass`, `fail`, …) of one method; other words are not counted.
    pub fn auth_result(&self, method: AuthMethod, word: &str) {
        if let Some(i) = AUTH_RESULTS.iter().position(|w| *w == word) {
            self.auth[method as usize][i].inc();
        }
    }

    pub fn tls_handshake(&self, direction: Direction, outcome: TlsOutcome) {
        self.tls[direction as usize][outcome as usize].inc();
    }

    /// A TLS handshake's outcome from the version rustls agreed.
    pub fn tls_version(&self, direction: Direction, version: Option<rustls::ProtocolVersion>) {
        let outcome = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => TlsOutcome::Tls13,
            _ => TlsOutcome::Tls12,
        };
        self.tls_handshake(direction, outcome);
    }

    pub fn dns(&self, kind: DnsType, result: DnsResult) {
        self.dns[kind as usize][result as usize].inc();
    }

    /// A DANE result, by its name (`DaneResult::name`); other names are not counted.
    pub fn dane(&self, result: &str) {
        if let Some((_, counter)) = self.dane.iter().find(|(name, _)| *name == result) {
            counter.inc();
        }
    }

    pub fn requiretls(&self, result: RequireTls) {
        self.requiretls[result as usize].inc();
    }

    pub fn mta_sts_fetch(&self, result: StsFetch) {
        self.mta_sts_fetch[result as usize].inc();
    }

    pub fn spam_result(&self, result: SpamResult) {
        self.spam[result as usize].inc();
    }

    /// Every series in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The values of `tern_dane_results_total{result}`: a decision, or a failure by its
/// TLS-RPT result type (RFC 8460 §4.3), as `tls_policy::dane::DaneResult` names them.
pub const DANE_RESULTS: [&str; 9] = [
    "verified",
    "no-tlsa",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "certificate-host-mismatch",
    "certificate-expired",
    "validation-failure",
    "starttls-not-supported",
];

/// Seconds: from a millisecond to a minute.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0];
/// Seconds: from a second to five days (the default `max_age`).
const DELIVERY_BUCKETS: [f64; 10] = [1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0, 432000.0];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start() {
        let m = Metrics::new();
        m.listener("127.0.0.1:25").connection(ConnectionResult::Accepted);
        m.delivery(Transport::Remote, DeliveryResult::Bounced);
        m.auth_result(AuthMethod::Spf, "softfail");
        m.report_sent("dmarc");
        m.spam_result(SpamResult::RewriteSubject);
        let text = m.encode();
        for line in [
            "tern_connections_total{listener=\"127.0.0.1:25\",result=\"accepted\"} 1",
            "tern_connections_total{listener=\"127.0.0.1:25\",result=\"refused_dnsbl\"} 0",
            "tern_deliveries_total{transport=\"remote\",result=\"bounced\"} 1",
            "tern_deliveries_total{transport=\"lmtp\",result=\"delivered\"} 0",
            "tern_auth_results_total{method=\"spf\",result=\"softfail\"} 1",
            "tern_reports_sent_total{kind=\"dmarc\"} 1",
            "tern_reports_sent_total{kind=\"tls\"} 0",
            "tern_messages_refused_total{reason=\"relay_denied\"} 0",
            "tern_spam_results_total{action=\"rewrite_subject\"} 1",
            "tern_spam_results_total{action=\"error\"} 0",
            "tern_requiretls_total{result=\"bounced\"} 0",
            "tern_mta_sts_fetch_total{result=\"too_big\"} 0",
            "tern_messages_refused_total{reason=\"protocol\"} 0",
            "tern_build_info{version=",
            "tern_acme_orders_total{result=\"failed\"} 0",
            "tern_tls_certificate_expiry_seconds{source=\"self-signed\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
