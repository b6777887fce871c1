//! Policies published by recipient domains that decide how strictly outbound TLS is
//! required for them. MTA-STS (RFC 8461) is the one Tern understands.

pub mod cache;
pub mod fetch;
pub mod mta_sts;

use crate::delivery::remote::TlsClient;
use crate::dns::{Dns, DnsError};
use cache::{Decision, Entry, Txt};
use mta_sts::Policy;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// MTA-STS policies of recipient domains: looked up, fetched and cached, in memory and
/// in `<data_dir>/mta-sts/` (with `[cluster]`, in the cluster's database instead).
#[derive(Debug)]
pub struct MtaSts {
    dir: PathBuf,
    memory: Mutex<HashMap<String, Entry>>,
}

impl MtaSts {
    pub fn new(data_dir: &std::path::Path) -> MtaSts {
        MtaSts { dir: cache::dir(data_dir), memory: Mutex::new(HashMap::new()) }
    }

    /// The policy in force for `domain`, if any (RFC 8461 §5).
    pub async fn policy(&self, dns: &Dns, tls: &TlsClient, allow_loopback: bool, domain: &str) -> Option<Policy> {
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
        match cache::decide(cached.as_ref(), txt, now) {
            Decision::NoPolicy => None,
            Decision::UseCached => live,
            Decision::Fetch => {
                let id = id.unwrap_or_default();
                match fetch::fetch(tls, dns, allow_loopback, domain).await {
                    Ok(text) => match Entry::new(&id, &text, now) {
                        Some((entry, policy)) => {
                            if crate::cluster::shared::get().is_some() {
                                // In the cluster's database, for every node; memory if it is away.
                                crate::cluster::shared::mta_sts::store(domain, &entry).await;
                            } else if let Err(e) = cache::store(&self.dir, domain, &entry) {
                                tracing::warn!(domain, error = %e, "cannot store the MTA-STS policy");
                            }
                            self.memory.lock().unwrap().insert(domain.to_string(), entry);
                            tracing::info!(domain, %id, mode = %policy.mode, "MTA-STS policy fetched");
                            Some(policy)
                        }
                        None => {
                            tracing::info!(domain, "MTA-STS policy invalid; using the cached one if any");
                            live
                        }
                    },
                    Err(e) => {
                        tracing::info!(domain, reason = %e, "MTA-STS policy fetch failed; using the cached one if any");
                        live
                    }
                }
            }
        }
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

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
