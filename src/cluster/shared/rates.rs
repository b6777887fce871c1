//! Message and recipient rates, and failed logins with their bans, counted across
//! the cluster in the `rates` and `auth_failures` tables. Each event is one atomic
//! `INSERT … ON CONFLICT DO UPDATE … RETURNING` with the database's clock, so two
//! nodes counting the same client at once never lose a count. When the database
//! fails, this node's own counters ([`crate::policy::limits`]) decide instead.

use super::{Error, guarded};
use crate::cluster::Cluster;
use crate::policy::limits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts `$2` messages and `$3` recipients for `$1` in a fixed window of `$6`
/// seconds; a count stops one past its limit (`$4`, `$5`), so a refusal is seen as
/// such and the counter cannot grow without end.
const COUNT: &str = "
-- Counters need no wait for the WAL flush (see `shared`): only this transaction.
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO rates AS r (key, window_start, messages, recipients)
SELECT $1::text, now(), least($2::int4, $4::int4 + 1), least($3::int4, $5::int4 + 1) FROM relaxed
ON CONFLICT (key) DO UPDATE SET
    window_start = CASE WHEN r.window_start <= now() - $6::float8 * interval '1 second' THEN now()
        ELSE r.window_start END,
    messages = CASE WHEN r.window_start <= now() - $6::float8 * interval '1 second' THEN least($2, $4 + 1)
        ELSE least(r.messages + $2, $4 + 1) END,
    recipients = CASE WHEN r.window_start <= now() - $6::float8 * interval '1 second' THEN least($3, $5 + 1)
        ELSE least(r.recipients + $3, $5 + 1) END
RETURNING messages, recipients";

/// A failure of `$1`: counted in a window of `$3` seconds opened by the first one;
/// the `$2`th bans the address for `$4` seconds.
const FAILED: &str = "
-- Counters need no wait for the WAL flush (see `shared`): only this transaction.
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO auth_failures AS a (ip, window_start, failures, banned_until)
SELECT $1::text, now(), 1, CASE WHEN 1 >= $2::int4 THEN now() + $4::float8 * interval '1 second' END FROM relaxed
ON CONFLICT (ip) DO UPDATE SET
    window_start = CASE WHEN a.window_start <= now() - $3::float8 * interval '1 second' THEN now()
        ELSE a.window_start END,
    failures = CASE WHEN a.window_start <= now() - $3::float8 * interval '1 second' THEN 1
        ELSE a.failures + 1 END,
    banned_until = CASE
        WHEN (CASE WHEN a.window_start <= now() - $3::float8 * interval '1 second' THEN 1
              ELSE a.failures + 1 END) >= $2 THEN now() + $4::float8 * interval '1 second'
        ELSE a.banned_until END
RETURNING failures";

/// Every address banned now, with the seconds its ban has left.
const BANNED: &str = "SELECT ip, extract(epoch FROM banned_until - now())::float8 FROM auth_failures
     WHERE banned_until > now()";

/// How long this node answers from its copy of the cluster's bans before it reads
/// them again: a ban set by another node holds here within this time, and a busy node
/// asks the database once per period instead of once per connection.
const BANS_FRESH: Duration = Duration::from_secs(1);

fn limit(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX - 1).min(i32::MAX - 1)
}

/// Fixed-window rates of messages and recipients per key, cluster-wide.
pub struct Rates {
    cluster: &'static Cluster,
    window: f64,
    max_messages: i32,
    max_recipients: i32,
    /// Decides while the database cannot.
    local: Arc<limits::Rates>,
}

impl Rates {
    pub fn new(cluster: &'static Cluster, window: Duration, max_messages: u32, max_recipients: u32) -> Rates {
        Rates {
            cluster,
            window: window.as_secs_f64(),
            max_messages: limit(max_messages),
            max_recipients: limit(max_recipients),
            local: Arc::new(limits::Rates::new(window, max_messages, max_recipients)),
        }
    }

