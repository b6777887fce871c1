//! Policies published by recipient domains that decide how strictly outbound TLS is
//! required for them: DANE (RFC 7672, [`dane`]) where the MX host publishes TLSA
//! records under DNSSEC, else MTA-STS (RFC 8461).

pub mod cache;
pub mod dane;
mod dane_match;
pub mod fetch;
pub mod mta_sts;
pub mod publish;
pub mod requiretls;

use crate::delivery::remote::TlsClient;
use crate::dns::{Dns, DnsError};
use crate::metrics::StsFetch;
use crate::reports::tls::ResultType;
use cache::{Decision, Entry, Txt};
use mta_sts::Policy;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// MTA-STS policies of recipient domains: looked up, fetched and cached, in memory and
/// in `<data_dir>/mta-sts/` (with `[cluster]`, in the cluster's database instead).
#[derive(Debug)]
pub struct MtaSts {
    dir: PathBuf,
    memory: Mutex<HashMap<String, Entry>>,
    /// Domains whose policy is being refreshed in the background.
    refreshing: Mutex<HashSet<String>>,
}

impl MtaSts {
    pub fn new(data_dir: &std::path::Path) -> MtaSts {
        MtaSts { dir: cache::dir(data_dir), memory: Mutex::new(HashMap::new()), refreshing: Mutex::new(HashSet::new()) }
    }

    /// The policy in force for `domain`, if any (RFC 8461 §5).
    pub async fn policy(&self, dns: &Dns, tls: &TlsClient, allow_loopback: bool, domain: &str) -> Option<Policy> {
        self.lookup(dns, tls, allow_loopback, domain).await.policy
    }

    /// The policy in force for `domain`, and what went wrong on the way to it: a
    /// failed or invalid fetch leaves the cached policy in force if there is one, else
    /// none (RFC 8461 §5.1, §3.3).
    pub async fn lookup(&self, dns: &Dns, tls: &TlsClient, allow_loopback: bool, domain: &str) -> Lookup {
        let records = dns.txt(&format!("_mta-sts.{domain}")).await;
        let id = match &records {
            Ok(records) => match mta_sts::policy_id(records) {
                Ok(id) => id,
                Err(e) => {
                    tracing::info!(domain, reason = %e, "MTA-STS TXT record ignored");
                    None
                }
            },
            Err(_) => None,
        };
        let txt = match (&records, &id) {
            (_, Some(id)) => Txt::Id(id),
            (Err(DnsError::Temporary(_)), None) => Txt::Failed,
            _ => Txt::Absent,
        };
        let cached = self.cached(domain).await;
        let now = now();
        let live = cached.as_ref().filter(|e| e.expires > now).and_then(Entry::parsed);
        let found = |policy| Lookup { policy, failure: None };
        match cache::decide(cached.as_ref(), txt, now) {
            Decision::NoPolicy => found(None),
            Decision::UseCached => found(live),
            Decision::Fetch => {
                let id = id.unwrap_or_default();
                let metrics = crate::metrics::get();
                let failure = match fetch::fetch(tls, dns, allow_loopback, domain).await {
                    Ok(text) => match Entry::new(&id, &text, now) {
                        Ok((entry, policy)) => {
                            self.keep(domain, entry).await;
                            metrics.mta_sts_fetch(StsFetch::Ok);
                            tracing::info!(domain, %id, mode = %policy.mode, "MTA-STS policy fetched");
                            return found(Some(policy));
                        }
                        Err(e) => {
                            metrics.mta_sts_fetch(StsFetch::Invalid);
                            report_failure(domain, ResultType::StsPolicyInvalid, &e.0);
                            format!("policy invalid: {}", e.0)
                        }
                    },
                    Err(e) => {
                        metrics.mta_sts_fetch(e.kind);
                        // RFC 8460 §4.3.2.2: a policy host whose certificate does not
                        // verify is `sts-webpki-invalid`.
                        let result = match e.kind {
                            StsFetch::Certificate => ResultType::StsWebpkiInvalid,
                            _ => ResultType::StsPolicyFetchError,
                        };
                        report_failure(domain, result, &e.detail);
                        format!("policy fetch failed: {}", e.detail)
                    }
                };
                let fallback = if live.is_some() { "the cached policy stays in force" } else { "no policy cached" };
                tracing::warn!(domain, reason = %failure, "MTA-STS {failure}; {fallback}");
                Lookup { policy: live, failure: Some(format!("MTA-STS {failure}; {fallback}")) }
            }
        }
    }

