//! Outbound DANE for SMTP (RFC 7672): what the TLSA records of an MX host demand, and
//! the kinds of failure, each named by its TLS-RPT result type (RFC 8460 §4.3), so
//! that reports and REQUIRETLS can read them.
//!
//! The decision for one MX host, once its MX RRset was found secure (§2.2):
//! - usable TLSA records (usages DANE-TA 2 and DANE-EE 3, selectors 0/1, matching
//!   types 0/1/2) make TLS mandatory and the certificate must match them
//!   ([`HostPolicy::Verify`]);
//! - records present but none usable make TLS mandatory without authentication
//!   (§2.2, [`HostPolicy::Encrypt`]);
//! - no records (securely denied) or an insecure answer leave the host to MTA-STS or
//!   opportunistic TLS ([`HostPolicy::None`]);
//! - a bogus or indeterminate answer means the host must not be used
//!   ([`HostPolicy::Unusable`]).

use super::dane_match;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::sync::{Arc, Mutex};

/// One TLSA record (RFC 6698 §2.1), as numbers and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// DANE-TA: a trust anchor of the server's chain (RFC 7672 §3.1.2).
pub const DANE_TA: u8 = 2;
/// DANE-EE: the server's own certificate or key (RFC 7672 §3.1.1).
pub const DANE_EE: u8 = 3;

impl Tlsa {
    /// Usable for SMTP: RFC 7672 §3.1.3 rules out PKIX-TA (0) and PKIX-EE (1); unknown
    /// selectors and matching types, and digests of the wrong length, are unusable
    /// (RFC 7671 §4.1).
    pub fn is_usable(&self) -> bool {
        let usage = matches!(self.usage, DANE_TA | DANE_EE);
        let selector = matches!(self.selector, 0 | 1);
        let data = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage && selector && data
    }
}

impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "{} {} {} {hex}", self.usage, self.selector, self.matching)
    }
}

/// Why DANE stopped or weakened a delivery, by the result types of TLS-RPT
/// (RFC 8460 §4.3.2.1 and §4.3.2.2). [`DaneFailure::result_type`] gives the name a
/// report carries; the metric `tern_dane_results_total{result}` uses the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaneFailure {
    /// TLSA records present but none usable, or malformed (the host was still used,
    /// encrypted without authentication, RFC 7672 §2.2).
    TlsaInvalid,
    /// The MX or TLSA lookup failed DNSSEC validation, or gave no answer (bogus or
    /// indeterminate): the host is not used.
    DnssecInvalid,
    /// DANE was required for the destination but no validated TLSA records were found.
    /// Tern requires DANE only where the records ask for it, so it does not report
    /// this one itself; the kind is here for reports that merge other sources.
    DaneRequired,
    /// The chain matched a DANE-TA record but the server certificate names neither
    /// the MX host nor the TLSA base domain (RFC 7672 §3.2.3).
    CertificateHostMismatch,
    /// The chain matched a DANE-TA record but a certificate of it has expired or is
    /// not yet valid.
    CertificateExpired,
    /// No TLSA record matched the certificates the server sent, or the TLS handshake
    /// failed.
    ValidationFailure,
    /// A host with TLSA records did not offer or refused STARTTLS (RFC 7672 §2.2).
    StarttlsNotSupported,
}

impl DaneFailure {
    pub const ALL: [DaneFailure; 7] = [
        DaneFailure::TlsaInvalid,
        DaneFailure::DnssecInvalid,
        DaneFailure::DaneRequired,
        DaneFailure::CertificateHostMismatch,
        DaneFailure::CertificateExpired,
        DaneFailure::ValidationFailure,
        DaneFailure::StarttlsNotSupported,
    ];

    /// The TLS-RPT result type (RFC 8460 §4.3).
    pub fn result_type(self) -> &'static str {
        match self {
            DaneFailure::TlsaInvalid => "tlsa-invalid",
            DaneFailure::DnssecInvalid => "dnssec-invalid",
            DaneFailure::DaneRequired => "dane-required",
            DaneFailure::CertificateHostMismatch => "certificate-host-mismatch",
            DaneFailure::CertificateExpired => "certificate-expired",
            DaneFailure::ValidationFailure => "validation-failure",
            DaneFailure::StarttlsNotSupported => "starttls-not-supported",
        }
    }
}

impl fmt::Display for DaneFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.result_type())
    }
}

/// What DANE decided for one MX host, or how a connection under it ended: the values
/// of the metric `tern_dane_results_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneResult {
    /// The certificate matched the TLSA records.
    Verified,
    /// Secure MX, but no TLSA records (securely denied) or an insecure TLSA answer:
    /// MTA-STS or opportunistic TLS applies.
    NoTlsa,
    Failed(DaneFailure),
}

impl DaneResult {
    pub fn name(self) -> &'static str {
        match self {
            DaneResult::Verified => "verified",
            DaneResult::NoTlsa => "no-tlsa",
            DaneResult::Failed(f) => f.result_type(),
        }
    }

    /// Every value, for making the metric's series at start.
    pub fn all() -> impl Iterator<Item = DaneResult> {
        [DaneResult::Verified, DaneResult::NoTlsa].into_iter().chain(DaneFailure::ALL.map(DaneResult::Failed))
    }

    /// Counts this result (`tern_dane_results_total{result}`).
    pub fn count(self) {
        crate::metrics::get().dane(self.name());
    }
}

