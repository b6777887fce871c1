//! Aggregate reports Tern sends to the domains that ask for them: TLS-RPT (RFC 8460)
//! about the TLS of its deliveries to them, and DMARC (RFC 7489 §7.2) about the mail
//! it received from them.
//!
//! Counting is in memory, by UTC day and domain ([`book::Book`]); the aggregates are
//! written to `<data_dir>/reports/` every `[reports] flush_interval` and at shutdown,
//! so a crash loses at most that much counting, never mail. Once a day, in the UTC
//! hour `[reports] hour` at a random minute, the days before today are reported and
//! forgotten; `tern reports send` reports everything counted so far at once.
//!
//! In a cluster, the counts are added to the cluster's database instead
//! ([`crate::cluster::shared::reports`]), and one node sends each report with the
//! counts of all; while the database is away they stay in memory (and in the local
//! files, should the node stop) and are added once it is back.

pub mod book;
pub mod dmarc;
mod message;
mod send;
pub mod store;
pub mod tls;

use crate::cluster::{Cluster, shared};
use crate::server::Context;
use arc_swap::ArcSwap;
use book::{Book, Merge};
use dmarc::DomainDmarc;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;
use tls::DomainTls;

pub use send::Sent;

impl Merge for DomainTls {
    fn merge(&mut self, other: DomainTls) {
        DomainTls::merge(self, other);
    }
}

struct State {
    tls_on: AtomicBool,
    dmarc_on: AtomicBool,
    tls: Mutex<Book<DomainTls>>,
    dmarc: Mutex<Book<DomainDmarc>>,
    /// Counted since the last flush.
    dirty: AtomicBool,
    dir: OnceLock<PathBuf>,
    /// One send at a time (the daily one and `tern reports send`).
    sending: tokio::sync::Mutex<()>,
    /// One flush at a time.
    flushing: tokio::sync::Mutex<()>,
}

static STATE: LazyLock<State> = LazyLock::new(|| State {
    tls_on: AtomicBool::new(false),
    dmarc_on: AtomicBool::new(false),
    tls: Mutex::new(Book::default()),
    dmarc: Mutex::new(Book::default()),
    dirty: AtomicBool::new(false),
    dir: OnceLock::new(),
    sending: tokio::sync::Mutex::new(()),
    flushing: tokio::sync::Mutex::new(()),
});

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Whether DMARC results of received mail are aggregated (`[reports] dmarc`).
pub fn dmarc_enabled() -> bool {
    STATE.dmarc_on.load(Ordering::Relaxed)
}

