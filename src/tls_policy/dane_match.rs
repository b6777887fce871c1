//! Matching a server's certificate chain against TLSA records (RFC 6698 §2.1,
//! RFC 7671, RFC 7672 §3).

use super::dane::{DANE_EE, DANE_TA, DaneFailure, Tlsa};
use aws_lc_rs::digest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use std::sync::Arc;

/// The bytes a record's selector picks from a certificate (RFC 6698 §2.1.2): the
/// whole certificate (0) or its SubjectPublicKeyInfo (1). `None` when the
/// certificate cannot be parsed or the selector is unknown.
fn selected(selector: u8, cert: &[u8]) -> Option<&[u8]> {
    match selector {
        0 => Some(cert),
        1 => x509_parser::parse_x509_certificate(cert).ok().map(|(_, c)| c.tbs_certificate.subject_pki.raw),
        _ => None,
    }
}

/// True when `record` matches `cert` (RFC 6698 §2.1.3: 0 exact, 1 SHA-256, 2 SHA-512).
pub fn matches(record: &Tlsa, cert: &[u8]) -> bool {
    let Some(content) = selected(record.selector, cert) else { return false };
    match record.matching {
        0 => content == record.data.as_slice(),
        1 => digest::digest(&digest::SHA256, content).as_ref() == record.data.as_slice(),
        2 => digest::digest(&digest::SHA512, content).as_ref() == record.data.as_slice(),
        _ => false,
    }
}

