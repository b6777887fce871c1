//! What the nodes of a cluster share besides the queue, so that they behave as one
//! server: greylisting triplets, message and recipient rates, AUTH failures and bans,
//! users, the message trace and the MTA-STS policy cache, each a table (migration 2),
//! and the counts of the aggregate reports (migration 3).
//!
//! The handle is made once when `serve` starts with `[cluster]` and is process-wide
//! ([`get`]). Every path here survives the database going away: greylisting lets
//! mail through, rates and bans fall back to this node's own counters, users to the
//! last copy read, the trace and the policy cache to memory; each says so in the log
//! (at most once per [`crate::log_limit::PERIOD`]) and in
//! `tern_cluster_shared_errors_total`.
//!
//! The greylist, rate and failed-login statements commit with `synchronous_commit`
//! off (for their own transaction only): they do not wait for the WAL to reach the
//! disk, which makes each about eight times cheaper (3.5 ms → 0.44 ms measured on
//! loopback); a database crash may forget the last fraction of a second of counts,
//! never mail.

pub mod greylist;
pub mod mta_sts;
pub mod rates;
pub mod reports;
pub mod trace;
pub mod users;

use super::{Cluster, Error};
use crate::log_limit::LogLimit;
use crate::metrics::SHARED_STATES;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Longest a check waits for the database before it takes its fallback.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, checks take their fallback at once for this long, so that an
/// outage does not slow every command by [`QUERY_TIMEOUT`]; then the database is
/// tried again (recovery needs no restart).
const BACKOFF: Duration = Duration::from_secs(3);

/// How often expired rows are deleted (by every node; the deletes are idempotent).
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// The cluster's shared state, as this node reaches it.
pub struct Shared {
    pub cluster: Cluster,
    pub users: users::Table,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The shared state; `None` without `[cluster]` (everything stays local).
pub fn get() -> Option<&'static Shared> {
    SHARED.get()
}

/// Connects to the cluster's database, checks its schema and starts the background
/// work (the users copy, the trace writer, the sweeps). Called once, at start; an
/// unreachable database or a schema of another version stops the start.
pub async fn start(cluster: Cluster, trace_retention: Duration) -> Result<&'static Shared, Error> {
    super::migrations::check(&cluster).await?;
    let users = users::Table::load(&cluster).await?;
    let shared = SHARED.get_or_init(|| Shared { cluster, users });
    shared.users.follow(&shared.cluster);
    trace::start(&shared.cluster);
    tokio::spawn(sweeps(shared.cluster.clone(), trace_retention));
    Ok(shared)
}

/// Deletes what no check will look at again: greylist entries, rate windows and
/// failure counts long past. The greylist's own limits are not known here (they
/// may change at a reload), so entries unused for 60 days go; a stale entry is
/// treated as absent by the checks anyway.
async fn sweeps(cluster: Cluster, trace_retention: Duration) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let result = async {
            let client = cluster.client().await?;
            client.execute("DELETE FROM greylist WHERE last_seen < now() - interval '60 days'", &[]).await?;
            client.execute("DELETE FROM rates WHERE window_start < now() - interval '1 day'", &[]).await?;
            client
                .execute(
                    "DELETE FROM auth_failures WHERE window_start < now() - interval '1 day'
                     AND (banned_until IS NULL OR banned_until < now())",
                    &[],
                )
                .await?;
            let oldest = chrono::Utc::now().timestamp_millis() - trace_retention.as_millis() as i64;
            client.execute("DELETE FROM trace WHERE at < $1", &[&oldest]).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            failed("sweep", &e);
        }
    }
}

/// Unix ms until which the database counts as down.
static DOWN_UNTIL: AtomicI64 = AtomicI64::new(0);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs `work` on the database for `state` unless it is known to be down, within
/// [`QUERY_TIMEOUT`]; `None` (logged and counted) when it fails, and the caller
/// takes its fallback.
pub async fn guarded<T>(state: &'static str, work: impl Future<Output = Result<T, Error>>) -> Option<T> {
    if DOWN_UNTIL.load(Ordering::Relaxed) > now_ms() {
        failed(state, &Error("not tried again yet after a recent failure".into()));
        return None;
    }
    let result = match tokio::time::timeout(QUERY_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(Error(format!("no answer within {QUERY_TIMEOUT:?}"))),
    };
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            DOWN_UNTIL.store(now_ms() + BACKOFF.as_millis() as i64, Ordering::Relaxed);
            failed(state, &e);
            None
        }
    }
}

/// One shared state the database failed for: logged (limited) and counted.
pub fn failed(state: &'static str, error: &Error) {
    static LIMITS: [LogLimit; SHARED_STATES.len()] =
        [const { LogLimit::new(crate::log_limit::PERIOD) }; SHARED_STATES.len()];
    crate::metrics::get().shared_error(state);
    let limit = &LIMITS[SHARED_STATES.iter().position(|s| *s == state).unwrap_or(0)];
    if let Some(repeats) = limit.admit() {
        tracing::warn!(state, error = %error, repeats, "cluster database unavailable for shared state; {}", fallback(state));
    }
}

/// What Tern does instead, said in the log line.
fn fallback(state: &str) -> &'static str {
    match state {
        "greylist" => "greylisting lets the recipient through",
        "rates" => "rates are counted by this node alone",
        "auth" => "failed logins and bans are this node's own",
        "users" => "users are checked against the last copy read",
        "trace" => "trace events are kept in memory and written later",
        "mta_sts" => "MTA-STS policies are cached in this node's memory",
        "reports" => "report counts are kept by this node and written later",
        _ => "retried later",
    }
}