    /// Counts one more message for `key`; false when over the limit.
    pub async fn message(&self, key: &str) -> bool {
        match guarded("rates", self.count(key, 1, 0)).await {
            Some(within) => within,
            None => self.local.message(key),
        }
    }

    /// Counts one more recipient for `key`; false when over the limit.
    pub async fn recipient(&self, key: &str) -> bool {
        match guarded("rates", self.count(key, 0, 1)).await {
            Some(within) => within,
            None => self.local.recipient(key),
        }
    }

    async fn count(&self, key: &str, messages: i32, recipients: i32) -> Result<bool, Error> {
        let client = self.cluster.client().await?;
        let statement = client.prepare_cached(COUNT).await?;
        let row = client
            .query_one(
                &statement,
                &[&key, &messages, &recipients, &self.max_messages, &self.max_recipients, &self.window],
            )
            .await?;
        let (m, r): (i32, i32) = (row.get(0), row.get(1));
        Ok((messages == 0 || m <= self.max_messages) && (recipients == 0 || r <= self.max_recipients))
    }
}

/// Failed AUTH attempts per client address, and bans, cluster-wide. This node's own
/// record is kept too, and holds alone while the database is away.
pub struct AuthFailures {
    cluster: &'static Cluster,
    max: i32,
    window: f64,
    ban: f64,
    local: Arc<limits::AuthFailures>,
    /// The cluster's bans as last read (see [`BANS_FRESH`]).
    bans: tokio::sync::Mutex<Bans>,
}

/// A copy of the banned addresses, each with the end of its ban.
#[derive(Default)]
struct Bans {
    read: Option<Instant>,
    until: HashMap<String, Instant>,
}

impl AuthFailures {
    pub fn new(cluster: &'static Cluster, max: u32, window: Duration, ban: Duration) -> AuthFailures {
        AuthFailures {
            cluster,
            max: limit(max),
            window: window.as_secs_f64(),
            ban: ban.as_secs_f64(),
            local: Arc::new(limits::AuthFailures::new(max, window, ban)),
            bans: Default::default(),
        }
    }

    /// Records a failure; returns how many this address has in the window.
    pub async fn failed(&self, ip: IpAddr) -> u32 {
        let here = self.local.failed(ip);
        let key = ip.to_canonical().to_string();
        let shared = guarded("auth", async {
            let client = self.cluster.client().await?;
            let statement = client.prepare_cached(FAILED).await?;
            let row = client.query_one(&statement, &[&key, &self.max, &self.window, &self.ban]).await?;
            Ok(row.get::<_, i32>(0))
        })
        .await;
        if shared.is_some_and(|n| n >= self.max) {
            let until = Instant::now() + Duration::from_secs_f64(self.ban);
            self.bans.lock().await.until.insert(key, until);
        }
        shared.map_or(here, |n| u32::try_from(n).unwrap_or(0).max(here))
    }

    /// Banned here, or anywhere in the cluster (as of at most [`BANS_FRESH`] ago).
    pub async fn is_banned(&self, ip: IpAddr) -> bool {
        if self.local.is_banned(ip) {
            return true;
        }
        let key = ip.to_canonical().to_string();
        // Held while reading: connections arriving meanwhile wait for that one read.
        let mut bans = self.bans.lock().await;
        if bans.read.is_none_or(|at| at.elapsed() >= BANS_FRESH) {
            let read = guarded("auth", async {
                let client = self.cluster.client().await?;
                let statement = client.prepare_cached(BANNED).await?;
                let now = Instant::now();
                let rows = client.query(&statement, &[]).await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), now + Duration::from_secs_f64(r.get::<_, f64>(1).max(0.0))))
                    .collect())
            })
            .await;
            // Unread, the last copy stands; the next check tries again.
            if let Some(until) = read {
                *bans = Bans { read: Some(Instant::now()), until };
            }
        }
        bans.until.get(&key).is_some_and(|until| *until > Instant::now())
    }
}