    /// Fetches the policy of `domain` again in the background when its cached copy is
    /// due for a refresh (RFC 8461 §5.1), one refresh per domain at a time. A failed
    /// refresh leaves the cached policy as it is.
    pub fn refresh_if_due(self: &Arc<Self>, dns: &Dns, tls: &Arc<TlsClient>, allow_loopback: bool, domain: &str) {
        // The copy in memory: every lookup of the domain has just put it there.
        let entry = self.memory.lock().unwrap().get(domain).cloned();
        let Some(entry) = entry.filter(|e| cache::needs_refresh(e, now())) else { return };
        if !self.refreshing.lock().unwrap().insert(domain.to_string()) {
            return;
        }
        let (this, dns, tls, domain) = (self.clone(), dns.clone(), tls.clone(), domain.to_string());
        tokio::spawn(async move {
            this.refresh(&dns, &tls, allow_loopback, &domain, &entry.id).await;
            this.refreshing.lock().unwrap().remove(&domain);
        });
    }

    async fn refresh(&self, dns: &Dns, tls: &TlsClient, allow_loopback: bool, domain: &str, id: &str) {
        let metrics = crate::metrics::get();
        let failure = match fetch::fetch(tls, dns, allow_loopback, domain).await {
            Ok(text) => match Entry::new(id, &text, now()) {
                Ok((entry, policy)) => {
                    self.keep(domain, entry).await;
                    metrics.mta_sts_fetch(StsFetch::Ok);
                    tracing::info!(domain, id, mode = %policy.mode, "MTA-STS policy refreshed");
                    return;
                }
                Err(e) => {
                    metrics.mta_sts_fetch(StsFetch::Invalid);
                    format!("policy invalid: {}", e.0)
                }
            },
            Err(e) => {
                metrics.mta_sts_fetch(e.kind);
                format!("policy fetch failed: {}", e.detail)
            }
        };
        tracing::warn!(domain, reason = %failure, "MTA-STS refresh: {failure}; the cached policy stays in force");
    }

    /// Keeps a fetched policy: with `[cluster]` in the cluster's database, for every
    /// node, else on disk; and in memory.
    async fn keep(&self, domain: &str, entry: Entry) {
        if crate::cluster::shared::get().is_some() {
            crate::cluster::shared::mta_sts::store(domain, &entry).await;
        } else if let Err(e) = cache::store(&self.dir, domain, &entry) {
            tracing::warn!(domain, error = %e, "cannot store the MTA-STS policy");
        }
        self.memory.lock().unwrap().insert(domain.to_string(), entry);
    }

    /// The cached entry: with `[cluster]` the cluster's (another node may have
    /// fetched a newer one), else from memory, else from disk.
    async fn cached(&self, domain: &str) -> Option<Entry> {
        if crate::cluster::shared::get().is_some() {
            let shared = crate::cluster::shared::mta_sts::load(domain).await;
            let mut memory = self.memory.lock().unwrap();
            if let Some(Some(entry)) = shared {
                memory.insert(domain.to_string(), entry.clone());
                return Some(entry);
            }
            return memory.get(domain).cloned();
        }
        let mut memory = self.memory.lock().unwrap();
        if let Some(e) = memory.get(domain) {
            return Some(e.clone());
        }
        let entry = cache::load(&self.dir, domain)?;
        memory.insert(domain.to_string(), entry.clone());
        Some(entry)
    }
}

/// A policy that could not be had, for the domain's TLS reports (RFC 8460 §4.3.2.2).
fn report_failure(domain: &str, result: ResultType, detail: &str) {
    use crate::reports::tls::{Failure, Outcome, PolicyRecord, record};
    let mut failure = Failure::new(result);
    failure.additional_information = Some(detail.chars().take(200).collect());
    let policy = PolicyRecord::Sts { policy_string: Vec::new(), mx_host: Vec::new() };
    record(domain, policy, Outcome::Failure(failure));
}

/// What looking up a domain's policy gave.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// The policy in force, if any.
    pub policy: Option<Policy>,
    /// Why a fetch failed or its policy was refused, when one was tried.
    pub failure: Option<String>,
}

/// Unix seconds; in a cluster by the database's clock, since cache entries are shared.
fn now() -> u64 {
    (crate::cluster::clock::now_ms().max(0) / 1000) as u64
}