/// Checks a chain (leaf first) against usable records.
///
/// DANE-EE (3) matches the leaf alone; its names and dates are not checked
/// (RFC 7672 §3.1.1). DANE-TA (2) matches a certificate the server sent above the
/// leaf (§3.2.2: servers must send the trust anchor), which then anchors an ordinary
/// path check of the leaf, dates included, and the leaf must name one of `names`
/// (§3.2.3). The most telling failure is returned when nothing matches.
pub fn verify(
    records: &[Tlsa],
    names: &[String],
    chain: &[CertificateDer<'_>],
    provider: &Arc<CryptoProvider>,
    now: UnixTime,
) -> Result<(), DaneFailure> {
    let Some((leaf, rest)) = chain.split_first() else { return Err(DaneFailure::ValidationFailure) };
    let usable = || records.iter().filter(|r| r.is_usable());
    if usable().any(|r| r.usage == DANE_EE && matches(r, leaf)) {
        return Ok(());
    }
    let mut failure = DaneFailure::ValidationFailure;
    for anchor in rest.iter().filter(|c| usable().any(|r| r.usage == DANE_TA && matches(r, c))) {
        match from_anchor(anchor, leaf, rest, names, provider, now) {
            Ok(()) => return Ok(()),
            Err(f) => failure = worst(failure, f),
        }
    }
    Err(failure)
}

/// The more specific of two failures: a name or date problem says more than a
/// general one.
fn worst(a: DaneFailure, b: DaneFailure) -> DaneFailure {
    let rank = |f: DaneFailure| match f {
        DaneFailure::CertificateHostMismatch => 2,
        DaneFailure::CertificateExpired => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// A path from `leaf` through `intermediates` to `anchor`, valid now, for one of
/// `names`.
fn from_anchor(
    anchor: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    provider: &Arc<CryptoProvider>,
    now: UnixTime,
) -> Result<(), DaneFailure> {
    let mut roots = RootCertStore::empty();
    roots.add(anchor.clone().into_owned()).map_err(|_| DaneFailure::ValidationFailure)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|_| DaneFailure::ValidationFailure)?;
    let mut failure = DaneFailure::ValidationFailure;
    for name in names {
        let Ok(server) = ServerName::try_from(name.clone()) else { continue };
        match verifier.verify_server_cert(leaf, intermediates, &server, &[], now) {
            Ok(_) => return Ok(()),
            Err(rustls::Error::InvalidCertificate(e)) => {
                failure = worst(
                    failure,
                    match e {
                        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                            DaneFailure::CertificateHostMismatch
                        }
                        CertificateError::Expired
                        | CertificateError::ExpiredContext { .. }
                        | CertificateError::NotValidYet
                        | CertificateError::NotValidYetContext { .. } => DaneFailure::CertificateExpired,
                        _ => DaneFailure::ValidationFailure,
                    },
                )
            }
            Err(_) => {}
        }
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A CA and a leaf for `name` it signed: (leaf, ca).
    fn chain(name: &str, expired: bool) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            leaf_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            leaf_params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        (leaf.der().clone(), ca.der().clone())
    }

    fn record(usage: u8, selector: u8, matching: u8, cert: &[u8]) -> Tlsa {
        let content = selected(selector, cert).unwrap();
        let data = match matching {
            0 => content.to_vec(),
            1 => digest::digest(&digest::SHA256, content).as_ref().to_vec(),
            _ => digest::digest(&digest::SHA512, content).as_ref().to_vec(),
        };
        Tlsa { usage, selector, matching, data }
    }

    fn check(records: &[Tlsa], chain: &[CertificateDer<'_>]) -> Result<(), DaneFailure> {
        verify(records, &["mx.example".to_string()], chain, &provider(), UnixTime::now())
    }

    #[test]
    fn dane_ee_matches_the_leaf_whatever_its_name_and_dates() {
        let (leaf, ca) = chain("other.example", true);
        for (s, m) in [(1, 1), (0, 1), (1, 2), (0, 0), (1, 0)] {
            assert_eq!(check(&[record(3, s, m, &leaf)], &[leaf.clone(), ca.clone()]), Ok(()), "3 {s} {m}");
        }
        // The CA's digest as DANE-EE does not match the leaf.
        assert_eq!(check(&[record(3, 1, 1, &ca)], &[leaf.clone(), ca]), Err(DaneFailure::ValidationFailure));
    }

    #[test]
    fn dane_ee_mismatch_fails() {
        let (leaf, ca) = chain("mx.example", false);
        let (other, _) = chain("mx.example", false);
        assert_eq!(check(&[record(3, 1, 1, &other)], &[leaf, ca]), Err(DaneFailure::ValidationFailure));
    }

    #[test]
    fn dane_ta_anchors_a_chain_that_names_the_host() {
        let (leaf, ca) = chain("mx.example", false);
        for (s, m) in [(1, 1), (0, 1), (0, 2)] {
            assert_eq!(check(&[record(2, s, m, &ca)], &[leaf.clone(), ca.clone()]), Ok(()), "2 {s} {m}");
        }
        // RFC 7672 §3.2.2: the anchor must be sent; a chain of the leaf alone fails.
        assert_eq!(check(&[record(2, 1, 1, &ca)], std::slice::from_ref(&leaf)), Err(DaneFailure::ValidationFailure));
    }

    #[test]
    fn dane_ta_with_another_name_or_an_expired_leaf_fails_with_its_kind() {
        let (leaf, ca) = chain("other.example", false);
        assert_eq!(check(&[record(2, 1, 1, &ca)], &[leaf, ca]), Err(DaneFailure::CertificateHostMismatch));
        let (leaf, ca) = chain("mx.example", true);
        assert_eq!(check(&[record(2, 0, 1, &ca)], &[leaf, ca]), Err(DaneFailure::CertificateExpired));
    }

    #[test]
    fn dane_ta_of_an_unrelated_certificate_sent_along_fails() {
        let (leaf, _) = chain("mx.example", false);
        let (_, stranger) = chain("mx.example", false);
        assert_eq!(check(&[record(2, 1, 1, &stranger)], &[leaf, stranger]), Err(DaneFailure::ValidationFailure));
    }

    #[test]
    fn pkix_usages_and_malformed_records_never_match() {
        let (leaf, ca) = chain("mx.example", false);
        let chain = [leaf.clone(), ca.clone()];
        assert!(check(&[record(1, 1, 1, &leaf)], &chain).is_err());
        assert!(check(&[record(0, 1, 1, &ca)], &chain).is_err());
        let mut short = record(3, 1, 1, &leaf);
        short.data.pop();
        assert!(check(&[short], &chain).is_err());
        let unknown = Tlsa { usage: 3, selector: 1, matching: 9, ..record(3, 1, 1, &leaf) };
        assert!(check(&[unknown], &chain).is_err());
        assert_eq!(check(&[record(3, 1, 1, &leaf)], &[]), Err(DaneFailure::ValidationFailure));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random records against random or real chains never panic and never match
        /// by chance.
        #[test]
        fn random_records_never_panic(
            records in prop::collection::vec((0u8..6, 0u8..4, 0u8..5, prop::collection::vec(any::<u8>(), 0..80)), 0..6),
            junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..3),
        ) {
            let records: Vec<Tlsa> =
                records.into_iter().map(|(usage, selector, matching, data)| Tlsa { usage, selector, matching, data }).collect();
            let junk: Vec<CertificateDer<'static>> = junk.into_iter().map(CertificateDer::from).collect();
            prop_assert!(check(&records, &junk).is_err());
            let (leaf, ca) = chain_cached();
            prop_assert!(check(&records, &[leaf, ca]).is_err());
        }
    }

    fn chain_cached() -> (CertificateDer<'static>, CertificateDer<'static>) {
        static CHAIN: std::sync::LazyLock<(CertificateDer<'static>, CertificateDer<'static>)> =
            std::sync::LazyLock::new(|| chain("mx.example", false));
        CHAIN.clone()
    }
}