pub(crate) fn record_tls(domain: &str, policy: tls::PolicyRecord, outcome: tls::Outcome) {
    if !STATE.tls_on.load(Ordering::Relaxed) {
        return;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut book = STATE.tls.lock().unwrap();
    match book.entry(book::day_of(now()), &domain) {
        Some(entry) => entry.add(policy, outcome),
        None => tracing::debug!(domain, "TLS-RPT: too many domains today; session not counted"),
    }
    STATE.dirty.store(true, Ordering::Relaxed);
}

/// Counts one received message of `domain` that DMARC evaluated under `record`
/// (a no-op unless `[reports] dmarc`, or when the record asks for no reports).
pub fn record_dmarc(domain: &str, record: &mail_auth::dmarc::Dmarc, row: mail_auth::report::Record) {
    if !dmarc_enabled() || record.rua.is_empty() {
        return;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut book = STATE.dmarc.lock().unwrap();
    match book.entry(book::day_of(now()), &domain) {
        Some(entry) => entry.add(&domain, record, row),
        None => tracing::debug!(domain, "DMARC reports: too many domains today; message not counted"),
    }
    STATE.dirty.store(true, Ordering::Relaxed);
}

/// Turns counting on or off as `config` says (at start and at each reload).
pub fn configure(config: &crate::config::Reports) {
    STATE.tls_on.store(config.tls, Ordering::Relaxed);
    STATE.dmarc_on.store(config.dmarc, Ordering::Relaxed);
}

/// Loads the aggregates kept in `<data_dir>/reports/` (once per process).
pub fn load(data_dir: &Path) {
    let dir = store::dir(data_dir);
    let tls: Book<DomainTls> = store::load(&dir, "tls");
    let dmarc: Book<DomainDmarc> = store::load(&dir, "dmarc");
    if cluster().is_some() && !(tls.is_empty() && dmarc.is_empty()) {
        // Counted while the cluster's database was away: added at the next flush.
        STATE.dirty.store(true, Ordering::Relaxed);
    }
    merge_into(&mut STATE.tls.lock().unwrap(), tls);
    merge_into(&mut STATE.dmarc.lock().unwrap(), dmarc);
    let _ = STATE.dir.set(dir);
}

fn merge_into<T: Default + Merge>(book: &mut Book<T>, mut loaded: Book<T>) {
    for (day, domain, t) in loaded.take(None) {
        book.put_back(day, domain, t);
    }
}

/// The cluster whose database holds the counts, in a cluster.
fn cluster() -> Option<&'static Cluster> {
    crate::cluster::shared::get().map(|shared| &shared.cluster)
}

/// Writes the aggregates out when something was counted since the last time: to the
/// cluster's database in a cluster, else (or when it cannot be reached) to the files.
pub async fn flush() {
    let _one = STATE.flushing.lock().await;
    match cluster() {
        Some(cluster) => {
            let _ = flush_to(cluster).await;
        }
        None => {
            let _ = tokio::task::spawn_blocking(flush_files).await;
        }
    }
}

fn flush_files() {
    if STATE.dirty.swap(false, Ordering::Relaxed) {
        save_files();
    }
}

fn save_files() {
    let Some(dir) = STATE.dir.get() else { return };
    let tls = STATE.tls.lock().unwrap().clone();
    let dmarc = STATE.dmarc.lock().unwrap().clone();
    for result in [store::save(dir, "tls", &tls), store::save(dir, "dmarc", &dmarc)] {
        if let Err(e) = result {
            STATE.dirty.store(true, Ordering::Relaxed);
            tracing::error!(dir = %dir.display(), error = %e, "cannot write report aggregates");
        }
    }
}

/// Counts taken out of memory to be added to the database: put back unless added,
/// also when the flush is abandoned midway (as at shutdown).
struct Taken {
    tls: Book<DomainTls>,
    dmarc: Book<DomainDmarc>,
    added: bool,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.added {
            merge_into(&mut STATE.tls.lock().unwrap(), std::mem::take(&mut self.tls));
            merge_into(&mut STATE.dmarc.lock().unwrap(), std::mem::take(&mut self.dmarc));
            STATE.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// Adds this node's counts to the cluster's; when the database cannot take them they
/// stay in memory, and the local files keep them should the node stop.
async fn flush_to(cluster: &Cluster) -> Result<(), crate::cluster::Error> {
    if !STATE.dirty.swap(false, Ordering::Relaxed) {
        return Ok(());
    }
    let mut taken = Taken {
        tls: std::mem::take(&mut *STATE.tls.lock().unwrap()),
        dmarc: std::mem::take(&mut *STATE.dmarc.lock().unwrap()),
        added: false,
    };
    match crate::cluster::answered(shared::reports::add(cluster, &taken.tls, &taken.dmarc)).await {
        Ok(()) => {
            taken.added = true;
            // What the files held (read at start, or written while the database was
            // away) is in the database now.
            if let Some(dir) = STATE.dir.get() {
                let dir = dir.clone();
                let _ = tokio::task::spawn_blocking(move || store::remove(&dir)).await;
            }
            Ok(())
        }
        Err(e) => {
            drop(taken);
            shared::failed("reports", &e);
            let _ = tokio::task::spawn_blocking(save_files).await;
            Err(e)
        }
    }
}

/// What `tern reports show` prints: per kind, day and domain, lines of counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shown {
    pub tls: Vec<ShownDomain>,
    pub dmarc: Vec<ShownDomain>,
    /// Said when the counts shown are not all there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShownDomain {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub domain: String,
    pub lines: Vec<String>,
}

fn date(day: i64) -> String {
    chrono::DateTime::from_timestamp(day, 0).map_or_else(|| day.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// This node's counts, and in a cluster those in the database.
pub async fn show() -> Shown {
    // Not while a flush has the counts between memory and the database.
    let _one = STATE.flushing.lock().await;
    let mut tls = STATE.tls.lock().unwrap().clone();
    let mut dmarc = STATE.dmarc.lock().unwrap().clone();
    let mut shown = Shown::default();
    if let Some(cluster) = cluster() {
        match crate::cluster::answered(shared::reports::read(cluster)).await {
            Ok((t, d)) => {
                merge_into(&mut tls, t);
                merge_into(&mut dmarc, d);
            }
            Err(e) => {
                shared::failed("reports", &e);
                shown.note = Some(format!("only this node's counts: the cluster's database is unreachable ({e})"));
            }
        }
    }
    for (day, domains) in &tls.days {
        for (domain, t) in domains {
            shown.tls.push(ShownDomain { day: date(*day), domain: domain.clone(), lines: t.describe() });
        }
    }
    for (day, domains) in &dmarc.days {
        for (domain, d) in domains {
            shown.dmarc.push(ShownDomain { day: date(*day), domain: domain.clone(), lines: d.describe() });
        }
    }
    shown
}

/// Sends the reports of every day counted so far, today's too (`tern reports send`);
/// in a cluster, the cluster's reports, which needs its database.
pub async fn send_now(ctx: &Context) -> Result<Vec<Sent>, String> {
    let _one = STATE.sending.lock().await;
    send_days(ctx, None).await
}

/// Sends the reports of the days before `before` (every day for `None`).
async fn send_days(ctx: &Context, before: Option<i64>) -> Result<Vec<Sent>, String> {
    let Some(cluster) = cluster() else {
        let sent = send::all(ctx, before, now()).await;
        STATE.dirty.store(true, Ordering::Relaxed);
        flush().await;
        return Ok(sent);
    };
    // This node's counts first, so that the reports hold them too.
    let unreachable = |e: crate::cluster::Error| format!("the cluster's database is unreachable ({e}); counts kept");
    {
        let _one = STATE.flushing.lock().await;
        flush_to(cluster).await.map_err(unreachable)?;
    }
    send::cluster(ctx, cluster, before, now()).await.map_err(unreachable)
}

/// Flushes the aggregates every `flush_interval` and sends the reports of past days
/// once a day, until the task is dropped (the caller flushes at shutdown).
pub async fn run(current: Arc<ArcSwap<Context>>) {
    let mut next_send = next_send_time(now(), current.load().config.reports.hour, fastrand::i64(0..3600));
    loop {
        let (interval, hour) = {
            let ctx = current.load();
            configure(&ctx.config.reports);
            (ctx.config.reports.flush_interval, ctx.config.reports.hour)
        };
        let until_send = Duration::from_secs(u64::try_from(next_send - now()).unwrap_or(0));
        tokio::time::sleep(interval.min(until_send)).await;
        flush().await;
        if now() >= next_send {
            let ctx = current.load_full();
            let _one = STATE.sending.lock().await;
            // RFC 8460 §4.1 and RFC 7489 §7.2: reports cover whole UTC days.
            match send_days(&ctx, Some(book::day_of(now()))).await {
                Ok(sent) => {
                    tracing::info!(reports = sent.len(), "daily reports sent");
                    next_send = next_send_time(now(), hour, fastrand::i64(0..3600));
                }
                Err(e) => {
                    tracing::warn!(error = e, "daily reports not sent; trying again in {RETRY:?}");
                    next_send = now() + RETRY.as_secs() as i64;
                }
            }
        }
    }
}

/// How soon a daily send that could not reach the cluster's database is tried again.
const RETRY: Duration = Duration::from_secs(600);

/// The next time after `now` in UTC hour `hour`, `jitter` seconds into it.
fn next_send_time(now: i64, hour: u8, jitter: i64) -> i64 {
    let at = book::day_of(now) + i64::from(hour) * 3600 + jitter;
    if at > now { at } else { at + book::DAY }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_send_is_in_the_configured_hour() {
        let day = 1_700_006_400 - 1_700_006_400 % book::DAY;
        assert_eq!(next_send_time(day + 10, 0, 600), day + 600);
        assert_eq!(next_send_time(day + 700, 0, 600), day + book::DAY + 600);
        assert_eq!(next_send_time(day + 700, 5, 0), day + 5 * 3600);
    }
}