/// The TLS an MX host must get under DANE.
#[derive(Debug, Clone)]
pub enum HostPolicy {
    /// DANE does not apply: no secure MX, no TLSA records, or an insecure zone.
    None,
    /// TLS mandatory, and the certificate must match these usable records.
    Verify(Arc<DaneCheck>),
    /// TLS mandatory without authentication: records exist, none usable (§2.2). The
    /// check holds those records, and notes failures.
    Encrypt(Arc<DaneCheck>),
    /// The TLSA lookup was bogus or indeterminate: the host must not be used.
    Unusable(String),
}

impl HostPolicy {
    /// The decision for a host from its TLSA records, securely obtained.
    pub fn from_records(records: Vec<Tlsa>, names: Vec<String>) -> HostPolicy {
        if records.iter().any(Tlsa::is_usable) {
            let usable = records.into_iter().filter(Tlsa::is_usable).collect();
            HostPolicy::Verify(Arc::new(DaneCheck::new(usable, names)))
        } else {
            HostPolicy::Encrypt(Arc::new(DaneCheck::new(records, names)))
        }
    }

    /// The check of a host where DANE makes TLS mandatory.
    pub fn check(&self) -> Option<&Arc<DaneCheck>> {
        match self {
            HostPolicy::Verify(check) | HostPolicy::Encrypt(check) => Some(check),
            _ => None,
        }
    }

    /// True when DANE decides this host's TLS (anything but `None`).
    pub fn applies(&self) -> bool {
        !matches!(self, HostPolicy::None)
    }
}

/// The usable TLSA records of one MX host and the names its certificate may carry
/// (for DANE-TA); it keeps the failure of the last check for the caller to report.
#[derive(Debug)]
pub struct DaneCheck {
    pub records: Vec<Tlsa>,
    /// Reference identifiers (RFC 7672 §3.2.3): the MX host, then the TLSA base
    /// domain when it differs.
    pub names: Vec<String>,
    failure: Mutex<Option<DaneFailure>>,
}

impl DaneCheck {
    pub fn new(records: Vec<Tlsa>, names: Vec<String>) -> DaneCheck {
        DaneCheck { records, names, failure: Mutex::new(None) }
    }

    /// Checks the chain the server sent (leaf first). `Err` carries the failure kind,
    /// also kept for [`DaneCheck::take_failure`].
    pub fn verify(&self, chain: &[CertificateDer<'_>], provider: &Arc<CryptoProvider>) -> Result<(), DaneFailure> {
        let now = rustls::pki_types::UnixTime::now();
        dane_match::verify(&self.records, &self.names, chain, provider, now).inspect_err(|f| self.fail(*f))
    }

    /// Notes a failure of a connection under this check (STARTTLS missing, say).
    pub fn fail(&self, failure: DaneFailure) {
        *self.failure.lock().unwrap() = Some(failure);
    }

    /// The failure noted, if any, left in place.
    pub fn failure(&self) -> Option<DaneFailure> {
        *self.failure.lock().unwrap()
    }

    /// The failure noted since the last call, if any.
    pub fn take_failure(&self) -> Option<DaneFailure> {
        self.failure.lock().unwrap().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa(usage: u8, selector: u8, matching: u8, len: usize) -> Tlsa {
        Tlsa { usage, selector, matching, data: vec![7; len] }
    }

    #[test]
    fn only_dane_usages_with_known_parameters_are_usable() {
        assert!(tlsa(3, 1, 1, 32).is_usable());
        assert!(tlsa(3, 0, 2, 64).is_usable());
        assert!(tlsa(2, 0, 0, 300).is_usable());
        // RFC 7672 §3.1.3: PKIX-TA and PKIX-EE are unusable for SMTP.
        assert!(!tlsa(0, 1, 1, 32).is_usable());
        assert!(!tlsa(1, 1, 1, 32).is_usable());
        assert!(!tlsa(4, 1, 1, 32).is_usable());
        assert!(!tlsa(3, 2, 1, 32).is_usable());
        assert!(!tlsa(3, 1, 3, 32).is_usable());
        // Malformed digests.
        assert!(!tlsa(3, 1, 1, 31).is_usable());
        assert!(!tlsa(3, 1, 2, 32).is_usable());
        assert!(!tlsa(3, 1, 0, 0).is_usable());
    }

    #[test]
    fn records_decide_the_host_policy() {
        let names = vec!["mx.example".to_string()];
        assert!(matches!(HostPolicy::from_records(vec![tlsa(1, 1, 1, 32)], names.clone()), HostPolicy::Encrypt(_)));
        assert!(matches!(HostPolicy::from_records(vec![tlsa(3, 1, 1, 5)], names.clone()), HostPolicy::Encrypt(_)));
        match HostPolicy::from_records(vec![tlsa(0, 1, 1, 32), tlsa(3, 1, 1, 32)], names) {
            HostPolicy::Verify(check) => assert_eq!(check.records, vec![tlsa(3, 1, 1, 32)]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_carry_their_tls_rpt_names() {
        let names: Vec<&str> = DaneFailure::ALL.iter().map(|f| f.result_type()).collect();
        assert_eq!(
            names,
            [
                "tlsa-invalid",
                "dnssec-invalid",
                "dane-required",
                "certificate-host-mismatch",
                "certificate-expired",
                "validation-failure",
                "starttls-not-supported"
            ]
        );
        let results: Vec<&str> = DaneResult::all().map(DaneResult::name).collect();
        assert_eq!(results, crate::metrics::DANE_RESULTS);
    }
}
