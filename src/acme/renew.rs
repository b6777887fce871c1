//! The ACME task: the stored certificate at start (when it still covers the names
//! and is valid), an order when there is none, renewal before expiry, and retries
//! with exponential backoff when the ACME server fails. Every certificate obtained
//! goes into [`super::live`], which every listener's handshake reads.

use super::{AcmeStatus, live, order, stored};
use crate::config::{Acme, Config};
use crate::metrics::{self, CertSource};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first retry after a failed order; each next one waits twice as long.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between two failed orders.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// Time allowed for a whole order.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Two successful orders are at least this far apart, even when `renew_before` is
/// longer than the certificates live.
const MIN_SPACING: Duration = Duration::from_secs(3600);
/// Default renewal: 30 days before expiry…
const RENEW_BEFORE: i64 = 30 * 86_400;
/// …or at a third of the lifetime left, for certificates that live less than 90 days.
const SHORT_LIVED: i64 = 90 * 86_400;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// When a certificate of `validity` is renewed (Unix seconds).
pub fn renewal_time(validity: &stored::Validity, renew_before: Option<Duration>) -> i64 {
    let before = match renew_before {
        Some(d) => d.as_secs().min(i64::MAX as u64) as i64,
        None if validity.lifetime() < SHORT_LIVED => validity.lifetime() / 3,
        None => RENEW_BEFORE,
    };
    validity.not_after.saturating_sub(before)
}

/// The wait before the `failures`-th retry.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(MAX_RETRY)
}

/// Starts the ACME task when `[acme]` is set.
pub fn start(config: &Config) {
    let Some(acme) = config.acme.clone() else { return };
    let names = config.acme_names();
    let dir = stored::dir(&config.data_dir);
    live().update(|s| {
        *s = AcmeStatus {
            directory: acme.directory.clone(),
            challenge: acme.challenge.name().to_string(),
            ..AcmeStatus::default()
        }
    });
    tokio::spawn(run(acme, names, dir));
}

/// The stored certificate, put in force when it serves `names` and is still valid.
fn stored_certificate(dir: &std::path::Path, names: &[String]) -> Option<stored::Validity> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match stored::load(dir, &provider) {
        Ok(Some((key, validity))) => {
            let covers = names.iter().all(|n| validity.names.contains(n));
            if covers && validity.not_after > now() {
                live().set_certificate(key);
                metrics::get().certificate_expiry(CertSource::Acme, validity.not_after);
                tracing::info!(names = ?validity.names, not_after = validity.not_after, "ACME: using the stored certificate");
                Some(validity)
            } else {
                tracing::info!(names = ?validity.names, wanted = ?names, "ACME: the stored certificate does not serve the names or has expired: ordering a new one");
                None
            }
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ACME: cannot use the stored certificate: ordering a new one");
            None
        }
    }
}

async fn run(acme: Acme, names: Vec<String>, dir: PathBuf) {
    let mut current = stored_certificate(&dir, &names);
    let mut failures: u32 = 0;
    let mut last_success: Option<tokio::time::Instant> = None;
    loop {
        let mut wait = if failures > 0 {
            backoff(failures)
        } else {
            let due = current.as_ref().map_or(0, |v| renewal_time(v, acme.renew_before));
            Duration::from_secs(due.saturating_sub(now()).max(0) as u64)
        };
        if let Some(at) = last_success {
            wait = wait.max((at + MIN_SPACING).saturating_duration_since(tokio::time::Instant::now()));
        }
        let next = now().saturating_add(wait.as_secs() as i64);
        live().update(|s| s.next_renewal = Some(next as u64));
        if !wait.is_zero() {
            tracing::debug!(seconds = wait.as_secs(), "ACME: next order");
            tokio::time::sleep(wait).await;
        }
        tracing::info!(names = ?names, directory = %acme.directory, challenge = acme.challenge.name(), "ACME: ordering a certificate");
        let attempt = now() as u64;
        match obtain(&acme, &names, &dir).await {
            Ok(validity) => {
                metrics::get().acme_order(true);
                tracing::info!(names = ?validity.names, not_after = validity.not_after, "ACME: certificate obtained");
                live().update(|s| {
                    s.last_result = Some("issued".into());
                    s.last_attempt = Some(attempt);
                    s.last_error = None;
                });
                current = Some(validity);
                failures = 0;
                last_success = Some(tokio::time::Instant::now());
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics::get().acme_order(false);
                let retry = backoff(failures);
                tracing::warn!(error = %e, retry_in = ?retry, "ACME: order failed; the certificate in force stays");
                live().update(|s| {
                    s.last_result = Some("failed".into());
                    s.last_attempt = Some(attempt);
                    s.last_error = Some(e);
                });
            }
        }
    }
}

/// One order, its certificate stored and put in force.
async fn obtain(acme: &Acme, names: &[String], dir: &std::path::Path) -> Result<stored::Validity, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let (chain, key) = tokio::time::timeout(ORDER_TIMEOUT, order::order(acme, names, dir, &provider))
        .await
        .map_err(|_| format!("no certificate within {ORDER_TIMEOUT:?}"))??;
    let certified = stored::certified(&provider, chain.as_bytes(), key.as_bytes())?;
    let validity = stored::validity(certified.cert[0].as_ref())?;
    if let Some(missing) = names.iter().find(|n| !validity.names.contains(n)) {
        return Err(format!("the certificate issued does not name {missing}"));
    }
    stored::save(dir, &chain, &key)?;
    live().set_certificate(std::sync::Arc::new(certified));
    metrics::get().certificate_expiry(CertSource::Acme, validity.not_after);
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validity(lifetime_days: i64) -> stored::Validity {
        stored::Validity { names: vec![], not_before: 0, not_after: lifetime_days * 86_400 }
    }

    #[test]
    fn renewal_is_30_days_before_expiry_or_a_third_of_a_short_lifetime() {
        assert_eq!(renewal_time(&validity(90), None), 60 * 86_400);
        assert_eq!(renewal_time(&validity(365), None), 335 * 86_400);
        assert_eq!(renewal_time(&validity(6), None), 4 * 86_400);
        assert_eq!(renewal_time(&validity(90), Some(Duration::from_secs(10 * 86_400))), 80 * 86_400);
        assert!(renewal_time(&validity(1), Some(Duration::from_secs(9 * 86_400))) < 0);
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(40), MAX_RETRY);
    }
}
